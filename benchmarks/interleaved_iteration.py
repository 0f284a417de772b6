"""One ADT_EXP iteration in each fp32 mode and the original code's iteration, timed in turns.

pytest-benchmark times one variant after another, so a drift in the machine's speed (a shared
VM) lands on whichever variant ran then. Here every round runs each variant once, in turn, after
one warm-up each (adt_fast.devices.seconds_in_turns), and the medians are compared: a drift hits
all of them alike.

    python benchmarks/interleaved_iteration.py --arch small-cnn --rounds 7
"""

import argparse
import statistics

from adt_fast.devices import seconds_in_turns

from test_train_step import BATCH, DEVICE, make_batch, original_step, training_step

MODES = ("default", "fp32", "fp32-channels-last")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="small-cnn")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    x, y = make_batch(BATCH)
    runs = {mode: training_step("adt-exp", args.arch, mode, x, y) for mode in MODES}
    runs["original"] = original_step(args.arch, x, y)
    seconds = seconds_in_turns(runs, DEVICE, args.rounds)
    reference = statistics.median(seconds["original"])
    print(f"{args.arch}, B = {BATCH}, {args.rounds} rounds in turns, device {DEVICE}")
    print("| variant | median | ratio to original |\n|---|---|---|")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} s | {median / reference:.2f}× |")


if __name__ == "__main__":
    main()
