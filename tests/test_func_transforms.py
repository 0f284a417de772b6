"""The op under torch.func's eager transforms (grad, jacrev, vmap and its randomness modes), and
vmap under torch.compile: the same values and gradients as the plain autograd calls."""

import pytest
import torch

import adt_fast

from test_ops import make_inputs, runnable

BACKENDS = ["reference", "cpu"]
# Not the op's defaults, so that a transform path that dropped either (used a default or a
# constant in its place) gives other values than the eager calls these tests compare it with.
EPSILON = 0.3
CLAMP = (0.1, 0.9)


def _call(backend, noise=None, x=None, k=2):
    return lambda mean, rho: adt_fast.sample_and_entropy(mean, rho, k, EPSILON, x=x, clamp=CLAMP, noise=noise,
                                                         backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_x", [False, True])
def test_func_grad_equals_the_autograd_gradients(backend, with_x):
    """The loss too: a sample the clamp binds has gradient 0 whichever bound it hit, so the
    gradients alone would not tell a wrong bound from the right one."""
    runnable(backend)
    mean, rho, x, noise, _ = make_inputs((3, 4), 2, with_x=with_x, mean_scale=3.0)
    # near either bound: each bound of the clamp binds for some samples and not for others
    x = None if x is None else torch.where(x < 0.5, CLAMP[0] + 0.05, CLAMP[1] - 0.05).to(x.dtype)
    op = _call(backend, noise=noise, x=x)

    def loss(mean, rho):
        out, nlp = op(mean, rho)
        return (out.square() * torch.arange(out.numel(), dtype=out.dtype).view(out.shape)).sum() + nlp.sum()

    grads, value = torch.func.grad_and_value(loss, argnums=(0, 1))(mean, rho)
    leaves = [t.clone().requires_grad_() for t in (mean, rho)]
    want_value = loss(*leaves)
    want = torch.autograd.grad(want_value, leaves)
    for got, expected in zip((value, *grads), (want_value.detach(), *want)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_jacrev_equals_the_references_jacobian(backend):
    """jacrev vmaps the backward over the rows of the Jacobian."""
    runnable(backend)
    mean, rho, _, noise, _ = make_inputs((2, 3), 2)
    jac = torch.func.jacrev(lambda m: _call(backend, noise=noise)(m, rho)[1])(mean)
    want = torch.autograd.functional.jacobian(lambda m: _call("reference", noise=noise)(m, rho)[1], mean)
    assert jac.shape == (2, 2, 2, 3)
    torch.testing.assert_close(jac, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_example_gradients_by_vmap_of_grad_equal_a_loop(backend):
    runnable(backend)
    means, rhos, _, _, _ = make_inputs((5, 2, 3), 1)
    noise = make_inputs((2, 3), 3, seed=1)[3]

    def loss(mean, rho):
        out, nlp = _call(backend, noise=noise, k=3)(mean, rho)
        return out.square().sum() + nlp.sum()

    batched = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)))(means, rhos)
    for i in range(len(means)):
        one = torch.func.grad(loss, argnums=(0, 1))(means[i], rhos[i])
        for got, expected in zip(batched, one):
            torch.testing.assert_close(got[i], expected, rtol=0, atol=0)


def _vmapped_over_three_slices(backend, randomness):
    """The op vmapped over 3 slices of zero means and std_params (2, 5), and the slices' means."""
    means = torch.zeros(3, 2, 5, dtype=torch.float64)
    rho = torch.zeros(2, 5, dtype=torch.float64)
    return torch.func.vmap(lambda m: _call(backend)(m, rho), randomness=randomness)(means), means[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_vmap_randomness_same_gives_every_slice_the_eager_calls_samples(backend):
    runnable(backend)
    torch.manual_seed(7)
    (out, nlp), mean = _vmapped_over_three_slices(backend, "same")
    torch.manual_seed(7)
    want_out, want_nlp = _call(backend)(mean, torch.zeros_like(mean))
    for i in range(3):
        torch.testing.assert_close(out[i], want_out, rtol=0, atol=0)
        torch.testing.assert_close(nlp[i], want_nlp, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vmap_randomness_different_draws_each_slice_anew(backend):
    runnable(backend)
    (out, _), _ = _vmapped_over_three_slices(backend, "different")
    assert out.shape == (3, 2, 2, 5)
    assert not torch.equal(out[0], out[1]) and not torch.equal(out[1], out[2]) and not torch.equal(out[0], out[2])


def test_vmap_without_a_randomness_mode_gets_torchs_refusal():
    means = torch.zeros(3, 2, 5)
    with pytest.raises(RuntimeError, match="randomness"):
        torch.func.vmap(lambda m: _call("cpu")(m, torch.zeros(2, 5)))(means)


def test_vmap_over_given_noise_and_x_equals_a_loop():
    means, rhos, xs, _, _ = make_inputs((4, 2, 3), 1)
    noises = make_inputs((4, 2, 2, 3), 1, seed=2)[0]
    out, nlp = torch.func.vmap(lambda m, r, x, z: _call("cpu", noise=z, x=x)(m, r))(means, rhos, xs, noises)
    for i in range(4):
        want_out, want_nlp = _call("cpu", noise=noises[i], x=xs[i])(means[i], rhos[i])
        torch.testing.assert_close(out[i], want_out, rtol=0, atol=0)
        torch.testing.assert_close(nlp[i], want_nlp, rtol=0, atol=0)


def test_a_second_derivative_under_func_raises():
    mean, rho, _, noise, _ = make_inputs((2, 3), 2)

    def inner(m):
        return _call("cpu", noise=noise)(m, rho)[1].sum()

    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.func.grad(lambda m: torch.func.grad(inner)(m).square().sum())(mean)


def test_vmap_under_torch_compile_equals_a_loop():
    means, rhos, _, _, _ = make_inputs((3, 2, 4), 1, dtype=torch.float32)
    noises = make_inputs((3, 2, 2, 4), 1, dtype=torch.float32, seed=3)[0]
    op = torch.compile(torch.func.vmap(lambda m, r, z: _call("cpu", noise=z)(m, r)), fullgraph=True,
                       backend="aot_eager")
    out, nlp = op(means, rhos, noises)
    for i in range(3):
        want_out, want_nlp = _call("cpu", noise=noises[i])(means[i], rhos[i])
        torch.testing.assert_close(out[i], want_out)
        torch.testing.assert_close(nlp[i], want_nlp)


@pytest.mark.skipif(torch.__version__ < "2.11", reason="Dynamo before torch 2.11 refuses torch.func.grad of the op's "
                    "autograd Function (README, 'Installing': seen on 2.7 to 2.10); works on 2.11, 2.12 and 2.13")
@pytest.mark.parametrize("transform", ["grad", "jacrev"])
def test_reverse_mode_transforms_under_torch_compile_equal_eager(transform):
    mean, rho, _, noise, _ = make_inputs((2, 3), 2, dtype=torch.float32)

    def nlp(m):
        return _call("cpu", noise=noise)(m, rho)[1]

    fn = torch.func.grad(lambda m: nlp(m).sum()) if transform == "grad" else torch.func.jacrev(nlp)
    torch.testing.assert_close(torch.compile(fn, fullgraph=True, backend="aot_eager")(mean), fn(mean),
                               rtol=0, atol=0)


def test_vmap_over_no_slices_gives_empty_outputs_of_the_right_shape():
    out, nlp = torch.func.vmap(lambda m: _call("cpu", noise=torch.zeros(2, 2, 3))(m, torch.zeros(2, 3)))(
        torch.zeros(0, 2, 3))
    assert out.shape == (0, 2, 2, 3) and nlp.shape == (0, 2, 2) and nlp.dtype == torch.float32


def test_grad_of_meta_tensors_gives_shapes():
    mean = torch.empty(4, 3, device="meta")
    grad = torch.func.grad(lambda m: _call("cpu")(m, torch.empty_like(m))[1].sum())(mean)
    assert grad.shape == (4, 3) and grad.device.type == "meta"
