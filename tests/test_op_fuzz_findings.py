"""Defects found by fuzzing adt_fast.sample_and_entropy and draw_normals, each pinned by the call
that hit it."""

from __future__ import annotations

import pytest
import torch

import adt_fast
from adt_fast.ops.sample_and_entropy import draw_normals


@pytest.mark.parametrize("shape, message", [
    ((), r"shape must have a batch dimension \(B, \*S\), got \(\)"),  # was IndexError: tuple index out of range
    ((3, -1), r"shape must hold sizes >= 0, got \(3, -1\)"),  # was the binding's "numel must be >= 0, got -3"
    ((4.0, 2), r"shape must be a sequence of ints, got \(4.0, 2\)"),  # was the binding's cast error on numel
    (5, r"shape must be a sequence of ints, got 5"),  # was TypeError: 'int' object is not iterable
])
def test_draw_normals_names_a_shape_it_cannot_draw_for(shape, message):
    with pytest.raises((TypeError, ValueError), match=message):
        draw_normals(shape, 2, device="cpu")


@pytest.mark.parametrize("num_samples, message", [
    (2.0, "num_samples must be an int, got float"),  # was the binding's cast error on sample_forward
    (True, "num_samples must be an int, got bool"),  # was TypeError: reshape() takes 1 positional argument
    (torch.tensor(2), "num_samples must be an int, got Tensor"),  # was "must be >= 1 and < 2**63, got 2"
])
def test_draw_normals_checks_num_samples_as_the_op_does(num_samples, message):
    with pytest.raises(TypeError, match=message):
        adt_fast.sample_and_entropy(torch.zeros(4, 2), torch.zeros(4, 2), num_samples)
    with pytest.raises(TypeError, match=message):
        draw_normals((4, 2), num_samples, device="cpu")


def test_draw_normals_names_a_dtype_that_is_no_floating_dtype():
    """dtype="float32" was 'cpu supports dtypes float16, bfloat16, float32, float64, not float32'."""
    with pytest.raises(TypeError, match="dtype must be torch.float16, torch.bfloat16, torch.float32 or "
                                        "torch.float64, got 'float32'"):
        draw_normals((4, 2), 2, device="cpu", dtype="float32")
    assert draw_normals((4, 2), 2, device="cpu", dtype=torch.float16).dtype == torch.float16


@pytest.mark.parametrize("rows", [(1.0, 2.0), (1,)])
def test_draw_normals_names_rows_that_are_no_pair_of_ints(rows):
    """rows=(1.0, 2.0) was 'slice indices must be integers', rows=(1,) 'not enough values to unpack'."""
    with pytest.raises(TypeError, match=r"rows must be a pair of ints \(start, stop\), got"):
        draw_normals((4, 2), 2, device="cpu", rows=rows)


def test_draw_normals_takes_shapes_of_integers_of_any_kind():
    """torch.Size, numpy and 0-d tensor sizes are sizes (the checks above must not refuse them)."""
    np = pytest.importorskip("numpy")
    for shape in (torch.Size([4, 2]), (np.int64(4), 2), torch.tensor([4, 2])):
        assert draw_normals(shape, 3, device="cpu").shape == (3, 4, 2)
    assert draw_normals((4, 0), 3, device="cpu").shape == (3, 4, 0)


def test_a_generator_for_meta_tensors_is_taken_as_torch_takes_it():
    """A generator for meta tensors was refused, first with advice torch cannot follow
    (torch.Generator(device='meta'): "META device type not an accelerator"), then with
    generator=None, although torch's own random ops take a CPU generator there and meta tensors
    draw nothing: shape-tracing code that passes generator= now works, as torch.randn does."""
    meta = torch.zeros(2, 3, device="meta")
    assert torch.randn(3, device="meta", generator=torch.Generator()).shape == (3,)
    delta, nlp = adt_fast.sample_and_entropy(meta, meta, 2, generator=torch.Generator())
    assert delta.shape == (2, 2, 3) and nlp.shape == (2, 2) and delta.device.type == "meta"


def test_an_extension_build_lacking_an_op_says_so_on_every_call(monkeypatch):
    """A stale adt_fast._C without one op filled the op table partly: the first call raised
    AttributeError, every later one a bare KeyError."""
    from types import SimpleNamespace
    from adt_fast.ops import dispatch
    stale = SimpleNamespace(sample_forward=SimpleNamespace(default=None),
                            sample_backward=SimpleNamespace(default=None))
    monkeypatch.setattr(dispatch, "_load_extension", lambda: None)
    monkeypatch.setattr(torch.ops, "adt_fast_C", stale)
    monkeypatch.setattr(dispatch, "_EXTENSION_OPS", {})
    for _ in range(2):
        with pytest.raises(RuntimeError, match="adt_fast._C has no op philox_words: it was built from older sources"):
            dispatch._extension_op("sample_forward")
    assert dispatch._EXTENSION_OPS == {}


def test_an_extension_build_lacking_an_eager_entry_says_so_on_every_call(monkeypatch):
    """A _C built before the eager entries (sample_forward_eager, sample_backward_eager) has every
    registered op: the same one-line advice, not an AttributeError from the first eager call."""
    import sys
    from types import ModuleType
    from adt_fast.ops import dispatch
    pytest.importorskip("adt_fast._C", reason="the C++ extension is not built")
    stale = ModuleType("adt_fast._C")
    stale.sample_forward_eager = sys.modules["adt_fast._C"].sample_forward_eager
    monkeypatch.setitem(sys.modules, "adt_fast._C", stale)
    monkeypatch.setattr(dispatch, "_load_extension", lambda: None)
    monkeypatch.setattr(dispatch, "_EXTENSION_OPS", {})
    for _ in range(2):
        with pytest.raises(RuntimeError, match="adt_fast._C has no function sample_backward_eager: it was built "
                                               "from older sources"):
            dispatch._extension_op("sample_forward")
    assert dispatch._EXTENSION_OPS == {}
