"""Aligned face crops: the five-point similarity warp to the ArcFace 112x112 template (what face
recognition models such as insightface's expect), in numpy and Pillow, without OpenCV.

Pixel convention: coordinates are 0-based pixel indices, pixel ``i``'s centre at ``i`` (as
everywhere in fkpbatch), in the input image and in the crop alike, and the template's coordinates
are read the same way. Output pixel ``(u, v)`` is the input sampled (bilinearly) at
``M^-1 (u, v)``, where ``M`` is the similarity that maps the face's five points onto the template
(scaled by ``size / 112``): the convention of OpenCV's ``warpAffine``, so a crop equals insightface's
``norm_crop`` up to interpolation rounding. Pillow's ``Image.transform`` works in continuous
coordinates (pixel ``i`` covers ``[i, i + 1)``, its centre at ``i + 0.5``); :func:`aligned_crop`
converts.

This module does not import :mod:`fkpbatch.results` (results.py imports this lazily).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["ALIGN_POINTS", "ARCFACE_TEMPLATE", "align_face", "aligned_crop", "five_points", "similarity_transform"]

ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],  # image-left eye centre (the subject's right eye)
        [73.5318, 51.5014],  # image-right eye centre (the subject's left eye)
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # image-left mouth corner (the subject's right)
        [70.7299, 92.2041],  # image-right mouth corner (the subject's left)
    ]
)
"""The five points of the ArcFace 112x112 crop (insightface's ``arcface_dst``), as pixel indices."""
ARCFACE_TEMPLATE.flags.writeable = False

ALIGN_POINTS = ("right_eye_center", "left_eye_center", "nose_tip", "mouth_right_corner", "mouth_left_corner")
"""The Kaggle names of the template's rows, in order (Kaggle's left is the subject's left: the image's right)."""

# The same five points from the 68 iBUG points (eye centres: mean of the six contour points, as the
# development data derive the Kaggle points from the 68).
_IBUG_FIVE = (range(36, 42), range(42, 48), (30,), (48,), (54,))

TEMPLATE_SIZE = 112


def similarity_transform(src, dst) -> np.ndarray:
    """The 2x3 matrix ``M`` of the similarity (rotation, uniform scale, translation; no reflection)
    that maps the (N, 2) points ``src`` onto ``dst`` in the least-squares sense: ``dst ~ M @ [x, y, 1]``.

    Umeyama's closed form, with the reflection excluded: mirrored points give the best rotation,
    never a flip. Raises ValueError for fewer than 2 points, non-finite values, or ``src`` points
    that all coincide.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"need two (N, 2) arrays of the same shape with N >= 2, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("points must be finite (a missing keypoint cannot be aligned)")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_centred, dst_centred = src - src_mean, dst - dst_mean
    src_variance = (src_centred**2).sum() / len(src)
    if src_variance <= 1e-12:
        raise ValueError("the source points coincide: no similarity is defined")
    covariance = dst_centred.T @ src_centred / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    signs = np.array([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) >= 0 else -1.0])
    rotation = u @ np.diag(signs) @ vt
    scale = float((singular * signs).sum() / src_variance)
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def _invert(matrix: np.ndarray) -> np.ndarray:
    linear = np.linalg.inv(matrix[:, :2])
    return np.hstack([linear, -(linear @ matrix[:, 2:3])])


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2x3 affine ``outer o inner``."""
    return np.hstack([outer[:, :2] @ inner[:, :2], outer[:, :2] @ inner[:, 2:3] + outer[:, 2:3]])


def aligned_crop(image: Image.Image, points_xy, size: int = TEMPLATE_SIZE, *, antialias: bool = False) -> Image.Image:
    """The ``size`` x ``size`` RGB crop of ``image`` whose five points ``points_xy`` ((5, 2) x, y in
    0-based pixels, in :data:`ALIGN_POINTS` order: image-left eye, image-right eye, nose tip,
    image-left mouth corner, image-right mouth corner) land on :data:`ARCFACE_TEMPLATE` scaled by
    ``size / 112``. Bilinear sampling; black outside the picture.

    Conventions: see the module docstring (output pixel ``(u, v)`` samples the input at
    ``M^-1 (u, v)``, both in pixel indices, as ``cv2.warpAffine(image, M, (size, size))``).

    ``antialias``: when the face is shrunk by more than 2x, the picture is first box-filtered by the
    whole factor (Pillow's ``reduce``) so that the crop of a large face is not aliased; the geometry
    is unchanged. The default samples the original pixels directly, like ``warpAffine`` (what
    ``predict --aligned`` writes).
    """
    if size < 1:
        raise ValueError(f"size must be at least 1, not {size}")
    points = np.asarray(points_xy, dtype=np.float64)
    if points.shape != (5, 2):
        raise ValueError(f"points_xy must be (5, 2), not {points.shape}")
    forward = similarity_transform(points, ARCFACE_TEMPLATE * (size / TEMPLATE_SIZE))  # input index -> output index
    inverse = _invert(forward)  # output index -> input index
    picture = image if image.mode == "RGB" else image.convert("RGB")
    scale = math.hypot(forward[0, 0], forward[1, 0])  # output pixels per input pixel
    factor = int(1 / scale) if antialias and scale < 0.5 else 1
    if factor > 1:
        # Only the region the crop reads, box-filtered by `factor` (a reduced pixel j averages input
        # pixels factor*j .. factor*j + factor - 1, centre factor*j + (factor - 1) / 2).
        corners = np.array([[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]], dtype=np.float64)
        reach = corners @ inverse.T
        margin = 2 * factor
        left = max(0, math.floor((reach[:, 0].min() - margin) / factor) * factor)
        top = max(0, math.floor((reach[:, 1].min() - margin) / factor) * factor)
        right = min(picture.width, math.ceil(reach[:, 0].max() + margin + 1))
        bottom = min(picture.height, math.ceil(reach[:, 1].max() + margin + 1))
        if right > left and bottom > top:
            picture = picture.crop((left, top, right, bottom)).reduce(factor)
            # input index -> reduced index: (x - left - (factor - 1) / 2) / factor
            to_reduced = np.array(
                [
                    [1 / factor, 0, -(left + (factor - 1) / 2) / factor],
                    [0, 1 / factor, -(top + (factor - 1) / 2) / factor],
                ]
            )
            inverse = _compose(to_reduced, inverse)
    # Pillow maps output continuous (u + 0.5, v + 0.5) through the coefficients to input continuous
    # coordinates (index + 0.5): shift both ends by half a pixel.
    half = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])
    unhalf = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5]])
    continuous = _compose(half, _compose(inverse, unhalf))
    return picture.transform(
        (size, size),
        Image.Transform.AFFINE,
        data=tuple(float(c) for c in continuous.ravel()),
        resample=Image.Resampling.BILINEAR,
        fillcolor=(0, 0, 0),
    )


def _lookup(source: Any, name: str) -> tuple[float, float] | None:
    """``name``'s (x, y) in a ``{name: (x, y)}`` mapping or a row with ``name_x``/``name_y`` keys."""
    try:
        if name in source:
            x, y = source[name]
            return float(x), float(y)
        if f"{name}_x" in source:
            return float(source[f"{name}_x"]), float(source[f"{name}_y"])
    except (TypeError, ValueError, KeyError):
        return None
    return None


def five_points(face: Any) -> np.ndarray:
    """The (5, 2) points :func:`aligned_crop` needs, in :data:`ALIGN_POINTS` order, from:

    - a :class:`fkpbatch.FaceResult` (or anything with ``keypoints`` and ``names``),
    - an :class:`fkpbatch.ImageResult` with exactly one face,
    - a mapping ``{name: (x, y)}`` (``FaceResult.points``) or a row of ``fkpbatch.predict``'s
      DataFrame / CSV (``right_eye_center_x``, ... columns).

    The Kaggle points are used when present (finite); otherwise the 68 iBUG points give them
    (eye centres = mean of each eye's six points, nose tip p30, mouth corners p48/p54). Raises
    ValueError when neither is there.
    """
    if hasattr(face, "faces") and not hasattr(face, "keypoints"):
        faces = list(face.faces)
        if len(faces) != 1:
            raise ValueError(f"the image has {len(faces)} faces: pass one of its .faces")
        face = faces[0]
    if hasattr(face, "keypoints") and hasattr(face, "names"):
        keypoints = np.asarray(face.keypoints, dtype=np.float64).reshape(-1, 2)
        source: Any = dict(zip(face.names, map(tuple, keypoints)))
    else:
        source = face
    found = [_lookup(source, name) for name in ALIGN_POINTS]
    if all(p is not None for p in found) and np.isfinite(found).all():
        return np.array(found, dtype=np.float64)
    ibug = [_lookup(source, f"p{i}") for i in range(68)]
    if all(p is not None for p in ibug) and np.isfinite(ibug).all():
        ibug_array = np.array(ibug, dtype=np.float64)
        return np.array([ibug_array[list(rows)].mean(axis=0) for rows in _IBUG_FIVE])
    raise ValueError(f"the face has no finite {', '.join(ALIGN_POINTS)} (nor the 68 iBUG points)")


def align_face(image: Image.Image, face: Any, size: int = TEMPLATE_SIZE, *, antialias: bool = False) -> Image.Image:
    """:func:`aligned_crop` of ``face`` (anything :func:`five_points` takes) in ``image`` (the
    upright picture its keypoints refer to, e.g. ``fkpbatch.decode.load_image(path)``)."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL image, not {type(image).__name__}")
    return aligned_crop(image, five_points(face), size, antialias=antialias)
