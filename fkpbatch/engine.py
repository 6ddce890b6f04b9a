"""The inference engine: DataLoader workers decode, detect and crop; the main process batches the
crops through the keypoint model and maps keypoints back to original pixels. Streaming, so memory
does not grow with the number of images."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .checkpoint import ModelSpec, load_model
from .decode import DEFAULT_MAX_PIXELS, load_reduced
from .detect import DEFAULT_MIN_SCORE, FaceDetector
from .discover import InputFile
from .errors import DecodeError, UsageError, WeightsError
from .runtime import autocast, cpu_count, default_workers, resolve_device, to_model_input
from .transforms import Box, box_from_points, crop_face, from_unit, to_uint8_tensor, whole_image_box

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "fkpnet68.pt"
DETECT_MODES = ("auto", "always", "never")
PASSES = ("auto", "one", "two")
# Measured on the shared photos (fkpnet68.pt): clear faces have quality 0.38-0.45; real but blurred,
# profile or cut faces 0.00-0.22 with detector scores >= 0.87; the false faces seen (the back of a
# head, a face in a painted landscape, a camera) scored 0.83-0.86 with quality <= 0.15.
UNSURE_SCORE = 0.86
UNSURE_QUALITY = 0.2
UNSURE_SIZE = 0.3  # blurred faces behind the subject measured 0.19 of its size; false faces 0.46-0.54  # detector passes on large images: see FaceDetector.detect
# --detect auto: a roughly square image of 32..400 px with no detected face is taken as a tight
# face crop (Kaggle's 96x96 faces, faces15-like crops); anything else without a face is no_face.
CROP_FALLBACK_SIDES = (32, 400)
CROP_FALLBACK_ASPECT = 2.0
# RetinaFace's five points (image-left eye first) in FRAMING_POINTS order (subject's left eye first).
_DETECTOR_TO_FRAMING = [1, 0, 2, 4, 3]


@dataclass(frozen=True)
class PredictOptions:
    """How images become faces; ``--help`` of ``fkpbatch predict`` explains each."""

    detect: str = "auto"
    faces: str = "all"
    min_score: float = DEFAULT_MIN_SCORE
    min_face: int = 20
    max_pixels: int = DEFAULT_MAX_PIXELS
    batch_size: int = 64
    workers: int = field(default_factory=default_workers)
    passes: str = "auto"
    # "Only faces become rows": a detection scored under unsure_score whose keypoints the model is unsure
    # of (quality under unsure_quality) is not a face (README, "How images become faces").
    unsure_score: float = UNSURE_SCORE
    unsure_quality: float = UNSURE_QUALITY

    def __post_init__(self):
        if self.detect not in DETECT_MODES:
            raise UsageError(f"--detect must be one of {', '.join(DETECT_MODES)}, not {self.detect!r}")
        if self.passes not in PASSES:
            raise UsageError(f"--passes must be one of {', '.join(PASSES)}, not {self.passes!r}")
        if self.faces not in ("all", "largest"):
            raise UsageError(f"--faces must be 'all' or 'largest', not {self.faces!r}")
        if self.batch_size < 1 or self.workers < 0:
            raise UsageError("--batch-size must be at least 1 and --workers at least 0")


@dataclass
class FaceResult:
    box: Box
    score: float | None  # detector score; None when the whole image was taken as the face
    keypoints: np.ndarray  # (K, 2) original pixels
    quality: float | None  # 0..1 from the heatmaps' spread; None for regression models


@dataclass
class ImageResult:
    image: str
    status: str  # ok | no_face | error | skipped
    error: str = ""
    width: int | None = None
    height: int | None = None
    faces: list[FaceResult] = field(default_factory=list)
    source: InputFile | None = None


class FaceCropper:
    """Decode one file, find its faces, crop them to the model's frame. Runs in DataLoader workers
    (and in Ray tasks); the detector session is built lazily in each process.

    Large JPEGs are decoded at a reduced scale (:func:`load_reduced`) just big enough for the
    detector's coarse pass; the file is decoded again, bigger, only when a second pass needs more
    pixels or a face's crop would come out smaller than the model's input (no face is ever cropped
    from fewer pixels than the model sees)."""

    def __init__(self, spec: ModelSpec, options: PredictOptions):
        self.spec, self.options = spec, options
        self.detector = FaceDetector(min_score=options.min_score) if options.detect != "never" else None

    def _faces(self, image, full: tuple[int, int], path) -> tuple[object, list[tuple[Box, float | None, Box]]]:
        """(the picture to crop from, [(box in its pixels, score, box in original pixels)])."""
        width, height = full
        if self.detector is None:
            box = whole_image_box(width, height)
            return image, [(box, None, box)]
        found, image = self._detect(image, full, path)
        if not found and max(width, height) <= CROP_FALLBACK_SIDES[1]:
            found = self._keep(self.detector.detect(image, pad=0.25, passes=self.options.passes), image, full)
        if not found:
            fallback = self.options.detect == "auto" and looks_like_a_face_crop(width, height)
            return image, [(whole_image_box(*image.size), None, whole_image_box(width, height))] if fallback else []
        if self.options.faces == "largest":
            found = [max(found, key=lambda d: d.box[2] * d.box[3])]
        boxes = [box_from_points(d.landmarks[_DETECTOR_TO_FRAMING], self.spec.framing) for d in found]
        smallest = min(b.size for b in boxes)
        if image.size != full and smallest < self.spec.input_size:
            # a face too small to crop from this decode: decode again just big enough (often 1/2 or 1/4 scale)
            bigger, _ = load_reduced(path, self.options.max_pixels, math.ceil(max(image.size) * self.spec.input_size / smallest) + 1)
            boxes = [_scale_box(b, bigger.width / image.width, bigger.height / image.height) for b in boxes]
            image = bigger
        sx, sy = width / image.width, height / image.height
        return image, [(b, d.score, _scale_box(b, sx, sy)) for b, d in zip(boxes, found)]

    def _detect(self, image, full, path):
        """Faces (in original pixels) and the picture they were searched in: a coarse pass, and a
        fine pass where the detector's policy wants one, on a bigger decode if need be."""
        detector, passes = self.detector, self.options.passes
        found = [detector.candidates(image, detector.coarse)]
        fine = min(detector.fine, max(full))
        if passes == "two" and max(full) > detector.coarse or passes == "auto" and detector.wants_second_pass(found[0], image.size, full):
            if max(image.size) < fine:
                bigger, _ = load_reduced(path, self.options.max_pixels, fine)
                found = [found[0].scaled(bigger.width / image.width, bigger.height / image.height)]
                image = bigger
            found.append(detector.candidates(image, fine))
        return self._keep(detector.merge(found), image, full), image

    def _keep(self, found, image, full):
        """Detections of at least --min-face px (measured in original pixels), in ``image``'s pixels."""
        sx, sy = full[0] / image.width, full[1] / image.height
        return [d for d in found if min(d.box[2] * sx, d.box[3] * sy) >= self.options.min_face]

    def __call__(self, item: InputFile) -> dict:
        """A record: status, error, width, height, boxes, scores and the (F, 1, S, S) uint8 crops."""
        record = {"status": "ok", "error": "", "width": None, "height": None, "boxes": [], "scores": [], "crops": self._no_crops()}
        try:
            side = self.detector.coarse if self.detector is not None else None
            image, full = load_reduced(item.path, self.options.max_pixels, side)
            record.update(width=full[0], height=full[1])
            image, faces = self._faces(image, full, item.path)
            if not faces:
                return {**record, "status": "no_face"}
            gray = image.convert("L")
            crops = torch.stack([to_uint8_tensor(crop_face(gray, box, self.spec.input_size)) for box, _, _ in faces])
            return {**record, "boxes": [b for _, _, b in faces], "scores": [s for _, s, _ in faces], "crops": crops}
        except DecodeError as exc:
            skipped = item.skip_if_not_image and str(exc).startswith("not an image")
            return {**record, "status": "skipped" if skipped else "error", "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - one odd file must never end a 100,000-image run
            return {**record, "status": "error", "error": f"{type(exc).__name__}: {exc}"}

    def _no_crops(self) -> torch.Tensor:
        return torch.zeros((0, 1, self.spec.input_size, self.spec.input_size), dtype=torch.uint8)


def _scale_box(box: Box, sx: float, sy: float) -> Box:
    """A box in a picture decoded at reduced scale -> the same box in original pixels (continuous
    coordinates scale exactly; the side by the mean of the two axes' factors, equal within a pixel)."""
    return Box(box.x * sx, box.y * sy, box.size * (sx + sy) / 2)


class ImageSource(Dataset):
    """The input files as a Dataset of cropped faces, for a DataLoader with workers."""

    def __init__(self, files: list[InputFile], spec: ModelSpec, options: PredictOptions):
        self.files, self.cropper = files, FaceCropper(spec, options)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        return {"index": index, **self.cropper(self.files[index])}


def looks_like_a_face_crop(width: int, height: int) -> bool:
    """The ``--detect auto`` fallback rule: small, not tiny, roughly square."""
    low, high = CROP_FALLBACK_SIDES
    return low <= min(width, height) and max(width, height) <= high and max(width, height) <= CROP_FALLBACK_ASPECT * min(width, height)


def collate_images(items: list[dict]) -> tuple[torch.Tensor, list[dict]]:
    """All faces of a batch of images in one tensor; per-image records beside it."""
    crops = torch.cat([item.pop("crops") for item in items])
    return crops, items


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # each worker decodes one image at a time; the model owns the cores


RUNTIMES = ("auto", "torch", "onnxruntime")


class Predictor:
    """A loaded keypoint model; build once, then call :meth:`predict_paths` on any number of files.

    ``runtime``: ``auto`` runs the model with onnxruntime on the CPU (measured faster) and with
    PyTorch on a GPU; ``torch`` or ``onnxruntime`` force one.
    """

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, device: torch.device, runtime: str = "auto"):
        if runtime not in RUNTIMES:
            raise UsageError(f"--runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
        if runtime == "onnxruntime" and device.type != "cpu":
            raise UsageError("--runtime onnxruntime runs on the CPU; use --device cpu")
        self.spec, self.device = spec, device
        self.options = PredictOptions()  # predict_paths sets the run's
        self.model = model.to(device, memory_format=torch.channels_last)
        self.onnx = None
        if runtime == "onnxruntime" or (runtime == "auto" and device.type == "cpu"):
            from .export import OnnxKeypoints

            try:
                self.onnx = OnnxKeypoints(model, spec)
            except Exception as exc:  # noqa: BLE001 - e.g. an op the exporter lacks: PyTorch still runs it
                if runtime == "onnxruntime":
                    raise UsageError(f"--runtime onnxruntime: {spec.arch} cannot be exported to ONNX ({type(exc).__name__})") from None

    @classmethod
    def load(cls, weights: str | Path | None = None, device: str = "auto", runtime: str = "auto") -> "Predictor":
        """Load ``weights`` (a checkpoint from ``fkpbatch train``) or the shipped default model."""
        path = Path(weights) if weights else DEFAULT_WEIGHTS
        if weights is None and not path.exists():
            raise WeightsError(f"no default weights at {path}; pass --weights FILE from 'fkpbatch train'")
        model, spec = load_model(path)
        return cls(model, spec, resolve_device(device), runtime)

    @torch.inference_mode()
    def _keypoints(self, crops: torch.Tensor):
        if self.onnx is not None:
            return self.onnx(crops)
        with autocast(self.device):
            out = self.model(to_model_input(crops, self.device, self.spec.pixel_scale))
        quality = out.get("quality")
        return out["keypoints"].float().cpu().numpy(), None if quality is None else quality.float().cpu().numpy()

    def predict_paths(self, files: Iterable[InputFile], options: PredictOptions | None = None) -> Iterator[ImageResult]:
        """Yield one :class:`ImageResult` per file, in input order, as batches finish."""
        options = options or PredictOptions()
        self.options = options
        files = list(files)
        if not files:
            return
        torch.set_num_threads(cpu_count())
        loader = DataLoader(
            ImageSource(files, self.spec, options),
            batch_size=options.batch_size,
            num_workers=options.workers,
            collate_fn=collate_images,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_worker_init,
            prefetch_factor=4 if options.workers else None,
            persistent_workers=False,
        )
        for crops, records in loader:
            yield from self.results(crops, records, [files[r["index"]] for r in records])

    def unsure(self, score: float | None, quality: float | None) -> bool:
        """A doubtful detection: low detector score and low keypoint quality (PredictOptions.unsure_score)."""
        options = self.options
        return score is not None and quality is not None and score < options.unsure_score and quality < options.unsure_quality

    def only_faces(self, faces: list[FaceResult]) -> list[FaceResult]:
        """Drop doubtful detections beside a clear face at a similar scale (box >= UNSURE_SIZE of the
        biggest clear face): a face-like patch of a painting, the back of a head. A doubtful face alone
        in its picture is kept, and so are the small blurred faces of people behind the subject."""
        clear = [f.box.size for f in faces if not self.unsure(f.score, f.quality)]
        if not clear:
            return faces
        return [f for f in faces if not (self.unsure(f.score, f.quality) and f.box.size >= UNSURE_SIZE * max(clear))]

    def results(self, crops: torch.Tensor, records: list[dict], items: list[InputFile]) -> list[ImageResult]:
        """Run the model on a batch's crops and map keypoints back into each record's image."""
        unit, quality = self._keypoints(crops) if len(crops) else (np.zeros((0, len(self.spec.keypoints), 2)), None)
        results, face = [], 0
        for record, item in zip(records, items):
            result = ImageResult(item.name, record["status"], record["error"], record["width"], record["height"], source=item)
            found = [FaceResult(box, score, from_unit(unit[face + i], box), None if quality is None else float(quality[face + i]))
                     for i, (box, score) in enumerate(zip(record["boxes"], record["scores"]))]
            face += len(found)
            result.faces = self.only_faces(found)
            if result.status == "ok" and not result.faces:
                result.status = "no_face"
            results.append(result)
        return results


def predict(paths, weights=None, *, device: str = "auto", recursive: bool = True, **options):
    """Python API: keypoints for files/folders as a pandas DataFrame with the CSV's columns."""
    from .discover import discover
    from .writers import results_frame

    predictor = Predictor.load(weights, device)
    found = discover([Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)], recursive=recursive)
    return results_frame(predictor.predict_paths(found.files, PredictOptions(**options)), predictor.spec.keypoints)
