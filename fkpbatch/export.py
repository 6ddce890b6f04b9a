"""ONNX export of a keypoint model, and the onnxruntime session that runs it on the CPU, where it
measured 1.5x faster than PyTorch for fkpnet (benchmarks/RESULTS.md). Exports are cached: each
one costs about 2 s of start-up."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import ModelSpec
from .errors import OutputError
from .fileio import atomic_write, write_bytes_atomic
from .runtime import cpu_count

OPSET = 17
# A cache file: this magic line, the fingerprint line, the graph's SHA-256 line, then the graph.
_CACHE_MAGIC = b"fkpbatch-onnx-cache-1\n"


class _UInt8Graph(nn.Module):
    """Takes uint8 crops like the torch path and returns keypoints (and quality) only."""

    def __init__(self, model: nn.Module, pixel_scale: float):
        super().__init__()
        self.model, self.pixel_scale = model, pixel_scale

    def forward(self, images: torch.Tensor):
        out = self.model(images.float() / self.pixel_scale)
        return (out["keypoints"], out["quality"]) if "quality" in out else (out["keypoints"],)


def export_onnx(
    model: nn.Module, spec: ModelSpec, target: Path | io.BytesIO, *, overwrite: bool = False, inputs=()
) -> None:
    """Write ``model`` as ONNX: input ``images`` uint8 (N, 1, S, S); outputs ``keypoints`` (N, K, 2)
    in unit coordinates of the crop and, for heatmap models, ``quality`` (N,). A file ``target`` is
    written atomically; it must not exist (unless ``overwrite``) nor be one of ``inputs``."""
    if not isinstance(target, io.BytesIO):
        path = Path(target)
        from .fileio import check_target

        check_target(path, overwrite=overwrite, inputs=inputs)  # before the export's seconds
        buffer = io.BytesIO()
        export_onnx(model, spec, buffer)
        write_bytes_atomic(path, buffer.getvalue(), overwrite=overwrite, inputs=inputs)
        return
    graph = _UInt8Graph(model, spec.pixel_scale).eval()
    was_training = model.training
    dummy = torch.zeros(2, 1, spec.input_size, spec.input_size, dtype=torch.uint8)
    try:
        with torch.no_grad(), warnings.catch_warnings(), _fixed_pools(model, graph, dummy), _quiet_output():
            warnings.simplefilter("ignore")
            outputs = ["keypoints", "quality"][: len(graph(dummy))]
            torch.onnx.export(
                graph,
                (dummy,),
                target,
                input_names=["images"],
                output_names=outputs,
                opset_version=OPSET,
                dynamic_axes={"images": {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
                dynamo=False,
            )
    finally:
        model.train(was_training)  # the exporter restores the wrapper's mode onto the model


@contextmanager
def _fixed_pools(model: nn.Module, graph: nn.Module, dummy: torch.Tensor):
    """Adaptive average pools become fixed ones for the export's (fixed) input size: the ONNX
    exporter cannot convert an adaptive pool whose input size it lost track of (the seed network),
    and for an input that divides evenly both compute the same means. Restored afterwards."""
    seen: dict[nn.Module, tuple[int, int]] = {}
    pools = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.AdaptiveAvgPool2d)]

    def record(module, args, _output) -> None:
        seen[module] = tuple(args[0].shape[-2:])

    hooks = [m.register_forward_hook(record) for _, m in pools]
    try:
        graph(dummy)
    finally:
        for hook in hooks:
            hook.remove()
    swapped = []
    for name, pool in pools:
        size = pool.output_size if isinstance(pool.output_size, tuple) else (pool.output_size,) * 2
        shape = seen.get(pool)
        if shape is None or None in size or any(i % o for i, o in zip(shape, size)):
            continue
        kernel = tuple(i // o for i, o in zip(shape, size))
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.AvgPool2d(kernel, kernel))
        swapped.append((parent, child, pool))
    try:
        yield
    finally:
        for parent, child, pool in swapped:
            setattr(parent, child, pool)


@contextmanager
def _quiet_output():
    """The TorchScript exporter prints whole graphs ("Torch IR graph at exception", hundreds of
    lines) from C++ to the process's stdout when it fails, which would corrupt CSV on stdout; its
    output goes to a scratch file instead (file descriptors 1 and 2 are redirected meanwhile)."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    saved = []
    try:
        with tempfile.TemporaryFile() as sink:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                    os.dup2(sink.fileno(), fd)
                except OSError:
                    pass
            yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)


def cache_dir() -> Path:
    """Where exported graphs are kept: ``$XDG_CACHE_HOME/fkpbatch`` (default ``~/.cache/fkpbatch``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fkpbatch"


def _versions() -> list[str]:
    """What the exported graph depends on besides the weights: the exporter and the runtime."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    found = [f"fkpbatch {__version__}", f"torch {torch.__version__}", f"opset {OPSET}"]
    for package in ("onnx", "onnxruntime", "onnxscript"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} none")
    return found


def _fingerprint(model: nn.Module, spec: ModelSpec) -> str:
    """A hash of the weights' content, the spec and the versions of fkpbatch (the graph wrapper),
    torch (the exporter) and onnx/onnxruntime: a cache entry matches exactly one of each."""
    digest = hashlib.sha256(json.dumps([spec.to_dict(), _versions()]).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _read_cached(path: Path, fingerprint: str) -> bytes | None:
    """The graph in a cache file, or None unless the file is a regular file (not a link) that
    names this very fingerprint and whose graph still has the recorded SHA-256: a stale, swapped,
    planted or damaged entry is never used."""
    try:
        if path.is_symlink() or not path.is_file():
            return None
        data = path.read_bytes()
    except OSError:
        return None
    head = _CACHE_MAGIC + fingerprint.encode() + b"\n"
    if not data.startswith(head):
        return None
    digest, _, graph = data[len(head) :].partition(b"\n")
    return graph if digest == hashlib.sha256(graph).hexdigest().encode() else None


def cached_onnx(model: nn.Module, spec: ModelSpec, refresh: bool = False) -> bytes:
    """The model's ONNX graph from the cache, or exported (and cached when the folder is
    writable) on a miss or with ``refresh``. Entries are keyed by :func:`_fingerprint` and
    checked on every read; they are written atomically (exclusive temporary file + rename)."""
    fingerprint = _fingerprint(model, spec)
    path = cache_dir() / f"{spec.arch}-{fingerprint[:32]}.onnx"
    graph = None if refresh else _read_cached(path, fingerprint)
    if graph is not None:
        return graph
    buffer = io.BytesIO()
    export_onnx(model, spec, buffer)
    graph = buffer.getvalue()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, overwrite=True) as handle:
            handle.write(
                _CACHE_MAGIC + fingerprint.encode() + b"\n" + hashlib.sha256(graph).hexdigest().encode() + b"\n"
            )
            handle.write(graph)
    except (OSError, OutputError):
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
