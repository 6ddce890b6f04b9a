"""fkpbatch: facial keypoints for large batches of face images.

Library first: ``fkpbatch.predict("faces/")`` (paths, folders, PIL images or numpy arrays) for a
DataFrame with the CSV's columns, or ``Predictor.load().predict_paths(files)`` /
``predict_images(images)`` for a stream of typed :class:`ImageResult` s; the ``fkpbatch`` command
wraps the same functions.
"""

__version__ = "0.1.0"

from .api import predict  # noqa: E402
from .engine import Predictor  # noqa: E402
from .errors import FkpError, UsageError  # noqa: E402
from .options import Detect, Device, Faces, Model, Points, PredictOptions, Runtime  # noqa: E402
from .results import FaceResult, ImageResult  # noqa: E402

__all__ = [
    "Detect",
    "Device",
    "FaceResult",
    "Faces",
    "FkpError",
    "ImageResult",
    "Model",
    "Points",
    "PredictOptions",
    "Predictor",
    "Runtime",
    "UsageError",
    "__version__",
    "predict",
]
