"""Checkpoints edited or damaged the way a user could: each is refused by --resume, eval and
load_model with one line naming the file and what is wrong, and the run directory is left as it was."""

import dataclasses
import hashlib
import shutil

import pytest
import torch

from adt_fast import load_model
from adt_fast.train import TrainConfig, fit
from adt_fast.train import checkpoint as ckpt


def _config(method: str, out) -> TrainConfig:
    extra = {"generator_width": 8} if method != "standard" else {}
    return TrainConfig(method, "synthetic", str(out), epochs=1, max_batches=1, tensorboard=False, **extra)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for method in ("standard", "adt-imp-am"):
        fit(_config(method, root / method))
    return root


def _edited(runs, tmp_path, method: str, edit):
    """A copy of the method's run whose checkpoint.pt went through `edit`; model.pt removed, so the
    run directory means its checkpoint.pt."""
    run = tmp_path / method
    shutil.copytree(runs / method, run)
    payload = torch.load(run / ckpt.LATEST, weights_only=True)
    edit(payload)
    torch.save(payload, run / ckpt.LATEST)
    (run / ckpt.FINAL_MODEL).unlink()
    return run


def _contents(run) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*")) if p.is_file()}


def _refused_resume(run, method: str, match: str) -> str:
    before = _contents(run)
    config = dataclasses.replace(_config(method, run), epochs=2, resume=True)
    with pytest.raises(ckpt.CheckpointError, match=match) as refused:
        fit(config)
    message = str(refused.value)
    assert "\n" not in message and str(run / ckpt.LATEST) in message
    assert _contents(run) == before
    return message


@pytest.mark.parametrize("history, why", [
    ("abc", "its history .* must be a list, got a str"),
    ({"epoch": 1}, "its history .* must be a list, got a dict"),
    ([], "one metrics record per finished epoch: it holds 0 for epoch 1"),
    (["epoch 1"], r"metrics records \(dicts\), it holds str"),
])
def test_a_history_that_is_not_one_record_per_epoch_is_refused(runs, tmp_path, history, why):
    """A str or dict history went on into the TensorBoard writer and failed there with a traceback,
    after config.json and metrics.jsonl had been rewritten; an empty one lost the epoch's metrics line."""
    run = _edited(runs, tmp_path, "standard", lambda p: p.__setitem__("history", history))
    _refused_resume(run, "standard", why)


@pytest.mark.parametrize("epoch", [-1, 1.7, "1", True, None])
def test_an_epoch_that_is_not_a_whole_number_is_refused(runs, tmp_path, epoch):
    """-1 trained epochs 0 and 1 again as if new; "1" and True went through int() unnoticed."""
    def edit(payload):
        payload["epoch"] = epoch
    run = _edited(runs, tmp_path, "standard", edit)
    _refused_resume(run, "standard", r"its epoch \(the epochs finished\) must be a whole number >= 0, got ")


def test_an_epoch_past_the_runs_epochs_is_refused_where_the_checkpoint_is_read(runs, tmp_path):
    """eval reported such a file's model as "after 5 of 1 epochs"."""
    def edit(payload):
        payload["epoch"], payload["history"] = 5, payload["history"] * 5
    run = _edited(runs, tmp_path, "standard", edit)
    why = r"its epoch \(the epochs finished\) is 5, past the 1 epochs its run config records"
    _refused_resume(run, "standard", why)
    with pytest.raises(ckpt.CheckpointError, match=f"contradicts itself: {why}") as refused:
        load_model(run)
    assert str(run / ckpt.LATEST) in str(refused.value)


def test_a_negative_epoch_is_not_reported_as_what_trained_the_model(runs, tmp_path):
    run = _edited(runs, tmp_path, "standard", lambda p: p.__setitem__("epoch", -1))
    assert ckpt.read_model(run)[1] == {"method": "standard", "epochs": 1}


def test_a_checkpoint_without_random_states_is_refused(runs, tmp_path):
    """It was a KeyError traceback."""
    run = _edited(runs, tmp_path, "standard", lambda p: p.pop("rng"))
    _refused_resume(run, "standard", "holds no random-number states")


def test_a_broken_random_state_names_the_file(runs, tmp_path):
    def edit(payload):
        payload["rng"]["torch"] = payload["rng"]["torch"][:100]
    run = _edited(runs, tmp_path, "standard", edit)
    _refused_resume(run, "standard", "random-number states cannot be restored")


def test_a_schedule_state_without_its_settings_is_refused(runs, tmp_path):
    """load_state_dict takes any dict: the schedule went on from a fresh one (last_epoch 0)."""
    run = _edited(runs, tmp_path, "standard", lambda p: p["schedulers"].__setitem__("model", {"x": 1}))
    _refused_resume(run, "standard", "the model schedule's state lacks last_epoch, base_lrs")


def test_a_schedule_state_from_an_older_torch_loads_with_the_new_setting_at_its_default():
    """torch adds settings to its schedulers between releases (ReduceLROnPlateau's default_min_lr):
    a state saved before one must still load, as torch's load_state_dict loads it."""
    import torch

    from adt_fast.train import checkpoint as ckpt

    def plateau():
        return torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))
    saved = plateau().state_dict()
    saved["last_epoch"] = 7
    older = {key: value for key, value in saved.items() if key != "default_min_lr"}
    scheduler = plateau()
    ckpt.load_schedule(scheduler, older, "generator")
    assert scheduler.last_epoch == 7


def test_a_generator_state_that_does_not_fit_is_one_line(runs, tmp_path):
    """torch's message listed the 60 missing keys over several lines."""
    run = _edited(runs, tmp_path, "adt-imp-am", lambda p: p["modules"].__setitem__("generator", {}))
    _refused_resume(run, "adt-imp-am", r"the weights for the generator network do not fit: 60 missing "
                                       r"\(noise_encoder.0.weight, .* and 57 more\)")


def test_a_classifier_of_another_number_of_classes_is_one_line(runs, tmp_path):
    def edit(payload):
        payload["model"] = {k: v[:5] if v.dim() and v.shape[0] == 10 else v for k, v in payload["model"].items()}
    run = _edited(runs, tmp_path, "standard", edit)
    why = r"the weights for the classifier do not fit: 2 shape differs \(head.linear.weight \(5, 64\) vs \(10, 64\)"
    _refused_resume(run, "standard", why)
    with pytest.raises(ckpt.CheckpointError, match=why) as refused:
        load_model(run)
    assert "\n" not in str(refused.value)


def test_sparse_classifier_weights_name_the_first_tensor_and_what_is_wrong(runs, tmp_path):
    """torch's message was cut to its heading, "Error(s) in loading state_dict for Classifier:"."""
    def edit(payload):
        payload["model"] = {k: v.to_sparse() if v.is_floating_point() else v for k, v in payload["model"].items()}
    run = _edited(runs, tmp_path, "standard", edit)
    why = (r"the weights for the classifier do not fit: body.0.weight must be a dense tensor, got a "
           r"torch.sparse_coo one; convert it with .to_dense\(\) \(\d+ more tensors cannot be loaded either\)")
    _refused_resume(run, "standard", why)
    with pytest.raises(ckpt.CheckpointError, match=why):
        load_model(run)


def test_weights_torch_cannot_read_give_its_first_complaint_not_its_heading():
    from adt_fast.models.external import load_fitting

    why = load_fitting(torch.nn.Linear(2, 2), {"weight": [[1.0, 2.0], [3.0, 4.0]], "bias": torch.zeros(2)})
    assert why.startswith('While copying the parameter named "weight"') and "list" in why, why


@pytest.mark.parametrize("image_size", [8.0, None])
def test_a_generator_image_size_that_is_not_an_int_or_pair_is_refused_by_name(image_size):
    """8.0 and None were a TypeError ("'float' object is not iterable") naming nothing."""
    from adt_fast.models.generators import PerturbationGenerator, QNetwork
    for build in (lambda: PerturbationGenerator(3, image_size, "implicit", width=4), lambda: QNetwork(3, image_size)):
        with pytest.raises(ValueError, match=r"image_size must be a positive int or an \(H, W\) pair, got"):
            build()


def test_q_network_min_std_refuses_a_bool():
    """True was taken as 1.0, where every other setting of the networks refuses a bool."""
    from adt_fast.models.generators import QNetwork
    with pytest.raises(ValueError, match="min_std must be a finite number > 0, got True"):
        QNetwork(3, 8, min_std=True)
