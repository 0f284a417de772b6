"""Forward + backward of the tanh-Gaussian op, k=5, inputs (B, 3, 32, 32).

Compared in the same run: every backend that can serve the device, the original ADT code's form
(k samples drawn one after another in a Python loop, eager), the eager vectorised reference and
torch.compile of the vectorised reference.
Run: pytest benchmarks/test_op.py --benchmark-only --benchmark-group-by=func,param:batch
"""

import functools

import pytest
import torch

import adt_fast
from adt_fast.ops import dispatch, reference

from baselines import original_sample
from conftest import BATCH_SIZES, DEVICE

K = 5
EPSILON = 8 / 255


def original_code_form(mean, std_param, x):
    """The original ADT code's form: k samples drawn one after another (benchmarks/baselines.py)."""
    outs, nlps = zip(*(original_sample(mean, std_param, x, EPSILON) for _ in range(K)))
    return torch.stack(outs), torch.stack(nlps)


def vectorised_reference(mean, std_param, x):
    noise = torch.randn((K, *mean.shape), device=mean.device, dtype=mean.dtype)
    return reference.sample_forward(mean, std_param, x, noise, None, K, EPSILON, 0.0, 1.0)


compiled_reference = torch.compile(vectorised_reference)


def ours(backend):
    def run(mean, std_param, x):
        return adt_fast.sample_and_entropy(mean, std_param, K, EPSILON, x=x, backend=backend)
    return run


IMPLEMENTATIONS = {
    "original-loop-eager": original_code_form,
    "reference-eager": vectorised_reference,
    "reference-compiled": compiled_reference,
    **{f"adt_fast-{name}": ours(name) for name in dispatch.BACKENDS if name != "reference"},
}


def skip_unless_served(impl, dtype=torch.float32):
    """Skips an adt_fast backend that cannot serve the device and dtype, with its reason."""
    if impl.startswith("adt_fast-"):
        reason = dispatch.get(impl.removeprefix("adt_fast-")).why_not(DEVICE, dtype)
        if reason is not None:
            pytest.skip(reason)


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_implementations_agree(impl, monkeypatch):
    """Untimed: every implementation computes the reference's values from the same normals, so
    the timings compare the same work. In float64, with sigma = softplus(std_param) < 0.21: then
    |u| < 2, 1 - tanh(u)^2 > 0.07, and the original form's +1e-8 inside its logs moves -log p by
    under 1e-7 relative (far more where tanh saturates, hence the small sigma); a wrong term or
    setting moves it far more."""
    skip_unless_served(impl, torch.float64)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    shape = (4, 3, 32, 32)
    mean = torch.randn(shape, device=DEVICE, dtype=torch.float64, generator=g).mul_(0.1)
    std_param = torch.rand(shape, device=DEVICE, dtype=torch.float64, generator=g).sub_(2.5)
    x = torch.rand(shape, device=DEVICE, dtype=torch.float64, generator=g)
    noise = torch.randn((K, *shape), device=DEVICE, dtype=torch.float64, generator=g)
    draws = iter(noise)
    monkeypatch.setattr(torch, "randn_like", lambda like, **kw: next(draws).clone())  # the original: one at a time
    monkeypatch.setattr(torch, "randn", lambda *args, **kw: noise.clone())  # the vectorised reference: all k
    monkeypatch.setattr(adt_fast, "sample_and_entropy", functools.partial(adt_fast.sample_and_entropy, noise=noise))
    out, nlp = IMPLEMENTATIONS[impl](mean, std_param, x)
    want_out, want_nlp = reference.sample_forward(mean, std_param, x, noise, None, K, EPSILON, 0.0, 1.0)
    torch.testing.assert_close(out, want_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(nlp, want_nlp, rtol=1e-7, atol=0)


@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_forward_backward(timed, benchmark, impl, batch):
    skip_unless_served(impl)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    shape = (batch, 3, 32, 32)
    mean = torch.randn(shape, device=DEVICE, generator=g).mul_(0.1).requires_grad_()
    std_param = torch.randn(shape, device=DEVICE, generator=g).requires_grad_()
    x = torch.rand(shape, device=DEVICE, generator=g)
    grad_out = torch.randn((K, *shape), device=DEVICE, generator=g)
    grad_nlp = torch.randn((K, batch), device=DEVICE, generator=g)
    fn = IMPLEMENTATIONS[impl]

    def step():
        out, nlp = fn(mean, std_param, x)
        torch.autograd.backward((out, nlp), (grad_out, grad_nlp))
        mean.grad = std_param.grad = None

    benchmark.extra_info.update(device=str(DEVICE), k=K, shape=list(shape))
    timed(step)


class _TrivialPair(torch.autograd.Function):
    """The host-side floor of a Python autograd op with the op's signature and shapes:
    (mean, std_param) -> (out (k, B, *S), nlp (k, B)), one trivial kernel per output forward and
    per input gradient backward."""

    @staticmethod
    def forward(ctx, mean, std_param):
        ctx.shape = std_param.shape
        return mean.expand(K, *mean.shape) * 2, std_param[:, 0].expand(K, mean.shape[0]) * 2

    @staticmethod
    def backward(ctx, grad_out, grad_nlp):
        return grad_out.sum(0), grad_nlp.sum(0).unsqueeze(1).expand(ctx.shape) * 2


@pytest.mark.parametrize("batch", [4])
@pytest.mark.parametrize("impl", ["trivial-autograd-pair", *[f"adt_fast-{n}" for n in dispatch.BACKENDS]])
def test_host_overhead(timed, benchmark, impl, batch):
    """A (4, 8) input, so the time is the call's host cost: validation, seeding, dispatch, autograd.
    `out.sum()` hands the backward an expanded gradient, as a training loss often does."""
    skip_unless_served(impl)
    mean = torch.zeros(batch, 8, device=DEVICE, requires_grad=True)
    std_param = torch.zeros(batch, 8, device=DEVICE, requires_grad=True)

    def call():
        if impl == "trivial-autograd-pair":
            out, nlp = _TrivialPair.apply(mean, std_param)
        else:
            out, nlp = adt_fast.sample_and_entropy(mean, std_param, K, EPSILON, backend=impl.removeprefix("adt_fast-"))
        (out.sum() + nlp.sum()).backward()
        mean.grad = std_param.grad = None

    timed(call)
