"""The Python API in one call: :func:`predict` takes paths, folders, PIL images or numpy arrays and
returns a pandas DataFrame with exactly the CSV's columns. For streaming and typed results, use
:class:`fkpbatch.Predictor` (``predict_paths``, ``predict_images``), which this wraps."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from .errors import UsageError
from .keypoints import has_ibug68
from .options import Device, Model, Points, PredictOptions, Runtime

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


def _as_list(inputs) -> list:
    """One input or an iterable of them as a list; anything else is a UsageError naming its type."""
    if isinstance(inputs, (str, os.PathLike)) or _is_image(inputs):
        return [inputs]
    if inputs is None or isinstance(inputs, (bytes, bytearray, memoryview)) or not hasattr(inputs, "__iter__"):
        raise UsageError(
            f"expected a path, a PIL image, a numpy array or a list of them, not {type(inputs).__name__} "
            "(for encoded image bytes, open them with PIL.Image.open(io.BytesIO(data)))"
        )
    return list(inputs)


def predict(
    inputs: Input | Iterable[Input],
    *,
    points: str | Points = Points.kaggle15,
    model: str | Model | None = None,
    weights: str | os.PathLike[str] | None = None,
    device: str | Device = Device.auto,
    runtime: str | Runtime = Runtime.auto,
    recursive: bool = True,
    **options: Any,
) -> pd.DataFrame:
    """Facial keypoints as a pandas DataFrame with exactly the columns of ``fkpbatch predict``'s CSV
    (one row per face; one row for an image without a face or that cannot be read).

    ``inputs``: a file or folder path (``str`` or ``Path``; folders are walked like the CLI walks
    them), a PIL image, an HxWx3 uint8 RGB numpy array, or a list of paths or of images (not
    mixed). In-memory images are named ``image_0``, ``image_1``, ... in the ``image`` column.

    ``points``: ``"15"`` (Kaggle) or ``"68"`` (adds ``p0_x`` .. ``p67_y``). ``model``: a shipped model,
    ``"fast"`` (default) or ``"accurate"``; ``weights``: a checkpoint from ``fkpbatch train``
    instead; ``device``: auto | cpu | cuda | mps. ``options``: the fields of
    :class:`fkpbatch.PredictOptions` (``detect="never"``, ``faces="largest"``, ``pose=True``, ...),
    the options of ``fkpbatch predict``. A missing path or a bad option raises
    :class:`fkpbatch.errors.UsageError`.
    """
    from .engine import Predictor
    from .writers import results_frame

    points = Points.parse(points, "points")
    unknown = sorted(set(options) - {f.name for f in fields(PredictOptions)})
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r}; see fkpbatch.PredictOptions for the options")
    predict_options = PredictOptions(**options)
    items = _as_list(inputs)
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
        results = predictor.predict_images(items, predict_options)
    else:
        for item in items:
            if not isinstance(item, (str, os.PathLike)):
                raise UsageError(f"expected a path, a PIL image or a numpy array, not {type(item).__name__}")
        from .discover import discover

        paths = [Path(item) for item in items]
        results = (
            predictor.predict_paths(discover(paths, recursive=recursive).files, predict_options) if paths else iter(())
        )
    return results_frame(results, predictor.keypoints, str(points), predict_options.pose)
