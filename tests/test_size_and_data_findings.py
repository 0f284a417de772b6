"""Findings on sizes the amortised networks are built for, and on the dtypes of data= tensors."""

import re

import numpy as np
import pytest
import torch

from adt_fast import amortized as am
from adt_fast.data import DatasetFileError
from adt_fast.models.generators import (MAX_IMAGE_PIXELS, MAX_LAYER_WEIGHTS, MAX_NOISE_DIM, PerturbationGenerator,
                                        QNetwork)
from adt_fast.train import TrainConfig, fit

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


def _quantized(x):
    return torch.quantize_per_tensor(x, 1 / 255, 0, torch.quint8)


# fit(data=...) met these in torch's numpy conversion: a quantized tensor was "TypeError: Got
# unsupported ScalarType QUInt8", complex32 and the sub-byte and bits dtypes the same, float4
# "NotImplementedError: "copy_kernel" not implemented", a nested tensor "Internal error:
# NestedTensorImpl doesn't support sizes" (a jagged one: "convert it with .to_dense()", which nested
# tensors refuse), a conjugated view "Can't call numpy() on Tensor that has
# conjugate bit set"; none named the array.
@pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions.*are deprecated")
@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
@pytest.mark.parametrize("key, make, message", [
    ("x_train", _quantized, r"x_train: is a quantized tensor \(torch.quint8\); convert it with \.dequantize\(\)"),
    ("y_test", lambda x: _quantized(torch.arange(8.0) % 2), r"y_test: is a quantized tensor \(torch.quint8\)"),
    ("x_test", lambda x: torch.quantize_per_channel(x, torch.full((1,), 1 / 255), torch.zeros(1, dtype=torch.long), 1,
                                                    torch.qint8), r"x_test: is a quantized tensor \(torch.qint8\)"),
    ("x_train", lambda x: x.to(torch.complex32), r"x_train: has dtype torch.complex32, which numpy has no match for; "
                                                 r"pixels must be uint8 \(0-255\) or float \(0-1\), labels integers$"),
    ("y_train", lambda x: torch.zeros(8, dtype=torch.uint8).view(torch.bits8), r"y_train: has dtype torch.bits8"),
    pytest.param("x_train", lambda x: torch.zeros(8, 1, 8, 4, dtype=torch.uint8).view(torch.float4_e2m1fn_x2),
                 r"x_train: has dtype torch.float4_e2m1fn_x2",
                 marks=pytest.mark.skipif(not hasattr(torch, "float4_e2m1fn_x2"), reason="no float4 in this torch")),
    ("x_train", lambda x: torch.nested.nested_tensor(list(x)), r"x_train: must be a dense tensor, got a nested one; "
                                                               r"stack its items, of one shape, into one tensor$"),
    ("x_train", lambda x: torch.nested.nested_tensor(list(x), layout=torch.jagged),
     r"x_train: must be a dense tensor, got a nested one"),
    ("x_train", lambda x: torch.complex(x, x).conj(), r"x_train: pixels must be uint8 \(0-255\) or float \(0-1\), "
                                                      r"got dtype complex64$"),
])
def test_data_tensors_numpy_cannot_hold_are_refused_naming_the_array(key, make, message, tmp_path):
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 2
    arrays = {"x_train": x, "y_train": y, "x_test": x, "y_test": y}
    arrays[key] = make(x)
    with pytest.raises(DatasetFileError, match=r"^data \(mine\): " + message):
        fit(TrainConfig(method="standard", out=str(tmp_path / "run"), dataset="mine", epochs=1, max_batches=1,
                        device="cpu", tensorboard=False), data=tuple(arrays.values()))
    assert list(tmp_path.iterdir()) == []
