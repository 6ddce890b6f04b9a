"""Writing the results (fkpbatch.writers, fkpbatch.results, fkpbatch.fileio): the row layout, the
format from the extension, JSON in place only when complete, any file name one CSV row or JSON
record, spreadsheet-safe cells, and a FIFO never replaced."""

import csv
import io
import json
import os
import stat

import pandas as pd
import pytest

from fkpbatch import writers
from fkpbatch.engine import ImageResult
from fkpbatch.errors import OutputError, UsageError
from fkpbatch.fileio import atomic_write
from fkpbatch.keypoints import IBUG_POINTS, KAGGLE_POINTS
from fkpbatch.results import columns_for
from fkpbatch.writers import ResultWriter, infer_format

from conftest import COLUMNS, FAST, face_result, gradient_image, image_result, invoke


def test_columns_order_and_68_point_extension():
    names = KAGGLE_POINTS + IBUG_POINTS
    assert columns_for(names)[:13] == [
        "image",
        "face",
        "status",
        "error",
        "width",
        "height",
        "score",
        "box_x",
        "box_y",
        "box_w",
        "box_h",
        "left_eye_center_x",
        "left_eye_center_y",
    ]
    assert columns_for(names)[-3:] == ["mouth_center_bottom_lip_x", "mouth_center_bottom_lip_y", "quality"]
    assert columns_for(names, "68")[-2:] == ["p67_x", "p67_y"] and len(columns_for(names, "68")) == 11 + 30 + 1 + 136


def test_results_serialise_as_the_writers_do():
    result = ImageResult("a.jpg", "ok", width=100, height=80, faces=[face_result(0.4234), face_result(None, x=50.0)])
    rows = result.to_rows()
    assert [len(r) for r in rows] == [len(COLUMNS)] * 2 and result.columns() == COLUMNS
    assert rows[0][:7] == ["a.jpg", 0, "ok", "", 100, 80, 0.99] and rows[1][1] == 1
    assert rows[0][COLUMNS.index("quality")] == 0.423 and rows[1][COLUMNS.index("quality")] == ""
    as_dict = result.to_dict()
    assert as_dict["faces"][0]["keypoints"]["nose_tip"] == [30.0, 60.0] and as_dict["faces"][1]["quality"] == ""
    empty = ImageResult("b.png", "no_face", width=5, height=5)
    assert len(empty.to_rows("68")) == 1 and empty.to_rows()[0][2] == "no_face"


def test_csv_rows_carry_the_right_coordinates(tmp_path):
    out = tmp_path / "o.csv"
    with ResultWriter(str(out), "csv", KAGGLE_POINTS + IBUG_POINTS) as writer:
        writer.write([image_result("x.jpg", faces=2), ImageResult("y.jpg", "error", "cannot decode: boom")])
    table = pd.read_csv(out)
    assert table["face"].tolist() == [0, 1, 0]
    assert table.loc[0, ["box_x", "box_y", "box_w", "box_h", "score"]].tolist() == [1.0, 2.0, 30.0, 30.0, 0.9877]
    assert table.loc[0, "nose_tip_x"] == 20.0 and table.loc[0, "nose_tip_y"] == 21.0  # keypoint 10
    assert table.loc[2, "error"] == "cannot decode: boom" and pd.isna(table.loc[2, "left_eye_center_x"])


def test_format_follows_the_extension_unless_given():
    assert infer_format("-", None) == "csv" and infer_format("a.jsonl", None) == "jsonl"
    assert infer_format("a.JSON", None) == "json" and infer_format("a.csv", "json") == "json"
    assert infer_format("a.txt", "csv") == "csv"
    for name in ("a.txt", "out.xlsx", "out"):
        with pytest.raises(UsageError, match="unknown output extension"):
            infer_format(name, None)


def test_output_extension_is_checked_unless_format_is_given(tmp_path, tiny_weights, two_images):
    result = invoke("predict", *two_images, "-w", tiny_weights, "-o", tmp_path / "out.xlsx", *FAST, "-q")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1 and "--format" in result.stderr
    assert not (tmp_path / "out.xlsx").exists()
    result = invoke(
        "predict", *two_images, "-w", tiny_weights, "-o", tmp_path / "out.txt", "--format", "csv", *FAST, "-q"
    )
    assert result.exit_code == 0


def test_json_is_only_in_place_when_complete(tmp_path):
    out = tmp_path / "o.json"
    writer = ResultWriter(str(out), "json", KAGGLE_POINTS)
    writer.write([image_result("x.jpg")])
    assert not out.exists()
    writer.close()
    assert json.loads(out.read_text())[0]["faces"][0]["keypoints"]["left_eye_center"] == [0.0, 1.0]


def test_a_fifo_that_is_not_the_named_target_is_never_replaced(tmp_path):
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="is a FIFO"):
        with atomic_write(fifo, overwrite=True) as handle:  # e.g. an annotated copy, a sidecar
            handle.write(b"data")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


ODD = [
    "cr\rname.png",
    "lf\nname.png",
    "tab\tname.png",
    'quote"name.png',
    "comma,name.png",
    "=1+1.png",
    "+x.png",
    "-x.png",
    "@x.png",
    "\tlead.png",
    "\rlead.png",
    "'quoted.png",
    "line\u2028sep.png",
    "nel\x85.png",
]


@pytest.fixture()
def odd(tmp_path, monkeypatch):
    """Odd names, given relative (``.``) so that they start the CSV cell."""
    folder = tmp_path / "odd"
    folder.mkdir()
    for name in ODD:
        gradient_image((12, 12)).save(folder / name, format="PNG")
    gradient_image((12, 12)).save(os.fsencode(folder) + b"/latin1-\xe9.png", format="PNG")
    monkeypatch.chdir(folder)
    return ".", sorted(ODD + ["latin1-\\xe9.png"])


def _csv_images(out):
    return [r["image"] for r in csv.DictReader(io.StringIO(out.read_bytes().decode(), newline=""))]


def test_any_name_is_one_csv_row_through_csv_pandas_resume_and_merge(tmp_path, tiny_weights, odd):
    folder, names = odd
    out = tmp_path / "out.csv"
    predict = ["predict", folder, "-w", tiny_weights, *FAST, "-q"]
    assert invoke(*predict, "-o", out).exit_code == 0
    cells = _csv_images(out)
    assert len(cells) == len(names) and sorted(writers.unprotect(cell) for cell in cells) == names
    table = pd.read_csv(out)
    assert len(table) == len(names) and sorted(table["image"].map(writers.unprotect)) == names
    whole = out.read_bytes()
    out.write_bytes(whole[: len(whole) * 2 // 3])  # killed two thirds of the way through
    assert invoke(*predict, "-o", out, "--resume").exit_code == 0
    assert sorted(_csv_images(out)) == sorted(cells)
    shards = [tmp_path / f"s{k}.csv" for k in range(2)]
    for k, shard in enumerate(shards):
        assert invoke(*predict, "-o", shard, "--shard", f"{k}/2").exit_code == 0
    result = invoke("merge", *shards, "-o", tmp_path / "m.csv", "--check", folder)
    assert result.exit_code == 0, result.output
    merged = (tmp_path / "m.csv").read_bytes()
    stdout = invoke(*predict).stdout_bytes
    assert merged == stdout


def test_any_name_is_one_jsonl_record_and_resumes(tmp_path, tiny_weights, odd):
    folder, names = odd
    out = tmp_path / "out.jsonl"
    predict = ["predict", folder, "-w", tiny_weights, *FAST, "-q", "-o", out]
    assert invoke(*predict).exit_code == 0
    whole = out.read_bytes()
    assert sorted(json.loads(line)["image"] for line in whole.split(b"\n")[:-1]) == names
    out.write_bytes(whole[: len(whole) // 2])
    assert invoke(*predict, "--resume").exit_code == 0
    assert sorted(json.loads(line)["image"] for line in out.read_bytes().split(b"\n")[:-1]) == names
    assert len(pd.read_json(out, lines=True)) == len(names)


def test_csv_cells_that_would_be_formulas_are_prefixed_and_numbers_stay_numbers(tmp_path, tiny_weights, odd):
    folder, names = odd
    out = tmp_path / "out.csv"
    assert invoke("predict", folder, "-w", tiny_weights, "-o", out, *FAST, "-q").exit_code == 0
    cells = _csv_images(out)
    for cell in cells:
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert {"'=1+1.png", "'+x.png", "'-x.png", "'@x.png", "'\tlead.png", "'\rlead.png", "''quoted.png"} <= set(cells)
    raw = tmp_path / "raw.csv"
    assert invoke("predict", folder, "-w", tiny_weights, "-o", raw, "--raw-names", *FAST, "-q").exit_code == 0
    assert sorted(pd.read_csv(raw)["image"]) == names
    wide = tmp_path / "wide.csv"  # not square: the whole-image box starts above the image, a negative number
    gradient_image((60, 40)).save("-wide.png")
    assert invoke("predict", "-w", tiny_weights, "-o", wide, *FAST, "--", "-wide.png").exit_code == 0
    assert wide.read_text().splitlines()[1].startswith("'-wide.png,0,ok,,60,40,,0.0,-10.0,60.0,60.0,")
    assert pd.read_csv(wide)["box_y"].tolist() == [-10.0]
