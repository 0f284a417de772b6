"""The robustness report: worst-case accuracy, gradient-masking sanity checks, the Table 9 layout,
and the JSON / CSV / PNG files written by `adt-fast eval`.

Nothing here runs a model: :func:`adt_fast.attacks.evaluate` fills a :class:`Report` from
per-example correctness masks, and this module summarises, checks and writes it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..files import (ATOMIC_SUFFIX, atomic_name_limit, broken_link_reason, link_target, make_writable_dir,
                     os_error_text, unwritable_reason, write_atomic)
from .suite import PAPER_ATTACKS, PAPER_CW_STEPS, PAPER_FEATURE_TARGETS, label, pgd_steps

PathLike = Union[str, os.PathLike]

# An attack result counts as out of line only when it is off by more than this many examples:
# max(1 example, 0.5 % of the evaluated examples rounded up). Smaller gaps are within the noise of random
# starts and float rounding.
TOLERANCE_FRACTION = 0.005
# "Many" examples with zero or non-finite input gradients.
GRADIENT_WARN_FRACTION = 0.1
# White-box attacks that a PGD transfer attack should never beat.
_ITERATIVE_WHITE_BOX = ("mim", "cw")
# Square (gradient-free) breaking points that every gradient attack left robust, on more than this
# fraction of the evaluated points: AutoAttack's own sign of gradient masking.
GRADIENT_FREE_WARN_FRACTION = 0.01
# APGD-T (targeted DLR) breaking points that APGD-CE left robust, on more than this fraction of
# the evaluated points. On models with honest gradients the targeted attacks add a point or two
# (Croce & Hein, 2020, Table 2); far more means that the cross-entropy's gradient misleads
# (saturated softmax, rescaled logits).
TARGETED_WARN_FRACTION = 0.05

# The files: the CSV rounds its numbers for reading (the JSON keeps full precision), and each kind
# carries what identifies it as a report, so a later save replaces reports and nothing else.
CSV_FIELDS = ["section", "name", "steps", "epsilon", "accuracy", "sample_accuracy", "loss"]
CSV_DIGITS = 6
JSON_MARK_KEYS = {"natural_accuracy", "robust_accuracy", "worst_case_accuracy", "adt_fast_version"}
PNG_MARK_KEY, PNG_MARK = "Title", "adt_fast eval report"
MARK_WITHIN = 4096  # the first bytes hold the marks (matplotlib writes text chunks before the image)
# A JSON report is far smaller (pgd:100000's curve holds 100,001 numbers): a larger JSON is
# another file, refused without parsing it whole.
MAX_REPORT_BYTES = 64 << 20

_ORDER = ("fgsm", "pgd", "mim", "cw", "feature", "dist", "transfer", "apgd-ce", "apgd-dlr",
          "apgd-t", "fab-t", "square", "autoattack-fast", "autoattack")


def attack_order(names: Sequence[str]) -> List[str]:
    """The Table 9 column order: FGSM, PGD-N (ascending N), MIM, C&W, FeaAttack, Dist, Transfer."""
    def key(name: str) -> Tuple[int, int]:
        steps = pgd_steps(name)
        if steps is not None:
            return (_ORDER.index("pgd"), steps)
        return (_ORDER.index(name) if name in _ORDER else len(_ORDER), 0)
    return sorted(names, key=key)


def worst_case(natural: torch.Tensor, masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Eq. 12: robust only if correct on the natural input and under every attack that was run.

    The natural input lies in every epsilon-ball, so an example the model gets wrong unattacked is
    not robust either. Every mask holds one entry per example, as natural does: torch would fail
    on another length without naming the mask, or broadcast a mask of one silently.
    """
    for name, mask in masks.items():
        if mask.shape != natural.shape:
            raise ValueError(f"worst_case: the mask of {name!r} has shape {tuple(mask.shape)}, not the natural "
                             f"mask's {tuple(natural.shape)} (one entry per example)")
    result = natural.clone().bool()
    for mask in masks.values():
        result &= mask.bool()
    return result


def tolerance(n: int) -> int:
    """How many examples two attack results may differ by before a sanity check fires."""
    return max(1, math.ceil(TOLERANCE_FRACTION * n))


def _pct(count: int, n: int) -> str:
    return f"{100.0 * count / n:.2f}%"


def sanity_warnings(natural: torch.Tensor, masks: Mapping[str, torch.Tensor], *,
                    zero_gradients: int = 0, nonfinite_gradients: int = 0,
                    nonfinite_logits: int = 0, gradient_free_gain: int = 0,
                    targeted_gain: int = 0, randomised: bool = False,
                    classes_covered: int = 0, num_classes: int = 0) -> List[str]:
    """Signs that an attack is too weak to trust (gradient masking, broken attacks).

    - a white-box iterative attack (PGD-N, MIM, C&W) weaker than the transfer attack;
    - PGD with more steps weaker than PGD with fewer;
    - FGSM stronger than PGD;
    - an attack that leaves more examples correct than no attack at all;
    - zero or non-finite input gradients of the cross-entropy on many examples;
    - non-finite logits;
    - Square breaking more than 1 % of the points that every gradient attack left robust
      (`gradient_free_gain` of them), APGD-T breaking more than 5 % that APGD-CE left robust
      (`targeted_gain`);
    - a `randomised` model (other logits for the same inputs on each forward);
    - examples whose labels cover fewer classes (`classes_covered`) than the model's `num_classes`.
    Attack results count as out of line when they differ by more than `tolerance(n)` examples.
    """
    n = len(natural)
    if n == 0:
        return []
    tol = tolerance(n)
    counts = {name: int(mask.sum()) for name, mask in masks.items()}
    natural_count = int(natural.sum())
    pgds = sorted((pgd_steps(name), name) for name in counts if pgd_steps(name) is not None)
    warnings: List[str] = []

    if "transfer" in counts:
        for name in [name for _, name in pgds] + [n_ for n_ in _ITERATIVE_WHITE_BOX if n_ in counts]:
            if counts[name] > counts["transfer"] + tol:
                warnings.append(
                    f"white-box {label(name)} ({_pct(counts[name], n)}) is weaker than the transfer "
                    f"attack ({_pct(counts['transfer'], n)}): gradients of this model mislead "
                    f"white-box attacks (gradient masking?)")
    for index, (few_steps, few) in enumerate(pgds):
        for many_steps, many in pgds[index + 1:]:
            if counts[many] > counts[few] + tol:
                warnings.append(
                    f"{label(many)} ({_pct(counts[many], n)}) is weaker than {label(few)} "
                    f"({_pct(counts[few], n)}): more steps should never help the model much "
                    f"(noisy or masked gradients?)")
    if "fgsm" in counts:
        for _, name in pgds:
            if counts["fgsm"] + tol < counts[name]:
                warnings.append(
                    f"FGSM ({_pct(counts['fgsm'], n)}) is stronger than {label(name)} "
                    f"({_pct(counts[name], n)}): the iterative attack is failing to follow the "
                    f"gradient (gradient masking?)")
    for name in attack_order(list(counts)):
        if counts[name] > natural_count + tol:
            warnings.append(
                f"{label(name)} leaves {_pct(counts[name], n)} correct, more than the natural "
                f"accuracy {_pct(natural_count, n)}: the attack is not working against this model")
    if zero_gradients > GRADIENT_WARN_FRACTION * n:
        warnings.append(
            f"the cross-entropy's input gradient is exactly zero on {zero_gradients} of {n} "
            f"examples ({_pct(zero_gradients, n)}): saturated softmax or gradient masking; "
            f"gradient attacks on the cross-entropy cannot move these (trust C&W and the worst case)")
    if nonfinite_gradients > GRADIENT_WARN_FRACTION * n:
        warnings.append(
            f"the cross-entropy's input gradient is NaN or infinite on {nonfinite_gradients} of {n} "
            f"examples ({_pct(nonfinite_gradients, n)}): the attacks treat NaN components as zero, "
            f"so their results on this model are unreliable")
    if nonfinite_logits:
        warnings.append(f"the model returns NaN or infinite logits on {nonfinite_logits} of {n} "
                        f"natural inputs")
    if gradient_free_gain > GRADIENT_FREE_WARN_FRACTION * n:
        warnings.append(
            f"the gradient-free Square attack broke {gradient_free_gain} of {n} points "
            f"({_pct(gradient_free_gain, n)}) that the gradient attacks (APGD, FAB) left robust: "
            f"the gradients of this model mislead (gradient masking?)")
    if targeted_gain > TARGETED_WARN_FRACTION * n:
        warnings.append(
            f"the targeted APGD-T broke {targeted_gain} of {n} points ({_pct(targeted_gain, n)}) "
            f"that the untargeted APGD-CE left robust: the cross-entropy's gradient misleads "
            f"(saturated softmax or rescaled logits?)")
    if randomised:
        warnings.append(
            "the model gives other logits for the same inputs on each forward (a randomised model, noise "
            "in eval mode): the natural accuracy and each attack saw other randomness, so the worst case "
            "is no single model's, and an attack that breaks one draw may not break the next; attack "
            "the expected logits instead (EOT: adt_fast has none; the reference autoattack package's "
            "version='rand' runs APGD-CE and APGD-DLR with EOT over 20 draws)")
    if classes_covered < num_classes:
        warnings.append(
            f"the {n} evaluated examples cover {classes_covered} of the model's {num_classes} classes, so "
            f"every accuracy here is over those classes only; if they are the first examples of a split "
            f"sorted by class (as an image folder is), evaluate every example (adt-fast eval without "
            f"--n-examples), or in Python a subset that holds every class")
    return warnings


def _finite_or_null(value):
    """value with every NaN or infinite float, at any depth, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return value


class SaveInterrupted(KeyboardInterrupt):
    """Ctrl-C while Report.save wrote its files: which are this report's and which are not."""

    def __init__(self, written: Sequence[Path], unwritten: Sequence[Path],
                 interrupt: Optional[KeyboardInterrupt] = None):
        self.written, self.unwritten = list(written), list(unwritten)
        self.interrupt = interrupt  # what stopped the save: a Ctrl-C, or a command's SIGTERM
        parts = [f"{', '.join(map(str, self.written))} written"] if self.written else []
        if self.unwritten:  # write_atomic replaces a file whole: the one in flight is either
            parts.append(f"{self.unwritten[0]} being written (it holds the previous file, if any, "
                         f"or this report's)")
        if self.unwritten[1:]:
            parts.append(f"{', '.join(map(str, self.unwritten[1:]))} not written (the previous "
                         f"files, if any, are still there)")
        super().__init__("; ".join(parts) or "every file written")


@dataclass
class Report:
    """The result of :func:`adt_fast.attacks.evaluate`.

    Accuracies are fractions in [0, 1]. worst_case_accuracy is A_rob over the natural input and
    every attack that ran, None when none ran (each one asked for was skipped: the natural
    accuracy alone measures no robustness); paper_worst_case_accuracy, when all six ran, A_rob
    over exactly the paper's six columns (FGSM, PGD-20, PGD-100, MIM, C&W, FeaAttack), as in
    Tables 9-11. `correct` holds the per-example masks (bool tensors of length n_examples, in the
    order of `example_ids`): "natural", each attack, "worst_case" when an attack ran, and
    "paper_worst_case" when all six ran. `curves` holds "pgd_steps", "pgd_epsilon", "dist",
    "autoattack" and "autoattack-fast" when they were computed.
    """

    natural_accuracy: float
    robust_accuracy: Dict[str, float]
    worst_case_accuracy: Optional[float]
    n_examples: int
    epsilon: float
    warnings: List[str]
    attacks: Dict[str, dict]
    skipped: Dict[str, str] = field(default_factory=dict)
    curves: Dict[str, dict] = field(default_factory=dict)
    gradient_check: Dict[str, float] = field(default_factory=dict)
    seed: int = 0
    precision: str = "fp32"
    batch_size: int = 0
    correct: Dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    example_ids: Optional[torch.Tensor] = field(default=None, repr=False)
    meta: Dict[str, object] = field(default_factory=dict)
    paper_worst_case_accuracy: Optional[float] = None
    protocol: str = "default"

    # ------------------------------------------------------------------ summaries
    def to_dict(self) -> dict:
        """Everything but the per-example masks, as JSON-ready values (deterministic order)."""
        from .. import __version__

        order = attack_order(list(self.robust_accuracy))
        return {
            "natural_accuracy": self.natural_accuracy,
            "robust_accuracy": {name: self.robust_accuracy[name] for name in order},
            "worst_case_accuracy": self.worst_case_accuracy,
            "worst_case_over": [] if self.worst_case_accuracy is None else ["natural", *order],
            **({} if self.paper_worst_case_accuracy is None else {
                "paper_worst_case_accuracy": self.paper_worst_case_accuracy,
                "paper_worst_case_over": ["natural", *PAPER_ATTACKS]}),
            "protocol": self.protocol,
            "n_examples": self.n_examples,
            "epsilon": self.epsilon,
            "warnings": list(self.warnings),
            "attacks": {name: self.attacks[name] for name in attack_order(list(self.attacks))},
            "skipped": dict(self.skipped),
            "curves": self.curves,
            "gradient_check": self.gradient_check,
            "seed": self.seed,
            "precision": self.precision,
            "batch_size": self.batch_size,
            "adt_fast_version": __version__,
            **({"meta": self.meta} if self.meta else {}),
        }

    def columns(self) -> List[Tuple[str, str, Optional[float]]]:
        """(key, header, accuracy) for the Table 9 layout; skipped attacks have accuracy None."""
        names = attack_order(list(self.robust_accuracy) + list(self.skipped))
        cols = [("natural", "Anat", self.natural_accuracy)]
        cols += [(name, label(name), self.robust_accuracy.get(name)) for name in names]
        if self.paper_worst_case_accuracy is not None:
            cols.append(("paper_worst_case", "Arob-paper", self.paper_worst_case_accuracy))
        cols.append(("worst_case", "Arob", self.worst_case_accuracy))
        return cols

    def table(self, model_name: str = "model") -> str:
        """A text table laid out like the paper's Table 9 (percent, two decimals)."""
        cols = self.columns()
        header = ["Model"] + [head for _, head, _ in cols]
        row = [model_name] + ["n/a" if acc is None else f"{100 * acc:.2f}%" for _, _, acc in cols]
        widths = [max(len(a), len(b)) for a, b in zip(header, row)]
        eps = self.epsilon
        title = f"{self.n_examples} examples, epsilon = {eps:.6g} ({eps * 255:.4g}/255), l_inf"
        lines = [title,
                 "  ".join(h.ljust(w) for h, w in zip(header, widths)),
                 "  ".join(v.ljust(w) for v, w in zip(row, widths))]
        for name, reason in self.skipped.items():
            lines.append(f"{label(name)} skipped: {reason}")
        if self.paper_worst_case_accuracy is not None:
            lines.append("Arob-paper: worst case over the natural input and the paper's six attacks "
                         f"({', '.join(label(name) for name in PAPER_ATTACKS)}), {self._paper_settings()}")
        if self.worst_case_accuracy is None:
            lines.append("Arob: n/a, since no attack ran (each one asked for was skipped); the natural "
                         "accuracy alone is no robust accuracy")
        else:
            ran = [label(name) for name in attack_order(list(self.robust_accuracy))]
            lines.append(f"Arob: worst case over the natural input and every attack run ({', '.join(ran)})")
        for name in ("autoattack", "autoattack-fast"):
            curve = self.curves.get(name)
            if curve:
                steps = [f"{label(p['attack'])} {p['robust']}/{p['attacked']}" for p in curve["points"]]
                lines.append(f"{label(name)}, robust/attacked per component in turn: {', '.join(steps)}")
        return "\n".join(line.rstrip() for line in lines)

    def _paper_settings(self) -> str:
        """How the paper columns' settings compare with the paper's protocol: the default
        protocol's FeaAttack targets and C&W steps are not the paper's, and they move Arob-paper."""
        checks = (("feature", "targets", PAPER_FEATURE_TARGETS, "FeaAttack {} targets per input"),
                  ("cw", "steps", PAPER_CW_STEPS, "C&W {} steps"))
        ours, theirs = [], []
        for name, key, paper, text in checks:
            used = self.attacks.get(name, {}).get(key)
            if used is not None and used != paper:
                ours.append(text.format(used))
                theirs.append(str(paper))
        if not ours:
            return "as in Tables 9-11"
        return (f"with {' and '.join(ours)} (the paper's: {' and '.join(theirs)}, "
                f"which --protocol paper runs)")

    # ------------------------------------------------------------------ files
    def save(self, path: PathLike, plot: bool = True,
             protect: Sequence[PathLike] = ()) -> Tuple[Path, ...]:
        """Write REPORT.json, REPORT.csv and (plot=True) REPORT.png; returns the paths written.

        The paths are checked first (:func:`report_paths`), and all three files are rendered before
        the first is written, each atomically. One that is a link is written through: the file it
        points to is replaced, in that file's folder, and the link kept. Without matplotlib the PNG
        is skipped with a warning: the attacks' results are never lost. An earlier report's PNG is
        removed when no PNG is written (a link to one, with the file it points to), so the plot
        beside a report is always its own.
        """
        json_path, csv_path, png_path = report_paths(path, protect)
        staged = {json_path: self.json_text().encode(), csv_path: self.csv_text().encode()}
        if plot:
            try:
                staged[png_path] = self.png_bytes()
            except ImportError as err:
                warnings.warn(f"{png_path} not written: {err}", stacklevel=2)
        try:  # a folder that is a file, read-only, or refusing files (/proc), named as such
            make_writable_dir(json_path.parent)
        except OSError as err:
            raise OSError(f"cannot write the report in {json_path.parent} ({os_error_text(err)})") from None
        written: List[Path] = []
        try:
            for target, data in staged.items():
                try:
                    write_atomic(link_target(target), lambda handle, data=data: handle.write(data))
                except OSError as err:  # a full disk: say which files of the set are there
                    kept = f"; {', '.join(map(str, written))} written before it" if written else ""
                    raise OSError(f"{target}: {os_error_text(err)}{kept}") from None
                written.append(target)
            if png_path not in staged and png_path.exists():
                # an earlier report's plot (report_paths checked), no longer this one's
                link_target(png_path).unlink()
                png_path.unlink(missing_ok=True)  # and a link to it, which would now lead nowhere
        except KeyboardInterrupt as stop:
            raise SaveInterrupted(written, [target for target in staged if target not in written], stop) from None
        return tuple(staged)

    def json_text(self) -> str:
        """The JSON report, full precision; a non-finite number (the dist curve's loss on a model
        whose logits are NaN) as null, since JSON has no NaN and strict readers refuse one."""
        return json.dumps(_finite_or_null(self.to_dict()), indent=2, allow_nan=False) + "\n"

    def csv_rows(self) -> List[dict]:
        """Long-format rows: section, name, steps, epsilon, accuracy, sample_accuracy, loss."""
        rows = [{"section": "summary", "name": "natural", "accuracy": self.natural_accuracy,
                 "epsilon": 0.0, "steps": 0}]
        for name in attack_order(list(self.robust_accuracy)):
            settings = self.attacks.get(name, {})
            rows.append({"section": "summary", "name": name, "accuracy": self.robust_accuracy[name],
                         "epsilon": settings.get("epsilon", self.epsilon),
                         "steps": settings.get("steps", "")})
        if self.paper_worst_case_accuracy is not None:
            rows.append({"section": "summary", "name": "paper_worst_case", "epsilon": self.epsilon,
                         "accuracy": self.paper_worst_case_accuracy})
        rows.append({"section": "summary", "name": "worst_case", "epsilon": self.epsilon,
                     "accuracy": self.worst_case_accuracy})
        steps_curve = self.curves.get("pgd_steps")
        if steps_curve:
            for point in steps_curve["points"]:
                rows.append({"section": "pgd_steps", "name": "pgd", "steps": point["steps"],
                             "epsilon": steps_curve["epsilon"], "accuracy": point["accuracy"]})
        eps_curve = self.curves.get("pgd_epsilon")
        if eps_curve:
            for point in eps_curve["points"]:
                rows.append({"section": "pgd_epsilon", "name": f"pgd{eps_curve['steps']}",
                             "steps": eps_curve["steps"] if point["epsilon"] > 0 else 0,
                             "epsilon": point["epsilon"], "accuracy": point["accuracy"]})
        dist_curve = self.curves.get("dist")
        if dist_curve:
            for point in dist_curve["points"]:
                rows.append({"section": "dist", "name": "dist", "steps": point["steps"],
                             "epsilon": self.epsilon, "accuracy": point["accuracy"],
                             "sample_accuracy": point["sample_accuracy"], "loss": point["loss"]})
        return rows

    def csv_text(self) -> str:
        """The CSV report, numbers rounded to CSV_DIGITS significant digits for reading."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in self.csv_rows():
            writer.writerow({key: _readable(row.get(key, "")) for key in CSV_FIELDS})
        return buffer.getvalue()

    def png_bytes(self) -> bytes:
        """Accuracy by attack, against PGD steps, against epsilon (PGD-20), and the dist curve."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError("the plot needs matplotlib: pip install 'adt-fast[plot]'") from None

        panels = ["bars"] + [key for key in ("pgd_steps", "pgd_epsilon", "dist") if self.curves.get(key)]
        figure = Figure(figsize=(4.2 * len(panels), 3.6), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.subplots(1, len(panels), squeeze=False)[0]
        for ax, panel in zip(axes, panels):
            getattr(self, f"_plot_{panel}")(ax)
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata={PNG_MARK_KEY: PNG_MARK})
        return buffer.getvalue()

    def _plot_bars(self, ax) -> None:
        cols = [(head, acc) for _, head, acc in self.columns() if acc is not None]
        ax.bar(range(len(cols)), [100 * acc for _, acc in cols], color="tab:blue")
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels([head for head, _ in cols], rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"accuracy by attack, eps = {self.epsilon * 255:.3g}/255")

    def _plot_pgd_steps(self, ax) -> None:
        points = self.curves["pgd_steps"]["points"]
        ax.plot([p["steps"] for p in points], [100 * p["accuracy"] for p in points],
                marker="." if len(points) <= 30 else None)
        ax.axhline(100 * self.natural_accuracy, color="gray", linestyle="--", label="natural")
        ax.set_xlabel("PGD steps")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("accuracy against PGD steps")
        ax.legend(fontsize=8)

    def _plot_pgd_epsilon(self, ax) -> None:
        curve = self.curves["pgd_epsilon"]
        points = curve["points"]
        ax.plot([255 * p["epsilon"] for p in points], [100 * p["accuracy"] for p in points], marker="o")
        ax.axvline(255 * self.epsilon, color="gray", linestyle="--", label="evaluated epsilon")
        ax.set_xlabel("epsilon (x 1/255)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"PGD-{curve['steps']} accuracy against epsilon")
        ax.legend(fontsize=8)

    def _plot_dist(self, ax) -> None:
        points = self.curves["dist"]["points"]
        steps = [p["steps"] for p in points]
        ax.plot(steps, [100 * p["sample_accuracy"] for p in points], marker=".", label="accuracy (samples)")
        ax.plot(steps, [100 * p["accuracy"] for p in points], marker=".", label="accuracy (worst of k)")
        ax.set_xlabel("distribution attack steps T")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("explicit distribution attack (D.3)")
        ax.legend(fontsize=8, loc="center right")
        twin = ax.twinx()
        twin.plot(steps, [p["loss"] for p in points], color="tab:red", linestyle=":", label="loss")
        twin.set_ylabel("cross-entropy", color="tab:red")


def _readable(value):
    """A float for a person to read: float32 noise and binary fractions rounded away."""
    return f"{value:.{CSV_DIGITS}g}" if isinstance(value, float) else value


def report_paths(path: PathLike, protect: Sequence[PathLike] = ()) -> Tuple[Path, Path, Path]:
    """REPORT.json and, beside it, REPORT.csv and REPORT.png, checked before anything is written.

    The name must end in .json. Each of the three may replace only an earlier report of its own
    kind (a JSON report, the report CSV's header, a PNG carrying the report's mark), never another
    file and never one of `protect` (the checkpoints being evaluated): ValueError or
    FileExistsError say which and why. Each may be a link, which Report.save writes through, to
    such a report in a folder it can write (else PermissionError), but not a link to nothing
    (FileNotFoundError): its rename would replace the link with a file.
    """
    path = Path(path)
    if path.name.lower() == ".json":  # a dot file to pathlib, with no suffix to replace
        raise ValueError(f"{path} needs a name before its .json (REPORT.json gives REPORT.csv and REPORT.png)")
    if path.suffix.lower() != ".json":
        raise ValueError(f"{path} must name the JSON report, ending in .json (REPORT.csv and "
                         f"REPORT.png are written beside it)")
    paths = (path, path.with_suffix(".csv"), path.with_suffix(".png"))
    for target in paths:
        broken = broken_link_reason(target)
        if broken is not None:
            raise FileNotFoundError(f"cannot write the report ({broken})")
        written = link_target(target)
        _check_name_length(written)
        if written != target:
            unwritable = unwritable_reason(written.parent)
            if unwritable is not None:
                raise PermissionError(f"cannot write the report through the link {target} ({unwritable})")
        if target.is_dir():
            raise FileExistsError(f"{target} is a directory")
        if not target.exists():
            continue
        for kept in protect:
            if os.path.exists(kept) and os.path.samefile(target, kept):
                raise FileExistsError(f"{target} is the checkpoint being evaluated")
        # Not a regular file (a named pipe, whose read would wait for a writer forever, a device, a
        # socket): no earlier report either.
        if not target.is_file() or not _is_earlier_report(target):
            raise FileExistsError(f"{target} exists and is not an earlier adt_fast report; "
                                  f"choose another name (nothing else is ever overwritten)")
    return paths


def _check_name_length(path: Path) -> None:
    """Each file is written under a longer temporary name (write_atomic) and then renamed: a name
    that fits the file system without those bytes would fail only after the attacks."""
    limit = atomic_name_limit(path.parent)
    length = len(os.fsencode(path.name))
    if limit is not None and length > limit:
        raise ValueError(f"{path}: a name of {length} bytes; the report's file names here may have at most "
                         f"{limit} (each is first written as .NAME.xxxxxxxx{ATOMIC_SUFFIX}, which this file "
                         f"system must take as a name)")


def _is_earlier_report(path: Path) -> bool:
    """Whether `path` is a file that Report.save wrote (the kind follows the suffix)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(MARK_WITHIN)
            suffix = path.suffix.lower()
            if suffix == ".png":
                return head.startswith(b"\x89PNG") and f"{PNG_MARK_KEY}\0{PNG_MARK}".encode() in head
            if suffix == ".csv":
                return head.startswith((",".join(CSV_FIELDS) + "\n").encode())
            if os.fstat(handle.fileno()).st_size > MAX_REPORT_BYTES:
                return False
            report = json.loads(head + handle.read())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and JSON_MARK_KEYS <= set(report)
