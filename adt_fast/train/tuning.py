"""The run's speed settings: measured once per run, recorded in the run directory, reused on resume.

Two choices depend on the device and the model and are made on the run's first training batch
when a run starts, written to ``tuning.json`` and read back by ``--resume`` (never measured again
there):

- the classifier's memory format (``"memory_format"``): contiguous NCHW or channels_last, the
  faster for its forward plus input gradient, unless ``--channels-last`` / ``--no-channels-last``
  says; it changes float32 results in the last bits (other convolution kernels), which is why
  it is recorded rather than silent;
- the method's own (so far: how many of ADT_EXP's k samples go through the classifier per pass,
  the top-level ``"samples_per_pass"``), measured in the chosen memory format; a flag
  (``--samples-per-pass``) overrides it.

Under torchrun, rank 0 makes every choice and the other ranks take it: DDP needs one memory format
on every rank, since its gradient buckets follow the parameters' layout.
"""

from __future__ import annotations

import dataclasses
import json
import reprlib
from copy import deepcopy
from functools import partial
from pathlib import Path
from typing import Any, Optional

import torch

from ..attacks.engine import eval_mode
from ..attacks.losses import cross_entropy
from ..devices import best_seconds
from ..distributed import World
from ..files import write_atomic
from ..models.external import raised

TUNING_FILE = "tuning.json"
MEMORY_FORMAT = "memory_format"
# A classifier channels_last cannot speed up: its inputs are not images (N, C, H, W), or it has
# no 4-D (convolution) weights to lay out.
NOT_A_CONV_NET = "not a 2-D convolutional network"
CHANNELS_LAST_FAILED = "default: channels_last could not be measured"


def load_or_measure(run_dir: Path, method, model, x, y, *, channels_last, resume: bool,
                    world: World = World()) -> dict:
    """Settle and apply the run's speed settings: the memory format (`channels_last`: True or
    False as the flag says, or "auto"), then the method's. A flag's value wins; else, on resume, the
    recorded choice; else a fresh measurement on the batch (x, y), which draws no random numbers.
    Rank 0 decides and writes run_dir/tuning.json; every rank applies its choice."""
    path = Path(run_dir) / TUNING_FILE
    tuning = None
    if world.main:
        recorded = (_read(path) if resume else None) or {}
        memory = _memory_format(channels_last, recorded.get(MEMORY_FORMAT), model, x, y, method.runtime)
        method.runtime.set_memory_format(model, memory["channels_last"])  # the method measures in it
        ours = {key: value for key, value in recorded.items() if key != MEMORY_FORMAT}
        tuned = _checked_tuning(method.tune(model, x, y, recorded=ours), method)
        text = json.dumps({**tuned, MEMORY_FORMAT: memory}, indent=2, sort_keys=True) + "\n"
        tuning = json.loads(text)  # tuples as lists: the run applies what its resumes will read back
        write_atomic(path, lambda handle: handle.write(text), mode="w")
    tuning = world.broadcast(tuning)
    method.runtime.set_memory_format(model, tuning[MEMORY_FORMAT]["channels_last"])
    method.apply_tuning(tuning)
    return tuning


def _checked_tuning(tuned: Any, method) -> dict:
    """What a method's tune() returned, if JSON can write it as tuning.json; else a TypeError naming
    the method and what is not JSON, instead of json's error from inside the write (which never
    begins: the file is not touched)."""
    problem = f"got {type(tuned).__name__}" if not isinstance(tuned, dict) else _not_json(tuned, "tune()")
    if problem is not None:
        raise TypeError(f"method {method.name_in_messages}: tune() must return a dict of "
                        f"JSON types (str keys; str, int, float, bool, None, and lists and dicts of them) for "
                        f"{TUNING_FILE}, {problem}")
    return tuned


def _not_json(value: Any, at: str, inside: tuple = ()) -> Optional[str]:
    """Where `value` holds what JSON cannot write, or would read back as something else (a key that
    is not a str), and what; None if nothing. `inside`: the ids of the containers on the way."""
    if value is None or isinstance(value, (str, int, float)):  # bool is an int
        return None
    if not isinstance(value, (dict, list, tuple)):
        return f"but {at} is of type {type(value).__name__} ({reprlib.repr(value)})"
    if id(value) in inside:
        return f"but {at} holds itself (a circular reference)"
    for key, item in value.items() if isinstance(value, dict) else enumerate(value):
        if isinstance(value, dict) and not isinstance(key, str):
            return f"but {at} has the key {key!r} ({type(key).__name__}), which JSON would write as a string"
        problem = _not_json(item, f"{at}[{key!r}]", (*inside, id(value)))
        if problem is not None:
            return problem
    return None


def _memory_format(flag, recorded, model, x, y, runtime) -> dict:
    if isinstance(flag, bool):
        return {"channels_last": flag, "chosen_by": "--channels-last" if flag else "--no-channels-last"}
    seconds = recorded.get("seconds") if isinstance(recorded, dict) else None
    if isinstance(recorded, dict) and isinstance(recorded.get("channels_last"), bool) \
            and isinstance(recorded.get("chosen_by"), str) \
            and (seconds is None or (isinstance(seconds, dict) and all(
                isinstance(value, (int, float)) and not isinstance(value, bool) for value in seconds.values()))):
        return recorded  # a record that is not valid is measured again
    return measure_memory_format(model, x, y, runtime)


def measure_memory_format(model, x, y, runtime) -> dict:
    """The memory format a run without a flag or a record takes, as recorded in tuning.json."""
    if x.dim() != 4 or not any(p.dim() == 4 for p in model.parameters()):
        return {"channels_last": False, "chosen_by": NOT_A_CONV_NET}
    try:
        seconds = time_memory_formats(model, x, y, runtime)
    except (Exception, SystemExit) as err:  # your own model (--arch MODULE:FACTORY) may not copy or take channels_last
        runtime.set_memory_format(model, False)
        return {"channels_last": False, "chosen_by": f"{CHANNELS_LAST_FAILED} ({raised(err).splitlines()[0]})"}
    return {"channels_last": prefers_channels_last(seconds), "chosen_by": "measurement", "seconds": seconds}


# channels_last must save at least this fraction of the time to be chosen: a closer race is
# within the timing's noise, and contiguous (the usual layout) keeps runs comparable across
# machines where the two are about as fast.
CHANNELS_LAST_MIN_SAVING = 0.1


def prefers_channels_last(seconds: dict) -> bool:
    """Whether the measured seconds per format (time_memory_formats) choose channels_last."""
    return seconds["channels_last"] <= (1 - CHANNELS_LAST_MIN_SAVING) * seconds["contiguous"]


def time_memory_formats(model, x, y, runtime, repeats: int = 3) -> dict:
    """Seconds of one forward plus input gradient of the batch (x, y) through the classifier in
    each memory format: eval mode (no BatchNorm update), the run's precision, the fastest of
    `repeats` taken in turns (devices.best_seconds) on the model and a channels_last copy of it.
    Draws no random numbers; leaves the model contiguous."""

    def forward_and_input_gradient(network, layout):
        inputs = x.detach().requires_grad_(True)
        torch.autograd.grad(cross_entropy(layout.forward(network, inputs), y).sum(), inputs)

    runtime.set_memory_format(model, False)
    with eval_mode(model):
        copy = deepcopy(model)
        runtime_copy = dataclasses.replace(runtime)
        runtime_copy.set_memory_format(copy, True)
        runs = {"contiguous": partial(forward_and_input_gradient, model, runtime),
                "channels_last": partial(forward_and_input_gradient, copy, runtime_copy)}
        return best_seconds(runs, x.device, repeats)


def _read(path: Path):
    """The recorded settings, or None when there are none (or the file is unreadable: then they
    are measured again rather than trusted)."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def mode_line(cfg, tuning: dict, inputs: int, emulated: Optional[str] = None, processes: int = 1) -> str:
    """What `adt-fast train` prints before the first epoch: device, precision, memory format, passes
    (of `inputs` per training step, per process of `processes`); and a second line, WARNING: ...,
    with `emulated` (devices.bf16_emulation_warning) if given."""
    precision = "fp32"
    if cfg.precision == "bf16":
        precision = "bf16 autocast (fp32 weights, op and distribution parameters)"
        if emulated:
            precision += ", EMULATED (SLOW)"
    line = f"mode: {cfg.device}, {precision}, memory format {_describe_memory_format(tuning[MEMORY_FORMAT])}"
    if "samples_per_pass" in tuning:
        per_pass = tuning["samples_per_pass"]
        each = " per process" if processes > 1 else ""
        line += (f", inner loop {cfg.samples} samples x {inputs} inputs{each} in passes of "
                 f"{per_pass} sample{'s' if per_pass != 1 else ''}, chosen by {tuning.get('chosen_by', 'record')}")
    return line + (f"\nWARNING: {emulated}" if emulated else "")


def _describe_memory_format(memory: dict) -> str:
    name = "channels_last" if memory["channels_last"] else "contiguous (NCHW)"
    seconds = memory.get("seconds")
    if memory["chosen_by"] == "measurement" and isinstance(seconds, dict):
        timed = ", ".join(f"{key} {1000 * value:.3g} ms" for key, value in seconds.items())
        return f"{name}, chosen by measurement ({timed} per forward + input gradient)"
    return f"{name}, chosen by {memory['chosen_by']}"
