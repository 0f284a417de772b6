"""Mini-batches and augmentation for datasets that already live on the training device.

The trainer moves the whole dataset to the device once; batching then is indexing and the
augmentation is a few batched tensor ops, so no worker processes or host-to-device copies sit
in the training loop. Randomness comes from ``generator`` (which must be on the data's device)
or from torch's default generator for that device, so ``torch.manual_seed`` makes runs repeat.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..checks import check_int

AUGMENTATIONS = ("none", "crop_flip")
CROP_PADDING = 4


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment a batch of images (N, C, H, W).

    ``"crop_flip"``: the CIFAR augmentation of appendix C.1, a random crop of the image padded
    with 4 zero pixels per side plus a random horizontal flip, drawn per example.
    ``"none"``: returns ``x`` itself.
    """
    if kind not in AUGMENTATIONS:
        raise ValueError(f"augmentation kind must be one of {', '.join(AUGMENTATIONS)}, got {kind!r}")
    if x.dim() != 4:
        raise ValueError(f"x must be a batch of images with shape (N, C, H, W), got shape {tuple(x.shape)}")
    if kind == "none":
        return x
    return _random_crop_flip(x, CROP_PADDING, generator)


def _random_crop_flip(x: torch.Tensor, padding: int, generator: torch.Generator | None) -> torch.Tensor:
    """One gather for the whole batch: a flip is just reversed column indices into the crop."""
    num_examples, _, height, width = x.shape
    device = x.device
    padded = F.pad(x, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, num_examples, 1), generator=generator, device=device)
    flips = torch.randint(0, 2, (num_examples, 1), generator=generator, device=device).bool()
    rows = offsets[0] + torch.arange(height, device=device)
    columns = torch.arange(width, device=device)
    columns = offsets[1] + torch.where(flips, width - 1 - columns, columns)
    batch_index = torch.arange(num_examples, device=device)[:, None, None]
    # Advanced indices split by the channel slice put the (N, H, W) dims first: (N, H, W, C).
    crops = padded[batch_index, :, rows[:, :, None], columns[:, None, :]].permute(0, 3, 1, 2)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return crops.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class BatchIterator:
    """Re-iterable mini-batches of ``(x, y)``; every pass draws a fresh order when shuffling."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool,
                 generator: torch.Generator | None = None, augment: str = "none", drop_last: bool = False):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must hold the same number of examples, got {x.shape[0]} and {y.shape[0]}")
        if x.device != y.device:
            raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
        check_int(batch_size, "batch_size")
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.augment = augment
        self.drop_last = drop_last

    def __len__(self) -> int:
        num_examples = self.x.shape[0]
        if self.drop_last:
            return num_examples // self.batch_size
        return math.ceil(num_examples / self.batch_size)

    def __iter__(self):
        order = None
        if self.shuffle:
            order = torch.randperm(self.x.shape[0], generator=self.generator, device=self.x.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            stop = start + self.batch_size
            if order is None:
                xb, yb = self.x[start:stop], self.y[start:stop]
            else:
                xb, yb = self.x[order[start:stop]], self.y[order[start:stop]]
            yield augment_batch(xb, self.augment, self.generator), yb


def iterate_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool,
                    generator: torch.Generator | None = None, augment: str = "none",
                    drop_last: bool = False) -> BatchIterator:
    """Mini-batches of device-resident ``x``/``y``, optionally shuffled and augmented.

    Unshuffled, unaugmented batches are views of ``x`` and ``y``: do not modify them in place.
    """
    return BatchIterator(x, y, batch_size, shuffle=shuffle, generator=generator, augment=augment, drop_last=drop_last)
