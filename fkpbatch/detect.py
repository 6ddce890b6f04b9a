"""Face detection with RetinaFace-MobileNet0.25 (the ONNX graph found by :func:`onnx_model`), run by
onnxruntime on the CPU or by its PyTorch port (:mod:`fkpbatch.retinaface_torch`) batched on a GPU:
boxes, scores and five landmarks in the searched image's pixels, unrounded."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar, Union

import numpy as np
from PIL import Image

from .options import DEFAULT_MIN_SCORE

# RetinaFace priors: feature strides and the two anchor sizes at each stride (biubug6's cfg_mnet).
_STRIDES = (8, 16, 32)
_ANCHOR_SIZES = ((16, 32), (64, 128), (256, 512))
_VARIANCE = (0.1, 0.2)
_MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)
# Search policy, measured on the shared photos (benchmarks/RESULTS.md, "Photos"): one pass with the
# longest side at COARSE_SIDE px finds every face bigger than ~5 % of the picture; a second pass at
# up to FINE_SIDE px is worth its cost only where small faces are likely (see wants_second_pass).
COARSE_SIDE = 480
FINE_SIDE = 1600
SMALL_FACE = 48  # a face under this many px at the coarse scale: there may be smaller ones


@dataclass(frozen=True)
class Detection:
    """One face: ``box`` = (x, y, w, h), ``landmarks`` (5, 2) in the image's left, right eye, nose,
    left, right mouth corner order (image left, i.e. the subject's right, first)."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray


@dataclass(frozen=True)
class Pass:
    """A search plan's request for one detector pass over ``image`` (longest side at most
    ``max_side`` px, a grey border of ``pad``); answered with :class:`Candidates` in its pixels."""

    image: Image.Image
    max_side: int
    pad: float = 0.0


@dataclass(frozen=True)
class Decode:
    """A search plan's request for the file at ``path`` decoded with its longest side at least
    ``side`` px (:func:`fkpbatch.decode.load_reduced`); answered with the upright RGB picture."""

    path: Path
    side: int


T = TypeVar("T")
RequestT = TypeVar("RequestT", bound=Union[Pass, Decode])
Plan = Generator[Union[Pass, Decode], Any, T]
"""A search policy written once, as a generator: it yields :class:`Pass` and :class:`Decode`
requests and is sent their answers; its return value is the result. DataLoader workers answer each
request at once (:func:`run_plan`); the GPU path answers a whole batch's requests together."""


def run_plan(plan: Generator[RequestT, Any, T], answer: Callable[[RequestT], Any]) -> T:
    """Run a search plan to its end, answering each request with ``answer(request)``."""
    try:
        request = next(plan)
        while True:
            request = plan.send(answer(request))
    except StopIteration as done:
        return done.value


def onnx_model() -> bytes:
    """The RetinaFace-MobileNet0.25 ONNX graph (bytes), shipped in weights/ (fkpbatch.zoo finds it)."""
    from .zoo import detector_path

    return detector_path().read_bytes()


@dataclass(frozen=True)
class Candidates:
    """One pass's faces above the score threshold before NMS: ``boxes`` (N, 4) x0, y0, x1, y1 and
    ``points`` (N, 5, 2) in continuous coordinates of the searched image, ``scores`` (N,)."""

    boxes: np.ndarray
    scores: np.ndarray
    points: np.ndarray

    def scaled(self, sx: float, sy: float) -> Candidates:
        """The same faces in an image resized by (sx, sy)."""
        return Candidates(
            self.boxes * np.array([sx, sy, sx, sy], dtype=np.float32),
            self.scores,
            self.points * np.array([sx, sy], dtype=np.float32),
        )

    def smallest_side(self) -> float:
        sides = np.minimum(self.boxes[:, 2] - self.boxes[:, 0], self.boxes[:, 3] - self.boxes[:, 1])
        return float(sides.min()) if len(sides) else float("inf")


@lru_cache(maxsize=64)
def _priors(height: int, width: int) -> np.ndarray:
    """(A, 4) anchor centres and sizes in unit coordinates, in the network's output order
    (row-major cells, then the two anchor sizes of each cell)."""
    levels = []
    for stride, sizes in zip(_STRIDES, _ANCHOR_SIZES):
        ny, nx = -(-height // stride), -(-width // stride)
        ys, xs = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        centres = np.stack([(xs.ravel() + 0.5) * stride / width, (ys.ravel() + 0.5) * stride / height], 1)
        extents = np.array([(size / width, size / height) for size in sizes])
        cells = np.repeat(centres, len(sizes), axis=0)
        levels.append(np.concatenate([cells, np.tile(extents, (len(centres), 1))], 1))
    return np.concatenate(levels).astype(np.float32)


def _suppress(boxes: np.ndarray, scores: np.ndarray, iou: float, containment: float = 0.6) -> list[int]:
    """Greedy NMS by score that also drops a box mostly inside a better one (a partial face found
    at another scale). One numpy step per kept face, not per candidate box."""
    areas = np.maximum(1e-6, (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        kept.append(int(best))
        w = np.clip(np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1]), 0, None)
        overlap = w * h
        dropped = (overlap / (areas[best] + areas[rest] - overlap) > iou) | (overlap / areas[rest] > containment)
        order = rest[~dropped]
    return kept


def _network_input(image: Image.Image) -> np.ndarray:
    """(1, 3, H, W) float32 BGR minus the channel means, one channel at a time (8x faster than
    converting, flipping and transposing the whole array)."""
    return _rgb_network_input(np.asarray(image.convert("RGB")))


def _rgb_network_input(rgb: np.ndarray) -> np.ndarray:
    out = np.empty((1, 3, *rgb.shape[:2]), np.float32)
    for channel, (source, mean) in enumerate(zip((2, 1, 0), _MEAN_BGR)):
        np.subtract(rgb[..., source], mean, out=out[0, channel], dtype=np.float32)
    return out


def _decode_kept(anchors, loc, scores, landms, height: int, width: int):
    """The network outputs of the anchors ``anchors`` (indices into the priors of a ``height`` x
    ``width`` input) -> boxes (x0, y0, x1, y1), scores and (5, 2) points in that input's pixels."""
    priors = _priors(height, width)[anchors]
    centres = priors[:, :2] + loc[:, :2] * _VARIANCE[0] * priors[:, 2:]
    sizes = priors[:, 2:] * np.exp(loc[:, 2:] * _VARIANCE[1])
    frame = np.array([width, height], dtype=np.float32)
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], 1) * np.tile(frame, 2)
    points = (priors[:, None, :2] + landms.reshape(-1, 5, 2) * _VARIANCE[0] * priors[:, None, 2:]) * frame
    return boxes, scores, points


@lru_cache(maxsize=64)
def _anchor_cells(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each prior's feature-map row, column and stride (int64, the priors' order)."""
    rows, cols, strides = [], [], []
    for stride, sizes in zip(_STRIDES, _ANCHOR_SIZES):
        ny, nx = -(-height // stride), -(-width // stride)
        ys, xs = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        rows.append(np.repeat(ys.ravel(), len(sizes)))
        cols.append(np.repeat(xs.ravel(), len(sizes)))
        strides.append(np.full(ny * nx * len(sizes), stride))
    return (
        np.concatenate(rows).astype(np.int64),
        np.concatenate(cols).astype(np.int64),
        np.concatenate(strides).astype(np.int64),
    )


# The network's downsampling: a batch canvas is a multiple of this, so every level lines up.
CANVAS_STEP = 32


def make_canvas(images: Sequence) -> tuple[Any, Any]:
    """Several (H, W, 3) uint8 RGB arrays or tensors as one (N, H', W', 3) uint8 tensor, each
    top-left, padded with the mean colour (zero after the mean is taken off) to a multiple of 32 px,
    and their (N, 2) heights and widths: what :meth:`FaceDetector.run_canvas` takes."""
    import torch

    height = -(-max(a.shape[0] for a in images) // CANVAS_STEP) * CANVAS_STEP
    width = -(-max(a.shape[1] for a in images) // CANVAS_STEP) * CANVAS_STEP
    canvas = torch.from_numpy(_MEAN_BGR[::-1].astype(np.uint8)).expand(len(images), height, width, 3).clone()
    view = canvas.numpy()
    for i, pixels in enumerate(images):
        view[i, : pixels.shape[0], : pixels.shape[1]] = np.asarray(pixels)
    return canvas, torch.tensor([a.shape[:2] for a in images], dtype=torch.int64).reshape(-1, 2)


@dataclass(frozen=True)
class Prepared:
    """One pass's network input as (H, W, 3) uint8 RGB ``pixels`` (a :class:`Pass`'s image resized
    by ``scale`` and bordered by ``border`` px)."""

    pixels: Any
    scale: float
    border: int

    def candidates(self, boxes: np.ndarray, scores: np.ndarray, points: np.ndarray) -> Candidates:
        """Faces found in ``pixels`` -> :class:`Candidates` in the pixels of the pass's image."""
        # continuous coordinates of the detector's frame -> continuous coordinates of the image
        border, scale = self.border, self.scale
        return Candidates((boxes - border) / scale, scores, (points - border) / scale)


class FaceDetector:
    """Finds faces. ``backend``: ``onnxruntime`` (CPU; the session is built lazily, once per
    DataLoader worker) or ``torch`` (the PyTorch port on ``device``, batched by :meth:`detect_batch`).

    Search policy (:meth:`detect`): one pass at most ``coarse`` px; a second pass at most ``fine``
    px only when :meth:`wants_second_pass` says small faces are likely.
    """

    BACKENDS = ("onnxruntime", "torch")

    def __init__(
        self,
        *,
        min_score: float = DEFAULT_MIN_SCORE,
        nms_iou: float = 0.4,
        coarse: int = COARSE_SIDE,
        fine: int = FINE_SIDE,
        threads: int = 1,
        backend: str = "onnxruntime",
        device: str = "cpu",
    ):
        if backend not in self.BACKENDS:
            raise ValueError(f"backend must be one of {self.BACKENDS}, not {backend!r}")
        self.min_score, self.nms_iou, self.coarse, self.fine, self.threads = min_score, nms_iou, coarse, fine, threads
        self.backend, self.device = backend, device
        self._session: Any = None  # an onnxruntime.InferenceSession, built lazily
        self._net = None

    def __getstate__(self):  # sessions and networks are rebuilt in each process, never pickled
        return {**self.__dict__, "_session": None, "_net": None}

    def network(self):
        """The PyTorch port on ``self.device`` (built once)."""
        if self._net is None:
            import torch

            from .retinaface_torch import RetinaFaceNet

            net = RetinaFaceNet.from_onnx(onnx_model()).to(self.device)
            self._net = net.to(memory_format=torch.channels_last) if torch.device(self.device).type == "cuda" else net
        return self._net

    def _run(self, bgr: np.ndarray):
        """(loc, conf, landmarks) for a (N, 3, H, W) float32 BGR-minus-means batch, as numpy."""
        if self.backend == "torch":
            import torch

            with torch.inference_mode():
                x = torch.from_numpy(bgr).to(self.device, non_blocking=True)
                return tuple(t.float().cpu().numpy() for t in self.network()(x))
        if self._session is None:
            from .export import onnxruntime_module, session_options

            ort = onnxruntime_module()  # no telemetry warning on import, no warnings under -q
            options = session_options(self.threads)
            options.inter_op_num_threads = 1
            self._session = ort.InferenceSession(onnx_model(), options, providers=["CPUExecutionProvider"])
        return self._session.run(None, {"input": bgr})

    @staticmethod
    def _prepare(image: Image.Image, max_side: int, pad: float) -> tuple[Image.Image, float, int]:
        width, height = image.size
        scale = min(1.0, max_side / max(width, height))
        small = (
            image
            if scale == 1.0
            else image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR)
        )
        border = round(pad * max(small.size))
        if border:
            canvas = Image.new("RGB", (small.width + 2 * border, small.height + 2 * border), (128, 128, 128))
            canvas.paste(small, (border, border))
            small = canvas
        return small, scale, border

    def _decode(self, loc, conf, landms, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One image's network outputs -> boxes, scores, points in the network input's pixels."""
        keep = np.flatnonzero(conf[:, 1] >= self.min_score)
        return _decode_kept(keep, loc[keep], conf[keep, 1], landms[keep], height, width)

    def answer(self, request: Pass) -> Candidates:
        """One :class:`Pass` of a search plan, run here and now."""
        return self.candidates(request.image, request.max_side, request.pad)

    def prepare(self, request: Pass) -> Prepared:
        """A :class:`Pass`'s network input as uint8 RGB pixels (what DataLoader workers send the GPU)."""
        small, scale, border = self._prepare(request.image, request.max_side, request.pad)
        return Prepared(np.asarray(small.convert("RGB")), scale, border)

    def run_prepared(self, prepared: Sequence[Prepared]) -> list[Candidates]:
        """Passes prepared by :meth:`prepare`, in one batched network call (the torch backend)."""
        canvas, sizes = make_canvas([p.pixels for p in prepared])
        return [p.candidates(*raw) for p, raw in zip(prepared, self.run_canvas(canvas, sizes))]

    def run_canvas(self, canvas, sizes) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Boxes, scores and points (in each image's pixels) of the images on a :func:`make_canvas`
        canvas: one call of the PyTorch port on ``self.device`` in fp32 (fp16 moved scores across the
        threshold: a face found on the CPU was missed on the GPU), each image
        searched exactly as alone (the network masks the padding after every layer), scores
        thresholded on the device so that only the candidates travel back."""
        import torch

        device = torch.device(self.device)
        n, height, width, _ = canvas.shape
        sizes = torch.as_tensor(sizes, dtype=torch.int64)
        with torch.inference_mode():
            x = canvas.to(device, non_blocking=True).permute(0, 3, 1, 2).flip(1)  # RGB -> BGR, a view
            mean = torch.from_numpy(_MEAN_BGR).to(device).view(1, 3, 1, 1)
            x = (x.float() - mean).contiguous(memory_format=torch.channels_last)
            on_device = sizes.to(device)
            loc, conf, landms = self.network()(x, sizes=on_device)
            rows, cols, strides = (torch.from_numpy(a).to(device) for a in _anchor_cells(height, width))
            extent = (on_device[:, None, :] + strides[None, :, None] - 1) // strides[None, :, None]  # (N, A, 2)
            inside = (rows[None] < extent[..., 0]) & (cols[None] < extent[..., 1])
            image, anchor = torch.nonzero(inside & (conf[..., 1].float() >= self.min_score), as_tuple=True)
            kept = (anchor, loc[image, anchor].float(), conf[image, anchor, 1].float(), landms[image, anchor].float())
            owner, (anchors, locs, scores, points) = image.cpu().numpy(), (t.cpu().numpy() for t in kept)
        bounds = np.searchsorted(owner, np.arange(n + 1))
        return [
            _decode_kept(anchors[start:end], locs[start:end], scores[start:end], points[start:end], height, width)
            for start, end in zip(bounds[:-1], bounds[1:])
        ]

    def candidates(self, image: Image.Image, max_side: int, pad: float = 0.0) -> Candidates:
        """One pass with the longest side at most ``max_side`` px, in ``image``'s pixels."""
        small, scale, border = self._prepare(image, max_side, pad)
        loc, conf, landms = self._run(_network_input(small))
        return Prepared(None, scale, border).candidates(
            *self._decode(loc[0], conf[0], landms[0], small.height, small.width)
        )

    def wants_second_pass(self, coarse: Candidates, size: tuple[int, int], full: tuple[int, int] | None = None) -> bool:
        """After a coarse pass on an image of ``size``: is a finer pass worth its cost? Only when
        the image is meaningfully bigger than the coarse pass saw, and the coarse pass found no face,
        a face under SMALL_FACE px at its scale, or several faces the smallest of which is under twice
        that (group photos: the small faces at the back are the ones a coarse pass misses; a couple
        filling the picture needs no second look). Measured on the shared photos: 5 of 56 photos of
        ~800 px and 5 of 64 full-size photos get a second pass, and every real face the two-pass
        search finds is found. ``size``: the image the
        candidates are in; ``full``: its full-resolution size when it was decoded reduced."""
        if min(self.fine, max(full or size)) < 1.25 * self.coarse:
            return False
        scale = min(1.0, self.coarse / max(size))
        smallest = coarse.smallest_side() * scale
        return (
            len(coarse.scores) == 0 or smallest < SMALL_FACE or (smallest < 2 * SMALL_FACE and self.count(coarse) > 1)
        )

    def second_pass_due(
        self, passes: str, coarse: Candidates, size: tuple[int, int], full: tuple[int, int] | None = None
    ) -> bool:
        """``--passes``: ``two`` whenever the image is bigger than the coarse pass, ``auto`` where
        :meth:`wants_second_pass` says so, ``one`` never."""
        if passes == "two":
            return max(full or size) > self.coarse
        return passes == "auto" and self.wants_second_pass(coarse, size, full)

    def count(self, found: Candidates) -> int:
        return len(_suppress(found.boxes, found.scores, self.nms_iou)) if len(found.scores) else 0

    def merge(self, passes: Sequence[Candidates]) -> list[Detection]:
        """NMS over the passes' candidates (all in one image's pixels); faces left to right."""
        boxes = np.concatenate([f.boxes for f in passes]).astype(np.float32)
        scores = np.concatenate([f.scores for f in passes]).astype(np.float32)
        points = np.concatenate([f.points for f in passes])
        faces = []
        for i in _suppress(boxes, scores, self.nms_iou) if len(scores) else []:
            x0, y0, x1, y1 = (float(v) for v in boxes[i])
            faces.append(Detection((x0, y0, x1 - x0, y1 - y0), float(scores[i]), points[i] - 0.5))
        return sorted(faces, key=lambda f: (f.box[0] + f.box[2] / 2, f.box[1]))

    def search(
        self, image: Image.Image, pad: float = 0.0, passes: str = "auto"
    ) -> Generator[Pass, Any, list[Detection]]:
        """:meth:`detect` as a search plan (see :data:`Plan`)."""
        found = [(yield Pass(image, self.coarse, pad))]
        if self.second_pass_due(passes, found[0], image.size):
            found.append((yield Pass(image, self.fine, pad)))
        return self.merge(found)

    def detect(self, image: Image.Image, pad: float = 0.0, passes: str = "auto") -> list[Detection]:
        """Faces in ``image`` (``pad``: grey border, as a fraction of the size, helps faces that
        fill the whole picture), in its pixels, ordered left to right by box centre. ``passes``:
        ``auto`` (the policy above), ``one`` (coarse only) or ``two`` (always both, as before 0.3)."""
        return run_plan(self.search(image, pad, passes), self.answer)

    def detect_batch(self, images: Sequence[Image.Image], max_side: int) -> list[Candidates]:
        """One pass over several images in one network call (the GPU path): each is resized to at
        most ``max_side`` px and searched as if alone (see :meth:`run_canvas`)."""
        return self.run_prepared([self.prepare(Pass(image, max_side)) for image in images])
