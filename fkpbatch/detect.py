"""Face detection with RetinaFace-MobileNet0.25 (the ONNX graph found by :func:`onnx_model`), run by
onnxruntime on the CPU or by its PyTorch port (:mod:`fkpbatch.retinaface_torch`) batched on a GPU:
boxes, scores and five landmarks in the searched image's pixels, unrounded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

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
# 0.8 keeps real but blurred background faces and drops most torsos and patterns seen on photos/.
DEFAULT_MIN_SCORE = 0.8


@dataclass(frozen=True)
class Detection:
    """One face: ``box`` = (x, y, w, h), ``landmarks`` (5, 2) in the image's left, right eye, nose,
    left, right mouth corner order (image left, i.e. the subject's right, first)."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray


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
        return Candidates(self.boxes * np.float32([sx, sy, sx, sy]), self.scores, self.points * np.float32([sx, sy]))

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
    rgb = np.asarray(image.convert("RGB"))
    out = np.empty((1, 3, *rgb.shape[:2]), np.float32)
    for channel, (source, mean) in enumerate(zip((2, 1, 0), _MEAN_BGR)):
        np.subtract(rgb[..., source], mean, out=out[0, channel], dtype=np.float32)
    return out


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
        self._session = None
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
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
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
        priors = _priors(height, width)
        keep = conf[:, 1] >= self.min_score
        priors, loc, landms, scores = priors[keep], loc[keep], landms[keep], conf[keep, 1]
        centres = priors[:, :2] + loc[:, :2] * _VARIANCE[0] * priors[:, 2:]
        sizes = priors[:, 2:] * np.exp(loc[:, 2:] * _VARIANCE[1])
        frame = np.array([width, height], dtype=np.float32)
        boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], 1) * np.tile(frame, 2)
        points = (priors[:, None, :2] + landms.reshape(-1, 5, 2) * _VARIANCE[0] * priors[:, None, 2:]) * frame
        return boxes, scores, points

    def candidates(self, image: Image.Image, max_side: int, pad: float = 0.0) -> Candidates:
        """One pass with the longest side at most ``max_side`` px, in ``image``'s pixels."""
        small, scale, border = self._prepare(image, max_side, pad)
        loc, conf, landms = self._run(_network_input(small))
        boxes, scores, points = self._decode(loc[0], conf[0], landms[0], small.height, small.width)
        # continuous coordinates of the detector's frame -> continuous coordinates of ``image``
        return Candidates((boxes - border) / scale, scores, (points - border) / scale)

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

    def detect(self, image: Image.Image, pad: float = 0.0, passes: str = "auto") -> list[Detection]:
        """Faces in ``image`` (``pad``: grey border, as a fraction of the size, helps faces that
        fill the whole picture), in its pixels, ordered left to right by box centre. ``passes``:
        ``auto`` (the policy above), ``one`` (coarse only) or ``two`` (always both, as before 0.3)."""
        found = [self.candidates(image, self.coarse, pad)]
        second = passes == "two" and max(image.size) > self.coarse
        if second or (passes == "auto" and self.wants_second_pass(found[0], image.size)):
            found.append(self.candidates(image, self.fine, pad))
        return self.merge(found)

    def detect_batch(self, images: Sequence[Image.Image], max_side: int) -> list[Candidates]:
        """One pass over several images in one network call (the GPU path): each is resized to at
        most ``max_side`` px and pasted top-left on a shared canvas padded with the mean colour, so
        the padding reads as zeros, like the network's own zero padding."""
        prepared = [self._prepare(image, max_side, 0.0) for image in images]
        height = -(-max(p[0].height for p in prepared) // 32) * 32
        width = -(-max(p[0].width for p in prepared) // 32) * 32
        batch = np.zeros((len(images), 3, height, width), np.float32)
        for i, (small, _, _) in enumerate(prepared):
            batch[i, :, : small.height, : small.width] = _network_input(small)[0]
        loc, conf, landms = self._run(batch)
        out = []
        for i, (_, scale, _) in enumerate(prepared):
            boxes, scores, points = self._decode(loc[i], conf[i], landms[i], height, width)
            out.append(Candidates(boxes / scale, scores, points / scale))
        return out
