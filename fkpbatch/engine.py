"""The inference engine: DataLoader workers decode, detect and crop (:mod:`fkpbatch.cropping`);
the main process batches the crops through the keypoint model and maps keypoints back to original
pixels. Streaming, so memory does not grow with the number of images. With ``detect_on="device"``
(opt-in) the workers only decode and the main process detects whole batches on the device
(:mod:`fkpbatch.device_detect`), following the same face policy."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import interrupts
from .checkpoint import ModelSpec, load_model
from .cropping import ImageSource, collate_images, worker_loader
from .detect import FaceDetector
from .devices import resolve_device, to_model_input
from .discover import InputFile
from .errors import UsageError
from .inputs import InMemoryImage, PathLike, input_files
from .options import UNSURE_SIZE, Model, PredictOptions, Runtime
from .pose import head_pose
from .results import CropRecord, FaceResult, ImageResult
from .transforms import from_unit
from .zoo import resolve_weights, shipped_graph


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

    def __init__(
        self,
        model: torch.nn.Module,
        spec: ModelSpec,
        device: torch.device,
        runtime: str | Runtime = "auto",
        graph: bytes | None = None,
    ):
        runtime = Runtime.parse(runtime, "--runtime")
        if runtime == "onnxruntime" and device.type != "cpu":
            raise UsageError("--runtime onnxruntime runs on the CPU; use --device cpu")
        self.spec, self.device = spec, device
        self.model = model.to(device).to(memory_format=torch.channels_last)
        self.onnx = None
        if runtime == "onnxruntime" or (runtime == "auto" and device.type == "cpu"):
            from .export import OnnxKeypoints

            try:
                self.onnx = OnnxKeypoints(model, spec, graph)
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
        weights: PathLike | None = None,
        device: str = "auto",
        runtime: str = "auto",
        *,
        model: str | Model | None = None,
    ) -> Predictor:
        """Load ``weights`` (a checkpoint from ``fkpbatch train``) or the shipped ``model`` by name
        (``fast``, the default, or ``accurate``; see ``fkpbatch models``); not both."""
        path = resolve_weights(weights, None if model is None else Model.parse(model, "model"))
        net, spec = load_model(path)
        return cls(net, spec, resolve_device(str(device)), runtime, shipped_graph(path))

    @torch.inference_mode()
    def predict_crops(self, crops: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, 1, S, S) uint8 face crops -> (keypoints (N, K, 2) in unit crop coordinates, quality (N,)
        or None for models without one): the model alone, on its device or in onnxruntime."""
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

    def _predict(
        self, items: Sequence[InputFile | InMemoryImage], options: PredictOptions | None
    ) -> Iterator[ImageResult]:
        options = options or PredictOptions()
        if not items:
            return
        search = None
        source: ImageSource
        collate: Callable[[list[Any]], object]
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
        behind the subject. ``faces="largest"`` then keeps the largest face, a clear one if any."""
        clear = [f for f in faces if not is_unsure(f.score, f.quality, options)]
        if clear:
            biggest = max(f.box.size for f in clear)
            faces = [f for f in faces if f in clear or f.box.size < UNSURE_SIZE * biggest]
        if options.faces == "largest" and faces:
            faces = [max(clear or faces, key=lambda f: f.box.size)]
        return faces

    def results(
        self,
        crops: torch.Tensor,
        records: Sequence[CropRecord],
        items: Sequence[InputFile | InMemoryImage],
        options: PredictOptions,
    ) -> list[ImageResult]:
        """Run the model on a batch's crops and map keypoints back into each record's image; drop the
        doubtful detections ``options`` describe (:meth:`only_faces`)."""
        names = self.spec.keypoints
        unit, quality = self.predict_crops(crops) if len(crops) else (np.zeros((0, len(names), 2)), None)
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
            if options.pose:
                for each in result.faces:
                    yaw, pitch, roll = head_pose(each.keypoints, names, (record.width, record.height))
                    each.pose = (yaw, pitch, roll)
            if result.status == "ok" and not result.faces:
                result.status = "no_face"
            results.append(result)
        return results
