"""The run's speed settings: measured once per run, recorded in the run directory, reused on resume.

A method's implementation choices that leave its result unchanged (so far: how many of ADT_EXP's
k samples go through the classifier per pass) depend on the device and the model, so they are
measured on the run's first training batch when a run starts, written to ``tuning.json`` and read
back by ``--resume``; a flag (``--samples-per-pass``) overrides the measurement.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..files import write_atomic

TUNING_FILE = "tuning.json"


def load_or_measure(run_dir: Path, method, model, x, y, *, resume: bool, write: bool = True) -> dict:
    """Apply the method's speed settings: a flag's value, else (on resume) the recorded
    measurement, else a fresh one on the batch (x, y); the result is written to run_dir (unless
    not `write`: under torchrun each rank measures for itself, rank 0 alone writes)."""
    path = Path(run_dir) / TUNING_FILE
    recorded = _read(path) if resume else None
    tuning = method.tune(model, x, y, recorded=recorded)
    if tuning and write:
        text = json.dumps(tuning, indent=2, sort_keys=True) + "\n"
        write_atomic(path, lambda handle: handle.write(text), mode="w")
    method.apply_tuning(tuning)
    return tuning


def _read(path: Path):
    """The recorded settings, or None when there are none (or the file is unreadable: then they
    are measured again rather than trusted)."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def mode_line(cfg, tuning: dict) -> str:
    """What `adt-fast train` prints before the first epoch: device, precision, memory format, passes."""
    precision = "bf16 autocast (fp32 weights, op and distribution parameters)" if cfg.precision == "bf16" else "fp32"
    memory = "channels_last" if cfg.channels_last else "contiguous (NCHW)"
    line = f"mode: {cfg.device}, {precision}, memory format {memory}"
    if "samples_per_pass" in tuning:
        per_pass = tuning["samples_per_pass"]
        line += (f", inner loop {cfg.samples} samples x {cfg.batch_size} inputs in passes of "
                 f"{per_pass} sample{'s' if per_pass != 1 else ''}, chosen by {tuning.get('chosen_by', 'record')}")
    return line
