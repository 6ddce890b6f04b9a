"""The Python API in one call: :func:`predict` takes paths, folders, PIL images or numpy arrays and
returns a pandas DataFrame with exactly the CSV's columns. For streaming and typed results, use
:class:`fkpbatch.Predictor` (``predict_paths``, ``predict_images``), which this wraps."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from .errors import UsageError
from .keypoints import has_ibug68
from .options import Detect, DetectOn, Device, Faces, Model, Points, PredictOptions, Runtime

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from PIL import Image

__all__ = ["predict"]

Input = Union[str, "os.PathLike[str]", "Image.Image", "np.ndarray"]
"""One input of :func:`predict`: a file or folder path, a PIL image, or an HxWx3 uint8 RGB array."""


def _is_image(value: Any) -> bool:
    if type(value).__module__.startswith("PIL."):
        return True
    return type(value).__name__ == "ndarray" and type(value).__module__ == "numpy"


def predict(
    inputs: Input | Iterable[Input],
    *,
    points: str | Points = Points.kaggle15,
    model: str | Model | None = None,
    weights: str | os.PathLike[str] | None = None,
    detect: str | Detect = PredictOptions.detect,
    faces: str | Faces = PredictOptions.faces,
    device: str | Device = Device.auto,
    runtime: str | Runtime = Runtime.auto,
    recursive: bool = True,
    min_score: float = PredictOptions.min_score,
    min_face: int = PredictOptions.min_face,
    max_pixels: int = PredictOptions.max_pixels,
    batch_size: int = PredictOptions.batch_size,
    workers: int | None = None,
    passes: str = PredictOptions.passes,
    unsure_score: float = PredictOptions.unsure_score,
    detect_on: str | DetectOn = PredictOptions.detect_on,
) -> pd.DataFrame:
    """Facial keypoints as a pandas DataFrame with exactly the columns of ``fkpbatch predict``'s CSV
    (one row per face; one row for an image without a face or that cannot be read).

    ``inputs``: a file or folder path (``str`` or ``Path``; folders are walked like the CLI walks
    them), a PIL image, an HxWx3 uint8 RGB numpy array, or a list of paths or of images (not
    mixed). In-memory images are named ``image_0``, ``image_1``, ... in the ``image`` column.

    ``points``: ``"15"`` (Kaggle) or ``"68"`` (adds ``p0_x`` .. ``p67_y``). ``model``: a shipped model,
    ``"fast"`` (default) or ``"accurate"``; ``weights``: a checkpoint from ``fkpbatch train``
    instead. The other options are those of ``fkpbatch predict`` (``detect``: auto | always |
    never; ``faces``: all | largest; ``device``: auto | cpu | cuda | mps; ``detect_on``: auto |
    workers | device, where faces are detected). A missing path or a bad
    option raises :class:`fkpbatch.errors.UsageError`.
    """
    from .engine import Predictor
    from .writers import results_frame

    points = Points.parse(points, "points")
    options = PredictOptions(
        detect=detect,
        faces=faces,
        min_score=min_score,
        min_face=min_face,
        max_pixels=max_pixels,
        batch_size=batch_size,
        workers=workers,
        passes=passes,
        unsure_score=unsure_score,
        detect_on=detect_on,
    )
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) or _is_image(inputs) else list(inputs)
    images = [_is_image(item) for item in items]
    if any(images) and not all(images):
        raise UsageError("give either paths or in-memory images in one call, not both")
    predictor = Predictor.load(
        weights,
        Device.parse(device, "device"),
        Runtime.parse(runtime, "runtime"),
        model=None if model is None else Model.parse(model, "model"),
    )
    if points == Points.ibug68 and not has_ibug68(predictor.keypoints):
        raise UsageError("points='68': these weights predict the 15 Kaggle points only")
    if items and all(images):
        results = predictor.predict_images(items, options)
    else:
        for item in items:
            if not isinstance(item, (str, os.PathLike)):
                raise UsageError(f"expected a path, a PIL image or a numpy array, not {type(item).__name__}")
        from .discover import discover

        paths = [Path(item) for item in items]
        results = predictor.predict_paths(discover(paths, recursive=recursive).files, options) if paths else iter(())
    return results_frame(results, predictor.keypoints, str(points))
