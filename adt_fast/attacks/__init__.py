"""White-box attacks, the shared iterative engine and the explicit-distribution fit."""

from .distribution import DistributionFit, fit_distribution
from .engine import eval_mode, iterative_attack, per_example_start, project, uniform_start

__all__ = ["DistributionFit", "fit_distribution", "eval_mode", "iterative_attack",
           "per_example_start", "project", "uniform_start"]
