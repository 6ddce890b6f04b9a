"""The result types: what the engine yields per image and per face, and the record the cropping
workers (DataLoader workers, Ray tasks) hand to the keypoint model.

This module imports neither the engine nor the writers (nor torch), so both can import it. Results
serialise themselves in the output layout: :meth:`ImageResult.to_rows` gives the CSV rows,
:meth:`ImageResult.to_dict` the JSON object (the layout itself lives in ``fkpbatch.writers``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .discover import InputFile
from .keypoints import IBUG_POINTS, KAGGLE_POINTS

if TYPE_CHECKING:
    import torch

    from .transforms import Box

__all__ = ["CropRecord", "FaceResult", "ImageResult", "Status"]

Status = str
"""``ok`` | ``no_face`` | ``error`` | ``skipped`` (a file in a folder that is not an image)."""


def _default_names(count: int) -> tuple[str, ...]:
    """Keypoint names for a result built without them (the shipped layouts: 15 or 15 + 68)."""
    for names in (KAGGLE_POINTS, KAGGLE_POINTS + IBUG_POINTS):
        if len(names) == count:
            return names
    return tuple(f"k{i}" for i in range(count))


@dataclass
class FaceResult:
    """One face: where the model looked, the detector's score, the keypoints and their quality.

    ``keypoints`` is a (K, 2) array of (x, y) in original-image pixels (0-based, after EXIF
    rotation), in the order of ``names``; ``points`` gives the same values by name.
    """

    box: Box
    """The square region the keypoint model saw, in original pixels (``box.x``, ``box.y``, ``box.size``)."""
    score: float | None
    """Face detector score; None when the whole image was taken as the face."""
    keypoints: np.ndarray
    """(K, 2) float array of (x, y) in original-image pixels."""
    quality: float | None
    """0..1 from the heatmaps' sharpness (see README, Output schema); None for regression models."""
    names: tuple[str, ...] = ()
    """Keypoint names, in the rows' order of ``keypoints`` (empty = the shipped 15 or 83-point layout)."""

    def __post_init__(self):
        if not self.names:
            self.names = _default_names(len(self.keypoints))

    @property
    def points(self) -> Mapping[str, tuple[float, float]]:
        """Keypoints by name: ``face.points["nose_tip"]`` -> ``(x, y)`` (a new dict on each call)."""
        return {name: (float(x), float(y)) for name, (x, y) in zip(self.names, self.keypoints)}

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values: ``{box: [x, y, w, h], score, quality, keypoints: {name: [x, y]}}`` (unrounded)."""
        return {
            "box": list(self.box.as_list()),
            "score": self.score,
            "quality": self.quality,
            "keypoints": {name: [x, y] for name, (x, y) in self.points.items()},
        }


@dataclass
class ImageResult:
    """One input image: its status and its faces (empty for ``no_face``, ``error`` and ``skipped``)."""

    image: str
    """The name written in the output's ``image`` column (the path as given, or ``image_N`` in memory)."""
    status: Status
    """``ok`` | ``no_face`` | ``error`` | ``skipped``."""
    error: str = ""
    """Why, for ``error`` and ``skipped`` results; empty otherwise."""
    width: int | None = None
    """Image width after EXIF rotation; None when it could not be read."""
    height: int | None = None
    """Image height after EXIF rotation; None when it could not be read."""
    faces: list[FaceResult] = field(default_factory=list)
    """The faces, in the order of the CSV's ``face`` column."""
    source: InputFile | None = None
    """The input file (None for in-memory images)."""
    names: tuple[str, ...] = ()
    """The model's keypoint names (decides the ``--points 68`` columns of a result without faces)."""

    def _names(self) -> tuple[str, ...]:
        return self.names or (self.faces[0].names if self.faces else KAGGLE_POINTS)

    def columns(self, points: str = "15") -> list[str]:
        """The CSV header these rows belong to (``points``: ``"15"`` or ``"68"``)."""
        from .writers import columns_for

        return columns_for(self._names(), str(points))

    def to_rows(self, points: str = "15") -> list[list]:
        """The CSV rows of this image, exactly as ``fkpbatch predict`` writes them (one per face, or
        one for an image without faces), aligned with :meth:`columns`."""
        from .writers import RowLayout

        return RowLayout(self._names(), str(points)).rows(self)

    def to_dict(self, points: str = "15") -> dict[str, Any]:
        """The JSON object of this image, exactly as ``-o out.json`` / ``out.jsonl`` writes it."""
        from .writers import RowLayout

        return RowLayout(self._names(), str(points)).object(self)


@dataclass
class CropRecord:
    """What a cropping worker sends to the keypoint model for one image: the image's status and
    size, the face boxes and detector scores, and the (F, 1, S, S) uint8 crops (one per box)."""

    status: Status = "ok"
    """``ok`` | ``no_face`` | ``error`` | ``skipped``."""
    error: str = ""
    """Why, for ``error`` and ``skipped``."""
    width: int | None = None
    """Image width after EXIF rotation."""
    height: int | None = None
    """Image height after EXIF rotation."""
    boxes: list[Box] = field(default_factory=list)
    """One square box per face, in original pixels."""
    scores: list[float | None] = field(default_factory=list)
    """Detector score per box (None: the whole image taken as the face)."""
    crops: torch.Tensor | None = None
    """(F, 1, S, S) uint8 face crops; taken out by the collate function before batching."""
    index: int = -1
    """Position of the image in its input list (set by the dataset)."""
