"""The worker side of prediction: decode one input, find its faces, crop them to the model's frame.

:class:`FaceCropper` runs in DataLoader workers (and Ray tasks); :class:`ImageSource` is the
Dataset of cropped faces that :func:`worker_loader` hands to the engine's main loop
(:mod:`fkpbatch.engine`), which batches the crops through the keypoint model."""

from __future__ import annotations

import gc
import math
import signal
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from . import interrupts
from .checkpoint import ModelSpec
from .decode import load_reduced
from .detect import Decode, FaceDetector, Pass, Plan, run_plan
from .discover import InputFile
from .errors import DecodeError
from .inputs import InMemoryImage, load_item
from .options import PredictOptions
from .results import CropRecord
from .transforms import Box, box_from_points, crop_face, to_uint8_tensor, whole_image_box

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

    def __init__(self, files: Sequence[InputFile | InMemoryImage], spec: ModelSpec, options: PredictOptions):
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
