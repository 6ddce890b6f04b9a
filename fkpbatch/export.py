"""ONNX export of a keypoint model, and the onnxruntime session that runs it on the CPU, where it
measured 1.5x faster than PyTorch for fkpnet (benchmarks/RESULTS.md). Exports are cached: each
one costs about 2 s of start-up."""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import ModelSpec
from .runtime import cpu_count


class _UInt8Graph(nn.Module):
    """Takes uint8 crops like the torch path and returns keypoints (and quality) only."""

    def __init__(self, model: nn.Module, pixel_scale: float):
        super().__init__()
        self.model, self.pixel_scale = model, pixel_scale

    def forward(self, images: torch.Tensor):
        out = self.model(images.float() / self.pixel_scale)
        return (out["keypoints"], out["quality"]) if "quality" in out else (out["keypoints"],)


def export_onnx(model: nn.Module, spec: ModelSpec, target: Path | io.BytesIO) -> None:
    """Write ``model`` as ONNX: input ``images`` uint8 (N, 1, S, S); outputs ``keypoints`` (N, K, 2)
    in unit coordinates of the crop and, for heatmap models, ``quality`` (N,)."""
    graph = _UInt8Graph(model, spec.pixel_scale).eval()
    was_training = model.training
    dummy = torch.zeros(2, 1, spec.input_size, spec.input_size, dtype=torch.uint8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outputs = ["keypoints", "quality"][: len(graph(dummy))]
        torch.onnx.export(graph, (dummy,), target, input_names=["images"], output_names=outputs, opset_version=17,
                          dynamic_axes={"images": {0: "batch"}, **{name: {0: "batch"} for name in outputs}}, dynamo=False)
    model.train(was_training)  # the exporter restores the wrapper's mode onto the model


def cache_dir() -> Path:
    """Where exported graphs are kept: ``$XDG_CACHE_HOME/fkpbatch`` (default ``~/.cache/fkpbatch``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fkpbatch"


def _fingerprint(model: nn.Module, spec: ModelSpec) -> str:
    """Changes with the weights, the spec, torch (the exporter) and fkpbatch (the graph wrapper)."""
    from . import __version__

    digest = hashlib.sha256(json.dumps([spec.to_dict(), torch.__version__, __version__]).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def cached_onnx(model: nn.Module, spec: ModelSpec, refresh: bool = False) -> bytes:
    """The model's ONNX graph from the cache, or exported (and cached when the folder is
    writable) on a miss or with ``refresh``."""
    path = cache_dir() / f"{spec.arch}-{_fingerprint(model, spec)}.onnx"
    if not refresh and path.is_file():
        try:
            return path.read_bytes()
        except OSError:
            pass
    buffer = io.BytesIO()
    export_onnx(model, spec, buffer)
    graph = buffer.getvalue()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(graph)
        os.replace(tmp, path)
    except OSError:
        pass  # read-only home: export again next time
    return graph


class OnnxKeypoints:
    """Runs an exported model with onnxruntime; same inputs and outputs as the torch path."""

    def __init__(self, model: nn.Module, spec: ModelSpec):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = cpu_count()
        # Idle threads sleep instead of spinning: the DataLoader workers need those cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")

        def session(graph: bytes):
            return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

        try:
            self.session = session(cached_onnx(model, spec))
        except Exception:  # noqa: BLE001 - a damaged cached graph only costs a new export
            self.session = session(cached_onnx(model, spec, refresh=True))

    def __call__(self, crops: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = self.session.run(None, {"images": crops.numpy()})
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)
