"""`adt-fast eval`: attack a trained model with the paper's suite or AutoAttack, write the report.

    adt-fast eval --checkpoint runs/digits --dataset digits --out runs/digits/eval.json
    adt-fast eval --model mypackage.models:build --weights model.pt --dataset cifar10 --out eval.json

prints a progress bar, then a table laid out like the paper's Table 9, and writes eval.json,
eval.csv and eval.png (see docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

import torch

from ..checks import MAX_ATTACK_STEPS, MAX_ATTACK_TRIES, parse_int, shown
from ..devices import DeviceError, is_out_of_memory, out_of_memory_text, resolve_device
from ..distributed import (DistributedError, check_timeout, collective_failed, launch_rank, launched, local_device,
                           peer_failed, session)
from ..files import shell_path
from ..interrupts import INTERRUPTED_EXIT, TERMINATED_EXIT, Terminated, sigterm_as_interrupt
from ..tracebacks import raised_in
from .report import SaveInterrupted
from .suite import (DEFAULT_ATTACKS, DIST_STEPS, FEATURE_TARGETS, MAX_EPSILON, MAX_SEED, PAPER_ATTACKS,
                    PAPER_FEATURE_TARGETS, PRECISIONS, check_epsilon, make_attack, parse_attacks, shortfall)

EXIT_USAGE = 2


class EvalError(Exception):
    """A bad argument, with the flag it concerns (None for a setting that is not a flag, such as an
    environment variable the message names); printed without a traceback."""

    def __init__(self, flag: Optional[str], message: str):
        super().__init__(message if flag is None else f"{flag}: {message}")
        self.flag = flag


def _epsilon(text: str) -> float:
    """A budget in (0, 1] for inputs in [0, 1]; a fraction such as 8/255 is accepted too."""
    try:
        if "/" in text:
            numerator, denominator = text.split("/")
            value = float(numerator) / float(denominator)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number such as 0.031 or 8/255, got {shown(text)}") from None
    if not math.isfinite(value) or value <= 0 or value > MAX_EPSILON:
        raise argparse.ArgumentTypeError(f"must be a number in (0, {MAX_EPSILON:g}] for inputs in "
                                         f"[0, 1], got {shown(text)}")
    try:
        return check_epsilon(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _int_flag(minimum: Optional[int], maximum: Optional[int] = None):
    """argparse's type for an integer flag in [minimum, maximum], refused in check_int's words
    (minimum None: any integer, whose range a later check states)."""
    def parse(text: str) -> int:
        try:
            return parse_int(text, minimum, maximum)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return parse


def _attack_list(text: str) -> List[str]:
    try:
        return parse_attacks(text)
    except (ValueError, TypeError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _multiples(text: str) -> List[float]:
    """The multiples --epsilon-curve writes, checked as evaluate checks them, in its words, as far as
    no budget is concerned: plan() checks the budgets against --epsilon before reading the data,
    or against the dataset's after."""
    from .evaluation import check_multiples

    if not text.strip():
        return []
    values = []
    for part in text.split(","):
        try:
            values.append(float(part))
        except ValueError:
            if "/" in part:  # a budget such as 8/255, as --epsilon takes
                raise argparse.ArgumentTypeError(
                    f"{part.strip()!r} is no number: the curve takes multiples of --epsilon such as 0,0.5,1,2 "
                    f"(budgets m * epsilon), not budgets") from None
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {shown(text)}") from None
    try:
        return check_multiples(values)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _floats(text: str) -> List[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {shown(text)}") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {shown(text)}")
    return values


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    from ..data import DATASETS
    from .evaluation import DEFAULT_EPSILON_CURVE

    parser = subparsers.add_parser(
        "eval", help="attack a trained model with the paper's white-box suite",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, metavar="PATH",
                        help="a run directory (its model.pt, else checkpoint.pt) or a checkpoint "
                             "file; with --model for a run trained with --arch MODULE:FACTORY")
    parser.add_argument("--model", default=None, metavar="MODULE:FACTORY",
                        help="a model trained elsewhere, built by calling an importable factory with no "
                             "arguments or the literal ones given, e.g. mypackage.models:wrn28 or "
                             "'torchvision.models:resnet18(num_classes=10)'; with --checkpoint, the "
                             "factory the run was trained with (--arch)")
    parser.add_argument("--weights", default=None, metavar="FILE",
                        help="a state dict for --model, read with torch.load(weights_only=True)")
    parser.add_argument("--mean", type=_floats, default=None, metavar="M1,M2,...",
                        help="per-channel mean the --model expects its inputs normalised with "
                             "(with --std); the attacks still work on inputs in [0, 1]")
    parser.add_argument("--std", type=_floats, default=None, metavar="S1,S2,...",
                        help="per-channel standard deviation, with --mean")
    parser.add_argument("--protocol", choices=("default", "paper"), default="default",
                        help="paper: the six columns of Tables 9-11 with the authors' settings "
                             f"(FeaAttack {PAPER_FEATURE_TARGETS} targets, C&W 20 steps) and their "
                             "A_rob; --attacks then adds to them")
    parser.add_argument("--dataset", default=None, metavar="NAME|PATH",
                        help=f"the dataset whose test split is attacked: {', '.join(DATASETS)}, an .npz "
                             f"file (only x_test, y_test are read) or an image folder (only test/ is read) "
                             f"(default: the one the run recorded in dataset.json)")
    parser.add_argument("--image-size", type=_int_flag(None), default=None, metavar="N",
                        help="resize an image folder's images to N x N, the size the model takes (default: "
                             "their one size; for the run's own folder, the size the run recorded)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="where the dataset files are (default: $ADT_FAST_DATA_DIR or ~/.cache/adt_fast/data)")
    parser.add_argument("--download", action="store_true", help="download missing dataset files")
    parser.add_argument("--attacks", type=_attack_list, default=None, metavar="LIST",
                        help="comma-separated: fgsm, pgd20, pgd100, pgd:N (N <= %d), mim, cw, feature, dist, "
                             "transfer, autoattack, autoattack-fast, apgd-ce, apgd-t, fab-t, square, "
                             "apgd-dlr (default: %s; with --protocol paper: %s)"
                             % (MAX_ATTACK_STEPS, ",".join(DEFAULT_ATTACKS), ",".join(PAPER_ATTACKS)))
    parser.add_argument("--n-examples", type=_int_flag(1), default=None, metavar="N",
                        help="attack the first N test examples (default: the whole test split)")
    parser.add_argument("--batch-size", type=_int_flag(1), default=256, metavar="B",
                        help="examples per batch (default 256); no result depends on it")
    parser.add_argument("--epsilon", type=_epsilon, default=None, metavar="E",
                        help="l_inf budget for inputs in [0, 1], a number or a fraction such as 8/255 "
                             "(default: the dataset's: 8/255 for CIFAR, 4/255 for SVHN)")
    parser.add_argument("--source-checkpoint", default=None, metavar="PATH",
                        help="a source model for the transfer (black-box) attack; adds 'transfer'")
    parser.add_argument("--source-model", default=None, metavar="MODULE:FACTORY",
                        help="instead of --source-checkpoint: a source model trained elsewhere, "
                             "as --model builds one; adds 'transfer'")
    parser.add_argument("--source-weights", default=None, metavar="FILE",
                        help="a state dict for --source-model, as --weights for --model")
    parser.add_argument("--source-mean", type=_floats, default=None, metavar="M1,M2,...",
                        help="per-channel mean the --source-model expects (with --source-std)")
    parser.add_argument("--source-std", type=_floats, default=None, metavar="S1,S2,...",
                        help="per-channel standard deviation, with --source-mean")
    parser.add_argument("--seed", type=_int_flag(0, MAX_SEED), default=0, metavar="S",
                        help="random starts, FeaAttack targets and the distribution attack's samples, "
                             "and with --model or --source-model torch's generator before each factory "
                             "runs (default 0); same seed, same report")
    parser.add_argument("--device", default="auto", metavar="DEV",
                        help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    # From 1, as pgd:N: a Dist column of 0 steps would score samples of a distribution no step has
    # fitted to the model (random noise in the ball) under the attack's name, as PGD-0 would a random start.
    parser.add_argument("--dist-steps", type=_int_flag(1, MAX_ATTACK_STEPS), default=DIST_STEPS,
                        metavar="T", help=f"steps of the distribution attack, 1 to {MAX_ATTACK_STEPS} as pgd:N's "
                                          f"(0 would report random noise as Dist; default {DIST_STEPS})")
    parser.add_argument("--feature-targets", type=_int_flag(1, MAX_ATTACK_TRIES), default=None, metavar="N",
                        help=f"FeaAttack target images per input (default {FEATURE_TARGETS}; the paper "
                             f"uses {PAPER_FEATURE_TARGETS}, which --protocol paper sets; at most {MAX_ATTACK_TRIES})")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="bf16 runs the model under autocast (default fp32)")
    parser.add_argument("--epsilon-curve", type=_multiples, default=None, metavar="MULTIPLES",
                        help="multiples of epsilon for the PGD-20 accuracy-against-epsilon curve, at most %d "
                             "(default %s, those with a budget of at most 1; '' for none)"
                             % (MAX_ATTACK_TRIES, ",".join(f"{m:g}" for m in DEFAULT_EPSILON_CURVE)))
    parser.add_argument("--out", required=True, metavar="REPORT.json",
                        help="the report, a name ending in .json; REPORT.csv and REPORT.png are "
                             "written beside it. Only earlier reports are ever replaced")
    parser.set_defaults(run=run_eval)
    return parser


def _device(text: str):
    try:
        device = resolve_device(text)
    except DeviceError as err:
        raise EvalError("--device", str(err)) from None
    try:
        return torch.device(local_device(str(device)))  # under torchrun: cuda:LOCAL_RANK
    except DistributedError as err:
        raise EvalError("--device", f"{text}: {err}") from None


def _load_model(resolved, flags: "ModelFlags", seed: int, info, device, fit_classes=None):
    """The checkpoint's classifier (built by the factory ``flags.spec`` names for a run trained with
    --arch MODULE:FACTORY), checked against the dataset before any attack runs, what trained it
    (checkpoint.read_model), and the dataset's info with the model's number of classes when the
    data takes it from the model (``fit_classes``, see ``_with_model_classes``)."""
    from ..models import classifier_config
    from ..models.external import import_from_working_dir
    from ..train.checkpoint import CheckpointError, WrongFactory, read_model

    flag = flags.flag("checkpoint")
    if flags.spec is not None:
        import_from_working_dir()
        torch.manual_seed(seed)  # as for --model: randomness in the factory or the forward repeats
    try:
        model, trained = read_model(resolved, device=device, factory=flags.spec)
    except WrongFactory as err:
        raise EvalError(flags.flag("model"), str(err)) from None
    except CheckpointError as err:
        raise EvalError(flag, str(err)) from None
    config = classifier_config(model)  # what the checkpoint records, whoever built the model
    if "num_classes" in config:
        info = _with_model_classes(info, fit_classes, config["num_classes"])
    expected = {"num_classes": info.num_classes, "in_channels": info.channels,
                "image_size": info.image_size}
    for key, value in expected.items():
        if key in config and config[key] != value:
            resize = key == "image_size" and fit_classes is not None and Path(info.name).is_dir()  # your own folder
            raise EvalError(flag, f"the model in {resolved} {_shape_words(key, config[key], 'takes')} "
                                  f"but --dataset {info.name} {_shape_words(key, value, 'has')}: "
                                  + (f"pass --image-size {config[key]} to resize the folder's images to the "
                                     f"model's size" if resize else "it was trained for another dataset"))
    return model, trained, info


def _with_model_classes(info, fit_classes, num_classes: int):
    """The dataset's info for a model predicting ``num_classes`` classes. Your own test split read
    alone takes the model's count (``fit_classes`` is TestSplit.info, which refuses labels that
    cannot be the model's classes); other data (``fit_classes`` None) keeps its own, which the
    callers compare with the model's."""
    from ..data import DatasetSpecError

    if fit_classes is None:
        return info
    try:
        return fit_classes(num_classes)
    except DatasetSpecError as err:
        raise EvalError("--dataset", str(err)) from None


def _shape_words(key: str, value: int, verb: str) -> str:
    """'has 10 classes', 'takes 1 input channel(s)', 'has 8x8 images'."""
    if key == "num_classes":
        return f"{'predicts' if verb == 'takes' else verb} {value} classes"
    if key == "in_channels":
        return f"{verb} {value} input channel{'s' if value != 1 else ''}"
    return f"{verb} {value}x{value} images"


def _resolve_checkpoint(path: str, flag: str):
    from ..train.checkpoint import CheckpointError, resolve

    try:
        return resolve(path)
    except FileNotFoundError:
        raise EvalError(flag, f"checkpoint {path} does not exist") from None
    except CheckpointError as err:
        raise EvalError(flag, str(err)) from None


@dataclass(frozen=True)
class ModelFlags:
    """A model trained elsewhere as the flags give it: --model, --weights, --mean, --std for the
    evaluated model, their --source-* twins for the transfer attack's source."""

    prefix: str                     # "--" or "--source-"
    checkpoint: Optional[str]       # --checkpoint or --source-checkpoint
    spec: Optional[str]             # alone: a model trained elsewhere; with the checkpoint: its factory
    weights: Optional[str]
    mean: Optional[List[float]]
    std: Optional[List[float]]

    @classmethod
    def read(cls, args, prefix: str) -> "ModelFlags":
        names = [prefix[2:].replace("-", "_") + name for name in ("checkpoint", "model", "weights", "mean", "std")]
        return cls(prefix, *(getattr(args, name) for name in names))

    def flag(self, *names: str) -> str:
        """'--source-mean/--source-std' for ("mean", "std")."""
        return "/".join(self.prefix + name for name in names)

    def check(self, required: bool) -> None:
        """The flags' combinations, before anything is read."""
        if required and self.checkpoint is None and self.spec is None:
            raise EvalError(self.flag("checkpoint", "model"),
                            f"give {self.flag('checkpoint')} for an adt_fast run or {self.flag('model')} "
                            f"MODULE:FACTORY for a model trained elsewhere (both for a run trained with "
                            f"--arch MODULE:FACTORY)")
        if (self.mean is None) != (self.std is None):
            raise EvalError(self.flag("mean", "std"), "give both or neither")
        if (self.spec is None or self.checkpoint is not None) and (self.mean is not None or self.weights is not None):
            flag = self.flag("weights") if self.weights is not None else self.flag("mean", "std")
            raise EvalError(flag, f"goes with {self.flag('model')} alone (an adt_fast checkpoint holds its own "
                                  f"weights and takes inputs in [0, 1])")


def _load_external(flags: ModelFlags, seed: int, info, device, fit_classes=None):
    """A model trained elsewhere (``flags``), checked as the attacks run it; and the dataset's info
    with the model's number of classes where the data takes it (``fit_classes``)."""
    from ..models.external import (ExternalModelError, Normalized, build_from_factory, check_classes,
                                   check_normalisation, import_from_working_dir, load_weights, moved_to,
                                   probe_classes)

    for name in ("mean", "std"):
        values = getattr(flags, name)
        if values is not None and len(values) != info.channels:
            raise EvalError(flags.flag(name), f"{len(values)} values for the {info.channels} input "
                                              f"channels of {info.name}")
    flag = flags.flag("mean", "std")
    try:
        check_normalisation(flags.mean, flags.std)
        flag = flags.flag("model")
        import_from_working_dir()
        # A factory's random initialisation, and randomness in the forward (a randomised defence),
        # then repeat with the seed.
        torch.manual_seed(seed)
        model = build_from_factory(flags.spec)
        flag = flags.flag("weights")
        if flags.weights is not None:
            load_weights(model, flags.weights)
    except ExternalModelError as err:
        raise EvalError(flag, str(err)) from None
    if flags.mean is not None:
        model = Normalized(model, flags.mean, flags.std)
    try:
        model = moved_to(model, device).eval()
        num_classes = probe_classes(model, info.channels, info.image_size, device, info.name)
        info = _with_model_classes(info, fit_classes, num_classes)
        check_classes(num_classes, info.num_classes, info.name)
    except ExternalModelError as err:
        raise EvalError(flags.flag("model"), str(err)) from None
    return model, info


def _dataset(args, checkpoint: Optional[Path]):
    """(info, a function returning the test split, ``fit_classes``): --dataset, else the run's
    dataset.json.

    A named dataset's test split is read only when asked for (after the checkpoint has been
    checked). Your own data's test split is read here, since its image size and channels come
    from it, and alone: its train arrays (train/) are never used. Its labels need not show every
    class, so its number of classes is the model's: ``fit_classes`` (TestSplit.info) gives its
    info for the model's count; it is None for data that knows its classes (a named dataset, a
    run's recorded data, re-read whole to check its content hash).
    """
    from ..data import (DATASETS, SOURCE_FILE, ChecksumError, DataChangedError, DatasetFileError, DatasetSpecError,
                        DownloadError, dataset_info, load, open_test_split, read_source, reopen, resize_problem)

    name = args.dataset
    if checkpoint is None and name is None:
        raise EvalError("--dataset", "required with --model (there is no run directory to read it from)")
    run_dir = None if checkpoint is None else checkpoint.parent
    try:
        record = None if run_dir is None else read_source(run_dir)
        if name is None and record is None:
            raise EvalError("--dataset", f"not given, and {run_dir} holds no {SOURCE_FILE} saying what the "
                                         f"model was trained on; pass --dataset NAME|PATH")
        if name is None and record["kind"] != "named":
            _check_recorded_size(args.image_size, record)
            try:
                loaded = reopen(record, data_dir=args.data_dir, download=args.download)
            except DataChangedError as err:  # a model may be evaluated on other data; it is asked for
                raise EvalError("--dataset", f"{err}; to evaluate on the data as it is now, pass --dataset "
                                             f"{shell_path(record['path'])}") from None
            _note(f"data: {loaded.info.name} (from {run_dir / SOURCE_FILE}, content hash checked)")
            return loaded.info, lambda: loaded.test, None
        name = record["name"] if name is None else name
        data_dir = _data_dir(args.data_dir, run_dir, name)
        problem = resize_problem(name, args.image_size)
        if problem is not None:
            raise EvalError("--image-size", problem)
        if name not in DATASETS:
            # The run's own folder given again is read at the size the run resized it to, unless
            # --image-size says another (which the model's image size must then be).
            same = record is not None and record.get("path") == str(Path(name).expanduser().resolve())
            image_size = args.image_size
            if image_size is None and same:
                image_size = record.get("resize")
            data = open_test_split(name, image_size=image_size, data_dir=data_dir, download=args.download)
            return data.info(data.fewest_classes), lambda: data.test, data.info
    except DatasetSpecError as err:
        raise EvalError("--dataset", str(err)) from None
    except (DatasetFileError, FileNotFoundError, ImportError) as err:
        raise EvalError("--dataset", f"cannot read the data: {err}") from None

    def test_split():
        try:
            return load(name, "test", data_dir=data_dir, download=args.download)
        except (DatasetFileError, DownloadError, ChecksumError, FileNotFoundError, ImportError) as err:
            hint = "" if args.download or isinstance(err, ImportError) else " (pass --download to fetch it)"
            raise EvalError("--dataset/--data-dir", f"cannot read the {name} test split: {err}{hint}") from None
    return dataset_info(name), test_split, None


def _data_dir(given: Optional[str], run_dir: Optional[Path], name: str) -> Optional[str]:
    """Where the files of `name` are read from: --data-dir; without it, for the run's own dataset,
    the --data-dir the run read it from (its config.json's data_dir), as eval takes the dataset
    from the run, and says so. None (the default folder) for another dataset, a run that read the
    default folder, an older run's relative data_dir, or a checkpoint without a readable
    config.json beside it."""
    from ..train.config import CONFIG_FILE

    if given is not None or run_dir is None:
        return given
    try:
        recorded = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    data_dir = recorded.get("data_dir") if isinstance(recorded, dict) and recorded.get("dataset") == name else None
    # A run recorded before data_dir was made absolute holds it as typed, relative to a folder the
    # record does not name: the default folder, as eval read it then.
    if not isinstance(data_dir, str) or not os.path.isabs(data_dir):
        return None
    _note(f"data: {name} from {data_dir} (the run's --data-dir, recorded in {run_dir / CONFIG_FILE})")
    return data_dir


def _check_recorded_size(image_size: Optional[int], record: dict) -> None:
    """--image-size without --dataset: the run's data is re-read as recorded (its content hash
    checked), so --image-size may only restate the size its model takes."""
    if image_size is None:
        return
    where, size = record.get("path", record.get("name")), record.get("image_size")
    if record["kind"] != "image-folder":
        raise EvalError("--image-size", f"resizes the images of an image folder; the run's data {where} is not one")
    if image_size != size:
        raise EvalError("--image-size", f"the run's model takes the {size}x{size} images it recorded from {where}; "
                                        f"to read a folder at {image_size}x{image_size}, for a model of that size, "
                                        f"pass the folder as --dataset")


def _note(message: str) -> None:
    """An informational line on stderr, from rank 0 alone under torchrun. Errors are printed by
    every rank that hits them: one rank's error may be its own (its GPU, its model)."""
    if launch_rank() == 0:
        print(message, file=sys.stderr)


def _limit(args, info, x, y):
    if args.n_examples is not None:
        if args.n_examples > len(x):
            _note(f"note: --n-examples {args.n_examples} exceeds the {len(x)} test examples of "
                  f"{info.name}; attacking all of them")
        x, y = x[:args.n_examples], y[:args.n_examples]
    return x, y


@dataclass
class EvalPlan:
    """Everything an evaluation needs, checked before the first attack step."""

    device: Any
    epsilon: float
    attacks: List[str]
    model: Any
    checkpoint: Optional[Path]
    trained: dict           # the checkpoint's method and epochs; empty for --model
    source: Any
    source_checkpoint: Optional[Path]
    x: Any
    y: Any
    out: Path
    dataset: str            # the name or absolute path of the data attacked
    weights_sha256: Optional[str]   # of the checkpoint or --weights file, as read for the model
    source_sha256: Optional[str]    # the same for the source model
    epsilon_curve: List[float]      # --epsilon-curve, or the default's multiples within a budget of 1


def plan(args) -> EvalPlan:
    """Check everything before any work: settings, device, output paths, checkpoints, data, and
    that the attacks can run on the device; create the output folder last. EvalError if not."""
    from ..files import make_writable_dir, os_error_text, unwritable_reason
    from .evaluation import check_attacks_can_run
    from .report import report_paths

    device = _device(args.device)
    try:
        check_timeout()
    except DistributedError as err:
        raise EvalError(None, str(err)) from None
    attacks = None if args.attacks is None else list(args.attacks)
    target, source_flags = ModelFlags.read(args, "--"), ModelFlags.read(args, "--source-")
    target.check(required=True)
    source_flags.check(required=False)
    if args.protocol == "paper" and args.feature_targets not in (None, PAPER_FEATURE_TARGETS):
        raise EvalError("--feature-targets", f"--protocol paper fixes it to {PAPER_FEATURE_TARGETS}")
    if attacks and "transfer" in attacks and source_flags.checkpoint is None and source_flags.spec is None:
        raise EvalError("--attacks", "'transfer' needs --source-checkpoint or --source-model (the model to "
                                     "craft on)")

    checkpoint = None
    if args.checkpoint is not None:
        checkpoint = _resolve_checkpoint(args.checkpoint, "--checkpoint")
    source_checkpoint = None
    if args.source_checkpoint is not None:
        source_checkpoint = _resolve_checkpoint(args.source_checkpoint, "--source-checkpoint")
    # --epsilon's curve before the data, which _dataset reads and hashes in full; the dataset's
    # budget is known only after it.
    curve = None if args.epsilon is None else _epsilon_curve(args.epsilon_curve, args.epsilon)
    # The data after the checkpoint: without --dataset, the run directory says which it is.
    info, test_split, fit_classes = _dataset(args, checkpoint)
    epsilon = args.epsilon if args.epsilon is not None else info.epsilon
    if curve is None:
        curve = _epsilon_curve(args.epsilon_curve, epsilon)
    try:
        paths = report_paths(args.out, protect=[p for p in (checkpoint, source_checkpoint) if p])
    except (ValueError, OSError) as err:
        raise EvalError("--out", str(err)) from None
    out = paths[0]
    # Checked before the model and the data are read, as the save will (make_writable_dir): the
    # folder holding --out, links or not (report_paths checked the folders that links point to).
    unwritable = unwritable_reason(out.parent)
    if unwritable is not None:
        raise EvalError("--out", f"cannot write the report in {out.parent} ({unwritable})")

    trained = {}
    if checkpoint is None:
        model, info = _load_external(target, args.seed, info, device, fit_classes)
    else:
        model, trained, info = _load_model(checkpoint, target, args.seed, info, device, fit_classes)
    weights_sha256 = _digest(target, checkpoint)
    source = None
    if source_checkpoint is not None:
        source = _load_model(source_checkpoint, source_flags, args.seed, info, device)[0]
    elif source_flags.spec is not None:
        source = _load_external(source_flags, args.seed, info, device)[0]
    if source is not None and source is model:  # a factory that hands out one cached object
        raise EvalError(source_flags.flag("model"), "the factory returned the very model object the evaluated "
                                                    "model is, so loading one's weights replaced the other's; a "
                                                    "factory must build a new model on each call")
    source_sha256 = _digest(source_flags, source_checkpoint)
    # Both loaders made sure the models return the dataset's number of classes (your own test
    # split's is the evaluated model's).
    names = _attacks_to_run(args.protocol, attacks)
    too_few = shortfall((make_attack(name, epsilon) for name in names), info.num_classes,
                        (1, info.channels, info.image_size, info.image_size))
    if too_few is not None:
        raise EvalError("--attacks", too_few)
    x, y = _limit(args, info, *test_split())
    try:
        check_attacks_can_run(names, device, x.dtype)
    except ValueError as err:
        raise EvalError("--device", str(err)) from None
    try:
        make_writable_dir(out.parent)
    except OSError as err:
        raise EvalError("--out", f"cannot write the report in {out.parent} "
                                 f"({os_error_text(err)})") from None
    return EvalPlan(device, epsilon, attacks, model, checkpoint, trained, source, source_checkpoint, x, y, out,
                    info.name, weights_sha256, source_sha256, curve)


def _epsilon_curve(multiples: Optional[List[float]], epsilon: float) -> List[float]:
    """--epsilon-curve's multiples checked against the budget epsilon, or the default curve's that
    it takes (default_epsilon_curve keeps only the multiples that pass the check)."""
    from .evaluation import check_epsilon_curve, default_epsilon_curve

    try:
        return default_epsilon_curve(epsilon) if multiples is None else check_epsilon_curve(multiples, epsilon)
    except ValueError as err:
        raise EvalError("--epsilon-curve", str(err)) from None


def _digest(flags: ModelFlags, checkpoint: Optional[Path]) -> Optional[str]:
    """The SHA-256 of the file a model's weights were read from (its checkpoint or weights file);
    None for a model built without one."""
    from ..files import file_digest, os_error_text

    path, flag = ((checkpoint, flags.flag("checkpoint")) if checkpoint is not None
                  else (flags.weights, flags.flag("weights")))
    try:
        return None if path is None else file_digest(path)
    except OSError as err:  # the file went away after it was read
        raise EvalError(flag, f"cannot read {path} ({os_error_text(err)})") from None


def _attacks_to_run(protocol: str, attacks: Optional[List[str]]) -> List[str]:
    if protocol == "paper":
        return list(PAPER_ATTACKS) + [name for name in attacks or () if name not in PAPER_ATTACKS]
    return list(DEFAULT_ATTACKS) if attacks is None else attacks


def run_eval(args) -> int:
    try:
        with sigterm_as_interrupt():
            return _run(args)
    except EvalError as err:
        print(f"adt-fast eval: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as err:  # _run catches the one that comes while the report is written
        stopped, code = _stopped_by(err)
        print(f"adt-fast eval: {stopped} before the report was written; no file was changed "
              f"(rerun the command to evaluate)", file=sys.stderr)
        return code


def _stopped_by(interrupt: KeyboardInterrupt) -> tuple:
    """What stopped the command, as its line says it, and the exit code: 143 for a SIGTERM (as a
    shell reports one), 130 for a Ctrl-C."""
    if isinstance(getattr(interrupt, "interrupt", interrupt), Terminated):  # SaveInterrupted: its cause
        return "stopped by SIGTERM", TERMINATED_EXIT
    return "interrupted", INTERRUPTED_EXIT


def _state_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers (dense values; a quantized one's integers), by name."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if not isinstance(tensor, torch.Tensor):  # a module's own extra state
            continue
        values = tensor.detach().cpu()
        values = values.int_repr() if values.is_quantized else values.to_dense() if values.is_sparse else values
        digest.update(name.encode())
        digest.update(values.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _run(args) -> int:
    from ..progress import progress_enabled
    from .evaluation import evaluate

    job = plan(args)
    started = time.perf_counter()
    try:
        # Under torchrun the ranks share the batches; each gets the whole report, rank 0 writes it.
        with session(str(job.device)) as world:
            same = {**{name: value for name, value in vars(args).items() if name != "run"},
                    "weights sha256": job.weights_sha256, "source sha256": job.source_sha256}
            if world.parallel:  # each rank built its models itself: a --model factory may draw from numpy or the clock
                same.update({"model's state sha256": _state_digest(job.model),
                             "source model's state sha256": job.source and _state_digest(job.source)})
            world.check_same(same, "settings")
            report = evaluate(job.model, job.x, job.y, epsilon=job.epsilon, attacks=job.attacks,
                              seed=args.seed, source_model=job.source, batch_size=args.batch_size,
                              dist_steps=args.dist_steps, feature_targets=args.feature_targets,
                              protocol=args.protocol, precision=args.precision,
                              epsilon_curve=job.epsilon_curve, device=job.device,
                              progress=progress_enabled(), distributed=world.parallel)
    except DistributedError as err:
        raise EvalError(None, str(err)) from None
    except (Exception, SystemExit) as err:  # SystemExit: your model's sys.exit(), which would end the command silently
        if is_out_of_memory(err):  # this process's own, under torchrun too
            raise EvalError("--batch-size", f"{args.batch_size} examples a batch ran out of memory "
                                            f"during the attacks ({out_of_memory_text(err)}); a smaller --batch-size "
                                            f"needs less, and no result depends on it") from None
        if launched() and collective_failed(err):  # the group's failure, most likely another rank's
            raise EvalError(None, peer_failed(err)) from None
        if not isinstance(err, ValueError):
            raise _model_failed(args, err) from None
        failed = _model_failed(args, err)
        if failed is not err and not _raised_by_adt_fast(err):  # your model's own ValueError
            raise failed from None
        source = "source model" in str(err) or "source_model" in str(err)
        flag = ("--source-model" if job.source_checkpoint is None else "--source-checkpoint") if source else (
            "--model" if job.checkpoint is None else "--checkpoint")
        raise EvalError(flag, str(err)) from None
    if not world.main:
        return 0
    elapsed = time.perf_counter() - started
    source = {} if job.source is None else _origin(ModelFlags.read(args, "--source-"), job.source_checkpoint,
                                                   job.source_sha256)
    report.meta = {**_origin(ModelFlags.read(args, "--"), job.checkpoint, job.weights_sha256, job.trained),
                   "dataset": job.dataset, "split": "test", "device": job.device.type,
                   **_environment(job.device),
                   **{f"source_{key}": value for key, value in source.items()}}
    protect = [p for p in (job.checkpoint, job.source_checkpoint) if p]
    try:
        paths = report.save(job.out, protect=protect)
    except (ValueError, OSError) as err:  # a file appeared, or the place changed, during the attacks
        _print_results(report, job, args)  # the attacks' results are not lost
        raise EvalError("--out", f"the report could not be written: {err} (the results are printed "
                                 f"above)") from None
    except KeyboardInterrupt as err:  # some of the files may be this report's already: say which
        _print_results(report, job, args)
        state = err if isinstance(err, SaveInterrupted) else "no file was changed"
        stopped, code = _stopped_by(err)
        print(f"adt-fast eval: {stopped} while writing the report: {state} (the results are "
              f"printed above)", file=sys.stderr)
        return code
    _print_results(report, job, args)
    on = f"{world.size} processes" if world.parallel else str(job.device)
    print(f"\nwrote {', '.join(str(p) for p in paths)} ({elapsed:.1f} s on {on})")
    return 0


def _raised_by_adt_fast(err: BaseException) -> bool:
    """Whether err was raised by adt_fast's own code: evaluate's argument checks raise ValueError
    there, while your model's forward may raise one of its own."""
    return raised_in(err, Path(__file__).parents[1])


def _model_failed(args, err: BaseException) -> BaseException:
    """A failure of your own model's code during the attacks, which the probe did not show, as an
    EvalError naming the flags that brought your code in; err itself when none did."""
    from ..models.external import raised

    elsewhere = "/".join(flag for flag, spec in (("--model", args.model), ("--source-model", args.source_model))
                         if spec is not None)
    if not elsewhere:
        return err
    which = "the model" if "/" not in elsewhere else "one of the models"
    return EvalError(elsewhere, f"{which} failed during the attacks: {raised(err)}")


def _origin(flags: ModelFlags, checkpoint: Optional[Path], sha256: Optional[str],
            trained: Optional[dict] = None) -> dict:
    """Which model was scored, for the report's meta: the checkpoint, or the --model flags (the
    weights file as an absolute path), with the SHA-256 of the file read."""
    if checkpoint is not None:
        return {"checkpoint": str(Path(checkpoint).resolve()), "checkpoint_sha256": sha256, **({"trained": trained} if trained else {}),
                **({"model": flags.spec} if flags.spec is not None else {})}
    weights = None if flags.weights is None else str(Path(flags.weights).resolve())
    return {"model": flags.spec, "weights": weights, "weights_sha256": sha256,
            **({"mean": flags.mean, "std": flags.std} if flags.mean is not None else {})}


def _environment(device) -> dict:
    """The GPU's (or CPU's) model and torch's version, for the report's meta: the last bits of a
    result may depend on either."""
    import platform

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
                names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
        except OSError:  # not Linux
            names = []
        name = names[0] if names else (platform.processor() or platform.machine())
    return {"device_name": name, "torch_version": torch.__version__}


def _print_results(report, job, args) -> None:
    """The results table, which model was scored, and the sanity checks, on stdout."""
    checkpoint = job.checkpoint
    if checkpoint is None:
        name = args.model.partition("(")[0].rpartition(":")[2]
    else:
        name = checkpoint.parent.name if checkpoint.name in ("model.pt", "checkpoint.pt") else checkpoint.stem
    print(report.table(model_name=name or "model"))
    if {"epoch", "epochs"} <= job.trained.keys():
        unfinished = " (training had not finished)" if job.trained["epoch"] < job.trained["epochs"] else ""
        print(f"\nmodel: {job.trained.get('method', 'a run')} after {job.trained['epoch']} of "
              f"{job.trained['epochs']} epochs, from {checkpoint}{unfinished}")
    if report.warnings:
        print("\nsanity checks:")
        for warning in report.warnings:
            print(f"  warning: {warning}")
    else:
        print("\nsanity checks: no sign of gradient masking")
