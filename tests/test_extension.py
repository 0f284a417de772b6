"""The compiled extension adt_fast._C itself: build information, op registration, argument checks,
OpenMP results independent of the thread count, every compiled CPU instruction set, large shapes,
and (with a GPU) the CUDA kernels against the CPU ones. The cross-backend agreement with the
reference lives in test_ops.py; this file calls torch.ops.adt_fast_C directly."""

import contextlib
import math
import os
import threading
import time

import pytest
import torch

from adt_fast.ops import reference

C = pytest.importorskip("adt_fast._C", reason="the C++ extension is not built")
ops = torch.ops.adt_fast_C

INF = math.inf
HAS_CUDA_KERNELS = torch._C._dispatch_has_kernel_for_dispatch_key("adt_fast_C::sample_forward", "CUDA")


def rel_err(actual, expected):
    """Largest error relative to the largest magnitude (as in test_ops.py)."""
    actual, expected = actual.double().cpu(), expected.double().cpu()
    if expected.numel() == 0:
        return 0.0
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-300)).item()


def make(shape, k, dtype=torch.float64, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(shape, generator=g, dtype=torch.float64)
    rho = torch.rand(shape, generator=g, dtype=torch.float64) * 6 - 4
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    noise = torch.randn((k, *shape), generator=g, dtype=torch.float64)
    grad_out = torch.randn((k, *shape), generator=g, dtype=torch.float64)
    grad_nlp = torch.randn((k, shape[0]), generator=g, dtype=torch.float64)
    seed_offset = torch.randint(0, 2**62, (2,), generator=g)
    ctype = torch.float64 if dtype == torch.float64 else torch.float32
    cast = dict(dtype=dtype, device=device)
    return dict(mean=mean.to(**cast), rho=rho.to(**cast), x=x.to(**cast), noise=noise.to(**cast),
                grad_out=grad_out.to(**cast), grad_nlp=grad_nlp.to(dtype=ctype, device=device),
                seed_offset=seed_offset.to(device))


def run_ext(t, k, use_noise, use_x, eps=0.3, lo=0.1, hi=0.9):
    x = t["x"] if use_x else None
    noise = t["noise"] if use_noise else None
    if not use_x:
        lo, hi = -INF, INF
    out, nlp, _ = ops.sample_forward(t["mean"], t["rho"], x, noise, t["seed_offset"], None, k, eps, lo, hi)
    grads = ops.sample_backward(t["grad_out"], t["grad_nlp"], t["mean"], t["rho"], x, noise, t["seed_offset"],
                                k, eps, lo, hi)
    return (out, nlp, *grads)


def near_clamp_bounds(t, k, use_noise, eps=0.3, lo=0.1, hi=0.9, margin=1e-4):
    """Elements where some sample's x + delta lies within `margin` of a clamp bound: a float32
    kernel and the float64 reference may disagree there on whether the gradient passes."""
    d = {key: v.double().cpu() for key, v in t.items() if key != "seed_offset"}
    if use_noise:
        r = d["noise"]
    else:
        seed, offset = (int(v) for v in t["seed_offset"].cpu())
        r = reference.philox_normals(seed, offset, d["mean"].numel(), k).reshape(k, *d["mean"].shape)
    v = d["x"] + eps * torch.tanh(d["mean"] + reference.softplus(d["rho"]) * r)
    return (((v - lo).abs() < margin) | ((v - hi).abs() < margin)).any(0)


def compare(got, want, tol, near=None):
    """rel_err of (out, nlp, grad_mean, grad_std, grad_x), gradients outside `near` only."""
    for i, (g, w) in enumerate(zip(got, want)):
        if near is not None and i >= 2 and w.numel():
            g, w = g.double().cpu().masked_fill(near, 0), w.double().cpu().masked_fill(near, 0)
        assert rel_err(g, w) <= tol, (i, rel_err(g, w))


def run_ref(t, k, use_noise, use_x, eps=0.3, lo=0.1, hi=0.9):
    d = {key: v.double().cpu() for key, v in t.items() if key != "seed_offset"}
    x = d["x"] if use_x else None
    noise = d["noise"] if use_noise else None
    if not use_x:
        lo, hi = -INF, INF
    so = t["seed_offset"].cpu()
    out, nlp = reference.sample_forward(d["mean"], d["rho"], x, noise, so, k, eps, lo, hi)
    gm, gs, gx = reference.sample_backward(d["grad_out"], d["grad_nlp"], d["mean"], d["rho"], x, noise, so, k,
                                           eps, lo, hi)
    return (out, nlp, gm, gs, gx if gx is not None else torch.empty(0))


# ---- build and registration ----------------------------------------------------------------------

def test_build_info():
    info = C.build_info()
    assert info["version"] == "0.1.0"
    assert info["cpu_isa"] in info["cpu_isas"].split(",")
    assert "generic" in info["cpu_isas"].split(",")
    assert info["cpu_isa"] == C.cpu_isa()
    assert info["cuda"] == HAS_CUDA_KERNELS
    if info["cuda"]:
        assert info["cuda_archs"]
    assert isinstance(info["openmp"], bool) and info["openmp_threads"] >= 1


def test_ops_are_registered_for_cpu_and_meta():
    for name in ("sample_forward", "sample_backward", "philox_words"):
        for key in ("CPU", "Meta"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"adt_fast_C::{name}", key), (name, key)


def test_meta_shapes():
    mean = torch.empty(4, 3, 5, device="meta")
    so = torch.empty(2, dtype=torch.int64, device="meta")
    out, nlp, used = ops.sample_forward(mean, mean, None, None, so, None, 6, 0.1, 0.0, 1.0)
    assert out.shape == (6, 4, 3, 5) and nlp.shape == (6, 4) and nlp.dtype == torch.float32
    assert used.shape == (2,) and used.dtype == torch.int64
    assert ops.sample_forward(mean, mean, None, None, None, None, 6, 0.1, 0.0, 1.0)[2].shape == (2,)
    assert ops.sample_backward(None, None, mean, mean, None, None, so, 6, 0.1, 0.0, 1.0)[0].shape == mean.shape
    gm, gs, gx = ops.sample_backward(out, nlp, mean, mean, mean, None, so, 6, 0.1, 0.0, 1.0)
    assert gm.shape == gs.shape == gx.shape == mean.shape
    assert ops.philox_words(so, 10, 9).shape == (9, 3, 4)  # (k, ceil(numel / 4), 4)


def test_set_cpu_isa_rejects_unknown_names():
    current = C.cpu_isa()
    assert not C.set_cpu_isa("sse9")
    assert C.cpu_isa() == current


@pytest.mark.parametrize("forced", ["sse9", "avx2"])
def test_a_cpu_isa_forced_by_the_environment_is_taken_or_the_user_warned(forced):
    """The C++ side falls back silently: the Python layer must say so when it loads the extension."""
    import subprocess
    import sys

    code = ("import warnings, torch, adt_fast, adt_fast._C as C\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    adt_fast.sample_and_entropy(torch.zeros(2, 3), torch.zeros(2, 3), 1, backend='cpu')\n"
            "print(C.cpu_isa()); print([str(w.message) for w in caught])\n")
    env = {**os.environ, "ADT_FAST_CPU_ISA": forced}
    taken, messages = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                     check=True).stdout.splitlines()
    usable = C.build_info()["cpu_isas"].split(",")
    if forced in usable:
        assert taken == forced and "ADT_FAST_CPU_ISA" not in messages
    else:
        assert taken == usable[0] and f"$ADT_FAST_CPU_ISA='{forced}' is ignored" in messages


def test_set_cuda_work_split_takes_its_names_only_with_cuda_kernels():
    assert not C.set_cuda_work_split("fastest")
    assert C.set_cuda_work_split("auto") == C.build_info()["cuda"]


# ---- correctness on larger shapes, every instruction set ------------------------------------------

@pytest.fixture(params=C.build_info()["cpu_isas"].split(","))
def cpu_isa(request):
    previous = C.cpu_isa()
    assert C.set_cpu_isa(request.param)
    yield request.param
    C.set_cpu_isa(previous)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("use_noise", [False, True])
@pytest.mark.parametrize("use_x", [False, True])
def test_every_isa_matches_reference(cpu_isa, dtype, tol, use_noise, use_x):
    # (5, 3, 17, 11): 561 elements per example (tile remainders, examples that start mid-quad).
    k = 6
    t = make((5, 3, 17, 11), k, dtype)
    for got, want in zip(run_ext(t, k, use_noise, use_x), run_ref(t, k, use_noise, use_x)):
        assert rel_err(got, want) <= tol


@pytest.mark.parametrize("shape,k", [((64, 3, 32, 32), 5), ((2, 9000), 3), ((5000,), 7), ((3, 50), 67)])
def test_large_shapes_match_reference(shape, k):
    t = make(shape, k, torch.float32, seed=1)
    for use_noise in (False, True):
        near = near_clamp_bounds(t, k, use_noise)
        compare(run_ext(t, k, use_noise, True), run_ref(t, k, use_noise, True), 1e-5, near)


def test_extreme_inputs_float64_and_float32():
    k = 4
    mean = torch.linspace(-50, 50, 21, dtype=torch.float64).repeat_interleave(9).reshape(21, 9)
    rho = torch.linspace(-80, 80, 9, dtype=torch.float64).repeat(21, 1)
    base = make((21, 9), k)
    base.update(mean=mean, rho=rho)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        ctype = torch.float64 if dtype == torch.float64 else torch.float32
        t = {key: (v.to(ctype) if key == "grad_nlp" else v if key == "seed_offset" else v.to(dtype))
             for key, v in base.items()}
        for use_noise in (False, True):
            got = run_ext(t, k, use_noise, False, eps=0.5)
            want = run_ref(base, k, use_noise, False, eps=0.5)
            for g, w in zip(got[:4], want[:4]):
                assert torch.isfinite(g).all()
                assert rel_err(g, w) <= tol


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_storage_on_cpu_computes_in_float32(dtype):
    k = 3
    t = make((4, 2, 8), k, dtype)
    got = run_ext(t, k, True, True)
    # The reference on the same half inputs computes in float32 and stores in the input dtype.
    want_out, want_nlp = reference.sample_forward(t["mean"], t["rho"], t["x"], t["noise"], t["seed_offset"], k,
                                                  0.3, 0.1, 0.9)
    assert got[0].dtype == dtype and got[1].dtype == torch.float32
    assert got[2].dtype == got[3].dtype == got[4].dtype == dtype
    assert rel_err(got[0], want_out) <= 1e-2
    assert rel_err(got[1], want_nlp) <= 1e-5


def test_noncontiguous_inputs():
    k = 2
    t = make((6, 4), k)
    mean_t, rho_t = t["mean"].t().contiguous().t(), t["rho"].t().contiguous().t()
    assert not mean_t.is_contiguous()
    a = ops.sample_forward(mean_t, rho_t, None, t["noise"], t["seed_offset"], None, k, 0.2, -INF, INF)
    b = ops.sample_forward(t["mean"], t["rho"], None, t["noise"], t["seed_offset"], None, k, 0.2, -INF, INF)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("shape", [(0, 3, 2), (3, 0), (0,)])
def test_empty_shapes(shape):
    k = 5
    mean = torch.zeros(shape)
    so = torch.zeros(2, dtype=torch.int64)
    out, nlp, _ = ops.sample_forward(mean, mean, mean, None, so, None, k, 0.1, 0.0, 1.0)
    assert out.shape == (k, *shape) and nlp.shape == (k, shape[0])
    assert torch.equal(nlp, torch.zeros_like(nlp))  # no elements: -log p = 0
    grads = ops.sample_backward(out, nlp, mean, mean, mean, None, so, k, 0.1, 0.0, 1.0)
    assert all(g.shape == mean.shape for g in grads)


# ---- threads and determinism ------------------------------------------------------------------------

@pytest.mark.parametrize("shape,k", [((64, 3, 32, 32), 5), ((2, 20000), 3), ((40000,), 2)])
def test_results_do_not_depend_on_thread_count(shape, k):
    t = make(shape, k, torch.float32, seed=2)
    previous = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(run_ext(t, k, False, True))
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_repeated_calls_are_bitwise_identical():
    k = 5
    t = make((8, 3, 16, 16), k, torch.float32)
    first, second = run_ext(t, k, False, False), run_ext(t, k, False, False)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


# ---- raw Philox words ----------------------------------------------------------------------------

@pytest.mark.parametrize("seed,offset,numel,k", [
    (0, 0, 1, 1), (-1, 2**62 - 1, 300, 5), (123456789012345, 2**32 - 1, 4097, 9), (7, 3, 0, 4),
    (2**62, 0, 70000, 2), (9, 2**32 - 2, 70001, 3)])
def test_philox_words_bit_identical_to_reference(seed, offset, numel, k):
    so = torch.tensor([seed, offset], dtype=torch.int64)
    got = ops.philox_words(so, numel, k)
    want = reference.philox_words(seed, offset, numel, k)
    assert got.dtype == torch.int64 and got.shape == want.shape
    assert torch.equal(got, want)


# The work is split into ranges of whole examples, or of 4096-element pieces of one example, and
# a range starts mid-quad wherever dim is not a multiple of 4: the quad's words are then drawn
# for the elements on each side of the range boundary. (9, 1027): ranges of 3 examples, starting
# at elements 3081 and 6162; (3, 4099): pieces starting at 4099, 8195, 8198, 12294 (and 3-element
# pieces); (2, 2, 2053): 4106-element examples in two pieces each.
@pytest.mark.parametrize("shape,k", [((9, 1027), 3), ((3, 4099), 3), ((2, 2, 2053), 2)])
@pytest.mark.parametrize("threads", [1, 2])
def test_ranges_that_start_mid_quad_match_reference(cpu_isa, shape, k, threads):
    t = make(shape, k, torch.float64, seed=3)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        got = run_ext(t, k, False, False)
    finally:
        torch.set_num_threads(previous)
    compare(got, run_ref(t, k, False, False), 1e-12)


def test_philox_path_uses_the_reference_normals():
    k = 9
    t = make((3, 40), k)
    out, _, _ = ops.sample_forward(t["mean"], t["rho"], None, None, t["seed_offset"], None, k, 0.7, -INF, INF)
    seed, offset = (int(v) for v in t["seed_offset"])
    r = reference.philox_normals(seed, offset, 120, k).reshape(k, 3, 40)
    want, _ = reference.sample_forward(t["mean"], t["rho"], None, r, t["seed_offset"], k, 0.7, -INF, INF)
    assert rel_err(out, want) <= 1e-13


# ---- seeds drawn in C++, absent and expanded gradients ---------------------------------------------

def _draw(t, k, generator=None, device="cpu"):
    return ops.sample_forward(t["mean"], t["rho"], None, None, None, generator, k, 0.3, -INF, INF)


def test_cpu_seed_comes_from_torch_generator_and_advances():
    k = 5
    t = make((4, 30), k, torch.float32)
    torch.manual_seed(123)
    first, second = _draw(t, k), _draw(t, k)
    torch.manual_seed(123)
    again = _draw(t, k)
    for a, b in zip(first, again):
        assert torch.equal(a, b)  # torch.manual_seed reproduces the C++ draw
    assert not torch.equal(first[2], second[2]) and not torch.equal(first[0], second[0])  # each call advances
    assert 0 <= int(first[2][1]) < 2**62  # offset + sample never wraps
    torch.manual_seed(123)  # the same pair as the Python-launched backends draw: one seed, one sample set
    assert torch.equal(first[2], torch.randint(0, 2**62, (2,), dtype=torch.int64))
    replay = ops.sample_forward(t["mean"], t["rho"], None, None, first[2], None, k, 0.3, -INF, INF)
    for a, b in zip(first, replay):
        assert torch.equal(a, b)  # the reported pair is the one the kernels used


def test_explicit_generator_leaves_the_default_one_alone():
    k = 3
    t = make((2, 10), k, torch.float64)
    state = torch.get_rng_state()
    a = _draw(t, k, torch.Generator().manual_seed(9))
    b = _draw(t, k, torch.Generator().manual_seed(9))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])


def test_noise_reports_zero_seed_offset():
    k = 2
    t = make((3, 4), k)
    _, _, used = ops.sample_forward(t["mean"], t["rho"], None, t["noise"], None, None, k, 0.3, -INF, INF)
    assert torch.equal(used, torch.zeros(2, dtype=torch.int64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("use_x", [False, True])
def test_backward_none_grads_equal_zero_grads(dtype, use_x):
    k = 5
    t = make((3, 2, 7), k, dtype)
    x = t["x"] if use_x else None
    lo, hi = (0.1, 0.9) if use_x else (-INF, INF)
    common = (t["mean"], t["rho"], x, None, t["seed_offset"], k, 0.3, lo, hi)
    zo, zn = torch.zeros_like(t["grad_out"]), torch.zeros_like(t["grad_nlp"])
    for go, gn, go_ref, gn_ref in ((None, t["grad_nlp"], zo, t["grad_nlp"]), (t["grad_out"], None, t["grad_out"], zn),
                                   (None, None, zo, zn)):
        for a, b in zip(ops.sample_backward(go, gn, *common), ops.sample_backward(go_ref, gn_ref, *common)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_expanded_grads_are_read_in_place_bit_identically(dtype):
    k = 6
    t = make((5, 3, 17), k, dtype)
    common = (t["grad_nlp"], t["mean"], t["rho"], t["x"], None, t["seed_offset"], k, 0.3, 0.1, 0.9)
    per_example = t["grad_out"][0]
    for grad in (per_example.expand(k, *per_example.shape),                        # strides (0, 1)
                 torch.tensor(0.7, dtype=dtype).expand(k, *per_example.shape),     # all strides 0
                 t["grad_out"].transpose(1, 2).contiguous().transpose(1, 2)):      # other: copied
        assert not grad.is_contiguous()
        for a, b in zip(ops.sample_backward(grad, *common), ops.sample_backward(grad.contiguous(), *common)):
            assert torch.equal(a, b)


def test_eager_op_passes_absent_and_broadcast_grads_through():
    import adt_fast
    k = 4
    t = make((3, 8), k, torch.float64)
    mean, rho = t["mean"].clone().requires_grad_(), t["rho"].clone().requires_grad_()
    torch.manual_seed(5)
    delta, nlp = adt_fast.sample_and_entropy(mean, rho, k, 0.3, clamp=None, backend="cpu")
    delta.sum().backward()  # nlp unused: its gradient is None, delta's a broadcast scalar
    torch.manual_seed(5)
    _, _, used = _draw(t, k)
    want = ops.sample_backward(torch.ones(k, 3, 8, dtype=torch.float64), None, t["mean"], t["rho"], None, None, used,
                               k, 0.3, -INF, INF)
    assert torch.equal(mean.grad, want[0]) and torch.equal(rho.grad, want[1])


# ---- argument checks in the binding -------------------------------------------------------------

def _fwd(**changes):
    args = dict(mean=torch.zeros(2, 3), std_param=torch.zeros(2, 3), x=None, noise=None,
                seed_offset=torch.zeros(2, dtype=torch.int64), generator=None, num_samples=2, epsilon=0.1, lo=0.0,
                hi=1.0)
    args.update(changes)
    return ops.sample_forward(*args.values())


@pytest.mark.parametrize("changes,word", [
    (dict(std_param=torch.zeros(2, 4)), "std_param"),
    (dict(std_param=torch.zeros(2, 3, dtype=torch.float64)), "std_param"),
    (dict(mean=torch.zeros(2, 3, dtype=torch.int32)), "mean"),
    (dict(mean=torch.zeros(()), std_param=torch.zeros(())), "batch dimension"),
    (dict(x=torch.zeros(3, 2)), "x"),
    (dict(noise=torch.zeros(3, 2, 3)), "noise"),
    (dict(noise=torch.zeros(2, 2, 3, dtype=torch.float64)), "noise"),
    (dict(seed_offset=torch.zeros(3, dtype=torch.int64)), "seed_offset"),
    (dict(seed_offset=torch.zeros(2)), "seed_offset"),
    (dict(num_samples=0), "num_samples"),
    (dict(epsilon=0.0), "epsilon"),
    (dict(epsilon=math.nan), "epsilon"),
    (dict(lo=1.0, hi=0.0), "lo"),
])
def test_forward_rejects_bad_arguments(changes, word):
    with pytest.raises(RuntimeError, match=word):
        _fwd(**changes)


def test_backward_rejects_bad_gradients():
    mean = torch.zeros(2, 3)
    so = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="grad_out"):
        ops.sample_backward(torch.zeros(2, 3), torch.zeros(2, 2), mean, mean, None, None, so, 2, 0.1, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="grad_nlp"):
        ops.sample_backward(torch.zeros(2, 2, 3), torch.zeros(2), mean, mean, None, None, so, 2, 0.1, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="num_samples"):
        ops.philox_words(so, 5, 0)


# ---- CUDA kernels (need a GPU) ------------------------------------------------------------------

cuda_only = pytest.mark.skipif(not (HAS_CUDA_KERNELS and torch.cuda.is_available()),
                               reason="needs the CUDA kernels and a GPU")


@pytest.fixture(params=["default", "small-calls"])
def cuda_work_split(request):
    assert C.set_cuda_work_split(request.param)
    yield request.param
    C.set_cuda_work_split("auto")


@pytest.mark.cuda
@cuda_only
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("use_noise", [False, True])
@pytest.mark.parametrize("use_x", [False, True])
@pytest.mark.parametrize("shape,k", [((5, 3, 17, 11), 6), ((64, 3, 32, 32), 5), ((2, 9000), 3), ((700,), 9)])
def test_cuda_matches_reference(cuda_work_split, dtype, tol, use_noise, use_x, shape, k):
    t = make(shape, k, dtype, device="cuda")
    got = run_ext(t, k, use_noise, use_x)
    assert all(g.device.type == "cuda" for g in got)
    near = near_clamp_bounds(t, k, use_noise) if use_x and dtype != torch.float64 else None
    compare(got, run_ref(t, k, use_noise, use_x), tol, near)


@pytest.mark.cuda
@cuda_only
def test_cuda_work_splits_differ_only_in_the_order_of_log_prob_sums():
    """The split moves no sample: outputs and gradients are bit-identical, -log p is summed over
    other chunks (float32 rounding apart)."""
    k = 5
    t = make((64, 3, 32, 32), k, torch.float32, device="cuda")
    runs = {}
    for split in ("default", "small-calls"):
        assert C.set_cuda_work_split(split)
        try:
            runs[split] = run_ext(t, k, False, True)
        finally:
            C.set_cuda_work_split("auto")
    (out_d, nlp_d, *grads_d), (out_s, nlp_s, *grads_s) = runs.values()
    assert torch.equal(out_d, out_s)
    assert all(torch.equal(a, b) for a, b in zip(grads_d, grads_s))
    assert rel_err(nlp_s, nlp_d) <= 1e-6


@pytest.mark.cuda
@cuda_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_storage_matches_cpu_half_path(dtype):
    k = 5
    t = make((16, 3, 8, 8), k, dtype, device="cuda")
    t_cpu = {key: v.cpu() for key, v in t.items()}
    near = near_clamp_bounds(t, k, False, margin=1e-2)
    for i, (g, c) in enumerate(zip(run_ext(t, k, False, True), run_ext(t_cpu, k, False, True))):
        assert g.dtype == c.dtype
        if i >= 2:
            g, c = g.float().cpu().masked_fill(near, 0), c.float().masked_fill(near, 0)
        assert rel_err(g, c) <= (1e-2 if g.dtype == dtype else 1e-5)


@pytest.mark.cuda
@cuda_only
def test_cuda_words_bit_identical_and_deterministic():
    so = torch.tensor([-5, 2**62 - 3], dtype=torch.int64)
    got = ops.philox_words(so.cuda(), 100003, 11)
    assert torch.equal(got.cpu(), ops.philox_words(so, 100003, 11))
    t = make((64, 3, 32, 32), 5, torch.float32, device="cuda")
    first, second = run_ext(t, 5, False, True), run_ext(t, 5, False, True)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.cuda
@cuda_only
def test_cuda_graph_capture_reads_seed_offset_on_device():
    k = 5
    t = make((64, 3, 32, 32), k, torch.float32, device="cuda")
    so = t["seed_offset"].clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ops.sample_forward(t["mean"], t["rho"], None, None, so, None, k, 0.1, -INF, INF)  # warm-up
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, nlp, _ = ops.sample_forward(t["mean"], t["rho"], None, None, so, None, k, 0.1, -INF, INF)
    so.copy_(torch.tensor([11, 22], device="cuda"))
    graph.replay()
    torch.cuda.synchronize()
    want, want_nlp, _ = ops.sample_forward(t["mean"], t["rho"], None, None, so, None, k, 0.1, -INF, INF)
    assert torch.equal(out, want) and torch.equal(nlp, want_nlp)


@pytest.mark.cuda
@cuda_only
def test_cuda_seed_from_torch_generator_without_host_sync():
    k = 5
    t = make((16, 3, 8, 8), k, torch.float32, device="cuda")
    torch.cuda.manual_seed(77)
    torch.cuda.set_sync_debug_mode("error")  # a host synchronisation would raise
    try:
        first, second = _draw(t, k), _draw(t, k)
        torch.cuda.manual_seed(77)
        again = _draw(t, k)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert not torch.equal(first[2], second[2]) and not torch.equal(first[0], second[0])
    replay = ops.sample_forward(t["mean"], t["rho"], None, None, first[2], None, k, 0.3, -INF, INF)
    for a, b in zip(first, replay):
        assert torch.equal(a, b)
    g = torch.Generator(device="cuda").manual_seed(3)
    h = torch.Generator(device="cuda").manual_seed(3)
    assert torch.equal(_draw(t, k, g)[0], _draw(t, k, h)[0])


@pytest.mark.cuda
@cuda_only
def test_cuda_key_is_not_the_generators_seed_so_torch_random_ops_never_repeat_our_normals():
    """torch's CUDA random ops key Philox with the generator's seed and give thread i the counters
    (offset / 4 + j, i); ours are (quad, offset + s). Under one key the first threads of a randn
    after an ADT call returned that call's normals (review, 2026-12-05): the key is now the seed
    XOR kGeneratorSeedXor (csrc/cuda/adt_cuda.h)."""
    generator_seed_xor = 0x9E3779B97F4A7C15
    k = 8
    t = make((1, 4096), k, torch.float32, device="cuda")
    torch.cuda.manual_seed(0)
    used = _draw(t, k)[2].cpu()
    seed = torch.cuda.initial_seed()
    assert int(used[0]) % 2**64 == seed ^ generator_seed_xor  # a key torch's own ops never use


@pytest.mark.cuda
@cuda_only
def test_cuda_graph_replays_draw_fresh_seeds_from_the_generator():
    k = 5
    t = make((64, 3, 32, 32), k, torch.float32, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        _draw(t, k)  # warm-up
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, nlp, used = _draw(t, k)
    results = []
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        results.append((out.clone(), nlp.clone(), used.clone()))
    assert not torch.equal(results[0][2], results[1][2]) and not torch.equal(results[0][0], results[1][0])
    for got_out, got_nlp, got_used in results:  # each replay used the pair it reports
        want = ops.sample_forward(t["mean"], t["rho"], None, None, got_used, None, k, 0.3, -INF, INF)
        assert torch.equal(got_out, want[0]) and torch.equal(got_nlp, want[1])


@pytest.mark.cuda
@cuda_only
@pytest.mark.parametrize("shape", [(64, 3, 32, 32), (1000, 3), (3, 700), (1, 5000)])
def test_cuda_absent_and_expanded_grads_match_cpu(shape):
    k = 5
    t = make(shape, k, torch.float64, device="cuda")
    t_cpu = {key: v.cpu() for key, v in t.items()}
    per_example = t["grad_out"][0]
    for go in (None, per_example.expand(k, *shape), torch.tensor(0.5, dtype=torch.float64, device="cuda").expand(
            k, *shape)):
        for gn in (None, t["grad_nlp"]):
            args = (t["mean"], t["rho"], t["x"], None, t["seed_offset"], k, 0.3, 0.1, 0.9)
            got = ops.sample_backward(go, gn, *args)
            want = ops.sample_backward(None if go is None else go.cpu(), None if gn is None else gn.cpu(),
                                       *(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))
            near = near_clamp_bounds(t_cpu, k, False)
            compare(got, want, 1e-12, near)


def test_opcheck_schemas_and_fake_kernels():
    mean = torch.randn(3, 4, dtype=torch.float64)
    rho, x = torch.randn(3, 4, dtype=torch.float64), torch.rand(3, 4, dtype=torch.float64)
    so = torch.tensor([1, 2])
    # test_aot_dispatch_dynamic: the Meta kernels check and build shapes as SymInts (they once
    # called numel() and sizes(), which symbolic sizes refuse).
    utils = ("test_schema", "test_faketensor", "test_aot_dispatch_static", "test_aot_dispatch_dynamic")
    torch.library.opcheck(ops.sample_forward, (mean, rho, None, None, so, None, 5, 0.3, -INF, INF),
                          test_utils=utils)
    torch.library.opcheck(ops.sample_forward, (mean.float(), rho.float(), x.float(), torch.randn(5, 3, 4), so,
                                               None, 5, 0.3, 0.1, 0.9), test_utils=utils)
    go, gn = torch.randn(5, 3, 4, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    torch.library.opcheck(ops.sample_backward, (go, gn, mean, rho, x, None, so, 5, 0.3, 0.1, 0.9),
                          test_utils=utils)
    torch.library.opcheck(ops.sample_backward, (None, gn, mean, rho, x, None, so, 5, 0.3, 0.1, 0.9),
                          test_utils=utils)
    torch.library.opcheck(ops.philox_words, (so, 10, 5), test_utils=utils)
    # A channels_last input: the Meta kernel once gave its gradients the input's strides, the
    # kernels contiguous ones.
    mean, rho, x = (torch.randn(2, 3, 4, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
                    for _ in range(3))
    go, gn = torch.randn(5, 2, 3, 4, 5, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    torch.library.opcheck(ops.sample_backward, (go, gn, mean, rho, x, None, so, 5, 0.3, 0.1, 0.9),
                          test_utils=utils)


# ---- The eager entries (adt_fast._C.sample_forward_eager / sample_backward_eager) ----------------

def _eager_args(dtype=torch.float32, use_x=True, use_noise=False, k=3, device="cpu"):
    t = make((3, 5), k, dtype=dtype, seed=4, device=device)
    x, noise = (t["x"] if use_x else None), (t["noise"] if use_noise else None)
    forward = (t["mean"], t["rho"], x, noise, t["seed_offset"], None, k, 0.3, 0.1, 0.9)
    backward = (t["grad_out"], t["grad_nlp"], t["mean"], t["rho"], x, noise, t["seed_offset"], k, 0.3, 0.1, 0.9,
                True)
    return forward, backward


ON_DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, cuda_only])]


@pytest.mark.parametrize("device", ON_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("use_x,use_noise", [(False, False), (True, False), (True, True)])
def test_eager_entries_give_what_the_registered_ops_give(dtype, use_x, use_noise, device):
    forward, backward = _eager_args(dtype, use_x, use_noise, device=device)
    for got, want in ((C.sample_forward_eager(*forward), ops.sample_forward(*forward)),
                      (C.sample_backward_eager(*backward), ops.sample_backward(*backward))):
        assert isinstance(got, tuple) and len(got) == len(want) == 3
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("device", ON_DEVICES)
def test_eager_entries_draw_from_the_generator_as_the_op_does(device):
    """On CUDA from the generator's Philox state, as the registered op takes it."""
    mean = torch.zeros(2, 5, device=device)
    first = C.sample_forward_eager(mean, mean, None, None, None, torch.Generator(device).manual_seed(3), 2, 0.3,
                                   0.0, 1.0)
    second = ops.sample_forward(mean, mean, None, None, None, torch.Generator(device).manual_seed(3), 2, 0.3, 0.0,
                                1.0)
    assert torch.equal(first[2], second[2]) and torch.equal(first[0], second[0])


class _SeenOps(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


class _SeenFunctions(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class _Subclass(torch.Tensor):
    pass


@contextlib.contextmanager
def _autocast_kernels_registered():
    """Autocast on, with an autocast kernel registered for both ops (which it falls through
    otherwise), taken away again after."""
    lib = torch.library.Library("adt_fast_C", "IMPL")
    try:
        for op in ("sample_forward", "sample_backward"):
            torch.library.register_autocast(f"adt_fast_C::{op}", "cpu", torch.bfloat16, lib=lib)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    finally:
        lib._destroy()


@pytest.mark.parametrize("case", ["subclass", "negated view", "dispatch mode", "function mode", "fake tensors",
                                  "not a generator", "no mean", "grad to record", "autocast kernel"])
def test_eager_entries_leave_to_torch_ops_what_the_dispatcher_must_see(case):
    forward, backward = _eager_args()
    forward, backward = list(forward), list(backward)
    context = contextlib.nullcontext()
    if case == "subclass":
        forward[0] = backward[2] = forward[0].as_subclass(_Subclass)
    elif case == "negated view":  # the Negative key: read raw, every sample would take -mean
        forward[0] = backward[2] = torch._neg_view(forward[0])
    elif case == "dispatch mode":
        context = _SeenOps()
    elif case == "function mode":
        context = _SeenFunctions()
    elif case == "fake tensors":
        context = torch._subclasses.fake_tensor.FakeTensorMode(allow_non_fake_inputs=True)
    elif case == "not a generator":
        forward[4], forward[5] = None, 7
    elif case == "grad to record":  # under grad mode: the autograd fallback marks torch.ops' outputs
        forward[0] = backward[2] = forward[0].clone().requires_grad_()
    elif case == "autocast kernel":
        context = _autocast_kernels_registered()
    else:
        forward[0] = backward[2] = None
    with context:
        assert C.sample_forward_eager(*forward) is None
        if case != "not a generator":  # (the backward takes none)
            assert C.sample_backward_eager(*backward) is None
    # The controls: the same call, plain, is served directly; so are autocast without a kernel of its
    # own and a tensor that requires grad with grad mode off (as inside the autograd Function).
    forward, backward = _eager_args()
    assert C.sample_forward_eager(*forward) is not None and C.sample_backward_eager(*backward) is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert C.sample_forward_eager(*forward) is not None
    forward[0].requires_grad_()
    with torch.no_grad():
        assert C.sample_forward_eager(*forward) is not None


def test_the_common_call_takes_the_eager_entries(monkeypatch):
    """Each path checked: a plain call reaches no torch.ops op, a call under a dispatch mode both."""
    import adt_fast
    from adt_fast.ops import dispatch
    dispatch._extension_op("sample_forward")  # resolved
    through_torch_ops = []
    for name in ("sample_forward", "sample_backward"):
        monkeypatch.setitem(dispatch._EXTENSION_OPS, name,
                            lambda *args, op=dispatch._EXTENSION_OPS[name], name=name:
                            (through_torch_ops.append(name), op(*args))[1])

    def call():
        mean = torch.zeros(3, 4, requires_grad=True)
        out, nlp = adt_fast.sample_and_entropy(mean, torch.zeros(3, 4, requires_grad=True), 2, backend="cpu")
        (out.sum() + nlp.sum()).backward()

    call()
    assert through_torch_ops == []
    with _SeenOps():
        call()
    assert through_torch_ops == ["sample_forward", "sample_backward"]


def test_the_op_through_the_eager_entries_honours_a_negated_view_and_a_dispatch_mode():
    import adt_fast
    mean, rho = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), torch.zeros(3, 4)
    noise = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))
    want, _ = adt_fast.sample_and_entropy(-mean, rho, 2, 0.5, noise=noise, clamp=None, backend="cpu")
    got, _ = adt_fast.sample_and_entropy(torch._neg_view(mean), rho, 2, 0.5, noise=noise, clamp=None, backend="cpu")
    assert torch.equal(got, want)
    mean.requires_grad_()
    with _SeenOps() as seen:
        out, nlp = adt_fast.sample_and_entropy(mean, rho, 2, 0.5, backend="cpu")
        (out.sum() + nlp.sum()).backward()
    assert "adt_fast_C.sample_forward.default" in seen.names and "adt_fast_C.sample_backward.default" in seen.names


def test_eager_entries_name_themselves_to_the_profiler():
    import adt_fast
    mean = torch.zeros(3, 4, requires_grad=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out, nlp = adt_fast.sample_and_entropy(mean, torch.zeros(3, 4), 2, backend="cpu")
        (out.sum() + nlp.sum()).backward()
    names = {event.name for event in prof.events()}
    assert {"adt_fast_C::sample_forward", "adt_fast_C::sample_backward"} <= names


def test_eager_entries_raise_what_torch_ops_raises():
    forward, _ = _eager_args()
    bad = list(forward)
    bad[1] = bad[1][:2]
    with pytest.raises(RuntimeError) as direct:
        C.sample_forward_eager(*bad)
    with pytest.raises(RuntimeError) as registered:
        ops.sample_forward(*bad)
    assert str(direct.value) == str(registered.value) and "std_param" in str(direct.value)


def test_eager_entries_release_the_gil():
    """A Python thread runs while the kernel does, as torch.ops lets it. Held, the GIL would let it
    run only at the call's edges (the interpreter switches threads every few ms), never in the
    middle of a call of tens of ms."""
    mean = torch.zeros(1024, 4096)
    stamps, stop = [], threading.Event()

    def stamp():
        while not stop.is_set():
            stamps.append(time.perf_counter())

    thread = threading.Thread(target=stamp)
    thread.start()
    try:
        while not stamps:
            time.sleep(0.001)
        start = time.perf_counter()
        C.sample_forward_eager(mean, mean, None, None, None, None, 8, 0.3, 0.0, 1.0)
        end = time.perf_counter()
    finally:
        stop.set()
        thread.join()
    middle = (start + 0.4 * (end - start), start + 0.6 * (end - start))
    assert end - start > 0.02 and any(middle[0] < t < middle[1] for t in stamps)
