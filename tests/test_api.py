"""The Python API: fkpbatch.predict's inputs and its table (the CLI's CSV), Predictor.predict_paths
and predict_images, typed results, the option Enums checked in the library, and a forked worker
never inheriting a half-used onnxruntime session."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import fkpbatch
from fkpbatch.errors import UsageError
from fkpbatch.keypoints import IBUG_POINTS, coordinate_columns
from fkpbatch.options import Detect, Points, PredictOptions

from conftest import COLUMNS, REPO, grey_pngs, invoke

COUPLE = REPO / "examples" / "couple.jpg"
FAST = dict(workers=0)


@pytest.fixture(scope="module")
def predictor():
    return fkpbatch.Predictor.load()


def test_predict_paths_takes_str_and_path_alike(predictor):
    options = PredictOptions(**FAST)
    by_str, by_path = (list(predictor.predict_paths([p], options)) for p in (str(COUPLE), COUPLE))
    assert [r.status for r in by_str] == [r.status for r in by_path] == ["ok"]
    assert by_str[0].image == by_path[0].image == str(COUPLE)
    assert len(by_str[0].faces) == 2
    np.testing.assert_array_equal(by_str[0].faces[1].keypoints, by_path[0].faces[1].keypoints)


def test_predict_paths_refuses_a_missing_path_before_running(predictor, tmp_path):
    with pytest.raises(UsageError, match="no such file or folder"):
        list(predictor.predict_paths([COUPLE, tmp_path / "gone.jpg"]))


def test_pil_and_numpy_inputs_give_the_keypoints_of_the_file(predictor):
    options = PredictOptions(**FAST)
    from_file = next(predictor.predict_paths([COUPLE], options))
    pil = Image.open(COUPLE)
    in_memory = list(predictor.predict_images([pil, np.asarray(pil.convert("RGB"))], options))
    assert [r.image for r in in_memory] == ["image_0", "image_1"]
    for result in in_memory:
        assert result.source is None and (result.width, result.height) == (from_file.width, from_file.height)
        assert len(result.faces) == len(from_file.faces)
        for face, reference in zip(result.faces, from_file.faces):
            np.testing.assert_allclose(face.keypoints, reference.keypoints, atol=1e-4)
            assert face.quality == pytest.approx(reference.quality, abs=1e-5)


def test_bad_arrays_are_usage_errors(predictor):
    with pytest.raises(UsageError, match="uint8"):
        list(predictor.predict_images([np.zeros((8, 8, 3), dtype=np.float32)]))
    with pytest.raises(UsageError, match="names for"):
        list(predictor.predict_images([np.zeros((8, 8, 3), dtype=np.uint8)], names=["a", "b"]))


def test_keypoints_by_name_match_the_array(predictor):
    face = next(predictor.predict_paths([COUPLE], PredictOptions(**FAST))).faces[0]
    assert face.names == predictor.keypoints
    index = face.names.index("nose_tip")
    assert face.points["nose_tip"] == (face.keypoints[index, 0], face.keypoints[index, 1])
    x, y, size, _ = face.box.as_list()
    assert x < face.points["nose_tip"][0] < x + size and y < face.points["nose_tip"][1] < y + size
    # the subject's left eye is on the image's right
    assert face.points["left_eye_center"][0] > face.points["right_eye_center"][0]
    assert set(face.to_dict()["keypoints"]) == set(predictor.keypoints)


def test_predict_returns_exactly_the_csv_columns_for_every_input_kind(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    shutil.copy(COUPLE, folder / "couple.jpg")
    shutil.copy(REPO / "examples" / "Celso_Lafer_12.jpg", folder / "celso.jpg")
    by_folder = fkpbatch.predict(folder, **FAST)
    by_str_list = fkpbatch.predict([str(folder / "couple.jpg"), str(folder / "celso.jpg")], **FAST)
    by_image = fkpbatch.predict(Image.open(COUPLE), **FAST)
    by_arrays = fkpbatch.predict([np.asarray(Image.open(COUPLE))], **FAST)
    for frame in (by_folder, by_str_list, by_image, by_arrays):
        assert list(frame.columns) == COLUMNS
    assert sorted(by_folder["image"]) == sorted(by_str_list["image"])
    assert by_image["image"].tolist() == by_arrays["image"].tolist() == ["image_0", "image_0"]
    couple = by_folder[by_folder["image"].str.endswith("couple.jpg")]
    np.testing.assert_allclose(by_image["nose_tip_x"], couple["nose_tip_x"], atol=0.011)
    assert by_image["face"].tolist() == [0, 1]


def test_predict_68_points_and_model_names(tmp_path):
    frame = fkpbatch.predict(COUPLE, points="68", model="fast", **FAST)
    assert list(frame.columns) == COLUMNS + coordinate_columns(IBUG_POINTS)
    with pytest.raises(UsageError, match="model must be one of fast, accurate"):
        fkpbatch.predict(COUPLE, model="huge")
    with pytest.raises(UsageError, match="not both"):
        fkpbatch.predict(COUPLE, model="fast", weights=REPO / "weights" / "fkpnet68.pt")
    with pytest.raises(UsageError, match="not both"):
        fkpbatch.predict([COUPLE, np.zeros((8, 8, 3), dtype=np.uint8)])


def test_options_are_checked_in_the_library_with_the_cli_message():
    assert PredictOptions(detect="never").detect is Detect.never
    with pytest.raises(UsageError, match="--detect must be one of auto, always, never, not 'sometimes'"):
        PredictOptions(detect="sometimes")
    with pytest.raises(UsageError, match="--faces must be one of all, largest"):
        PredictOptions(faces="most")
    assert Points("68") == "68" and {"68": 1}[Points.ibug68] == 1 and f"{Points.ibug68}" == "68"


def test_python_api_returns_the_csv_as_a_dataframe(mixed_folder, tiny_weights):
    frame = fkpbatch.predict(mixed_folder, weights=tiny_weights, workers=0)
    cli = pd.read_csv(io.StringIO(invoke("predict", mixed_folder, "-w", tiny_weights, "--workers", "0", "-q").stdout))
    assert list(frame.columns) == COLUMNS
    pd.testing.assert_frame_equal(frame, cli)


class _Garbage:
    """Unreachable once made (a reference cycle): only the garbage collector destroys it."""

    destroyed_in: list[int] = []

    def __init__(self):
        self.cycle = self

    def __del__(self):
        _Garbage.destroyed_in.append(os.getpid())


def test_garbage_is_collected_before_workers_are_forked(tmp_path, tiny_weights):
    """An earlier predictor's onnxruntime session, unreachable but not yet collected, hung a forked
    worker that collected it (its thread pool's locks copied mid-use): predict collects first."""
    import gc

    from fkpbatch.engine import PredictOptions, Predictor

    folder = grey_pngs(tmp_path / "in", 2)
    predictor = Predictor.load(tiny_weights, "cpu")
    _Garbage.destroyed_in.clear()
    gc.disable()  # only an explicit collection can destroy it now
    try:
        _Garbage()
        results = list(predictor.predict_paths([folder], PredictOptions(workers=2, detect="never")))
    finally:
        gc.enable()
    assert len(results) == 2 and _Garbage.destroyed_in == [os.getpid()]
