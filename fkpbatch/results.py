"""The result types: what the engine yields per image and per face, and the record the cropping
workers (DataLoader workers, Ray tasks) hand to the keypoint model.

This module imports neither the engine nor the writers (nor torch), so both can import it. Results
own their output layout (:class:`RowLayout`, :func:`columns_for`): :meth:`ImageResult.to_rows`
gives the CSV rows, :meth:`ImageResult.to_dict` the JSON object; the writers only quote and store them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .discover import InputFile
from .keypoints import IBUG_POINTS, KAGGLE_POINTS, coordinate_columns

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from .transforms import Box

__all__ = ["CropRecord", "FaceResult", "ImageResult", "RowLayout", "Status", "columns_for"]

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
    """0..1 from the heatmaps' sharpness (docs/outputs.md, "Quality"); None for regression models."""
    names: tuple[str, ...] = ()
    """Keypoint names, in the rows' order of ``keypoints`` (empty = the shipped 15 or 83-point layout)."""
    pose: tuple[float, float, float] | None = None
    """Head pose ``(yaw, pitch, roll)`` in degrees (:func:`fkpbatch.pose.head_pose`) when asked for."""

    def __post_init__(self):
        if not self.names:
            self.names = _default_names(len(self.keypoints))

    @property
    def points(self) -> Mapping[str, tuple[float, float]]:
        """Keypoints by name: ``face.points["nose_tip"]`` -> ``(x, y)`` (a new dict on each call)."""
        return {name: (float(x), float(y)) for name, (x, y) in zip(self.names, self.keypoints)}

    def aligned(self, image: Image.Image, size: int = 112) -> Image.Image:
        """The ArcFace-aligned ``size`` x ``size`` RGB crop of this face from ``image`` (the upright
        picture its keypoints refer to): :func:`fkpbatch.align.align_face`."""
        from .align import align_face

        return align_face(image, self, size)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values: ``{box: [x, y, w, h], score, quality, keypoints: {name: [x, y]}}`` (unrounded)."""
        return {
            "box": list(self.box.as_list()),
            "score": self.score,
            "quality": self.quality,
            "keypoints": {name: [x, y] for name, (x, y) in self.points.items()},
            **({} if self.pose is None else {"pose": dict(zip(POSE_COLUMNS, self.pose))}),
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

    def _layout(self, points) -> RowLayout:
        return RowLayout(self._names(), str(points), pose=any(f.pose is not None for f in self.faces))

    def columns(self, points: str = "15") -> list[str]:
        """The CSV header these rows belong to (``points``: ``"15"`` or ``"68"``; pose columns when
        its faces carry a pose)."""
        return self._layout(points).columns

    def to_rows(self, points: str = "15") -> list[list]:
        """The CSV rows of this image, exactly as ``fkpbatch predict`` writes them (one per face, or
        one for an image without faces), aligned with :meth:`columns`."""
        return self._layout(points).rows(self)

    def to_dict(self, points: str = "15") -> dict[str, Any]:
        """The JSON object of this image, exactly as ``-o out.json`` / ``out.jsonl`` writes it."""
        return self._layout(points).object(self)


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


BASE_COLUMNS = ["image", "face", "status", "error", "width", "height", "score", "box_x", "box_y", "box_w", "box_h"]


POSE_COLUMNS = ("yaw", "pitch", "roll")


def columns_for(keypoints: tuple[str, ...], points: str = "15", pose: bool = False) -> list[str]:
    """The CSV header: base columns, the 30 Kaggle columns, quality, then p0_x..p67_y with 68 points,
    then yaw, pitch, roll with ``pose``."""
    extra = [n for n in keypoints if n not in KAGGLE_POINTS] if points == "68" else []
    columns = BASE_COLUMNS + coordinate_columns(KAGGLE_POINTS) + ["quality"] + coordinate_columns(extra)
    return columns + list(POSE_COLUMNS) if pose else columns


def _number(value, digits: int = 2):
    return (
        "" if value is None or (isinstance(value, float) and not math.isfinite(value)) else round(float(value), digits)
    )


class RowLayout:
    """How results become CSV rows and JSON objects for one model and ``--points`` choice.

    Built once per run, so the column-to-keypoint lookup is not redone for every image.
    """

    def __init__(self, keypoints: tuple[str, ...], points: str = "15", pose: bool = False):
        self.columns = columns_for(keypoints, points, pose)
        self.pose = pose
        position = {name: i for i, name in enumerate(keypoints)}
        # per column after the base ones: "quality", a pose angle's index, the flat (x, y, x, y, ...)
        # index of a keypoint coordinate, or None
        self._cells = [
            c
            if c == "quality"
            else ("pose", POSE_COLUMNS.index(c))
            if c in POSE_COLUMNS
            else (2 * position[c[:-2]] + (c[-1] == "y") if c[:-2] in position else None)
            for c in self.columns[len(BASE_COLUMNS) :]
        ]
        written = {c[:-2] for c in self.columns if c.endswith("_x")}
        self._json_points = [(n, i) for i, n in enumerate(keypoints) if n in written]

    def rows(self, result: ImageResult) -> list[list]:
        """One row per face (or one row for an image without faces), aligned with ``columns``."""
        head = [
            result.image,
            0,
            result.status,
            result.error.replace("\n", " "),
            result.width or "",
            result.height or "",
        ]
        if not result.faces:
            return [head + [""] * (len(self.columns) - len(head))]
        rows = []
        for index, face in enumerate(result.faces):
            values = [self._cell(face, cell) for cell in self._cells]
            rows.append(
                [
                    result.image,
                    index,
                    result.status,
                    "",
                    result.width,
                    result.height,
                    _number(face.score, 4),
                    *(_number(v) for v in face.box.as_list()),
                    *values,
                ]
            )
        return rows

    @staticmethod
    def _cell(face: FaceResult, cell):
        if cell == "quality":
            return _number(face.quality, 3)
        if isinstance(cell, tuple):
            return "" if face.pose is None else _number(face.pose[cell[1]], 1)
        return "" if cell is None else _number(face.keypoints.flat[cell])

    def object(self, result: ImageResult) -> dict:
        """The JSON object of one image: ``{image, width, height, status, error, faces: [...]}``."""
        faces = []
        for face in result.faces:
            points = {n: [_number(face.keypoints[i, 0]), _number(face.keypoints[i, 1])] for n, i in self._json_points}
            faces.append(
                {
                    "box": [_number(v) for v in face.box.as_list()],
                    "score": _number(face.score, 4),
                    "quality": _number(face.quality, 3),
                    "keypoints": points,
                    **(self._pose_object(face) if self.pose else {}),
                }
            )
        return {
            "image": result.image,
            "width": result.width,
            "height": result.height,
            "status": result.status,
            "error": result.error,
            "faces": faces,
        }

    @staticmethod
    def _pose_object(face: FaceResult) -> dict:
        angles = face.pose if face.pose is not None else (None, None, None)
        return {"pose": {name: _number(value, 1) for name, value in zip(POSE_COLUMNS, angles)}}
