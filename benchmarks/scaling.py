"""Data-parallel scaling of `adt-fast train`: training images per second on 1, 2, ... processes.

    python benchmarks/scaling.py --procs 1 2                       # CPU, gloo
    python benchmarks/scaling.py --device cuda --procs 1 2 4 8 \\
        --dataset cifar10 --arch wrn-28-10 --batch-size 512        # one process per GPU, NCCL

Each row is one `torchrun --nproc-per-node N -m adt_fast train` run with the same global batch;
throughput is images trained per second of training time (metrics.jsonl's `seconds`, rank 0's
clock, the test pass excluded) over the epochs after the first (warm-up), median over epochs.
Efficiency is throughput / (N x the 1-process throughput). Run it under
`flock /tmp/adt_fast_bench.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def throughput(procs: int, args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs),
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
                   "-m", "adt_fast", "train", "--method", args.method, "--dataset", args.dataset,
                   "--out", str(out), "--epochs", str(args.epochs), "--max-batches", str(args.batches),
                   "--batch-size", str(args.batch_size), "--device", args.device, "--no-tensorboard",
                   *(["--arch", args.arch] if args.arch else [])]
        env = {**os.environ, "ADT_FAST_NO_PROGRESS": "1"}
        if args.device == "cpu":
            threads = max(1, args.threads_total // procs) if args.threads_total else args.threads
            env["OMP_NUM_THREADS"] = str(threads)
        subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, timeout=args.timeout)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    images = args.batches * args.batch_size
    return statistics.median(images / r["seconds"] for r in records[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--method", default="adt-exp")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--arch", default=None)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch")
    parser.add_argument("--batches", type=int, default=8, help="batches per epoch")
    parser.add_argument("--epochs", type=int, default=4, help="epochs (the first is warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per process on CPU")
    parser.add_argument("--threads-total", type=int, default=None,
                        help="instead: this many OMP threads shared out over the processes (same cores for every row)")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    threads = f"{args.threads_total} threads in total" if args.threads_total else f"{args.threads} thread(s) per process"
    print(f"{args.method} on {args.dataset}, global batch {args.batch_size}, {args.device}"
          + (f", {threads}" if args.device == "cpu" else ""))
    print("| processes | images/s | speed-up | efficiency vs linear |")
    print("|---|---|---|---|")
    base = None
    for procs in args.procs:
        rate = throughput(procs, args)
        base = base or rate / procs
        print(f"| {procs} | {rate:.1f} | {rate / base:.2f}x | {rate / (procs * base):.0%} |", flush=True)


if __name__ == "__main__":
    main()
