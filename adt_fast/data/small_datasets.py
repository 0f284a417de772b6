"""Datasets that need no download: sklearn's 8x8 digits and a generated synthetic set.

Both exist so the whole pipeline (training, attacks, the CLI) can be exercised on a laptop CPU in
seconds; readers return ``(images float32 (N, C, H, W) in [0, 1], labels int64 (N,))``.
"""

from __future__ import annotations

import numpy as np

from .errors import MissingDependencyError

DIGITS_TRAIN_FRACTION = 0.8
DIGITS_SPLIT_SEED = 0
DIGITS_MAX_PIXEL = 16.0

SYNTHETIC_SIZES = {"train": 500, "test": 100}
SYNTHETIC_NUM_CLASSES = 10
SYNTHETIC_SHAPE = (3, 8, 8)
SYNTHETIC_TEXTURE_AMPLITUDE = 0.25
SYNTHETIC_NOISE_STD = 0.15
_SPLIT_STREAMS = {"train": 1, "test": 2}


def read_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 1,797 digits (pixel values 0..16), split 80/20 by a fixed permutation."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise MissingDependencyError("the digits dataset", "scikit-learn") from error
    bunch = load_digits()
    images = (bunch.images / DIGITS_MAX_PIXEL).astype(np.float32)[:, None]
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(labels))
    num_train = round(DIGITS_TRAIN_FRACTION * len(labels))
    chosen = order[:num_train] if split == "train" else order[num_train:]
    return np.ascontiguousarray(images[chosen]), labels[chosen]


def make_synthetic(split: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy copies of one prototype per class, the same prototypes for both splits.

    A prototype is a class colour plus a coarse 2x2-block texture of +-amplitude, so both a
    pooled CNN (colour) and a nearest-class-mean classifier (pixels) can separate the classes;
    per-pixel Gaussian noise keeps it from being trivial. Deterministic given ``seed``.
    """
    if split not in SYNTHETIC_SIZES:
        raise ValueError(f"split must be one of {', '.join(SYNTHETIC_SIZES)}, got {split!r}")
    channels, height, width = SYNTHETIC_SHAPE
    prototype_rng = np.random.default_rng([seed, 0])
    colours = prototype_rng.uniform(0.2, 0.8, size=(SYNTHETIC_NUM_CLASSES, channels, 1, 1))
    coarse_signs = prototype_rng.choice([-1.0, 1.0], size=(SYNTHETIC_NUM_CLASSES, channels, 2, 2))
    textures = np.kron(coarse_signs, np.ones((1, 1, height // 2, width // 2)))
    prototypes = colours + SYNTHETIC_TEXTURE_AMPLITUDE * textures

    sample_rng = np.random.default_rng([seed, _SPLIT_STREAMS[split]])
    num_examples = SYNTHETIC_SIZES[split]
    labels = sample_rng.permutation(np.arange(num_examples) % SYNTHETIC_NUM_CLASSES).astype(np.int64)
    noise = sample_rng.normal(0.0, SYNTHETIC_NOISE_STD, size=(num_examples, *SYNTHETIC_SHAPE))
    images = np.clip(prototypes[labels] + noise, 0.0, 1.0).astype(np.float32)
    return images, labels
