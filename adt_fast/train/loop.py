"""`fit(config)`: the one training loop every method runs in.

Run directory (``config.out``):

    config.json               the resolved config (every default filled in)
    dataset.json              where the data came from: a name, or a path and its content hash
    metrics.jsonl             one JSON line per finished epoch
    checkpoint.pt             the full training state after the last finished epoch (atomic)
    checkpoint_epoch{N}.pt    the same, kept every --save-freq epochs
    model.pt                  the final classifier (model_config + weights), written at the end;
                              a resume that trains further removes it first, so that the run
                              directory always means its newest model (checkpoint.resolve)
    tensorboard/              TensorBoard scalars, when tensorboard is installed

Rank 0 holds a lock on the run directory from its first write to the end (``claim_run_dir``):
one process trains a run directory at a time.

Resume restores the classifier, every optimiser and scheduler (the method's too), the epoch, the
history and the random states (torch's CPU and CUDA generators and the data-order generator), all
saved at the end of an epoch, so on CPU a resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import re
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import nn

from .. import data as datasets
from .. import distributed
from ..attacks.engine import classified, eval_mode
from ..attacks.inputs import check_batch_form
from ..checks import check_int
from ..devices import bf16_emulation_warning, is_out_of_memory
from ..distributed import BatchShard, World
from ..files import (ATOMIC_LEFTOVER, FolderBusy, check_path, lock_folder, os_error_text, remove_atomic_leftovers,
                     shell_path, unwritable_reason, write_atomic)
from ..models import ExternalModelError, build_classifier, classifier_config, is_factory_spec
from ..models.external import check_classes, check_trainable, moved_to, probe_classes, raised
from . import checkpoint as ckpt
from . import runlog, tuning
from .config import CONFIG_FILE, ConfigError, TrainConfig, resume_config, resume_differences
from .methods import Method, Runtime, build_method, needs_two_examples
from .parallel import DataParallel

SNAPSHOT = "checkpoint_epoch{epoch}.pt"
SNAPSHOT_NAME = re.compile(r"checkpoint_epoch([0-9]+)\.pt")
JOB_FILE = "torchrun_job.json"  # which torchrun job last started or resumed the run
EVAL_BATCH_SIZE = 500
PROGRESS_EVERY = 10
# Methods without clean logits of their own measure train accuracy on every TRAIN_ACC_EVERY-th
# batch (one eval-mode forward there), unless --exact-train-acc asks for every batch.
TRAIN_ACC_EVERY = 10


@dataclasses.dataclass
class Trainer:
    """Everything a run holds in memory; built fresh for a new run and for a resume alike."""

    config: TrainConfig
    run_dir: Path
    model: nn.Module
    method: Method
    optimisers: dict
    schedulers: dict
    data_generator: torch.Generator
    train_data: tuple
    test_data: tuple
    augment: str
    epoch: int = 0
    history: list = dataclasses.field(default_factory=list)
    world: World = World()
    parallel: Optional[DataParallel] = None
    test_chunk: int = EVAL_BATCH_SIZE  # examples a test forward; halved for good on running out of memory

    # -------------------------------------------------------------------------------- state
    def state(self) -> dict:
        """The full training state: weights-only types, so it loads with weights_only=True."""
        return {
            **self.final_payload(),
            "modules": {name: module.state_dict() for name, module in self.method.modules().items()},
            "optimisers": {name: opt.state_dict() for name, opt in self.optimisers.items()},
            "schedulers": {name: sched.state_dict() for name, sched in self.schedulers.items()},
            "method_state": self.method.extra_state(),
            "rng": ckpt.capture_rng({"data": self.data_generator}, self._cuda_device()),
        }

    def load_state(self, payload: dict, source: Path, data_moved_from: Optional[str] = None) -> None:
        """``data_moved_from``: the path the run recorded for its data, now elsewhere with the
        same content (`_data_moved_to`); the checkpoint names that path."""
        def refuse(why: str):
            return ckpt.CheckpointError(f"cannot resume from {source}: {why}")

        modules = self.method.modules()
        if payload.get("method") != self.config.method:
            raise refuse(f"it was written by method {payload.get('method')!r}, not {self.config.method!r}")
        # A checkpoint.pt copied in from another run of the method would go on as this one.
        try:
            recorded = TrainConfig.from_record(payload["config"]).to_dict()
        except (KeyError, TypeError, ValueError) as err:
            raise refuse(f"the run config it records cannot be read ({err})") from None
        if data_moved_from is not None and recorded["dataset"] == data_moved_from:
            recorded["dataset"] = self.config.dataset
        # Either file may be the odd one: config.json edited by hand, or a checkpoint copied in.
        differ = resume_differences(recorded, self.config.to_dict(), whose=f"{CONFIG_FILE} has")
        if differ:
            raise refuse(f"the run settings it records and {source.parent / CONFIG_FILE} disagree: "
                         f"{'; '.join(differ.values())}. If you edited {CONFIG_FILE}, restore it (the checkpoint "
                         f"holds what the run trained with); if {source.name} came from another run, put this "
                         f"run's own back (or copy its newest snapshot, checkpoint_epoch{{N}}.pt, over it)")
        if not any(kind in payload for kind in ("modules", "optimisers", "schedulers", "rng")):  # model.pt's keys only
            raise refuse(f"it holds a final model ({ckpt.FINAL_MODEL}'s content: the classifier's weights) without the "
                         f"training state a resume needs (optimisers, schedules, random states); "
                         f"{_without_checkpoint(source.parent)}")
        for kind, ours in (("modules", modules), ("optimisers", self.optimisers),
                           ("schedulers", self.schedulers)):
            theirs = payload.get(kind)
            if not isinstance(theirs, dict) or set(theirs) != set(ours):
                raise refuse(f"it holds {kind} {sorted(theirs) if isinstance(theirs, dict) else theirs!r}, "
                             f"this run has {sorted(ours)}")
        try:
            ckpt.load_state_into(self.model, payload["model"], "the classifier")
            for name, module in modules.items():
                ckpt.load_state_into(module, payload["modules"][name], f"the {name} network")
            for name, opt in self.optimisers.items():
                opt.load_state_dict(payload["optimisers"][name])
            for name, sched in self.schedulers.items():
                ckpt.load_schedule(sched, payload["schedulers"][name], name)
            ckpt.load_method_state(self.method, payload.get("method_state", {}))
            self.epoch, self.history = ckpt.training_progress(payload)
            # Last: building the model and method above consumed random numbers.
            ckpt.restore_rng(payload.get("rng"), {"data": self.data_generator}, self._cuda_device())
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise ckpt.CheckpointError(f"cannot resume from {source}: {err}") from None

    def _cuda_device(self) -> Optional[int]:
        """The GPU whose random stream is the run's (every rank's stream is the same)."""
        device = self.train_data[0].device
        return device.index if device.type == "cuda" else None

    def final_payload(self) -> dict:
        """What model.pt holds; the config is the run's, as config.json records it."""
        return {"model_config": classifier_config(self.model), "model": self.model.state_dict(),
                "method": self.config.method, "config": run_record(self.config).to_dict(), "epoch": self.epoch,
                "history": list(self.history)}

    # -------------------------------------------------------------------------------- epochs
    def train_epoch(self) -> dict:
        cfg = self.config
        x, y = self.train_data
        batches = datasets.iterate_batches(x, y, cfg.batch_size, shuffle=True,
                                           generator=self.data_generator, augment=self.augment)
        total = len(batches) if cfg.max_batches is None else min(len(batches), cfg.max_batches)
        self.model.train()
        for module in self.method.modules().values():
            module.train()
        lr = self.optimisers["model"].param_groups[0]["lr"]
        device = x.device
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen, counted = 0, 0
        start = time.perf_counter()
        bar = runlog.progress_bar(total, f"epoch {self.epoch + 1}/{cfg.epochs}", show=self.world.main)
        step = None if self.parallel is None else self.parallel.step
        try:
            for index, (xb, yb) in enumerate(itertools.islice(batches, total)):
                if self.parallel is not None:
                    xb, yb = self.parallel.split(xb, yb)
                measure = cfg.exact_train_acc or index % TRAIN_ACC_EVERY == 0
                out = self.method.train_step(self.model, xb, yb, self.optimisers, measure_accuracy=measure,
                                             step=step)
                with torch.no_grad():
                    loss_sum += out.loss.detach().float() * yb.shape[0]
                    if out.clean_logits is not None:
                        correct += classified(out.clean_logits, yb).sum()
                        counted += yb.shape[0]
                seen += yb.shape[0]
                bar.update(1)
                if not bar.disable and (index % PROGRESS_EVERY == 0 or index + 1 == total):
                    bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}",
                                    acc=f"{correct.item() / max(counted, 1):.3f}", refresh=False)
        finally:
            bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        for sched in self.schedulers.values():
            sched.step()
        # Over every rank's share; then rank 0's BatchNorm statistics everywhere (they differ
        # between ranks without --sync-bn), so testing and the checkpoint see one model.
        loss_total, correct_total, seen, counted = self.world.sum(
            [loss_sum.item(), correct.item(), seen, counted], device)
        for module in (self.model, *self.method.modules().values()):
            self.world.broadcast_buffers(module)
        return {"epoch": self.epoch + 1, "train_loss": loss_total / max(seen, 1),
                "train_acc": correct_total / max(counted, 1), "lr": lr, "seconds": seconds}

    def tune(self) -> dict:
        """Settle the speed settings (memory format, then the method's; see tuning.py), then, in
        a world of several processes, wrap the training step in DDP, whose gradient buckets take
        the parameters' final layout. Measured on one rank's share of a batch, what each step runs."""
        cfg, (x, y) = self.config, self.train_data
        share = self.step_inputs
        chosen = tuning.load_or_measure(self.run_dir, self.method, self.model, x[:share], y[:share],
                                        channels_last=cfg.channels_last, resume=cfg.resume, world=self.world)
        if self.world.parallel:
            # Your own model may hold parameters its forward does not use (DDP must then look for them).
            self.parallel = DataParallel(self.method, self.model, self.world, x.device,
                                         find_unused_parameters=is_factory_spec(cfg.arch))
        return chosen

    @property
    def step_inputs(self) -> int:
        """Rank 0's inputs in a training step: its share of a batch, which the data may make
        smaller than --batch-size."""
        shard = BatchShard.of(min(self.config.batch_size, len(self.train_data[1])), self.world)
        return shard.stop - shard.start

    def test_accuracy(self) -> float:
        accuracy, self.test_chunk = _clean_accuracy(self.model, *self.test_data, self.method.runtime,
                                                    EVAL_BATCH_SIZE, self.config.max_batches, self.world,
                                                    self.test_chunk)
        return accuracy


def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, runtime: Optional[Runtime] = None,
                   batch_size: int = EVAL_BATCH_SIZE, max_batches: Optional[int] = None,
                   world: World = World()) -> float:
    """Accuracy on clean inputs, classifier in eval mode (its mode is restored afterwards).

    Under data parallelism each rank tests its round-robin share of the batches. A batch that runs
    out of memory is tested in halves instead (down to one example): the test pass comes after an
    epoch's training, and a fixed batch that training's smaller one fits beside (large images)
    must not cost that epoch. The halves count the same examples, so the accuracy is unchanged.
    The batch is checked as the attacks check theirs, but for their [0, 1] range (check_batch_form):
    a classifier of normalised inputs has a clean accuracy. torch's errors name no argument, and
    float labels, an empty x or too few batches would score 0.0 silently."""
    y = check_batch_form(x, y)
    batch_size = check_int(batch_size, "batch_size")
    if max_batches is not None:
        max_batches = check_int(max_batches, "max_batches")
    return _clean_accuracy(model, x, y, runtime, batch_size, max_batches, world, batch_size)[0]


def _clean_accuracy(model, x, y, runtime, batch_size, max_batches, world, chunk) -> tuple:
    """clean_accuracy, trying `chunk` examples a forward first; also returns the chunk that fitted,
    which a trainer passes to its next test pass (one out-of-memory error a run, not one an epoch)."""
    runtime = runtime or Runtime(device=x.device)
    correct, seen = torch.zeros((), dtype=torch.int64, device=x.device), 0
    begins = list(range(0, x.shape[0], batch_size))[:max_batches]
    with eval_mode(model), torch.no_grad():
        for begin in world.share(begins):
            end = min(begin + batch_size, x.shape[0])
            while begin < end:
                stop = min(begin + chunk, end)
                try:
                    correct += classified(runtime.forward(model, x[begin:stop]), y[begin:stop]).sum()
                except RuntimeError as err:
                    if stop - begin == 1 or not is_out_of_memory(err):
                        raise
                else:
                    seen += stop - begin
                    begin = stop
                    continue
                chunk = _halved_after_oom(stop - begin, x.device)
    correct_total, seen = world.sum([correct.item(), seen], x.device)
    return correct_total / max(seen, 1), chunk


def _halved_after_oom(chunk: int, device: torch.device) -> int:
    """Called once the failed batch's handler has ended (its traceback held the batch's tensors
    until then): release them to the device and say what the test pass goes on with."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    warnings.warn(f"the test pass ran out of memory on {chunk} examples a batch; it goes on with "
                  f"{chunk // 2}", RuntimeWarning, stacklevel=3)
    return chunk // 2


# ------------------------------------------------------------------------------------------------
def prepare_run_dir(config: TrainConfig, dataset: Optional[datasets.DatasetInfo] = None,
                    saved: Optional[TrainConfig] = None) -> TrainConfig:
    """Resolve the config against the run directory: refuse to overwrite, check resume conflicts
    and that the run directory can be written.

    Writes nothing: the run directory is written only once the data, model and checkpoint are
    loaded (`start_run`), so a run that fails to start leaves nothing behind to block a retry.
    ``dataset`` is the info of data already opened (your own data; see ``TrainConfig.resolve``);
    ``saved``: the run's config as the resume reads it (its data's path updated if they moved), by
    default config.json's.
    """
    run_dir = Path(config.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} exists and is not a directory")
    config_path = run_dir / CONFIG_FILE
    if config.resume:
        if not config_path.is_file():
            raise ConfigError(f"--resume: {run_dir} holds no {CONFIG_FILE}, so there is no run to resume "
                              f"(drop --resume to start a new run there)")
        _check_starting_over_loses_nothing(run_dir)
        conflicts = config.conflicts(saved if saved is not None else TrainConfig.load(run_dir), dataset)
        if conflicts:
            raise ConfigError(f"--resume: these settings differ from {config_path}:\n  "
                              + "\n  ".join(conflicts)
                              + "\nresume with the run's own settings (omit these flags) or start a "
                                "new run in another --out directory")
    elif run_dir.is_dir():
        _check_free_for_a_new_run(run_dir)
    cfg = config.resolve(dataset)
    unwritable = unwritable_reason(run_dir)
    if unwritable is not None:
        raise ConfigError(f"--out {run_dir}: cannot write the run there ({unwritable})")
    return cfg


def _check_free_for_a_new_run(run_dir: Path) -> None:
    """A new run starts only in an empty directory (see _blocking_entries); --resume is suggested
    only where there is a run to resume."""
    blocking = _blocking_entries(run_dir)
    if not blocking:
        return
    restart = (" (torchrun restarted this job, which resumes only a run that it started itself: "
               "docs/distributed.md)") if _restarted() else ""
    if CONFIG_FILE in blocking:
        raise ConfigError(f"--out {run_dir} is not empty; it holds a run ({CONFIG_FILE}): pass --resume to "
                          f"continue it, or choose a new directory (nothing is ever overwritten){restart}")
    shown = ", ".join(blocking[:3]) + (f" and {len(blocking) - 3} more" if len(blocking) > 3 else "")
    raise ConfigError(f"--out {run_dir} is not empty; it holds other files ({shown}) and no run to resume "
                      f"(no {CONFIG_FILE}): choose a new or empty directory (nothing is ever "
                      f"overwritten){restart}")


def _check_starting_over_loses_nothing(run_dir: Path) -> None:
    """A resume without checkpoint.pt starts the run again from epoch 1, which is right only for a
    run killed before its first checkpoint. model.pt, a metrics line or a snapshot past epoch 1
    (written after a checkpoint.pt) show that one existed and went: starting over would overwrite
    them and leave a stale model.pt. The first epoch's snapshot alone is a kill between it and
    the first checkpoint.pt, and starting over writes it again."""
    if (run_dir / ckpt.LATEST).is_file():
        return
    found = [ckpt.FINAL_MODEL] if (run_dir / ckpt.FINAL_MODEL).is_file() else []
    later = [name for epoch, name, _ in _snapshots(run_dir) if epoch > 1]
    if later:
        found.append(later[0] if len(later) == 1 else f"{len(later)} snapshots up to {later[-1]}")
    metrics = run_dir / runlog.METRICS_FILE
    lines = sum(1 for line in metrics.read_bytes().splitlines() if line.strip()) if metrics.is_file() else 0
    if lines:
        found.append(f"{runlog.METRICS_FILE} with {lines} epoch(s)")
    if not found:
        return
    raise ConfigError(f"--resume: {run_dir} holds no {ckpt.LATEST} but {', '.join(found)}: the run trained, and "
                      f"starting it again from epoch 1 would overwrite them; {_without_checkpoint(run_dir)}")


def _without_checkpoint(run_dir: Path) -> str:
    """What a run whose checkpoint.pt is gone or unreadable can still do."""
    readable = [name for _, name, held in _snapshots(run_dir) if held]
    if not readable:
        return "start a new run in another --out"
    latest, newest = run_dir / ckpt.LATEST, run_dir / readable[-1]
    return f"to go on from the newest snapshot, copy it: cp {shell_path(newest)} {shell_path(latest)}"


def _snapshots(run_dir: Path) -> list:
    """The run's snapshots (checkpoint_epoch{N}.pt) as (epoch, name, held), in order of epoch: the
    epoch the file holds (held, read cheaply: ckpt.held_epoch), since a renamed or copied snapshot's
    name may say another; else, for a file that cannot be read so, its name's N."""
    found = []
    for entry in run_dir.iterdir():
        match = SNAPSHOT_NAME.fullmatch(entry.name)
        if match and entry.is_file():
            epoch = ckpt.held_epoch(entry)
            found.append((int(match.group(1)) if epoch is None else epoch, entry.name, epoch is not None))
    return sorted(found)


def check_resumable(cfg: TrainConfig, done: int) -> None:
    """A resume may extend a run, never record fewer epochs than its checkpoint holds."""
    if cfg.epochs < done:
        raise ConfigError(f"--epochs {cfg.epochs}: {cfg.out} has already trained {done} epochs; "
                          f"to train longer pass --epochs N with N > {done} (omit --epochs to keep "
                          f"the run's own length)")


@contextlib.contextmanager
def _writing(run_dir: Path, started: bool = False):
    """A place that refuses the run's writes (a full disk, a file size limit) is a one-line
    ConfigError naming --out, not a traceback; once the run has `started`, it also says what the
    run kept (every write is atomic, so the last checkpoint is whole) and how to go on."""
    try:
        yield
    except OSError as err:
        note = _how_to_go_on(run_dir) if started else None
        raise ConfigError(f"--out {run_dir}: cannot write the run there ({os_error_text(err)})"
                          + (f"; {note}" if note else "")) from None


def run_record(cfg: TrainConfig) -> TrainConfig:
    """The run's config as config.json and the checkpoints record it, not this invocation's: resume
    false, and under torchrun the run's device `cuda`, not this rank's cuda:N."""
    return dataclasses.replace(cfg, resume=False, device=distributed.run_device(cfg.device))


def start_run(cfg: TrainConfig, history: list, source: dict) -> None:
    """The run's first writes: under torchrun the job that starts it (first, so that a restart
    after a kill at any later point knows the directory is its own), config.json (run_record: the
    run, not this invocation), dataset.json (where the data came from) and
    metrics.jsonl."""
    run_dir = Path(cfg.out)
    with _writing(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        job = distributed.job_id()
        if job is not None:
            write_atomic(run_dir / JOB_FILE, lambda handle: handle.write(json.dumps({"job": job}) + "\n"), mode="w")
        text = run_record(cfg).to_json()
        write_atomic(run_dir / CONFIG_FILE, lambda handle: handle.write(text), mode="w")
        record = json.dumps(source, indent=2, sort_keys=True) + "\n"
        write_atomic(run_dir / datasets.SOURCE_FILE, lambda handle: handle.write(record), mode="w")
        runlog.write_metrics(run_dir, history)


def clear_for_resume(run_dir: Path, trains_on: bool) -> None:
    """What a resume removes before it trains, and says so: temporary files of writes that a kill
    cut short, and, when it trains further from a checkpoint (`trains_on`), model.pt.
    checkpoint.pt holds model.pt's weights and, from the next epoch on, newer ones; left in
    place, the old model.pt is what eval --checkpoint RUN_DIR and load_model(RUN_DIR) would read
    after an interrupt."""
    final = run_dir / ckpt.FINAL_MODEL
    with _writing(run_dir):
        leftovers = remove_atomic_leftovers(run_dir)
        retire = trains_on and final.is_file()
        if retire:
            final.unlink()
    if leftovers:
        runlog.say(f"removed {len(leftovers)} temporary file(s) of writes the interrupted run did not "
                   f"finish: {', '.join(leftovers)}")
    if retire:
        runlog.say(f"removed {final}, written when the run last ended: until this run ends, "
                   f"{run_dir / ckpt.LATEST} holds the newest model (what eval --checkpoint "
                   f"{shell_path(run_dir)} reads)")


def _how_to_go_on(run_dir: Path) -> Optional[str]:
    """What a run cut short kept, and the command that goes on from it (None: nothing was written)."""
    resume = f"adt-fast train --resume --out {shell_path(run_dir)}"
    if (run_dir / ckpt.LATEST).is_file():
        return f"{run_dir / ckpt.LATEST} (the last completed epoch) is intact; continue with: {resume}"
    if (run_dir / CONFIG_FILE).is_file():
        return f"there is no checkpoint yet; {resume} starts it again from epoch 1"
    return None


def interrupted_message(run_dir: Path, stopped: str = "interrupted") -> str:
    """What an interrupt left behind, and how to go on from it; `stopped` says what stopped the run."""
    note = _how_to_go_on(run_dir)
    if (run_dir / ckpt.LATEST).is_file():
        return f"{stopped}: {note}"
    if note is not None:
        return f"{stopped} before the first epoch finished, so {note}"
    return f"{stopped} before the run started; nothing was written"


def open_data(config: TrainConfig, data: Optional[tuple] = None) -> Optional[datasets.LoadedDataset]:
    """Your own data, opened and validated before the flags are resolved (its image size sets the
    default arch); None for a named dataset, which is loaded once the flags check out."""
    try:
        if data is not None:
            if config.image_size is not None:
                raise datasets.DatasetSpecError("image_size resizes an image folder; it does not apply to data=")
            if not isinstance(data, (tuple, list)) or len(data) != 4:
                raise datasets.DatasetSpecError("data must be the tuple (x_train, y_train, x_test, y_test)")
            if config.dataset in datasets.DATASETS:
                raise datasets.DatasetSpecError(
                    f"with data=, TrainConfig.dataset only names your arrays, and {config.dataset!r} is a built-in "
                    f"dataset: its defaults (epochs) and eval --dataset {config.dataset} would take that dataset "
                    f"instead; choose another name")
            return datasets.from_arrays(*data, name=str(config.dataset))
        if config.resume and _trained_on_arrays(Path(config.out)):
            raise datasets.DatasetSpecError(
                f"--resume: {config.out} was trained on arrays in memory, which cannot be found again; resume it "
                f"from Python with the same arrays: fit(dataclasses.replace(TrainConfig.load(run), resume=True), "
                f"data=(x_train, y_train, x_test, y_test))")
        if config.dataset in datasets.DATASETS:
            return None
        return datasets.open_dataset(config.dataset, data_dir=config.data_dir, download=config.download,
                                     image_size=config.image_size)
    except datasets.DatasetSpecError as err:
        raise ConfigError(str(err)) from None


def _trained_on_arrays(run_dir: Path) -> bool:
    try:
        record = datasets.read_source(run_dir)
    except datasets.DatasetFileError:
        return False  # the resume reports the unreadable record itself
    return record is not None and record.get("kind") == "arrays"


def _data_moved_to(run_dir: Path, saved: TrainConfig, asked: dict) -> Optional[str]:
    """A resume of a run trained on your own files that are now elsewhere: their new absolute
    path, when --dataset gives another path or the recorded one now leads elsewhere (a link
    re-pointed); else None. Files are known by content, not by path: `_check_same_data` then
    refuses them unless their hash is the one in the run's dataset.json."""
    try:
        record = datasets.read_source(run_dir)
    except datasets.DatasetFileError:
        return None  # _check_same_data reports the unreadable record
    if record is None or record.get("kind") not in ("npz", "image-folder") or record.get("path") != saved.dataset:
        return None  # a named dataset, arrays, or a run from before dataset.json: the path is its identity
    given = asked.get("dataset")  # the command passes the recorded path when --dataset is not given
    spec = saved.dataset if given is None else str(given)
    if spec in datasets.DATASETS:
        return None  # a named dataset for a run on files: a conflict, reported as such
    path = Path(spec).expanduser()
    if not path.exists():
        if spec == saved.dataset:
            raise ConfigError(f"--resume: the data the run was trained on, {saved.dataset}, is not there any "
                              f"more; if you moved it, give its new path with --dataset (its content is checked "
                              f"against the hash in {run_dir / datasets.SOURCE_FILE})")
        return None  # open_data names the missing --dataset
    now = str(path.resolve())
    return now if now != saved.dataset else None


def _check_recorded_data_dir(config: TrainConfig, saved: TrainConfig) -> None:
    """A resume reads its dataset's files from the folder the run recorded (--data-dir) unless
    given another. Runs made before it was recorded as an absolute path recorded it as typed,
    relative to the folder they were started in, and resume from there as before; from elsewhere,
    or where the folder has gone, the refusal names --data-dir, which a resume may change
    (--download, which would create the folder, lets it pass)."""
    data_dir = config.data_dir
    if (data_dir is None or data_dir != saved.data_dir or config.download or config.dataset not in
            datasets.fetch.RESOURCES or Path(data_dir).expanduser().is_dir()):
        return
    relative = ("" if Path(data_dir).expanduser().is_absolute()
                else f" here ({Path.cwd()}; the run recorded it relative to the folder it was started in)")
    raise ConfigError(f"--resume: the folder of the {config.dataset} files that the run recorded, --data-dir "
                      f"{data_dir} in {Path(config.out) / CONFIG_FILE}, does not exist{relative}; pass --data-dir "
                      f"with the folder that holds them now")


def _check_same_data(run_dir: Path, dataset: datasets.LoadedDataset) -> None:
    """--resume: the data must be the data the run started on (its recorded content hash)."""
    record = datasets.read_source(run_dir)
    if record is not None:
        datasets.check_source(dataset, record)


def _announce(config: TrainConfig, cfg: TrainConfig, dataset: datasets.LoadedDataset) -> None:
    """The log lines about the data: its layout and the defaults it implied."""
    for note in dataset.notes:
        runlog.say(note)
    if dataset.source["kind"] == "named":
        return
    if config.epsilon is None and cfg.epsilon is not None:  # a clean method has no budget
        runlog.say(f"--epsilon not given: {cfg.epsilon:.6g} (8/255, the default for your own data; "
                   f"set --epsilon for your data's scale)")
    if config.arch is None:
        runlog.say(f"--arch not given: {cfg.arch} (images of {dataset.info.image_size} px; small-cnn "
                   f"below {datasets.CUSTOM_SMALL_IMAGE}, resnet18 from there)")


def build_trainer(cfg: TrainConfig, dataset: datasets.LoadedDataset, world: Optional[World] = None) -> Trainer:
    """Data on the device, classifier, method, optimisers and schedules, seeded from cfg.seed.

    cfg.sync_bn left at None resolves here (on when the networks have BatchNorm). In a world of
    several processes (default: the initialised process group's): the global batch must split
    evenly and BatchNorm is synchronised when cfg.sync_bn; DDP wraps the training step once the
    memory format is settled (``Trainer.tune``). A network whose BatchNorm would see a single
    value per channel refuses a batch size that leaves a training batch of one example (one per
    process). The classifier starts in contiguous NCHW.
    """
    world = world or distributed.current()
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    data_generator = torch.Generator(device=device)
    data_generator.manual_seed(cfg.seed)
    info = dataset.info
    (train_x, train_y), (test_x, test_y) = dataset.train, dataset.test
    model = _classifier(cfg, info, device)
    runtime = Runtime(device=device, precision=cfg.precision, backend=cfg.backend)
    method = build_method(cfg, model, runtime)
    sgd = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    # lr_drop holds 1-based epochs; the scheduler counts finished epochs.
    schedule = torch.optim.lr_scheduler.MultiStepLR(sgd, milestones=[e - 1 for e in cfg.lr_drop],
                                                    gamma=cfg.lr_gamma)
    optimisers, schedulers = {"model": sgd}, {"model": schedule}
    for kind, ours, theirs in (("optimisers", optimisers, method.optimisers()),
                               ("schedulers", schedulers, method.schedulers())):
        if "model" in theirs:
            raise ValueError(f"method {cfg.method} names one of its {kind} 'model', which is the classifier's")
        ours.update(theirs)
    networks = (model, *method.modules().values())
    has_bn = distributed.has_batchnorm(*networks)
    if cfg.sync_bn and not has_bn:
        raise ConfigError(f"--sync-bn: neither the classifier ({cfg.arch}) nor the method's networks have "
                          f"BatchNorm layers, so there is nothing to synchronise; drop the flag")
    cfg.sync_bn = has_bn if cfg.sync_bn is None else cfg.sync_bn
    if world.parallel:
        _check_world_batches(cfg, len(train_y), world)
    one_example = train_x[:1].to(device)
    try:
        cramped = [f"the classifier ({cfg.arch})"] if needs_two_examples(model, one_example) else []
    except (Exception, SystemExit) as err:  # only your own model can fail here (the built-in ones take any batch)
        if not is_factory_spec(cfg.arch):
            raise
        raise ConfigError(f"--arch {cfg.arch}: the model fails on a batch of one example: {raised(err)}") from None
    _check_two_examples(cfg, len(train_y), world, cramped + method.networks_needing_two_examples(one_example))
    if world.parallel and cfg.sync_bn:
        for network in networks:
            distributed.convert_sync_batchnorm(network, device)
    return Trainer(config=cfg, run_dir=Path(cfg.out), model=model, method=method, optimisers=optimisers,
                   schedulers=schedulers, data_generator=data_generator,
                   train_data=(train_x.to(device), train_y.to(device)),
                   test_data=(test_x.to(device), test_y.to(device)), augment=info.augment,
                   world=world)


def _classifier(cfg: TrainConfig, info: datasets.DatasetInfo, device: torch.device) -> nn.Module:
    """The classifier to train, on the device; one a factory builds (--arch MODULE:FACTORY) must
    train on the data as the methods run it, which is checked before the run directory is touched."""
    if not is_factory_spec(cfg.arch):
        return build_classifier(cfg.arch, info.num_classes, in_channels=info.channels,
                                image_size=info.image_size).to(device)
    try:
        model = build_classifier(cfg.arch, info.num_classes, in_channels=info.channels, image_size=info.image_size)
        model = moved_to(model, device)
        check_classes(probe_classes(model, info.channels, info.image_size, device, info.name), info.num_classes,
                      info.name)
        check_trainable(model, info.channels, info.image_size, device, info.num_classes)
    except ExternalModelError as err:
        raise ConfigError(f"--arch {cfg.arch}: {err}") from None
    return model


def _last_batch(cfg: TrainConfig, num_train: int) -> int:
    """The size of the smaller batch that ends each epoch, or 0 when there is none (the batch size
    divides the training set) or --max-batches stops the epoch before it."""
    batches, last = divmod(num_train, cfg.batch_size)
    reached = cfg.max_batches is None or cfg.max_batches > batches
    return last if reached else 0


def _unreached_settings(cfg: TrainConfig) -> list:
    """The settings that do nothing in this run because it ends first, one line each naming the
    flag: an --lr-drop epoch past --epochs, an --lr-gamma without a drop, a --save-freq past
    --epochs. Warned about, not refused: a --resume with more --epochs reaches the drop and the
    snapshots (a --save-freq at its default says nothing: short runs are common)."""
    lines, given = [], cfg.given()
    past = [epoch for epoch in cfg.lr_drop if epoch > cfg.epochs]
    if past:
        lines.append(f"--lr-drop {' '.join(map(str, past))}: past the run's last epoch (--epochs {cfg.epochs}), so "
                     f"the lr does not drop there; a --resume with --epochs {past[0]} or more reaches it")
    if not cfg.lr_drop and "lr_gamma" in given:
        lines.append(f"--lr-gamma {cfg.lr_gamma:g}: the run has no --lr-drop epoch, so the lr never changes")
    if cfg.save_freq > cfg.epochs and "save_freq" in given:
        lines.append(f"--save-freq {cfg.save_freq}: past the run's last epoch (--epochs {cfg.epochs}), so no "
                     f"{SNAPSHOT.format(epoch='{N}')} is kept; a --resume with --epochs {cfg.save_freq} or more "
                     f"keeps them")
    return lines


def _check_world_batches(cfg: TrainConfig, num_train: int, world: World) -> None:
    """--batch-size is global: it must split evenly, and so must reach every rank at the epoch's end.
    A resume keeps the run's, which its command line need not name: the message says whose it is,
    and that another number of processes is what a resume can change."""
    batch = f"--batch-size {cfg.batch_size}" + (" (the run's, which a resume keeps)" if cfg.resume else "")
    if cfg.batch_size % world.size:
        fix = f"; resume with a number of processes that divides {cfg.batch_size}" if cfg.resume else ""
        raise ConfigError(f"{batch} is the global batch and must be divisible by the number of processes "
                          f"({world.size}); each would train on {cfg.batch_size / world.size:g} examples{fix}")
    last = _last_batch(cfg, num_train)
    if 0 < last < world.size:
        fix = (f"resume with a number of processes that divides {cfg.batch_size} and is at most {last}" if cfg.resume
               else f"choose a batch size that leaves no remainder or one of at least {world.size}")
        raise ConfigError(f"{batch}: the last batch of each epoch holds {last} of the {num_train} training "
                          f"examples, fewer than the {world.size} processes; {fix}")


def _check_two_examples(cfg: TrainConfig, num_train: int, world: World, networks: list) -> None:
    """Networks whose BatchNorm sees one value per channel per example (see needs_two_examples)
    need two examples in every training batch of every process; BatchNorm synchronised over
    several processes counts the global batch, which holds one per process at least."""
    if not networks or (world.parallel and cfg.sync_bn):
        return
    per_process = " per process" if world.parallel else ""
    need = (f"and the BatchNorm layers of {' and '.join(networks)} need at least 2 examples{per_process} "
            f"in training (their features end at 1x1)")
    if cfg.batch_size // world.size < 2:
        raise ConfigError(f"--batch-size {cfg.batch_size}: every training batch would hold one "
                          f"example{per_process}, {need}; choose --batch-size {2 * world.size} or more")
    last = _last_batch(cfg, num_train)
    if 0 < last // world.size < 2:
        shares = f" ({last // world.size} per process)" if world.parallel else ""
        raise ConfigError(f"--batch-size {cfg.batch_size}: the last batch of each epoch would hold {last} "
                          f"of the {num_train} training examples{shares}, {need}; choose a batch size "
                          f"that divides {num_train} or leaves a last batch of at least {2 * world.size}")


def eval_command(run_dir: Path, source: dict, epsilon: Optional[float] = None,
                 dataset_epsilon: Optional[float] = None, arch: Optional[str] = None,
                 data_dir: Optional[str] = None) -> str:
    """How to evaluate the run; eval finds your own files from dataset.json by itself. eval's
    budget defaults to the dataset's, so a run trained at another `epsilon` names its own; a
    classifier built by a factory (`arch`) is loaded only with its factory named; a named
    dataset read from the run's `data_dir` is read from there."""
    factory = f" --model {shlex.quote(arch)}" if arch is not None and is_factory_spec(arch) else ""
    dataset = {"named": f" --dataset {source.get('name')}", "arrays": " --dataset DATA"}.get(source["kind"], "")
    if data_dir is not None and source["kind"] == "named":
        dataset += f" --data-dir {shell_path(data_dir)}"
    budget = f" --epsilon {_budget_text(epsilon)}" if epsilon is not None and epsilon != dataset_epsilon else ""
    return (f"adt-fast eval --checkpoint {shell_path(run_dir)}{factory}{dataset}{budget} "
            f"--out {shell_path(run_dir / 'report.json')}")


def _budget_text(epsilon: float) -> str:
    """A budget as eval's --epsilon reads it back exactly: k/255 when it is one, else the float's repr."""
    k = round(epsilon * 255)
    return f"{k}/255" if k and k / 255 == epsilon else repr(epsilon)


def fit(config: TrainConfig, data: Optional[tuple] = None, *, given: Optional[Iterable[str]] = None) -> Path:
    """Train (or, with config.resume, continue) a run; returns the run directory.

    ``data=(x_train, y_train, x_test, y_test)`` trains on arrays in memory (tensors or numpy;
    ``config.dataset`` then only names them); otherwise ``config.dataset`` is a dataset name, an
    .npz file or an image folder.

    On resume the settings not given come from the run's config.json, as unset flags do for the
    command: a field of ``config`` left at its default is not given (``TrainConfig.given``), so it
    never conflicts with the run. ``given``: names of fields that count as given even at their
    default values (the command passes its flags: ``--save-freq 25``, ``--max-batches all``).

    Everything is checked before the run directory is touched (settings, device, backend, run
    directory, data, and on resume the checkpoint): ConfigError for bad settings, a run directory
    that conflicts with them or cannot be written, CheckpointError for a checkpoint that cannot
    be read safely, DatasetFileError for invalid data (or data that changed under a resume).
    """
    _check_out(config.out)
    try:  # the launcher's environment, before any work (eval's plan reads it first too)
        distributed.check_timeout()
    except distributed.DistributedError as err:
        raise ConfigError(str(err)) from None
    given = _field_names(given)
    if not config.resume and _started_by_this_job(Path(config.out)) and _restarted():
        # torchrun restarted the group after a failure (on any node): continue from the last checkpoint.
        config = dataclasses.replace(config, resume=True)
    saved = moved_from = None
    if config.resume and (Path(config.out) / CONFIG_FILE).is_file():  # else prepare_run_dir says there is no run
        asked = {**config.given(), **{name: getattr(config, name) for name in given}}
        saved = TrainConfig.load(config.out)
        moved_to_path = None if data is not None else _data_moved_to(Path(config.out), saved, asked)
        if moved_to_path is not None:
            moved_from, saved = saved.dataset, dataclasses.replace(saved, dataset=moved_to_path)
        config = resume_config(saved, asked)
        _check_recorded_data_dir(config, saved)
    dataset = open_data(config, data)
    cfg = prepare_run_dir(config, dataset.info if dataset is not None else None, saved)
    if dataset is None:
        dataset = datasets.open_dataset(cfg.dataset, data_dir=cfg.data_dir, download=cfg.download)
    if cfg.resume:
        _check_same_data(Path(cfg.out), dataset)
    try:
        device = distributed.local_device(cfg.device)
    except distributed.DistributedError as err:
        raise ConfigError(f"--device {cfg.device}: {err}") from None
    with contextlib.ExitStack() as held:
        try:  # a launcher's environment that cannot form the group ($RANK without $MASTER_ADDR, ...)
            world = held.enter_context(distributed.session(device))
        except distributed.DistributedError as err:
            raise ConfigError(str(err)) from None
        return _fit(dataclasses.replace(cfg, device=device), config, dataset, world, moved_from)


def _fit(cfg: TrainConfig, config: TrainConfig, dataset: datasets.LoadedDataset, world: World,
         data_moved_from: Optional[str] = None) -> Path:
    """The run itself; rank 0 alone writes the run directory, holding its lock, and prints."""
    run_dir = Path(cfg.out)
    if world.main:
        _announce(config, cfg, dataset)
        if data_moved_from is not None:
            runlog.say(f"data: {cfg.dataset} holds what the run recorded at {data_moved_from} (the same content "
                       f"hash); the run now records the new path")
    trainer = build_trainer(cfg, dataset)  # in `world`, the process group joined by fit
    latest = run_dir / ckpt.LATEST
    loaded = _identity(latest) if cfg.resume else None
    if loaded is not None:
        # Read onto the CPU: load_state_dict puts weights and optimiser state on the parameters'
        # devices, and Adam's step counts stay on the CPU as in a fresh run (on the GPU, every step
        # would read each one back to the host).
        try:
            payload = ckpt.load(latest, map_location="cpu")
        except ckpt.CheckpointError as err:
            raise ckpt.CheckpointError(f"--resume: {err}; {_without_checkpoint(run_dir)}") from None
        trainer.load_state(payload, latest, data_moved_from)
        check_resumable(cfg, trainer.epoch)
    try:  # a meeting too: every rank has checked the directory and read the checkpoint before rank 0 writes
        world.check_same({**run_record(cfg).to_dict(), "data sha256": dataset.source.get("sha256"),
                          "epoch": trainer.epoch}, "settings")
    except distributed.DistributedError as err:
        raise ConfigError(str(err)) from None
    with claim_run_dir(cfg, loaded) if world.main else contextlib.nullcontext():
        _train(trainer, dataset, resumed=loaded is not None)
    world.barrier()  # no rank leaves (and tears the group down) while rank 0 still writes
    return run_dir


def _check_out(out) -> None:
    """--out must name a folder (not "", which would be the working directory) by a path the
    system can look up (a name too long for the file system makes every lookup fail with an OSError)."""
    out = check_path(out, "--out", "the run directory", ConfigError)
    if not out:
        raise ConfigError("--out is empty: name the run directory (\"\" would be the working directory)")
    try:
        Path(out).exists()
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot write the run there ({os_error_text(err)})") from None


def _field_names(given: Optional[Iterable[str]]) -> list:
    """fit's `given`: TrainConfig field names (save_freq, not --save-freq or a bare string)."""
    if given is None:
        return []
    if isinstance(given, str):
        raise ConfigError(f"given must be a collection of TrainConfig field names, not the string {given!r} "
                          f"(given={{{given!r}}})")
    if not isinstance(given, Iterable):
        raise ConfigError(f"given must be a collection of TrainConfig field names, got {given!r}")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = [name for name in given if name not in names]
    if unknown:
        hints = [f"{name} (did you mean {name.lstrip('-').replace('-', '_')}?)"
                 if name.lstrip("-").replace("-", "_") in names else name for name in unknown]
        raise ConfigError(f"given names no TrainConfig field: {', '.join(hints)}")
    return list(given)


def _started_by_this_job(run_dir: Path) -> bool:
    """Whether this torchrun job started (or last resumed) the run in run_dir, so that a restart
    may resume it. A run that was there before the job, whose first attempt refused to touch it,
    is not: the restart refuses it the same way."""
    job = distributed.job_id()
    return job is not None and _recorded_job(run_dir) == job and (run_dir / CONFIG_FILE).is_file()


def _restarted() -> bool:
    """distributed.restarted(), asked only where a run directory makes it matter: under torchrun
    it meets the other ranks (or the group's setup does), and a launcher's environment that
    cannot form the group is a ConfigError."""
    try:
        return distributed.restarted()
    except distributed.DistributedError as err:
        raise ConfigError(str(err)) from None


def _recorded_job(run_dir: Path) -> Optional[str]:
    try:
        return json.loads((run_dir / JOB_FILE).read_text()).get("job")
    except (OSError, ValueError, AttributeError):
        return None


def _blocking_entries(run_dir: Path) -> list:
    """The names in an existing run_dir that keep a new run out, sorted: all but the temporary files
    of writes a kill cut short (a run killed while writing its first config.json leaves one;
    claim_run_dir removes them) and, for a torchrun restart, the job file of its own first attempt."""
    job = distributed.job_id()
    own_job = job is not None and _recorded_job(run_dir) == job and _restarted()
    return sorted(entry.name for entry in run_dir.iterdir()
                  if not (_is_atomic_leftover(entry) or (own_job and entry.name == JOB_FILE)))


def _is_atomic_leftover(entry: Path) -> bool:
    """A file that remove_atomic_leftovers removes (by name, and a plain file)."""
    return bool(ATOMIC_LEFTOVER.fullmatch(entry.name)) and entry.is_file() and not entry.is_symlink()


def _identity(path: Path) -> Optional[tuple]:
    """A file's inode, size and modification time (None when absent): rewriting it changes them."""
    if not path.is_file():
        return None
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


@contextlib.contextmanager
def claim_run_dir(cfg: TrainConfig, loaded: Optional[tuple]):
    """Rank 0's lock on the run directory, from its first write to the end of the run, so that two
    processes never train into one --out. Under the lock the directory must still be as this run
    found it: empty for a new run; for a resume, `loaded` (the _identity of the checkpoint it read,
    None for none). A run that started or went on there meanwhile is a ConfigError; nothing is
    written."""
    run_dir = Path(cfg.out)
    with _writing(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(lock_folder(run_dir))
        except FolderBusy:
            raise ConfigError(f"--out {run_dir}: another process is training this run directory (it holds "
                              f"its lock); wait for it to end, or choose another --out") from None
        except OSError as err:  # a file system without flock: lock_folder's line, not a traceback
            raise ConfigError(f"--out {run_dir}: {os_error_text(err)}") from None
        if not cfg.resume and _blocking_entries(run_dir):
            raise ConfigError(f"--out {run_dir}: another process started a run there while this one was "
                              f"starting; choose another --out (nothing is ever overwritten)")
        if not cfg.resume:
            remove_atomic_leftovers(run_dir)  # of killed writes, which _blocking_entries let pass
        if cfg.resume and _identity(run_dir / ckpt.LATEST) != loaded:
            raise ConfigError(f"--out {run_dir}: another process wrote {ckpt.LATEST} while this resume was "
                              f"starting; resume again to continue from it")
        yield


def _train(trainer: Trainer, dataset: datasets.LoadedDataset, resumed: bool) -> None:
    """Write the run's start, train the remaining epochs (a checkpoint after each) and save model.pt."""
    cfg, run_dir, world = trainer.config, trainer.run_dir, trainer.world
    latest = run_dir / ckpt.LATEST
    say = runlog.say if world.main else (lambda message: None)
    if world.main:
        start_run(cfg, trainer.history, dataset.source)
        if cfg.resume:
            clear_for_resume(run_dir, trains_on=resumed and trainer.epoch < cfg.epochs)
    if resumed:
        say(f"resuming {run_dir} after epoch {trainer.epoch}/{cfg.epochs}"
            + (f" on {world.size} processes" if world.parallel else ""))
    elif cfg.resume:
        say(f"resuming {run_dir}: no checkpoint yet, starting at epoch 1")
    if world.main:
        for warning in _unreached_settings(cfg):
            runlog.say(f"warning: {warning}", sys.stderr)
    with _writing(run_dir, started=True):  # tuning.json
        chosen = trainer.tune()
    emulated = bf16_emulation_warning(cfg.device) if cfg.precision == "bf16" else None
    say(tuning.mode_line(cfg, chosen, trainer.step_inputs, emulated, processes=world.size))
    if emulated and world.main:
        warnings.warn(emulated, stacklevel=4)  # fit's caller
    board = runlog.TensorBoard(run_dir, cfg.tensorboard and world.main, trainer.history)
    try:
        while trainer.epoch < cfg.epochs:
            trained = trainer.train_epoch()
            record = {"epoch": trained["epoch"], "train_loss": trained["train_loss"],
                      "train_acc": trained["train_acc"], "test_acc": trainer.test_accuracy(),
                      "lr": trained["lr"], "seconds": trained["seconds"]}
            trainer.epoch += 1
            trainer.history.append(record)
            if world.main:
                # The snapshot first: a kill before checkpoint.pt then redoes the epoch, bit for bit,
                # and writes it again; after, it would be lost. metrics.jsonl and TensorBoard are
                # rewritten from checkpoint.pt's history on resume, so they may come last.
                with _writing(run_dir, started=True):
                    state = trainer.state()
                    if cfg.save_freq and trainer.epoch % cfg.save_freq == 0:
                        ckpt.save_atomic(state, run_dir / SNAPSHOT.format(epoch=trainer.epoch))
                    ckpt.save_atomic(state, latest)
                    runlog.append_metrics(run_dir, record)
                board.log(record)
            say(runlog.epoch_line(record, cfg.epochs))
            if world.main and not math.isfinite(record["train_loss"]):
                runlog.say(f"warning: epoch {record['epoch']}/{cfg.epochs}: the training loss is "
                           f"{record['train_loss']}, not a finite number: the run has diverged (a smaller --lr "
                           f"may keep it stable)", sys.stderr)
    finally:
        board.close()
    if world.main:
        with _writing(run_dir, started=True):
            final = ckpt.save_atomic(trainer.final_payload(), run_dir / ckpt.FINAL_MODEL)
        say(f"model saved to {final}")
        say(f"evaluate it with:\n  "
            f"{eval_command(run_dir, dataset.source, cfg.epsilon, dataset.info.epsilon, cfg.arch, cfg.data_dir)}")
