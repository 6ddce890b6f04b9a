"""The choices of every option, as ``str`` Enums shared by the CLI (``--help`` lists them, Typer
checks them) and the Python API (which checks them with :meth:`Choice.parse`), and
:class:`PredictOptions`, whose field defaults are the CLI's defaults.

Light on purpose (no torch): the CLI imports it to build its options.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from enum import Enum, EnumMeta
from typing import Any, TypeVar

from .decode import DEFAULT_MAX_PIXELS
from .errors import UsageError
from .zoo import SHIPPED_MODELS

__all__ = [
    "Augment",
    "Choice",
    "Detect",
    "DetectOn",
    "Device",
    "Engine",
    "Faces",
    "Format",
    "Model",
    "Points",
    "PredictOptions",
    "Recipe",
    "Runtime",
]

C = TypeVar("C", bound="Choice")


class Choice(str, Enum):
    """Base of the option Enums: members are their string values (``Detect.auto == "auto"``), and
    print as them in every Python version."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    def __repr__(self) -> str:  # error messages say 'parquet', not <Format.parquet: 'parquet'>
        return repr(self.value)

    def __hash__(self) -> int:  # as the string: Points.ibug68 and "68" are one dict key
        return hash(self.value)

    @classmethod
    def parse(cls: type[C], value: object, option: str) -> C:
        """``value`` as a member; a UsageError naming ``option`` and the choices otherwise."""
        try:
            return cls(str(value.value if isinstance(value, Enum) else value))
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise UsageError(f"{option} must be one of {choices}, not {value!r}") from None

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """The accepted strings, in order."""
        return tuple(m.value for m in cls)


class Detect(Choice):
    """``--detect``: auto (detect; a small square image without a face is one tight crop), always, never."""

    auto = "auto"
    always = "always"
    never = "never"


class DetectOn(Choice):
    """``--detect-on``: where faces are detected. auto = workers (onnxruntime on the CPU, one image at
    a time; measured faster end to end on a 16-core GPU machine, benchmarks/RESULTS.md); device (the
    PyTorch port of the detector on --device, whole batches at once; the workers only decode: for
    machines with few cores per GPU)."""

    auto = "auto"
    workers = "workers"
    device = "device"


class Passes(Choice):
    """``--passes``: detector passes on large photos. auto: one coarse pass, and a second, finer one
    only where small faces are likely; one; two (always search at both sizes)."""

    auto = "auto"
    one = "one"
    two = "two"


class Faces(Choice):
    """``--faces``: every detected face, or the largest one per image."""

    all = "all"
    largest = "largest"


class Points(Choice):
    """``--points``: the 15 Kaggle keypoints, or those plus the 68 iBUG points."""

    kaggle15 = "15"
    ibug68 = "68"


class Device(Choice):
    """``--device``: auto (CUDA, else MPS, else CPU), cpu, cuda, mps."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Runtime(Choice):
    """``--runtime``: auto (onnxruntime on the CPU, PyTorch on a GPU), torch, onnxruntime."""

    auto = "auto"
    torch = "torch"
    onnxruntime = "onnxruntime"


class Format(Choice):
    """``--format``: csv, json, jsonl (local runs); csv, jsonl, parquet (``--engine ray`` shards)."""

    csv = "csv"
    json = "json"
    jsonl = "jsonl"
    parquet = "parquet"


class Engine(Choice):
    """``--engine``: local (this machine), ray (a Ray Data job)."""

    local = "local"
    ray = "ray"


# A shipped model by name (``--model``): fast (the default) or accurate. The members are made from
# the table in fkpbatch/zoo.py, the one place that names the shipped models and their files.
# EnumMeta.__call__ is what Choice(...) runs (Enum's functional API), named so that mypy, which checks
# a call of this str-mixin class against str(), sees it; members made at run time: Any to mypy.
Model: Any = EnumMeta.__call__(
    Choice, "Model", {name: name for name in SHIPPED_MODELS}, module=__name__, qualname="Model"
)
Model.__doc__ = "``--model``: a shipped model by name (see ``fkpbatch models`` and fkpbatch/zoo.py)."


class Recipe(Choice):
    """``train --recipe``: seed (the Kaggle notebook's) or fkpnet (the shipped models')."""

    seed = "seed"
    fkpnet = "fkpnet"


class Augment(Choice):
    """``train --augment``: none, seed (flip + brightness), strong (+ rotation, scale, shift)."""

    none = "none"
    seed = "seed"
    strong = "strong"


# "Only faces become rows", measured on the shared photos with the shipped models
# (benchmarks/quality_scale.py; benchmarks/RESULTS.md): clear faces have quality 0.36-0.58; the back of a head
# (img31) scores 0.867 and a blurred foreground profile 0.883, both quality 0.00 at about half the
# subject's size, so 0.86 keeps them (as rows with quality 0.00); 0.9 would drop them but comes
# within 0.05 quality of a real selfie face cut by the border (0.895, quality 0.25). Blurred faces
# behind the subject measure 0.19 of its size.
UNSURE_SCORE = 0.86
# 0.8 keeps real but blurred background faces and drops most torsos and patterns seen on photos/.
DEFAULT_MIN_SCORE = 0.8
UNSURE_QUALITY = 0.2
UNSURE_SIZE = 0.3


def cpu_count() -> int:
    """Cores this process may use (respects affinity masks and container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def default_workers() -> int:
    """One DataLoader worker per core (decode, detect and crop are the CPU side of a GPU run: a
    16-core GPU machine needs all 16 to feed it; on the CPU the keypoint model shares the cores)."""
    return cpu_count()


def _option(default, help: str):
    """A PredictOptions field whose ``help`` is also the CLI's ``--help`` text (one declaration)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class PredictOptions:
    """How images become faces. Build by keyword (strings are accepted for the Enum fields and
    checked); each field's ``help`` (:func:`option_help`) is what ``fkpbatch predict --help`` says."""

    detect: Detect = _option(
        Detect.auto,
        "auto: detect faces; an image <= 400 px with none found is taken as one tight face crop. always: detect "
        "only. never: the whole image is one face (Kaggle-style crops).",
    )
    faces: Faces = _option(Faces.all, "largest = one face per image (the largest clear face).")
    min_score: float = _option(DEFAULT_MIN_SCORE, "Minimum face detection score.")
    min_face: int = _option(20, "Ignore detected faces smaller than this (box side, pixels).")
    max_pixels: int = _option(DEFAULT_MAX_PIXELS, "Refuse images with more pixels (decompression bombs) as error rows.")
    batch_size: int = _option(64, "Images per batch.")
    workers: int | None = _option(None, "DataLoader worker processes (default: one per core; 0 = none).")
    passes: Passes = _option(
        Passes.auto,
        "Detector passes on large photos: auto = a 480-px pass, and a finer one (up to 1600 px) only where small "
        "faces are likely; one; two = always both.",
    )
    unsure_score: float = _option(
        UNSURE_SCORE,
        "A detection scored below this whose keypoint quality is under 0.2 is not a face when the picture holds a "
        "clear face at a similar scale (a painting, the back of a head); 0 keeps them all.",
    )
    unsure_quality: float = _option(UNSURE_QUALITY, "See unsure_score.")
    detect_on: DetectOn = _option(
        DetectOn.auto,
        "Where faces are detected: auto = workers = onnxruntime on the CPU, one image at a time (measured faster "
        "on a 16-core GPU machine); device = the detector on --device (e.g. the GPU), whole batches at once, the "
        "workers only decode (for few CPU cores per GPU).",
    )
    pose: bool = _option(
        False, "Add each face's head pose: yaw, pitch, roll in degrees (docs/outputs.md says which way is +)."
    )

    def __post_init__(self):
        object.__setattr__(self, "detect", Detect.parse(self.detect, "--detect"))
        object.__setattr__(self, "faces", Faces.parse(self.faces, "--faces"))
        object.__setattr__(self, "passes", Passes.parse(self.passes, "--passes"))
        object.__setattr__(self, "detect_on", DetectOn.parse(self.detect_on, "--detect-on"))
        if self.workers is None:
            object.__setattr__(self, "workers", default_workers())
        if self.batch_size < 1 or self.workers < 0:
            raise UsageError("--batch-size must be at least 1 and --workers at least 0")
        if not 0.0 <= self.min_score <= 1.0 or self.min_face < 0 or self.max_pixels < 1:
            raise UsageError("--min-score must be in 0..1, --min-face at least 0 and --max-pixels at least 1")


def option_help(name: str) -> str:
    """The ``--help`` text of PredictOptions field ``name``."""
    return next(f.metadata["help"] for f in fields(PredictOptions) if f.name == name)


def predict_options(values: dict) -> PredictOptions:
    """PredictOptions from a mapping that holds (at least) every field, e.g. a command's arguments."""
    return PredictOptions(**{f.name: values[f.name] for f in fields(PredictOptions)})
