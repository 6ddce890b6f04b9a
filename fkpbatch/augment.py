"""Training augmentation: the seed's flip (with left/right names swapped) and brightness, optional
vertical flips, and rotation/scale/shift through torchvision.transforms.v2 with keypoint support.
Kept apart from ``transforms`` so that prediction does not import torchvision."""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from .keypoints import flip_permutation


def hflip_with_swap(image: torch.Tensor, unit_points: torch.Tensor, permutation: list[int]):
    """Mirror a crop and its unit keypoints, re-labelling left and right (its own inverse)."""
    flipped = unit_points[permutation].clone()
    flipped[:, 0] = 1.0 - flipped[:, 0]
    return image.flip(-1), flipped


class TrainAugment:
    """The seed's augmentation (flip with left/right swap, brightness up/down), optionally
    vertical flips and, with ``strong``, rotation/scale/shift via torchvision.transforms.v2."""

    def __init__(self, names, *, strong: bool = False, vflip: bool = False, generator: torch.Generator | None = None):
        self.permutation = flip_permutation(names)
        self.vflip = vflip
        self.generator = generator
        self.brightness = v2.ColorJitter(brightness=0.4, contrast=0.3 if strong else 0.0)
        self.geometry = v2.RandomAffine(degrees=25, translate=(0.06, 0.06), scale=(0.85, 1.15)) if strong else None

    def _coin(self) -> bool:
        return bool(torch.rand((), generator=self.generator) < 0.5)

    def __call__(self, image: torch.Tensor, unit_points: torch.Tensor):
        """``image``: (1, H, W) uint8; ``unit_points``: (K, 2) float, NaN where missing."""
        if self._coin():
            image, unit_points = hflip_with_swap(image, unit_points, self.permutation)
        if self.vflip and self._coin():
            image = image.flip(-2)
            unit_points = unit_points.clone()
            unit_points[:, 1] = 1.0 - unit_points[:, 1]
        if self.geometry is not None:
            size = image.shape[-1]
            missing = torch.isnan(unit_points)
            points = tv_tensors.KeyPoints(torch.nan_to_num(unit_points * size - 0.5, nan=0.0), canvas_size=(size, size))
            image, points = self.geometry(tv_tensors.Image(image), points)
            unit_points = (points.as_subclass(torch.Tensor) + 0.5) / size
            unit_points[missing] = float("nan")
        return self.brightness(image.as_subclass(torch.Tensor)), unit_points
