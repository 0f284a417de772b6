"""`adt-fast train`: the command-line face of `adt_fast.train.fit`.

Every flag defaults to "not given" (argparse.SUPPRESS), so the command knows what the user set:
a new run fills the rest from the dataset's and method's defaults, and ``--resume`` fills it from
the run's config.json and refuses flags that contradict it.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from fractions import Fraction
from pathlib import Path

from ..checks import parse_int, shown
from ..devices import BF16_EMULATED, is_out_of_memory, out_of_memory_text
from ..interrupts import INTERRUPTED_EXIT, TERMINATED_EXIT, Terminated, sigterm_as_interrupt
from .config import (AUTO, DIST_GRADS, GENERATOR_GRADS, LOSSES, NO_HINGE, PRECISIONS, TRADES_INNERS, ConfigError,
                     TrainConfig, resume_config)

ALL_BATCHES = "all"

FIELDS = {f for f in TrainConfig.__dataclass_fields__}


def number(text: str) -> float:
    """A float, also written as a fraction: 8/255."""
    try:
        return float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a number (e.g. 0.031 or 8/255)") from None


def integer(text: str) -> int:
    """An integer flag; its range is TrainConfig's to check, in the words fit uses too."""
    try:
        return parse_int(text, minimum=None)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def hinge(text: str):
    """--hinge: a number, or 'none' for no hinge."""
    if text.strip().lower() == NO_HINGE:
        return NO_HINGE
    try:
        return number(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{shown(text)} is neither a number nor {NO_HINGE}") from None


def integer_or(word: str, meaning):
    """An argparse type: an integer, or `word`, which stands for `meaning`."""
    def parse(text: str):
        if text.strip().lower() == word:
            return meaning
        try:
            return parse_int(text, minimum=None)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{shown(text)} is neither an integer nor {word}") from None
    return parse


samples_per_pass = integer_or(AUTO, AUTO)  # --samples-per-pass: a positive integer, or 'auto'
max_batches = integer_or(ALL_BATCHES, None)  # --max-batches N, or 'all': no cap (lifts a run's on --resume)


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    from ..data import DATASETS
    from ..models import ARCHS
    from .methods import METHODS

    def describe():
        return "; ".join(f"{name}: {spec.description}" for name, spec in METHODS.items())

    parser = subparsers.add_parser(
        "train", help="train a classifier (standard, AT-PGD, TRADES, ADT_EXP, ADT_EXP-AM, ADT_IMP-AM, ...)",
        description="Train a robust classifier into a run directory. Unset flags take the "
                    "paper's defaults (appendix C.3) for the dataset and method; with --resume "
                    "they come from the run's config.json. See docs/training.md.",
        argument_default=argparse.SUPPRESS)
    run = parser.add_argument_group("run")
    run.add_argument("--method", choices=list(METHODS), help=describe())
    run.add_argument("--dataset", metavar="NAME|PATH",
                     help=f"{', '.join(DATASETS)}; or your own data: an .npz file (x_train, y_train, "
                          f"x_test, y_test) or an image folder (train/<class>/*, test/<class>/*); "
                          f"see docs/data.md")
    run.add_argument("--image-size", type=integer, metavar="N",
                     help="resize an image folder's images to N x N (default: keep their one size)")
    run.add_argument("--out", required=True, metavar="RUN_DIR",
                     help="run directory; must be new or empty unless --resume")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its last checkpoint")
    run.add_argument("--data-dir", metavar="D", help="where dataset files live (default $ADT_FAST_DATA_DIR "
                                                      "or ~/.cache/adt_fast/data)")
    run.add_argument("--download", action="store_true", help="fetch missing dataset files")
    run.add_argument("--arch", metavar="NAME|MODULE:FACTORY",
                     help=f"classifier: {', '.join(ARCHS)} (default: the dataset's), or your own model built "
                          f"by an importable factory, with literal arguments if it takes any, e.g. "
                          f"'mypackage.models:wrn34(num_classes=10)'; it must return logits for inputs in "
                          f"[0, 1] (docs/training.md)")
    run.add_argument("--device", metavar="DEV", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    run.add_argument("--seed", type=integer, metavar="S", help="seed (default 0)")
    run.add_argument("--save-freq", type=integer, metavar="N",
                     help="also keep checkpoint_epoch{N}.pt every N epochs; 0 = never (default 25)")
    run.add_argument("--max-batches", type=max_batches, metavar="N|all",
                     help="cap the batches per epoch (train and test), for smoke runs; 'all' lifts "
                          "a run's cap on --resume (default: all)")
    run.add_argument("--tensorboard", action=argparse.BooleanOptionalAction,
                     help="write TensorBoard scalars when tensorboard is installed (default on)")
    run.add_argument("--exact-train-acc", action=argparse.BooleanOptionalAction,
                     help="train_acc from every batch, at one extra eval-mode forward per batch for "
                          "methods without clean logits (default: from a sample of batches)")

    outer = parser.add_argument_group("outer training (appendix C.3)")
    outer.add_argument("--epochs", type=integer, metavar="N", help="default 76 (C.3); 15 for digits, 5 for synthetic")
    outer.add_argument("--batch-size", type=integer, metavar="B", help="default 64")
    outer.add_argument("--lr", type=number, metavar="LR", help="SGD learning rate, default 0.1 (0.01 for madry-cnn)")
    outer.add_argument("--lr-drop", type=integer, nargs="*", metavar="EPOCH",
                       help="1-based epochs from which lr is multiplied by --lr-gamma "
                            "(default 75 for 76 epochs; round(75 N / 76) for N epochs)")
    outer.add_argument("--lr-gamma", type=number, metavar="G", help="default 0.1")
    outer.add_argument("--momentum", type=number, metavar="M", help="default 0.9")
    outer.add_argument("--weight-decay", type=number, metavar="WD", help="default 2e-4")
    outer.add_argument("--precision", choices=PRECISIONS,
                       help="bf16 = autocast with float32 weights; emulated and many times slower than fp32 "
                            "on CPUs without AVX-512 BF16 / AMX (the run says so)")
    outer.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                       help="channels_last (or, with --no-channels-last, contiguous NCHW) memory format for "
                            "the classifier and its inputs (default: the faster, measured at the start of "
                            "the run and recorded in tuning.json; changes fp32 results in the last bits)")
    outer.add_argument("--sync-bn", action=argparse.BooleanOptionalAction,
                       help="under torchrun, BatchNorm statistics over the global batch (SyncBatchNorm); "
                            "default on when the networks have BatchNorm (docs/distributed.md)")

    inner = parser.add_argument_group("perturbation / inner problem")
    inner.add_argument("--epsilon", type=number, metavar="E",
                       help="l_inf budget for inputs in [0, 1] (default: the dataset's, e.g. 8/255)")
    inner.add_argument("--steps", type=integer, metavar="T", help="inner steps (default 7)")
    inner.add_argument("--step-size", type=number, metavar="A", help="PGD step (default epsilon/4)")
    inner.add_argument("--samples", type=integer, metavar="K", help="ADT MC samples per step (default 5)")
    inner.add_argument("--lbd", type=number, metavar="L",
                       help="ADT entropy weight lambda (default 0.01; 1.0 for adt-imp-am)")
    inner.add_argument("--dist-lr", type=number, metavar="LR",
                       help="Adam lr of the ADT distribution parameters (default 0.3)")
    inner.add_argument("--dist-betas", type=number, nargs=2, metavar=("B1", "B2"),
                       help="Adam betas of the distribution parameters (default 0 0)")
    inner.add_argument("--dist-grad", choices=DIST_GRADS,
                       help="adt-exp: each Adam step on its own gradient (per-step, default, Alg. 2) or "
                            "on the sum of all so far (accumulated, the authors' released adt_exp.py)")
    inner.add_argument("--loss", choices=LOSSES,
                       help="ADT's inner and outer loss (adt-exp, adt-exp-am, adt-imp-am; default ce)")
    inner.add_argument("--beta", type=number, metavar="BETA", help="TRADES beta (default 6.0)")
    inner.add_argument("--samples-per-pass", type=samples_per_pass, metavar="M|auto",
                       help="adt-exp: send the k samples through the classifier M at a time "
                            "(same result; default auto: measured at the start of the run)")
    inner.add_argument("--beta-scales-entropy", action=argparse.BooleanOptionalAction,
                       help="ADT with --loss trades: inner objective CE + beta*(KL + lambda*H) (default for "
                            "adt-exp-am, adt-imp-am: the authors' balance) or, with --no-beta-scales-entropy, "
                            "CE + beta*KL + lambda*H (default for adt-exp) (docs/training.md)")
    inner.add_argument("--trades-inner", choices=TRADES_INNERS,
                       help="trades: at-pgd = T=7, step eps/4 (default, C.4's AT-PGD); trades-code = 10 "
                            "steps of 0.007 at eps 8/255 (TRADES' own code; the step scales with eps)")
    inner.add_argument("--backend", choices=["auto", "reference", "cpu", "cuda", "triton"],
                       help="backend of the sampling op (default auto)")

    amortised = parser.add_argument_group("amortised ADT and baselines (docs/amortized.md)")
    amortised.add_argument("--generator-lr", type=number, metavar="LR",
                           help="Adam lr of the generator (adt-exp-am, adt-imp-am, l2l; default 2e-4, constant)")
    amortised.add_argument("--generator-width", type=integer, metavar="W",
                           help="generator width, Table 7's 256 filters (default 256)")
    amortised.add_argument("--generator-grad", choices=GENERATOR_GRADS,
                           help="the generator's input gradients g1, g2: per-example (default, the "
                                "appendix) or batch-mean (the authors' released code)")
    amortised.add_argument("--hinge", type=hinge, metavar="H",
                           help="adt-imp-am: reward the entropy bound only up to -H, or 'none' for the "
                                "plain bound (default 0.9, the authors' code)")
    amortised.add_argument("--alp-weight", type=number, metavar="W",
                           help="alp: weight of the logit pairing penalty (default 0.5)")
    amortised.add_argument("--clean-weight", type=number, metavar="W",
                           help="at-fgsm: W * CE(clean) + (1 - W) * CE(adversarial) on one mixed batch, W in "
                                "[0, 1] (default 0.5, the authors' code; 0 = adversarial examples only)")
    parser.set_defaults(run=run_train)
    return parser


def given_settings(args: argparse.Namespace) -> dict:
    """The settings the command line gives (every flag defaults to "not given")."""
    return {name: value for name, value in vars(args).items() if name in FIELDS}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config a command line asks for; with --resume, the run's config.json under the flags."""
    given = given_settings(args)
    if given.get("resume"):
        return resume_config(TrainConfig.load(given["out"]), given)
    missing = [flag for flag in ("method", "dataset") if flag not in given]
    if missing:
        raise ConfigError("a new run needs " + " and ".join(f"--{m}" for m in missing)
                          + " (or --resume to continue the run in --out)")
    return TrainConfig.from_dict(given)


def whose_exit(arch, method) -> str:
    """Who failed when a run ended in sys.exit(): adt_fast's own code never exits, so your code did,
    the --arch model (a factory spec) or a registered method's (one adt_fast does not build); a run
    with both names both, and one whose settings are not read yet neither."""
    from ..models.external import is_factory_spec
    from .methods import METHODS

    model = arch is not None and is_factory_spec(arch)
    spec = METHODS.get(method)
    registered = spec is not None and not getattr(spec.build, "__module__", "").startswith("adt_fast.")
    if model and registered:
        return f"--arch {arch} or --method {method}: your code failed"
    if registered:
        return f"--method {method}: the registered method failed"
    return f"--arch {arch}: the model failed" if model else "your code (the --arch model or a registered method) failed"


def run_train(args: argparse.Namespace) -> int:
    from ..data import ChecksumError, DatasetFileError, DownloadError, MissingDependencyError
    from ..distributed import collective_failed, launched, peer_failed
    from ..models.external import import_from_working_dir, is_factory_spec, raised
    from .checkpoint import CheckpointError
    from .loop import fit, interrupted_message

    config = None  # a registered method's setting defaults run while the flags are read
    try:
        with sigterm_as_interrupt():
            config = config_from_args(args)
            if config.arch is not None and is_factory_spec(config.arch):
                import_from_working_dir()
            # The flags given, by name: a flag that sets a default value is still given (fit takes a
            # TrainConfig field at its default as unset on resume).
            with warnings.catch_warnings():
                # fit warns its Python callers that bf16 is emulated; the command's mode line says it
                warnings.filterwarnings("ignore", message=re.escape(BF16_EMULATED), category=UserWarning)
                fit(config, given=given_settings(args))
    except (ConfigError, CheckpointError, DatasetFileError, ChecksumError, DownloadError,
            FileNotFoundError, MissingDependencyError) as err:
        print(f"adt-fast train: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        if is_out_of_memory(err):  # this process's own, also where torch.distributed's code allocated
            stopped = f"error: out of memory ({out_of_memory_text(err)})"
            print(f"adt-fast train: {interrupted_message(Path(args.out), stopped)}. Training needs less with a "
                  f"smaller --batch-size (a new run) or, for adt-exp, a smaller --samples-per-pass (a resume may "
                  f"lower it)", file=sys.stderr)
            return 1
        if not (launched() and collective_failed(err)):
            raise
        # The group's failure, most likely another rank's.
        stopped = f"error: {peer_failed(err)}"
        print(f"adt-fast train: {interrupted_message(Path(args.out), stopped)}", file=sys.stderr)
        return 1
    except SystemExit as err:  # your code's (the --arch probes report theirs before the run)
        given = given_settings(args)
        arch, method = (given.get("arch"), given.get("method")) if config is None else (config.arch, config.method)
        stopped = f"error: {whose_exit(arch, method)} ({raised(err)})"
        print(f"adt-fast train: {interrupted_message(Path(args.out), stopped)}", file=sys.stderr)
        return 1
    except Terminated:
        print(f"adt-fast train: {interrupted_message(Path(args.out), 'stopped by SIGTERM')}", file=sys.stderr)
        return TERMINATED_EXIT
    except KeyboardInterrupt:
        print(f"adt-fast train: {interrupted_message(Path(args.out))}", file=sys.stderr)
        return INTERRUPTED_EXIT
    return 0

