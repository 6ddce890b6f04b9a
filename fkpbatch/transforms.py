"""Framing a face, cropping it for the model, and mapping keypoints back: one code path for
training and prediction, so both see faces framed the same way."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

# The five points a detector gives and a framing is built from (Kaggle names).
FRAMING_POINTS = ("left_eye_center", "right_eye_center", "nose_tip", "mouth_left_corner", "mouth_right_corner")


@dataclass(frozen=True)
class Framing:
    """How a square crop is placed around a face, from its eyes and mouth.

    ``size`` = ``scale`` x (eye distance + eye-to-mouth distance); the centre sits ``shift`` of the
    way from the eye midpoint to the mouth midpoint. The defaults reproduce the average Kaggle
    96x96 face (eyes 36 px apart at y=37.8, mouth at y=76.1; keypoints_only.csv means).
    """

    scale: float = 1.29
    shift: float = 0.27


@dataclass(frozen=True)
class Box:
    """A square region in continuous pixel coordinates: pixel i covers [i, i+1)."""

    x: float
    y: float
    size: float

    def as_list(self) -> list[float]:
        return [self.x, self.y, self.size, self.size]


def box_from_points(points: np.ndarray, framing: Framing) -> Box:
    """Square box from the five framing points (rows in ``FRAMING_POINTS`` order, 0-based pixels)."""
    left_eye, right_eye, _nose, mouth_left, mouth_right = np.asarray(points, dtype=np.float64)[:5]
    eyes = (left_eye + right_eye) / 2
    mouth = (mouth_left + mouth_right) / 2
    size = framing.scale * (np.linalg.norm(left_eye - right_eye) + np.linalg.norm(mouth - eyes))
    centre = eyes + framing.shift * (mouth - eyes) + 0.5  # +0.5: pixel index -> continuous
    return Box(float(centre[0] - size / 2), float(centre[1] - size / 2), float(size))


def whole_image_box(width: int, height: int) -> Box:
    """The whole image as one face: the smallest centred square that holds it."""
    size = float(max(width, height))
    return Box((width - size) / 2, (height - size) / 2, size)


def crop_face(image: Image.Image, box: Box, size: int) -> Image.Image:
    """Crop ``box`` out of ``image`` and resize it to ``size`` x ``size``; black outside the image.

    Pillow's ``resize(box=...)`` filters with a support that grows with the scale factor, so a face
    from a 12-megapixel photo is antialiased rather than sampled.
    """
    left, top = math.floor(box.x), math.floor(box.y)
    right, bottom = math.ceil(box.x + box.size), math.ceil(box.y + box.size)
    region = image.crop((left, top, max(right, left + 1), max(bottom, top + 1)))
    inner = (box.x - left, box.y - top, box.x - left + box.size, box.y - top + box.size)
    return region.resize((size, size), Image.Resampling.BILINEAR, box=inner)


def to_unit(pixels: np.ndarray, box: Box) -> np.ndarray:
    """Pixel coordinates (0-based, original image) -> unit coordinates of ``box`` ([0, 1] inside)."""
    corner = np.array([box.x, box.y])
    return (np.asarray(pixels, dtype=np.float64) + 0.5 - corner) / box.size


def from_unit(unit: np.ndarray, box: Box) -> np.ndarray:
    """Unit coordinates of ``box`` (what models output) -> 0-based pixels of the original image."""
    corner = np.array([box.x, box.y])
    return np.asarray(unit, dtype=np.float64) * box.size + corner - 0.5


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """A grayscale PIL crop as a (1, H, W) uint8 tensor; normalisation happens on the device."""
    return torch.from_numpy(np.asarray(image.convert("L"), dtype=np.uint8).copy()).unsqueeze(0)
