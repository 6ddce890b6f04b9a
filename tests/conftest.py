"""Shared fixtures and helpers: where the development data live, tiny checkpoints, images to predict
on, and the two ways a test starts ``fkpbatch``: in this process (:func:`invoke`) or in its own
(:func:`fkpbatch_process`, for signals, pipes and file descriptors)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fkpbatch.checkpoint import ModelSpec, save_checkpoint
from fkpbatch.cli import app
from fkpbatch.keypoints import IBUG_POINTS, KAGGLE_POINTS, coordinate_columns
from fkpbatch.results import FaceResult, ImageResult
from fkpbatch.transforms import Box, Framing

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FKPBATCH_DATA", REPO.parent / "shared" / "data"))
# predict's quickest path, for tests that are not about detection: each whole image is the face,
# no worker processes
FAST = ("--detect", "never", "--workers", "0")
# an output's columns, in order (the 15 Kaggle points)
COLUMNS = (
    ["image", "face", "status", "error", "width", "height", "score", "box_x", "box_y", "box_w", "box_h"]
    + coordinate_columns(KAGGLE_POINTS)
    + ["quality"]
)


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


# --- starting fkpbatch ---------------------------------------------------------------------------

_runner = CliRunner()


def invoke(*args, input=None):
    """``fkpbatch ARGS`` in this process, through Typer's CliRunner (``.stdout`` and ``.stderr``
    apart; arguments may be paths). An exception that escapes the CLI fails the test with its
    traceback instead of becoming exit code 1."""
    return _runner.invoke(app, [str(arg) for arg in args], input=input, catch_exceptions=False)


def fkpbatch_process(*args, start=False, env=None, timeout=120, **options):
    """``python -m fkpbatch ARGS`` in its own process, as a shell, a pipe or a scheduler starts it:
    real file descriptors, real signals, this checkout's code. Runs it to the end and returns the
    CompletedProcess (stdout and stderr captured as text unless ``options`` say otherwise), or with
    ``start=True`` returns the running Popen. ``env``: variables to set (None removes one)."""
    command = [sys.executable, "-m", "fkpbatch", *map(str, args)]
    variables = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    options["env"] = {name: value for name, value in variables.items() if value is not None}
    options.setdefault("stdin", subprocess.DEVNULL)
    if start:
        return subprocess.Popen(command, **options)
    if not {"stdout", "stderr"} & options.keys():
        options.setdefault("capture_output", True)
    options.setdefault("text", True)
    return subprocess.run(command, timeout=timeout, **options)


def wait_until(ready, process=None, timeout=120.0):
    """Poll ``ready()`` every 20 ms until it is true; fail (killing ``process``) if ``process`` ends
    first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process is not None and process.poll() is not None:
            pytest.fail(f"the process ended (exit {process.returncode}) before it reached the awaited state")
        if time.monotonic() > deadline:
            if process is not None:
                process.kill()
                process.wait()
            pytest.fail(f"the awaited state was not reached in {timeout} s")
        time.sleep(0.02)


def lines_in(path: Path) -> int:
    """How many whole lines a file (an output being written) has so far; 0 while it does not exist."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def one_line_error(result, code=2) -> str:
    """Exit ``code`` with one 'error:' line on stderr and no traceback (a subprocess or a CliRunner
    result); returns that line."""
    if isinstance(result, subprocess.CompletedProcess):
        stderr, rc = result.stderr, result.returncode
    else:
        stderr, rc = result.output, result.exit_code
    assert rc == code, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    return lines[0]


# --- checkpoints ---------------------------------------------------------------------------------


def _untrained(path: Path, keypoints) -> Path:
    torch.manual_seed(0)
    spec = ModelSpec("fkpnet_tiny", keypoints, 48, Framing())
    save_checkpoint(path, spec, spec.build())
    return path


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """An untrained fkpnet_tiny checkpoint: exercises the pipeline, says nothing about accuracy."""
    return _untrained(tmp_path_factory.mktemp("weights") / "tiny.pt", KAGGLE_POINTS)


@pytest.fixture(scope="session")
def weights68(tmp_path_factory) -> Path:
    """The same with the 68 iBUG points too (``--points 68``)."""
    return _untrained(tmp_path_factory.mktemp("w68") / "tiny68.pt", KAGGLE_POINTS + IBUG_POINTS)


@pytest.fixture(scope="session", params=["fkpnet68.pt", "fkpnet68_128.pt"])
def shipped_weights(request) -> Path:
    """Each model in weights/: the default and the 128-px one."""
    path = REPO / "weights" / request.param
    if not path.exists():
        pytest.skip(f"weights/{request.param} is not in this checkout")
    return path


# --- pictures and data ---------------------------------------------------------------------------


def gradient_image(size=(64, 48), mode="RGB") -> Image.Image:
    """A small non-face picture with some structure."""
    x = np.linspace(0, 255, size[0], dtype=np.uint8)
    array = np.tile(x, (size[1], 1))
    return Image.fromarray(array).convert(mode)


def face_result(quality, x=10.0, names=KAGGLE_POINTS) -> FaceResult:
    """A 40-px face at (x, 40) with every point at (x + 20, 60)."""
    return FaceResult(Box(x, 40.0, 40.0), 0.99, np.tile([x + 20.0, 60.0], (len(names), 1)), quality, names)


def image_result(name: str, faces=1) -> ImageResult:
    """A 100x80 image with ``faces`` copies of one face, its 83 points at 0, 1, 2, ... 165."""
    points = np.arange(83 * 2, dtype=float).reshape(83, 2)
    face = FaceResult(Box(1.0, 2.0, 30.0), 0.98765, points, 0.5)
    return ImageResult(name, "ok", "", 100, 80, [face] * faces)


def gradient_pngs(folder: Path, count=4, size=(16, 16)) -> Path:
    """``count`` gradient PNGs, img0000.png, img0001.png, ..., in ``folder`` (made if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        gradient_image(size).save(folder / f"img{i:04d}.png")
    return folder


def grey_pngs(folder: Path, count=3) -> Path:
    """``count`` 48x48 PNGs of different greys, p0.png, p1.png, ..., in ``folder`` (made if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((48, 48), (29 * i + 20) % 256, np.uint8)).convert("RGB").save(folder / f"p{i}.png")
    return folder


@pytest.fixture(scope="session")
def many_pngs(tmp_path_factory) -> Path:
    """1,000 tiny PNGs, a run long enough to be stopped half way; made once, only read."""
    return gradient_pngs(tmp_path_factory.mktemp("many") / "many", 1000, size=(12, 12))


@pytest.fixture()
def mixed_folder(tmp_path) -> Path:
    """Two example faces, a non-face picture, a broken .jpg and a text file, in a sub-folder layout."""
    root = tmp_path / "faces"
    (root / "sub").mkdir(parents=True)
    shutil.copy(REPO / "examples" / "Celso_Lafer_12.jpg", root / "a.jpg")
    shutil.copy(REPO / "examples" / "Katharine_Hepburn_40.jpg", root / "sub" / "b.jpg")
    gradient_image((600, 500)).save(root / "sub" / "wall.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (root / "notes.txt").write_text("shot list")
    (root / ".hidden.jpg").write_bytes(b"")
    return root


@pytest.fixture()
def two_images(tmp_path) -> list[Path]:
    """a.png and b.png, two 16x16 gradients in the test's folder."""
    for name in ("a.png", "b.png"):
        gradient_image((16, 16)).save(tmp_path / name)
    return [tmp_path / "a.png", tmp_path / "b.png"]


def random_kaggle_csv(path: Path, rows=8, labelled=True) -> Path:
    """A small Kaggle-format CSV with random faces (pixels) and labels."""
    rng = np.random.default_rng(0)
    columns = coordinate_columns(KAGGLE_POINTS)
    frame = pd.DataFrame(rng.uniform(20, 76, (rows, 30)) if labelled else np.full((rows, 30), np.nan), columns=columns)
    frame["Image"] = [" ".join(map(str, rng.integers(0, 255, 96 * 96))) for _ in range(rows)]
    frame.to_csv(path, index=False)
    return path
