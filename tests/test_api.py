"""The Python API: fkpbatch.predict's inputs, Predictor.predict_paths/predict_images, typed results,
the option Enums, the result module's imports, annotated pictures and the contact sheet."""

from __future__ import annotations

import shutil
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import fkpbatch
from fkpbatch.annotate import ContactSheet, draw_faces, face_label
from fkpbatch.errors import UsageError
from fkpbatch.keypoints import IBUG_POINTS, KAGGLE_POINTS, coordinate_columns
from fkpbatch.options import Detect, Points, PredictOptions
from fkpbatch.results import FaceResult, ImageResult
from fkpbatch.transforms import Box

from conftest import REPO

COLUMNS = (
    ["image", "face", "status", "error", "width", "height", "score", "box_x", "box_y", "box_w", "box_h"]
    + coordinate_columns(KAGGLE_POINTS)
    + ["quality"]
)
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


@pytest.mark.parametrize("module", ["fkpbatch.results", "fkpbatch.options", "fkpbatch.writers"])
def test_result_and_option_modules_import_without_the_engine(module):
    """No import cycle: the result types and the writers load without the engine (or torch for the
    first two). The package's __init__ is bypassed so only the module's own imports count."""
    code = (
        "import sys, types, pathlib, importlib\n"
        f"package = types.ModuleType('fkpbatch'); package.__path__ = [{str(REPO / 'fkpbatch')!r}]\n"
        "sys.modules['fkpbatch'] = package\n"
        f"importlib.import_module({module!r})\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith(('fkpbatch.', 'torch')))))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "fkpbatch.engine" not in loaded
    if module != "fkpbatch.writers":
        assert "fkpbatch.writers" not in loaded and "torch" not in loaded


def _face(quality, x=10.0, names=KAGGLE_POINTS):
    return FaceResult(Box(x, 40.0, 40.0), 0.99, np.tile([x + 20.0, 60.0], (len(names), 1)), quality, names)


def test_results_serialise_as_the_writers_do():
    result = ImageResult("a.jpg", "ok", width=100, height=80, faces=[_face(0.4234), _face(None, x=50.0)])
    rows = result.to_rows()
    assert [len(r) for r in rows] == [len(COLUMNS)] * 2 and result.columns() == COLUMNS
    assert rows[0][:7] == ["a.jpg", 0, "ok", "", 100, 80, 0.99] and rows[1][1] == 1
    assert rows[0][COLUMNS.index("quality")] == 0.423 and rows[1][COLUMNS.index("quality")] == ""
    as_dict = result.to_dict()
    assert as_dict["faces"][0]["keypoints"]["nose_tip"] == [30.0, 60.0] and as_dict["faces"][1]["quality"] == ""
    empty = ImageResult("b.png", "no_face", width=5, height=5)
    assert len(empty.to_rows("68")) == 1 and empty.to_rows()[0][2] == "no_face"


def test_annotation_labels_each_face_with_its_index_and_quality():
    assert face_label(0, _face(0.4234)) == "0 q0.42" and face_label(3, _face(None)) == "3"
    image = Image.new("RGB", (200, 120), (0, 0, 0))
    draw_faces(image, [_face(0.42, x=20.0), _face(0.01, x=120.0)], KAGGLE_POINTS)
    pixels = np.asarray(image)
    # each label is a filled tag just above its box: blue for a good face, red for a doubtful one
    good_tag, doubtful_tag = pixels[28:39, 21:28].reshape(-1, 3), pixels[28:39, 121:128].reshape(-1, 3)
    assert (good_tag == (0, 160, 255)).all(axis=1).any() and not (good_tag == (220, 30, 30)).all(axis=1).any()
    assert (doubtful_tag == (220, 30, 30)).all(axis=1).any()
    assert (pixels[24:40, 20:50] > 200).all(axis=2).any()  # light text on the tag
    assert (pixels[:40] == 0).all(axis=2).mean() > 0.5  # the tag is small: most of the picture is untouched


def test_contact_sheet_lists_faces_lowest_quality_first_and_keeps_the_worst(tmp_path):
    sheet = ContactSheet(limit=3)
    picture = Image.new("RGB", (200, 80), (90, 90, 90))
    for name, qualities in [("b.jpg", [0.41, 0.02]), ("a.jpg", [None, 0.30]), ("c.jpg", [0.44, 0.001])]:
        faces = [_face(q, x=10.0 + 50 * i) for i, q in enumerate(qualities)]
        sheet.add(ImageResult(name, "ok", width=200, height=80, faces=faces), picture)
    assert sheet.faces_seen == 6
    assert [(f.image, f.face, f.quality) for f in sheet.faces()] == [
        ("c.jpg", 1, 0.001),
        ("b.jpg", 1, 0.02),
        ("a.jpg", 1, 0.30),
    ]
    sheet.write(tmp_path / "index.html")
    page = (tmp_path / "index.html").read_text()
    assert page.count("<figure") == 3 and page.index("c.jpg") < page.index("b.jpg") < page.index("a.jpg")
    assert "6 faces (the 3 lowest-quality faces shown)" in page
    everything = ContactSheet()
    for name, quality in [("x.jpg", None), ("y.jpg", 0.5), ("z.jpg", 0.1)]:
        everything.add(ImageResult(name, "ok", faces=[_face(quality)]), picture)
    assert [f.image for f in everything.faces()] == ["z.jpg", "y.jpg", "x.jpg"]  # no quality: last


def test_annotate_writes_the_contact_sheet_beside_the_pictures(tmp_path):
    from typer.testing import CliRunner

    from fkpbatch.cli import app

    out = tmp_path / "annotated"
    result = CliRunner().invoke(
        app,
        [
            "predict",
            str(REPO / "examples"),
            "--annotate",
            str(out),
            "-o",
            str(tmp_path / "k.csv"),
            "--workers",
            "0",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "k.csv")
    page = (out / "index.html").read_text()
    assert page.count("<figure") == len(table)
    shown = [float(q) for q in __import__("re").findall(r"<b>q ([0-9.]+)</b>", page)]
    assert shown == sorted(round(q, 3) for q in table["quality"])
    assert 'href="./examples/couple.jpg"' in page and (out / "examples" / "couple.jpg").exists()


class _Links(HTMLParser):
    """The contact sheet's links (href, text) and image alt texts, as a browser parses them."""

    def __init__(self):
        super().__init__()
        self.links, self.alts, self._href = [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a":
            self._href = attrs["href"]
            self.links.append([self._href, ""])
        elif tag == "img":
            self.alts.append(attrs["alt"])

    def handle_endtag(self, tag):
        if tag == "a":
            self._href = None

    def handle_data(self, data):
        if self._href is not None:
            self.links[-1][1] += data


def test_contact_sheet_links_reach_their_files_whatever_the_names(tmp_path, tiny_weights):
    from urllib.parse import unquote, urlsplit

    from typer.testing import CliRunner

    from fkpbatch.cli import app

    folder = tmp_path / "in"
    folder.mkdir()
    names = ["javascript:alert(1).jpg", "a#b.jpg", "c?d.jpg", "e%20f.jpg", "<i>.jpg", 'q"uote.jpg', "r&amp;s.jpg"]
    for index, name in enumerate(names):
        Image.new("RGB", (48, 48), (40 * index, 90, 90)).save(folder / name, format="JPEG")
    out = tmp_path / "annotated"
    options = ["-w", str(tiny_weights), "--detect", "never", "--workers", "0", "-q", "-o", str(tmp_path / "k.csv")]
    result = CliRunner().invoke(app, ["predict", str(folder), "--annotate", str(out), *options])
    assert result.exit_code == 0, result.output
    page = _Links()
    page.feed((out / "index.html").read_text())
    assert sorted(text for _, text in page.links) == sorted(f"{folder}/{name}" for name in names)
    assert sorted(alt.rsplit(" face ", 1)[0] for alt in page.alts) == sorted(f"{folder}/{name}" for name in names)
    for href, text in page.links:
        assert href.startswith("./") and not urlsplit(href).scheme and not urlsplit(href).fragment, href
        assert not urlsplit(href).query, href
        target = out / unquote(href)
        assert target.is_file() and target.name == text.rsplit("/", 1)[1], (href, text)
