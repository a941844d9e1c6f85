"""What the parts of the data share: images in memory, and the error for data that cannot be had."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


class DataError(ValueError):
    """A data set cannot be found or a selection from it cannot be made."""


@dataclass(frozen=True)
class ImageSet:
    images: Tensor  # (N, C, H, W) uint8
    labels: Tensor  # (N,) int64
    classes: tuple[str, ...]

    def subset(self, index: Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.classes)
