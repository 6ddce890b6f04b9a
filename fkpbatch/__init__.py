"""fkpbatch: facial keypoints for large batches of face images.

Library first: ``fkpbatch.predict("faces/")`` (paths, folders, PIL images or numpy arrays) for a
DataFrame with the CSV's columns, or ``Predictor.load().predict_paths(files)`` /
``predict_images(images)`` for a stream of typed :class:`ImageResult` s; the ``fkpbatch`` command
wraps the same functions.

``import fkpbatch`` is cheap: the public names below are imported from their modules on first use
(PEP 562), so ``fkpbatch --version`` and tools that only read ``__version__`` never import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.4.0"

# Public name -> the module that defines it. To export a new name, add one line here and one to
# the TYPE_CHECKING block below (for type checkers and IDEs).
_LAZY: dict[str, str] = {
    "predict": ".api",
    "Predictor": ".engine",
    "FkpError": ".errors",
    "UsageError": ".errors",
    "Detect": ".options",
    "DetectOn": ".options",
    "Device": ".options",
    "Faces": ".options",
    "Model": ".options",
    "Passes": ".options",
    "Points": ".options",
    "PredictOptions": ".options",
    "Runtime": ".options",
    "FaceResult": ".results",
    "ImageResult": ".results",
    "DEFAULT_MODEL": ".zoo",
    "SHIPPED_MODELS": ".zoo",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:
    from .api import predict as predict
    from .engine import Predictor as Predictor
    from .errors import FkpError as FkpError
    from .errors import UsageError as UsageError
    from .options import Detect as Detect
    from .options import DetectOn as DetectOn
    from .options import Device as Device
    from .options import Faces as Faces
    from .options import Model as Model
    from .options import Passes as Passes
    from .options import Points as Points
    from .options import PredictOptions as PredictOptions
    from .options import Runtime as Runtime
    from .results import FaceResult as FaceResult
    from .results import ImageResult as ImageResult
    from .zoo import DEFAULT_MODEL as DEFAULT_MODEL
    from .zoo import SHIPPED_MODELS as SHIPPED_MODELS


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
