"""Defects found by fuzzing the Python API of the attacks (evaluate, the stand-alone attacks and
the attack classes), each pinned by the call that hit it."""

from __future__ import annotations

import pytest
import torch

from adt_fast.attacks import (APGDAttack, AutoAttack, DistributionAttack, FABAttack, SquareAttack, cw, evaluate,
                              feature_attack, fgsm, mim, pgd, transfer)

from split_net import SplitNet, split_data as _data

EPS = 0.1


class _Net(SplitNet):
    """SplitNet with BatchNorm."""

    def __init__(self):
        super().__init__(batchnorm=True)


# Every public way to attack (model, x, y), with the fewest steps each takes.
CALLS = {
    "evaluate": lambda m, x, y: evaluate(m, x, y, epsilon=EPS, attacks="fgsm", epsilon_curve=()),
    "fgsm": lambda m, x, y: fgsm(m, x, y, EPS),
    "pgd": lambda m, x, y: pgd(m, x, y, EPS, 1),
    "mim": lambda m, x, y: mim(m, x, y, EPS, 1),
    "cw": lambda m, x, y: cw(m, x, y, EPS, 1),
    "feature_attack": lambda m, x, y: feature_attack(m, x, y, EPS, targets=1, steps=1),
    "transfer": lambda m, x, y: transfer(_Net().to(next(m.parameters()).device).eval(), m, x, y, EPS, steps=1),
    "APGDAttack": lambda m, x, y: APGDAttack("apgd-ce", EPS, steps=1).perturb(m, x, y),
    "FABAttack": lambda m, x, y: FABAttack(EPS, targets=1, steps=1).perturb(m, x, y),
    "SquareAttack": lambda m, x, y: SquareAttack(EPS, queries=1).perturb(m, x, y),
    "DistributionAttack": lambda m, x, y: DistributionAttack(EPS, steps=1, samples=2).perturb(m, x, y),
}


def _quantized(t):
    return torch.quantize_per_tensor(t.float(), 1 / 255, 0, torch.quint8)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta", "ignore:The PyTorch API of nested tensors",
                            "ignore:.*quantized tensor creation functions.*are deprecated")
@pytest.mark.parametrize("make, error, message", [
    (lambda x, y: (x.to_sparse(), y), TypeError, r"^x must be a dense tensor, got a torch\.sparse_coo one; "
                                                 r"convert it with \.to_dense\(\)$"),
    (lambda x, y: (x.flatten(1).to_sparse_csr(), y), TypeError, r"^x must be a dense tensor, got a torch\.sparse_csr"),
    (lambda x, y: (torch.nested.nested_tensor(list(x)), y), TypeError, r"^x must be a dense tensor, got a nested one"),
    (lambda x, y: (x.to("meta"), y), ValueError, r"^x is on the meta device, which holds no values \(only a shape\)"),
    (lambda x, y: (x, y.to_sparse()), TypeError, r"^y must be a dense tensor, got a torch\.sparse_coo one"),
    (lambda x, y: (x, y.to("meta")), ValueError, r"^y is on the meta device, which holds no values"),
    (lambda x, y: (_quantized(x), y), TypeError, r"^x is a quantized tensor \(torch\.quint8\); convert it with "
                                                 r"\.dequantize\(\) \(its real values\)"),
    (lambda x, y: (x, _quantized(y)), TypeError, r"^y is a quantized tensor \(torch\.quint8\); convert it with "
                                                 r"\.dequantize\(\) \(its real values\) or \.int_repr\(\) "
                                                 r"\(its stored integers\)$"),
], ids=["sparse x", "csr x", "nested x", "meta x", "sparse y", "meta y", "quantized x", "quantized y"])
@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_a_sparse_meta_or_quantized_batch_is_named(call, make, error, message):
    """torch's NotImplementedError from inside the [0, 1] check ("Could not run 'aten::aminmax' with
    arguments from the 'SparseCPU' backend", "Cannot copy out of meta tensor; no data!"); a quantized
    batch was refused by its dtype ("x must be a floating-point tensor ..., got torch.quint8"),
    without saying how to convert it."""
    x, y = make(*_data())
    with pytest.raises(error, match=message):
        call(_Net().eval(), x, y)


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_a_model_on_the_meta_device_is_named(call):
    """A model built on the meta device and never loaded: 'Tensor on device meta is not on the
    expected device cpu!' from inside its forward, or evaluate's 'Cannot copy out of meta tensor'."""
    x, y = _data()
    with pytest.raises(ValueError, match=r"^model has parameters on the meta device, which hold no values \(only "
                                         r"shapes\): load its weights first, e\.g\. model\.to_empty"):
        call(_Net().to("meta"), x, y)
    with pytest.raises(ValueError, match=r"^source_model has parameters on the meta device"):
        transfer(_Net().to("meta"), _Net(), x, y, EPS, steps=1)


class _BatchMean(_Net):
    """One row of logits for the whole batch: passed a probe of one input."""

    def forward(self, x):
        return super().forward(x).mean(0, keepdim=True)


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_a_model_returning_one_row_for_the_batch_is_named(call):
    """'Expected input batch_size (1) to match target batch_size (6)' from cross_entropy, an
    IndexError in APGD-T and FAB, and APGD-DLR ran to the end on the broadcast rows."""
    x, y = _data()
    with pytest.raises(ValueError, match=r"^the model returns \(1, 10\) for 2 inputs; it must return logits of "
                                         r"shape \(2, number of classes\)$"):
        call(_BatchMean().eval(), x, y)
    with pytest.raises(ValueError, match=r"^the source model returns \(1, 10\) for 2 inputs"):
        transfer(_BatchMean().eval(), _Net().eval(), x, y, EPS, steps=1)
    with pytest.raises(ValueError, match=r"^the model returns \(1, 10\) for 2 inputs"):
        APGDAttack("apgd-dlr", EPS, loss="dlr", steps=1).perturb(_BatchMean().eval(), x, y)


def test_the_distribution_attack_on_a_float16_model_samples_finite_inputs():
    """Adam's eps (1e-8) is 0 in float16: a zero gradient stepped the distribution by 0/0, so every
    sample was NaN and the attack scored every example broken."""
    x, y = _data()
    model, x = _Net().half().eval(), x.half()
    x_adv = DistributionAttack(EPS, steps=2, samples=2).perturb(model, x, y)
    assert x_adv.dtype == torch.float16 and torch.isfinite(x_adv).all()
    assert (x_adv.float() - x.float()).abs().max() <= EPS + 1e-3  # float16's rounding of the ball
    report = evaluate(model, x, y, epsilon=EPS, attacks="dist", dist_steps=2, epsilon_curve=())
    assert all(point["loss"] == point["loss"] for point in report.curves["dist"]["points"])  # no NaN
    assert report.gradient_check["nonfinite_logits_fraction"] == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_feaattack_runs_on_a_half_precision_model(dtype):
    """The context handed the head float32 features: 'mat1 and mat2 must have the same dtype' from a
    float16 model's head, and evaluate skipped FeaAttack blaming the model's split."""
    x, y = _data()
    model, x = _Net().to(dtype).eval(), x.to(dtype)
    outcome = feature_attack(model, x, y, EPS, targets=1, steps=1)
    assert outcome.x_adv.dtype == dtype and torch.isfinite(outcome.x_adv).all()
    report = evaluate(model, x, y, epsilon=EPS, attacks="feature", feature_targets=1, epsilon_curve=())
    assert report.skipped == {} and "feature" in report.robust_accuracy


ATTACKS = {name: call for name, call in CALLS.items() if name != "evaluate"}


@pytest.mark.parametrize("call", ATTACKS.values(), ids=ATTACKS.keys())
def test_an_x_that_requires_grad_comes_back_detached(call):
    """Square returned x itself for the points it did not break, so its x_adv required grad and
    carried the caller's graph, unlike every other attack's."""
    x, y = _data()
    out = call(_Net().eval(), x.requires_grad_(True), y)
    x_adv = getattr(out, "x_adv", out)  # feature_attack and transfer return an AttackOutcome
    assert not x_adv.requires_grad and x_adv.grad_fn is None


def test_a_model_on_another_device_than_x_is_named():
    """pgd(model.cuda(), x, y) with x on the CPU failed in the model's first layer with torch's
    device-mismatch error; without a second device here, a model on the meta device stands in (the
    public calls refuse it before, for holding no values)."""
    from adt_fast.attacks import AttackContext
    from adt_fast.attacks.inputs import check_classes

    x, y = _data()
    with pytest.raises(ValueError, match=r"^the inputs are on cpu but the model's parameters are on meta, and the "
                                         r"model failed on them \(.*\): move the inputs, e\.g\. x\.to\('meta'\)$"):
        check_classes(AttackContext(_Net()), _Net().to("meta"), x, y, "model")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("call", ATTACKS.values(), ids=ATTACKS.keys())
def test_x_left_on_the_cpu_is_named_and_labels_left_there_are_moved(call):
    x, y = _data()
    with pytest.raises(ValueError, match=r"^the inputs are on cpu but the model's parameters are on cuda:0"):
        call(_Net().cuda().eval(), x, y)
    out = call(_Net().cuda().eval(), x.cuda(), y)  # labels from a CPU loader, as evaluate takes them
    assert getattr(out, "x_adv", out).device.type == "cuda"


def test_an_apgd_attack_of_another_name_is_refused_when_built():
    """APGDAttack('apgd', ...) was built, then failed on its first batch with KeyError: 'apgd' (the
    name keys the attack's random stream)."""
    with pytest.raises(ValueError, match=r"^APGD's name must be one of apgd-ce, apgd-dlr, apgd-t, got 'apgd'$"):
        APGDAttack("apgd", EPS)


def test_a_feaattack_pool_of_other_inputs_than_x_is_named():
    """A pool of 5x5 images for 4x4 inputs: 'attack 'feature' cannot run: head(features(x)) fails on
    the model (mat1 and mat2 shapes cannot be multiplied)', blaming the model's split."""
    x, y = _data()
    with pytest.raises(ValueError, match=r"^pool_x holds inputs of shape \(3, 5, 5\) but x's are \(3, 4, 4\)"):
        feature_attack(_Net().eval(), x, y, EPS, targets=1, steps=1, pool_x=torch.rand(6, 3, 5, 5), pool_y=y)


def test_autoattack_components_that_are_not_attacks_are_named():
    """components=['apgd-ce', 'square'] was built, then failed on its first batch with
    AttributeError: 'str' object has no attribute 'classes_needed'."""
    with pytest.raises(TypeError, match=r"^AutoAttack's components must be attacks such as make_attack\('apgd-ce', "
                                        r"epsilon\), got str 'square'$"):
        AutoAttack("autoattack", EPS, components=[APGDAttack("apgd-ce", EPS), "square"])


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_an_x_of_bytes_or_no_tensor_says_what_it_got(call):
    """'x must be a floating-point tensor of inputs in [0, 1]' said nothing of what x was: most
    often uint8 images as a dataset stores them."""
    x, y = _data()
    with pytest.raises(TypeError, match=r"^x must be a floating-point tensor of inputs in \[0, 1\], got "
                                        r"torch\.uint8 \(images as bytes\? x\.float\(\) / 255\)$"):
        call(_Net().eval(), (x * 255).to(torch.uint8), y)
    with pytest.raises(TypeError, match=r"^x must be a floating-point tensor of inputs in \[0, 1\], got list$"):
        call(_Net().eval(), x.tolist(), y)
