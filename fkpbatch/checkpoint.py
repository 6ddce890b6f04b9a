"""Checkpoints: one dict holding the weights and everything predict needs to use them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import FkpError, OutputError, WeightsError
from .fileio import atomic_write
from .keypoints import KAGGLE_POINTS
from .models import create_model
from .transforms import Framing

FORMAT = "fkpbatch-checkpoint-1"


@dataclass(frozen=True)
class ModelSpec:
    """What a checkpoint says about its model: enough to rebuild it and frame faces for it."""

    arch: str
    keypoints: tuple[str, ...]
    input_size: int
    framing: Framing
    pixel_scale: float = 255.0  # inputs are uint8 / pixel_scale

    def to_dict(self) -> dict:
        return {
            "arch": self.arch,
            "keypoints": list(self.keypoints),
            "input_size": self.input_size,
            "framing": {"scale": self.framing.scale, "shift": self.framing.shift},
            "pixel_scale": self.pixel_scale,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        """Rebuild and check a spec; anything missing, mistyped or nonsensical is a WeightsError
        naming the key, so a damaged checkpoint never yields empty or garbage keypoints."""
        if not isinstance(data, dict):
            raise WeightsError(f"checkpoint spec is a {type(data).__name__}, not a dict")
        missing = [k for k in ("arch", "keypoints", "input_size", "framing") if k not in data]
        if missing:
            raise WeightsError(f"checkpoint spec lacks {', '.join(missing)}")
        arch, keypoints, framing = data["arch"], data["keypoints"], data["framing"]
        if not isinstance(arch, str) or not arch:
            raise WeightsError(f"checkpoint spec: arch must be a name, not {arch!r}")
        if not isinstance(keypoints, (list, tuple)) or not all(isinstance(k, str) for k in keypoints):
            raise WeightsError("checkpoint spec: keypoints must be a list of names")
        if len(set(keypoints)) != len(keypoints) or not set(KAGGLE_POINTS) <= set(keypoints):
            raise WeightsError("checkpoint spec: keypoints must be distinct and include the 15 Kaggle points")
        input_size = _number(data["input_size"], "input_size", integer=True)
        if not 16 <= input_size <= 4096:
            raise WeightsError(f"checkpoint spec: input_size {int(input_size)} is not a face crop size (16..4096 px)")
        if not isinstance(framing, dict) or set(framing) - {"scale", "shift"}:
            raise WeightsError(f"checkpoint spec: framing must be {{'scale': ..., 'shift': ...}}, not {framing!r}")
        scale = _number(framing.get("scale", Framing.scale), "framing scale")
        shift = _number(framing.get("shift", Framing.shift), "framing shift", positive=False)
        pixel_scale = _number(data.get("pixel_scale", 255.0), "pixel_scale")
        return cls(
            arch=arch,
            keypoints=tuple(keypoints),
            input_size=int(input_size),
            framing=Framing(scale, shift),
            pixel_scale=pixel_scale,
        )

    def build(self) -> nn.Module:
        return create_model(self.arch, num_keypoints=len(self.keypoints))


def save_checkpoint(
    path: Path, spec: ModelSpec, model: nn.Module, *, overwrite: bool = True, inputs=(), **extra
) -> None:
    """Write atomically (exclusive temp file + fsync + rename), so a crash mid-write leaves the
    previous file intact, a link is replaced rather than written through, and ``inputs`` (e.g.
    the training data or the --init weights) are never replaced."""
    payload = {"format": FORMAT, "spec": spec.to_dict(), "model": model.state_dict(), **extra}
    with atomic_write(Path(path), overwrite=overwrite, inputs=inputs) as handle:
        try:
            torch.save(payload, handle)
        except RuntimeError as exc:  # torch's writer reports a full disk as a RuntimeError
            raise OutputError(f"cannot write {path}: {str(exc).splitlines()[0][:160]}") from None


def _number(value, key: str, *, integer: bool = False, positive: bool = True) -> float:
    """A finite number (an int when ``integer``), > 0 when ``positive``; else a WeightsError."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or (positive and value <= 0):
        wanted = "a positive " if positive else "a finite "
        raise WeightsError(
            f"checkpoint spec: {key} must be {wanted}{'integer' if integer else 'number'}, not {value!r}"
        )
    return float(value)


def load_checkpoint(path: Path | str) -> dict:
    """Load with ``weights_only=True``; anything unreadable or foreign is one WeightsError."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any bytes may be handed in; torch's unpickler raises many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint ({first[:160]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise WeightsError(f"{path} was not written by fkpbatch train (no {FORMAT!r} marker)")
    return payload


def load_model(path: Path | str) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model of a checkpoint, in eval mode, on the CPU. Refused (WeightsError): a spec
    that is damaged or nonsensical, weights that are NaN or infinite, or a model that does not
    give finite keypoints of the right shape for a blank crop of its input size."""
    payload = load_checkpoint(path)
    try:
        spec = ModelSpec.from_dict(payload.get("spec"))
        model = spec.build()
        weights = payload["model"]
        if not isinstance(weights, dict):
            raise TypeError("its weights are not a state dict")
        bad = [
            k
            for k, v in weights.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()
        ]
        if bad:
            raise WeightsError(
                f"{path}: weights hold NaN or infinite values ({bad[0]}{' ...' if len(bad) > 1 else ''}); "
                "the training diverged; use an earlier checkpoint"
            )
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()})
    except FkpError as exc:
        raise WeightsError(str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}") from None
    except (KeyError, TypeError, RuntimeError, ValueError, AttributeError) as exc:
        raise WeightsError(
            f"{path}: checkpoint does not match its architecture ({str(exc).splitlines()[0][:160]})"
        ) from None
    _dry_run(model.eval(), spec, path)
    return model, spec


@torch.inference_mode()
def _dry_run(model: nn.Module, spec: ModelSpec, path) -> None:
    """One blank crop through the model: a spec the network cannot run (an input size too small
    for its pooling) or weights that give non-finite keypoints fail here, not as empty rows."""
    try:
        out = model(torch.zeros(1, 1, spec.input_size, spec.input_size))
        keypoints = out["keypoints"]
    except Exception as exc:  # noqa: BLE001 - any failure here means the checkpoint is unusable
        raise WeightsError(
            f"{path}: {spec.arch} cannot run at input size {spec.input_size} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
        ) from None
    if tuple(keypoints.shape) != (1, len(spec.keypoints), 2) or not torch.isfinite(keypoints).all():
        raise WeightsError(f"{path}: the model gives no finite keypoints at input size {spec.input_size}")
