"""AutoAttack (Croce & Hein, ICML 2020) on the shared engine: APGD-CE, APGD-T, FAB-T, Square.

    apgd-ce     APGD on the cross-entropy, 100 steps, 1 restart
    apgd-dlr    APGD on the DLR loss, 100 steps, 1 restart (the "plus" and "rand" versions' attack)
    apgd-t      APGD on the targeted DLR loss, for each of the 9 classes with the highest clean
                logits after the top one, 100 steps each
    fab-t       targeted FAB (Croce & Hein, ICML 2020b), the same 9 targets, 100 steps each
    square      Square Attack (Andriushchenko et al., ECCV 2020), 5,000 queries, p_init 0.8
    autoattack  the standard version: apgd-ce, apgd-t, fab-t, square, each on the points that
                are still robust after the previous ones
    autoattack-fast  apgd-ce, then apgd-t

APGD is a step rule of the engine (:func:`adt_fast.attacks.engine.apgd`); FAB and Square have
their own steps (whose iterates stay in the ball by construction) but share the context's
forward (precision), eval mode and the engine's per-example random streams (keyed by
(seed, attack, example id)), so no result depends on batch size or order. Every attack runs
only on the points the model classifies correctly (the others are already broken), as the
reference implementation does. See docs/evaluation.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch

from ..checks import check_finite, check_steps, check_tries, shown
from .engine import apgd, classified, eval_mode, input_gradient, per_example_start, per_example_words
from .losses import DLR_CLASSES, DLR_TARGETED_CLASSES, cross_entropy, cw_margin, dlr, dlr_targeted
from .suite import Attack, AttackContext, AttackOutcome, check_epsilon, stream_seed

APGD_STEPS, APGD_RESTARTS, APGD_RHO, APGD_MOMENTUM = 100, 1, 0.75, 0.75
APGD_NAMES = ("apgd-ce", "apgd-dlr", "apgd-t")
TARGETS = 9
FAB_STEPS, FAB_ALPHA_MAX, FAB_ETA, FAB_BETA = 100, 0.1, 1.05, 0.9
SQUARE_QUERIES, SQUARE_P_INIT = 5000, 0.8
# Square's redraws of the signs of a square that would not move its point (the reference redraws
# until one does; one of two grayscale draws would not, late in the search)
SQUARE_REDRAWS = 8
_WORD_BLOCK = 256  # Square's random words are drawn for this many queries at a time
COMPONENTS = {"autoattack": ("apgd-ce", "apgd-t", "fab-t", "square"),
              "autoattack-fast": ("apgd-ce", "apgd-t")}
# Attacks that follow the input gradient (the gradient-masking checks compare Square with them).
GRADIENT_COMPONENTS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t")


def _clean(ctx: AttackContext, attack: Attack, x: torch.Tensor, y: torch.Tensor):
    """The clean logits and which examples the model gets right (the ones worth attacking).

    The first forward of every attack here: a model with too few classes for `attack` is
    refused before any step (`evaluate` checks this up front; this covers a direct run).
    """
    with torch.no_grad():
        logits = ctx.logits(x)
    problem = attack.too_few_classes(logits.shape[1])
    if problem is not None:
        raise ValueError(problem)
    return logits, classified(logits, y)


def _check_interval(value, name: str, low: float, high: float, *, low_closed: bool = False,
                    high_closed: bool = True) -> float:
    """A finite number (not a bool) in the interval; a ValueError naming `name` otherwise: these
    settings are fractions or factors whose every value outside it runs, with wrong results."""
    value = check_finite(value, name)
    if not ((low <= value if low_closed else low < value) and (value <= high if high_closed else value < high)):
        raise ValueError(f"{name} must lie in {'[' if low_closed else '('}{low:g}, {high:g}"
                         f"{']' if high_closed else ')'}, got {value!r}")
    return value


def _targets(logits: torch.Tensor, count: int) -> torch.Tensor:
    """(B, count): the classes with the 2nd, 3rd, ... highest clean logits (APGD-T, FAB-T)."""
    return logits.argsort(dim=1, descending=True)[:, 1:count + 1]


def _targets_need(count: int) -> Tuple[int, str]:
    """The classes that `count` targets beside the predicted class need, and why."""
    return count + 1, f"it targets the {count} classes with the highest clean logits after the top one"


class _Tries:
    """Bookkeeping for attacks that make several tries per example (restarts, targets).

    Each try runs only on the examples that are still robust; a broken example keeps the
    adversarial input of the try that broke it.
    """

    def __init__(self, x: torch.Tensor, robust: torch.Tensor):
        self.robust = robust.clone()
        self.x_adv = x.detach().clone()

    def alive(self) -> torch.Tensor:
        return self.robust.nonzero().squeeze(1)

    def record(self, index: torch.Tensor, broken: torch.Tensor, x_adv: torch.Tensor) -> None:
        hit = index[broken]
        self.robust[hit] = False
        self.x_adv[hit] = x_adv[broken].to(self.x_adv.dtype)

    def outcome(self, **trace) -> AttackOutcome:
        return AttackOutcome(self.robust.cpu(), self.x_adv, trace=trace)


@dataclass
class APGDAttack(Attack):
    """APGD on the cross-entropy ("ce"), the DLR loss ("dlr") or the targeted DLR ("dlr-targeted").

    The targeted version tries, in turn, each of the `targets` classes with the highest clean
    logits after the top one; every try (target x restart) draws its start from its own
    per-example stream.
    """

    name: str
    epsilon: float
    loss: str = "ce"
    steps: int = APGD_STEPS
    restarts: int = APGD_RESTARTS
    targets: int = TARGETS
    rho: float = APGD_RHO
    momentum: float = APGD_MOMENTUM

    def __post_init__(self):
        self.epsilon = check_epsilon(self.epsilon)
        if self.name not in APGD_NAMES:  # the name keys the attack's random stream
            raise ValueError(f"APGD's name must be one of {', '.join(APGD_NAMES)}, got {self.name!r}")
        if self.loss not in ("ce", "dlr", "dlr-targeted"):
            raise ValueError(f"APGD's loss must be 'ce', 'dlr' or 'dlr-targeted', got {self.loss!r}")
        self.steps = check_steps(self.steps, "APGD's steps")
        self.restarts = check_tries(self.restarts, "APGD's restarts")
        self.targets = check_tries(self.targets, "APGD's targets")
        self.rho = _check_interval(self.rho, "APGD's rho", 0, 1, high_closed=False)
        self.momentum = _check_interval(self.momentum, "APGD's momentum", 0, 1)

    @property
    def targeted(self) -> bool:
        return self.loss == "dlr-targeted"

    def classes_needed(self) -> Optional[Tuple[int, str]]:
        if self.loss == "dlr":
            return DLR_CLASSES, "the DLR loss divides by the gap between the 1st and 3rd largest logits"
        if self.targeted:
            count, why = _targets_need(self.targets)
            if count < DLR_TARGETED_CLASSES:
                return DLR_TARGETED_CLASSES, "the targeted DLR loss reads the 4 largest logits"
            return count, why
        return None

    def settings(self) -> dict:
        out = {"norm": "linf", "epsilon": self.epsilon, "steps": self.steps,
               "restarts": self.restarts, "initial_step_size": 2 * self.epsilon,
               "rho": self.rho, "momentum": self.momentum,
               "loss": {"ce": "cross_entropy", "dlr": "dlr", "dlr-targeted": "dlr_targeted"}[self.loss],
               "broken_if": "any iterate is misclassified"}
        if self.targeted:
            out["targets"] = self.targets
        return out

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor,
            example_ids: torch.Tensor) -> AttackOutcome:
        seed = stream_seed(ctx.seed, self.name)
        tries_per_example = (self.targets if self.targeted else 1) * self.restarts
        with eval_mode(ctx.model):
            logits, correct = _clean(ctx, self, x, y)
            targets = _targets(logits, self.targets) if self.targeted else None
            tries = _Tries(x, correct)
            for target in range(self.targets if self.targeted else 1):
                for restart in range(self.restarts):
                    index = tries.alive()
                    if len(index) == 0:
                        break
                    xs, ys, ids = x[index], y[index], example_ids[index.cpu()]
                    aim = None if targets is None else targets[index, target]
                    start = per_example_start(
                        xs, ids * tries_per_example + target * self.restarts + restart, seed)
                    run = apgd(self._loss_fn(ctx, ys, aim), xs, epsilon=self.epsilon,
                               steps=self.steps, start=start, rho=self.rho, momentum=self.momentum)
                    tries.record(index, run.broken, run.x_adv)
        return tries.outcome()

    def _loss_fn(self, ctx: AttackContext, y: torch.Tensor, target: Optional[torch.Tensor]):
        def loss_and_hit(z: torch.Tensor):
            logits = ctx.logits(z)
            if self.loss == "ce":
                loss = cross_entropy(logits, y)
            elif self.loss == "dlr":
                loss = dlr(logits, y)
            else:
                loss = dlr_targeted(logits, y, target)
            return loss, ~classified(logits.detach(), y)
        return loss_and_hit


def linf_hyperplane_projection(points: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The smallest-l_inf move d per row with w . (points + d) = b and points + d in [0, 1].

    Rows are flattened inputs (B, D). Moving coordinate i by at most lam in the direction that
    raises w . z gains |w_i| * min(lam, room_i), with room_i the distance to the box face on that
    side; the total gain g(lam) is concave, piecewise linear and increasing, so the smallest lam
    with g(lam) = |b - w . points| lies on the segment between two sorted rooms and follows from
    cumulative sums. A hyperplane out of reach inside the box gets the move to the box's
    farthest corner in that direction.
    """
    gap = b - (w * points).sum(1)
    direction = torch.where(gap >= 0, 1.0, -1.0).to(w.dtype)[:, None] * w.sign()
    room = torch.where(direction > 0, 1 - points, points).clamp_min(0)
    weight = w.abs()
    need = gap.abs()
    room_sorted, order = room.sort(dim=1)
    weight_sorted = weight.gather(1, order)
    # gain with lam = room_sorted[:, k]: sum_{i <= k} w_i room_i + room_k * sum_{i > k} w_i
    spent = (weight_sorted * room_sorted).cumsum(1)
    weight_after = weight_sorted.sum(1, keepdim=True) - weight_sorted.cumsum(1)
    gain = spent + room_sorted * weight_after
    k = torch.searchsorted(gain, need[:, None].contiguous()).clamp_max(w.shape[1] - 1)
    spent_before = (spent.gather(1, k) - (weight_sorted * room_sorted).gather(1, k))
    weight_from = weight_after.gather(1, k) + weight_sorted.gather(1, k)
    lam = ((need[:, None] - spent_before) / weight_from.clamp_min(1e-30)).clamp_min(0)
    reachable = gain[:, -1:] >= need[:, None]
    lam = torch.where(reachable, lam, room_sorted[:, -1:])
    return direction * torch.minimum(lam, room) * (w != 0)


@dataclass
class FABAttack(Attack):
    """Targeted FAB, l_inf (Croce & Hein, "Minimally distorted adversarial examples with a fast
    adaptive boundary attack", ICML 2020), as AutoAttack runs it: no random start, 100 steps per
    target. Each step linearises z_t - z_y at the iterate, projects both the iterate and the
    original point onto that hyperplane (inside [0, 1]), and moves to a mix of the two with
    weight alpha = min(|d_iterate| / (|d_iterate| + |d_original|), alpha_max), overshooting by eta;
    after reaching the other side it steps back towards the original by beta. An example is broken
    when the smallest adversarial point found lies within epsilon.
    """

    epsilon: float
    targets: int = TARGETS
    steps: int = FAB_STEPS
    alpha_max: float = FAB_ALPHA_MAX
    eta: float = FAB_ETA
    beta: float = FAB_BETA
    name: str = "fab-t"

    def __post_init__(self):
        self.epsilon = check_epsilon(self.epsilon)
        self.steps = check_steps(self.steps, "FAB's steps")
        self.targets = check_tries(self.targets, "FAB's targets")
        self.alpha_max = _check_interval(self.alpha_max, "FAB's alpha_max", 0, 1, low_closed=True)
        self.eta = _check_interval(self.eta, "FAB's eta (overshoot)", 1, math.inf, low_closed=True, high_closed=False)
        self.beta = _check_interval(self.beta, "FAB's beta (step back)", 0, 1, high_closed=False)

    def settings(self) -> dict:
        return {"norm": "linf", "epsilon": self.epsilon, "steps": self.steps,
                "targets": self.targets, "alpha_max": self.alpha_max, "eta": self.eta,
                "beta": self.beta, "random_start": False,
                "broken_if": "the smallest adversarial point found lies within epsilon"}

    def classes_needed(self) -> Optional[Tuple[int, str]]:
        return _targets_need(self.targets)

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor,
            example_ids: torch.Tensor) -> AttackOutcome:
        with eval_mode(ctx.model):
            logits, correct = _clean(ctx, self, x, y)
            targets = _targets(logits, self.targets)
            tries = _Tries(x, correct)
            for target in range(self.targets):
                index = tries.alive()
                if len(index) == 0:
                    break
                broken, x_adv = self._attack(ctx, x[index], y[index], targets[index, target])
                tries.record(index, broken, x_adv)
        return tries.outcome()

    def _attack(self, ctx, x0, y, target):
        batch = len(x0)
        view = (-1,) + (1,) * (x0.dim() - 1)
        flat0 = x0.detach().flatten(1)
        x1 = flat0.clone()
        best = flat0.clone()
        best_norm = torch.full((batch,), math.inf, device=x0.device, dtype=x0.dtype)
        rows = torch.arange(batch, device=x0.device)
        for _ in range(self.steps):
            z = x1.view_as(x0).detach().requires_grad_(True)
            with torch.enable_grad():
                logits = ctx.logits(z)
                gap = logits[rows, target] - logits[rows, y]
                grad = input_gradient(gap.sum(), z)
            w = torch.nan_to_num(grad.flatten(1), nan=0.0)
            b = (w * x1).sum(1) - gap.detach().to(w.dtype)
            d = linf_hyperplane_projection(torch.cat([x1, flat0]), torch.cat([w, w]), torch.cat([b, b]))
            d_iterate, d_original = d[:batch], d[batch:]
            a_iterate = d_iterate.abs().amax(1).clamp_min(1e-8)
            a_original = d_original.abs().amax(1).clamp_min(1e-8)
            alpha = (a_iterate / (a_iterate + a_original)).clamp(0, self.alpha_max)[:, None]
            x1 = ((x1 + self.eta * d_iterate) * (1 - alpha)
                  + (flat0 + self.eta * d_original) * alpha).clamp(0, 1)
            with torch.no_grad():
                adversarial = ~classified(ctx.logits(x1.view_as(x0)), y)
            norm = (x1 - flat0).abs().amax(1)
            better = adversarial & (norm < best_norm)
            best = torch.where(better[:, None], x1, best)
            best_norm = torch.where(better, norm, best_norm)
            x1 = torch.where(adversarial[:, None], flat0 + self.beta * (x1 - flat0), x1)
        broken = best_norm <= self.epsilon
        return broken, torch.where(broken.view(view), best.view_as(x0), x0)


def square_p(p_init: float, query: int) -> float:
    """Square's schedule for the fraction p of pixels a square covers at `query`.

    The Square Attack paper's halvings after 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000
    queries, not rescaled to the budget: what AutoAttack's standard version runs (it builds Square
    with resc_schedule=False, so its 5,000 queries never reach the last two halvings).
    """
    halvings = sum(query > bound for bound in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    return p_init / 2 ** halvings


@dataclass
class SquareAttack(Attack):
    """Square Attack, l_inf, untargeted, on the margin loss z_y - max_{j != y} z_j. No gradients.

    Starts from vertical stripes (x + epsilon * a random sign per channel and column); each query
    proposes, for every example still robust, a square of side s (from the p schedule) at a
    random position set to x +- epsilon (one random sign per channel), and keeps it if the margin
    drops. Signs that would leave the point unchanged are redrawn, up to SQUARE_REDRAWS times
    (the reference redraws until they change it). The search of an example stops once its margin
    is <= 0, or once a point found is scored wrong at any margin (non-finite logits); it counts as
    broken when the model misclassifies a point found (argmax != y, as for every other attack: at
    an exact tie of the logits the two differ).
    """

    epsilon: float
    queries: int = SQUARE_QUERIES
    p_init: float = SQUARE_P_INIT
    name: str = "square"

    def __post_init__(self):
        self.epsilon = check_epsilon(self.epsilon)
        self.queries = check_steps(self.queries, "Square's queries")
        self.p_init = _check_interval(self.p_init, "Square's p_init", 0, 1)

    def settings(self) -> dict:
        return {"norm": "linf", "epsilon": self.epsilon, "queries": self.queries,
                "p_init": self.p_init, "loss": "margin", "gradients": False,
                "broken_if": "some query's point is misclassified (argmax != y)"}

    def input_problem(self, shape: Tuple[int, ...]) -> Optional[str]:
        if len(shape) != 4:
            return f"{self.name!r} ({self.label}) needs images (N, C, H, W), got shape {shape}"
        if shape[1] > 64:
            return (f"{self.name!r} ({self.label}) draws one sign per channel from 64 random bits; the "
                    f"inputs have {shape[1]} channels")
        return None

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor,
            example_ids: torch.Tensor) -> AttackOutcome:
        channels, height, width = x.shape[1:]
        seed = stream_seed(ctx.seed, self.name)
        with eval_mode(ctx.model), torch.no_grad():
            stripes = per_example_start(x, example_ids, seed)[:, :, :1, :].sign()
            stripes = torch.where(stripes == 0, torch.ones_like(stripes), stripes)
            correct = _clean(ctx, self, x, y)[1]
            # examples the model already gets wrong are broken by x itself
            x_best = torch.where(correct.view(-1, 1, 1, 1),
                                 torch.clamp(x + self.epsilon * stripes, 0, 1), x)
            margin, wrong = self._margin(ctx, x_best, y)
            margin = torch.where(correct, margin, torch.full_like(margin, -1.0))
            wrong = wrong | ~correct
            rows = torch.arange(height, device=x.device).view(1, 1, -1, 1)
            cols = torch.arange(width, device=x.device).view(1, 1, 1, -1)
            ids = example_ids.to(x.device)
            for query in range(self.queries):
                # searching goes on while the margin is above 0 and no point found is scored wrong
                # (non-finite logits are wrong at any margin: +inf for y gives an infinite one)
                index = ((margin > 0) & ~wrong).nonzero().squeeze(1)
                if len(index) == 0:
                    break
                if query % _WORD_BLOCK == 0:
                    block = per_example_words(example_ids, seed, torch.arange(
                        query, min(query + _WORD_BLOCK, self.queries)), x.device)
                p = square_p(self.p_init, query)
                # the reference's min(max(s, 1), h - 1): the square never covers a whole side
                side = max(1, min(int(round(math.sqrt(p * height * width))), height - 1, width - 1))
                words = block[index, query % _WORD_BLOCK]
                top = (words[:, 0] % (height - side + 1)).view(-1, 1, 1, 1)
                left = (words[:, 1] % (width - side + 1)).view(-1, 1, 1, 1)
                inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
                x_here, current = x[index], x_best[index]
                shifted = self._shifted(x_here, words)
                for attempt in range(1, SQUARE_REDRAWS + 1):
                    # as the reference, new signs while the square would leave the point as it is
                    # (a wasted query), from the example's own words: the batch plays no part
                    stale = torch.where(inside, shifted == current, True).flatten(1).all(1)
                    if not bool(stale.any()):
                        break
                    redraw = per_example_words(ids[index], seed, [query], x.device, attempt)[:, 0]
                    shifted = torch.where(stale.view(-1, 1, 1, 1), self._shifted(x_here, redraw), shifted)
                # inside the square x +- epsilon, outside the best point: in the ball already
                proposal = torch.where(inside, shifted, current)
                new_margin, new_wrong = self._margin(ctx, proposal, y[index])
                # a lower margin, or a point the model cannot classify (NaN logits: no margin)
                better = (new_margin < margin[index]) | new_wrong
                margin[index] = torch.where(better, new_margin, margin[index])
                wrong[index] = torch.where(better, new_wrong, wrong[index])
                x_best[index] = torch.where(better.view(-1, 1, 1, 1), proposal, current)
            # The search stops at margin <= 0, as the reference's does; a point counts as broken when
            # the model misclassifies it (argmax), as for every other attack: at an exact tie of the
            # logits the two differ. Under no_grad: an x that requires grad must not come back in x_adv's graph.
            x_adv = torch.where(wrong.view(-1, 1, 1, 1), x_best, x)
        return AttackOutcome((~wrong).cpu(), x_adv)

    def _shifted(self, x: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """x + epsilon * one sign per channel (bit c of words 2, 3), clamped to [0, 1]."""
        bits = torch.arange(x.shape[1], device=x.device)
        sign_bits = torch.where(bits < 32, words[:, 2:3] >> (bits % 32), words[:, 3:4] >> (bits % 32)) & 1
        signs = (2 * sign_bits - 1).to(x.dtype).view(len(x), -1, 1, 1)
        return torch.clamp(x + self.epsilon * signs, 0, 1)

    @staticmethod
    def _margin(ctx: AttackContext, z: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The margin the search lowers, and whether the model misclassifies z, from one forward."""
        logits = ctx.logits(z)
        return -cw_margin(logits, y, float("inf")), ~classified(logits, y)


@dataclass
class AutoAttack(Attack):
    """AutoAttack's standard version ("autoattack") or APGD-CE + APGD-T ("autoattack-fast").

    Each component attacks only the points that are still robust after the previous ones; the
    outcome's trace holds, per component, which points were still robust after it
    ("robust_after:<component>"), from which the report takes each component's accuracy on the
    points it saw.
    """

    name: str
    epsilon: float
    components: List[Attack] = field(default_factory=list)

    def __post_init__(self):
        self.epsilon = check_epsilon(self.epsilon)
        if self.name not in COMPONENTS:
            raise ValueError(f"AutoAttack's version must be one of {', '.join(COMPONENTS)}, got {self.name!r}")
        if not self.components:
            self.components = [make_component(name, self.epsilon) for name in COMPONENTS[self.name]]
        for attack in self.components:
            if not isinstance(attack, Attack):
                raise TypeError(f"AutoAttack's components must be attacks such as make_attack('apgd-ce', epsilon), "
                                f"got {type(attack).__name__} {shown(attack)}")

    def settings(self) -> dict:
        return {"norm": "linf", "epsilon": self.epsilon,
                "version": "standard" if self.name == "autoattack" else "fast (apgd-ce, apgd-t)",
                "components": {attack.name: attack.settings() for attack in self.components},
                "broken_if": "any component breaks the point; each runs only on the points the "
                             "previous ones left robust"}

    def classes_needed(self) -> Optional[Tuple[int, str]]:
        """What the most demanding component needs: any component may get to run."""
        needs = [(need, attack) for attack in self.components
                 if (need := attack.classes_needed()) is not None]
        if not needs:
            return None
        (count, why), attack = max(needs, key=lambda pair: pair[0][0])
        return count, f"its {attack.label}: {why}"

    def too_few_classes(self, num_classes: int) -> Optional[str]:
        """The base class's reason, and which of the components can run instead."""
        problem = super().too_few_classes(num_classes)
        able = [attack.name for attack in self.components if attack.too_few_classes(num_classes) is None]
        if problem is None or not able:
            return problem
        return f"{problem}; of its attacks, {', '.join(able)} can run on it: name them in the attacks instead"

    def input_problem(self, shape: Tuple[int, ...]) -> Optional[str]:
        """The first component's that cannot take them: any component may get to run."""
        return next((f"its {problem}" for attack in self.components
                     if (problem := attack.input_problem(shape)) is not None), None)

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor,
            example_ids: torch.Tensor) -> AttackOutcome:
        with eval_mode(ctx.model):
            tries = _Tries(x, _clean(ctx, self, x, y)[1])
        trace = {"robust_before": tries.robust.cpu().clone()}
        for attack in self.components:
            index = tries.alive()
            if len(index):
                outcome = attack.run(ctx, x[index], y[index], example_ids[index.cpu()])
                tries.record(index, ~outcome.correct.to(index.device), outcome.x_adv)
            trace[f"robust_after:{attack.name}"] = tries.robust.cpu().clone()
        return tries.outcome(**trace)


def make_component(name: str, epsilon: float) -> Attack:
    """One of AutoAttack's attacks, or an AutoAttack version, with the reference's settings."""
    if name == "apgd-ce":
        return APGDAttack("apgd-ce", epsilon, loss="ce")
    if name == "apgd-dlr":
        return APGDAttack("apgd-dlr", epsilon, loss="dlr")
    if name == "apgd-t":
        return APGDAttack("apgd-t", epsilon, loss="dlr-targeted")
    if name == "fab-t":
        return FABAttack(epsilon)
    if name == "square":
        return SquareAttack(epsilon)
    if name in COMPONENTS:
        return AutoAttack(name, epsilon)
    raise ValueError(f"not an AutoAttack attack: {name!r}")
