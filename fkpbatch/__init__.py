"""fkpbatch: facial keypoints for large batches of face images.

Library first: ``Predictor.load().predict_paths(files)`` or ``fkpbatch.predict("faces/")`` for a
DataFrame; the ``fkpbatch`` command wraps the same functions.
"""

__version__ = "0.1.0"

from .engine import Predictor, PredictOptions, predict  # noqa: E402

__all__ = ["Predictor", "PredictOptions", "predict", "__version__"]
