"""ONNX export of a keypoint model, and the onnxruntime session that runs it on the CPU, where it
measured 1.5x faster than PyTorch for fkpnet (benchmarks/RESULTS.md).

The graph is exported into memory on every start (0.2-0.8 s for the shipped models, measured on 2
busy cores) and never read from a cache, so no file outside the weights can change the results; before
it is used, a fixed probe batch must give PyTorch's outputs through it. Nothing here touches the
process's file descriptors, and Python state changed for the export (warnings, the exporter's
log switch) is restored afterwards."""

from __future__ import annotations

import io
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import ModelSpec
from .fileio import write_bytes_atomic
from .options import cpu_count

OPSET = 17


class _UInt8Graph(nn.Module):
    """Takes uint8 crops like the torch path and returns keypoints (and quality) only."""

    def __init__(self, model: nn.Module, pixel_scale: float):
        super().__init__()
        self.model, self.pixel_scale = model, pixel_scale

    def forward(self, images: torch.Tensor):
        out = self.model(images.float() / self.pixel_scale)
        return (out["keypoints"], out["quality"]) if "quality" in out else (out["keypoints"],)


def export_onnx(
    model: nn.Module,
    spec: ModelSpec,
    target: Path | io.BytesIO,
    *,
    overwrite: bool = False,
    inputs=(),
    example: torch.Tensor | None = None,
) -> tuple[np.ndarray, ...]:
    """Write ``model`` as ONNX: input ``images`` uint8 (N, 1, S, S); outputs ``keypoints`` (N, K, 2)
    in unit coordinates of the crop and, for heatmap models, ``quality`` (N,). A file ``target`` is
    written atomically; it must not exist (unless ``overwrite``) nor be one of ``inputs``. The graph
    is traced on ``example`` (uint8 crops, default two black ones); returns the model's own outputs
    on it, computed before the export, to check the graph against."""
    if not isinstance(target, io.BytesIO):
        path = Path(target)
        from .fileio import check_target

        check_target(path, overwrite=overwrite, inputs=inputs, stream=True)  # before the export's seconds
        buffer = io.BytesIO()
        reference = export_onnx(model, spec, buffer, example=example)
        write_bytes_atomic(path, buffer.getvalue(), overwrite=overwrite, inputs=inputs, stream=True)
        return reference
    was_training = model.training  # before the wrapper's eval() reaches the model
    graph = _UInt8Graph(model, spec.pixel_scale).eval()
    if example is None:
        example = torch.zeros(2, 1, spec.input_size, spec.input_size, dtype=torch.uint8)
    try:
        with torch.no_grad(), warnings.catch_warnings(), _exporter_log_off():
            warnings.simplefilter("ignore")
            with _fixed_pools(model, graph, example) as reference:
                outputs = ["keypoints", "quality"][: len(reference)]
                torch.onnx.export(
                    graph,
                    (example,),
                    target,  # type: ignore[arg-type]  # torch says str | PathLike; the dynamo=False exporter takes a file object
                    input_names=["images"],
                    output_names=outputs,
                    opset_version=OPSET,
                    dynamic_axes={"images": {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
                    dynamo=False,
                )
        return tuple(t.detach().float().cpu().numpy() for t in reference)
    finally:
        model.train(was_training)  # the exporter restores the wrapper's mode onto the model


@contextmanager
def _fixed_pools(model: nn.Module, graph: nn.Module, dummy: torch.Tensor):
    """Adaptive average pools become fixed ones for the export's (fixed) input size: the ONNX
    exporter cannot convert an adaptive pool whose input size it lost track of (the seed network),
    and for an input that divides evenly both compute the same means. Restored afterwards. Yields
    the outputs of ``graph`` on ``dummy`` (the forward pass that measured the pools' inputs)."""
    seen: dict[nn.Module, tuple[int, int]] = {}
    pools = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.AdaptiveAvgPool2d)]

    def record(module, args, _output) -> None:
        seen[module] = tuple(args[0].shape[-2:])

    hooks = [m.register_forward_hook(record) for _, m in pools]
    try:
        reference = graph(dummy)
    finally:
        for hook in hooks:
            hook.remove()
    swapped = []
    for name, pool in pools:
        size = pool.output_size if isinstance(pool.output_size, tuple) else (pool.output_size,) * 2
        shape = seen.get(pool)
        if shape is None or None in size or any(i % o for i, o in zip(shape, size)):
            continue
        kernel = (shape[0] // size[0], shape[1] // size[1])
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.AvgPool2d(kernel, kernel))
        swapped.append((parent, child, pool))
    try:
        yield reference
    finally:
        for parent, child, pool in swapped:
            setattr(parent, child, pool)


@contextmanager
def _exporter_log_off():
    """The TorchScript exporter switches its C++ log on for every export (and leaves it on), then
    prints whole graphs ("Torch IR graph at exception", hundreds of lines) to stdout when an export
    fails, which would corrupt CSV on stdout. Its Python entry point for that log is replaced by a
    no-op during the export, and the switch is put back as it was, so nothing is printed."""
    switch = getattr(torch._C, "_jit_is_onnx_log_enabled", None)
    was_on = switch() if switch is not None else None
    log = getattr(torch._C, "_jit_onnx_log", None)
    if log is not None:
        torch._C._jit_onnx_log = lambda *args: None
    try:
        yield
    finally:
        if log is not None:
            torch._C._jit_onnx_log = log
        if was_on is not None and hasattr(torch._C, "_jit_set_onnx_log_enabled"):
            torch._C._jit_set_onnx_log_enabled(was_on)


def onnxruntime_module():
    """``import onnxruntime``, without its import-time telemetry: onnxruntime (1.32) prints a warning
    to stderr when it cannot store a telemetry device id under ``$XDG_CACHE_HOME`` (a read-only home),
    which ``-q`` must not show. ``ORT_DISABLE_TELEMETRY`` is set for the import only (unless the user
    set it) and the environment is put back as it was."""
    import sys

    if "onnxruntime" in sys.modules:
        return sys.modules["onnxruntime"]
    saved = os.environ.get("ORT_DISABLE_TELEMETRY")
    if saved is None:
        os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    try:
        import onnxruntime
    finally:
        if saved is None:
            os.environ.pop("ORT_DISABLE_TELEMETRY", None)
    return onnxruntime


def session_options(threads: int | None = None):
    """onnxruntime session options that print nothing below errors (no warnings on stderr under ``-q``)."""
    ort = onnxruntime_module()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors and fatal only
    if threads:
        options.intra_op_num_threads = threads
    return options


# Keypoints (unit coordinates of the crop) and quality of the ONNX graph may differ from PyTorch's by
# float rounding only (measured ~1e-6); a graph off by more is not the model.
PROBE_TOLERANCE = 1e-3


@torch.inference_mode()
def _outputs(model: nn.Module, spec: ModelSpec, crops: torch.Tensor) -> tuple[np.ndarray, ...]:
    """What the graph must compute on ``crops``: the model's own outputs, in eval mode."""
    was_training = model.training
    try:
        outputs = _UInt8Graph(model, spec.pixel_scale).eval()(crops)
    finally:
        model.train(was_training)
    return tuple(t.float().cpu().numpy() for t in outputs)


def probe_batch(spec: ModelSpec) -> torch.Tensor:
    """A fixed batch of uint8 crops (a gradient, noise, black) to compare two runtimes on."""
    size = spec.input_size
    ramp = torch.linspace(0, 255, size).round().to(torch.uint8).expand(size, size)
    noise = torch.randint(0, 256, (size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return torch.stack([ramp, noise, torch.zeros_like(ramp)]).unsqueeze(1).contiguous()


def check_graph(session, crops: torch.Tensor, expected: tuple[np.ndarray, ...]) -> None:
    """Raise ValueError unless ``session`` gives the ``expected`` outputs (the PyTorch model's) on ``crops``."""
    got = session.run(None, {"images": crops.numpy()})
    if len(got) != len(expected):
        raise ValueError(f"the ONNX graph has {len(got)} outputs, the model {len(expected)}")
    for ours, theirs in zip(got, expected):
        if ours.shape != theirs.shape or not np.allclose(ours, theirs, rtol=0, atol=PROBE_TOLERANCE):
            raise ValueError("the ONNX graph does not compute the model's outputs")


class OnnxKeypoints:
    """Runs an exported model with onnxruntime; same inputs and outputs as the torch path. The graph
    is ``graph`` (a shipped model's, exported with it: weights/*.onnx) or else exported from
    ``model`` here, in memory, traced on :func:`probe_batch`; either way it must give the model's
    own outputs on that batch (:func:`check_graph`). An export that fails or a graph that disagrees
    raises, and the caller runs PyTorch instead."""

    def __init__(self, model: nn.Module, spec: ModelSpec, graph: bytes | None = None):
        ort = onnxruntime_module()
        options = session_options(cpu_count())
        # Idle threads sleep instead of spinning: the DataLoader workers need those cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        probe = probe_batch(spec)
        if graph is None:
            buffer = io.BytesIO()
            expected = export_onnx(model, spec, buffer, example=probe)
            graph = buffer.getvalue()
        else:
            expected = _outputs(model, spec, probe)
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        check_graph(self.session, probe, expected)

    def __call__(self, crops: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = self.session.run(None, {"images": crops.numpy()})
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)
