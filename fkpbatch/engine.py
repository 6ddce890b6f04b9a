"""The inference engine: DataLoader workers decode, detect and crop; the main process batches the
crops through the keypoint model and maps keypoints back to original pixels. Streaming, so memory
does not grow with the number of images. With ``detect_on="device"`` (opt-in) the
workers only decode and the main process detects whole batches on the device
(:mod:`fkpbatch.device_detect`), following the same face policy (:meth:`FaceCropper.search`)."""

from __future__ import annotations

import gc
import math
import os
import signal
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from . import interrupts
from .checkpoint import ModelSpec, load_model
from .decode import load_reduced, to_rgb
from .detect import Decode, FaceDetector, Pass, Plan, run_plan
from .discover import InputFile, discover
from .errors import DecodeError, UsageError
from .options import UNSURE_SIZE, Model, PredictOptions, Runtime
from .results import CropRecord, FaceResult, ImageResult
from .runtime import cpu_count, resolve_device, to_model_input
from .transforms import Box, box_from_points, crop_face, from_unit, to_uint8_tensor, whole_image_box
from .zoo import DEFAULT_MODEL, model_path, resolve_weights

DEFAULT_WEIGHTS = model_path(DEFAULT_MODEL)
# --detect auto: a roughly square image of 32..400 px with no detected face is taken as a tight
# face crop (Kaggle's 96x96 faces, faces15-like crops); anything else without a face is no_face.
CROP_FALLBACK_SIDES = (32, 400)
CROP_FALLBACK_ASPECT = 2.0
# RetinaFace's five points (image-left eye first) in FRAMING_POINTS order (subject's left eye first).
_DETECTOR_TO_FRAMING = [1, 0, 2, 4, 3]


class FaceCropper:
    """Decode one file, find its faces, crop them to the model's frame. Runs in DataLoader workers
    (and in Ray tasks); the detector session is built lazily in each process.

    Large JPEGs are decoded at a reduced scale (:func:`load_reduced`) just big enough for the
    detector's coarse pass; the file is decoded again, bigger, only when a second pass needs more
    pixels or a face's crop would come out smaller than the model's input (no face is ever cropped
    from fewer pixels than the model sees)."""

    def __init__(self, spec: ModelSpec, options: PredictOptions, detector: FaceDetector | None = None):
        self.spec, self.options = spec, options
        if detector is None and options.detect != "never":
            detector = FaceDetector(min_score=options.min_score)
        self.detector = detector if options.detect != "never" else None

    def search(self, image, full: tuple[int, int], path) -> Plan[tuple[object, list[tuple[Box, float | None, Box]]]]:
        """The face policy as a search plan (:data:`fkpbatch.detect.Plan`): from the decoded picture
        to (the picture to crop from, [(box in its pixels, score, box in original pixels)]). Workers
        run it at once (:meth:`__call__`); the GPU path answers a batch's requests together."""
        width, height = full
        if self.detector is None:
            box = whole_image_box(width, height)
            return image, [(box, None, box)]
        found, image = yield from self._detect(image, full, path)
        if not found and max(width, height) <= CROP_FALLBACK_SIDES[1]:
            found = self._keep((yield from self.detector.search(image, 0.25, self.options.passes)), image, full)
        if not found:
            fallback = self.options.detect == "auto" and looks_like_a_face_crop(width, height)
            return image, [(whole_image_box(*image.size), None, whole_image_box(width, height))] if fallback else []
        if self.options.faces == "largest":
            found = [max(found, key=lambda d: d.box[2] * d.box[3])]
        boxes = [box_from_points(d.landmarks[_DETECTOR_TO_FRAMING], self.spec.framing) for d in found]
        smallest = min(b.size for b in boxes)
        if image.size != full and smallest < self.spec.input_size:
            # a face too small to crop from this decode: decode again just big enough (often 1/2 or 1/4 scale)
            bigger = yield Decode(path, math.ceil(max(image.size) * self.spec.input_size / smallest) + 1)
            boxes = [_scale_box(b, bigger.width / image.width, bigger.height / image.height) for b in boxes]
            image = bigger
        sx, sy = width / image.width, height / image.height
        return image, [(b, d.score, _scale_box(b, sx, sy)) for b, d in zip(boxes, found)]

    def _detect(self, image, full, path):
        """Faces (in original pixels) and the picture they were searched in: a coarse pass, and a
        fine pass where the detector's policy wants one, on a bigger decode if need be."""
        detector, passes = self.detector, self.options.passes
        found = [(yield Pass(image, detector.coarse))]
        fine = min(detector.fine, max(full))
        if detector.second_pass_due(passes, found[0], image.size, full):
            if max(image.size) < fine:
                bigger = yield Decode(path, fine)
                found = [found[0].scaled(bigger.width / image.width, bigger.height / image.height)]
                image = bigger
            found.append((yield Pass(image, fine)))
        return self._keep(detector.merge(found), image, full), image

    def _keep(self, found, image, full):
        """Detections of at least --min-face px (measured in original pixels), in ``image``'s pixels."""
        sx, sy = full[0] / image.width, full[1] / image.height
        return [d for d in found if min(d.box[2] * sx, d.box[3] * sy) >= self.options.min_face]

    def answer(self, request: Pass | Decode):
        """A search plan's request, answered here and now (onnxruntime on this process's CPU)."""
        if isinstance(request, Decode):
            return load_reduced(request.path, self.options.max_pixels, request.side)[0]
        return self.detector.answer(request)

    def __call__(self, item: InputFile | InMemoryImage) -> CropRecord:
        """The image's :class:`CropRecord`: status, size, boxes, scores and the (F, 1, S, S) uint8 crops."""
        return self.guarded(item, self._crop)

    def _crop(self, item, record: CropRecord) -> None:
        image, full = self.load(item, record)
        self.finish(record, *run_plan(self.search(image, full, getattr(item, "path", None)), self.answer))

    def load(self, item: InputFile | InMemoryImage, record: CropRecord):
        """(the picture, its full size), decoded as small as the detector's coarse pass allows."""
        image, full = load_item(item, self.options.max_pixels, self.detector.coarse if self.detector else None)
        record.width, record.height = full
        return image, full

    def finish(self, record: CropRecord, image, faces, gray=None) -> None:
        """A finished plan's faces -> the record's crops, boxes and scores (or ``no_face``);
        ``gray``: ``image`` already in grayscale, if at hand."""
        if not faces:
            record.status = "no_face"
            return
        gray = image.convert("L") if gray is None else gray
        size = self.spec.input_size
        record.crops = torch.stack([to_uint8_tensor(crop_face(gray, box, size)) for box, _, _ in faces])
        record.boxes, record.scores = [b for _, _, b in faces], [s for _, s, _ in faces]

    def guarded(self, item: InputFile | InMemoryImage, work, record: CropRecord | None = None) -> CropRecord:
        """``work(item, record)`` with every failure turned into the record's status: a file decided
        unusable at discovery is never opened (FIFOs block), one odd file never ends a run."""
        record = CropRecord(crops=self.no_crops()) if record is None else record
        if isinstance(item, InputFile) and not item.usable:
            record.status, record.error = ("error", item.error) if item.error else ("skipped", item.skip_reason)
            return record
        try:
            work(item, record)
        except Exception as exc:  # noqa: BLE001 - one odd file must never end a 100,000-image run
            self.failed(record, item, exc)
        return record

    def failed(self, record: CropRecord, item, exc: Exception) -> None:
        """The status and error of an image whose decoding, detection or cropping raised ``exc``."""
        if isinstance(exc, DecodeError):
            skipped = item.skip_if_not_image and str(exc).startswith("not an image")
            record.status, record.error = "skipped" if skipped else "error", str(exc)
        else:
            record.status, record.error = "error", f"{type(exc).__name__}: {exc}"
        record.crops = self.no_crops()

    def no_crops(self) -> torch.Tensor:
        return torch.zeros((0, 1, self.spec.input_size, self.spec.input_size), dtype=torch.uint8)


def _scale_box(box: Box, sx: float, sy: float) -> Box:
    """A box in a picture decoded at reduced scale -> the same box in original pixels (continuous
    coordinates scale exactly; the side by the mean of the two axes' factors, equal within a pixel)."""
    return Box(box.x * sx, box.y * sy, box.size * (sx + sy) / 2)


class ImageSource(Dataset):
    """The input files as a Dataset of cropped faces, for a DataLoader with workers."""

    def __init__(self, files: list[InputFile | InMemoryImage], spec: ModelSpec, options: PredictOptions):
        self.files, self.cropper = files, FaceCropper(spec, options)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> CropRecord:
        record = self.cropper(self.files[index])
        record.index = index
        return record


def looks_like_a_face_crop(width: int, height: int) -> bool:
    """The ``--detect auto`` fallback rule: small, not tiny, roughly square."""
    low, high = CROP_FALLBACK_SIDES
    return (
        low <= min(width, height)
        and max(width, height) <= high
        and max(width, height) <= CROP_FALLBACK_ASPECT * min(width, height)
    )


def collate_images(items: list[CropRecord]) -> tuple[torch.Tensor, list[CropRecord]]:
    """All faces of a batch of images in one tensor; per-image records (without their crops) beside it."""
    crops = torch.cat([item.crops for item in items])
    for item in items:
        item.crops = None
    return crops, items


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # each worker decodes one image at a time; the model owns the cores
    # Ctrl-C and SIGTERM reach the whole process group: the main process alone decides when to stop
    # (between batches) and then shuts the workers down; a worker dying mid-transfer of a batch
    # printed a ConnectionResetError traceback. Workers still exit when the main process is gone.
    for signum in interrupts.SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def worker_start_method(device: torch.device) -> str | None:
    """How DataLoader workers start: from a fresh forkserver when the model runs on CUDA (a worker
    forked from a process holding a CUDA context and other predictors crashed with SIGSEGV on an
    H200, as PyTorch warns it may), by fork otherwise (fast, and nothing to re-import)."""
    return "forkserver" if device.type == "cuda" else None


def worker_loader(
    source: Dataset, collate, options: PredictOptions, device: torch.device, prefetch: int = 4
) -> DataLoader:
    """The DataLoader that runs ``source`` in ``options.workers`` workers for a model on ``device``
    (what predict iterates, and what benchmarks/throughput.py times), to be iterated at once."""
    if options.workers:
        # Unreachable objects are destroyed here, not in a forked worker: an onnxruntime session
        # of an earlier predictor torn down by a worker's garbage collector hung that worker
        # (its thread pool's locks were copied mid-use); likely also the SIGSEGV seen on a GPU.
        gc.collect()
    return DataLoader(
        source,
        batch_size=options.batch_size,
        num_workers=options.workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        worker_init_fn=_worker_init,
        multiprocessing_context=worker_start_method(device) if options.workers else None,
        prefetch_factor=prefetch if options.workers else None,
        persistent_workers=False,
    )


RUNTIMES = Runtime.values()
PathLike = Union[str, "os.PathLike[str]"]


def input_files(items: Iterable[InputFile | PathLike], *, recursive: bool = True) -> list[InputFile]:
    """Paths as :class:`InputFile` s, in the given order: a folder becomes its files (sorted, as
    ``fkpbatch predict`` walks it); a missing path is a UsageError. InputFiles pass unchanged."""
    files: list[InputFile] = []
    for item in items:
        if isinstance(item, InputFile):
            files.append(item)
        elif isinstance(item, (str, os.PathLike)):
            # as the CLI finds it: a folder walked, a FIFO or device never opened, a missing path refused
            files.extend(discover([Path(item)], recursive=recursive).files)
        else:
            raise UsageError(f"expected a file path (str or Path), not {type(item).__name__}")
    return files


class InMemoryImage:
    """An in-memory picture as a prediction input: upright RGB pixels and the name its rows get."""

    skip_if_not_image = False

    def __init__(self, image, name: str):
        self.image, self.name = to_pil_image(image), name

    @property
    def path(self) -> None:
        """No file behind it (for code that reads ``item.path``)."""
        return None


def to_pil_image(image) -> Image.Image:
    """A PIL image (EXIF orientation applied, any mode) or an HxW / HxWx3 (RGB) / HxWx4 (RGBA)
    uint8 numpy array as an upright RGB PIL image; anything else is a UsageError."""
    if isinstance(image, Image.Image):
        return to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
            raise UsageError(
                f"an image array must be uint8 HxW, HxWx3 (RGB) or HxWx4 (RGBA), "
                f"not {image.dtype} {'x'.join(map(str, image.shape))}"
            )
        if min(image.shape[:2]) == 0:
            raise UsageError(f"an image array of shape {'x'.join(map(str, image.shape))} has no pixels")
        return to_rgb(Image.fromarray(np.ascontiguousarray(image)))
    raise UsageError(f"expected a PIL image or a numpy uint8 array, not {type(image).__name__}")


def load_item(item: InputFile | InMemoryImage, max_pixels: int, min_side: int | None = None):
    """(the upright RGB picture of an input, its full size): a file is decoded at reduced scale when
    the detector needs no more (:func:`decode.load_reduced`); an in-memory picture is used as it is."""
    if isinstance(item, InMemoryImage):
        width, height = item.image.size
        if width * height > max_pixels:
            raise DecodeError(f"image is {width}x{height} = {width * height:,} pixels, over max_pixels {max_pixels:,}")
        return item.image, item.image.size
    return load_reduced(item.path, max_pixels, min_side)


def is_unsure(score: float | None, quality: float | None, options: PredictOptions) -> bool:
    """A doubtful detection: a detector score under ``options.unsure_score`` and a keypoint quality
    under ``options.unsure_quality`` (models without a quality score are never doubtful)."""
    return (
        score is not None and quality is not None and score < options.unsure_score and quality < options.unsure_quality
    )


class Predictor:
    """A loaded keypoint model; build once (:meth:`load`), then call :meth:`predict_paths` on any
    number of files or :meth:`predict_images` on in-memory pictures.

    ``runtime``: ``auto`` runs the model with onnxruntime on the CPU (measured faster) and with
    PyTorch on a GPU; ``torch`` or ``onnxruntime`` force one.
    """

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, device: torch.device, runtime: str | Runtime = "auto"):
        runtime = Runtime.parse(runtime, "--runtime")
        if runtime == "onnxruntime" and device.type != "cpu":
            raise UsageError("--runtime onnxruntime runs on the CPU; use --device cpu")
        self.spec, self.device = spec, device
        self.model = model.to(device, memory_format=torch.channels_last)
        self.onnx = None
        if runtime == "onnxruntime" or (runtime == "auto" and device.type == "cpu"):
            from .export import OnnxKeypoints

            try:
                self.onnx = OnnxKeypoints(model, spec)
            except Exception as exc:  # noqa: BLE001 - e.g. an op the exporter lacks: PyTorch still runs it
                if runtime == "onnxruntime":
                    raise UsageError(
                        f"--runtime onnxruntime: {spec.arch} cannot be exported to ONNX ({type(exc).__name__})"
                    ) from None

    @property
    def keypoints(self) -> tuple[str, ...]:
        """The model's keypoint names, in the order of each face's ``keypoints`` rows."""
        return self.spec.keypoints

    @classmethod
    def load(
        cls,
        weights: str | Path | None = None,
        device: str = "auto",
        runtime: str = "auto",
        *,
        model: str | Model | None = None,
    ) -> Predictor:
        """Load ``weights`` (a checkpoint from ``fkpbatch train``) or the shipped ``model`` by name
        (``fast``, the default, or ``accurate``; see ``fkpbatch models``); not both."""
        net, spec = load_model(resolve_weights(weights, None if model is None else Model.parse(model, "model")))
        return cls(net, spec, resolve_device(str(device)), runtime)

    @torch.inference_mode()
    def _keypoints(self, crops: torch.Tensor):
        if self.onnx is not None:
            return self.onnx(crops)
        # fp32 on a GPU too: fp16 moved keypoints of a blurred face by up to 3.7 px against the CPU's
        out = self.model(to_model_input(crops, self.device, self.spec.pixel_scale))
        quality = out.get("quality")
        return out["keypoints"].float().cpu().numpy(), None if quality is None else quality.float().cpu().numpy()

    def predict_paths(
        self, files: Iterable[InputFile | PathLike], options: PredictOptions | None = None
    ) -> Iterator[ImageResult]:
        """Yield one :class:`ImageResult` per file, in input order, as batches finish.

        ``files``: paths (``str`` or ``Path``; a folder stands for its files, sorted) or the
        :class:`InputFile` s of :func:`fkpbatch.discover.discover`. A missing path is a UsageError
        before anything runs; a file that cannot be decoded is an ``error`` result."""
        yield from self._predict(input_files(files), options)

    def predict_images(
        self, images: Iterable, options: PredictOptions | None = None, *, names: Sequence[str] | None = None
    ) -> Iterator[ImageResult]:
        """Yield one :class:`ImageResult` per in-memory picture, in order: PIL images or HxWx3 RGB
        (also HxW, HxWx4) uint8 numpy arrays. Results are named ``image_0``, ``image_1``, ... unless
        ``names`` are given; their ``source`` is None."""
        images = [images] if isinstance(images, (Image.Image, np.ndarray)) else list(images)
        names = [f"image_{i}" for i in range(len(images))] if names is None else list(names)
        if len(names) != len(images):
            raise UsageError(f"{len(names)} names for {len(images)} images")
        yield from self._predict([InMemoryImage(image, name) for image, name in zip(images, names)], options)

    def detects_on_device(self, options: PredictOptions) -> bool:
        """Whether a run with ``options`` detects faces on the model's device (the PyTorch port of the
        detector, whole batches at once) rather than in the DataLoader workers (onnxruntime on the CPU).
        ``detect_on="auto"`` = the workers, on a GPU too (measured faster there, see DetectOn)."""
        return options.detect != "never" and options.detect_on == "device"

    def face_detector(self, min_score: float) -> FaceDetector:
        """The PyTorch port of the detector on the model's device (the network built once)."""
        detector = FaceDetector(min_score=min_score, backend="torch", device=str(self.device))
        if getattr(self, "_detector_net", None) is None:
            self._detector_net = detector.network()
        detector._net = self._detector_net
        return detector

    def _predict(self, items: list[InputFile | InMemoryImage], options: PredictOptions | None) -> Iterator[ImageResult]:
        options = options or PredictOptions()
        if not items:
            return
        torch.set_num_threads(cpu_count())
        search = None
        if self.detects_on_device(options):
            from .device_detect import DeviceSearch, FrameSource, collate_frames

            source, collate = FrameSource(items, self.spec, options), collate_frames
            search = DeviceSearch(self.spec, options, self.face_detector(options.min_score))
        else:
            source, collate = ImageSource(items, self.spec, options), collate_images
        # the device path's batches carry pictures, not crops: fewer in flight
        batches = iter(worker_loader(source, collate, options, self.device, prefetch=2 if search else 4))
        try:
            while True:
                with interrupts.deferred():  # a stop signal waits until the batch being received is whole
                    batch = next(batches, None)
                if batch is None:
                    return
                if search is None:
                    crops, records = batch
                    inputs = [items[r.index] for r in records]
                else:
                    inputs = [items[r.index] for r in batch.records]
                    crops, records = search.crops(batch, inputs)
                yield from self.results(crops, records, inputs, options)
        finally:
            if search is not None:
                search.close()

    @staticmethod
    def only_faces(faces: list[FaceResult], options: PredictOptions) -> list[FaceResult]:
        """Drop doubtful detections (:func:`is_unsure`) beside a clear face at a similar scale (box >=
        UNSURE_SIZE of the biggest clear face): a face-like patch of a painting, the back of a head. A
        doubtful face alone in its picture is kept, and so are the small blurred faces of people
        behind the subject."""
        clear = [f.box.size for f in faces if not is_unsure(f.score, f.quality, options)]
        if not clear:
            return faces
        return [
            f for f in faces if not (is_unsure(f.score, f.quality, options) and f.box.size >= UNSURE_SIZE * max(clear))
        ]

    def results(
        self,
        crops: torch.Tensor,
        records: list[CropRecord],
        items: list[InputFile | InMemoryImage],
        options: PredictOptions,
    ) -> list[ImageResult]:
        """Run the model on a batch's crops and map keypoints back into each record's image; drop the
        doubtful detections ``options`` describe (:meth:`only_faces`)."""
        names = self.spec.keypoints
        unit, quality = self._keypoints(crops) if len(crops) else (np.zeros((0, len(names), 2)), None)
        results, face = [], 0
        for record, item in zip(records, items):
            source = item if isinstance(item, InputFile) else None
            result = ImageResult(
                item.name, record.status, record.error, record.width, record.height, source=source, names=names
            )
            found = [
                FaceResult(
                    box,
                    score,
                    from_unit(unit[face + i], box),
                    None if quality is None else float(quality[face + i]),
                    names,
                )
                for i, (box, score) in enumerate(zip(record.boxes, record.scores))
            ]
            face += len(found)
            result.faces = self.only_faces(found, options)
            if result.status == "ok" and not result.faces:
                result.status = "no_face"
            results.append(result)
        return results
