"""Where the op's GPU time goes: the kernels of one forward + backward, their device durations and
the gaps between them, for each GPU backend and for the same-bytes floor of test_op_gpu.py.

Graph replays (as test_op_gpu.py::test_graph_replay times them) run under torch.profiler, whose
CUPTI trace gives every kernel's device duration. Per call it reports the kernels (median
duration each) and their sum, beside the replay time measured by CUDA events with the profiler
off; the difference is what launching and scheduling the kernels costs. (Under the profiler the
gaps between kernels grow, so only the durations are taken from the trace.)

    python benchmarks/profile_gpu.py                    # the table, B = 64 and 4096
    python benchmarks/profile_gpu.py --cuda-splits default small-calls   # the CUDA kernels under
        each work split (docs/kernels.md), forced with adt_fast._C.set_cuda_work_split
    ncu --profile-from-start off ... python benchmarks/profile_gpu.py --one cuda 4096
        (one eager forward + backward between cudaProfilerStart and Stop, for Nsight Compute)
"""

import argparse
import importlib.util
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_op_gpu import _same_bytes_pair, capture_graph, forward_backward, make_inputs  # noqa: E402

REPLAYS = 50


def step_for(backend, batch):
    """(step, reset) of one forward + backward; backend "floor" is the same-bytes Triton pair."""
    mean, std_param, x, grads = make_inputs(batch)
    if backend != "floor":
        def reset():
            mean.grad = std_param.grad = None
        return (lambda: forward_backward(backend, mean, std_param, x, grads)), reset
    forward, backward = _same_bytes_pair()
    m, s, g = mean.detach(), std_param.detach(), grads[0]
    out, gm, gs = torch.empty_like(g), torch.empty_like(m), torch.empty_like(m)

    def step():
        forward(m, s, x, out)
        backward(g, m, s, x, gm, gs)
    return step, (lambda: None)


def replay_us(graph):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    rounds = []
    for _ in range(7):
        start.record()
        for _ in range(REPLAYS):
            graph.replay()
        end.record()
        end.synchronize()
        rounds.append(start.elapsed_time(end) * 1000 / REPLAYS)
    return statistics.median(rounds)


def device_events(graph):
    """The device activities of REPLAYS replays, in start order: (name, start us, end us)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(REPLAYS):
            graph.replay()
        torch.cuda.synchronize()
    events = [(e.name, e.time_range.start, e.time_range.end) for e in prof.events()
              if e.device_type == torch.autograd.DeviceType.CUDA]
    return sorted(events, key=lambda e: e[1])


def why_not(backend):
    if backend == "floor":
        return None if importlib.util.find_spec("triton") else "triton is not installed"
    from adt_fast.ops import dispatch
    return dispatch.get(backend).why_not(torch.device("cuda"), torch.float32)


def report(backend, batch, label=None):
    label = label or backend
    reason = why_not(backend)
    if reason is not None:
        print(f"{label:7s} B={batch:5d}: skipped ({reason})")
        return
    graph = capture_graph(*step_for(backend, batch))
    replay = replay_us(graph)
    events = device_events(graph)
    if not events or len(events) % REPLAYS:
        print(f"{label:7s} B={batch:5d}: replay {replay:7.1f} us; the trace had {len(events)} device "
              f"events for {REPLAYS} replays, not a whole number per replay")
        return
    per = len(events) // REPLAYS
    calls = [events[i * per:(i + 1) * per] for i in range(REPLAYS)]
    durations = [statistics.median(c[j][2] - c[j][1] for c in calls) for j in range(per)]
    print(f"{label:7s} B={batch:5d}: replay {replay:7.1f} us, kernels' sum {sum(durations):7.1f} us, "
          f"{per} kernels:")
    for (name, _, _), d in zip(calls[0], durations):
        print(f"    {d:8.1f} us  {name[:110]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=2, metavar=("BACKEND", "BATCH"),
                        help="one warm-up and one profiled eager call, for Nsight Compute")
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 4096])
    parser.add_argument("--cuda-splits", nargs="+", default=["auto"], choices=["auto", "default", "small-calls"],
                        help="profile the cuda backend under each of these work splits (default: auto)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("profile_gpu.py: needs a CUDA GPU")
    if args.one:
        step, reset = step_for(args.one[0], int(args.one[1]))
        reset(), step()
        torch.cuda.synchronize()
        reset()
        torch.cuda.profiler.start()
        step()
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
        return
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    for batch in args.batch:
        for split in args.cuda_splits:
            report_cuda_split(batch, split)
        for backend in ("triton", "floor"):
            report(backend, batch)


def report_cuda_split(batch, split):
    """report("cuda", batch) with the kernels' work split forced (the graph keeps what it captured)."""
    if split == "auto":
        return report("cuda", batch)
    from adt_fast import _C
    if not _C.set_cuda_work_split(split):
        print(f"cuda    B={batch:5d}: skipped (no CUDA kernels in adt_fast._C)")
        return
    try:
        report("cuda", batch, f"cuda[{split}]")
    finally:
        _C.set_cuda_work_split("auto")


if __name__ == "__main__":
    main()
