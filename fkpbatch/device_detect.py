"""Face detection on the model's device (``--detect-on device``, the default on a CUDA GPU).

DataLoader workers decode each image (reduced JPEG decoding, as on the workers' path) and prepare
the detector's first pass as uint8 pixels; their collate function puts a batch's passes on one canvas
(pinned, then copied to the GPU as uint8). The main process runs each round of passes of the whole
batch in one call of the PyTorch port of the detector, and follows the very face policy of the
workers' path (:meth:`FaceCropper.search`: passes, --min-face, the crop fallback, --faces largest,
framing by the five landmarks, a bigger decode when a face would be cropped from too few pixels),
answering its requests batch-wide instead of one image at a time; then it crops the faces from the
picture the worker sent (or from the bigger decode) and hands them to the keypoint model.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .checkpoint import ModelSpec
from .decode import load_reduced
from .detect import Decode, FaceDetector, Pass, Prepared, make_canvas
from .discover import InputFile
from .engine import FaceCropper, InMemoryImage
from .options import PredictOptions
from .results import CropRecord

# Pixels (images x canvas height x width) of one detector call in the later rounds (second passes
# at up to 1600 px): about 64 pictures of 480 x 480, or 6 of 1600 x 1600.
CANVAS_PIXELS = 1 << 24


@dataclass
class FrameRecord(CropRecord):
    """A worker's :class:`CropRecord` for the device path: an image still to search carries its
    decoded ``pixels`` ((H, W, 3) uint8 RGB), ``gray`` ((H, W) uint8) and its ``first`` pass;
    one finished in the worker (an error, a skipped file) carries its status alone."""

    pixels: torch.Tensor | None = None
    gray: torch.Tensor | None = None
    first: Prepared | None = None
    """The first pass's input; its ``pixels`` None = the decoded picture itself (no resize, no border)."""


class FrameSource(Dataset):
    """The input files as a Dataset of decoded pictures and first-pass detector inputs."""

    def __init__(self, files: list[InputFile | InMemoryImage], spec: ModelSpec, options: PredictOptions):
        self.files, self.cropper = files, FaceCropper(spec, options)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> FrameRecord:
        record = self.cropper.guarded(self.files[index], self._frame, FrameRecord(crops=self.cropper.no_crops()))
        record.index = index
        return record

    def _frame(self, item, record: FrameRecord) -> None:
        cropper = self.cropper
        image, full = cropper.load(item, record)
        plan = cropper.search(image, full, getattr(item, "path", None))
        try:
            request = next(plan)
        except StopIteration as done:  # nothing to search (cannot happen with a detector; kept for safety)
            cropper.finish(record, *done.value)
            return
        if not isinstance(request, Pass) or request.image is not image:
            raise RuntimeError(f"a search plan began with {type(request).__name__}, not a pass over the picture")
        first = cropper.detector.prepare(request)
        same = first.border == 0 and first.pixels.shape[:2] == (image.height, image.width)
        record.pixels = torch.from_numpy(np.array(image))
        record.gray = torch.from_numpy(np.array(image.convert("L")))
        record.first = Prepared(None if same else torch.from_numpy(np.array(first.pixels)), first.scale, first.border)


@dataclass
class FrameBatch:
    """A batch of :class:`FrameRecord` s whose tensors travel together: the first passes on one
    ``canvas`` (``searched``: the records on it, in order; ``sizes``: their (N, 2) heights and
    widths) and the searched records' pictures and grayscale copies packed in two flat tensors (a
    few shared-memory transfers per batch, not three per image)."""

    records: list[FrameRecord]
    searched: list[int]
    canvas: torch.Tensor | None = None
    sizes: torch.Tensor | None = None
    pixels: torch.Tensor | None = None
    gray: torch.Tensor | None = None
    shapes: list[tuple[int, int]] | None = None

    def pin_memory(self) -> FrameBatch:
        """Called by the DataLoader's pinning thread (``pin_memory=True``): the canvas goes to the GPU
        from pinned memory, asynchronously."""
        if self.canvas is not None:
            self.canvas = self.canvas.pin_memory()
        return self

    def unpack(self) -> None:
        """Give the searched records their pictures back (views of the flat tensors)."""
        start = 0
        for row, (h, w) in zip(self.searched, self.shapes):
            record = self.records[row]
            record.pixels = self.pixels[3 * start : 3 * (start + h * w)].view(h, w, 3)
            record.gray = self.gray[start : start + h * w].view(h, w)
            start += h * w


def collate_frames(records: list[FrameRecord]) -> FrameBatch:
    """The batch's first passes on one canvas, its pictures packed (built in the worker)."""
    searched = [i for i, r in enumerate(records) if r.first is not None]
    for record in records:
        if record.crops is not None and not len(record.crops):
            record.crops = None  # no empty tensor per image through shared memory
    if not searched:
        return FrameBatch(records, [])
    inputs = [records[i].first.pixels if records[i].first.pixels is not None else records[i].pixels for i in searched]
    canvas, sizes = make_canvas(inputs)
    batch = FrameBatch(records, searched, canvas, sizes, shapes=[tuple(records[i].gray.shape) for i in searched])
    batch.pixels = torch.cat([records[i].pixels.reshape(-1) for i in searched])
    batch.gray = torch.cat([records[i].gray.reshape(-1) for i in searched])
    for i in searched:
        first = records[i].first
        records[i].first = Prepared(None, first.scale, first.border)  # its pixels are on the canvas now
        records[i].pixels = records[i].gray = None
    return batch


class DeviceSearch:
    """The main process's side: every image's search plan, each round's requests answered for the
    whole batch (passes in one detector call on ``detector.device``, decodes on a few threads)."""

    def __init__(self, spec: ModelSpec, options: PredictOptions, detector: FaceDetector, threads: int = 4):
        self.cropper = FaceCropper(spec, options, detector)
        self.detector = detector
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fkpbatch-decode")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def crops(self, batch: FrameBatch, items: list) -> tuple[torch.Tensor, list[CropRecord]]:
        """(all faces' uint8 crops, the records), as :func:`fkpbatch.engine.collate_images` gives them;
        ``items``: the inputs of ``batch.records``, in order."""
        records, cropper = batch.records, self.cropper
        if batch.searched:
            batch.unpack()
        running: dict[int, tuple[Any, Image.Image]] = {}
        answers: dict[int, Any] = {}
        if batch.searched:
            found = self.detector.run_canvas(batch.canvas, batch.sizes)
            for row, raw in zip(batch.searched, found):
                record = records[row]
                try:
                    image = Image.fromarray(record.pixels.numpy())
                    plan = cropper.search(image, (record.width, record.height), getattr(items[row], "path", None))
                    request = next(plan)
                    if not isinstance(request, Pass):
                        raise RuntimeError(f"a search plan began with {type(request).__name__}, not a pass")
                    running[row], answers[row] = (plan, image), record.first.candidates(*raw)
                except Exception as exc:  # noqa: BLE001 - as in the workers: one odd file never ends a run
                    cropper.failed(record, items[row], exc)
        while running:
            requests = {}
            for row, (plan, image) in list(running.items()):
                record, answer = records[row], answers.pop(row)
                try:
                    if isinstance(answer, Exception):
                        raise answer
                    requests[row] = plan.send(answer)
                except StopIteration as done:
                    picture, faces = done.value
                    gray = Image.fromarray(record.gray.numpy()) if picture is image and faces else None
                    cropper.finish(record, picture, faces, gray)
                    del running[row]
                except Exception as exc:  # noqa: BLE001 - as in the workers
                    cropper.failed(record, items[row], exc)
                    del running[row]
            answers = self._answer(requests)
        crops = torch.cat([cropper.no_crops() if r.crops is None else r.crops for r in records])
        for record in records:
            record.crops = record.pixels = record.gray = record.first = None
        return crops, records

    def _answer(self, requests: dict[int, Pass | Decode]) -> dict[int, Any]:
        """One round's answers: decodes on the threads; passes prepared on the threads, then run in
        as few detector calls as the canvas budget allows (similar sizes together)."""
        decodes = {row: r for row, r in requests.items() if isinstance(r, Decode)}
        passes = {row: r for row, r in requests.items() if isinstance(r, Pass)}
        answers = dict(zip(decodes, self.pool.map(self._decode, decodes.values())))
        prepared = dict(zip(passes, self.pool.map(self.detector.prepare, passes.values())))
        order = sorted(prepared, key=lambda row: prepared[row].pixels.shape[:2])
        for chunk in _chunks(order, lambda row: prepared[row].pixels.shape[:2]):
            answers.update(zip(chunk, self.detector.run_prepared([prepared[row] for row in chunk])))
        return answers

    def _decode(self, request: Decode):
        try:
            return load_reduced(request.path, self.cropper.options.max_pixels, request.side)[0]
        except Exception as exc:  # noqa: BLE001 - handed to the image's plan as its failure
            return exc


def _chunks(rows: list[int], shape) -> list[list[int]]:
    """``rows`` (sorted by size) in runs whose canvas (count x tallest x widest) fits CANVAS_PIXELS."""
    chunks: list[list[int]] = []
    chunk: list[int] = []
    height = width = 0
    for row in rows:
        h, w = shape(row)
        h2, w2 = max(height, h), max(width, w)
        if chunk and (len(chunk) + 1) * h2 * w2 > CANVAS_PIXELS:
            chunks.append(chunk)
            chunk, h2, w2 = [], h, w
        chunk.append(row)
        height, width = h2, w2
    return chunks + [chunk] if chunk else chunks
