"""White-box and transfer attacks, AutoAttack, the shared iterative engine, the
explicit-distribution fit, and the robustness evaluation (`evaluate` -> `Report`).
See docs/evaluation.md."""

from .autoattack import APGDAttack, AutoAttack, FABAttack, SquareAttack
from .distribution import DistributionFit, fit_distribution
from .engine import (apgd, apgd_checkpoints, eval_mode, iterative_attack, per_example_start,
                     project, uniform_start)
from .evaluation import DEFAULT_EPSILON_CURVE, evaluate
from .report import Report, sanity_warnings, worst_case
from .suite import (ATTACK_NAMES, DEFAULT_ATTACKS, Attack, AttackContext, AttackOutcome,
                    DistributionAttack, FeatureAttack, GradientAttack, TransferAttack, cw,
                    default_step_size, feature_attack, fgsm, make_attack, mim, parse_attacks, pgd,
                    transfer)

__all__ = ["APGDAttack", "AutoAttack", "FABAttack", "SquareAttack", "apgd", "apgd_checkpoints",
           "DistributionFit", "fit_distribution", "eval_mode", "iterative_attack",
           "per_example_start", "project", "uniform_start",
           "evaluate", "Report", "DEFAULT_EPSILON_CURVE", "sanity_warnings", "worst_case",
           "ATTACK_NAMES", "DEFAULT_ATTACKS", "Attack", "AttackContext", "AttackOutcome",
           "GradientAttack", "FeatureAttack", "DistributionAttack", "TransferAttack",
           "make_attack", "parse_attacks", "default_step_size",
           "fgsm", "pgd", "mim", "cw", "feature_attack", "transfer"]
