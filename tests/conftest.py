"""Shared fixtures: where the development data live, a tiny checkpoint, helpers to make images."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fkpbatch.checkpoint import ModelSpec, save_checkpoint
from fkpbatch.keypoints import KAGGLE_POINTS
from fkpbatch.transforms import Framing

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FKPBATCH_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Nothing is written under the user's ~/.cache (onnxruntime keeps a telemetry id there; CLI
    subprocesses inherit the variable)."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))


def need_data(*parts: str) -> Path:
    """The path under ../shared/data, or skip the test with a message saying what is missing."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"development data not found at {path} (set FKPBATCH_DATA to ../shared/data)")
    return path


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """An untrained fkpnet_tiny checkpoint: exercises the pipeline, says nothing about accuracy."""
    torch.manual_seed(0)
    spec = ModelSpec("fkpnet_tiny", KAGGLE_POINTS, 48, Framing())
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_checkpoint(path, spec, spec.build())
    return path


@pytest.fixture(scope="session", params=["fkpnet68.pt", "fkpnet68_128.pt"])
def shipped_weights(request) -> Path:
    """Each model in weights/: the default and the 128-px one."""
    path = REPO / "weights" / request.param
    if not path.exists():
        pytest.skip(f"weights/{request.param} is not in this checkout")
    return path


def gradient_image(size=(64, 48), mode="RGB") -> Image.Image:
    """A small non-face picture with some structure."""
    x = np.linspace(0, 255, size[0], dtype=np.uint8)
    array = np.tile(x, (size[1], 1))
    return Image.fromarray(array).convert(mode)


def predict_command(inputs, weights, out, *options):
    """``fkpbatch predict`` as a user or a scheduler starts it: its own process, quiet."""
    return [
        sys.executable,
        "-m",
        "fkpbatch",
        "predict",
        str(inputs),
        "-w",
        str(weights),
        "-o",
        str(out),
        *options,
        "-q",
    ]
