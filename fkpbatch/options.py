"""The choices of every option, as ``str`` Enums shared by the CLI (``--help`` lists them, Typer
checks them) and the Python API (which checks them with :meth:`Choice.parse`), and
:class:`PredictOptions`, whose field defaults are the CLI's defaults.

Light on purpose (no torch): the CLI imports it to build its options.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from .decode import DEFAULT_MAX_PIXELS
from .detect import DEFAULT_MIN_SCORE
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
    a time; on an H200 with 16 cores 2.9x faster end to end than the GPU path on ~200-px photos, as
    measured with 0.2.0's fp16 code);
    device (the PyTorch port of the detector on --device, whole batches at once; the workers only
    decode: for machines with few cores per GPU)."""

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
Model = Choice("Model", {name: name for name in SHIPPED_MODELS}, module=__name__, qualname="Model")
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


# "Only faces become rows", measured on the shared photos with the 0.3.0 models
# (benchmarks/quality_scale.py; README): clear faces have quality 0.36-0.58; the back of a head
# (img31) scores 0.867 and a blurred foreground profile 0.883, both quality 0.00 at about half the
# subject's size, so 0.86 keeps them (as rows with quality 0.00); 0.9 would drop them but comes
# within 0.05 quality of a real selfie face cut by the border (0.895, quality 0.25). Blurred faces
# behind the subject measure 0.19 of its size.
UNSURE_SCORE = 0.86
UNSURE_QUALITY = 0.2
UNSURE_SIZE = 0.3


def _default_workers() -> int:
    from .runtime import default_workers

    return default_workers()


@dataclass(frozen=True)
class PredictOptions:
    """How images become faces. Build by keyword; ``fkpbatch predict --help`` explains each field
    and uses these defaults. Strings are accepted for the Enum fields and checked."""

    detect: Detect = Detect.auto
    """auto | always | never (see :class:`Detect`)."""
    faces: Faces = Faces.all
    """all | largest."""
    min_score: float = DEFAULT_MIN_SCORE
    """Minimum face detection score."""
    min_face: int = 20
    """Ignore detected faces whose box side is smaller (pixels)."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Larger images are refused as error rows (decompression bombs)."""
    batch_size: int = 64
    """Images per batch."""
    workers: int | None = None
    """DataLoader worker processes; None = one per core; 0 = decode in this process."""
    passes: Passes = Passes.auto
    """Detector passes on large photos (see :class:`Passes`)."""
    unsure_score: float = UNSURE_SCORE
    """"Only faces become rows": a detection scored under this whose keypoint quality is under
    ``unsure_quality`` is dropped when the picture holds a clear face at a similar scale; 0 keeps all."""
    unsure_quality: float = UNSURE_QUALITY
    """See ``unsure_score``."""
    detect_on: DetectOn = DetectOn.auto
    """Where faces are detected (see :class:`DetectOn`); the same faces either way."""

    def __post_init__(self):
        object.__setattr__(self, "detect", Detect.parse(self.detect, "--detect"))
        object.__setattr__(self, "faces", Faces.parse(self.faces, "--faces"))
        object.__setattr__(self, "passes", Passes.parse(self.passes, "--passes"))
        object.__setattr__(self, "detect_on", DetectOn.parse(self.detect_on, "--detect-on"))
        if self.workers is None:
            object.__setattr__(self, "workers", _default_workers())
        if self.batch_size < 1 or self.workers < 0:
            raise UsageError("--batch-size must be at least 1 and --workers at least 0")
        if not 0.0 <= self.min_score <= 1.0 or self.min_face < 0 or self.max_pixels < 1:
            raise UsageError("--min-score must be in 0..1, --min-face at least 0 and --max-pixels at least 1")
