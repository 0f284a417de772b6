"""GPU-only timings of the op (issue 6): device time by CUDA-graph replay, and the host floor.

- graph replay: forward+backward captured once in a CUDA graph and replayed REPLAYS times per
  timed round, so a round's median / REPLAYS is the op's GPU time with no Python or launch cost;
- the floor of graph replay: a forward and a backward Triton kernel that move exactly the op's
  bytes (float32, k = 5, x given, no x gradient: 72 per element) and compute nothing, captured
  and replayed the same way; at small B it is the launch and memory latency of two kernels, at
  large B the bandwidth floor, both measured on the machine rather than taken from a datasheet;
- trivial autograd pair: a torch.autograd.Function launching one trivial Triton kernel forward and
  one backward, the host-side floor of a Python autograd op, to compare the eager call against.
Run: pytest benchmarks/test_op_gpu.py --benchmark-only --benchmark-group-by=param:batch
"""

import pytest
import torch

import adt_fast
from adt_fast.ops import dispatch

from conftest import BATCH_SIZES, DEVICE

pytestmark = pytest.mark.skipif(DEVICE.type != "cuda", reason="GPU-only suite")

K = 5
REPLAYS = 100


def make_inputs(batch, dtype=torch.float32):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    shape = (batch, 3, 32, 32)
    mean = torch.randn(shape, device=DEVICE, generator=g).mul_(0.1).to(dtype).requires_grad_()
    std_param = torch.randn(shape, device=DEVICE, generator=g).to(dtype).requires_grad_()
    x = torch.rand(shape, device=DEVICE, generator=g).to(dtype)
    grads = (torch.randn((K, *shape), device=DEVICE, generator=g).to(dtype),
             torch.randn((K, batch), device=DEVICE, generator=g))
    return mean, std_param, x, grads


def forward_backward(backend, mean, std_param, x, grads):
    out, nlp = adt_fast.sample_and_entropy(mean, std_param, K, 8 / 255, x=x, backend=backend)
    torch.autograd.backward((out, nlp), grads)


def capture_graph(step, reset):
    """step() captured in a CUDA graph, after a warm-up on a side stream."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            reset()
            step()
    torch.cuda.current_stream().wait_stream(side)
    reset()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def time_graph_replay(timed, benchmark, step, reset):
    """Capture step() in a CUDA graph and time REPLAYS replays."""
    graph = capture_graph(step, reset)

    def replay():
        for _ in range(REPLAYS):
            graph.replay()

    benchmark.extra_info.update(replays_per_round=REPLAYS, k=K)
    timed(replay)


@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_graph_replay(timed, benchmark, backend, dtype, batch):
    reason = dispatch.get(backend).why_not(DEVICE, dtype)
    if reason is not None:
        pytest.skip(reason)
    mean, std_param, x, grads = make_inputs(batch, dtype)

    def reset():
        mean.grad = std_param.grad = None

    benchmark.extra_info.update(dtype=str(dtype))
    time_graph_replay(timed, benchmark, lambda: forward_backward(backend, mean, std_param, x, grads), reset)


@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize("split", ["default", "small-calls"])
def test_graph_replay_work_split(timed, benchmark, split, batch):
    """The CUDA kernels under each work split (docs/kernels.md), float32: the measurement behind
    the size at which `auto` changes split."""
    reason = dispatch.get("cuda").why_not(DEVICE, torch.float32)
    if reason is not None:
        pytest.skip(reason)
    from adt_fast import _C

    mean, std_param, x, grads = make_inputs(batch)

    def reset():
        mean.grad = std_param.grad = None

    assert _C.set_cuda_work_split(split)
    try:  # the split is read at launch, so the captured graph keeps it
        benchmark.extra_info.update(split=split)
        time_graph_replay(timed, benchmark, lambda: forward_backward("cuda", mean, std_param, x, grads), reset)
    finally:
        _C.set_cuda_work_split("auto")


def _same_bytes_pair():
    """(forward, backward): Triton kernels with the op's memory traffic and no arithmetic to speak
    of. forward reads mean, std_param, x and writes K rows; backward reads K rows of gradient and
    mean, std_param, x, and writes two gradients."""
    import triton
    import triton.language as tl

    @triton.jit
    def forward_kernel(m, s, x, out, n, K: tl.constexpr, BLOCK: tl.constexpr):
        i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        ok = i < n
        v = tl.load(m + i, mask=ok) + tl.load(s + i, mask=ok) + tl.load(x + i, mask=ok)
        for k in tl.static_range(K):
            tl.store(out + k * n + i, v, mask=ok)

    @triton.jit
    def backward_kernel(g, m, s, x, gm, gs, n, K: tl.constexpr, BLOCK: tl.constexpr):
        i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        ok = i < n
        acc = tl.load(m + i, mask=ok) + tl.load(s + i, mask=ok) + tl.load(x + i, mask=ok)
        for k in tl.static_range(K):
            acc += tl.load(g + k * n + i, mask=ok)
        tl.store(gm + i, acc, mask=ok)
        tl.store(gs + i, acc, mask=ok)

    def grid(n):
        return (triton.cdiv(n, 1024),)

    def forward(m, s, x, out):
        forward_kernel[grid(m.numel())](m, s, x, out, m.numel(), K=K, BLOCK=1024)

    def backward(g, m, s, x, gm, gs):
        backward_kernel[grid(m.numel())](g, m, s, x, gm, gs, m.numel(), K=K, BLOCK=1024)

    return forward, backward


@pytest.mark.parametrize("batch", BATCH_SIZES)
def test_graph_replay_floor(timed, benchmark, batch):
    pytest.importorskip("triton")
    forward, backward = _same_bytes_pair()
    mean, std_param, x, (grad_out, _) = make_inputs(batch)
    mean, std_param = mean.detach(), std_param.detach()
    out, grad_mean, grad_std = torch.empty_like(grad_out), torch.empty_like(mean), torch.empty_like(mean)

    def step():
        forward(mean, std_param, x, out)
        backward(grad_out, mean, std_param, x, grad_mean, grad_std)

    benchmark.extra_info.update(dtype="torch.float32", bytes_per_element=4 * (3 + K + K + 3 + 2))
    time_graph_replay(timed, benchmark, step, lambda: None)


@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_eager_autograd_call(timed, benchmark, backend, batch):
    reason = dispatch.get(backend).why_not(DEVICE, torch.float32)
    if reason is not None:
        pytest.skip(reason)
    mean, std_param, x, grads = make_inputs(batch)

    def call():
        forward_backward(backend, mean, std_param, x, grads)
        mean.grad = std_param.grad = None

    timed(call)


def _trivial_pair():
    import triton
    import triton.language as tl

    @triton.jit
    def scale_kernel(src, dst, n, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(dst + i, tl.load(src + i, mask=i < n) * 2.0, mask=i < n)

    def launch(t):
        out = torch.empty_like(t)
        scale_kernel[(triton.cdiv(t.numel(), 1024),)](t, out, t.numel(), BLOCK=1024)
        return out

    class TrivialPair(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return launch(t)

        @staticmethod
        def backward(ctx, grad):
            return launch(grad)

    return TrivialPair


@pytest.mark.parametrize("batch", [64])
def test_trivial_autograd_pair(timed, benchmark, batch):
    pytest.importorskip("triton")
    pair = _trivial_pair()
    mean, _, _, _ = make_inputs(batch)
    grad = torch.ones_like(mean)

    def call():
        pair.apply(mean).backward(grad)
        mean.grad = None

    timed(call)
