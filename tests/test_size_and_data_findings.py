"""Findings on sizes the amortised networks are built for, and on the dtypes of data= tensors."""

import re

import numpy as np
import pytest
import torch

from adt_fast import amortized as am
from adt_fast.models.generators import (MAX_IMAGE_PIXELS, MAX_LAYER_WEIGHTS, MAX_NOISE_DIM, PerturbationGenerator,
                                        QNetwork)

_PIXELS = r"^image_size must have at most 268,435,456 pixels \(H\*W, as 16384 x 16384\), got "


# A huge image or noise reached the allocator: (100000, 100000) images in implicit mode asked for
# 10 TB ("DefaultCPUAllocator: can't allocate memory"), noise_dim 10**12 for 2 PB in the q-network,
# and a 2**40 side overflowed inside torch.
@pytest.mark.parametrize("image_size", [(100_000, 100_000), (16_385, 16_384), 2**40, np.int64(2**15)])
def test_an_image_size_past_the_pixel_bound_is_refused_naming_it(image_size):
    for build in (lambda: PerturbationGenerator(3, image_size, "implicit", width=2),
                  lambda: PerturbationGenerator(3, image_size, "explicit", width=2), lambda: QNetwork(3, image_size)):
        with pytest.raises(ValueError, match=_PIXELS + re.escape(repr(image_size)) + "$"):
            build()


@pytest.mark.parametrize("noise_dim", [MAX_NOISE_DIM + 1, 10**12, 2**70])
def test_a_noise_dim_past_the_bound_is_refused_naming_it(noise_dim):
    why = rf"^noise_dim must be an integer from 1 to {MAX_NOISE_DIM}, got {noise_dim}$"
    for build in (lambda: PerturbationGenerator(3, 8, "implicit", noise_dim=noise_dim, width=2),
                  lambda: QNetwork(3, 8, noise_dim=noise_dim), lambda: am.sample_noise(2, noise_dim)):
        with pytest.raises(ValueError, match=why):
            build()


def test_the_bounds_admit_layers_of_max_layer_weights_and_realistic_sizes():
    """At the bounds the largest layer holds MAX_LAYER_WEIGHTS weights (built on the meta device,
    which allocates nothing); digits, CIFAR and ImageNet sizes build as before."""
    side = int(MAX_IMAGE_PIXELS ** 0.5)
    with torch.device("meta"):
        q = QNetwork(3, (side, side), noise_dim=MAX_NOISE_DIM)
        generator = PerturbationGenerator(3, (side, side), "implicit", noise_dim=MAX_NOISE_DIM, width=2)
    assert q.out.weight.numel() == MAX_LAYER_WEIGHTS
    assert max(p.numel() for p in generator.parameters()) == MAX_LAYER_WEIGHTS
    for channels, size in ((1, 8), (3, 32), (3, 224)):
        generator = PerturbationGenerator(channels, size, "implicit", width=2)
        out = generator(torch.zeros(1, 3 * channels, size, size), am.sample_noise(1))
        assert out.shape == (1, channels, size, size) and QNetwork(channels, size).image_size == (size, size)
