"""`TrainConfig`: every setting of a training run, its defaults (appendix C.3) and validation.

A config comes in two forms. What the user writes may leave settings at ``None``, meaning "the
default for this dataset / method" (epsilon from the dataset, T=7 for PGD-style methods, k=5 for
ADT_EXP, ...). ``resolve()`` fills every such setting in and validates the result; the resolved
form is what a run stores in ``config.json`` and what ``--resume`` compares against.

Settings that only some methods use (steps, step size, samples, lambda, ...) are declared by each
method's ``MethodSpec`` (see ``adt_fast.train.methods``): a method lists the ones it uses with
their defaults, the others resolve to ``None``, and setting one that the method ignores is an error
rather than a silent no-op.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional, Union

from ..checks import MAX_ATTACK_STEPS, MAX_ATTACK_TRIES, check_betas, check_int, shown
from ..files import check_path, os_error_text

CONFIG_FILE = "config.json"
PRECISIONS = ("fp32", "bf16")
LOSSES = ("ce", "trades")
AUTO = "auto"  # --samples-per-pass, memory format: measured at the start of the run (train/tuning.py)

# Settings that a method may or may not use. A method's spec names the ones it uses and gives
# their defaults; issue-5 methods add theirs here (and a field below, and a flag in command.py).
# trades_inner comes first: the defaults of steps and step_size depend on it.
METHOD_PARAMS = ("trades_inner", "steps", "step_size", "samples", "lbd", "dist_lr", "dist_betas", "dist_grad",
                 "loss", "beta", "beta_scales_entropy", "generator_lr", "generator_width", "generator_grad", "hinge",
                 "alp_weight", "clean_weight", "samples_per_pass")
# Used only with --loss trades: dropped with --loss ce, refused there when given.
TRADES_LOSS_PARAMS = ("beta", "beta_scales_entropy")
GENERATOR_GRADS = ("per-example", "batch-mean")
DIST_GRADS = ("per-step", "accumulated")
TRADES_INNERS = ("at-pgd", "trades-code")
NO_HINGE = "none"  # --hinge none: ADT_IMP-AM's plain bound (Eq. A.3), no cap
# Methods that train on clean inputs only: no perturbation, so no budget. --epsilon is refused
# for them and resolves to None, as a method parameter they do not use does.
CLEAN_METHODS = frozenset({"standard"})

# Settings that may differ between a run and its --resume: where things are, how often snapshots
# are written, how long to go on, and implementation choices that do not change the maths (the
# memory format and the backend change float32 results in the last bits only).
RESUMABLE_CHANGES = frozenset({"out", "resume", "data_dir", "download", "epochs", "save_freq",
                               "max_batches", "backend", "device", "tensorboard",
                               "samples_per_pass", "exact_train_acc", "channels_last"})


class ConfigError(ValueError):
    """A setting that is invalid, or that conflicts with the run directory; names the flag."""


PAPER_EPOCHS = 76
MAX_SEED = 2**64 - 1  # torch.manual_seed takes an unsigned 64-bit seed
FLOAT32_MAX = 3.4028234663852886e38  # the largest float32: the bound of --lr and --weight-decay
# Counts (epochs, batch size, batches): torch's sizes and the run's counters are int64; a number past
# that (argparse reads any integer) broke in arithmetic after the run began, e.g. an epoch count
# whose lr-drop epoch overflowed a float, or a batch size that gave epochs of no batch.
MAX_COUNT = 2**63 - 1
# A new run's --generator-width: at 4,096 the generator (its size against its width:
# models.generators.MAX_WIDTH, the bound of any generator) holds about 10.6 GB of float32 weights,
# 42 GB with their gradients and Adam's two states.
MAX_GENERATOR_WIDTH = 4096
# The offline sets are tiny (digits: 1,438 training images); their demo runs in about a minute on
# a laptop CPU instead of C.3's 76 epochs, which were tuned for CIFAR-10.
SMALL_DATASET_EPOCHS = {"digits": 15, "synthetic": 5}
PAPER_LR = 0.1
# Madry et al.'s CNN has no BatchNorm: at C.3's lr 0.1 (SGD, momentum 0.9) it stalled at chance
# where 0.01, TRADES' MNIST setting, trained (docs/training.md, "The learning rate").
ARCH_LR = {"madry-cnn": 0.01}


def flag(name: str) -> str:
    """The command-line flag of a config field: lr_drop -> --lr-drop."""
    return "--" + name.replace("_", "-")


@dataclass
class TrainConfig:
    """Every setting of a training run. ``None`` means "the dataset's / method's default".

    The defaults are appendix C.3's: SGD with momentum 0.9, weight decay 2e-4, batch size 64,
    lr 0.1 (0.01 for madry-cnn, which has no BatchNorm) reduced tenfold from epoch 75 of 76
    (epochs 75-76 at 0.01, as the original code's ``if epoch >= 75``; other lengths N drop at
    round(75 N / 76)); PGD-style inner loops T=7 with step epsilon/4; ADT_EXP k=5, lambda=0.01,
    Adam lr 0.3 with betas (0, 0) on the distribution parameters; the amortised methods' generator
    Adam lr 2e-4 (docs/amortized.md).
    """

    method: str
    dataset: str
    out: str
    data_dir: Optional[str] = None
    download: bool = False
    image_size: Optional[int] = None    # resize an image folder's images to N x N
    arch: Optional[str] = None
    epochs: Optional[int] = None       # C.3's 76; the small offline sets default to SMALL_DATASET_EPOCHS
    batch_size: int = 64
    lr: Optional[float] = None          # PAPER_LR, or the arch's ARCH_LR
    lr_drop: Optional[list] = None      # 1-based epochs from which lr is multiplied by lr_gamma
    lr_gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    epsilon: Optional[float] = None
    steps: Optional[int] = None
    step_size: Optional[float] = None
    samples: Optional[int] = None
    lbd: Optional[float] = None
    dist_lr: Optional[float] = None
    dist_betas: Optional[tuple] = None
    dist_grad: Optional[str] = None
    loss: Optional[str] = None
    beta: Optional[float] = None
    beta_scales_entropy: Optional[bool] = None
    trades_inner: Optional[str] = None
    generator_lr: Optional[float] = None
    generator_width: Optional[int] = None
    generator_grad: Optional[str] = None
    hinge: Optional[Union[float, str]] = None   # a number, or NO_HINGE
    alp_weight: Optional[float] = None
    clean_weight: Optional[float] = None   # at-fgsm: the clean examples' share of the loss, in [0, 1]
    samples_per_pass: Optional[Union[int, str]] = None   # an integer, or AUTO
    precision: str = "fp32"
    channels_last: Optional[Union[bool, str]] = None   # true, false, or AUTO (the default): measured
    device: str = "auto"
    seed: int = 0
    save_freq: int = 25
    resume: bool = False
    backend: str = "auto"
    max_batches: Optional[int] = None
    tensorboard: bool = True
    sync_bn: Optional[bool] = None     # None: on when the networks have BatchNorm (resolved by the trainer)
    exact_train_acc: bool = False       # train accuracy on every batch, even at one extra forward

    def __post_init__(self) -> None:
        # numpy scalars (a sweep over np.arange / np.linspace) as the Python numbers they hold:
        # validation takes them as such, and config.json and the resume messages can write them.
        for f in fields(self):
            setattr(self, f.name, _plain(getattr(self, f.name)))

    # ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if data["dist_betas"] is not None:
            data["dist_betas"] = list(data["dist_betas"])
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training settings: {', '.join(unknown)}")
        data = dict(data)
        if data.get("dist_betas") is not None:
            data["dist_betas"] = tuple(data["dist_betas"])
        if data.get("lr_drop") is not None:
            data["lr_drop"] = list(data["lr_drop"])
        missing = [name for name in ("method", "dataset", "out") if name not in data]
        if missing:
            raise ConfigError("missing required settings: " + ", ".join(flag(m) for m in missing))
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, run_dir: Union[str, os.PathLike]) -> "TrainConfig":
        """The resolved config stored in a run directory's config.json."""
        path = Path(run_dir) / CONFIG_FILE
        try:
            return cls.from_record(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise ConfigError(f"{path} does not exist: {run_dir} is not a run directory") from None
        except OSError as err:  # run_dir a file, config.json a folder, no permission
            raise ConfigError(f"{path} cannot be read ({os_error_text(err)})") from None
        except (ValueError, TypeError) as err:  # not JSON, not UTF-8, not a dict of settings
            raise ConfigError(f"{path} is not a valid training config ({err})") from None

    @classmethod
    def from_record(cls, stored: dict) -> "TrainConfig":
        """A run's config as it recorded it (config.json, a checkpoint's "config"), read as a run
        made now: settings added since take their defaults, and those older versions accepted
        without effect are cleared (see _fill_later_settings, _as_runs_made_now)."""
        return _as_runs_made_now(_fill_later_settings(cls.from_dict(stored), stored))

    def given(self) -> dict:
        """The settings this config gives: those not at their defaults. A field left at its default
        counts as not given, as an unset flag does, so a resume takes it from the run."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}

    # ----------------------------------------------------------------------------------------
    def resolve(self, dataset=None) -> "TrainConfig":
        """A copy with every default filled in and every setting validated (ConfigError).

        ``dataset``: the ``DatasetInfo`` of data already opened (``fit`` passes it); without it
        a dataset given by path is opened here to learn its classes and image size.
        """
        from ..attacks.suite import MAX_EPSILON
        from ..data import DATASETS, DatasetSpecError, dataset_info, open_dataset
        from ..models import ARCHS, is_factory_spec
        from ..models.classifiers import MIN_IMAGE_SIZE
        from .methods import METHODS, method_spec

        cfg = dataclasses.replace(self)
        if cfg.method not in METHODS:
            raise ConfigError(f"unknown method {cfg.method!r} (--method); choose one of {', '.join(METHODS)}")
        if cfg.image_size is not None:
            _int(cfg, "image_size", MIN_IMAGE_SIZE)
        info = dataset
        if info is None:
            try:
                info = (dataset_info(cfg.dataset) if cfg.dataset in DATASETS and cfg.image_size is None
                        else open_dataset(cfg.dataset, image_size=cfg.image_size).info)
            except DatasetSpecError as err:
                raise ConfigError(str(err)) from None
        cfg.dataset = info.name
        if cfg.arch is None:
            cfg.arch = info.default_arch
        if not isinstance(cfg.arch, str) or (cfg.arch not in ARCHS and not is_factory_spec(cfg.arch)):
            raise ConfigError(f"unknown arch {cfg.arch!r} (--arch); choose one of {', '.join(ARCHS)}, or name "
                              f"your own model's factory as MODULE:FACTORY")
        if cfg.method in CLEAN_METHODS:
            if cfg.epsilon is not None:
                raise ConfigError(f"--epsilon does not apply to --method {cfg.method}: it trains on clean "
                                  f"inputs, without a perturbation (eval takes its own --epsilon)")
        elif cfg.epsilon is None:
            cfg.epsilon = info.epsilon
        cfg.out = check_path(cfg.out, "--out", "the run directory", ConfigError)
        if not cfg.out:
            raise ConfigError("--out is empty: name the run directory (\"\" would be the working directory)")
        if cfg.data_dir is not None:
            cfg.data_dir = check_path(cfg.data_dir, "--data-dir", "the folder of the dataset files", ConfigError)
            if not cfg.data_dir:  # Path("") is the working directory, which the user did not name
                raise ConfigError("--data-dir is empty: name the folder of the dataset files, or omit it for "
                                  "$ADT_FAST_DATA_DIR or ~/.cache/adt_fast/data")
            # absolute, as your own data's path: a --resume (or eval) from another folder finds it
            try:
                cfg.data_dir = str(Path(cfg.data_dir).expanduser().resolve())
            except (OSError, ValueError, RuntimeError) as err:  # a NUL, ~nosuchuser, a loop of links
                raise ConfigError(f"--data-dir {cfg.data_dir!r} cannot be used as a folder ({err})") from None

        if cfg.epochs is None:
            cfg.epochs = SMALL_DATASET_EPOCHS.get(cfg.dataset, PAPER_EPOCHS)
        _int(cfg, "epochs", 1, high=MAX_COUNT)
        _int(cfg, "batch_size", 1, high=MAX_COUNT)
        _int(cfg, "seed", 0, high=MAX_SEED)
        _int(cfg, "save_freq", 0, high=MAX_COUNT)
        if cfg.max_batches is not None:
            _int(cfg, "max_batches", 1, high=MAX_COUNT)
        if cfg.lr is None:
            cfg.lr = ARCH_LR.get(cfg.arch, PAPER_LR)
        # the optimisers take both as float32 multipliers: larger failed in torch after the run began
        _real(cfg, "lr", low=0.0, strict=True, high=FLOAT32_MAX)
        _real(cfg, "lr_gamma", low=0.0, strict=True)
        _real(cfg, "momentum", low=0.0)
        if cfg.momentum >= 1:
            raise ConfigError(f"--momentum must be below 1 (from 1 on SGD's velocity never decays and training "
                              f"diverges), got {cfg.momentum!r}")
        _real(cfg, "weight_decay", low=0.0, high=FLOAT32_MAX)
        if cfg.epsilon is not None:
            _real(cfg, "epsilon", low=0.0, strict=True, high=MAX_EPSILON)
        if cfg.lr_drop is None:
            # C.3's schedule (drop at epoch 75 of 76) scaled to the run's length.
            cfg.lr_drop = [max(2, round(cfg.epochs * 75 / 76))] if cfg.epochs >= 2 else []
        cfg.lr_drop = _sorted_lr_drop(cfg.lr_drop)
        repeated = sorted({e for e in cfg.lr_drop if cfg.lr_drop.count(e) > 1})
        if repeated and not cfg.resume:  # a run made before this check resumes as it ran
            raise ConfigError(f"--lr-drop names epoch {repeated[0]} more than once, which would multiply the lr "
                              f"by --lr-gamma {cfg.lr_gamma:g} twice there; give each epoch once")
        _check_lr_schedule(cfg)
        if cfg.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
        if cfg.channels_last is None:
            cfg.channels_last = AUTO
        if not isinstance(cfg.channels_last, bool) and cfg.channels_last != AUTO:
            raise ConfigError(f"--channels-last must be true, false or {AUTO}, got {cfg.channels_last!r}")
        for name in ("download", "resume", "tensorboard", "exact_train_acc"):
            if not isinstance(getattr(cfg, name), bool):
                raise ConfigError(f"{flag(name)} must be true or false, got {getattr(cfg, name)!r}")
        if cfg.sync_bn is not None and not isinstance(cfg.sync_bn, bool):
            raise ConfigError(f"--sync-bn must be true, false or unset, got {cfg.sync_bn!r}")
        _check_backend(cfg.backend)
        cfg.device = _resolve_device(cfg.device)

        spec = method_spec(cfg.method)
        _check_backend_serves(cfg, spec)
        for name in METHOD_PARAMS:
            value = getattr(cfg, name)
            if name not in spec.params:
                if value is not None:
                    raise ConfigError(f"{flag(name)} does not apply to --method {cfg.method} "
                                      f"(it uses: {', '.join(flag(p) for p in spec.params) or 'none'})")
                continue
            setattr(cfg, name, _method_default(cfg, spec, name) if value is None else value)
        if "loss" in spec.params and cfg.loss not in spec.losses:
            raise ConfigError(f"--loss must be one of {', '.join(spec.losses)} for --method "
                              f"{cfg.method}, got {cfg.loss!r}")
        if "steps" in spec.params:
            _int(cfg, "steps", 0, high=MAX_ATTACK_STEPS)  # as eval's attacks: a typo would run for days
        if "step_size" in spec.params:
            _real(cfg, "step_size", low=0.0, strict=True, high=MAX_EPSILON)  # as eval's attacks take it
        if "samples" in spec.params:
            # as eval's distribution attack (memory grows with it); a run made before resumes as it ran
            _int(cfg, "samples", 1, high=None if cfg.resume else MAX_ATTACK_TRIES)
        if "lbd" in spec.params:
            _real(cfg, "lbd", low=0.0)
        if "dist_lr" in spec.params:
            _real(cfg, "dist_lr", low=0.0, strict=True, high=FLOAT32_MAX)  # Adam takes it as a float32
        if "dist_betas" in spec.params:
            try:
                cfg.dist_betas = check_betas(cfg.dist_betas, flag("dist_betas"))
            except ValueError as err:
                raise ConfigError(str(err)) from None
        if "generator_lr" in spec.params:
            _real(cfg, "generator_lr", low=0.0, strict=True, high=FLOAT32_MAX)  # as --dist-lr
        if "generator_width" in spec.params:
            _int(cfg, "generator_width", 1, high=None if cfg.resume else MAX_GENERATOR_WIDTH)
        if "hinge" in spec.params and cfg.hinge != NO_HINGE:
            if isinstance(cfg.hinge, bool) or not isinstance(cfg.hinge, (int, float)) \
                    or not math.isfinite(cfg.hinge):
                raise ConfigError(f"--hinge must be a finite number or {NO_HINGE}, got {cfg.hinge!r}")
            cfg.hinge = float(cfg.hinge)
        if "alp_weight" in spec.params:
            _real(cfg, "alp_weight", low=0.0)
        if "clean_weight" in spec.params:
            _real(cfg, "clean_weight", low=0.0, high=1.0)
        if "samples_per_pass" in spec.params and cfg.samples_per_pass != AUTO:
            per_pass = cfg.samples_per_pass
            if isinstance(per_pass, bool) or not isinstance(per_pass, int) or per_pass < 1:
                raise ConfigError(f"--samples-per-pass must be an integer >= 1 or {AUTO}, got {per_pass!r}")
            if cfg.samples is not None and per_pass > cfg.samples:  # a pass of more would be reported, not run
                raise ConfigError(f"--samples-per-pass {per_pass}: a pass cannot hold more than the "
                                  f"--samples {cfg.samples} samples drawn per step; choose 1 to {cfg.samples} "
                                  f"or {AUTO}")
        _choice(cfg, "generator_grad", GENERATOR_GRADS)
        _choice(cfg, "dist_grad", DIST_GRADS)
        _choice(cfg, "trades_inner", TRADES_INNERS)
        # beta (and whether it scales the entropy term) is used only with the TRADES loss: a
        # method whose loss can be either declares it, and it is dropped (or refused, when
        # given) with --loss ce.
        for name in TRADES_LOSS_PARAMS:
            if not _unused_without_trades_loss(cfg, spec, name):
                continue
            if getattr(self, name) is not None:
                raise ConfigError(f"{flag(name)} applies only with --loss trades (--method {cfg.method} "
                                  f"--loss {cfg.loss})")
            setattr(cfg, name, None)
        if cfg.beta is not None:
            _real(cfg, "beta", low=0.0)
        if cfg.beta_scales_entropy is not None and not isinstance(cfg.beta_scales_entropy, bool):
            raise ConfigError(f"--beta-scales-entropy must be true or false, got {cfg.beta_scales_entropy!r}")
        spec.validate(cfg)
        return cfg

    def conflicts(self, saved: "TrainConfig", dataset=None) -> list:
        """Flags that differ from a saved run's and may not change on resume.

        The settings asked for (not None) are compared as given, so only they are named: --method,
        not the --steps default that would follow from it. Only when none differs are the resolved
        configs compared, for a difference that no asked-for setting explains; a setting that
        config.json has no value for is then a ConfigError of its own (no flag to omit). ``dataset``:
        as for ``resolve`` (a dataset path is compared as the absolute path it resolves to).
        """
        theirs, asked = saved.to_dict(), self.to_dict()
        if dataset is not None:
            asked["dataset"] = dataset.name
        if asked["lr_drop"] is not None:  # the run stores its drops sorted: --lr-drop 5 3 is its 3 5
            asked["lr_drop"] = _sorted_lr_drop(asked["lr_drop"])
        if saved.method in CLEAN_METHODS and asked["epsilon"] is not None:  # not "the run has null"
            return [f"--epsilon {_show(asked['epsilon'])} does not apply to --method {saved.method}: it trains "
                    f"on clean inputs, without a perturbation (eval takes its own --epsilon)"]
        out = [line for name, line in resume_differences(asked, theirs).items() if asked[name] is not None]
        if not out:
            mine = self.resolve(dataset).to_dict()
            differ = {name: line for name, line in resume_differences(mine, theirs).items()
                      if not (name == "sync_bn" and mine[name] is None)}  # unset: the run's
            _check_recorded(self.out, {name: mine[name] for name in differ if theirs.get(name) is None})
            out = list(differ.values())
        device = _resolve_device(self.device)
        if _device_type(device) != _device_type(theirs["device"]):
            out.append(f"--device {device} (the run has {theirs['device']}: the saved random "
                       f"states belong to that device type)")
        return out


def resume_differences(mine: dict, theirs: dict, whose: str = "the run has") -> dict:
    """The settings a resume may not change (all but RESUMABLE_CHANGES) on which two configs (as
    to_dict gives them) differ, by name: 'FLAG MINE (WHOSE THEIRS)'."""
    return {name: f"{flag(name)} {_show(mine[name])} ({whose} {_show(theirs.get(name))})"
            for name in sorted(mine) if name not in RESUMABLE_CHANGES and not _same(mine[name], theirs.get(name))}


def _check_recorded(out: str, lacking: dict) -> None:
    """Settings that the run's config.json has no value for (deleted, or set to null, by hand; a
    new run would take `lacking`'s values) are a fault of config.json, not of a flag: the resume
    cannot know the run's values, and no flag was given to omit."""
    if lacking:
        shown_defaults = ", ".join(f"{flag(name)} {_show(value)}" for name, value in lacking.items())
        raise ConfigError(f"--resume: {Path(out) / CONFIG_FILE} has no value for {', '.join(map(_show, lacking))} "
                          f"(a new run would take {shown_defaults}); if you edited it, restore it (the run's "
                          f"checkpoints record the settings it trained with)")


def _same(mine: Any, theirs: Any) -> bool:
    """Equal settings, NaN included (NaN != NaN): a config.json edited to hold NaN is then refused
    for the NaN itself, by the check of that setting, not as a change from NaN to NaN."""
    nan = isinstance(mine, float) and isinstance(theirs, float) and math.isnan(mine) and math.isnan(theirs)
    return nan or mine == theirs


def resume_config(saved: TrainConfig, given: dict) -> TrainConfig:
    """A resume's settings: the run's saved ones under those given, as --resume takes every unset
    flag from config.json (fit: the fields a TrainConfig gives, see TrainConfig.given). A given
    --step-size that PGD takes as the run's step is the run's, so that the command line that
    started a run with a step above 1 (before 409fae2) resumes it."""
    step = given.get("step_size")
    if step is not None and _step_in_effect(step) == saved.step_size:
        given = {**given, "step_size": saved.step_size}
    return TrainConfig.from_dict({**saved.to_dict(), **given})


def _method_default(cfg: TrainConfig, spec, name: str) -> Any:
    """A method setting's default, which may follow from the config's other settings."""
    default = spec.params[name]
    return default(cfg) if callable(default) else default


def _unused_without_trades_loss(cfg: TrainConfig, spec, name: str) -> bool:
    """Whether `name` is a TRADES-loss setting (beta, ...) of a method running with another loss."""
    return (name in TRADES_LOSS_PARAMS and name in spec.params and "loss" in spec.params
            and cfg.loss != "trades")


def _fill_later_settings(cfg: TrainConfig, stored: dict) -> TrainConfig:
    """A run written before one of its method's settings existed (--generator-grad,
    --beta-scales-entropy, --trades-inner, --clean-weight, ...) has no entry for it in config.json.
    It ran with the behaviour the setting had then: its default, or where the default has changed
    since, the spec's former default (at-fgsm's --clean-weight 0, the adversarial-only loss). That
    value fills the gap: --resume then continues with the run's own objective and compares against
    it instead of reporting a conflict with a null."""
    from .methods import METHODS

    spec = METHODS.get(cfg.method)
    if spec is None:  # resolve() reports the unknown method
        return cfg
    for name in METHOD_PARAMS:
        if name not in stored and name in spec.params and not _unused_without_trades_loss(cfg, spec, name):
            value = spec.former_defaults[name] if name in spec.former_defaults else _method_default(cfg, spec, name)
            setattr(cfg, name, value)
    return cfg


def _as_runs_made_now(cfg: TrainConfig) -> TrainConfig:
    """Settings that older versions accepted and that did nothing, as today's validation wants them,
    so that those runs resume with a plain --resume: a clean method's epsilon (it recorded the
    dataset's, or a given one, and never used it) goes; --samples-per-pass above --samples (a pass
    never held more than the samples drawn) becomes --samples; a --step-size above 1 becomes the
    step of 1 it took in effect (_step_in_effect)."""
    if cfg.method in CLEAN_METHODS:
        cfg.epsilon = None
    per_pass, samples = cfg.samples_per_pass, cfg.samples
    if isinstance(per_pass, int) and not isinstance(per_pass, bool) and isinstance(samples, int) and per_pass > samples:
        cfg.samples_per_pass = samples
    cfg.step_size = _step_in_effect(cfg.step_size)
    return cfg


def _step_in_effect(step: Any) -> Any:
    """The step PGD takes in effect: a --step-size above 1, which training took before 409fae2,
    moves its iterates as 1 does (a signed step of 1 from an input in [0, 1] already reaches the
    face of the ball or of [0, 1] that a longer one is projected back onto). Any other value as it
    is, for resolve to check (inf, which no version took, is refused there)."""
    from ..attacks.suite import MAX_EPSILON

    if isinstance(step, (int, float)) and not isinstance(step, bool) and MAX_EPSILON < step < math.inf:
        return MAX_EPSILON
    return step


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python bool, int or float it holds, also inside a list or tuple."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    return value


def _show(value: Any) -> str:
    return json.dumps(value)


def _int(cfg: TrainConfig, name: str, low: int, high: Optional[int] = None) -> None:
    """check_int's check and words, as a ConfigError naming the flag."""
    try:
        check_int(getattr(cfg, name), flag(name), low, high)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _check_lr_schedule(cfg: TrainConfig) -> None:
    """The lr every epoch of the run reaches is a float32 the optimiser can take: an --lr-gamma
    above 1 raises it at each drop, and past FLOAT32_MAX SGD failed there, epochs into the run."""
    drops = sum(1 for epoch in cfg.lr_drop if epoch <= cfg.epochs)
    if cfg.lr_gamma <= 1 or not drops:
        return
    log_lr = math.log(cfg.lr) + drops * math.log(cfg.lr_gamma)  # in logs: the product may overflow
    if log_lr > math.log(FLOAT32_MAX):
        raise ConfigError(f"--lr-gamma {cfg.lr_gamma:g} at the {drops} drop(s) of --lr-drop takes --lr {cfg.lr:g} "
                          f"to about 10^{log_lr / math.log(10):.0f}, past the largest float32 (3.4e38) that the "
                          f"optimiser takes")


def _sorted_lr_drop(epochs: Any) -> list:
    """--lr-drop validated and in order (the scheduler and config.json keep it sorted)."""
    if not isinstance(epochs, (list, tuple)) or any(
            isinstance(e, bool) or not isinstance(e, int) or not 2 <= e <= MAX_COUNT for e in epochs):
        raise ConfigError(f"--lr-drop must be a list of epochs from 2 to {MAX_COUNT} (1-based), got {shown(epochs)}")
    return sorted(int(e) for e in epochs)


def _real(cfg: TrainConfig, name: str, low: float, strict: bool = False,
          high: Optional[float] = None) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{flag(name)} must be a finite number, got {value!r}")
    if value < low or (strict and value == low):
        raise ConfigError(f"{flag(name)} must be {'>' if strict else '>='} {low:g}, got {value!r}")
    if high is not None and value > high:
        raise ConfigError(f"{flag(name)} must be <= {high:g}, got {value!r}")
    setattr(cfg, name, float(value))


def _choice(cfg: TrainConfig, name: str, choices: tuple) -> None:
    value = getattr(cfg, name)
    if value is not None and value not in choices:
        raise ConfigError(f"{flag(name)} must be one of {', '.join(choices)}, got {value!r}")


def _check_backend(name: str) -> None:
    allowed = ("auto", "reference", "cpu", "cuda", "triton")
    if name not in allowed:
        raise ConfigError(f"--backend must be one of {', '.join(allowed)}, got {name!r}")


def _check_backend_serves(cfg: TrainConfig, spec) -> None:
    """--backend applies only to methods that sample with the op, and must serve the device now."""
    import torch

    from ..ops import dispatch

    if not spec.uses_sampling_op:
        if cfg.backend != "auto":
            raise ConfigError(f"--backend does not apply to --method {cfg.method}: it never calls "
                              f"the sampling op (only {', '.join(_sampling_methods())} do)")
        return
    # The op always runs in float32 (bf16 autocast covers the classifier only).
    try:
        dispatch.select(cfg.backend, torch.device(cfg.device), torch.float32)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"--backend {cfg.backend} cannot run this training on {cfg.device}: "
                          f"{err}") from None


def _sampling_methods() -> list:
    from .methods import METHODS

    return [name for name, spec in METHODS.items() if spec.uses_sampling_op]


def _device_type(device: str) -> str:
    return device.split(":")[0]


def _resolve_device(device: str) -> str:
    from ..devices import DeviceError, resolve_device

    try:
        return str(resolve_device(device))
    except DeviceError as err:
        raise ConfigError(f"--device: {err}") from None
