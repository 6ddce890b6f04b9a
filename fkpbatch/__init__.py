"""fkpbatch: facial keypoints for large batches of face images.

Library first: ``Predictor.load().predict_paths(files)`` or ``fkpbatch.predict("faces/")`` for a
DataFrame; the ``fkpbatch`` command wraps the same functions.

``import fkpbatch`` is cheap: the public names below are imported from their modules on first use
(PEP 562), so ``fkpbatch --version`` and tools that only read ``__version__`` never import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.2.0"

# Public name -> the module that defines it. To export a new name, add one line here (and, for
# type checkers and IDEs, to the TYPE_CHECKING block below).
_LAZY: dict[str, str] = {
    "Predictor": ".engine",
    "PredictOptions": ".engine",
    "predict": ".engine",
    "DEFAULT_MODEL": ".zoo",
    "SHIPPED_MODELS": ".zoo",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:
    from .engine import PredictOptions as PredictOptions
    from .engine import Predictor as Predictor
    from .engine import predict as predict
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
