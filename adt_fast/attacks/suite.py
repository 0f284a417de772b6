"""The named attacks of the paper's evaluation (Tables 9-11, appendix C.5 and D.3).

Every attack is l_inf, takes inputs in [0, 1] and runs the model in eval mode (each module's
flag is restored afterwards). The gradient attacks are settings of the one engine,
:func:`adt_fast.attacks.engine.iterative_attack`; they differ only in loss, step count, step size,
random start and momentum:

    fgsm       one step of size epsilon from x (no random start), cross-entropy
    pgdN       N sign steps of epsilon/4 from a U(-eps, eps) start, cross-entropy ("pgd:N" too)
    mim        20 steps of epsilon/4, momentum 1.0 on the gradient normalised by its mean |.|
    cw         30 PGD steps on the C&W margin loss, kappa = 50
    feature    FeaAttack: 50 steps of epsilon/8 pulling the features before global pooling towards
               those of a target image of another class; n targets per input
    dist       the explicit adversarial distribution of D.3 (Adam lr 0.3, betas (0, 0), k = 10)
    transfer   PGD-20 crafted on a source model, scored on the evaluated model

Random starts are keyed by (seed, attack stream, example id) (see ``per_example_start``), so an
example gets the same attack whatever batch it sits in. See docs/evaluation.md.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from ..checks import (MAX_ATTACK_STEPS, as_real, check_betas, check_int, check_non_negative, check_steps, check_tries,
                      parse_int, shown)
from ..models.external import has_feature_split, raised
from .distribution import fit_distribution
from .engine import (classified, eval_mode, example_seed, iterative_attack, model_device,
                     per_example_normals, per_example_start)
from .inputs import check_batch, check_classes, check_labels_fit, check_module
from .losses import cosine_distance, cross_entropy, cw_margin

DEFAULT_ATTACKS = ("fgsm", "pgd20", "pgd100", "mim", "cw", "feature", "dist")
AUTOATTACK_NAMES = ("autoattack", "autoattack-fast", "apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr")
ATTACK_NAMES = ("fgsm", "pgd20", "pgd100", "pgd:N", "mim", "cw", "feature", "dist", "transfer",
                *AUTOATTACK_NAMES)
# The six columns of the paper's Tables 9-11, over which its A_rob is taken.
PAPER_ATTACKS = ("fgsm", "pgd20", "pgd100", "mim", "cw", "feature")
PRECISIONS = ("fp32", "bf16")

MIM_STEPS, MIM_DECAY = 20, 1.0
CW_STEPS, CW_KAPPA = 30, 50.0
FEATURE_STEPS, FEATURE_TARGETS = 50, 5
FEATURE_SPLIT_PROBE = 4  # inputs on which FeaAttack checks its split, and transfer its source model
# --protocol paper: the authors' settings where the appendix is silent (FeaAttack's targets per
# input are C.5's 200; their evaluation script runs C&W for 20 steps).
PAPER_FEATURE_TARGETS, PAPER_CW_STEPS = 200, 20
DIST_STEPS, DIST_SAMPLES, DIST_LR, DIST_BETAS, DIST_LAMBDA = 20, 10, 0.3, (0.0, 0.0), 0.0
TRANSFER_STEPS = 20

# Each attack draws its random numbers from its own stream of the seed. Every pgdN shares one
# stream (so PGD-20 is exactly the first 20 steps of PGD-100), and the other attacks start
# elsewhere, which makes the worst case over attacks a little stronger. FeaAttack's target choice
# has a stream of its own: under "feature" its key for example e would be the start of the pair
# (e // targets, e % targets). At most 16 streams (stream_seed's factor).
_STREAMS = {"pgd": 0, "mim": 1, "cw": 2, "feature": 3, "dist": 4, "transfer": 5, "fgsm": 6,
            "apgd-ce": 7, "apgd-t": 8, "square": 9, "apgd-dlr": 10, "feature-targets": 11}
# The largest evaluation seed: a larger one would overflow torch's 64-bit manual_seed once
# stream_seed and engine.example_seed scale it.
MAX_SEED = 2**32 - 1


def stream_seed(seed: int, stream: str) -> int:
    """The seed of one attack's random stream, derived from the evaluation seed."""
    return int(seed) * 16 + _STREAMS[stream]


def default_step_size(epsilon: float) -> float:
    """PGD's sign-step size: epsilon / 4.

    This is the paper's 2/255 at epsilon = 8/255 and 1/255 at epsilon = 4/255 (SVHN), carried
    over to any other budget as the same fraction.
    """
    return epsilon / 4


# Inputs lie in [0, 1]: an l_inf budget of 1 already reaches every input, a larger one means nothing.
MAX_EPSILON = 1.0
# The smallest budget: the smallest normal double, so that every attack's step, a fixed fraction of
# its budget (PGD's epsilon/4, FeaAttack's epsilon/8), is still above 0.
MIN_BUDGET = sys.float_info.min


def check_step_size(value, name: str = "step_size", *, hint: str = "") -> float:
    """A step as a float in (0, MAX_EPSILON]; a step may be subnormal, as a fraction of a budget
    just above MIN_BUDGET is. `hint` says, when the value is refused, what it is."""
    number = as_real(value)
    if number is None:
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(number) or number <= 0 or number > MAX_EPSILON:
        raise ValueError(f"{name} must be a finite number in (0, {MAX_EPSILON:g}]{hint}, got {value}")
    return number


def check_epsilon(epsilon) -> float:
    """A budget as a float in [MIN_BUDGET, MAX_EPSILON]: the one check of evaluate, the stand-alone
    attacks and the trainers."""
    number = check_step_size(epsilon, "epsilon", hint=" (an l_inf budget for inputs in [0, 1], e.g. 8/255)")
    problem = budget_problem(number)
    if problem is not None:
        raise ValueError(f"epsilon {number:.12g} is {problem}")
    return number


def budget_problem(budget: float) -> Optional[str]:
    """Why the attacks cannot take the l_inf budget `budget` (a float >= 0; 0 attacks nothing), or
    None: the one rule of check_epsilon and of evaluate's epsilon curve."""
    if budget > MAX_EPSILON:
        return f"above {MAX_EPSILON:g} (inputs lie in [0, 1])"
    if 0 < budget < MIN_BUDGET:
        return f"below {MIN_BUDGET:.3g}, where the attacks' steps (epsilon/4, epsilon/8) may round to 0"
    return None


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


_PGD_NAME = re.compile(r"^pgd(?::|-)?(\d+)$")


def canonical_name(name: str) -> str:
    """'PGD:20', 'pgd-20' and 'pgd20' -> 'pgd20'; other known names lower-cased."""
    if not isinstance(name, str):
        raise TypeError(f"attack names are strings, got {shown(name)} ({type(name).__name__})")
    key = name.strip().lower()
    match = _PGD_NAME.match(key)
    if match:
        try:
            return f"pgd{parse_int(match.group(1), 1, MAX_ATTACK_STEPS)}"
        except ValueError as err:
            raise ValueError(f"attack {shown(name)}: PGD's steps {err}") from None
    if key in ("fgsm", "mim", "cw", "feature", "dist", "transfer") + AUTOATTACK_NAMES:
        return key
    raise ValueError(f"unknown attack {shown(name)}; known attacks: {', '.join(ATTACK_NAMES)} "
                     f"(pgd:N for 1 <= N <= {MAX_ATTACK_STEPS} steps)")


def parse_attacks(spec: Union[str, Iterable[str]]) -> List[str]:
    """A comma-separated string or a list of names -> canonical names, in the given order."""
    if isinstance(spec, str):
        names = spec.split(",")
    elif isinstance(spec, Iterable) and not isinstance(spec, (bytes, bytearray)):  # bytes iterate as ints
        names = list(spec)
    else:
        raise TypeError(f"attacks must be a comma-separated string or a list of attack names, got {shown(spec)} "
                        f"({type(spec).__name__})")
    names = [name for name in names if not (isinstance(name, str) and not name.strip())]
    if not names:
        raise ValueError(f"no attack given; known attacks: {', '.join(ATTACK_NAMES)}")
    result: List[str] = []
    for name in names:
        key = canonical_name(name)
        if key in result:
            raise ValueError(f"attack {name!r} is listed twice")
        result.append(key)
    return result


def pgd_steps(name: str) -> Optional[int]:
    """N for a canonical 'pgdN' name, else None."""
    match = _PGD_NAME.match(name)
    return int(match.group(1)) if match else None


def label(name: str) -> str:
    """The column header of an attack in the Table 9 layout."""
    steps = pgd_steps(name)
    if steps is not None:
        return f"PGD-{steps}"
    return {"fgsm": "FGSM", "mim": "MIM", "cw": "C&W", "feature": "FeaAttack", "dist": "Dist",
            "transfer": "Transfer", "apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "fab-t": "FAB-T",
            "square": "Square", "apgd-dlr": "APGD-DLR", "autoattack": "AutoAttack",
            "autoattack-fast": "AA-fast"}.get(name, name)


# ----------------------------------------------------------------------------- context, outcome


@dataclass
class AttackContext:
    """What an attack needs besides the batch: the model(s), the seed, precision, target pool.

    pool_x / pool_y: where FeaAttack draws its target images from (evaluate passes the whole
    evaluated set; left None, the attacked batch itself is the pool). batch_size bounds how many
    (input, target) pairs FeaAttack attacks at once.
    """

    model: nn.Module
    seed: int = 0
    precision: str = "fp32"
    pool_x: Optional[torch.Tensor] = None
    pool_y: Optional[torch.Tensor] = None
    source_model: Optional[nn.Module] = None
    batch_size: int = 256

    def __post_init__(self):
        check_module(self.model, "model")
        if self.source_model is not None:
            check_module(self.source_model, "source_model")
        check_precision(self.precision)
        self.seed = check_int(self.seed, "seed", 0, MAX_SEED)
        self.batch_size = check_int(self.batch_size, "batch_size")

    @staticmethod
    def _tensor(out, expected: str) -> torch.Tensor:
        """out, if a tensor; an output that is no tensor (a tuple, a dict) is refused with
        ``expected``, which names its source."""
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{expected}, got {type(out).__name__}")
        return out

    @classmethod
    def _full(cls, out, expected: str) -> torch.Tensor:
        """Autocast's bf16 outputs back to float32; float32/float64 outputs unchanged."""
        out = cls._tensor(out, expected)
        return out if out.dtype in (torch.float32, torch.float64) else out.float()

    @contextlib.contextmanager
    def _autocast(self, x: torch.Tensor):
        if self.precision == "bf16":
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                yield
        else:
            yield

    def logits(self, x: torch.Tensor, model: Optional[nn.Module] = None) -> torch.Tensor:
        """model(x) in the chosen precision (bf16 outputs come back as float32)."""
        model = self.model if model is None else model
        with self._autocast(x):
            out = model(x)
        which = "the model" if model is self.model else "the source model"
        return self._full(out, f"{which} must return a tensor of logits (N, classes)")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """model.features(x) in the chosen precision, in the dtype it comes in: the head takes it
        so (a float16 model's head refused float32 features), and the loss reads it in float32."""
        with self._autocast(x):
            out = self.model.features(x)
        return self._tensor(out, "the model's .features(x) must return a tensor")

    def head(self, features: torch.Tensor) -> torch.Tensor:
        with self._autocast(features):
            out = self.model.head(features)
        return self._full(out, "the model's .head(features) must return a tensor")


@dataclass
class AttackOutcome:
    """One attack on one batch.

    correct: (B,) bool on CPU, whether the model still classifies the example correctly.
    x_adv: (B, *S) an adversarial input per example (for multi-try attacks, one that broke the
        example when one did).
    iterate_correct: (steps + 1, B) bool on CPU for the gradient attacks, correctness at each
        iterate (row 0 is the start, the last row the returned x_adv).
    trace: per-step records of the distribution attack, each (T + 1, B) on CPU.
    """

    correct: torch.Tensor
    x_adv: torch.Tensor
    iterate_correct: Optional[torch.Tensor] = None
    trace: Dict[str, torch.Tensor] = field(default_factory=dict)


def example_id_tensor(example_ids, n: int) -> torch.Tensor:
    """One id per example, int64 on the CPU (0..n-1 when None). The ids key every example's random
    draws, so they must be whole, distinct and >= 0: a float id truncated, or a repeated one, would
    give two examples the same draws."""
    if example_ids is None:
        return torch.arange(n)
    ids = torch.as_tensor(example_ids).reshape(-1)
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"example_ids must be integers, got {ids.dtype}")
    ids = ids.long().cpu()
    if len(ids) != n:
        raise ValueError(f"example_ids has {len(ids)} entries for {n} examples")
    if n and (len(torch.unique(ids)) != n or int(ids.min()) < 0):
        raise ValueError("example_ids must be distinct integers >= 0")
    return ids


# ----------------------------------------------------------------------------- attacks


class Attack:
    """A named attack: `settings()` for the report and `run()` on one batch."""

    name: str

    @property
    def label(self) -> str:
        return label(self.name)

    def settings(self) -> dict:
        raise NotImplementedError

    def unavailable(self, ctx: AttackContext) -> Optional[str]:
        """Why this attack cannot run on ctx (then it is skipped and reported), else None."""
        return None

    def classes_needed(self) -> Optional[Tuple[int, str]]:
        """The fewest classes the model must return for this attack's loss or targets to exist,
        and why; None when any classifier will do. Checked before any attack runs, since the
        attack itself would only fail deep inside its steps."""
        return None

    def too_few_classes(self, num_classes: int) -> Optional[str]:
        """Why a model returning `num_classes` logits is too small for this attack, else None."""
        need = self.classes_needed()
        if need is None or num_classes >= need[0]:
            return None
        count, why = need
        return (f"{self.name!r} ({self.label}) needs a model with at least {count} classes "
                f"({why}); the model returns {num_classes}")

    def input_problem(self, shape: Tuple[int, ...]) -> Optional[str]:
        """Why this attack cannot take inputs of `shape` (N, ...), else None: checked, as
        classes_needed is, before any attack runs, not when this one's turn comes."""
        return None

    def shortfall(self, num_classes: int, shape: Tuple[int, ...]) -> Optional[str]:
        """Why this attack cannot run on a model of `num_classes` logits and inputs of `shape`."""
        return self.too_few_classes(num_classes) or self.input_problem(shape)

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor,
            example_ids: torch.Tensor) -> AttackOutcome:
        raise NotImplementedError

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, seed: int = 0,
                example_ids: Optional[torch.Tensor] = None, **context) -> torch.Tensor:
        """The adversarial inputs for (x, y): a convenience around run()."""
        return self.run_checked(AttackContext(model, seed=seed, **context), x, y, example_ids).x_adv

    def run_checked(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor,
                    example_ids: Optional[torch.Tensor] = None) -> AttackOutcome:
        """run() behind the checks of a stand-alone call, made once: x in [0, 1], labels that
        the model's (and source model's) logits have, FeaAttack's pool, the attack's needs.
        (evaluate makes the same checks once for the whole set and calls run() per batch.)
        The labels go where x is, as evaluate moves both; x must be where the model is."""
        y = check_batch(x, y).to(x.device)
        if (ctx.pool_x is None) != (ctx.pool_y is None):
            raise ValueError("pool_x and pool_y go together: give both or neither")
        if ctx.pool_x is not None:
            check_batch(ctx.pool_x, ctx.pool_y, "pool_x", "pool_y")
            if ctx.pool_x.shape[1:] != x.shape[1:]:  # FeaAttack's split check would blame the model
                raise ValueError(f"pool_x holds inputs of shape {tuple(ctx.pool_x.shape[1:])} but x's are "
                                 f"{tuple(x.shape[1:])}: the targets are inputs of the model, as x's are")
        reason = self.unavailable(ctx)
        if reason is not None:
            raise ValueError(f"attack {self.name!r} cannot run: {reason}")
        num_classes = check_classes(ctx, ctx.model, x, y, "model")
        if ctx.pool_y is not None:
            check_labels_fit(ctx.pool_y, num_classes, "model", "pool_y's labels")
        problem = self.shortfall(num_classes, tuple(x.shape))
        if problem is not None:
            raise ValueError(problem)
        if ctx.source_model is not None:
            check_classes(ctx, ctx.source_model, x, y, "source model")
        return self.run(ctx, x, y, example_id_tensor(example_ids, len(x)))


@dataclass
class GradientAttack(Attack):
    """FGSM, PGD, MIM and C&W: sign steps of the shared engine on a per-example loss."""

    name: str
    epsilon: float
    steps: int
    step_size: Optional[float]      # None: default_step_size(epsilon)
    loss: str = "ce"
    random_start: bool = True
    momentum: Optional[float] = None
    kappa: float = CW_KAPPA
    stream: str = "pgd"

    def __post_init__(self):
        self.epsilon = check_epsilon(self.epsilon)  # before the default step divides it
        if self.step_size is None:
            self.step_size = default_step_size(self.epsilon)
        if self.loss not in ("ce", "cw"):
            raise ValueError(f"loss must be 'ce' or 'cw', got {self.loss!r}")
        self.steps = check_steps(self.steps, "steps")
        self.step_size = check_step_size(self.step_size)
        if self.momentum is not None:  # 0 is plain PGD on the normalised gradient
            self.momentum = check_non_negative(self.momentum, f"{self.label}'s decay (momentum)")
        # kappa caps the margin loss: at 0 the attack stops at the decision boundary (C&W's
        # confidence 0); below 0 it would stop while the example is still classified correctly
        self.kappa = check_non_negative(self.kappa, f"{self.label}'s kappa")

    def settings(self) -> dict:
        out = {"norm": "linf", "epsilon": self.epsilon, "steps": self.steps,
               "step_size": self.step_size, "random_start": self.random_start,
               "loss": "cross_entropy" if self.loss == "ce" else "cw_margin"}
        if self.loss == "cw":
            out["kappa"] = self.kappa
        if self.momentum is not None:
            out["decay"] = self.momentum
            out["gradient_normalisation"] = "per-example mean |grad|"
        return out

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, y) if self.loss == "ce" else cw_margin(logits, y, self.kappa)

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor,
            example_ids: torch.Tensor, model: Optional[nn.Module] = None) -> AttackOutcome:
        model = ctx.model if model is None else model
        history: List[torch.Tensor] = []

        def loss_fn(z: torch.Tensor) -> torch.Tensor:
            logits = ctx.logits(z, model)
            history.append(classified(logits.detach(), y))  # stays on the device: no sync
            return self._loss(logits, y)

        start = None
        if self.random_start:
            start = per_example_start(x, example_ids, stream_seed(ctx.seed, self.stream))
        with eval_mode(model):
            x_adv = iterative_attack(loss_fn, x, epsilon=self.epsilon, steps=self.steps,
                                     step_size=self.step_size, start=start, momentum=self.momentum)
            with torch.no_grad():
                final = classified(ctx.logits(x_adv, model), y)
        history.append(final)
        return AttackOutcome(final.cpu(), x_adv, iterate_correct=torch.stack(history).cpu())


def fgsm_attack(epsilon: float) -> GradientAttack:
    return GradientAttack("fgsm", epsilon, steps=1, step_size=epsilon, random_start=False,
                          stream="fgsm")


def pgd_attack(epsilon: float, steps: int = 20, step_size: Optional[float] = None,
               stream: str = "pgd") -> GradientAttack:
    return GradientAttack(f"pgd{steps}", epsilon, steps=steps, step_size=step_size, stream=stream)


def mim_attack(epsilon: float, steps: int = MIM_STEPS, decay: float = MIM_DECAY,
               step_size: Optional[float] = None) -> GradientAttack:
    return GradientAttack("mim", epsilon, steps=steps, step_size=step_size, momentum=decay, stream="mim")


def cw_attack(epsilon: float, steps: int = CW_STEPS, kappa: float = CW_KAPPA,
              step_size: Optional[float] = None) -> GradientAttack:
    return GradientAttack("cw", epsilon, steps=steps, step_size=step_size, loss="cw", kappa=kappa,
                          stream="cw")


def choose_targets(y: torch.Tensor, example_ids: torch.Tensor, pool_y: torch.Tensor,
                   num_targets: int, seed: int) -> torch.Tensor:
    """(B, num_targets) indices into the pool, each of a class other than the example's.

    Drawn without replacement when the pool has enough such images, from a generator keyed by
    (seed, example id), so an example's targets do not depend on its batch.
    """
    pool_y = pool_y.cpu()
    candidates: Dict[int, torch.Tensor] = {}
    rows = []
    for label_value, example_id in zip(y.cpu().tolist(), example_ids.tolist()):
        if label_value not in candidates:
            candidates[label_value] = (pool_y != label_value).nonzero().squeeze(1)
        others = candidates[label_value]
        if len(others) == 0:
            raise ValueError(f"no image of a class other than {label_value} to serve as a "
                             f"FeaAttack target")
        generator = torch.Generator().manual_seed(example_seed(seed, example_id))
        if len(others) >= num_targets:
            pick = torch.randperm(len(others), generator=generator)[:num_targets]
        else:
            pick = torch.randint(len(others), (num_targets,), generator=generator)
        rows.append(others[pick])
    return torch.stack(rows) if rows else torch.zeros(0, num_targets, dtype=torch.long)


def logits_agree(logits: torch.Tensor, reference: torch.Tensor) -> bool:
    """Whether `logits` are `reference`'s up to float noise (1e-3, relative and of the largest
    finite logit). The tolerance scales with the finite logits, and NaN agrees with NaN: a model
    gone NaN (a diverged run) is no randomised one, and every attack scores it broken."""
    finite = reference[torch.isfinite(reference)]
    scale = 1.0 + float(finite.abs().max()) if finite.numel() else 1.0
    return logits.shape == reference.shape and torch.allclose(logits, reference, rtol=1e-3, atol=1e-3 * scale,
                                                              equal_nan=True)


def gives_other_logits(ctx: AttackContext, probe: torch.Tensor, logits: Optional[torch.Tensor] = None) -> bool:
    """Whether the model, in eval mode, gives other logits for `probe` on another forward than
    `logits` (a first forward when None): a randomised model (noise in its forward), which every
    attack and the natural accuracy see in another draw."""
    with eval_mode(ctx.model), torch.no_grad():
        first = ctx.logits(probe) if logits is None else logits
        return not logits_agree(ctx.logits(probe), first)


@dataclass
class FeatureAttack(Attack):
    """FeaAttack (appendix C.5): features pulled towards those of another class's image.

    For each input and each of `targets` target images of another class, 50 sign steps of
    epsilon/8 from a uniform start minimise the cosine distance between model.features(x_adv)
    and model.features(target) (the feature map before global pooling). As in the original code's
    early stop, an input counts as broken as soon as some iterate of some target's attack is
    misclassified; the predictions come for free from the features the loss needs.
    """

    epsilon: float
    targets: int = FEATURE_TARGETS
    steps: int = FEATURE_STEPS
    step_size: Optional[float] = None
    name: str = "feature"

    def __post_init__(self):
        self.epsilon = check_epsilon(self.epsilon)
        if self.step_size is None:
            self.step_size = self.epsilon / 8
        self.step_size = check_step_size(self.step_size, "FeaAttack's step_size")
        self.steps = check_steps(self.steps, "FeaAttack's steps", minimum=0)
        self.targets = check_tries(self.targets, "the number of FeaAttack targets")

    def settings(self) -> dict:
        return {"norm": "linf", "epsilon": self.epsilon, "steps": self.steps,
                "step_size": self.step_size, "random_start": True, "targets": self.targets,
                "loss": "cosine distance of the features before global pooling to a target "
                        "image of another class (minimised)",
                "broken_if": "any iterate of any target's attack is misclassified"}

    def unavailable(self, ctx: AttackContext) -> Optional[str]:
        if not has_feature_split(ctx.model):
            return ("the model has no .features(x) / .head(features) split (the feature map "
                    "before global pooling), which FeaAttack needs")
        if ctx.pool_y is not None and len(torch.unique(ctx.pool_y)) < 2:
            return "the evaluated examples hold a single class, so there is no target of another class"
        if ctx.pool_x is not None:
            return self._split_disagrees(ctx, ctx.pool_x[:FEATURE_SPLIT_PROBE])
        return None

    @staticmethod
    def _split_disagrees(ctx: AttackContext, probe: torch.Tensor) -> Optional[str]:
        """FeaAttack scores head(features(z)): a split that is not the model's forward (its
        normalisation or pooling left in forward) would score another function, or fail mid-run."""
        probe = probe.to(model_device(ctx.model, probe.device))
        try:
            with eval_mode(ctx.model), torch.no_grad():
                whole, split = ctx.logits(probe), ctx.head(ctx.features(probe))
        except (Exception, SystemExit) as err:  # noqa: BLE001 - the user's split, whatever it raises
            return f"head(features(x)) fails on the model ({raised(err)}), so FeaAttack cannot run"
        if not logits_agree(split, whole):
            # only now: a model that disagrees with itself is no split's fault
            if gives_other_logits(ctx, probe, whole):
                return ("the model gives other logits for the same inputs on each call (a randomised model), "
                        "so its head(features(x)) cannot be checked against model(x), and FeaAttack is skipped")
            return ("head(features(x)) does not give model(x) (normalisation or pooling left in forward?), "
                    "so FeaAttack would attack another function")
        return None

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor,
            example_ids: torch.Tensor) -> AttackOutcome:
        model = ctx.model
        pool_x, pool_y = (x, y) if ctx.pool_x is None else (ctx.pool_x, ctx.pool_y)
        seed = stream_seed(ctx.seed, "feature")
        targets = choose_targets(y, example_ids, pool_y, self.targets,
                                 stream_seed(ctx.seed, "feature-targets"))
        batch = len(x)
        broken = torch.zeros(batch, dtype=torch.bool)
        x_out = x.detach().clone()
        chunk = max(1, ctx.batch_size // max(1, batch))
        with eval_mode(model):
            for first in range(0, self.targets, chunk):
                alive = (~broken).nonzero().squeeze(1)
                if len(alive) == 0:
                    break
                count = min(first + chunk, self.targets) - first
                # rows target-major: row t * len(alive) + a pairs input alive[a] with target first + t
                index = alive.repeat(count)
                which = torch.arange(first, first + count).repeat_interleave(len(alive))
                x_rep, y_rep = x[index.to(x.device)], y[index.to(y.device)]
                ids = example_ids[index] * self.targets + which
                target_x = pool_x[targets[index, which].to(pool_x.device)].to(x.device)
                with torch.no_grad():
                    target_features = ctx.features(target_x)
                hit, witness = self._attack_pairs(ctx, x_rep, y_rep, ids, target_features, seed)
                hit = hit.cpu().view(count, len(alive))
                # each input keeps the witness of its first target that broke it, else its last
                # target's; one gather on the device, not a copy per row
                broke = hit.any(0)
                pick = torch.where(broke, hit.to(torch.uint8).argmax(0), count - 1)
                rows = pick * len(alive) + torch.arange(len(alive))
                x_out[alive.to(x_out.device)] = witness[rows.to(witness.device)]
                broken[alive] = broke
        return AttackOutcome(~broken, x_out)

    def _attack_pairs(self, ctx, x, y, ids, target_features, seed):
        """Attack each (input, target) row; whether some iterate was misclassified, and which."""
        state = {"hit": torch.zeros(len(x), dtype=torch.bool, device=x.device),
                 "witness": x.detach().clone()}

        def record(z: torch.Tensor, features: torch.Tensor) -> None:
            # branch-free, so that no step waits for the device
            new = ~classified(ctx.head(features).detach(), y) & ~state["hit"]
            state["witness"] = torch.where(new.view(-1, *[1] * (z.dim() - 1)),
                                           z.detach().to(state["witness"].dtype), state["witness"])
            state["hit"] = state["hit"] | new

        def loss_fn(z: torch.Tensor) -> torch.Tensor:
            features = ctx.features(z)
            record(z, features)
            return cosine_distance(features, target_features)

        start = per_example_start(x, ids, seed)
        x_adv = iterative_attack(loss_fn, x, epsilon=self.epsilon, steps=self.steps,
                                 step_size=self.step_size, start=start, minimize=True)
        with torch.no_grad():
            record(x_adv, ctx.features(x_adv))
        witness = torch.where(state["hit"].view(-1, *[1] * (x.dim() - 1)), state["witness"], x_adv)
        return state["hit"], witness


@dataclass
class DistributionAttack(Attack):
    """The explicit adversarial-distribution attack of appendix D.3.

    Per-example (mean, std_param) fitted by :func:`fit_distribution` (Adam, lr 0.3, betas (0, 0),
    k samples per step, T steps) to maximise the expected cross-entropy (+ lambda * entropy;
    lambda = 0 by default: an attack only wants loss). The trace records, before each step and
    after the last, the mean loss and accuracy of the k samples; an example counts as broken
    when any of k fresh samples from the fitted distribution is misclassified.
    """

    epsilon: float
    steps: int = DIST_STEPS
    samples: int = DIST_SAMPLES
    lr: float = DIST_LR
    betas: tuple = DIST_BETAS
    lbd: float = DIST_LAMBDA
    name: str = "dist"

    def __post_init__(self):
        self.epsilon = check_epsilon(self.epsilon)
        # From 1, as PGD's: 0 steps would score samples of a distribution no step has fitted to the
        # model (random noise in the ball) under the attack's name.
        self.steps = check_steps(self.steps, "the distribution attack's steps")
        self.samples = check_tries(self.samples, "the distribution attack's samples")
        for name in ("lbd", "lr"):
            setattr(self, name, check_non_negative(getattr(self, name), f"the distribution attack's {name}"))
        self.betas = check_betas(self.betas, "the distribution attack's betas")

    def settings(self) -> dict:
        return {"norm": "linf", "epsilon": self.epsilon, "steps": self.steps,
                "samples": self.samples, "optimizer": "adam", "lr": self.lr,
                "betas": list(self.betas), "lambda": self.lbd, "loss": "cross_entropy",
                "broken_if": f"any of {self.samples} samples of the fitted distribution is misclassified"}

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor,
            example_ids: torch.Tensor) -> AttackOutcome:
        batch, k = len(x), self.samples
        y_k = y.repeat(k)
        losses: List[torch.Tensor] = []
        correct: List[torch.Tensor] = []

        def score(z: torch.Tensor) -> torch.Tensor:
            logits = ctx.logits(z)
            loss = cross_entropy(logits, y_k)
            losses.append(_sample_mean(loss.detach().view(k, batch)))
            correct.append(classified(logits.detach(), y_k).view(k, batch))
            return loss

        seed = stream_seed(ctx.seed, "dist")

        def noise(draw: int) -> torch.Tensor:
            return per_example_normals(x, example_ids, seed, draw, k)

        with eval_mode(ctx.model):
            fit = fit_distribution(score, x.detach(), epsilon=self.epsilon, steps=self.steps,
                                   num_samples=k, lbd=self.lbd, lr=self.lr, betas=self.betas,
                                   noise=noise)
            samples = fit.sample(x.detach(), self.epsilon, num_samples=k, noise=noise(self.steps))
            with torch.no_grad():
                score(samples.flatten(0, 1))
        final = correct[-1]
        first_broken = (~final).float().argmax(0)  # the first misclassified sample, else 0
        x_adv = samples[first_broken, torch.arange(batch, device=x.device)]
        trace = {"loss": torch.stack(losses).cpu(),
                 "sample_correct": torch.stack([c.sum(0) for c in correct]).cpu(),
                 "correct": torch.stack([c.all(0) for c in correct]).cpu()}
        return AttackOutcome(final.all(0).cpu(), x_adv, trace=trace)


def _sample_mean(per_sample: torch.Tensor) -> torch.Tensor:
    """(k, B) -> (B,): each example's mean over its k samples, added in sample order.

    torch's mean(0) sums a (k, 1) column as contiguous memory (vectorised partial sums) and a
    (k, B) matrix row by row, so the last bits of the mean would depend on the batch size.
    """
    total = per_sample[0].clone()
    for row in per_sample[1:]:
        total += row
    return total / len(per_sample)


@dataclass
class TransferAttack(Attack):
    """Black-box transfer: PGD crafted on ctx.source_model, scored on ctx.model."""

    epsilon: float
    steps: int = TRANSFER_STEPS
    step_size: Optional[float] = None
    name: str = "transfer"

    def __post_init__(self):
        self.epsilon = check_epsilon(self.epsilon)
        self.inner = pgd_attack(self.epsilon, self.steps, self.step_size, stream="transfer")

    def settings(self) -> dict:
        return {**self.inner.settings(), "crafted_on": "source model", "scored_on": "evaluated model"}

    def unavailable(self, ctx: AttackContext) -> Optional[str]:
        if ctx.source_model is None:
            return "no source model (source_model= / --source-checkpoint / --source-model) to craft examples on"
        if ctx.pool_x is not None:
            # A source that gives no finite logit gives no gradient: the attack would be its random
            # start alone, scored as a transfer attack (the sanity checks look at the evaluated model).
            probe = ctx.pool_x[:FEATURE_SPLIT_PROBE]
            probe = probe.to(model_device(ctx.source_model, probe.device))
            with eval_mode(ctx.source_model), torch.no_grad():
                if not torch.isfinite(ctx.logits(probe, ctx.source_model)).any():
                    return ("the source model's logits are not finite (NaN or inf) on the evaluated inputs, so it "
                            "gives no gradient to craft examples with")
        return None

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor,
            example_ids: torch.Tensor) -> AttackOutcome:
        crafted = self.inner.run(ctx, x, y, example_ids, model=ctx.source_model)
        with eval_mode(ctx.model), torch.no_grad():
            correct = classified(ctx.logits(crafted.x_adv), y).cpu()
        return AttackOutcome(correct, crafted.x_adv)


def shortfall(attacks: Iterable[Attack], num_classes: int, shape: Tuple[int, ...]) -> Optional[str]:
    """Why the first of `attacks` that cannot run on a model of `num_classes` logits and inputs of
    `shape` cannot, else None: checked before any of them runs."""
    problems = (attack.shortfall(num_classes, shape) for attack in attacks)
    return next((problem for problem in problems if problem is not None), None)


def make_attack(name: str, epsilon: float, *, dist_steps: int = DIST_STEPS,
                dist_samples: int = DIST_SAMPLES, dist_lambda: float = DIST_LAMBDA,
                feature_targets: int = FEATURE_TARGETS, cw_steps: int = CW_STEPS) -> Attack:
    """The attack called `name` (see ATTACK_NAMES) with the paper's settings for `epsilon`
    (AutoAttack's attacks with the reference implementation's)."""
    key = canonical_name(name)
    epsilon = check_epsilon(epsilon)
    if key in AUTOATTACK_NAMES:
        from .autoattack import make_component  # autoattack builds on this module's classes

        return make_component(key, epsilon)
    steps = pgd_steps(key)
    if steps is not None:
        return pgd_attack(epsilon, steps)
    if key == "fgsm":
        return fgsm_attack(epsilon)
    if key == "mim":
        return mim_attack(epsilon)
    if key == "cw":
        return cw_attack(epsilon, steps=cw_steps)
    if key == "feature":
        return FeatureAttack(epsilon, targets=feature_targets)
    if key == "dist":
        return DistributionAttack(epsilon, steps=dist_steps, samples=dist_samples, lbd=dist_lambda)
    return TransferAttack(epsilon)


# ----------------------------------------------------------------------------- functional API


def _perturb(attack: Attack, model, x, y, seed, example_ids, precision, **context):
    return attack.perturb(model, x, y, seed=seed, example_ids=example_ids, precision=precision,
                          **context)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float, *,
         precision: str = "fp32") -> torch.Tensor:
    """clamp(x + epsilon * sign(grad CE), 0, 1)."""
    return _perturb(fgsm_attack(epsilon), model, x, y, 0, None, precision)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float, steps: int = 20, *,
        step_size: Optional[float] = None, seed: int = 0,
        example_ids: Optional[torch.Tensor] = None, precision: str = "fp32") -> torch.Tensor:
    """PGD-steps on cross-entropy from a per-example U(-eps, eps) start."""
    return _perturb(pgd_attack(epsilon, steps, step_size), model, x, y, seed, example_ids, precision)


def mim(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float, steps: int = MIM_STEPS,
        *, decay: float = MIM_DECAY, step_size: Optional[float] = None, seed: int = 0,
        example_ids: Optional[torch.Tensor] = None, precision: str = "fp32") -> torch.Tensor:
    """The momentum iterative method (decay 1.0, normalised gradient)."""
    return _perturb(mim_attack(epsilon, steps, decay, step_size), model, x, y, seed, example_ids,
                    precision)


def cw(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float, steps: int = CW_STEPS,
       *, kappa: float = CW_KAPPA, step_size: Optional[float] = None, seed: int = 0,
       example_ids: Optional[torch.Tensor] = None, precision: str = "fp32") -> torch.Tensor:
    """PGD on the C&W margin loss (kappa 50)."""
    return _perturb(cw_attack(epsilon, steps, kappa, step_size), model, x, y, seed, example_ids,
                    precision)


def feature_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float, *,
                   targets: int = FEATURE_TARGETS, steps: int = FEATURE_STEPS,
                   pool_x: Optional[torch.Tensor] = None, pool_y: Optional[torch.Tensor] = None,
                   seed: int = 0, example_ids: Optional[torch.Tensor] = None,
                   precision: str = "fp32", batch_size: int = 256) -> AttackOutcome:
    """FeaAttack; returns the outcome (per-example `correct` and an adversarial `x_adv`)."""
    attack = FeatureAttack(epsilon, targets=targets, steps=steps)
    ctx = AttackContext(model, seed=seed, precision=precision, pool_x=pool_x, pool_y=pool_y,
                        batch_size=batch_size)
    return attack.run_checked(ctx, x, y, example_ids)


def transfer(source_model: nn.Module, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             epsilon: float, *, steps: int = TRANSFER_STEPS, seed: int = 0,
             example_ids: Optional[torch.Tensor] = None, precision: str = "fp32") -> AttackOutcome:
    """PGD-steps crafted on source_model; `correct` is measured on model."""
    attack = TransferAttack(epsilon, steps=steps)
    ctx = AttackContext(model, seed=seed, precision=precision, source_model=source_model)
    return attack.run_checked(ctx, x, y, example_ids)
