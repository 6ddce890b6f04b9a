import numpy as np
import pytest
import torch
from PIL import Image

from fkpbatch.augment import hflip_with_swap
from fkpbatch.keypoints import KAGGLE_POINTS, flip_permutation, mirror_name
from fkpbatch.transforms import Box, Framing, box_from_points, crop_face, from_unit, to_unit, whole_image_box


def test_box_from_points_exact_numbers():
    # eyes 40 px apart at y=50, mouth 30 px below their midpoint
    points = np.array([[120.0, 50.0], [80.0, 50.0], [100.0, 65.0], [115.0, 80.0], [85.0, 80.0]])
    box = box_from_points(points, Framing(scale=1.0, shift=0.5))
    # size = 1.0 * (40 + 30) = 70; centre = (100, 50 + 0.5 * 30) + 0.5 = (100.5, 65.5)
    assert box == Box(x=65.5, y=30.5, size=70.0)


def test_default_framing_puts_the_mean_kaggle_face_where_kaggle_has_it():
    # keypoints_only.csv means: eyes (66.4, 37.7) / (30.3, 37.9), nose (48.4, 62.7), mouth corners (63.3, 75.9) / (32.9, 76.2)
    points = np.array([[66.36, 37.65], [30.31, 37.98], [48.37, 62.72], [63.29, 75.97], [32.90, 76.18]])
    box = box_from_points(points, Framing())
    assert box.size == pytest.approx(96, abs=0.5)
    assert box.x == pytest.approx(0, abs=1.0)  # the mean face itself sits 0.3 px right of centre
    assert box.y == pytest.approx(0, abs=1.0)


def test_unit_mapping_exact_numbers_and_round_trip():
    box = Box(x=10.0, y=20.0, size=50.0)
    # pixel 34.5 has its centre at continuous 35.0, i.e. half-way across the box
    assert to_unit(np.array([[34.5, 44.5]]), box) == pytest.approx(np.array([[0.5, 0.5]]))
    assert from_unit(np.array([[0.0, 1.0]]), box) == pytest.approx(np.array([[9.5, 69.5]]))
    points = np.array([[12.25, 60.0], [55.0, 21.5]])
    assert from_unit(to_unit(points, box), box) == pytest.approx(points)


def test_a_bright_pixel_lands_where_the_mapping_says_after_crop_and_resize():
    image = Image.new("L", (200, 150), 0)
    image.putpixel((131, 77), 255)
    box = Box(x=101.0, y=47.0, size=64.0)  # 64 -> 32: scale factor 2
    crop = np.asarray(crop_face(image, box, 32), dtype=np.float64)
    ys, xs = np.mgrid[0:32, 0:32]
    centroid = np.array([(xs * crop).sum(), (ys * crop).sum()]) / crop.sum()
    expected = to_unit(np.array([131.0, 77.0]), box) * 32 - 0.5  # unit -> crop pixel index
    assert centroid == pytest.approx(expected, abs=0.05)


def test_crop_outside_the_image_is_padded_black():
    image = Image.new("L", (20, 20), 200)
    crop = np.asarray(crop_face(image, Box(-20.0, -20.0, 40.0), 40))
    assert crop[:19, :19].max() == 0 and crop[21:, 21:].min() == 200


def test_whole_image_box_is_the_centred_square():
    assert whole_image_box(200, 100) == Box(0.0, -50.0, 200.0)


def test_flip_swap_is_its_own_inverse_and_moves_left_eye_to_the_right_eye():
    permutation = flip_permutation(KAGGLE_POINTS)
    points = torch.rand(len(KAGGLE_POINTS), 2)
    image = torch.arange(16, dtype=torch.uint8).view(1, 4, 4)
    flipped_image, flipped = hflip_with_swap(image, points, permutation)
    left, right = KAGGLE_POINTS.index("left_eye_center"), KAGGLE_POINTS.index("right_eye_center")
    # the new left eye is the old right eye, mirrored
    assert flipped[left].tolist() == pytest.approx([1 - points[right, 0].item(), points[right, 1].item()])
    again_image, again = hflip_with_swap(flipped_image, flipped, permutation)
    assert torch.equal(again_image, image)
    assert torch.allclose(again, points)


def test_mirror_names_pair_left_right_and_ibug_points():
    assert mirror_name("mouth_left_corner") == "mouth_right_corner"
    assert mirror_name("nose_tip") == "nose_tip"
    assert mirror_name("p36") == "p45" and mirror_name("p8") == "p8" and mirror_name("p48") == "p54"
