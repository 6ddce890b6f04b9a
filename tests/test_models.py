import pytest
import torch

from fkpbatch.errors import UnknownModelError
from fkpbatch.models import create_model, list_models


def test_seed_has_the_notebooks_trainable_parameter_count():
    model = create_model("seed", num_keypoints=15)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 18_007_710


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_maps_a_batch_to_unit_keypoints(name):
    model = create_model(name, num_keypoints=7).eval()
    with torch.inference_mode():
        out = model(torch.rand(2, 1, 96, 96))
    assert out["keypoints"].shape == (2, 7, 2)
    if "quality" in out:
        assert out["quality"].shape == (2,)
        assert ((out["quality"] >= 0) & (out["quality"] <= 1)).all()


def test_unknown_architecture_names_the_choices():
    with pytest.raises(UnknownModelError, match="unknown arch 'resnet9000'; choose from .*fkpnet.*seed"):
        create_model("resnet9000")


def test_onnxruntime_and_torch_paths_agree(tiny_weights):
    from fkpbatch.engine import Predictor

    crops = torch.randint(0, 256, (5, 1, 48, 48), dtype=torch.uint8)
    onnx_points, onnx_quality = Predictor.load(tiny_weights, "cpu", "onnxruntime").predict_crops(crops)
    torch_points, torch_quality = Predictor.load(tiny_weights, "cpu", "torch").predict_crops(crops)
    assert onnx_points.shape == (5, 15, 2)
    assert abs(onnx_points - torch_points).max() < 1e-4 and abs(onnx_quality - torch_quality).max() < 1e-4


def test_export_writes_a_model_onnxruntime_runs(tiny_weights, tmp_path):
    import onnxruntime
    from typer.testing import CliRunner

    from fkpbatch.cli import app

    target = tmp_path / "model.onnx"
    result = CliRunner().invoke(app, ["export", "--onnx", str(target), "-w", str(tiny_weights)])
    assert result.exit_code == 0, result.output
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    keypoints, quality = session.run(None, {"images": torch.zeros(3, 1, 48, 48, dtype=torch.uint8).numpy()})
    assert keypoints.shape == (3, 15, 2) and quality.shape == (3,)


def test_auto_runtime_falls_back_to_torch_when_export_fails(tmp_path, monkeypatch):
    from contextlib import nullcontext

    from fkpbatch import export
    from fkpbatch.checkpoint import ModelSpec, save_checkpoint
    from fkpbatch.engine import Predictor
    from fkpbatch.errors import UsageError
    from fkpbatch.keypoints import KAGGLE_POINTS
    from fkpbatch.transforms import Framing

    spec = ModelSpec("seed", KAGGLE_POINTS, 96, Framing())
    path = tmp_path / "seed.pt"
    save_checkpoint(path, spec, spec.build())
    assert Predictor.load(path, "cpu", "onnxruntime").onnx is not None  # adaptive pools fixed for the export
    # Without that fix the exporter cannot convert the seed net's adaptive pooling: PyTorch runs it.
    monkeypatch.setattr(export, "_fixed_pools", lambda *args: nullcontext())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    predictor = Predictor.load(path, "cpu", "auto")
    assert predictor.onnx is None
    points, quality = predictor.predict_crops(torch.zeros(2, 1, 96, 96, dtype=torch.uint8))
    assert points.shape == (2, 15, 2) and quality is None
    with pytest.raises(UsageError, match="cannot be exported to ONNX"):
        Predictor.load(path, "cpu", "onnxruntime")


def test_no_file_can_change_the_onnx_graph_and_a_wrong_graph_is_never_run(tiny_weights, monkeypatch, tmp_path):
    """The graph is exported from the weights on every load (no cache to plant a graph in), and a
    graph that does not compute the model's outputs (here: another model's) is refused."""
    import io
    import os

    from fkpbatch import export
    from fkpbatch.checkpoint import load_model
    from fkpbatch.engine import Predictor

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model, spec = load_model(tiny_weights)
    torch.manual_seed(7)
    other = spec.build().eval()
    planted = io.BytesIO()
    export.export_onnx(other, spec, planted)
    (tmp_path / "fkpbatch").mkdir()
    for name in (f"{spec.arch}-{'0' * 32}.onnx", f"{spec.arch}.onnx"):  # what an old cache entry looked like
        (tmp_path / "fkpbatch" / name).write_bytes(planted.getvalue())
    crops = torch.randint(0, 256, (3, 1, 48, 48), dtype=torch.uint8)
    expected, _ = Predictor.load(tiny_weights, "cpu", "torch").predict_crops(crops)
    before = sorted(os.listdir(tmp_path / "fkpbatch"))
    points, _ = Predictor.load(tiny_weights, "cpu", "onnxruntime").predict_crops(crops)
    assert abs(points - expected).max() < 1e-4 and sorted(os.listdir(tmp_path / "fkpbatch")) == before
    real_export = torch.onnx.export

    def swapped(graph, args, target, **options):  # an exporter that writes another graph than the model's
        real_export(export._UInt8Graph(other, spec.pixel_scale), args, target, **options)

    monkeypatch.setattr(torch.onnx, "export", swapped)
    with pytest.raises(ValueError, match="does not compute the model's outputs"):
        export.OnnxKeypoints(model, spec)
    predictor = Predictor.load(tiny_weights, "cpu", "auto")
    assert predictor.onnx is None  # PyTorch runs the model instead
    assert abs(predictor.predict_crops(crops)[0] - expected).max() < 1e-6


def test_export_leaves_file_descriptors_and_the_exporter_log_as_it_found_them(tiny_weights, monkeypatch):
    import io
    import os

    from fkpbatch import export
    from fkpbatch.checkpoint import load_model

    calls = []
    model, spec = load_model(tiny_weights)
    log_was_on = torch._C._jit_is_onnx_log_enabled()
    with monkeypatch.context() as patch:
        for name in ("dup", "dup2"):
            real = getattr(os, name)
            patch.setattr(os, name, lambda *args, _name=name, _real=real: calls.append((_name, args)) or _real(*args))
        export.export_onnx(model, spec, io.BytesIO())
        export.OnnxKeypoints(model, spec)
    assert calls == []  # file descriptors 1 and 2 are the process's, never redirected by a library
    assert torch._C._jit_is_onnx_log_enabled() == log_was_on


def test_quiet_predict_prints_nothing_when_the_cache_folder_cannot_be_written(tiny_weights, tmp_path):
    import os
    import subprocess
    import sys

    from PIL import Image

    from conftest import REPO

    not_a_folder = tmp_path / "cache"
    not_a_folder.write_bytes(b"")  # $XDG_CACHE_HOME is a file: nothing can be stored under it
    Image.new("RGB", (48, 48), (90, 90, 90)).save(tmp_path / "a.png")
    env = {**os.environ, "XDG_CACHE_HOME": str(not_a_folder), "HOME": str(not_a_folder), "PYTHONPATH": str(REPO)}
    env.pop("ORT_DISABLE_TELEMETRY", None)
    command = ["predict", str(tmp_path / "a.png"), "-w", str(tiny_weights), "--workers", "0", "--device", "cpu", "-q"]
    result = subprocess.run(
        [sys.executable, "-m", "fkpbatch", *command], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]
    assert len(result.stdout.splitlines()) == 2
