"""The package as installed: shipped models by name, a cheap ``import fkpbatch``, the detector's own
ONNX file, and the command line's output in logs (stderr not a terminal)."""

import re
import subprocess
import sys

import pytest

import fkpbatch
from fkpbatch import zoo
from fkpbatch.engine import Predictor
from fkpbatch.errors import UsageError
from fkpbatch.progress import LineProgress

from conftest import REPO, invoke

SUMMARY = re.compile(r"^\d+ images, \d+ faces, \d+ without a face, \d+ errors, \d+ skipped .*; [\d.]+ images/s$")
PROGRESS = re.compile(r"^predict: \d+/\d+ images \(\d+ %\), [\d.]+ images/s, elapsed [\d:]+, ETA [\d:?]+$")


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_import_and_version_leave_torch_unimported():
    code = (
        "import sys, fkpbatch; assert fkpbatch.__version__; print('torch' in sys.modules)\n"
        "from fkpbatch.cli import run; sys.argv = ['fkpbatch', '--version']\n"
        "try:\n    run()\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    version = f"fkpbatch {fkpbatch.__version__} (default model: fast = fkpnet68.pt, 96 px)"
    assert run_python(code).splitlines()[-3:] == ["False", version, "False"]


def test_public_names_load_on_first_use():
    assert set(fkpbatch.__all__) >= {"Predictor", "PredictOptions", "predict", "Model", "__version__"}
    # the option's choices come from the one table
    assert [model.value for model in fkpbatch.Model] == list(zoo.SHIPPED_MODELS) == ["fast", "accurate"]
    assert fkpbatch.Predictor is Predictor and fkpbatch.DEFAULT_MODEL == "fast"
    assert set(fkpbatch.__all__) <= set(dir(fkpbatch))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        fkpbatch.nothing  # noqa: B018


def test_exactly_two_shipped_models_found_through_importlib_resources():
    assert list(zoo.SHIPPED_MODELS) == ["fast", "accurate"] and zoo.DEFAULT_MODEL == "fast"
    assert zoo.model_path().name == "fkpnet68.pt" and zoo.model_path("accurate").name == "fkpnet68_128.pt"
    for name in (*(m.file for m in zoo.SHIPPED_MODELS.values()), zoo.DETECTOR_FILE, "LICENSE-retinaface.txt"):
        assert zoo.shipped_file(name).is_file(), name
    assert zoo.resolve_weights() == zoo.model_path("fast")
    assert zoo.resolve_weights("mine.pt").name == "mine.pt"
    with pytest.raises(UsageError, match="not both"):
        zoo.resolve_weights("mine.pt", "fast")
    with pytest.raises(UsageError, match="unknown model 'huge'; shipped models: fast, accurate"):
        zoo.resolve_weights(model="huge")


def model_card() -> dict[str, dict[str, str]]:
    """Each shipped model's figures as the model card (weights/README.md) states them, read from its
    two tables: file, input size, model-alone speed, architecture, and the NME (bold) on faces15
    (15 points) and on HELEN + LFPW (68 points)."""
    rows = {}
    for line in (REPO / "weights" / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows.setdefault(cells[0], cells[1:])
    speed = next(cells for name, cells in rows.items() if name.startswith("speed, model alone"))
    card = {}
    for column, model in enumerate(("fast", "accurate")):
        accuracy = next(cells for name, cells in rows.items() if name.startswith(f"**`{model}`"))
        low, high = re.fullmatch(r"([\d,]+)–([\d,]+) faces/s", speed[column]).groups()
        card[model] = {
            "file": re.match(r"`weights/(\S+)`, [\d.]+ MB", rows["file"][column]).group(1),
            "size": re.fullmatch(r"(\d+)x\1 grayscale, pixels / 255", rows["input"][column]).group(1),
            "speed": f"{low}-{high}".replace(",", ""),
            "architecture": re.match(r"`(\w+)`:", rows["architecture"][column]).group(1),
            "nme15": re.match(r"\*\*([\d.]+) % /", accuracy[0]).group(1),
            "nme68": re.match(r"\*\*([\d.]+) % /", accuracy[1]).group(1),
        }
    return card


def test_models_lists_shipped_models_with_card_figures_and_architectures():
    result = invoke("models")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    fast = next(line for line in lines if line.strip().startswith("fast (default)"))
    accurate = next(line for line in lines if line.strip().startswith("accurate"))
    card = model_card()
    for line, figures in ((fast, card["fast"]), (accurate, card["accurate"])):
        assert figures["file"] in line and f"{figures['size']} px" in line and f"{figures['speed']} faces/s" in line
        assert f"NME {figures['nme15']} % / {figures['nme68']} %" in line and figures["architecture"] in line
    assert "fkpnet68.pt" in fast and "fkpnet68_128.pt" in accurate
    assert re.search(
        r"Architectures.*fkpnet, fkpnet_lite0, fkpnet_small, fkpnet_tiny, fkpnet_wide, seed", result.stdout
    )


def test_model_by_name_selects_the_shipped_file_and_excludes_weights(tiny_weights):
    image = REPO / "examples" / "Celso_Lafer_12.jpg"
    result = invoke("predict", image, "--model", "accurate", "--workers", "0", "-v")
    assert result.exit_code == 0, result.output
    assert "fkpnet68_128.pt (fkpnet_wide, 83 points, 128 px)" in result.stderr
    both = invoke("predict", image, "--model", "fast", "-w", tiny_weights)
    assert both.exit_code == 2 and "not both" in both.stderr
    commands = (["evaluate", str(image)], ["export", "--onnx", "x.onnx"], ["submission", "t.csv", "--lookup", "l.csv"])
    for command in commands:
        result = invoke(*command, "--model", "nope")
        assert result.exit_code == 2 and "'nope'" in result.stderr, command  # Typer checks the choice


def test_detector_runs_from_the_shipped_onnx_without_opencv():
    code = (
        "import sys\nfrom PIL import Image\nfrom fkpbatch.detect import FaceDetector\n"
        "faces = FaceDetector().detect(Image.open('examples/couple.jpg'))\n"
        "print(len(faces), 'cv2' in sys.modules, 'retinaface' in sys.modules)"
    )
    assert run_python(code) == "2 False False"
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if "retinaface" in d]


def test_line_progress_paces_lines_by_time_and_by_tenths():
    now, lines = [0.0], []
    progress = LineProgress("predict", interval=10, write=lines.append, clock=lambda: now[0])
    progress.start(1000)
    for _ in range(50):  # 1 image per 0.1 s: 5 s, 5 % -> no line yet
        now[0] += 0.1
        progress.advance(1)
    assert lines == []
    for _ in range(50):  # reaching 10 %: one line
        now[0] += 0.1
        progress.advance(1)
    assert lines == ["predict: 100/1000 images (10 %), 10.0 images/s, elapsed 0:00:10, ETA 0:01:30"]
    now[0] += 30  # a stall: the next advance reports because 10 s passed, not because of a tenth
    progress.advance(1)
    assert len(lines) == 2 and lines[1].startswith("predict: 101/1000 images (10 %)")
    assert all(PROGRESS.match(line) for line in lines)


def test_predict_in_a_log_writes_progress_lines_and_a_one_line_summary(tmp_path):
    """CliRunner's stderr is not a terminal, like Slurm's or nohup's: plain lines, none wrapped."""
    folder = tmp_path / "in"
    folder.mkdir()
    for image in sorted((REPO / "examples").iterdir())[:3]:
        (folder / image.name).write_bytes(image.read_bytes())
    args = ["predict", str(folder), "-o", str(tmp_path / "out.csv"), "--workers", "0", "-b", "1", "--detect", "never"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert [line for line in lines if PROGRESS.match(line)][-1].startswith("predict: 3/3 images (100 %)")
    assert SUMMARY.match(lines[-1]) and len(lines[-1]) > 80  # longer than rich's default width: not folded
    assert all(PROGRESS.match(line) or SUMMARY.match(line) for line in lines), lines
    quiet = invoke(*args, "--overwrite", "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""
    verbose = invoke(*args, "--overwrite", "-v")
    assert verbose.exit_code == 0 and verbose.stderr.startswith("model ")
    assert "--detect never" in verbose.stderr.splitlines()[0]


def test_predict_through_a_pipe_has_unwrapped_lines(tmp_path):
    out = tmp_path / "o.csv"
    command = [sys.executable, "-m", "fkpbatch", "predict", "examples", "-o", str(out), "--workers", "0", "-b", "2"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert any(PROGRESS.match(line) for line in lines) and SUMMARY.match(lines[-1]), lines


def test_every_file_in_weights_is_package_data():
    """A model added to weights/ but not to pyproject.toml's package-data would be missing from the wheel."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"]["fkpbatch.weights"] == "weights" and "fkpbatch.weights" in setuptools["packages"]
    patterns = setuptools["package-data"]["fkpbatch.weights"]
    files = [p.name for p in (REPO / "weights").iterdir() if p.is_file() and p.suffix != ".py"]
    assert files and all(any(fnmatch.fnmatch(name, pattern) for pattern in patterns) for name in files), files
