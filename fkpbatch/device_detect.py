"""Face detection on the model's device (``--detect-on device``; the default detects in the workers).

DataLoader workers decode each image (reduced JPEG decoding, as on the workers' path), prepare the
detector's first pass as uint8 pixels and make the grayscale copy faces are cropped from; their
collate function puts a batch's first passes on one canvas (pinned, then copied to the GPU as uint8).
The main process runs each round of passes of the whole batch in one call of the PyTorch port of the
detector, and follows the very face policy of the workers' path (:meth:`FaceCropper.search`:
passes, --min-face, the crop fallback, --faces largest, framing by the five landmarks, a bigger
decode when a face would be cropped from too few pixels), answering its requests batch-wide instead
of one image at a time; then it crops the faces from the grayscale copy (or from the bigger decode)
and hands them to the keypoint model. The RGB picture itself does not travel: the policy reads only
its size, and the few images that need a later pass at the same scale (a second pass, the padded
pass of a small picture) take its pixels from the canvas or decode it again on a thread.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .checkpoint import ModelSpec
from .cropping import FaceCropper, ImageSource
from .detect import Decode, FaceDetector, Pass, Prepared, make_canvas
from .options import PredictOptions
from .results import CropRecord

# Pixels (images x canvas height x width) of one detector call in the later rounds (second passes
# at up to 1600 px): about 64 pictures of 480 x 480, or 6 of 1600 x 1600.
CANVAS_PIXELS = 1 << 24


@dataclass
class FrameRecord(CropRecord):
    """A worker's :class:`CropRecord` for the device path: an image still to search carries its
    ``first`` pass and the ``gray`` copy ((H, W) uint8) of its decoded picture; one finished in the
    worker (an error, a skipped file) carries its status alone."""

    gray: torch.Tensor | None = None
    first: Prepared | None = None
    """The first pass's input (its ``pixels`` travel on the batch's canvas)."""


class FrameSource(ImageSource):
    """The input files as a Dataset of first-pass detector inputs and grayscale pictures (the
    workers' side of the device path: no detection, no crops)."""

    def __getitem__(self, index: int) -> FrameRecord:
        item = self.files[index]
        record = FrameRecord(crops=self.cropper.no_crops())
        self.cropper.guarded(item, self._frame, record)  # fills in ``record`` itself
        record.index = index
        return record

    def _frame(self, item, record: FrameRecord) -> None:
        cropper = self.cropper
        image, full = cropper.load(item, record)
        _, request = _first_pass(cropper, image, full, item)
        first = cropper.detector.prepare(request)
        record.first = Prepared(torch.from_numpy(np.array(first.pixels)), first.scale, first.border)
        record.gray = torch.from_numpy(np.array(image.convert("L")))


@dataclass
class FrameBatch:
    """A batch of :class:`FrameRecord` s whose tensors travel together: the first passes on one
    ``canvas`` (``searched``: the records on it, in order; ``sizes``: their (N, 2) heights and
    widths) and the searched records' grayscale pictures packed in one flat tensor (a few
    shared-memory transfers per batch, not one or two per image)."""

    records: list[FrameRecord]
    searched: list[int]
    canvas: torch.Tensor | None = None
    sizes: torch.Tensor | None = None
    gray: torch.Tensor | None = None
    shapes: list[tuple[int, int]] | None = None

    def pin_memory(self) -> FrameBatch:
        """Called by the DataLoader's pinning thread (``pin_memory=True``): the canvas goes to the GPU
        from pinned memory, asynchronously."""
        if self.canvas is not None:
            self.canvas = self.canvas.pin_memory()
        return self

    def unpack(self) -> None:
        """Give the searched records their grayscale pictures back (views of the flat tensor)."""
        start = 0
        for row, (h, w) in zip(self.searched, self.shapes):
            self.records[row].gray = self.gray[start : start + h * w].view(h, w)
            start += h * w

    def first_pixels(self, slot: int) -> np.ndarray:
        """The first-pass input of the ``slot``-th searched record, cut from the canvas."""
        h, w = self.sizes[slot].tolist()
        return self.canvas[slot, :h, :w].numpy()


def collate_frames(records: list[FrameRecord]) -> FrameBatch:
    """The batch's first passes on one canvas, its grayscale pictures packed (built in the worker)."""
    searched = [i for i, r in enumerate(records) if r.first is not None]
    for record in records:
        if record.crops is not None and not len(record.crops):
            record.crops = None  # no empty tensor per image through shared memory
    if not searched:
        return FrameBatch(records, [])
    canvas, sizes = make_canvas([records[i].first.pixels for i in searched])
    batch = FrameBatch(
        records,
        searched,
        canvas,
        sizes,
        shapes=[(records[i].gray.shape[0], records[i].gray.shape[1]) for i in searched],
    )
    batch.gray = torch.cat([records[i].gray.reshape(-1) for i in searched])
    for i in searched:
        first = records[i].first
        records[i].first = Prepared(None, first.scale, first.border)  # its pixels are on the canvas now
        records[i].gray = None
    return batch


def _first_pass(cropper: FaceCropper, image, full: tuple[int, int], item):
    """(the image's search plan, its first request): the pass over ``image`` itself that the worker
    prepares and the batch's first detector call answers."""
    plan = cropper.search(image, full, getattr(item, "path", None))
    request = next(plan)
    if not isinstance(request, Pass) or request.image is not image:
        raise RuntimeError(f"a search plan began with {type(request).__name__}, not a pass over the picture")
    return plan, request


class _Picture:
    """A worker's decoded picture in the main process, by its size alone (all the face policy reads
    of it); :meth:`DeviceSearch._pixels` fetches its pixels when a pass needs them."""

    def __init__(self, width: int, height: int, slot: int):
        self.size, self.width, self.height, self.slot = (width, height), width, height, slot


class DeviceSearch:
    """The main process's side: every image's search plan, each round's requests answered for the
    whole batch (passes in one detector call on ``detector.device``, decodes on a few threads)."""

    def __init__(self, spec: ModelSpec, options: PredictOptions, detector: FaceDetector, threads: int = 4):
        self.cropper = FaceCropper(spec, options, detector)
        self.detector = detector
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fkpbatch-decode")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def crops(self, batch: FrameBatch, items: list) -> tuple[torch.Tensor, list[FrameRecord]]:
        """(all faces' uint8 crops, the records), as :func:`fkpbatch.cropping.collate_images` gives them;
        ``items``: the inputs of ``batch.records``, in order."""
        records, cropper = batch.records, self.cropper
        running: dict[int, tuple[Any, _Picture]] = {}
        answers: dict[int, Any] = {}
        if batch.searched:
            batch.unpack()
            found = self.detector.run_canvas(batch.canvas, batch.sizes)
            for slot, (row, raw) in enumerate(zip(batch.searched, found)):
                record = records[row]
                try:
                    picture = _Picture(record.gray.shape[1], record.gray.shape[0], slot)
                    plan, _ = _first_pass(cropper, picture, (record.width, record.height), items[row])
                    running[row], answers[row] = (plan, picture), record.first.candidates(*raw)
                except Exception as exc:  # noqa: BLE001 - as in the workers: one odd file never ends a run
                    cropper.failed(record, items[row], exc)
        pictures: dict[int, Image.Image] = {}  # rows whose RGB picture was fetched
        while running:
            requests = {}
            for row, (plan, picture) in list(running.items()):
                record, answer = records[row], answers.pop(row)
                try:
                    if isinstance(answer, Exception):
                        raise answer
                    requests[row] = plan.send(answer)
                except StopIteration as done:
                    image, faces = done.value
                    if image is picture:  # cropped from the worker's decode: its grayscale copy
                        image, gray = pictures.get(row), Image.fromarray(record.gray.numpy())
                    else:
                        gray = None
                    cropper.finish(record, image, faces, gray)
                    del running[row]
                except Exception as exc:  # noqa: BLE001 - as in the workers
                    cropper.failed(record, items[row], exc)
                    del running[row]
            answers = self._answer(requests, batch, items, pictures)
        crops = torch.cat([cropper.no_crops() if r.crops is None else r.crops for r in records])
        for record in records:
            record.crops = record.gray = record.first = None
        return crops, records

    def _answer(self, requests: dict[int, Pass | Decode], batch: FrameBatch, items, pictures) -> dict[int, Any]:
        """One round's answers: decodes on the threads; passes prepared on the threads, then run in
        as few detector calls as the canvas budget allows (similar sizes together)."""
        decodes = {row: r for row, r in requests.items() if isinstance(r, Decode)}
        passes = {row: r for row, r in requests.items() if isinstance(r, Pass)}
        answers = dict(zip(decodes, self.pool.map(self._decode, decodes.values())))

        def prepare(row: int) -> Prepared | Exception:
            request = passes[row]
            try:
                if isinstance(request.image, _Picture):
                    if row not in pictures:
                        pictures[row] = self._pixels(request.image, batch, items[row])
                    request = Pass(pictures[row], request.max_side, request.pad)
                return self.detector.prepare(request)
            except Exception as exc:  # noqa: BLE001 - handed to the image's plan as its failure
                return exc

        prepared = dict(zip(passes, self.pool.map(prepare, passes)))
        answers.update((row, p) for row, p in prepared.items() if isinstance(p, Exception))
        done = {row: p for row, p in prepared.items() if not isinstance(p, Exception)}
        ready = sorted(done, key=lambda row: done[row].pixels.shape[:2])
        for chunk in _chunks(ready, lambda row: done[row].pixels.shape[:2]):
            answers.update(zip(chunk, self.detector.run_prepared([done[row] for row in chunk])))
        return answers

    def _pixels(self, picture: _Picture, batch: FrameBatch, item) -> Image.Image:
        """The RGB picture a worker decoded: its first pass when that was the picture itself (no
        resize, no border), else decoded again the same way."""
        first = batch.records[batch.searched[picture.slot]].first
        if first.scale == 1.0 and first.border == 0:
            return Image.fromarray(batch.first_pixels(picture.slot))
        image, _ = self.cropper.load(item, CropRecord())
        if image.size != picture.size:
            raise RuntimeError(f"decoded again at {image.size}, not {picture.size} (did the file change?)")
        return image

    def _decode(self, request: Decode):
        try:
            return self.cropper.answer(request)
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
