"""Checkpoints: one dict holding the weights and everything predict needs to use them."""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import FkpError, WeightsError
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
    def from_dict(cls, data: dict) -> "ModelSpec":
        return cls(
            arch=str(data["arch"]),
            keypoints=tuple(data["keypoints"]),
            input_size=int(data["input_size"]),
            framing=Framing(**data["framing"]),
            pixel_scale=float(data.get("pixel_scale", 255.0)),
        )

    def build(self) -> nn.Module:
        return create_model(self.arch, num_keypoints=len(self.keypoints))


def save_checkpoint(path: Path, spec: ModelSpec, model: nn.Module, **extra) -> None:
    """Write atomically (temp file + rename), so a crash mid-write leaves the previous file intact."""
    payload = {"format": FORMAT, "spec": spec.to_dict(), "model": model.state_dict(), **extra}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path | str) -> dict:
    """Load with ``weights_only=True``; anything unreadable or foreign is one WeightsError."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint ({first[:160]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise WeightsError(f"{path} was not written by fkpbatch train (no {FORMAT!r} marker)")
    return payload


def load_model(path: Path | str) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model of a checkpoint, in eval mode, on the CPU."""
    payload = load_checkpoint(path)
    try:
        spec = ModelSpec.from_dict(payload["spec"])
        model = spec.build()
        model.load_state_dict({k: v.float() for k, v in payload["model"].items()})
    except FkpError:
        raise
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise WeightsError(f"{path}: checkpoint does not match its architecture ({str(exc).splitlines()[0][:160]})") from None
    return model.eval(), spec
