"""Training: the methods (standard, AT-PGD, TRADES, ADT_EXP, ...), the loop, runs and checkpoints.

    from adt_fast.train import TrainConfig, fit
    run_dir = fit(TrainConfig(method="adt-exp", dataset="digits", out="runs/digits"))

See docs/training.md.
"""

from .checkpoint import CheckpointError, load_model
from .config import ConfigError, TrainConfig
from .loop import clean_accuracy, fit
from .methods import (METHODS, CEInner, CEOuter, Clean, ComposedMethod, ExplicitDistribution, InnerLoss,
                      Method, MethodSpec, OuterLoss, Perturbation, PGD, Runtime, StepOutput, TradesInner,
                      TradesKLInner, TradesOuter, build_method, method_spec, register_method)
from .runlog import read_metrics

__all__ = [
    "CEInner", "CEOuter", "CheckpointError", "Clean", "ComposedMethod", "ConfigError",
    "ExplicitDistribution", "InnerLoss", "METHODS", "Method", "MethodSpec", "OuterLoss", "PGD",
    "Perturbation", "Runtime", "StepOutput", "TradesInner", "TradesKLInner", "TradesOuter",
    "TrainConfig", "build_method", "clean_accuracy", "fit", "load_model", "method_spec",
    "read_metrics", "register_method",
]
