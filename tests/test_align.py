"""Aligned face crops (fkpbatch.align): the similarity fit, the pixel convention of the warp, the
ArcFace template at any size, the five points from results and DataFrame rows, and real faces."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fkpbatch.align import (
    ALIGN_POINTS,
    ARCFACE_TEMPLATE,
    align_face,
    aligned_crop,
    five_points,
    similarity_transform,
)
from fkpbatch.keypoints import IBUG_POINTS, KAGGLE_POINTS
from fkpbatch.results import FaceResult, ImageResult
from fkpbatch.transforms import Box

from conftest import need_data


def _similarity(angle_degrees: float, scale: float, shift) -> np.ndarray:
    angle = np.radians(angle_degrees)
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.hstack([rotation, np.asarray(shift, dtype=np.float64).reshape(2, 1)])


def _apply(matrix: np.ndarray, points) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def _inverse(matrix: np.ndarray) -> np.ndarray:
    linear = np.linalg.inv(matrix[:, :2])
    return np.hstack([linear, -(linear @ matrix[:, 2:3])])


@pytest.mark.parametrize("seed", range(5))
def test_the_fit_recovers_a_known_similarity_exactly(seed):
    rng = np.random.default_rng(seed)
    truth = _similarity(rng.uniform(-180, 180), rng.uniform(0.05, 20), rng.uniform(-500, 500, 2))
    src = rng.uniform(0, 300, (5, 2))
    np.testing.assert_allclose(similarity_transform(src, _apply(truth, src)), truth, rtol=1e-9, atol=1e-7)


def test_mirrored_points_give_a_rotation_not_a_flip():
    rng = np.random.default_rng(7)
    src = rng.uniform(0, 100, (5, 2))
    dst = src * [-1, 1]  # a pure reflection: the best similarity without one is some rotation
    matrix = similarity_transform(src, dst)
    linear = matrix[:, :2]
    assert np.linalg.det(linear) > 0
    assert linear[0, 0] == pytest.approx(linear[1, 1]) and linear[0, 1] == pytest.approx(-linear[1, 0])
    # ... and the least-squares best one: the linear problem in (a, b, tx, ty) has the same optimum
    rows = [[x, -y, 1, 0] for x, y in src] + [[y, x, 0, 1] for x, y in src]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows, dtype=float), np.concatenate([dst[:, 0], dst[:, 1]]), rcond=None)[0]
    np.testing.assert_allclose(matrix, [[a, -b, tx], [b, a, ty]], atol=1e-9)


def test_the_fit_refuses_degenerate_input():
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.ones((5, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="finite"):
        similarity_transform([[0, 0], [1, np.nan]], [[0, 0], [1, 1]])
    with pytest.raises(ValueError, match="same shape"):
        similarity_transform(np.zeros((5, 2)), np.zeros((4, 2)))


def test_pixel_indices_are_the_convention_a_half_pixel_shift_splits_a_pixel():
    """Input pixel (40, 50) moved by (+3.5, +2) lands between output pixels 43 and 44 of row 52."""
    image = np.zeros((112, 112, 3), dtype=np.uint8)
    image[50, 40] = 255
    crop = np.asarray(aligned_crop(Image.fromarray(image), ARCFACE_TEMPLATE - [3.5, 2.0], antialias=False))[..., 0]
    assert crop[52, 43] == pytest.approx(127.5, abs=1.5) and crop[52, 44] == pytest.approx(127.5, abs=1.5)
    assert crop.sum() == pytest.approx(255, abs=3)
    whole = np.asarray(aligned_crop(Image.fromarray(image), ARCFACE_TEMPLATE - [3.0, 2.0], antialias=False))[..., 0]
    assert whole[52, 43] == 255 and whole.sum() == 255
    same = np.asarray(aligned_crop(Image.fromarray(image), ARCFACE_TEMPLATE, antialias=False))
    np.testing.assert_allclose(same, image, atol=1)


def test_each_output_pixel_samples_the_inverse_transform_of_its_index():
    """On a ramp (value = 4 x column index) the crop's value at (u, v) is 4 x the x of M^-1 (u, v):
    bilinear sampling reproduces a linear picture, so a half-pixel slip would show as 2 levels."""
    ramp = np.tile((np.arange(64) * 4).astype(np.uint8), (64, 1))
    truth = _similarity(12.0, 1.7, (-20.0, -15.0))  # input index -> output index
    points = _apply(_inverse(truth), ARCFACE_TEMPLATE)
    crop = np.asarray(aligned_crop(Image.fromarray(ramp).convert("RGB"), points, antialias=False), dtype=float)[..., 0]
    u, v = np.meshgrid(np.arange(112), np.arange(112))
    source = _apply(_inverse(truth), np.stack([u.ravel(), v.ravel()], axis=1)).reshape(112, 112, 2)
    inside = (source[..., 0] >= 0.5) & (source[..., 0] <= 62.5) & (source[..., 1] >= 0.5) & (source[..., 1] <= 62.5)
    assert inside.sum() > 2000
    error = crop[inside] - 4 * source[..., 0][inside]
    assert np.abs(error).max() < 1.0 and abs(error.mean()) < 0.6  # Pillow truncates to 8 bits: mean -0.5
    outside = (source[..., 0] < -1) | (source[..., 0] > 64) | (source[..., 1] < -1) | (source[..., 1] > 64)
    assert outside.any() and crop[outside].max() == 0  # black outside the picture


def _blobs(size, centres, sigma):
    """An RGB picture with a Gaussian spot (peak 255) at each (x, y) pixel-index centre."""
    y, x = np.mgrid[0 : size[1], 0 : size[0]].astype(float)
    value = np.zeros_like(x)
    for cx, cy in centres:
        value = np.maximum(value, np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2)))
    return Image.fromarray(np.round(value * 255).astype(np.uint8)).convert("RGB")


def _centroids(crop: Image.Image, near, radius: float):
    value = np.asarray(crop, dtype=float)[..., 0]
    y, x = np.mgrid[0 : value.shape[0], 0 : value.shape[1]].astype(float)
    found = []
    for cx, cy in near:
        weight = value * (((x - cx) ** 2 + (y - cy) ** 2) <= radius**2)
        weight = np.where(weight > 0.1 * weight.max(), weight, 0)
        found.append([(weight * x).sum() / weight.sum(), (weight * y).sum() / weight.sum()])
    return np.array(found)


@pytest.mark.parametrize(
    "size, shrink, antialias",
    [(112, 0.8, False), (112, 0.8, True), (224, 0.8, True), (96, 0.8, True), (112, 3.4, True), (112, 3.4, False)],
)
def test_marked_points_land_on_the_template_scaled_to_the_size(size, shrink, antialias):
    """Spots drawn at a rotated, scaled, shifted copy of the template come out at the template x
    size / 112 within 0.5 px; also when the face is shrunk 3.4x (the antialiased path reduces first)."""
    target = ARCFACE_TEMPLATE * (size / 112)
    face = _similarity(23.0, shrink, (137.3, 91.6))  # template -> input: turned, `shrink` x larger, shifted
    centres = _apply(face, ARCFACE_TEMPLATE)
    picture = _blobs((int(centres[:, 0].max()) + 150, int(centres[:, 1].max()) + 120), centres, sigma=1.6 * shrink)
    crop = aligned_crop(picture, centres, size, antialias=antialias)
    assert crop.size == (size, size) and crop.mode == "RGB"
    found = _centroids(crop, target, radius=4.5 * size / 112)
    assert np.abs(found - target).max() < 0.5, found - target


def test_antialiasing_smooths_a_large_face_without_moving_it():
    """A 1-pixel checkerboard shrunk 4.3x: direct bilinear sampling aliases it into a moire, the
    reduced picture averages it to grey; both keep the geometry (the spot test above)."""
    board = ((np.indices((600, 600)).sum(axis=0) % 2) * 255).astype(np.uint8)
    points = ARCFACE_TEMPLATE * 4.3 + 40.3
    aliased = np.asarray(aligned_crop(Image.fromarray(board), points, antialias=False), dtype=float)
    smooth = np.asarray(aligned_crop(Image.fromarray(board), points, antialias=True), dtype=float)
    assert aliased.std() > 40 and smooth[8:-8, 8:-8].std() < 10


def _face(names, points) -> FaceResult:
    return FaceResult(Box(0, 0, 100), 0.9, np.asarray(points, dtype=float), 0.5, tuple(names))


def test_five_points_come_from_results_mappings_and_rows():
    rng = np.random.default_rng(3)
    kaggle = rng.uniform(0, 100, (15, 2))
    face = _face(KAGGLE_POINTS, kaggle)
    expected = kaggle[[KAGGLE_POINTS.index(name) for name in ALIGN_POINTS]]
    np.testing.assert_array_equal(five_points(face), expected)
    np.testing.assert_array_equal(five_points(face.points), expected)
    np.testing.assert_array_equal(five_points(ImageResult("a.jpg", "ok", faces=[face])), expected)
    row = pd.Series({f"{n}_{a}": v for n, xy in zip(KAGGLE_POINTS, kaggle) for a, v in zip("xy", xy)})
    np.testing.assert_array_equal(five_points(row), expected)
    # only the 68 iBUG points: eye centres are the means of the eye contours
    ibug = rng.uniform(0, 100, (68, 2))
    from_68 = five_points(_face(IBUG_POINTS, ibug))
    np.testing.assert_allclose(from_68[0], ibug[36:42].mean(axis=0))
    np.testing.assert_allclose(from_68[1], ibug[42:48].mean(axis=0))
    np.testing.assert_allclose(from_68[2:], ibug[[30, 48, 54]])
    with pytest.raises(ValueError, match="2 faces"):
        five_points(ImageResult("a.jpg", "ok", faces=[face, face]))
    missing = kaggle.copy()
    missing[KAGGLE_POINTS.index("nose_tip")] = np.nan
    with pytest.raises(ValueError, match="no finite"):
        five_points(_face(KAGGLE_POINTS, missing))


def test_face_result_aligned_delegates_to_align_face():
    picture = _blobs((300, 260), ARCFACE_TEMPLATE * 1.5 + 20, sigma=2)
    face = _face(ALIGN_POINTS, ARCFACE_TEMPLATE * 1.5 + 20)
    by_method = face.aligned(picture.convert("L"), size=128)
    assert by_method.mode == "RGB" and by_method.size == (128, 128)
    np.testing.assert_array_equal(np.asarray(by_method), np.asarray(align_face(picture, face, 128)))


def test_real_faces_are_aligned_with_their_eyes_on_the_template_rows():
    """faces15 photos with their labels (original pixels): after alignment the labelled eye centres
    sit on the template's eye row and the crop shows the face (darker eyes than the cheeks below)."""
    folder = need_data("faces15")
    labels = pd.read_csv(folder / "keypoints.csv").iloc[::139].head(20)
    eye_rows, contrast = [], []
    for _, row in labels.iterrows():
        image = Image.open(folder / "images" / row["image"]).convert("RGB")
        points = five_points(row)
        crop = aligned_crop(image, points)
        matrix = similarity_transform(points, ARCFACE_TEMPLATE)
        moved = _apply(matrix, points)
        eye_rows.append(moved[:2, 1] - ARCFACE_TEMPLATE[:2, 1])
        grey = np.asarray(crop.convert("L"), dtype=float)
        eyes = np.mean([grey[50:54, 35:42].mean(), grey[50:54, 70:77].mean()])
        cheeks = np.mean([grey[62:70, 30:40].mean(), grey[62:70, 72:82].mean()])
        contrast.append(cheeks - eyes)
    # a similarity cannot fit every face's proportions: typically under 1 px, at worst ~5 px (of 112)
    assert np.median(np.abs(eye_rows)) < 1.5 and np.abs(eye_rows).max() < 6
    assert np.median(contrast) > 5 and np.mean(np.array(contrast) > 0) >= 0.8
