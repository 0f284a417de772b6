"""Checkpoints that survive a kill at any moment and never run code when read.

Writes go to a temporary file in the same directory, are flushed to disk and then renamed over
the target, so a reader sees the old file or the new one, never half of one. Reads check every
member's CRC-32 (torch.load does not), then use torch.load(weights_only=True): a file that would
need arbitrary unpickling is refused.
"""

from __future__ import annotations

import os
import pickle
import shlex
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..devices import resolve_device
from ..files import check_path, shell_path, write_atomic, zip_damage
from ..models.external import load_fitting, raised, weights_only_refusal

FORMAT = "adt_fast.checkpoint/1"
LATEST = "checkpoint.pt"
FINAL_MODEL = "model.pt"

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, unsafe or not ours."""


class WrongFactory(CheckpointError):
    """The factory named to load a checkpoint is not the one that built its classifier, or cannot
    build it here (its module does not import, calling it fails): what to fix is the factory named
    (eval's --model), not the file."""


def save_atomic(payload: dict, path: PathLike) -> Path:
    """torch.save to `path` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda handle: _save(payload, handle))


def _save(payload: dict, handle) -> None:
    """torch.save, failing with the OSError of a refused write (a full disk, a file size limit):
    torch's zip writer hides it behind the RuntimeError ("unexpected pos") of closing the archive."""
    try:
        torch.save({"format": FORMAT, **payload}, handle)
    except RuntimeError as err:
        if isinstance(err.__context__, OSError):
            raise err.__context__ from None
        raise


def resolve(path: PathLike) -> Path:
    """A checkpoint file: `path` itself, or a run directory's final model, else its latest checkpoint.

    model.pt is never older than checkpoint.pt: a resume that trains further removes it first
    (loop.clear_for_resume), so a run directory always resolves to its newest model.
    "" is refused, not read as the working directory."""
    path = check_path(path, "the checkpoint", "a run directory or a checkpoint file", CheckpointError)
    if not path:
        raise CheckpointError("the checkpoint path is empty: name a run directory or a checkpoint file "
                              "(\"\" would be the working directory)")
    path = Path(path)
    if path.is_dir():
        for name in (FINAL_MODEL, LATEST):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"run directory {path} holds neither {FINAL_MODEL} nor {LATEST}")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not path.is_file():  # a device, a pipe: reading one could hang, and it holds no checkpoint
        raise CheckpointError(f"checkpoint {path} is not a file or a run directory")
    return path


# torch.save writes a zip archive; every zip starts with a local file header.
ZIP_MAGIC = b"PK\x03\x04"


def load(path: PathLike, map_location: Any = "cpu") -> dict:
    """Read a checkpoint safely; refuse anything that is not a weights-only adt_fast checkpoint.

    A device name as map_location is checked first (DeviceError), so a device this machine lacks
    is never reported as a damaged file.
    """
    path = resolve(path)
    if isinstance(map_location, (str, torch.device)):
        map_location = resolve_device(map_location)
    with open(path, "rb") as handle:
        if not ZIP_MAGIC.startswith(handle.read(len(ZIP_MAGIC))):  # a shorter head: truncated
            raise CheckpointError(f"{path} is not an adt_fast checkpoint (not a torch.save zip "
                                  f"archive)")
    damage = zip_damage(path)
    if damage is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({damage})")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # torch's message is many lines and advises unsafe loading
        raise CheckpointError(f"refusing to load {path}: it is not a weights-only checkpoint: "
                              f"{weights_only_refusal(err)}") from None
    except Exception as err:  # a damaged file can fail anywhere inside the zip/unpickler
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated "
                              f"({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an adt_fast checkpoint (expected format {FORMAT!r})")
    return payload


def held_epoch(path: PathLike) -> Optional[int]:
    """The epochs a checkpoint file has finished, read cheaply: its pickle only (torch.load with
    mmap maps the tensors instead of reading them, and load's CRC-32 pass over the whole file is
    left out), still weights-only, so nothing in it runs. None for a file that cannot be read so
    or holds no such count. Only for what to suggest: a resume reads the file in full."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - a damaged file can fail anywhere inside the zip/unpickler
        return None
    epoch = payload.get("epoch") if isinstance(payload, dict) and payload.get("format") == FORMAT else None
    return epoch if _is_epoch_count(epoch) else None


def _is_epoch_count(value: Any) -> bool:
    """Whether `value` can be a checkpoint's count of finished epochs: a whole number >= 0 (a bool
    is not one, and a negative count would have a resume train epochs that do not exist)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def load_model(path: PathLike, device: Union[str, torch.device] = "cpu",
               factory: Optional[str] = None) -> torch.nn.Module:
    """The classifier stored in a run directory or checkpoint file, on `device`, in eval mode
    (`factory`: see read_model)."""
    return read_model(path, device, factory)[0]


def read_model(path: PathLike, device: Union[str, torch.device] = "cpu",
               factory: Optional[str] = None) -> tuple[torch.nn.Module, dict]:
    """load_model's classifier and what trained it ({"method", "epoch", "epochs"}, those the file
    holds), so a report can say which point of a run it scored: a checkpoint.pt mid-run, or the
    final model.pt.

    A classifier trained with a factory as its arch (--arch MODULE:FACTORY) is built by calling
    that factory, which imports and runs code: only when the caller names the same spec as
    `factory`. A checkpoint never runs code by itself, as weights-only loading promises."""
    from ..models import build_classifier
    from ..models.external import ExternalModelError

    device = resolve_device(device)
    payload = load(path)  # onto the CPU: a checkpoint.pt also holds optimiser and generator state
    path = resolve(path)
    model_config = payload.get("model_config")
    _check_factory(path, model_config.get("arch") if isinstance(model_config, dict) else None, factory)
    try:
        model = build_classifier(**model_config)
        load_state_into(model, payload["model"], "the classifier")
    except ExternalModelError as err:  # only a factory named as `factory` raises it (_check_factory)
        raise WrongFactory(f"the factory {factory!r} cannot build the classifier of {path}: {err}") from None
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {path} does not hold a usable model ({err})") from None
    past = _epoch_past_total(payload)
    if past is not None:
        raise CheckpointError(f"checkpoint {path} contradicts itself: {past}")
    found = {"method": payload.get("method"), "epoch": payload.get("epoch"), "epochs": _recorded_epochs(payload)}
    usable = {"method": lambda value: isinstance(value, str), "epoch": _is_epoch_count, "epochs": _is_epoch_count}
    trained = {key: value for key, value in found.items() if usable[key](value)}
    return model.to(device).eval(), trained


def _recorded_epochs(payload: dict) -> Any:
    """The epochs of the run a checkpoint records in its config (None where it records none)."""
    config = payload.get("config")
    return config.get("epochs") if isinstance(config, dict) else None


def _epoch_past_total(payload: dict) -> Optional[str]:
    """Why a checkpoint's count of finished epochs cannot be its run's, or None: training never
    saves a count past the run's epochs (a resume that trains longer records its new total), so
    only a hand's edit makes one, and a report would say "after 5 of 2 epochs"."""
    epoch, total = payload.get("epoch"), _recorded_epochs(payload)
    if _is_epoch_count(epoch) and _is_epoch_count(total) and epoch > total:
        return f"its epoch (the epochs finished) is {epoch}, past the {total} epochs its run config records"
    return None


def load_state_into(module: torch.nn.Module, state: Any, what: str) -> None:
    """module.load_state_dict(state) for a state already read from a checkpoint (models.external's
    load_weights reads a weights file), failing with a ValueError of one line (load_fitting); the
    caller names the file."""
    why = load_fitting(module, state)
    if why is not None:
        raise ValueError(f"the weights for {what} do not fit: {why}")


# What carries a schedule's progress: without it the lr schedule would restart.
SCHEDULE_PROGRESS = ("last_epoch", "base_lrs")


def load_schedule(scheduler, state: Any, name: str) -> None:
    """scheduler.load_state_dict(state), which takes any dict (it updates the scheduler's
    attributes with it): one lacking the schedule's progress would restart the lr schedule without
    a word, so it is a ValueError naming what is missing. Only the progress is required: torch adds
    settings to its schedulers between releases (ReduceLROnPlateau's default_min_lr), and a state
    saved before one keeps its fresh default, as load_state_dict itself does."""
    if not isinstance(state, dict):
        raise ValueError(f"the {name} schedule's state must be a dict, got a {type(state).__name__}")
    missing = [key for key in SCHEDULE_PROGRESS if key in scheduler.state_dict() and key not in state]
    if missing:
        raise ValueError(f"the {name} schedule's state lacks {', '.join(missing)}")
    scheduler.load_state_dict(state)


def load_method_state(method, state: Any) -> None:
    """method.load_extra_state(state), failing with a ValueError of one line naming method_state.

    A method without state (Method's extra_state and load_extra_state, which ignores any) takes
    only its {}: another state is a hand's edit or another method's. A method with state reads it
    in its own load_extra_state, whatever it raises becoming the one line: its state's form may
    change as it trains (a dict filled on the first step, a best value None until it holds a
    float), so it is not compared with a freshly built method's."""
    from .methods import Method

    name = method.name_in_messages
    if all(getattr(type(method), hook) is getattr(Method, hook) for hook in ("extra_state", "load_extra_state")):
        if not isinstance(state, dict) or state:
            got = (f"keys {', '.join(sorted(map(repr, state)))}" if isinstance(state, dict)
                   else f"a {type(state).__name__}")
            raise ValueError(f"its method_state must be {{}}, as method {name} keeps no state, got {got}")
        return
    try:
        method.load_extra_state(state)
    except Exception as err:  # noqa: BLE001 - a method's own code can raise anything
        raise ValueError(f"its method_state does not fit method {name}: "
                         f"{raised(err).strip().splitlines()[0]}") from None


def training_progress(payload: dict) -> tuple[int, list]:
    """The epochs a checkpoint has finished and their metrics records, checked before a resume goes
    on from them: a count that is not one (_is_epoch_count) or is past its run's epochs
    (_epoch_past_total), or a history that is not one record (a dict) per finished epoch
    (metrics.jsonl is rewritten from it) is a ValueError, raised before the run directory is touched."""
    epoch, history = payload.get("epoch"), payload.get("history")
    if not _is_epoch_count(epoch):
        raise ValueError(f"its epoch (the epochs finished) must be a whole number >= 0, got {epoch!r}")
    past = _epoch_past_total(payload)
    if past is not None:
        raise ValueError(past)
    if not isinstance(history, list):
        raise ValueError(f"its history (the metrics records) must be a list, got a {type(history).__name__}")
    if len(history) != epoch:
        raise ValueError(f"its history must hold one metrics record per finished epoch: it holds {len(history)} "
                         f"for epoch {epoch}")
    if not all(isinstance(record, dict) for record in history):
        raise ValueError("its history must hold metrics records (dicts), it holds "
                         + ", ".join(sorted({type(record).__name__ for record in history})))
    return epoch, list(history)


def _check_factory(path: Path, arch: Any, factory: Optional[str]) -> None:
    """A factory runs only when named, and only the one that built the checkpoint's classifier."""
    from ..models.external import is_factory_spec, same_spec

    built_by_factory = isinstance(arch, str) and is_factory_spec(arch)
    if built_by_factory and factory is None:
        quoted = shlex.quote(arch)
        raise CheckpointError(f"the classifier in {path} was built by the factory {arch!r}, which a checkpoint "
                              f"never imports by itself: name it to load it, as in adt-fast eval --model {quoted} "
                              f"(--source-model {quoted} for a transfer source) or load_model(..., "
                              f"factory={arch!r})")
    if built_by_factory and not same_spec(factory, arch):
        raise WrongFactory(f"the classifier in {path} was built by the factory {arch!r}, not {factory!r} (if "
                           f"only its name changed, load the weights into yours: eval --model "
                           f"{shlex.quote(factory)} --weights {shell_path(path)})")
    if not built_by_factory and factory is not None:
        raise WrongFactory(f"the classifier in {path} is adt_fast's {arch}, not one a factory builds: "
                           f"load it without naming a factory ({factory!r})")


# ------------------------------------------------------------------------------------------------
# Training state: random-number generator states (weights-only types: uint8 tensors and lists).
# ------------------------------------------------------------------------------------------------
def capture_rng(generators: dict | None = None, cuda_device: int | None = None) -> dict:
    """torch's CPU RNG, every initialised CUDA device's RNG, and the given named generators.

    `cuda_device`: the GPU the run trains on; its index is saved so that a resume on another
    GPU (another rank, another world size) continues that GPU's stream.
    """
    cuda = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = torch.cuda.get_rng_state_all()
    return {"torch": torch.get_rng_state(), "cuda": cuda, "cuda_device": cuda_device,
            "generators": {name: g.get_state() for name, g in (generators or {}).items()}}


def restore_rng(state: dict, generators: dict | None = None, cuda_device: int | None = None) -> None:
    """Put back what capture_rng saved; named generators must match by name.

    With `cuda_device`, the stream of the GPU the saved run trained on goes to that device
    (under torchrun every rank holds the same streams, and each trains on its own GPU).
    The states may come from a checkpoint loaded onto the GPU; torch takes them as CPU tensors."""
    if not isinstance(state, dict):
        raise CheckpointError(f"the checkpoint holds no random-number states (rng is {type(state).__name__}, "
                              f"not a dict)")
    try:
        torch.set_rng_state(_on_cpu(state["torch"]))
        saved_device = state.get("cuda_device")
        if state.get("cuda") is not None and cuda_device is not None and saved_device is not None:
            torch.cuda.set_rng_state(_on_cpu(state["cuda"][saved_device]), cuda_device)
        elif state.get("cuda") is not None and torch.cuda.is_available():
            saved = state["cuda"]
            for index in range(min(len(saved), torch.cuda.device_count())):
                torch.cuda.set_rng_state(_on_cpu(saved[index]), index)
        saved_generators = state.get("generators", {})
        for name, generator in (generators or {}).items():
            generator.set_state(_on_cpu(saved_generators[name]))
    except (KeyError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"the checkpoint's random-number states cannot be restored ({err})") from None


def _on_cpu(value):
    return value.cpu() if isinstance(value, torch.Tensor) else value
