"""The shipped models by name, with the figures of their model card (weights/README.md), and where
the shipped files are. The one place that names them: the CLI's ``--model``, ``fkpbatch models``,
``--version`` and :meth:`fkpbatch.Predictor.load` all read this table. Imports no torch.

The files live in the repository's top-level ``weights/`` folder, installed as the package
``fkpbatch.weights`` (pyproject.toml maps the folder there), and are found through
:mod:`importlib.resources`, so a wheel, ``pip install .`` and ``pip install -e .`` all work.
"""

from __future__ import annotations

import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError, WeightsError


@dataclass(frozen=True)
class ShippedModel:
    """One shipped model; speed and accuracy as measured in weights/README.md."""

    name: str
    file: str  # inside weights/
    input_size: int  # crop side in pixels
    faces_per_s: str  # model alone, batch 64, onnxruntime, the project's 2-core CPU with nothing else running
    nme_faces15: float  # 15 Kaggle points, % of the outer-eye-corner distance, held-out faces15 persons
    nme68_300w: float  # 68 iBUG points, the same normalisation, held-out HELEN + LFPW photos (manual labels)
    summary: str


SHIPPED_MODELS: dict[str, ShippedModel] = {
    m.name: m
    for m in (
        ShippedModel("fast", "fkpnet68.pt", 96, "1081-1383", 3.77, 4.04, "fkpnet_small, 15 + 68 points; the default"),
        ShippedModel(
            "accurate",
            "fkpnet68_128.pt",
            128,
            "214-220",
            3.60,
            3.61,
            "fkpnet_wide at 128 px, 15 + 68 points; the most accurate",
        ),
    )
}
DEFAULT_MODEL = "fast"
DETECTOR_FILE = "retinaface_mnet025.onnx"  # RetinaFace-MobileNet0.25 (MIT; weights/LICENSE-retinaface.txt)


def shipped_file(name: str) -> Path:
    """Path of a file in the shipped ``weights/`` folder (installed package, else the source tree)."""
    try:
        folder = importlib.resources.files("fkpbatch.weights")
    except ModuleNotFoundError:  # a checkout whose install predates the fkpbatch.weights package
        folder = Path(__file__).resolve().parent.parent / "weights"
    path = folder / name
    if not isinstance(path, Path):  # e.g. a zip import: torch and onnxruntime need a real file
        raise WeightsError(f"the shipped file {name} is not on the file system ({path}); reinstall fkpbatch")
    return path


def model_path(name: str = DEFAULT_MODEL) -> Path:
    """The weights file of a shipped model (``fast``, ``accurate``)."""
    if name not in SHIPPED_MODELS:
        raise UsageError(f"unknown model {name!r}; shipped models: {', '.join(SHIPPED_MODELS)} (see 'fkpbatch models')")
    return shipped_file(SHIPPED_MODELS[name].file)


def resolve_weights(weights: str | os.PathLike[str] | None = None, model: str | None = None) -> Path:
    """The checkpoint to load: ``weights`` (your own file), else the shipped ``model`` (default
    :data:`DEFAULT_MODEL`). Giving both is a usage error."""
    if weights is not None and model is not None:
        raise UsageError("give either --model NAME (a shipped model) or --weights FILE (your checkpoint), not both")
    if weights is not None:
        return Path(weights)
    path = model_path(model or DEFAULT_MODEL)
    if not path.is_file():
        raise WeightsError(f"the shipped model {model or DEFAULT_MODEL!r} is missing at {path}; reinstall fkpbatch")
    return path


def shipped_graph(weights: Path) -> bytes | None:
    """The ONNX graph shipped beside a shipped model's weights (``fkpnet68.pt`` -> ``fkpnet68.onnx``,
    written by ``fkpbatch export`` when the weights were made), or None for other weights: prediction
    on the CPU then needs no export at start-up (the engine still checks the graph against the weights)."""
    for model in SHIPPED_MODELS.values():
        shipped = shipped_file(model.file)
        try:
            if shipped.is_file() and os.path.samefile(weights, shipped):
                graph = shipped.with_suffix(".onnx")
                return graph.read_bytes() if graph.is_file() else None
        except OSError:
            return None
    return None


def detector_path() -> Path:
    """The face detector's ONNX graph."""
    return shipped_file(DETECTOR_FILE)
