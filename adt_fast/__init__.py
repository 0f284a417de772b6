"""adt_fast: fast Adversarial Distributional Training (Dong et al., NeurIPS 2020)."""

from .ops import backends, sample_and_entropy

__version__ = "0.1.0"

__all__ = ["backends", "sample_and_entropy", "load_model", "__version__"]


def load_model(path, device="cpu", factory=None):
    """The trained classifier of a run directory or checkpoint file, in eval mode. A run trained
    with a factory as its arch (--arch MODULE:FACTORY) needs that spec as `factory`: a checkpoint
    never imports code by itself."""
    from .train.checkpoint import load_model as _load_model
    return _load_model(path, device=device, factory=factory)
