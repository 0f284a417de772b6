"""The fused tanh-Gaussian sampling / entropy op and its backends."""

from .dispatch import BackendStatus, backends, draw_seed_offset
from .sample_and_entropy import sample_and_entropy

__all__ = ["BackendStatus", "backends", "draw_seed_offset", "sample_and_entropy"]
