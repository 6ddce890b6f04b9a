"""Face detection with RetinaFace-MobileNet0.25 (the ONNX graph shipped in weights/, run by
onnxruntime): boxes, scores and five landmarks in original-image pixels, unrounded."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

# RetinaFace priors: feature strides and the two anchor sizes at each stride (biubug6's cfg_mnet).
_STRIDES = (8, 16, 32)
_ANCHOR_SIZES = ((16, 32), (64, 128), (256, 512))
_VARIANCE = (0.1, 0.2)
_MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)
# 0.8 keeps real but blurred background faces and drops most torsos and patterns seen on photos/.
DEFAULT_MIN_SCORE = 0.8


@dataclass(frozen=True)
class Detection:
    """One face: ``box`` = (x, y, w, h), ``landmarks`` (5, 2) in the image's left, right eye, nose,
    left, right mouth corner order (image left, i.e. the subject's right, first)."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray


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
    """Finds faces; builds its onnxruntime session lazily (once per DataLoader worker).

    Large photos are searched at two sizes: at most ``coarse`` px for faces bigger than the
    network's largest anchor, and at most ``fine`` px for small faces in group photos.
    """

    def __init__(self, *, min_score: float = DEFAULT_MIN_SCORE, nms_iou: float = 0.4, coarse: int = 640, fine: int = 1600, threads: int = 1):
        self.min_score, self.nms_iou, self.coarse, self.fine, self.threads = min_score, nms_iou, coarse, fine, threads
        self._session = None

    def _run(self, bgr: np.ndarray):
        if self._session is None:
            import onnxruntime as ort

            from .zoo import detector_path

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            self._session = ort.InferenceSession(str(detector_path()), options, providers=["CPUExecutionProvider"])
        return self._session.run(None, {"input": bgr})

    def _candidates(self, image: Image.Image, max_side: int, pad: float):
        """Boxes (x0, y0, x1, y1), scores and landmarks above ``min_score`` in ``image``'s pixels."""
        width, height = image.size
        scale = min(1.0, max_side / max(width, height))
        small = image if scale == 1.0 else image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR)
        border = round(pad * max(small.size))
        if border:
            canvas = Image.new("RGB", (small.width + 2 * border, small.height + 2 * border), (128, 128, 128))
            canvas.paste(small, (border, border))
            small = canvas
        loc, conf, landms = self._run(_network_input(small))
        priors = _priors(small.height, small.width)
        keep = conf[0, :, 1] >= self.min_score
        priors, loc, landms, scores = priors[keep], loc[0][keep], landms[0][keep], conf[0, keep, 1]
        centres = priors[:, :2] + loc[:, :2] * _VARIANCE[0] * priors[:, 2:]
        sizes = priors[:, 2:] * np.exp(loc[:, 2:] * _VARIANCE[1])
        frame = np.array([small.width, small.height], dtype=np.float32)
        boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], 1) * np.tile(frame, 2)
        points = (priors[:, None, :2] + landms.reshape(-1, 5, 2) * _VARIANCE[0] * priors[:, None, 2:]) * frame
        # continuous coordinates of the detector's frame -> continuous coordinates of ``image``
        return (boxes - border) / scale, scores, (points - border) / scale

    def detect(self, image: Image.Image, pad: float = 0.0) -> list[Detection]:
        """Faces in ``image`` (``pad``: grey border, as a fraction of the size, helps faces that
        fill the whole picture), in original pixels, ordered left to right by box centre."""
        sides = [self.coarse, self.fine] if max(image.size) > self.coarse else [self.coarse]
        found = [self._candidates(image, side, pad) for side in sides]
        boxes = np.concatenate([f[0] for f in found]).astype(np.float32)
        scores = np.concatenate([f[1] for f in found]).astype(np.float32)
        points = np.concatenate([f[2] for f in found])
        faces = []
        for i in _suppress(boxes, scores, self.nms_iou):
            x0, y0, x1, y1 = (float(v) for v in boxes[i])
            faces.append(Detection((x0, y0, x1 - x0, y1 - y0), float(scores[i]), points[i] - 0.5))
        return sorted(faces, key=lambda f: (f.box[0] + f.box[2] / 2, f.box[1]))
