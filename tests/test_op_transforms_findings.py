"""The op under the ways PyTorch users compose ops (activation checkpointing, torch.compile,
torch.export, torch.func's transforms): what a fuzzing review found, locked in."""

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import adt_fast

from test_ops import runnable

BACKENDS = ["reference", "cpu"]


def _loss(mean, rho, generator=None, backend="cpu"):
    out, nlp = adt_fast.sample_and_entropy(mean, rho, 3, 0.3, clamp=None, generator=generator, backend=backend)
    return out.square().sum() + nlp.square().sum()


def _leaves():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(3, 5, dtype=torch.float64, generator=g).requires_grad_() for _ in range(2)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpoint_recomputes_the_forwards_samples(backend, reentrant):
    """checkpoint restores the default generator before recomputing, so the backward sees the
    forward's samples even when other draws come in between."""
    runnable(backend)
    mean, rho = _leaves()
    torch.manual_seed(1)
    checkpoint(_loss, mean, rho, None, backend, use_reentrant=reentrant).backward()
    torch.randn(10)
    want = [t.grad for t in (mean, rho)]
    mean.grad = rho.grad = None
    torch.manual_seed(1)
    _loss(mean, rho, None, backend).backward()
    for t, w in zip((mean, rho), want):
        torch.testing.assert_close(t.grad, w, rtol=0, atol=0)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpoint_around_a_call_with_a_generator_is_refused(compiled, reentrant):
    """checkpoint cannot restore a generator= it does not know: the recomputation drew a new
    (seed, offset), and the gradients were those of other samples than the forward returned, with
    no error (eager and compiled alike)."""
    mean, rho = _leaves()
    fn = torch.compile(_loss, backend="eager") if compiled else _loss
    loss = checkpoint(fn, mean, rho, torch.Generator().manual_seed(1), use_reentrant=reentrant)
    with pytest.raises(RuntimeError, match="refuses generator= in any call during a backward pass"):
        loss.backward()


def test_generator_in_a_hook_during_backward_is_refused_naming_the_way_out():
    """Every call with generator= during a backward pass is refused, not only checkpoint's
    recomputation (which the op cannot tell from a hook's call); the message said only
    "checkpoint recomputing it?", misleading here."""
    mean, rho = _leaves()
    loss = _loss(mean, rho, backend="reference")
    mean.register_hook(lambda grad: _loss(mean.detach(), rho.detach(), torch.Generator(), "reference") and None)
    with pytest.raises(RuntimeError, match="refuses generator= in any call during a backward pass .*a hook.*"
                                           "pass noise= or use torch's default generator"):
        loss.backward()


class _Sampler(torch.nn.Module):
    def forward(self, mean, rho, x):
        return adt_fast.sample_and_entropy(mean, rho, 2, 0.3, x=x, clamp=(0.1, 0.9))


@pytest.mark.parametrize("strict", [False, True])
def test_export_with_a_dynamic_batch_equals_eager(strict):
    """The check that k B D elements fit in a tensor was traced as a guard B <= 2**63 / (8 k D),
    which torch.export refuses for an unbounded Dim ("Constraints violated (B)"); it now runs
    when the op does."""
    batch = torch.export.Dim("batch")
    example = [torch.rand(3, 4) for _ in range(3)]
    exported = torch.export.export(_Sampler(), tuple(example), dynamic_shapes=({0: batch},) * 3, strict=strict)
    inputs = [torch.rand(7, 4) for _ in range(3)]
    torch.manual_seed(2)
    got = exported.module()(*inputs)
    torch.manual_seed(2)
    want = _Sampler()(*inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_compile_takes_a_varying_number_of_samples_without_recompiling():
    """The check of num_samples called operator.index on it, which specialised Dynamo's symbolic
    k: a recompilation for every k, and eager fallback after torch's recompile limit (8)."""
    from torch._dynamo.testing import CompileCounterWithBackend
    counter = CompileCounterWithBackend("aot_eager")
    mean, rho = torch.randn(2, 3), torch.randn(2, 3)
    compiled = torch.compile(lambda m, r, k: adt_fast.sample_and_entropy(m, r, k, 0.3), backend=counter)
    for k in (2, 3, 4, 5):
        torch.manual_seed(k)
        got = compiled(mean, rho, k)
        torch.manual_seed(k)
        want = adt_fast.sample_and_entropy(mean, rho, k, 0.3)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert counter.frame_count == 2  # k = 2 specialised, then k symbolic


def test_compile_with_static_shapes_refuses_an_oversized_output_naming_num_samples():
    """Under torch.compile the public op's output-size check is skipped (Dynamo calls a SymInt an
    int, and comparing one would guard the batch size: torch.export refuses that for a dynamic
    Dim); the fake kernel refuses it, and Dynamo wraps its ValueError in a TorchRuntimeError
    (torch 2.7 offers no trace-safe test of a concrete size). The op's words must come through."""
    mean = torch.randn(3, 4)
    with pytest.raises(ValueError, match="num_samples=2305843009213693952 samples"):
        adt_fast.sample_and_entropy(mean, mean, 2**61)
    compiled = torch.compile(lambda m, r: adt_fast.sample_and_entropy(m, r, 2**61), dynamic=False, backend="eager")
    with pytest.raises(RuntimeError, match=r"ValueError\('num_samples=2305843009213693952 samples of a mean of "
                                           r"shape \(3, 4\) .* past what a tensor can hold"):
        compiled(mean, mean)


def _nlp(mean, rho=None):
    return adt_fast.sample_and_entropy(mean, torch.zeros_like(mean) if rho is None else rho, 2, 0.3)[1]


@pytest.mark.parametrize("how", ["func.jvp", "jacfwd", "forward_ad", "compiled jvp", "forward_ad into compiled",
                                 "custom op"])
def test_forward_mode_is_refused_not_zero(how):
    """Forward-mode AD is not implemented. torch's custom ops look at requires_grad only, so under
    torch.compile the op's tangents were zeros (torch.func.jvp) or None (dual tensors into a
    compiled function), and so were those of the custom op called directly; eagerly torch's own
    refusal named no op."""
    import torch.autograd.forward_ad as fwAD
    from adt_fast.ops.sample_and_entropy import sample_forward
    mean = torch.randn(2, 3)

    def dual_through(fn):
        with fwAD.dual_level():
            return fwAD.unpack_dual(fn(fwAD.make_dual(mean, torch.ones_like(mean)))).tangent

    calls = {
        "func.jvp": lambda: torch.func.jvp(_nlp, (mean,), (mean,)),
        "jacfwd": lambda: torch.func.jacfwd(_nlp, randomness="same")(mean),
        "forward_ad": lambda: dual_through(_nlp),
        "compiled jvp": lambda: torch.compile(lambda m: torch.func.jvp(_nlp, (m,), (m,)), backend="eager")(mean),
        "forward_ad into compiled": lambda: dual_through(torch.compile(_nlp, backend="aot_eager")),
        "custom op": lambda: dual_through(lambda m: sample_forward(m, torch.zeros_like(m), None, None,
                                                                   torch.tensor([1, 2]), 2, 0.3, 0.0, 1.0, "auto")[1]),
    }
    with pytest.raises(RuntimeError, match="no forward-mode derivative"):
        calls[how]()


def test_forward_mode_around_the_op_without_tangents_through_it_works():
    """Only tangents that reach the op are refused (eagerly): w * nlp differentiates in w."""
    mean = torch.randn(2, 3)
    w = torch.tensor(2.0)
    value, tangent = torch.func.jvp(lambda w: w * _nlp(mean).sum(), (w,), (torch.tensor(1.0),))
    torch.testing.assert_close(tangent, value / w)


def test_functionalize_traces_the_op_and_keeps_its_samples_and_gradients():
    """torch has no functionalize rule for autograd Functions: functionalize (make_fx's way to an
    export-ready graph) refused the op with "NYI: Functionalize rule for custom_function_call";
    it now runs the custom op, whose own autograd gives plain backward its gradients."""
    from torch.fx.experimental.proxy_tensor import make_fx
    mean, rho = _leaves()

    def loss(mean, rho):
        out, nlp = adt_fast.sample_and_entropy(mean, rho, 2, 0.3)
        return out.square().sum() + nlp.sum()

    graph = make_fx(torch.func.functionalize(loss))(mean.detach(), rho.detach())
    assert "adt_fast.sample_forward" in graph.code
    results = []
    for fn in (torch.func.functionalize(loss), graph, loss):
        torch.manual_seed(3)
        value = fn(mean, rho)
        results.append((value, *torch.autograd.grad(value, (mean, rho))))
    for got in results[:2]:
        for g, w in zip(got, results[2]):
            torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize("order", ["functionalize(grad)", "grad(functionalize)"])
def test_functionalize_composed_with_grad_is_refused_naming_the_op(order):
    """torch.func needs the op's autograd Function, which functionalize has no rule for: torch said
    only "NYI: Functionalize rule for custom_function_call"."""
    mean = torch.randn(2, 3)
    grad = torch.func.grad(lambda m: _nlp(m).sum())
    fn = torch.func.functionalize(grad) if order == "functionalize(grad)" else \
        torch.func.grad(torch.func.functionalize(lambda m: _nlp(m).sum()))
    with pytest.raises(RuntimeError, match="sample_and_entropy does not run under torch.func.functionalize "
                                           "composed with grad"):
        fn(mean)


@pytest.mark.parametrize("path", ["custom op", "functionalize"])
def test_a_second_derivative_through_the_custom_op_names_the_op(path):
    """The custom op's own autograd (called directly, or under functionalize) had no backward for
    sample_backward: torch said only "no autograd formula was registered"."""
    from adt_fast.ops.sample_and_entropy import sample_forward
    mean, rho = _leaves()
    if path == "custom op":
        nlp = sample_forward(mean, rho, None, None, torch.tensor([1, 2]), 2, 0.3, 0.0, 1.0, "auto")[1]
    else:
        nlp = torch.func.functionalize(lambda m, r: adt_fast.sample_and_entropy(m, r, 2, 0.3)[1])(mean, rho)
    (grad,) = torch.autograd.grad(nlp.sum(), mean, create_graph=True)
    with pytest.raises(RuntimeError, match="no second derivative"):
        grad.sum().backward()


def test_compiled_autograd_traces_the_eager_backward_without_warnings(monkeypatch):
    """Compiled autograd traces the eager backward with Dynamo, which warned twice that the
    backend's functools.cache-wrapped helpers might be silently wrong."""
    import warnings
    monkeypatch.setattr(torch._dynamo.utils, "warn_once_cache", set())
    torch._dynamo.reset()
    mean, rho = _leaves()
    torch.manual_seed(4)
    loss = _loss(mean, rho)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch._dynamo.compiled_autograd._enable(torch.compile(backend="eager")):
            loss.backward()
    assert not [w for w in caught if "lru_cache" in str(w.message)]
    got = [t.grad for t in (mean, rho)]
    mean.grad = rho.grad = None
    torch.manual_seed(4)
    _loss(mean, rho).backward()
    for g, t in zip(got, (mean, rho)):
        torch.testing.assert_close(g, t.grad, rtol=0, atol=0)


def test_compiled_autograd_traces_the_eager_backward_in_one_graph():
    """The cpu backend's eager entries (adt_fast._C) are pybind functions, which Dynamo cannot
    trace: under compiled autograd fullgraph=True failed ('Attempted to call function marked as
    skipped'), and without it the backward broke into graphs. While Dynamo traces, the backend
    takes torch.ops."""
    from torch._dynamo.testing import CompileCounter
    torch._dynamo.reset()
    mean, rho = _leaves()
    loss = _loss(mean, rho)
    counter = CompileCounter()
    with torch._dynamo.compiled_autograd._enable(torch.compile(backend=counter, fullgraph=True)):
        loss.backward()
    assert counter.frame_count == 1


def test_draw_normals_compiles_in_one_graph():
    """draw_normals draws its seed through the cpu backend's forward (as the op would): in one graph."""
    from adt_fast.ops.sample_and_entropy import draw_normals
    torch._dynamo.reset()
    compiled = torch.compile(lambda: draw_normals((3, 4), 2, device="cpu", backend="cpu") * 2, backend="eager",
                             fullgraph=True)
    assert compiled().shape == (2, 3, 4)


def test_compile_with_dynamic_shapes_equals_eager_without_recompiling():
    from torch._dynamo.testing import CompileCounterWithBackend
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda m, r, x: adt_fast.sample_and_entropy(m, r, 2, 0.3, x=x), backend=counter,
                             dynamic=True, fullgraph=True)
    frames = []
    for shape in ((2, 3), (5, 3), (4, 6)):
        inputs = [torch.rand(shape) for _ in range(3)]
        torch.manual_seed(6)
        got = compiled(*inputs)
        torch.manual_seed(6)
        want = adt_fast.sample_and_entropy(*inputs[:2], 2, 0.3, x=inputs[2])
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
        frames.append(counter.frame_count)
    assert frames[0] == frames[-1]  # (the first call's count includes a restart of Dynamo's analysis)
