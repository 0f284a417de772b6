"""Checkpoints: atomic writes, weights-only reads, refusal of corrupt and malicious files."""

import json
import os
import random
import signal
import subprocess
import sys
import zipfile

import pytest
import torch

from adt_fast import load_model
from adt_fast.devices import DeviceError
from adt_fast.files import remove_atomic_leftovers
from adt_fast.models import build_model
from adt_fast.train import TrainConfig, fit
from adt_fast.train import checkpoint as ckpt


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "at-pgd"
    fit(TrainConfig("at-pgd", "synthetic", str(out), epochs=1, max_batches=2, tensorboard=False))
    return out


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious(path, marker):
    """A checkpoint-shaped file whose unpickling would run a shell command."""
    torch.save({"format": ckpt.FORMAT, "model_config": {"arch": "small-cnn", "num_classes": 10},
                "model": _Exploit(marker)}, path)
    return path


def test_training_checkpoint_is_weights_only_and_complete(run_dir):
    for name in (ckpt.LATEST, ckpt.FINAL_MODEL):
        payload = torch.load(run_dir / name, weights_only=True)
        assert payload["format"] == ckpt.FORMAT and payload["epoch"] == 1
        assert payload["model_config"]["arch"] == "small-cnn"
    state = ckpt.load(run_dir / ckpt.LATEST)
    assert set(state["optimisers"]) == {"model"} and set(state["schedulers"]) == {"model"}
    assert set(state["rng"]) == {"torch", "cuda", "cuda_device", "generators"} and "data" in state["rng"]["generators"]
    assert state["config"]["method"] == "at-pgd" and len(state["history"]) == 1


def test_load_model_from_run_dir_or_file_in_eval_mode(run_dir):
    for target in (run_dir, run_dir / ckpt.FINAL_MODEL, run_dir / ckpt.LATEST):
        model = load_model(target)
        assert not model.training and not any(m.training for m in model.modules())
        assert model(torch.rand(2, 3, 8, 8)).shape == (2, 10)
    reference = load_model(run_dir)
    saved = ckpt.load(run_dir / ckpt.FINAL_MODEL)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in reference.state_dict().items())


def test_save_atomic_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "c.pt"
    ckpt.save_atomic({"x": torch.arange(3)}, target)
    ckpt.save_atomic({"x": torch.arange(4)}, target)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    assert torch.equal(ckpt.load(target)["x"], torch.arange(4))


def test_save_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "c.pt"
    ckpt.save_atomic({"x": torch.arange(3)}, target)
    with pytest.raises(Exception):
        ckpt.save_atomic({"x": lambda: None}, target)  # unpicklable: the write fails midway
    assert torch.equal(ckpt.load(target)["x"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_the_leftover_of_a_killed_save_is_recognised_and_nothing_else(tmp_path):
    """SIGKILL inside save_atomic leaves its temporary file; remove_atomic_leftovers knows its name."""
    target = tmp_path / "checkpoint.pt"
    ckpt.save_atomic({"x": torch.arange(3)}, target)
    killed = ("import os, signal, sys, torch\n"
              "from adt_fast.train.checkpoint import save_atomic\n"
              "torch.save = lambda obj, handle: (handle.write(b'half'), os.kill(os.getpid(), signal.SIGKILL))\n"
              "save_atomic({'x': 1}, sys.argv[1])\n")
    done = subprocess.run([sys.executable, "-c", killed, str(target)], timeout=120)
    assert done.returncode == -signal.SIGKILL
    (tmp_path / "notes.tmp").write_text("mine")
    leftover = [p.name for p in tmp_path.iterdir() if p.name not in ("checkpoint.pt", "notes.tmp")]
    assert len(leftover) == 1 and leftover[0].startswith(".checkpoint.pt.")
    assert remove_atomic_leftovers(tmp_path) == leftover
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "notes.tmp"]
    assert torch.equal(ckpt.load(target)["x"], torch.arange(3))


@pytest.mark.parametrize("damage", ["truncate", "garbage0", "garbage1", "garbage2", "empty"])
def test_corrupt_checkpoint_is_refused(run_dir, tmp_path, damage):
    data = (run_dir / ckpt.LATEST).read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes({"truncate": data[: len(data) // 2], **{f"garbage{i}": random.Random(i).randbytes(4096) for i in range(3)}, "empty": b""}[damage])
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load(bad)
    with pytest.raises(ckpt.CheckpointError):
        load_model(bad)


def test_bytes_flipped_in_the_weights_are_refused_by_every_reader(run_dir, tmp_path):
    """torch.load checks no CRC-32s: a checkpoint whose weight bytes changed loads silently with it,
    so load checks the archive's CRCs first (resume, load_model and eval all read through it)."""
    path = tmp_path / "flipped.pt"
    data = bytearray((run_dir / ckpt.LATEST).read_bytes())
    with zipfile.ZipFile(run_dir / ckpt.LATEST) as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)  # a weight tensor's storage
        offset = member.header_offset + 30 + len(member.filename.encode()) + len(member.extra)
    data[offset + 100:offset + 104] = bytes(255 - b for b in data[offset + 100:offset + 104])
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)  # the test's own check: torch alone does not notice
    for read in (ckpt.load, load_model):
        with pytest.raises(ckpt.CheckpointError) as refused:
            read(path)
        assert str(refused.value) == (f"checkpoint {path} is corrupt or truncated (its member {member.filename} "
                                      f"does not match its CRC-32: its bytes changed)")


def test_foreign_file_is_refused(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"model": build_model("small-cnn", 10).state_dict()}, path)
    with pytest.raises(ckpt.CheckpointError, match="not an adt_fast checkpoint"):
        ckpt.load(path)


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = _malicious(tmp_path / "evil.pt", marker)
    with pytest.raises(ckpt.CheckpointError, match="weights-only"):
        ckpt.load(path)
    with pytest.raises(ckpt.CheckpointError):
        load_model(path)
    assert not marker.exists()
    # The test's own check: an unsafe load of the same file does run the command.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_resume_refuses_a_malicious_or_corrupt_checkpoint(tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig("standard", "synthetic", str(out), epochs=2, max_batches=1, tensorboard=False)
    fit(cfg)
    marker = tmp_path / "pwned"
    _malicious(out / ckpt.LATEST, marker)
    resume = TrainConfig(**{**cfg.to_dict(), "resume": True})
    with pytest.raises(ckpt.CheckpointError):
        fit(resume)
    assert not marker.exists()
    (out / ckpt.LATEST).write_bytes(b"\x80\x02garbage")
    with pytest.raises(ckpt.CheckpointError):
        fit(resume)


def test_an_unsafe_checkpoint_is_refused_in_one_line_without_torchs_advice(tmp_path):
    """torch's refusal is many lines and advises loading with weights_only=False; ours says why in
    one line (models.external.weights_only_refusal)."""
    path = tmp_path / "whole.pt"
    torch.save({"format": ckpt.FORMAT, "model": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(ckpt.CheckpointError) as refused:
        ckpt.load(path)
    assert str(refused.value) == (f"refusing to load {path}: it is not a weights-only checkpoint: it holds an "
                                  f"object of class torch.nn.modules.linear.Linear, which weights-only loading "
                                  f"refuses (unpickling it could run arbitrary code)")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


def test_a_checkpoint_that_would_run_code_is_refused_in_one_line_without_torchs_advice(tmp_path):
    """torch refuses a blocked module's function with another message, whose first line is its advice."""
    path = tmp_path / "evil.pt"
    torch.save({"format": ckpt.FORMAT, "model": _RunsCode()}, path)
    with pytest.raises(ckpt.CheckpointError) as refused:
        ckpt.load(path)
    message = str(refused.value)
    assert message.startswith(f"refusing to load {path}: it is not a weights-only checkpoint: it refers to ")
    assert "system, of the module" in message and "blocks" in message, message
    assert "weights_only" not in message and "\n" not in message


def test_checkpoints_record_the_runs_config_as_config_json_does(tmp_path):
    """Not the invocation's: after a resume (resume true) and under torchrun (the rank's cuda:N) the
    checkpoints hold what config.json holds, the run's settings."""
    out = tmp_path / "run"
    cfg = TrainConfig("standard", "synthetic", str(out), epochs=1, max_batches=1, save_freq=1, tensorboard=False,
                      device="cpu")
    fit(cfg)
    fit(TrainConfig(**{**cfg.to_dict(), "epochs": 2, "resume": True}))
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["resume"] is False and recorded["epochs"] == 2
    for name in (ckpt.LATEST, ckpt.FINAL_MODEL, "checkpoint_epoch2.pt"):
        assert ckpt.load(out / name)["config"] == recorded, name


def test_read_model_reports_only_well_typed_training_facts(tmp_path):
    """A hand-made file may hold anything there; eval compares epoch with epochs."""
    model = build_model("small-cnn", 10, 3, 8)
    path = ckpt.save_atomic({"model_config": model.config, "model": model.state_dict(), "method": "adt-exp",
                             "epoch": True, "config": {"epochs": "10"}}, tmp_path / "odd.pt")
    assert ckpt.read_model(path)[1] == {"method": "adt-exp"}


def test_rng_capture_and_restore_round_trip():
    generator = torch.Generator().manual_seed(5)
    torch.manual_seed(7)
    state = ckpt.capture_rng({"data": generator})
    first = (torch.rand(3), torch.rand(3, generator=generator))
    torch.rand(10), torch.rand(10, generator=generator)
    ckpt.restore_rng(state, {"data": generator})
    second = (torch.rand(3), torch.rand(3, generator=generator))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    with pytest.raises(ckpt.CheckpointError):
        ckpt.restore_rng({"torch": state["torch"], "generators": {}}, {"data": generator})


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@needs_gpu
def test_rng_states_of_a_checkpoint_loaded_onto_the_gpu_restore(tmp_path):
    """States read onto a GPU arrive as CUDA tensors; torch takes them only on the CPU. The first
    resume on a GPU read its checkpoint there and failed with 'RNG state must be a torch.ByteTensor'
    (H200, 2026-12-04); a resume now reads onto the CPU, and restore_rng accepts either."""
    generator = torch.Generator(device="cuda").manual_seed(5)
    torch.manual_seed(7)
    torch.rand(1, device="cuda")  # CUDA initialised: its stream is captured too
    path = ckpt.save_atomic({"rng": ckpt.capture_rng({"data": generator}, 0)}, tmp_path / "c.pt")
    first = (torch.rand(3), torch.rand(3, device="cuda"), torch.rand(3, device="cuda", generator=generator))
    state = ckpt.load(path, map_location="cuda")["rng"]
    assert state["torch"].device.type == "cuda"  # what made the resume fail
    ckpt.restore_rng(state, {"data": generator}, 0)
    second = (torch.rand(3), torch.rand(3, device="cuda"), torch.rand(3, device="cuda", generator=generator))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.cuda
@needs_gpu
def test_a_run_on_the_gpu_resumes_and_goes_on(tmp_path, monkeypatch):
    """ADT_EXP-AM: a generator with its Adam. After the resume the weights and Adam's moments are
    on the GPU and Adam's step counts on the CPU, as in a fresh run (a step count on the GPU
    costs a host read per parameter tensor and step)."""
    from adt_fast.train import loop

    out = tmp_path / "run"
    cfg = TrainConfig("adt-exp-am", "synthetic", str(out), epochs=1, max_batches=2, batch_size=16,
                      generator_width=8, lr_drop=[], tensorboard=False, device="cuda")
    fit(cfg)
    resumed, load_state = [], loop.Trainer.load_state
    monkeypatch.setattr(loop.Trainer, "load_state", lambda self, *a: resumed.append(self) or load_state(self, *a))
    fit(TrainConfig(**{**cfg.to_dict(), "epochs": 2, "resume": True}))
    payload = ckpt.load(out / ckpt.FINAL_MODEL)
    assert payload["epoch"] == 2 and payload["config"]["device"].startswith("cuda")
    optimisers = resumed[0].optimisers
    states = [state for opt in optimisers.values() for state in opt.state.values()]
    assert states and any(isinstance(opt, torch.optim.Adam) for opt in optimisers.values())
    for state in states:
        for key, value in state.items():
            if torch.is_tensor(value):
                assert value.device.type == ("cpu" if key == "step" else "cuda"), key


# Resolution order, device errors, the saved GPU's stream, and write_atomic's fsync, permissions and
# interruption (mutation review 2026-12-05).
def test_a_run_directory_resolves_to_its_final_model_before_its_checkpoint(tmp_path):
    """resolve's order is the contract: model.pt, else checkpoint.pt (mutant: the other order)."""
    model = build_model("small-cnn", 10, 3, 8)
    for name, epoch in ((ckpt.LATEST, 1), (ckpt.FINAL_MODEL, 2)):
        ckpt.save_atomic({"model_config": model.config, "model": model.state_dict(), "epoch": epoch},
                         tmp_path / name)
    assert ckpt.resolve(tmp_path) == tmp_path / ckpt.FINAL_MODEL
    assert ckpt.read_model(tmp_path)[1] == {"epoch": 2}
    (tmp_path / ckpt.FINAL_MODEL).unlink()
    assert ckpt.resolve(tmp_path) == tmp_path / ckpt.LATEST



def test_a_checkpoint_path_that_is_a_device_or_a_pipe_is_named_as_such_not_missing(tmp_path, capsys):
    """/dev/null or a FIFO exists: "does not exist" sent the user looking for a typo."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path in ("/dev/null", fifo):
        with pytest.raises(ckpt.CheckpointError, match=f"checkpoint {path} is not a file or a run directory"):
            ckpt.resolve(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ckpt.resolve(tmp_path / "missing.pt")
    from adt_fast.cli import main
    assert main(["eval", "--checkpoint", "/dev/null", "--dataset", "digits", "--out", str(tmp_path / "r.json")]) == 2
    assert "--checkpoint: checkpoint /dev/null is not a file or a run directory" in capsys.readouterr().err

def test_a_map_location_this_machine_lacks_is_a_device_error_not_a_damaged_file(run_dir):
    """load's docstring: a device name is checked first, so a missing GPU is never called corruption
    (mutant: the check dropped; torch.load's RuntimeError is then reported as a corrupt file)."""
    with pytest.raises(DeviceError):
        ckpt.load(run_dir / ckpt.LATEST, map_location="cuda:99")
    assert not issubclass(DeviceError, ckpt.CheckpointError)


def test_the_saved_gpus_stream_goes_to_the_gpu_the_resume_trains_on(monkeypatch):
    """capture_rng records the run's GPU, restore_rng puts that GPU's stream on the resuming
    process's GPU (another rank, another world size). Simulated on the CPU: torch.cuda's RNG calls
    are replaced by fakes that record what they were given."""
    streams = [torch.tensor([i] * 16, dtype=torch.uint8) for i in range(3)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: list(streams))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    state = ckpt.capture_rng({}, cuda_device=2)
    assert state["cuda_device"] == 2
    ckpt.restore_rng(state, {}, cuda_device=0)
    assert len(restored) == 1 and restored[0][1] == 0 and torch.equal(restored[0][0], streams[2])


def test_save_atomic_fsyncs_the_whole_file_before_the_rename(tmp_path, monkeypatch):
    """A crash (power loss) after the rename must not leave an empty checkpoint.pt: the data reach
    the disk before the rename (mutant: the fsync dropped, which no other test notices)."""
    from adt_fast import files

    target, synced, real_fsync = tmp_path / "c.pt", [], os.fsync

    def fsync(fd):
        synced.append((os.fstat(fd).st_size, target.exists()))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    ckpt.save_atomic({"x": torch.arange(3)}, target)
    assert synced == [(target.stat().st_size, False)]


def test_save_atomic_gives_the_file_the_usual_permissions(tmp_path):
    """mkstemp makes 0600 files; a checkpoint or report gets 0666 less the umask, as open() would
    give it (mutant: the chmod dropped, so nobody else can read model.pt)."""
    old = os.umask(0o022)
    try:
        path = ckpt.save_atomic({"x": torch.arange(3)}, tmp_path / "c.pt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_an_interrupted_save_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt, not an Exception) inside the write: only a kill may leave the
    temporary file (files.py's docstring; mutant: `except Exception`)."""
    target = tmp_path / "c.pt"
    ckpt.save_atomic({"x": torch.arange(3)}, target)

    def interrupted(obj, handle):
        handle.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_atomic({"x": torch.arange(4)}, target)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    assert torch.equal(ckpt.load(target)["x"], torch.arange(3))


def test_leftover_removal_keeps_a_symlink_with_a_leftovers_name(tmp_path):
    """Only write_atomic's own temporary files go: a symbolic link that happens to look like one
    stays (mutant: the is_symlink check dropped)."""
    from adt_fast.files import remove_atomic_leftovers

    (tmp_path / "notes").write_text("mine")
    (tmp_path / ".checkpoint.pt.abcd1234.tmp").symlink_to(tmp_path / "notes")
    assert remove_atomic_leftovers(tmp_path) == []
    assert (tmp_path / ".checkpoint.pt.abcd1234.tmp").is_symlink()


def _read_only_mount():
    """A folder on a read-only mount, where access(2) says no even to root (containers mount
    /proc/sys read-only); None if there is none."""
    for point in ("/proc/sys", "/sys/fs/cgroup"):
        if os.path.isdir(point) and os.access(point, os.X_OK) and not os.access(point, os.W_OK):
            return point
    return None


def test_a_folder_on_a_read_only_mount_is_unwritable_even_for_root(tmp_path):
    """unwritable_reason asks access(2) for write permission, which read-only mounts refuse to
    everyone (mutant: only X_OK asked). As a user, a 0555 folder shows it; as root only a
    read-only mount does."""
    from adt_fast.files import unwritable_reason

    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        try:
            assert unwritable_reason(locked / "run") == f"{locked} is not writable"
        finally:
            locked.chmod(0o755)
        return
    point = _read_only_mount()
    if point is None:
        pytest.skip("no read-only mount here")
    assert unwritable_reason(os.path.join(point, "adt_fast_new")) == f"{point} is not writable"


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs Linux sysfs")
def test_make_writable_dir_tries_a_file_where_access_says_yes_but_creation_fails():
    """sysfs folders that exist pass access(2) for root and mkdir(exist_ok=True), yet refuse new
    files: only the probe file finds out (mutant: the probe dropped; then eval would attack for
    hours and fail at writing its report)."""
    from adt_fast.files import make_writable_dir

    with pytest.raises(OSError):
        make_writable_dir("/sys/kernel")


def _names_dtensor(path):
    """A torch.save file whose pickle names torch.distributed.tensor.DTensor, as a DTensor (FSDP2)
    state dict does: torch refuses it, while that module is not imported, with "... must be imported
    to load DTensors" after a first line that advises weights_only=False."""
    import io
    import zipfile

    buffer = io.BytesIO()
    torch.save({"format": ckpt.FORMAT, "model": {"weight": _Placeholder()}}, buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data = data.replace(f"c{__name__}\n_Placeholder\n".encode(), b"ctorch.distributed.tensor\nDTensor\n")
            out.writestr(info.filename, data)
    return path


class _Placeholder:
    pass


def test_a_file_refused_for_a_missing_import_names_the_cause_not_torchs_advice(tmp_path, monkeypatch):
    """weights_only_refusal's fallback dropped the line that holds the cause ("Weights only load
    failed. ``torch.distributed.tensor`` must be imported ...") and quoted torch's advice to load
    with weights_only set to False."""
    from torch import _weights_only_unpickler

    from adt_fast.models.external import ExternalModelError, load_weights

    # As in a process that has not imported torch.distributed.tensor (which marks DTensor safe).
    monkeypatch.setattr(_weights_only_unpickler, "_marked_safe_globals_set", set())
    path = _names_dtensor(tmp_path / "dtensor.pt")
    with pytest.raises(ckpt.CheckpointError) as refused:
        ckpt.load(path)
    with pytest.raises(ExternalModelError) as refused_weights:
        load_weights(torch.nn.Linear(2, 2), path)
    for message in (str(refused.value), str(refused_weights.value)):
        assert "must be imported to load DTensors" in message, message
        assert "weights_only" not in message and "will likely succeed" not in message, message
