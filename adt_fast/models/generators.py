"""The amortised-ADT networks: the perturbation generator (Table 7) and the q-network (Table 8).

PerturbationGenerator reads ``[x, g1, g2]`` (the image and two input gradients of the classifier,
see :func:`adt_fast.amortized.generator_inputs`) and returns a raw, unbounded map:

    mode        extra input                          output channels   turned into a perturbation by
    explicit    -                                    2*C (mu, rho)     amortized.explicit_perturbation
    implicit    z ~ U(-1,1)^noise_dim, encoded to    C                 amortized.tanh_perturbation
                one 1xHxW channel
    direct      -                                    C                 amortized.tanh_perturbation

``direct`` is the L2L baseline (Chen et al.): the same network and inputs, one perturbation per
input and no distribution.

Body (C.2, Table 7 and the authors' code, ``resnet_3blocks`` with ``ngf = width = 256``):

    conv3x3(in -> w)        + BN + ReLU
    ResidualBlock(w  -> 2w)     conv3x3 + BN + ReLU, conv3x3 + BN, 1x1 conv + BN shortcut, add, ReLU
    ResidualBlock(2w -> 2w)     identity shortcut
    ResidualBlock(2w -> w)      1x1 conv + BN shortcut
    conv3x3(w -> out)       (no BN, no activation)

Table 7 writes "Residual block, 512 filters" three times; the authors' code widens in the first
block and narrows back in the last, so the final conv reads 256 channels. We follow the code.
Every convolution has stride 1 and keeps the image size (3x3 with padding 1, the 1x1 shortcuts
without), so the network is fully convolutional and works for any channel count and any image
size up to MAX_IMAGE_PIXELS (1x8x8 digits included); only the implicit mode's noise encoder
depends on H*W. The noise encoder is FC(noise_dim -> 256) + ReLU, FC(256 -> H*W) + ReLU,
reshaped to 1xHxW (1024 = 32*32 in Table 7); the ReLUs are the authors' code (the table lists no
activations, and the "conv + BN + ReLU" rule of C.2 is about convolutions).

QNetwork (Table 8) reads the *normalised* perturbation t = delta / epsilon in (-1, 1) (what the
authors' code feeds it: the tanh output before scaling) and returns the mean and the standard
deviation of a diagonal Gaussian q(z | delta):

    conv5x5(C -> 32, stride 1)  + BN + LeakyReLU
    conv4x4(32 -> 64, stride 2) + BN + LeakyReLU
    conv4x4(64 -> 128, stride 1) + BN + LeakyReLU
    conv4x4(128 -> 256, stride 2) + BN + LeakyReLU
    global average pooling
    linear(256 -> 2*noise_dim)           ("128x1x1" in Table 8: 2 * 64 outputs)

The convolutions are unpadded, as in the paper; they need an input of at least 20x20, so a
smaller input (8x8 digits) is zero-padded to 20x20 first (zero = "no perturbation" there).
LeakyReLU has PyTorch's default slope 0.01, as in the authors' code.

std = softplus(raw) + min_std (min_std = 1e-3 by default). softplus is smooth and never
overflows; the floor keeps log(std) and 1/std finite whatever the raw output, and caps the
per-dimension log-density at -log(min_std) - log(2*pi)/2 (about 5.99), so the entropy bound can
never run away to +inf even when z is exactly recoverable from delta.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import as_int, as_real, check_finite, check_int, shown

MODES = ("explicit", "implicit", "direct")
NOISE_DIM = 64  # z ~ U(-1, 1)^64 (C.2); adt_fast.amortized samples it
NOISE_HIDDEN = 256
Q_MIN_SIZE = 20  # the smallest H (and W) the unpadded Table-8 convolutions accept
# The widest generator built: its parameters grow as about 158 width^2 (10,330,886 at Table 7's 256,
# explicit mode, 3 channels), so at 16,384 the float32 weights alone are about 170 GB, more than any
# one accelerator holds. A typo such as 10**9 asked the allocator for 360 GB for one weight, and
# 2**70 overflowed inside torch. (train's --generator-width stops new runs sooner, at 4,096, for the
# memory training takes: train.config.MAX_GENERATOR_WIDTH.)
MAX_WIDTH = 16_384
Q_FEATURES = 256  # the q-network's last convolution's channels, which its output layer reads
# Three layers grow with the image or the noise: the implicit mode's noise encoder,
# Linear(noise_dim -> NOISE_HIDDEN) then Linear(NOISE_HIDDEN -> H*W), and the q-network's output,
# Linear(Q_FEATURES -> 2*noise_dim). Each is capped at MAX_LAYER_WEIGHTS = 2**36 weights, 256 GiB of
# float32, more than the widest generator's 170 GB above: H*W at most 2**28 pixels (16,384 x 16,384;
# ImageNet's 224 x 224 is 50,176) and noise_dim at most 2**27 (Table 7's is 64). (100000, 100000)
# images asked the allocator for 10 TB, noise_dim 10**12 for 2 PB. The pixel cap holds in every mode
# and in the q-network too: at 2**28 pixels one image's widest activation in the generator, 2*width
# channels at Table 7's width, is 512 GiB of float32.
MAX_LAYER_WEIGHTS = 2**36
MAX_IMAGE_PIXELS = MAX_LAYER_WEIGHTS // NOISE_HIDDEN
MAX_NOISE_DIM = MAX_LAYER_WEIGHTS // (2 * Q_FEATURES)

ImageSize = Union[int, Sequence[int]]


def _pair(image_size: ImageSize) -> tuple[int, int]:
    """(H, W) as Python ints from an integer (square images) or any sequence of two integers (a
    tuple, a list, torch.Size, a range); numpy's integers count, as they do for check_int. At most
    MAX_IMAGE_PIXELS pixels."""
    side = as_int(image_size)
    if side is not None:
        size = (side, side)
    elif isinstance(image_size, Sequence) and len(image_size) == 2:  # not a float, None or an array
        size = tuple(as_int(s) for s in image_size)
    else:
        size = (None,)
    if not all(s is not None and s >= 1 for s in size):
        raise ValueError(f"image_size must be a positive int or an (H, W) pair, got {shown(image_size)}")
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        side = math.isqrt(MAX_IMAGE_PIXELS)
        raise ValueError(f"image_size must have at most {MAX_IMAGE_PIXELS:,} pixels (H*W, as {side} x {side}), "
                         f"got {shown(image_size)}")
    return size


def _conv3x3(cin: int, cout: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=1, padding=1, bias=bias)


class ResidualBlock(nn.Module):
    """He et al.'s basic block at stride 1: two 3x3 conv + BN, a shortcut, then ReLU.

    The shortcut is the identity when the width is kept, else a 1x1 conv + BN (the authors' code).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = (nn.Identity() if in_channels == out_channels else nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PerturbationGenerator(nn.Module):
    """The ADT_EXP-AM / ADT_IMP-AM / L2L generator of Table 7 (see the module docstring).

    forward(inputs, z=None): inputs is ``[x, g1, g2]`` concatenated on channels, shape
    (B, 3*C, H, W); z, shape (B, noise_dim), is required in implicit mode and refused otherwise.
    Returns the raw map, (B, 2*C, H, W) for explicit (channels [:C] the mean mu, [C:] the std
    parameter rho) and (B, C, H, W) for implicit and direct (the pre-tanh perturbation).
    """

    def __init__(self, in_channels: int, image_size: ImageSize, mode: str = "explicit",
                 noise_dim: int = NOISE_DIM, width: int = 256):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.in_channels = check_int(in_channels, "in_channels")
        self.image_size = _pair(image_size)
        self.mode = mode
        self.noise_dim = check_int(noise_dim, "noise_dim", maximum=MAX_NOISE_DIM) if mode == "implicit" else 0
        self.width = check_int(width, "width", maximum=MAX_WIDTH)
        self.out_channels = 2 * self.in_channels if mode == "explicit" else self.in_channels
        height, width_px = self.image_size

        if mode == "implicit":
            self.noise_encoder = nn.Sequential(
                nn.Linear(self.noise_dim, NOISE_HIDDEN), nn.ReLU(inplace=True),
                nn.Linear(NOISE_HIDDEN, height * width_px), nn.ReLU(inplace=True))
        else:
            self.noise_encoder = None
        stem_in = 3 * self.in_channels + (1 if mode == "implicit" else 0)
        w = self.width
        self.body = nn.Sequential(
            _conv3x3(stem_in, w), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            ResidualBlock(w, 2 * w),
            ResidualBlock(2 * w, 2 * w),
            ResidualBlock(2 * w, w),
            _conv3x3(w, self.out_channels, bias=True),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' initialisation (pix2pix's 'normal', gain 0.02).

        Conv and linear weights ~ N(0, 0.02), biases 0; BatchNorm weights ~ N(1, 0.02), biases 0.
        With it the initial raw outputs are O(1): a spread of means and a std softplus(rho) near
        0.7 in explicit mode, tanh outputs over most of (-1, 1) in the others.
        """
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, inputs: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        c = self.in_channels
        if inputs.dim() != 4 or inputs.shape[1] != 3 * c:
            raise ValueError(f"inputs must have shape (B, {3 * c}, H, W) ([x, g1, g2] of {c}-channel "
                             f"images), got {tuple(inputs.shape)}")
        if self.mode == "implicit":
            if z is None:
                raise ValueError("implicit mode needs the noise z, shape (B, noise_dim)")
            if z.shape != (inputs.shape[0], self.noise_dim):
                raise ValueError(f"z must have shape ({inputs.shape[0]}, {self.noise_dim}), "
                                 f"got {tuple(z.shape)}")
            if tuple(inputs.shape[2:]) != self.image_size:
                raise ValueError(f"implicit mode was built for {self.image_size} images, "
                                 f"got {tuple(inputs.shape[2:])}")
            noise_map = self.noise_encoder(z.to(inputs.dtype)).view(z.shape[0], 1, *self.image_size)
            inputs = torch.cat([inputs, noise_map.to(inputs.dtype)], dim=1)
        elif z is not None:
            raise ValueError(f"{self.mode} mode takes no noise input")
        return self.body(inputs)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, image_size={self.image_size}, mode={self.mode!r}, "
                f"noise_dim={self.noise_dim}, width={self.width}")


class QNetwork(nn.Module):
    """q(z | delta) of ADT_IMP-AM (Table 8): a diagonal Gaussian over the generator's noise.

    forward(t) takes the normalised perturbation t = delta / epsilon, shape (B, C, H, W), and
    returns (mean, std), each (B, noise_dim), float32 (or float64 for float64 weights), with
    std = softplus(raw) + min_std > 0.
    """

    def __init__(self, in_channels: int, image_size: ImageSize, noise_dim: int = NOISE_DIM,
                 min_std: float = 1e-3, negative_slope: float = 0.01):
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels")
        self.image_size = _pair(image_size)
        self.noise_dim = check_int(noise_dim, "noise_dim", maximum=MAX_NOISE_DIM)
        self.min_std = as_real(min_std)
        if self.min_std is None or not math.isfinite(self.min_std) or self.min_std <= 0:
            raise ValueError(f"min_std must be a finite number > 0, got {shown(min_std)}")
        negative_slope = check_finite(negative_slope, "negative_slope")

        def block(cin, cout, kernel, stride):
            return [nn.Conv2d(cin, cout, kernel, stride=stride, bias=False), nn.BatchNorm2d(cout),
                    nn.LeakyReLU(negative_slope, inplace=True)]

        self.features = nn.Sequential(*block(self.in_channels, 32, 5, 1), *block(32, 64, 4, 2),
                                      *block(64, 128, 4, 1), *block(128, Q_FEATURES, 4, 2))
        self.out = nn.Linear(Q_FEATURES, 2 * self.noise_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' initialisation: conv weights ~ N(0, 2 / (k*k*out)), BN (1, 0), zero biases."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.out.reset_parameters()
        nn.init.zeros_(self.out.bias)

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if t.dim() != 4 or t.shape[1] != self.in_channels:
            raise ValueError(f"t must have shape (B, {self.in_channels}, H, W), got {tuple(t.shape)}")
        pad_h, pad_w = max(0, Q_MIN_SIZE - t.shape[2]), max(0, Q_MIN_SIZE - t.shape[3])
        if pad_h or pad_w:
            t = F.pad(t, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        raw = self.out(self.features(t).mean(dim=(2, 3)))
        dtype = torch.float64 if raw.dtype == torch.float64 else torch.float32
        raw = raw.to(dtype)
        mean, std_raw = raw[:, :self.noise_dim], raw[:, self.noise_dim:]
        return mean, F.softplus(std_raw) + self.min_std

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, image_size={self.image_size}, "
                f"noise_dim={self.noise_dim}, min_std={self.min_std}")


__all__ = ["MODES", "NOISE_DIM", "PerturbationGenerator", "QNetwork", "ResidualBlock"]
