"""The public op on every backend this machine can run, against the float64 reference."""

import dataclasses
import math
import re
import sys
import types
import warnings
from unittest import mock

import pytest
import torch

import adt_fast
from adt_fast.ops import dispatch, reference
from adt_fast.ops.sample_and_entropy import draw_normals, sample_backward, sample_forward

CPU = torch.device("cpu")
KERNEL_BACKENDS = [name for name in dispatch.BACKENDS if name != "reference"]


def runnable(backend, dtype=torch.float64):
    reason = dispatch.get(backend).why_not(CPU, dtype)
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")


def rel_err(actual, expected):
    """Largest error relative to the tensor's largest magnitude (norm-wise, flash-attention style)."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-300)).item()


def make_inputs(shape, k, dtype=torch.float64, seed=0, with_x=True, mean_scale=1.0, rho_range=(-2, 2)):
    g = torch.Generator().manual_seed(seed)
    mean = (torch.randn(shape, generator=g, dtype=torch.float64) * mean_scale).to(dtype)
    lo, hi = rho_range
    rho = (torch.rand(shape, generator=g, dtype=torch.float64) * (hi - lo) + lo).to(dtype)
    x = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype) if with_x else None
    noise = torch.randn((k, *shape), generator=g, dtype=torch.float64).to(dtype)
    seed_offset = torch.randint(0, 2**62, (2,), generator=g)
    return mean, rho, x, noise, seed_offset


def run_both(backend, mean, rho, x, noise, seed_offset, k, eps=8 / 255, lo=0.0, hi=1.0):
    """Forward and backward of `backend` and of the float64 reference on the same inputs."""
    g = torch.Generator().manual_seed(1)
    out_shape = (k, *mean.shape)
    grad_out = torch.randn(out_shape, generator=g, dtype=torch.float64)
    grad_nlp = torch.randn((k, mean.shape[0]), generator=g, dtype=torch.float64)
    results = []
    for name, cast in ((backend, mean.dtype), ("reference", torch.float64)):
        args = [t if t is None else t.to(cast) for t in (mean, rho, x, noise)]
        out, nlp = sample_forward(*args[:4], seed_offset, k, eps, lo, hi, name)
        grads = sample_backward(grad_out.to(cast), grad_nlp.to(nlp.dtype), *args[:4], seed_offset, k,
                                eps, lo, hi, name)
        results.append((out, nlp, *grads))
    return results


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("use_noise", [True, False])
@pytest.mark.parametrize("with_x", [True, False])
def test_backend_matches_float64_reference(backend, dtype, tol, use_noise, with_x):
    runnable(backend, dtype)
    k = 5
    mean, rho, x, noise, seed_offset = make_inputs((3, 2, 5, 3), k, dtype, with_x=with_x)
    results = run_both(backend, mean, rho, x, noise if use_noise else None, seed_offset, k, eps=0.3,
                       lo=0.1, hi=0.9)
    names = ("out", "neg_log_prob", "grad_mean", "grad_std_param", "grad_x")
    for name, got, want in zip(names, *results):
        if want is None or want.numel() == 0:
            continue
        assert got.dtype == (want.dtype if dtype == torch.float64 else
                             (torch.float32 if name == "neg_log_prob" else dtype)), name
        assert rel_err(got, want) <= tol, f"{name}: {rel_err(got, want)}"


@pytest.mark.parametrize("backend", ["reference", *KERNEL_BACKENDS])
def test_extreme_inputs_are_finite_and_exact(backend):
    runnable(backend)
    k = 4
    mean = torch.linspace(-50, 50, 21, dtype=torch.float64).repeat_interleave(9).reshape(21, 9)
    rho = torch.linspace(-80, 80, 9, dtype=torch.float64).repeat(21, 1)
    noise = torch.randn((k, 21, 9), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        if dispatch.get(backend).why_not(CPU, dtype) is not None:
            continue
        got, want = run_both(backend, mean.to(dtype), rho.to(dtype), None, noise.to(dtype),
                             torch.zeros(2, dtype=torch.int64), k, eps=0.5)
        for g, w in zip(got[:4], want[:4]):
            assert torch.isfinite(g).all() and torch.isfinite(w).all()
            assert rel_err(g, w) <= tol


INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("std_param,mean", [(INF, 0.3), (-INF, 0.3), (NAN, 0.3), (0.5, NAN), (0.5, INF)])
def test_non_finite_inputs_give_the_references_nan_or_inf(backend, std_param, mean):
    """A diverged optimiser hands the op inf or NaN: each output is NaN exactly where the
    reference's is, and agrees with it elsewhere. std_param = +inf (sigma = inf) gives -log p =
    inf - inf = NaN; the host's polynomial log once took log(inf) as finite and made it -inf."""
    runnable(backend)
    k = 3
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        if dispatch.get(backend).why_not(CPU, dtype) is not None:
            continue
        means = torch.full((2, 4), mean, dtype=dtype)
        rho = torch.full((2, 4), std_param, dtype=dtype)
        rho[1] = 0.2   # one finite example beside it
        noise = torch.randn((k, 2, 4), generator=torch.Generator().manual_seed(0), dtype=dtype)
        got, want = run_both(backend, means, rho, None, noise, torch.zeros(2, dtype=torch.int64), k, eps=0.5)
        for name, g, w in zip(("out", "neg_log_prob", "grad_mean", "grad_std_param"), got, want):
            g = g.double()
            assert torch.equal(g.isnan(), w.isnan()), f"{name}: NaN at {g.isnan().tolist()}, reference {w.isnan().tolist()}"
            assert torch.equal(g.isinf(), w.isinf()), name
            finite = torch.isfinite(w)
            if finite.any():
                assert rel_err(g[finite], w[finite]) <= tol, name


@pytest.mark.parametrize("backend", ["reference", *KERNEL_BACKENDS])
@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # the interpreter casting 1e300
def test_huge_epsilon_and_clamp_bounds_past_float32_match_the_reference(backend):
    """Every epsilon up to FLT_MAX and every bound is legal: in float32 an epsilon near FLT_MAX gives finite
    gradients where the exact ones are finite (4 eps is not), and bounds past FLT_MAX clamp nothing."""
    runnable(backend, torch.float32)
    k = 3
    mean, rho, x, noise, seed_offset = make_inputs((3, 7), k, torch.float32)
    got, want = run_both(backend, mean, rho, x, noise, seed_offset, k, eps=1e38, lo=-1e300, hi=1e300)
    for name, g, w in zip(("out", "neg_log_prob", "grad_mean", "grad_std_param", "grad_x"), got, want):
        assert torch.isfinite(w).all(), name
        assert torch.isfinite(g).all(), name
        assert rel_err(g, w) <= 1e-5, f"{name}: {rel_err(g, w)}"


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend):
    runnable(backend)
    mean, rho, x, _, seed_offset = make_inputs((2, 3, 2), 3, seed=3)
    inputs = [t.clone().requires_grad_() for t in (mean, rho, x)]

    def op(m, r, xx):
        return sample_forward(m, r, xx, None, seed_offset, 6, 0.3, 0.2, 0.8, backend)

    assert torch.autograd.gradcheck(op, inputs)
    assert torch.autograd.gradcheck(lambda m, r: op(m, r, None), inputs[:2])


def test_half_precision_error_within_a_small_multiple_of_plain_pytorch():
    """Kernels in half storage must be as close to float64 as the reference computed from half inputs."""
    k = 5
    mean, rho, x, noise, seed_offset = make_inputs((4, 3, 4, 4), k)
    want = run_both("reference", mean, rho, x, noise, seed_offset, k)[1]
    for dtype in (torch.float16, torch.bfloat16):
        baseline = run_both("reference", mean.to(dtype), rho.to(dtype), x.to(dtype), noise.to(dtype),
                            seed_offset, k)[0]
        for backend in KERNEL_BACKENDS:
            if dispatch.get(backend).why_not(CPU, dtype) is not None:
                continue
            got = run_both(backend, mean.to(dtype), rho.to(dtype), x.to(dtype), noise.to(dtype),
                           seed_offset, k)[0]
            for g, b, w in zip(got, baseline, want):
                assert rel_err(g, w) <= 2 * rel_err(b, w) + 1e-6


@pytest.mark.parametrize("backend", ["reference", *KERNEL_BACKENDS])
def test_generator_samples_are_normal(backend):
    scipy_stats = pytest.importorskip("scipy.stats")
    runnable(backend)
    mean = torch.full((64, 128), 0.3, dtype=torch.float64)
    rho = torch.full_like(mean, 0.2)
    delta, _ = adt_fast.sample_and_entropy(mean, rho, 8, 0.5, generator=torch.Generator().manual_seed(7),
                                           backend=backend)
    z = ((torch.atanh(delta / 0.5) - mean) / reference.softplus(rho)).flatten().numpy()
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    assert scipy_stats.normaltest(z).pvalue > 1e-3
    assert scipy_stats.kstest(z, "norm").pvalue > 1e-3


def test_entropy_estimate_matches_numerical_integration():
    integrate = pytest.importorskip("scipy.integrate")
    eps, mu, rho = 0.7, 0.4, -0.3
    sigma = math.log1p(math.exp(rho))

    def density(d):
        u = math.atanh(d / eps)
        return math.exp(-0.5 * ((u - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi) * eps * (1 - (d / eps) ** 2))

    exact, _ = integrate.quad(lambda d: -density(d) * math.log(density(d)), -eps, eps, limit=200)
    mean = torch.full((4000, 1), mu, dtype=torch.float64)
    _, nlp = adt_fast.sample_and_entropy(mean, torch.full_like(mean, rho), 16, eps,
                                         generator=torch.Generator().manual_seed(0))
    standard_error = nlp.std().item() / math.sqrt(nlp.numel())
    assert abs(nlp.mean().item() - exact) < 4 * standard_error


@pytest.mark.parametrize("backend", ["reference", *KERNEL_BACKENDS])
def test_reproducible_and_fresh_samples(backend):
    runnable(backend, torch.float32)
    mean, rho = torch.zeros(3, 10), torch.zeros(3, 10)
    torch.manual_seed(11)
    first = adt_fast.sample_and_entropy(mean, rho, 5, backend=backend)
    second = adt_fast.sample_and_entropy(mean, rho, 5, backend=backend)
    torch.manual_seed(11)
    again = adt_fast.sample_and_entropy(mean, rho, 5, backend=backend)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], second[0])


@pytest.mark.parametrize("backend", ["reference", *KERNEL_BACKENDS])
def test_backward_sees_the_forward_noise(backend):
    """Gradients through the generator path equal analytic ones with r recovered from delta."""
    runnable(backend)
    mean, rho, _, _, _ = make_inputs((4, 6), 1, mean_scale=0.3)
    mean.requires_grad_(), rho.requires_grad_()
    eps = 0.9
    delta, nlp = adt_fast.sample_and_entropy(mean, rho, 3, eps, generator=torch.Generator().manual_seed(5),
                                             backend=backend)
    (delta.sum() + nlp.sum()).backward()
    r = (torch.atanh(delta.detach() / eps) - mean.detach()) / reference.softplus(rho.detach())
    expected = reference.sample_backward(torch.ones_like(delta), torch.ones_like(nlp), mean.detach(),
                                         rho.detach(), None, r, None, 3, eps, -math.inf, math.inf)
    torch.testing.assert_close(mean.grad, expected[0], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(rho.grad, expected[1], rtol=1e-8, atol=1e-10)


def test_cross_backend_samples_agree_for_one_seed():
    mean, rho = torch.zeros(5, 3, 4), torch.zeros(5, 3, 4)
    outputs = {}
    for backend in ["reference", *KERNEL_BACKENDS]:
        if dispatch.get(backend).why_not(CPU, torch.float32) is None:
            outputs[backend] = adt_fast.sample_and_entropy(
                mean, rho, 6, 0.5, generator=torch.Generator().manual_seed(3), backend=backend)
    for backend, (delta, nlp) in outputs.items():
        torch.testing.assert_close(delta, outputs["reference"][0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(nlp, outputs["reference"][1], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend", ["reference", *KERNEL_BACKENDS])
@pytest.mark.parametrize("shape,k", [((0, 3, 2, 2), 2), ((1,), 1), ((7,), 3), ((2, 3, 5, 7), 5), ((3, 4), 64)])
def test_shapes(backend, shape, k):
    runnable(backend, torch.float32)
    mean = torch.randn(shape, requires_grad=True)
    rho = torch.randn(shape, requires_grad=True)
    delta, nlp = adt_fast.sample_and_entropy(mean, rho, k, 0.1, backend=backend)
    assert delta.shape == (k, *shape) and nlp.shape == (k, shape[0])
    (delta.sum() + nlp.sum()).backward()
    assert mean.grad.shape == shape and torch.isfinite(rho.grad).all()
    assert (delta.abs() <= 0.1).all()  # tanh(u) rounds to 1 in float32 for |u| > 9


@pytest.mark.parametrize("backend", ["reference", *KERNEL_BACKENDS])
def test_non_contiguous_inputs(backend):
    runnable(backend)
    base = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    mean = base.permute(0, 2, 3, 1)[:, ::2]
    rho = torch.randn(4, 6, 6, 3, dtype=torch.float64)[:, ::2]
    x = torch.rand(4, 3, 6, 6, dtype=torch.float64).transpose(1, 3)[:, ::2]
    noise = torch.randn(2, *mean.shape, dtype=torch.float64)
    got = adt_fast.sample_and_entropy(mean, rho, 2, 0.2, x=x, noise=noise, backend=backend)
    want = adt_fast.sample_and_entropy(mean.contiguous(), rho.contiguous(), 2, 0.2, x=x.contiguous(),
                                       noise=noise.contiguous(), backend="reference")
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_backends_report():
    statuses = {s.name: s for s in adt_fast.backends()}
    assert set(statuses) == {"reference", "cpu", "cuda", "triton"}
    assert statuses["reference"].available and statuses["reference"].reason is None
    for status in statuses.values():
        assert status.available == (status.reason is None)
    if not torch.cuda.is_available():
        assert dispatch.get("cuda").why_not(CPU, torch.float32) is not None


def test_auto_and_environment_override(monkeypatch):
    with pytest.raises(RuntimeError, match="reference does not run on meta tensors"):
        dispatch.select("auto", torch.device("meta"), torch.float16)
    if dispatch.get("cpu").unavailable_reason() is None:
        assert dispatch.select("auto", CPU, torch.float32) == "cpu"
    monkeypatch.setenv("ADT_FAST_BACKEND", "reference")
    assert dispatch.select("auto", CPU, torch.float32) == "reference"
    monkeypatch.setenv("ADT_FAST_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="ADT_FAST_BACKEND"):
        dispatch.select("auto", CPU, torch.float32)
    monkeypatch.setenv("ADT_FAST_BACKEND", "cuda")  # the user never wrote backend="cuda": say where it came from
    with pytest.raises(RuntimeError, match=r"backend='cuda' \(from \$ADT_FAST_BACKEND\) cannot serve"):
        dispatch.select("auto", CPU, torch.float32)


def test_auto_says_when_it_falls_back_to_the_reference(monkeypatch):
    """A GPU user whose CUDA kernels did not build and who has no triton must hear that every ADT
    step runs the slow reference, and why; the fused backend's own choice stays silent."""
    class Unbuilt:
        def why_not(self, device, dtype):
            return "built without CPU kernels"

    if dispatch.get("cpu").why_not(CPU, torch.float32) is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert dispatch._resolve("auto", CPU, torch.float32, None) == "cpu"
    monkeypatch.setitem(dispatch.BACKENDS, "cpu", Unbuilt())
    with pytest.warns(RuntimeWarning, match=r"pure-PyTorch reference on cpu .* because cpu: built without CPU kernels"):
        assert dispatch._resolve("auto", CPU, torch.float32, None) == "reference"


def test_backend_choice_is_cached_but_follows_the_environment(monkeypatch):
    """select() resolves once per (request, device type, dtype, $ADT_FAST_BACKEND,
    $TRITON_INTERPRET): a repeated call does not re-resolve, and changing either variable after
    import still changes the answer (TRITON_INTERPRET until the kernels are imported, whose mode
    then decides: test_backends_tell_the_truth_about_this_machine)."""
    triton_missing = dispatch.get("triton").missing()  # imports the kernels in this run's mode
    monkeypatch.delitem(sys.modules, "adt_fast.ops.triton_kernels", raising=False)  # as if not yet
    monkeypatch.delenv("ADT_FAST_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    first = dispatch.select("auto", CPU, torch.float32)
    assert first in ("cpu", "reference")

    def no_resolving(*args):
        raise AssertionError("resolved again")

    with monkeypatch.context() as patch:
        patch.setattr(dispatch, "_resolve", no_resolving)
        assert dispatch.select("auto", CPU, torch.float32) == first
    monkeypatch.setenv("ADT_FAST_BACKEND", "reference")
    assert dispatch.select("auto", CPU, torch.float32) == "reference"
    monkeypatch.delenv("ADT_FAST_BACKEND")
    assert dispatch.select("auto", CPU, torch.float32) == first
    if triton_missing is None:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            dispatch.select("triton", CPU, torch.float32)
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert dispatch.select("triton", CPU, torch.float32) == "triton"
    assert dispatch.get("triton") is dispatch.get("triton")  # no per-call rebuild


def test_backends_tell_the_truth_about_this_machine(monkeypatch):
    """Without a CUDA device the cuda backend is unavailable, and triton too unless
    TRITON_INTERPRET=1 lets it run CPU tensors."""
    triton_missing = dispatch.get("triton").missing()  # imports the kernels in this run's mode
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    kernels = "adt_fast.ops.triton_kernels"
    monkeypatch.delitem(sys.modules, kernels, raising=False)  # as if not imported yet: the variable decides
    status = {s.name: s for s in adt_fast.backends()}
    assert not status["cuda"].available and status["cuda"].reason
    assert not status["triton"].available and (triton_missing or "TRITON_INTERPRET=1") in status["triton"].reason
    if triton_missing is None:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert {s.name: s for s in adt_fast.backends()}["triton"].available
        # Imported in compiled mode, then the variable set: the kernels cannot run CPU tensors
        # (a call once failed deep in triton with "0 active drivers"), and it says why.
        monkeypatch.setitem(sys.modules, kernels, types.SimpleNamespace(INTERPRETED=False))
        triton = {s.name: s for s in adt_fast.backends()}["triton"]
        assert not triton.available and "set after adt_fast's Triton kernels were imported" in triton.reason


def test_a_triton_older_than_the_kernels_is_unavailable_not_a_failure_at_the_first_call(monkeypatch):
    """torch 2.5 pins triton 3.1, which imports the kernels and then fails inside the first call
    (it lacks tl.mul): dispatch must say so up front, so that `auto` leaves triton out."""
    triton = pytest.importorskip("triton")
    monkeypatch.setattr(triton, "__version__", "3.1.0")
    monkeypatch.delitem(sys.modules, "adt_fast.ops.triton_kernels", raising=False)
    dispatch._triton_available.cache_clear()
    try:
        reason = {s.name: s for s in adt_fast.backends()}["triton"].reason
    finally:
        dispatch._triton_available.cache_clear()  # recomputed with the real version once this test is undone
    assert reason is not None and "triton 3.1.0 is older than 3.6" in reason


@pytest.mark.parametrize("backend", ["reference", *KERNEL_BACKENDS])
@pytest.mark.parametrize("nlp_layout", ["none", "scalar", "per_example", "strided"])
@pytest.mark.parametrize("layout", ["none", "scalar", "per_element", "strided"])
def test_backend_backward_takes_none_and_expanded_gradients(backend, layout, nlp_layout):
    """The backend contract: None is a zero gradient, and expanded grad_out (all strides 0, or
    strides (0, contiguous)) or any strided one gives what the materialised gradient gives; so does
    grad_nlp of any strides (nlp.sum() gives all zeros, an expanded (B,) (0, 1))."""
    runnable(backend)
    k, shape = 3, (2, 5)
    mean, rho, x, _, seed_offset = make_inputs(shape, k)
    g = torch.Generator().manual_seed(7)
    grad_out = {"none": None,
                "scalar": torch.tensor(0.7, dtype=torch.float64).expand(k, *shape),
                "per_element": torch.randn(shape, generator=g, dtype=torch.float64).expand(k, *shape),
                "strided": torch.randn((*shape, k), generator=g, dtype=torch.float64).movedim(-1, 0)}[layout]
    grad_nlp = {"none": None,
                "scalar": torch.tensor(-0.3, dtype=torch.float64).expand(k, shape[0]),
                "per_example": torch.randn(shape[0], generator=g, dtype=torch.float64).expand(k, shape[0]),
                "strided": torch.randn((shape[0], k), generator=g, dtype=torch.float64).t()}[nlp_layout]
    run = dispatch.get(backend).backward
    got = run(grad_out, grad_nlp, mean, rho, x, None, seed_offset, k, 0.1, 0.0, 1.0)
    dense = lambda t, shp: torch.zeros(shp, dtype=torch.float64) if t is None else t.contiguous()  # noqa: E731
    want = reference.sample_backward(dense(grad_out, (k, *shape)), dense(grad_nlp, (k, shape[0])), mean, rho,
                                     x, None, seed_offset, k, 0.1, 0.0, 1.0)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", ["reference", *KERNEL_BACKENDS])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_backend_backward_without_x_gradient(backend, dtype):
    """need_grad_x=False: no x gradient, and the others exactly as with it (x still masks them by
    the clamp, which binds for some elements here)."""
    runnable(backend, dtype)
    k, shape = 4, (3, 6)
    mean, rho, x, _, seed_offset = make_inputs(shape, k, dtype, mean_scale=3.0)
    g = torch.Generator().manual_seed(3)
    grads = (torch.randn((k, *shape), generator=g).to(dtype), torch.randn((k, shape[0]), generator=g))
    grads = (grads[0], grads[1].to(torch.float64 if dtype == torch.float64 else torch.float32))
    run = dispatch.get(backend).backward
    with_x = run(*grads, mean, rho, x, None, seed_offset, k, 0.5, 0.0, 1.0)
    without = run(*grads, mean, rho, x, None, seed_offset, k, 0.5, 0.0, 1.0, need_grad_x=False)
    unclamped = run(*grads, mean, rho, None, None, seed_offset, k, 0.5, 0.0, 1.0)
    assert with_x[2] is not None and without[2] is None
    assert not torch.equal(with_x[0], unclamped[0])  # the clamp binds: x matters to grad_mean
    assert torch.equal(with_x[0], without[0]) and torch.equal(with_x[1], without[1])


def test_op_asks_for_x_gradient_only_when_x_requires_grad(monkeypatch):
    """The eager path passes need_grad_x = whether x requires grad, so the trainers' backward (x
    data, no grad) neither accumulates nor writes it."""
    import dataclasses
    seen = []
    cpu = dispatch.get("cpu") if dispatch.get("cpu").why_not(CPU, torch.float32) is None else dispatch.get("reference")

    def spy(*args, need_grad_x=True):
        seen.append(need_grad_x)
        return cpu.backward(*args, need_grad_x=need_grad_x)
    monkeypatch.setitem(dispatch.BACKENDS, cpu.name, dataclasses.replace(cpu, backward=spy))
    mean, rho, x, _, _ = make_inputs((2, 8), 3, torch.float32)
    mean.requires_grad_()
    for x_grad in (False, True):
        xin = x.clone().requires_grad_(x_grad)
        out, nlp = adt_fast.sample_and_entropy(mean, rho, 3, 0.1, x=xin, backend=cpu.name)
        (out.sum() + nlp.mean()).backward()
        assert seen[-1] is x_grad and (xin.grad is not None) is x_grad


def test_backend_forward_draws_and_returns_its_seed():
    """forward(seed_offset=None) draws (seed, offset) from the generator and returns them, so a
    backward (or a rerun with that pair) sees the same samples; noise= draws nothing."""
    mean, rho, x, noise, _ = make_inputs((2, 4), 3)
    for backend in ["reference", *KERNEL_BACKENDS]:
        if dispatch.get(backend).why_not(CPU, torch.float64) is not None:
            continue
        forward = dispatch.get(backend).forward
        out, nlp, used = forward(mean, rho, x, None, None, torch.Generator().manual_seed(5), 3, 0.1, 0.0, 1.0)
        again, _, used_again = forward(mean, rho, x, None, used, None, 3, 0.1, 0.0, 1.0)
        assert used.dtype == torch.int64 and used.shape == (2,) and torch.equal(used, used_again)
        assert torch.equal(out, again), backend
        if backend in ("reference", "triton"):  # the Python-launched backends
            _, _, with_noise = forward(mean, rho, x, noise, None, None, 3, 0.1, 0.0, 1.0)
            assert torch.equal(with_noise, torch.zeros(2, dtype=torch.int64)), backend


def test_opcheck():
    mean, rho, x, noise, seed_offset = make_inputs((2, 3), 2, torch.float32)
    for args in ((mean, rho, x, None), (mean, rho, None, noise)):
        torch.library.opcheck(sample_forward, (*args, seed_offset, 2, 0.1, 0.0, 1.0, "auto"))
        grads = (torch.randn(2, 2, 3), torch.randn(2, 2))
        torch.library.opcheck(sample_backward, (*grads, *args, seed_offset, 2, 0.1, 0.0, 1.0, "auto"))
        torch.library.opcheck(sample_backward, (*grads, *args, seed_offset, 2, 0.1, 0.0, 1.0, "auto", False))


@pytest.mark.parametrize("k,eps,lo,hi,message", [(0, 0.1, 0.0, 1.0, "num_samples must be >= 1"),
                                                 (2, -0.1, 0.0, 1.0, "epsilon must be > 0"),
                                                 (2, math.nan, 0.0, 1.0, "epsilon must be > 0"),
                                                 (2, 1e39, 0.0, 1.0, "epsilon must be > 0 and at most 3.403e"),
                                                 (2, 0.1, 1.0, 0.0, "lo < hi")])
def test_custom_ops_called_directly_refuse_bad_settings(k, eps, lo, hi, message):
    """The Python-launched backends once gave empty outputs for k = 0 and a math domain error for a
    negative epsilon."""
    mean, rho, x, _, seed_offset = make_inputs((2, 3), 2, torch.float32)
    with pytest.raises(ValueError, match=message):
        sample_forward(mean, rho, x, None, seed_offset, k, eps, lo, hi, "reference")
    with pytest.raises(ValueError, match=message):
        sample_backward(None, None, mean, rho, x, None, seed_offset, k, eps, lo, hi, "reference")


@pytest.mark.parametrize("which, value, message", [
    ("grad_out", torch.ones(2, 3), r"grad_out must have shape \(2, 2, 3\), got \(2, 3\)"),
    ("grad_out", torch.ones(1, 2, 3), r"grad_out must have shape \(2, 2, 3\)"),
    ("grad_nlp", torch.ones(3), r"grad_nlp must have shape \(2, 2\), got \(3,\)"),
    ("grad_nlp", torch.ones(2, 2, dtype=torch.int64), "grad_nlp must be a floating tensor"),
])
def test_custom_backward_called_directly_refuses_gradients_of_the_wrong_shape(which, value, message):
    """The reference backend once broadcast them silently; the cpu backend refused them."""
    mean, rho, x, _, seed_offset = make_inputs((2, 3), 2, torch.float32)
    grads = {"grad_out": torch.ones(2, 2, 3), "grad_nlp": torch.ones(2, 2), which: value}
    with pytest.raises((ValueError, TypeError), match=message):
        sample_backward(grads["grad_out"], grads["grad_nlp"], mean, rho, x, None, seed_offset, 2, 0.1, 0.0, 1.0,
                        "reference")


def test_a_number_of_samples_past_int64_is_refused_by_name():
    """The cpu backend's binding once answered "Expected a value of type 'int' ... found type 'int'"."""
    mean = torch.zeros(1, 2)
    with pytest.raises(ValueError, match=r"num_samples must be >= 1 and < 2\*\*63, got 9223372036854775808"):
        adt_fast.sample_and_entropy(mean, mean, 2**63, backend="cpu")


def test_an_output_past_a_tensors_size_is_refused_by_name():
    """torch's allocator once answered 'Storage size calculation overflowed', naming nothing."""
    mean = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"num_samples=4611686018427387904 samples of a mean of shape \(2, 3\)"):
        adt_fast.sample_and_entropy(mean, mean, 2**62, backend="cpu")


@pytest.mark.parametrize("layout", ["sparse", "nested"])
def test_sparse_and_nested_tensors_are_refused_by_name(layout):
    mean = torch.zeros(2, 3)
    bad = mean.to_sparse() if layout == "sparse" else torch.nested.nested_tensor([torch.zeros(3), torch.zeros(2)])
    with pytest.raises(TypeError, match=f"mean must be a dense tensor, got a {'torch.sparse_coo' if layout == 'sparse' else 'nested'} one"):
        adt_fast.sample_and_entropy(bad, bad, backend="cpu")


def test_custom_ops_called_directly_refuse_a_0d_mean():
    """_check_op_arguments exists for direct torch.ops calls; a 0-d mean raised a bare IndexError there."""
    scalar = torch.tensor(1.0)
    with pytest.raises(ValueError, match="mean must have a batch dimension"):
        sample_forward(scalar, scalar, None, None, torch.zeros(2, dtype=torch.int64), 1, 0.1, 0.0, 1.0, "cpu")


def test_an_epsilon_past_the_compute_dtype_is_refused_not_turned_into_inf():
    """float32 kernels would compute with inf and return -inf or NaN perturbations."""
    mean = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="epsilon must be > 0 and at most 3.403e"):
        adt_fast.sample_and_entropy(mean, mean - 100, 1, 1e39, clamp=None)
    out, _ = adt_fast.sample_and_entropy(mean.double(), mean.double() - 100, 1, 1e39, clamp=None)
    assert torch.isfinite(out).all()


def test_the_fake_backward_gives_the_real_outputs_contiguous_strides():
    """A channels_last mean once got channels_last fake gradients but contiguous real ones, which
    would make torch.compile trace a wrong layout (the compiled op's own Meta kernel: test_extension.py)."""
    mean, rho, x, _, seed_offset = make_inputs((2, 3, 4, 5), 2, torch.float32)
    mean, rho, x = (t.contiguous(memory_format=torch.channels_last) for t in (mean, rho, x))
    grads = (torch.randn(2, 2, 3, 4, 5), torch.randn(2, 2))
    torch.library.opcheck(sample_backward, (*grads, mean, rho, x, None, seed_offset, 2, 0.1, 0.0, 1.0, "reference"))


@pytest.mark.parametrize("bad", ["meta", "float", "shape"])
def test_custom_ops_called_directly_refuse_a_bad_seed_offset(bad):
    """A meta seed_offset among CPU tensors once sent the call to the fake kernel, which returned
    unwritten memory; the reference read a float pair by truncating it."""
    mean, rho, x, _, seed_offset = make_inputs((2, 3), 2, torch.float32)
    seed_offset = {"meta": seed_offset.to("meta"), "float": seed_offset.double(),
                   "shape": seed_offset.repeat(2)}[bad]
    with pytest.raises(ValueError, match="seed_offset must be an int64 tensor of 2 values"):
        sample_forward(mean, rho, x, None, seed_offset, 2, 0.1, 0.0, 1.0, "reference")
    with pytest.raises(ValueError, match="seed_offset must be an int64 tensor of 2 values"):
        sample_backward(torch.ones(2, 2, 3), torch.ones(2, 2), mean, rho, x, None, seed_offset, 2, 0.1, 0.0, 1.0,
                        "reference")


def test_torch_compile_has_no_graph_breaks():
    """Also when epsilon varies between calls (Dynamo then traces it as a symbolic float, which
    the argument checks must handle: math.isfinite on it would break the graph). The compiled
    loss and gradients are the eager ones for each epsilon and the clamp, bit for bit."""
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(2, 3, generator=g, requires_grad=True)
    rho = torch.randn(2, 3, generator=g, requires_grad=True)
    x = torch.tensor([[0.15, 0.85, 0.5], [0.85, 0.15, 0.5]])  # near the clamp's bounds: each binds at each eps

    def loss(m, r, eps):
        out, nlp = adt_fast.sample_and_entropy(m, r, 4, eps, x=x, clamp=(0.1, 0.9))
        return out.square().sum() + nlp.mean()

    def loss_and_grads(fn, eps):
        torch.manual_seed(0)  # the same draws for compiled and eager
        mean.grad = rho.grad = None
        value = fn(mean, rho, eps)
        value.backward()
        return value.detach(), mean.grad, rho.grad

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    for eps in (0.1, 0.2, 0.3):
        got, want = loss_and_grads(compiled, eps), loss_and_grads(loss, eps)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_meta_tensors_give_shapes():
    mean = torch.empty(4, 3, 5, device="meta", requires_grad=True)
    delta, nlp = adt_fast.sample_and_entropy(mean, torch.empty_like(mean), 2, x=torch.empty_like(mean))
    assert delta.shape == (2, 4, 3, 5) and nlp.shape == (2, 4) and delta.device.type == "meta"
    (delta.sum() + nlp.sum()).backward()
    assert mean.grad.shape == mean.shape and mean.grad.device.type == "meta"


def test_numpy_scalars_and_one_sided_clamp():
    import numpy as np
    mean, rho = torch.zeros(2, 3), torch.zeros(2, 3)
    x = torch.full((2, 3), 0.99)
    out, _ = adt_fast.sample_and_entropy(mean, rho, np.int64(3), np.float32(0.5), x=x, clamp=(-math.inf, 1.0),
                                         generator=torch.Generator().manual_seed(0))
    want, _ = adt_fast.sample_and_entropy(mean, rho, 3, float(np.float32(0.5)), x=x, clamp=None,
                                          generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 2, 3) and out.max() <= 1.0 and out.min() < 0.99
    torch.testing.assert_close(out, want.clamp(max=1.0), rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["reference", *KERNEL_BACKENDS])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_empty_half_precision_input_gives_x_its_gradient(backend, dtype):
    runnable(backend, dtype)
    mean = torch.zeros(0, 3, dtype=dtype, requires_grad=True)
    x = torch.zeros(0, 3, dtype=dtype, requires_grad=True)
    delta, nlp = adt_fast.sample_and_entropy(mean, torch.zeros(0, 3, dtype=dtype), 2, x=x, backend=backend)
    (delta.float().sum() + nlp.sum()).backward()
    assert x.grad.shape == x.shape and mean.grad.shape == mean.shape


BAD_CALLS = [
    (lambda m, r: adt_fast.sample_and_entropy(m, r[:1]), ValueError, "std_param"),
    (lambda m, r: adt_fast.sample_and_entropy(m.long(), r), TypeError, "mean"),
    (lambda m, r: adt_fast.sample_and_entropy(m, r, x=torch.rand(2, 3, device="meta")), ValueError, "x"),
    (lambda m, r: adt_fast.sample_and_entropy(m, r, 0), ValueError, "num_samples"),
    (lambda m, r: adt_fast.sample_and_entropy(m, r, 2.0), TypeError, "num_samples"),
    (lambda m, r: adt_fast.sample_and_entropy(m, r, 1, 0.0), ValueError, "epsilon"),
    (lambda m, r: adt_fast.sample_and_entropy(m, r, 1, -1.0), ValueError, "epsilon"),
    (lambda m, r: adt_fast.sample_and_entropy(m, r, 1, float("nan")), ValueError, "epsilon"),
    (lambda m, r: adt_fast.sample_and_entropy(m, r, 2, noise=torch.randn(3, 2, 3)), ValueError, "noise"),
    (lambda m, r: adt_fast.sample_and_entropy(m, r, 2, noise=torch.randn(2, 2, 3).double()), TypeError, "noise"),
    (lambda m, r: adt_fast.sample_and_entropy(m, r, x=torch.rand(2, 3), clamp=(1.0, 0.0)), ValueError, "clamp"),
    (lambda m, r: adt_fast.sample_and_entropy(m, r, x=torch.rand(2, 3), clamp=(0.0, math.nan)), ValueError,
     "clamp"),
    (lambda m, r: adt_fast.sample_and_entropy(m, r, generator=5), TypeError, "generator"),
    (lambda m, r: adt_fast.sample_and_entropy(m, r, 2, noise=torch.randn(2, 2, 3, requires_grad=True)),
     ValueError, "noise requires grad"),
    (lambda m, r: adt_fast.sample_and_entropy(m, r, backend="fastest"), ValueError, "backend"),
    (lambda m, r: adt_fast.sample_and_entropy(m, r, backend="cuda"), RuntimeError, "cuda"),
]


@pytest.mark.parametrize("call,error,name", BAD_CALLS)
def test_bad_input_names_the_argument(call, error, name):
    with pytest.raises(error, match=name):
        call(torch.zeros(2, 3), torch.zeros(2, 3))


GPU_BACKENDS = ("cuda", "triton")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("use_noise", [True, False])
def test_gpu_backend_matches_float64_reference(backend, dtype, tol, use_noise):
    gpu = torch.device("cuda")
    reason = dispatch.get(backend).why_not(gpu, dtype)
    if reason is not None:
        pytest.skip(reason)
    k = 5
    mean, rho, x, noise, seed_offset = make_inputs((33, 3, 8, 8), k, torch.float64)
    g = torch.Generator().manual_seed(1)
    grads = (torch.randn((k, *mean.shape), generator=g, dtype=torch.float64),
             torch.randn((k, mean.shape[0]), generator=g, dtype=torch.float64))
    results = []
    for name, device, cast in ((backend, gpu, dtype), ("reference", CPU, torch.float64)):
        args = [t.to(device, cast) for t in (mean, rho, x)] + [noise.to(device, cast) if use_noise else None]
        out, nlp = sample_forward(*args, seed_offset.to(device), k, 0.3, 0.1, 0.9, name)
        back = sample_backward(grads[0].to(device, cast), grads[1].to(device, nlp.dtype), *args,
                               seed_offset.to(device), k, 0.3, 0.1, 0.9, name)
        results.append([t.cpu() for t in (out, nlp, *back)])
    for got, want in zip(*results):
        assert rel_err(got, want) <= tol


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_philox_words_match_reference(backend):
    if dispatch.get(backend).why_not(torch.device("cuda"), torch.float32) is not None:
        pytest.skip(dispatch.get(backend).why_not(torch.device("cuda"), torch.float32))
    seed_offset = torch.tensor([2**61 + 12345, 2**33 + 7])
    got = dispatch.get(backend).philox_words(seed_offset.cuda(), 1000, 9).cpu()
    assert torch.equal(got, dispatch.get("reference").philox_words(seed_offset, 1000, 9))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_draw_normals_are_the_eager_calls(backend):
    """draw_normals takes the pair the backend's eager forward takes (the cuda backend's comes
    from the generator's Philox state, not torch.randint), so a data-parallel rank's rows get the
    normals a single process would use."""
    if dispatch.get(backend).why_not(torch.device("cuda"), torch.float32) is not None:
        pytest.skip(dispatch.get(backend).why_not(torch.device("cuda"), torch.float32))
    mean, rho = torch.randn(10, 3, 8, 8, device="cuda"), torch.randn(10, 3, 8, 8, device="cuda")
    torch.manual_seed(4)
    delta, nlp = adt_fast.sample_and_entropy(mean, rho, 3, 0.1, backend=backend)
    after = torch.rand(1, device="cuda")
    torch.manual_seed(4)
    noise = draw_normals(mean.shape, 3, rows=(5, 10), device=mean.device, backend=backend)
    assert torch.equal(torch.rand(1, device="cuda"), after)  # the generator advanced alike
    mine, my_nlp = adt_fast.sample_and_entropy(mean[5:], rho[5:], 3, 0.1, noise=noise, backend=backend)
    torch.testing.assert_close(mine, delta[:, 5:], rtol=0, atol=1e-6)
    torch.testing.assert_close(my_nlp, nlp[:, 5:], rtol=1e-5, atol=1e-4)


def test_draw_normals_checks_its_rows():
    with pytest.raises(ValueError, match="rows must be"):
        draw_normals((5, 3), 2, rows=(2, 9), device="cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_call_does_not_synchronise_and_is_reproducible():
    mean = torch.zeros(64, 3, 32, 32, device="cuda", requires_grad=True)
    rho = torch.zeros_like(mean, requires_grad=True)
    torch.manual_seed(0)
    torch.cuda.set_sync_debug_mode("error")  # any host synchronisation raises
    try:
        delta, nlp = adt_fast.sample_and_entropy(mean, rho, 5)
        (delta.sum() + nlp.sum()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.manual_seed(0)
    again, _ = adt_fast.sample_and_entropy(mean, rho, 5)
    assert torch.equal(delta, again)


@pytest.mark.parametrize("backend", ["reference", *KERNEL_BACKENDS])
@pytest.mark.parametrize("with_x", [False, True])
def test_backward_holds_order_n_memory(backend, with_x):
    """What autograd keeps between the passes: the inputs and (seed, offset), never k x N normals."""
    runnable(backend, torch.float32)
    k, shape = 64, (3, 4, 5)
    mean = torch.zeros(shape, requires_grad=True)
    rho = torch.zeros(shape, requires_grad=True)
    x = torch.rand(shape, requires_grad=True) if with_x else None
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, nlp = adt_fast.sample_and_entropy(mean, rho, k, 0.1, x=x, backend=backend)
    n = mean.numel()
    assert sum(saved) <= (3 if with_x else 2) * n + 2
    (out.sum() + nlp.sum()).backward()
    assert torch.isfinite(mean.grad).all()


@pytest.mark.parametrize("loss", ["square", "sum"])
def test_double_backward_raises_instead_of_returning_zeros(loss):
    """Also when the incoming gradients are constants (sum), where torch's once_differentiable
    would hand back a constant and the second derivative would silently lose the op's term."""
    mean = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    rho = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    delta, nlp = adt_fast.sample_and_entropy(mean, rho, 2, 0.1)
    out_loss = delta.square().sum() if loss == "square" else delta.sum()
    (grad,) = torch.autograd.grad(out_loss + nlp.sum(), mean, create_graph=True)
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(grad.square().sum(), mean)


# The reference below rho = -20 and at the clamp's bounds, where the float64 comparisons above cannot
# see a wrong tail term (e^-40 is below their resolution) or a strict inequality (mutation review).
def test_log_softplus_tail_is_accurate():
    rho = torch.tensor([-20.5, -25.0, -30.0], dtype=torch.float64)
    want = torch.tensor([math.log(math.log1p(math.exp(r))) for r in rho.tolist()], dtype=torch.float64)
    torch.testing.assert_close(reference.log_softplus(rho), want, rtol=1e-14, atol=0)
    want_d = torch.tensor([(1 / (1 + math.exp(-r))) / math.log1p(math.exp(r)) for r in rho.tolist()],
                          dtype=torch.float64)
    torch.testing.assert_close(reference.sigmoid_over_softplus(rho), want_d, rtol=1e-14, atol=0)


def test_gradient_passes_at_the_clamp_boundary_like_torch_clamp():
    k = 1
    mean = torch.zeros(2, 3, dtype=torch.float64)
    rho = torch.zeros(2, 3, dtype=torch.float64)
    noise = torch.zeros(k, 2, 3, dtype=torch.float64)          # delta = 0 exactly
    x = torch.tensor([[0.0, 1.0, 0.5], [0.0, 1.0, 0.5]], dtype=torch.float64)
    grad_out = torch.ones(k, 2, 3, dtype=torch.float64)
    grad_nlp = torch.zeros(k, 2, dtype=torch.float64)
    _, _, gx = reference.sample_backward(grad_out, grad_nlp, mean, rho, x, noise, None, k, 0.1, 0.0, 1.0)
    xr = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(torch.clamp(xr + 0.1 * torch.tanh(mean), 0.0, 1.0).sum(), xr)
    torch.testing.assert_close(gx, want)


# The autograd wrapper's contracts, draw_normals with a generator and mid-quad rows, compiled calls'
# generator, the defaults and the CUDA priority of auto (mutation review 2026-12-05).
CPU = torch.device("cpu")


def _spy_backward(monkeypatch):
    """The backend the op runs on CPU, its backward replaced by one that records its arguments."""
    cpu = dispatch.get("cpu") if dispatch.get("cpu").why_not(CPU, torch.float32) is None else dispatch.get("reference")
    seen = []

    def spy(grad_out, grad_nlp, *args, need_grad_x=True):
        seen.append({"grad_out": grad_out, "grad_nlp": grad_nlp, "need_grad_x": need_grad_x})
        return cpu.backward(grad_out, grad_nlp, *args, need_grad_x=need_grad_x)
    monkeypatch.setitem(dispatch.BACKENDS, cpu.name, dataclasses.replace(cpu, backward=spy))
    return cpu.name, seen


def test_custom_op_asks_for_x_gradient_only_when_x_requires_grad(monkeypatch):
    """The torch.compile path (the custom ops' autograd) as the eager one: need_grad_x is whether x
    requires grad (mutant: whether x is given), and x gets a gradient exactly then."""
    name, seen = _spy_backward(monkeypatch)
    mean, rho, x, _, seed_offset = make_inputs((2, 8), 3, torch.float32)
    mean.requires_grad_()
    for x_grad in (False, True):
        xin = x.clone().requires_grad_(x_grad)
        out, nlp = sample_forward(mean, rho, xin, None, seed_offset, 3, 0.1, 0.0, 1.0, name)
        (out.sum() + nlp.mean()).backward()
        assert seen[-1]["need_grad_x"] is x_grad and (xin.grad is not None) is x_grad


@pytest.mark.parametrize("used", ["delta", "nlp"])
def test_eager_op_passes_an_unused_outputs_gradient_as_none(monkeypatch, used):
    """An output that the loss does not use sends None to the backend, never k x N zeros
    (sample_and_entropy's docstring; mutant: set_materialize_grads(False) dropped)."""
    name, seen = _spy_backward(monkeypatch)
    mean, rho, _, _, _ = make_inputs((3, 8), 4, torch.float32)
    mean.requires_grad_()
    delta, nlp = adt_fast.sample_and_entropy(mean, rho, 4, 0.1, backend=name)
    (delta.sum() if used == "delta" else nlp.sum()).backward()
    unused = "grad_nlp" if used == "delta" else "grad_out"
    assert seen[-1][unused] is None


def test_draw_normals_of_an_empty_batch_are_empty():
    """As the op at B = 0; it once said 'rows must be ..., got None' to a caller who gave no rows."""
    assert draw_normals((0, 5), 2, device="cpu").shape == (2, 0, 5)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        draw_normals((0, 5), 0, device="cpu")


def test_draw_normals_refuses_an_empty_row_range():
    """rows=(start, stop) must hold at least one row (mutant: start == stop accepted)."""
    with pytest.raises(ValueError, match="rows must be"):
        draw_normals((5, 3), 2, rows=(2, 2), device="cpu")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("rows", [(0, 10), (3, 7), (5, 10), (9, 10)])
def test_draw_normals_are_the_eager_calls_with_a_generator(backend, rows):
    """On the CPU, as test_gpu_draw_normals_are_the_eager_calls on a GPU: an explicit generator's
    normals (mutant: draw_normals ignores `generator`), rows that start in the middle of a Philox
    quad (row size 3: mutant: an off-by-one in the quad slicing), the generator advanced alike."""
    if dispatch.get(backend).why_not(CPU, torch.float32) is not None:
        pytest.skip(dispatch.get(backend).why_not(CPU, torch.float32))
    mean, rho = torch.randn(10, 3), torch.randn(10, 3)
    start, stop = rows
    gen = torch.Generator().manual_seed(11)
    delta, nlp = adt_fast.sample_and_entropy(mean, rho, 3, 0.1, clamp=None, generator=gen, backend=backend)
    after = torch.rand(1, generator=gen)
    gen = torch.Generator().manual_seed(11)
    torch.manual_seed(0)
    default_before = torch.get_rng_state()
    noise = draw_normals(mean.shape, 3, rows=rows, device=CPU, generator=gen, backend=backend)
    assert torch.equal(torch.rand(1, generator=gen), after)  # the generator advanced as the op's call does
    assert torch.equal(torch.get_rng_state(), default_before)  # and the default one not at all
    mine, my_nlp = adt_fast.sample_and_entropy(mean[start:stop], rho[start:stop], 3, 0.1, clamp=None, noise=noise,
                                               backend=backend)
    torch.testing.assert_close(mine, delta[:, start:stop], rtol=0, atol=1e-6)
    torch.testing.assert_close(my_nlp, nlp[:, start:stop], rtol=1e-5, atol=1e-4)


def test_meta_tensors_take_a_generator():
    """Meta tensors draw nothing, and torch's random ops take any generator for them (torch makes no
    meta one): shape-tracing code that passes generator= gets the shapes, forward and backward,
    and its generator does not advance (mutant: the device-type check applied to meta, a
    ValueError). Under noise= too. A CPU generator for CUDA tensors is refused
    (test_check_generator_compares_device_types)."""
    mean = torch.zeros(2, 3, device="meta", requires_grad=True)
    rho = torch.zeros(2, 3, device="meta", requires_grad=True)
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    delta, nlp = adt_fast.sample_and_entropy(mean, rho, 2, generator=gen)
    assert delta.shape == (2, 2, 3) and nlp.shape == (2, 2) and delta.device.type == "meta"
    (delta.sum() + nlp.sum()).backward()
    assert mean.grad.shape == rho.grad.shape == (2, 3) and mean.grad.device.type == "meta"
    assert torch.equal(gen.get_state(), state)
    noise = torch.zeros(2, 2, 3, device="meta")
    assert adt_fast.sample_and_entropy(mean, rho, 2, noise=noise, generator=gen)[0].shape == (2, 2, 3)


def _fake_generator(device):
    """A stand-in for a torch.Generator on `device`: this machine may have no CUDA device to make
    one on (torch.Generator(device="cuda") needs one)."""
    generator = mock.Mock(spec=torch.Generator)
    generator.device = torch.device(device)
    return generator


def test_check_generator_compares_device_types():
    """The one check: another device type is refused naming both devices, another index of the same
    type is taken (as torch's ops take it), and nothing is checked when the call draws nothing."""
    from adt_fast.ops.sample_and_entropy import _check_generator

    with pytest.raises(ValueError, match=r"generator is on cuda:0 but mean is on cpu: .*device='cpu'"):
        _check_generator(_fake_generator("cuda:0"), CPU, "mean is on cpu")
    with pytest.raises(ValueError, match=r"generator is on cpu but mean is on cuda:1: .*device='cuda'"):
        _check_generator(_fake_generator("cpu"), torch.device("cuda", 1), "mean is on cuda:1")
    _check_generator(_fake_generator("cuda:0"), torch.device("cuda", 1), "mean is on cuda:1")
    _check_generator(_fake_generator("cuda:0"), CPU, "mean is on cpu", draws=False)
    for device in ("cpu", "cuda:0"):  # meta tensors draw nothing: any generator, as torch's ops take
        _check_generator(_fake_generator(device), torch.device("meta"), "mean is on meta")
    _check_generator(None, CPU, "mean is on cpu")
    with pytest.raises(TypeError, match="generator must be a torch.Generator, got int"):
        _check_generator(3, CPU, "mean is on cpu")


@pytest.mark.parametrize("backend", ["auto", *KERNEL_BACKENDS, "reference"])
def test_a_cuda_generator_with_cpu_tensors_is_refused(backend):
    """Both entry points that take a generator refuse one of another device type before any backend
    sees it, whichever backend is asked for (mutant: draw_normals without the check hands it to the
    backend's seed draw, which fails with torch's or the binding's own error)."""
    mean = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="generator is on cuda:0 but mean is on cpu"):
        adt_fast.sample_and_entropy(mean, mean, 2, generator=_fake_generator("cuda:0"), backend=backend)
    with pytest.raises(ValueError, match="generator is on cuda:0 but device is cpu"):
        draw_normals((2, 3), 2, device="cpu", generator=_fake_generator("cuda:0"), backend=backend)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["auto", *GPU_BACKENDS, "reference"])
def test_gpu_generator_of_another_device_type_is_refused(backend):
    """A CPU generator with CUDA tensors and a CUDA generator with CPU tensors, real ones: the op's
    ValueError, not torch's "Expected a 'cuda' device type for generator" from inside a backend."""
    if backend != "auto" and dispatch.get(backend).why_not(torch.device("cuda"), torch.float32) is not None:
        pytest.skip(dispatch.get(backend).why_not(torch.device("cuda"), torch.float32))
    gpu = torch.zeros(2, 3, device="cuda")
    with pytest.raises(ValueError, match="generator is on cpu but mean is on cuda:0"):
        adt_fast.sample_and_entropy(gpu, gpu, 2, generator=torch.Generator(), backend=backend)
    with pytest.raises(ValueError, match="generator is on cpu but device is cuda"):
        draw_normals((2, 3), 2, device="cuda", generator=torch.Generator(), backend=backend)
    cpu = torch.zeros(2, 3)
    cuda_generator = torch.Generator(device="cuda")
    with pytest.raises(ValueError, match="generator is on cuda:0 but mean is on cpu"):
        adt_fast.sample_and_entropy(cpu, cpu, 2, generator=cuda_generator)
    with pytest.raises(ValueError, match="generator is on cuda:0 but device is cpu"):
        draw_normals((2, 3), 2, device="cpu", generator=cuda_generator)


def test_compiled_call_takes_its_generator():
    """Under torch.compile the seed is drawn in Python from `generator` (a graph break,
    docs/randomness.md): on the CPU the compiled call equals the eager one with that generator,
    and torch's default generator is left alone (mutant: the compiled path passes no generator)."""
    mean, rho = torch.randn(4, 6), torch.randn(4, 6)
    backend = "cpu" if dispatch.get("cpu").why_not(CPU, torch.float32) is None else "reference"

    def call(m, r, g):
        return adt_fast.sample_and_entropy(m, r, 3, 0.1, generator=g, backend=backend)

    eager = call(mean, rho, torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    compiled = torch.compile(call, backend="aot_eager")(mean, rho, torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(compiled[0], eager[0]) and torch.equal(compiled[1], eager[1])


def test_custom_ops_called_directly_refuse_equal_clamp_bounds():
    """lo == hi is no interval (the public op says so too; mutant: `lo <= hi` accepted by the ops)."""
    from adt_fast.ops.sample_and_entropy import sample_backward

    mean, rho, x, _, seed_offset = make_inputs((2, 3), 2, torch.float32)
    with pytest.raises(ValueError, match="lo < hi"):
        sample_forward(mean, rho, x, None, seed_offset, 2, 0.1, 0.5, 0.5, "reference")
    with pytest.raises(ValueError, match="lo < hi"):
        sample_backward(None, None, mean, rho, x, None, seed_offset, 2, 0.1, 0.5, 0.5, "reference")
    with pytest.raises(ValueError, match="clamp"):
        adt_fast.sample_and_entropy(mean, rho, 2, 0.1, x=x, clamp=(0.5, 0.5))


def test_meta_tensors_give_the_eager_dtypes():
    """The fake kernels give neg_log_prob in float32 for half-precision inputs, as the backends do
    (mutant: the fake gives it in the input's dtype, so torch.compile traces a wrong dtype)."""
    for dtype, nlp_dtype in ((torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                             (torch.float32, torch.float32), (torch.float64, torch.float64)):
        meta = torch.zeros(2, 3, device="meta", dtype=dtype)
        delta, nlp = adt_fast.sample_and_entropy(meta, meta, 4)
        _, eager_nlp = adt_fast.sample_and_entropy(torch.zeros(2, 3, dtype=dtype), torch.zeros(2, 3, dtype=dtype), 4)
        assert (delta.dtype, nlp.dtype) == (dtype, nlp_dtype) and eager_nlp.dtype == nlp_dtype


def test_defaults_are_epsilon_8_over_255_and_the_unit_clamp():
    """sample_and_entropy's defaults: epsilon 8/255 (the paper's CIFAR-10 budget) and clamp (0, 1)
    (mutants: another epsilon; no clamp)."""
    mean, rho, x, _, _ = make_inputs((3, 5), 2, torch.float64)
    mean = mean * 4  # tanh saturates: |delta| close to epsilon
    x[0], x[1] = 0.0, 1.0  # at the bounds: x + delta leaves [0, 1] for about half the elements
    got = adt_fast.sample_and_entropy(mean, rho, 2, x=x, generator=torch.Generator().manual_seed(1))
    want = adt_fast.sample_and_entropy(mean, rho, 2, 8 / 255, x=x, clamp=(0.0, 1.0),
                                       generator=torch.Generator().manual_seed(1))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    unclamped = adt_fast.sample_and_entropy(mean, rho, 2, 8 / 255, x=x, clamp=None,
                                            generator=torch.Generator().manual_seed(1))[0]
    assert not torch.equal(unclamped, got[0])  # the clamp binds here


def test_auto_prefers_cuda_then_triton_then_the_reference_on_cuda_tensors(monkeypatch):
    """AUTO_PRIORITY for CUDA tensors, checked with stand-in backends (no GPU needed): the CUDA C++
    kernels first, Triton when they cannot serve, the reference last and with a warning (mutant:
    triton before cuda)."""
    class Ready:
        def why_not(self, device, dtype):
            return None

    class Unbuilt:
        def why_not(self, device, dtype):
            return "not built"

    cuda = torch.device("cuda")
    monkeypatch.setitem(dispatch.BACKENDS, "cuda", Ready())
    monkeypatch.setitem(dispatch.BACKENDS, "triton", Ready())
    assert dispatch._resolve("auto", cuda, torch.float32, None) == "cuda"
    monkeypatch.setitem(dispatch.BACKENDS, "cuda", Unbuilt())
    assert dispatch._resolve("auto", cuda, torch.float32, None) == "triton"
    monkeypatch.setitem(dispatch.BACKENDS, "triton", Unbuilt())
    with pytest.warns(RuntimeWarning, match="because cuda: not built; triton: not built"):
        assert dispatch._resolve("auto", cuda, torch.float32, None) == "reference"


def test_backend_choice_is_cached_per_dtype(monkeypatch):
    """select's cache key holds the dtype: a dtype that no backend serves is refused even after a
    float32 call of the same request and device was cached (mutant: dtype left out of the key)."""
    monkeypatch.delenv("ADT_FAST_BACKEND", raising=False)
    monkeypatch.setattr(dispatch, "_SELECTED", {})
    assert dispatch.select("auto", CPU, torch.float32) in ("cpu", "reference")
    assert dispatch.select("reference", CPU, torch.float32) == "reference"
    with pytest.raises(RuntimeError, match="supports dtypes"):
        dispatch.select("reference", CPU, torch.int32)
    with pytest.raises(RuntimeError, match="no backend can serve"):
        dispatch.select("auto", CPU, torch.int32)


def test_epsilon_is_bounded_by_the_compute_dtype_not_the_storage_dtype():
    """Half inputs compute in float32: any epsilon up to FLT_MAX is theirs (not half's 65504), and
    FLT_MAX itself is legal for float32 inputs."""
    half = torch.zeros(1, 2, dtype=torch.float16)
    with pytest.raises(ValueError, match=re.escape("at most 3.403e+38 (the largest torch.float32, which the op "
                                                   "computes in for torch.float16 inputs), got 1e+39")):
        adt_fast.sample_and_entropy(half, half - 100, 1, 1e39, clamp=None)
    out, _ = adt_fast.sample_and_entropy(half, half - 100, 1, 1e5, clamp=None)
    assert torch.isfinite(out).all()
    mean = torch.zeros(1, 2)
    out, nlp = adt_fast.sample_and_entropy(mean, mean - 100, 1, torch.finfo(torch.float32).max, clamp=None)
    assert torch.isfinite(out).all() and torch.isfinite(nlp).all()
