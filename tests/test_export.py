"""The ONNX graph (fkpbatch.export): onnxruntime and PyTorch agree, the shipped models run their
shipped graphs without an export, ``fkpbatch export`` writes a graph onnxruntime runs and never
over an existing file, an input or through a link, no file can plant a graph, a model that cannot
be exported falls back to PyTorch quietly, and exporting leaves the process's file descriptors and
the exporter's log as they were."""

import io
import os
from contextlib import nullcontext

import pandas as pd
import pytest
import torch

from fkpbatch import export
from fkpbatch.checkpoint import ModelSpec, load_model, save_checkpoint
from fkpbatch.engine import Predictor
from fkpbatch.errors import UsageError
from fkpbatch.keypoints import KAGGLE_POINTS
from fkpbatch.transforms import Framing
from fkpbatch.zoo import model_path, shipped_graph

from conftest import REPO, fkpbatch_process, grey_pngs, invoke, one_line_error


def _seed_checkpoint(path):
    spec = ModelSpec("seed", KAGGLE_POINTS, 96, Framing())
    torch.manual_seed(0)
    save_checkpoint(path, spec, spec.build())
    return path


def test_onnxruntime_and_torch_paths_agree(tiny_weights):
    crops = torch.randint(0, 256, (5, 1, 48, 48), dtype=torch.uint8)
    onnx_points, onnx_quality = Predictor.load(tiny_weights, "cpu", "onnxruntime").predict_crops(crops)
    torch_points, torch_quality = Predictor.load(tiny_weights, "cpu", "torch").predict_crops(crops)
    assert onnx_points.shape == (5, 15, 2)
    assert abs(onnx_points - torch_points).max() < 1e-4 and abs(onnx_quality - torch_quality).max() < 1e-4


def test_export_writes_a_model_onnxruntime_runs(tiny_weights, tmp_path):
    import onnxruntime

    target = tmp_path / "model.onnx"
    result = invoke("export", "--onnx", target, "-w", tiny_weights)
    assert result.exit_code == 0, result.output
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    keypoints, quality = session.run(None, {"images": torch.zeros(3, 1, 48, 48, dtype=torch.uint8).numpy()})
    assert keypoints.shape == (3, 15, 2) and quality.shape == (3,)


def test_shipped_models_run_their_shipped_graph_without_an_export(monkeypatch):
    """weights/*.onnx ship beside the shipped weights: no export at start-up, and a graph that does
    not compute the weights' outputs is never run (the engine falls back to PyTorch)."""

    def no_export(*_args, **_kwargs):
        raise AssertionError("exported at start-up")

    monkeypatch.setattr(export, "export_onnx", no_export)
    for name in ("fast", "accurate"):
        assert Predictor.load(model=name, device="cpu").onnx is not None
    net, spec = load_model(model_path("fast"))
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.05)  # other weights under the same shipped graph
    assert Predictor(net, spec, torch.device("cpu"), "auto", shipped_graph(model_path("fast"))).onnx is None


def test_export_refuses_existing_files_inputs_and_links(tmp_path, tiny_weights):
    before = tiny_weights.read_bytes()
    existing = tmp_path / "model.onnx"
    existing.write_bytes(b"keep me")
    one_line_error(invoke("export", "--onnx", existing, "-w", tiny_weights))
    assert existing.read_bytes() == b"keep me"
    link = tmp_path / "link.onnx"
    link.symlink_to(tiny_weights)
    for target in (tiny_weights, link):  # the weights themselves, or a link to them: never, even with --overwrite
        result = invoke("export", "--onnx", target, "-w", tiny_weights, "--overwrite")
        assert result.exit_code == 2 and "input" in result.output
    assert tiny_weights.read_bytes() == before and link.is_symlink()
    result = invoke("export", "--onnx", existing, "-w", tiny_weights, "--overwrite")
    assert result.exit_code == 0, result.output
    assert existing.read_bytes() != b"keep me" and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_auto_runtime_falls_back_to_torch_when_export_fails(tmp_path, monkeypatch):
    path = _seed_checkpoint(tmp_path / "seed.pt")
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


def test_a_failing_onnx_export_falls_back_quietly(capfd, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(export, "_fixed_pools", lambda *args: nullcontext())  # the seed net unexportable again
    spec = ModelSpec("seed", KAGGLE_POINTS, 96, Framing())
    predictor = Predictor(spec.build().eval(), spec, torch.device("cpu"), "auto")
    assert predictor.onnx is None  # fell back to PyTorch
    out, err = capfd.readouterr()
    assert "Torch IR" not in out + err and "aten::" not in out + err and len((out + err).splitlines()) < 5


def test_predict_with_a_seed_checkpoint_prints_no_exporter_graph(tmp_path):
    weights = _seed_checkpoint(tmp_path / "seed.pt")
    folder = grey_pngs(tmp_path / "in", 2)
    predict = ["predict", folder, "-w", weights, "--workers", "0", "--detect", "never", "--device", "cpu"]
    result = fkpbatch_process(*predict, env={"XDG_CACHE_HOME": str(tmp_path / "cache")}, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for text in (result.stdout, result.stderr):
        assert "Torch IR" not in text and "aten::" not in text, text[:2000]
    assert len(result.stdout.splitlines()) == 3 and len(pd.read_csv(io.StringIO(result.stdout))) == 2
    assert len(result.stderr.splitlines()) <= 3, result.stderr[:2000]


def test_no_file_can_change_the_onnx_graph_and_a_wrong_graph_is_never_run(tiny_weights, monkeypatch, tmp_path):
    """The graph is exported from the weights on every load (no cache to plant a graph in), and a
    graph that does not compute the model's outputs (here: another model's) is refused."""
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
    from PIL import Image

    not_a_folder = tmp_path / "cache"
    not_a_folder.write_bytes(b"")  # $XDG_CACHE_HOME is a file: nothing can be stored under it
    Image.new("RGB", (48, 48), (90, 90, 90)).save(tmp_path / "a.png")
    env = {"XDG_CACHE_HOME": str(not_a_folder), "HOME": str(not_a_folder), "ORT_DISABLE_TELEMETRY": None}
    command = ["predict", tmp_path / "a.png", "-w", tiny_weights, "--workers", "0", "--device", "cpu", "-q"]
    result = fkpbatch_process(*command, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]
    assert len(result.stdout.splitlines()) == 2
