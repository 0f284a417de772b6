"""`evaluate`: run the attack suite on a model and return a :class:`Report`.

The loop is batch-major: each batch is moved to the device once, and every attack of the suite
runs on it; per-example correctness masks are kept for every attack, so the worst case (Eq. 12)
is exact, not a bound. The PGD attacks share one trajectory: PGD-20's result is the 20th iterate
of PGD-100's (both start from the same per-example random start, so this is exactly what a
separate PGD-20 run would give), and the same run gives the accuracy-against-steps curve.
"""

from __future__ import annotations

import math
import sys
from typing import Dict, Iterable, List, Optional, Sequence, Union
from warnings import warn

import torch
from torch import nn

from ..checks import MAX_ATTACK_TRIES, check_int, check_non_negative, check_steps, check_tries
from ..devices import bf16_emulation_warning
from ..distributed import World, current as dist_world
from .autoattack import COMPONENTS as AUTOATTACK_VERSIONS, GRADIENT_COMPONENTS
from .engine import classified, eval_mode, input_gradient, model_device
from .inputs import PROBE_INPUTS, check_batch, check_classes, check_module
from .losses import cross_entropy
from .report import Report, attack_order, sanity_warnings, worst_case
from .suite import (CW_STEPS, DEFAULT_ATTACKS, DIST_LAMBDA, DIST_SAMPLES, DIST_STEPS, FEATURE_SPLIT_PROBE,
                    FEATURE_TARGETS, MAX_SEED, PAPER_ATTACKS, PAPER_CW_STEPS, PAPER_FEATURE_TARGETS,
                    AttackContext, budget_problem, check_epsilon, check_precision,
                    default_step_size, example_id_tensor, gives_other_logits, make_attack, parse_attacks,
                    pgd_attack, pgd_steps, shortfall)

DEFAULT_EPSILON_CURVE = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)
DEFAULT_EPSILON = 8 / 255  # the CIFAR-10 budget of the paper and of RobustBench
PROTOCOLS = ("default", "paper")
EPSILON_CURVE_STEPS = 20


class _DefaultCurve:
    """evaluate's epsilon_curve left out: default_epsilon_curve(epsilon), where a curve given (even
    DEFAULT_EPSILON_CURVE itself) is checked whole."""

    def __repr__(self) -> str:
        return "<DEFAULT_EPSILON_CURVE's multiples whose budget the attacks take>"


_DEFAULT_CURVE = _DefaultCurve()


def _check_on_device(model: nn.Module, device: torch.device, name: str) -> None:
    """evaluate moves the batches, not the models: a model elsewhere is the caller's to move."""
    where = model_device(model, device)
    if where.type != device.type or None not in (where.index, device.index) and where.index != device.index:
        raise ValueError(f"{name} is on {where} but device={str(device)!r}: move it there first "
                         f"({name}.to({str(device)!r})), or leave device unset to run where the model is")


def check_multiples(multiples: Optional[Iterable[float]]) -> List[float]:
    """The curve's multiples of epsilon, sorted and distinct, each finite and >= 0: what holds
    whatever epsilon is, which --epsilon-curve checks as it is parsed. At most MAX_ATTACK_TRIES of
    them: each is a PGD-20 run over every example, a try as an attack's restart or target is."""
    if isinstance(multiples, (str, bytes)):
        raise ValueError(f"epsilon_curve is a sequence of numbers (multiples of epsilon), not the string {multiples!r}")
    try:
        # + 0.0: a multiple of -0 is a budget of 0, not "-0" in the report
        checked = sorted({float(m) + 0.0 for m in (() if multiples is None else multiples)})
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"epsilon_curve holds numbers (multiples of epsilon), got {multiples!r}") from None
    check_int(len(checked), f"the number of epsilon_curve's distinct multiples (each a PGD-{EPSILON_CURVE_STEPS} "
                            f"run over every example)", 0, MAX_ATTACK_TRIES)
    for m in checked:
        if not math.isfinite(m) or m < 0:
            raise ValueError(f"epsilon_curve holds finite multiples of epsilon >= 0, got {m:g}")
    return checked


def check_epsilon_curve(multiples: Optional[Iterable[float]], epsilon: float) -> List[float]:
    """check_multiples's multiples, each a budget m * epsilon in [0, 1]."""
    checked = check_multiples(multiples)
    for m in checked:
        problem = budget_problem(m * epsilon)
        if problem is not None:
            # 12 digits: a budget just above 1 must not print as "1, above 1"
            raise ValueError(f"epsilon_curve's multiple {m:.12g} of epsilon {epsilon:.12g} is a budget of "
                             f"{m * epsilon:.12g}, {problem}")
    return checked


def default_epsilon_curve(epsilon: float) -> List[float]:
    """DEFAULT_EPSILON_CURVE's multiples whose budget the attacks take, so that a large epsilon
    (0.6, or 1) or a tiny one is not refused for a curve the caller never asked for."""
    return [m for m in DEFAULT_EPSILON_CURVE if budget_problem(m * epsilon) is None]


def check_attacks_can_run(names: Sequence[str], device: torch.device, dtype: torch.dtype) -> None:
    """The distribution attack samples with the op: some backend must serve this device now."""
    from ..ops import dispatch

    if "dist" in names:
        try:
            dispatch.select("auto", device, dtype)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"the distribution attack cannot run on {device}: {err}") from None


def _input_gradients(ctx: AttackContext, x: torch.Tensor, y: torch.Tensor):
    """Per example: is the CE input gradient at x all zero, does it hold NaN/inf; NaN logits."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = ctx.logits(x)
        grad = input_gradient(cross_entropy(logits, y).sum(), x)
    grad = grad.flatten(1)
    finite = torch.isfinite(grad).all(1)
    zero = finite & (grad == 0).all(1)
    bad_logits = ~torch.isfinite(logits.detach()).all(1)
    correct = classified(logits.detach(), y)
    return correct.cpu(), zero.cpu(), (~finite).cpu(), bad_logits.cpu()


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             epsilon: float = DEFAULT_EPSILON,
             attacks: Union[None, str, Sequence[str]] = None, seed: int = 0,
             source_model: Optional[nn.Module] = None, batch_size: int = 256,
             example_ids: Optional[torch.Tensor] = None, dist_steps: int = DIST_STEPS,
             dist_samples: int = DIST_SAMPLES, dist_lambda: float = DIST_LAMBDA,
             feature_targets: Optional[int] = None, cw_steps: Optional[int] = None,
             protocol: str = "default", precision: str = "fp32",
             epsilon_curve: Union[None, Iterable[float], _DefaultCurve] = _DEFAULT_CURVE,
             device: Union[None, str, torch.device] = None, progress: bool = False,
             distributed: bool = False) -> Report:
    """Attack `model` on (x, y) with every attack in `attacks` and report robust accuracies.

    model: any nn.Module mapping inputs in [0, 1] to logits (FeaAttack also needs
        .features/.head, and is skipped with a reason otherwise); it is put in eval mode and its
        modes are restored afterwards.
    epsilon: the l_inf budget (default 8/255, the paper's and RobustBench's CIFAR-10 budget).
    attacks: names or a comma-separated string (see adt_fast.attacks.suite.ATTACK_NAMES;
        default: the paper's suite, DEFAULT_ATTACKS); "transfer" is added when source_model is
        given. "autoattack" runs AutoAttack's standard version, "autoattack-fast" APGD-CE + APGD-T.
    protocol: "paper" runs the six columns of Tables 9-11 (plus any `attacks` given) with the
        authors' settings: FeaAttack with 200 targets per input, C&W with 20 steps; the report
        then also holds the paper's A_rob over exactly those six. FeaAttack's features stay the
        map before pooling (appendix C.5), where the authors' code used the pooled vector.
    feature_targets, cw_steps: FeaAttack's targets per input (default 5) and C&W's steps
        (default 30); fixed by protocol="paper".
    example_ids: one id per example (default 0..n-1; pass dataset indices) keying the random
        starts and FeaAttack targets, so results do not depend on batching.
    epsilon_curve: multiples of epsilon at which to run PGD-20 for the accuracy-against-epsilon
        curve (empty or None: no curve); by default those of DEFAULT_EPSILON_CURVE whose budget
        m * epsilon is at most 1, while a multiple given beyond that is refused.
    precision: "fp32" or "bf16" (autocast around the model's forward).
    device: where to run (default: the model's device), where the models must already be; x and y
        may live anywhere.
    distributed: split the batches over the ranks of torch.distributed's initialised group (every
        rank must call, with the same arguments) and gather the per-example results; every rank
        returns the full report, identical to a single process's (the batches are the same, and
        each example's attack is keyed by its id).
    """
    check_module(model, "model")
    if source_model is not None:
        check_module(source_model, "source_model")
    epsilon = check_epsilon(epsilon)
    check_precision(precision)
    y = check_batch(x, y)
    batch_size = check_int(batch_size, "batch_size")
    names, feature_targets, cw_steps = _protocol(protocol, attacks, feature_targets, cw_steps)
    dist_steps = check_steps(dist_steps, "dist_steps")
    dist_samples = check_tries(dist_samples, "dist_samples")
    seed = check_int(seed, "seed", 0, MAX_SEED)
    dist_lambda = check_non_negative(dist_lambda, "dist_lambda")
    if source_model is not None and "transfer" not in names:
        names.append("transfer")
    if "transfer" in names and source_model is None:
        raise ValueError("the 'transfer' attack needs a source model (source_model= in Python, "
                         "--source-checkpoint or --source-model on the command line)")
    if epsilon_curve is _DEFAULT_CURVE:  # not given
        epsilon_curve = default_epsilon_curve(epsilon)
    multiples = check_epsilon_curve(epsilon_curve, epsilon)

    n = len(x)
    ids = example_id_tensor(example_ids, n)
    try:
        device = torch.device(device) if device is not None else model_device(model, x.device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r} ({err})") from None
    _check_on_device(model, device, "model")
    if source_model is not None:
        _check_on_device(source_model, device, "source_model")
    check_attacks_can_run(names, device, x.dtype)
    emulated = bf16_emulation_warning(device) if precision == "bf16" else None
    if emulated:
        warn(emulated, stacklevel=2)

    attacks_asked = {name: make_attack(name, epsilon, dist_steps=dist_steps,
                                       dist_samples=dist_samples, dist_lambda=dist_lambda,
                                       feature_targets=feature_targets, cw_steps=cw_steps)
                     for name in names}
    ctx = AttackContext(model, seed=seed, precision=precision, pool_x=x, pool_y=y,
                        source_model=source_model, batch_size=batch_size)
    num_classes = check_classes(ctx, model, x[:PROBE_INPUTS].to(device), y, "model")
    too_few = shortfall(attacks_asked.values(), num_classes, tuple(x.shape))
    if too_few is not None:
        raise ValueError(f"attacks: {too_few}")
    if source_model is not None:
        check_classes(ctx, source_model, x[:PROBE_INPUTS].to(device), y, "source model")
    # Its draws leave the generators as they were: a seed gives the attacks the same random starts
    # with the check as without it.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        randomised = gives_other_logits(ctx, x[:FEATURE_SPLIT_PROBE].to(device))

    # The suite: every pgdN is served by one PGD run of the largest N.
    pgd_names = [name for name in names if pgd_steps(name) is not None]
    suite = {name: attack for name, attack in attacks_asked.items() if pgd_steps(name) is None}
    skipped = {}
    for name, attack in list(suite.items()):
        reason = attack.unavailable(ctx)
        if reason is not None:
            skipped[name] = reason
            del suite[name]
    trajectory = pgd_attack(epsilon, max(pgd_steps(n_) for n_ in pgd_names)) if pgd_names else None
    settings = {name: attack.settings() for name, attack in attacks_asked.items()}
    for name in skipped:
        settings[name] = {**settings[name], "skipped": skipped[name]}
    reuse_eps = trajectory is not None and trajectory.steps >= EPSILON_CURVE_STEPS
    eps_runs = {m: pgd_attack(m * epsilon, EPSILON_CURVE_STEPS) for m in multiples
                if m > 0 and not (m == 1.0 and reuse_eps)}

    masks: Dict[str, List[torch.Tensor]] = {name: [] for name in names if name not in skipped}
    natural, zero_grad, nonfinite_grad, bad_logits = [], [], [], []
    steps_correct, eps_correct = [], {m: [] for m in eps_runs}
    traces: Dict[str, Dict[str, List[torch.Tensor]]] = {name: {} for name in suite}

    units = len(suite) + (1 if trajectory else 0) + len(eps_runs) + 1
    world = dist_world() if distributed else World()
    batches = world.share(list(range(0, n, batch_size)))
    bar = _progress(total=len(batches) * units, enabled=progress and world.main)
    try:
        with eval_mode(model):
            for begin in batches:
                xb = x[begin:begin + batch_size].to(device)
                yb = y[begin:begin + batch_size].to(device)
                idb = ids[begin:begin + batch_size]
                correct, zero, nonfinite, bad = _input_gradients(ctx, xb, yb)
                natural.append(correct), zero_grad.append(zero), nonfinite_grad.append(nonfinite)
                bad_logits.append(bad)
                bar.update(1)
                if trajectory is not None:
                    bar.set_postfix_str(f"PGD-{trajectory.steps}")
                    outcome = trajectory.run(ctx, xb, yb, idb)
                    steps_correct.append(outcome.iterate_correct)
                    for name in pgd_names:
                        masks[name].append(outcome.iterate_correct[pgd_steps(name)])
                    bar.update(1)
                for name, attack in suite.items():
                    bar.set_postfix_str(attack.label)
                    outcome = attack.run(ctx, xb, yb, idb)
                    masks[name].append(outcome.correct)
                    for key, value in outcome.trace.items():
                        traces[name].setdefault(key, []).append(value)
                    bar.update(1)
                for m, attack in eps_runs.items():
                    bar.set_postfix_str(f"PGD-{EPSILON_CURVE_STEPS} at {m:g} eps")
                    eps_correct[m].append(attack.run(ctx, xb, yb, idb).correct)
                    bar.update(1)
    finally:
        bar.close()
    if world.parallel:
        gathered = world.gather_shares({
            "natural": natural, "zero": zero_grad, "nonfinite": nonfinite_grad, "bad": bad_logits,
            "steps": steps_correct, "masks": masks, "eps": eps_correct, "traces": traces})
        natural, zero_grad, nonfinite_grad = gathered["natural"], gathered["zero"], gathered["nonfinite"]
        bad_logits, steps_correct, masks = gathered["bad"], gathered["steps"], gathered["masks"]
        eps_correct, traces = gathered["eps"], gathered["traces"]

    natural_mask = torch.cat(natural)
    correct = {name: torch.cat(parts) for name, parts in masks.items()}
    worst = worst_case(natural_mask, correct) if correct else None  # no attack ran: no worst case
    zero_count, nonfinite_count = int(torch.cat(zero_grad).sum()), int(torch.cat(nonfinite_grad).sum())
    bad_count = int(torch.cat(bad_logits).sum())

    curves: Dict[str, dict] = {}
    if trajectory is not None:
        per_step = torch.cat(steps_correct, dim=1).sum(1).tolist()
        curves["pgd_steps"] = {"epsilon": epsilon, "step_size": trajectory.step_size,
                               "points": [{"steps": t, "accuracy": count / n}
                                          for t, count in enumerate(per_step)]}
    if multiples:
        points = []
        for m in multiples:
            if m == 0:
                accuracy = _fraction(natural_mask)
            elif m in eps_runs:
                accuracy = _fraction(torch.cat(eps_correct[m]))
            else:
                accuracy = curves["pgd_steps"]["points"][EPSILON_CURVE_STEPS]["accuracy"]
            points.append({"epsilon": m * epsilon, "multiple": m,
                           "step_size": default_step_size(m * epsilon) if m > 0 else 0.0,
                           "accuracy": accuracy})
        curves["pgd_epsilon"] = {"steps": EPSILON_CURVE_STEPS, "points": points}
    dist_trace = traces.get("dist")
    if dist_trace:
        loss = torch.cat(dist_trace["loss"], dim=1).mean(1)
        sample_correct = torch.cat(dist_trace["sample_correct"], dim=1).sum(1).tolist()
        acc = torch.cat(dist_trace["correct"], dim=1).sum(1).tolist()
        curves["dist"] = {"samples": dist_samples,
                          "points": [{"steps": t, "loss": float(loss[t]),
                                      "sample_accuracy": sample_correct[t] / (n * dist_samples),
                                      "accuracy": acc[t] / n} for t in range(len(loss))]}

    stages = {name: {key: torch.cat(parts) for key, parts in traces[name].items()}
              for name in AUTOATTACK_VERSIONS if name in traces}
    for name, stage in stages.items():
        curves[name] = autoattack_curve(stage, n)
    paper = (worst_case(natural_mask, {name: correct[name] for name in PAPER_ATTACKS})
             if all(name in correct for name in PAPER_ATTACKS) else None)

    warnings = [f"{name} skipped: {reason}" for name, reason in skipped.items()]
    if worst is None:
        warnings.append("no attack ran, so there is no robust accuracy: the worst case (Arob) is n/a (null "
                        "in the JSON), not the natural accuracy; ask for an attack that can run")
    warnings += sanity_warnings(natural_mask, correct, zero_gradients=zero_count,
                                nonfinite_gradients=nonfinite_count, nonfinite_logits=bad_count,
                                randomised=randomised, classes_covered=len(torch.unique(y)),
                                num_classes=num_classes, **masking_gains(natural_mask, correct, stages))
    return Report(
        natural_accuracy=_fraction(natural_mask),
        robust_accuracy={name: _fraction(mask) for name, mask in correct.items()},
        worst_case_accuracy=None if worst is None else _fraction(worst),
        paper_worst_case_accuracy=None if paper is None else _fraction(paper),
        protocol=protocol,
        n_examples=n,
        epsilon=epsilon,
        warnings=warnings,
        attacks={name: settings[name] for name in attack_order(list(settings))},
        skipped=skipped,
        curves=curves,
        gradient_check={"loss": "cross_entropy at the natural input",
                        "zero_fraction": zero_count / n, "nonfinite_fraction": nonfinite_count / n,
                        "nonfinite_logits_fraction": bad_count / n},
        seed=seed,
        precision=precision,
        batch_size=batch_size,
        correct={"natural": natural_mask, **correct, **({} if worst is None else {"worst_case": worst}),
                 **({} if paper is None else {"paper_worst_case": paper})},
        example_ids=ids,
    )


def _protocol(protocol: str, attacks, feature_targets: Optional[int], cw_steps: Optional[int]):
    """The attack names, FeaAttack targets and C&W steps that `protocol` asks for."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if protocol == "default":
        names = parse_attacks(DEFAULT_ATTACKS if attacks is None else attacks)
        targets = FEATURE_TARGETS if feature_targets is None else feature_targets
        steps = CW_STEPS if cw_steps is None else cw_steps
    else:
        for value, paper, what in ((feature_targets, PAPER_FEATURE_TARGETS, "feature_targets"),
                                   (cw_steps, PAPER_CW_STEPS, "cw_steps")):
            if value is not None and value != paper:
                raise ValueError(f"protocol 'paper' fixes {what} to {paper}; got {value}")
        extra = [] if attacks is None else parse_attacks(attacks)
        names = list(PAPER_ATTACKS) + [name for name in extra if name not in PAPER_ATTACKS]
        targets, steps = PAPER_FEATURE_TARGETS, PAPER_CW_STEPS
    return names, check_tries(targets, "feature_targets"), check_steps(steps, "cw_steps")


def autoattack_curve(stage: Dict[str, torch.Tensor], n: int) -> dict:
    """Per AutoAttack component: how many points it attacked, how many stayed robust, its own
    accuracy on those points and the running AutoAttack accuracy after it."""
    points, before = [], stage["robust_before"]
    for key, after in stage.items():
        if not key.startswith("robust_after:"):
            continue
        attacked, robust = int(before.sum()), int(after.sum())
        points.append({"attack": key.split(":", 1)[1], "attacked": attacked, "robust": robust,
                       "accuracy_on_attacked": robust / attacked if attacked else None,
                       "accuracy": robust / n})
        before = after
    return {"points": points}


def masking_gains(natural: torch.Tensor, correct: Dict[str, torch.Tensor],
                  stages: Dict[str, Dict[str, torch.Tensor]]) -> Dict[str, int]:
    """How many points Square broke that every gradient attack left robust, and how many
    APGD-T broke that APGD-CE left robust; from AutoAttack's stages and from stand-alone runs."""
    square_gain, targeted_gain = torch.zeros_like(natural), torch.zeros_like(natural)
    for stage in stages.values():
        keys = list(stage)
        if "robust_after:square" in stage:
            before = stage[keys[keys.index("robust_after:square") - 1]]
            square_gain |= before & ~stage["robust_after:square"]
        if "robust_after:apgd-t" in stage and "robust_after:apgd-ce" in stage:
            targeted_gain |= stage["robust_after:apgd-ce"] & ~stage["robust_after:apgd-t"]
    gradient = [correct[name] for name in GRADIENT_COMPONENTS if name in correct]
    if "square" in correct and gradient:
        square_gain |= worst_case(natural, dict(enumerate(gradient))) & ~correct["square"]
    if "apgd-ce" in correct and "apgd-t" in correct:
        targeted_gain |= natural & correct["apgd-ce"] & ~correct["apgd-t"]
    return {"gradient_free_gain": int(square_gain.sum()), "targeted_gain": int(targeted_gain.sum())}


def _fraction(mask: torch.Tensor) -> float:
    """The fraction of True entries, as an exact count / n."""
    return int(mask.sum()) / len(mask)


class _NoProgress:
    def update(self, *_):
        pass

    def set_postfix_str(self, *_):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, desc="adt-fast eval", unit="step", file=sys.stderr, dynamic_ncols=True)
