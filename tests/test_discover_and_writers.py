import io
import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fkpbatch.cli import app
from fkpbatch.discover import discover
from fkpbatch.engine import FaceResult, ImageResult
from fkpbatch.errors import UsageError
from fkpbatch.keypoints import IBUG_POINTS, KAGGLE_POINTS
from fkpbatch.resume import InputIdentities, open_existing, write_sidecar
from fkpbatch.shard import merge_outputs, select_shard, shard_of
from fkpbatch.transforms import Box
from fkpbatch.writers import ResultWriter, columns_for, infer_format

from conftest import REPO

runner = CliRunner()


@pytest.fixture()
def tree(tmp_path):
    for name in ["b.jpg", "a.jpg", "sub/c.jpg", "sub/deeper/d.jpg", ".hidden/e.jpg", "sub/.f.jpg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub" / "loop").symlink_to(tmp_path, target_is_directory=True)
    return tmp_path


def test_folders_are_walked_sorted_skipping_hidden_and_symlink_loops(tree):
    found = discover([tree])
    assert [f.name for f in found.files] == [f"{tree}/{n}" for n in ["a.jpg", "b.jpg", "sub/c.jpg", "sub/deeper/d.jpg"]]
    assert found.hidden == 2
    assert found.files[2].relative == f"{tree.name}/sub/c.jpg"


def test_no_recursive_stays_in_the_folder(tree):
    assert [f.name for f in discover([tree], recursive=False).files] == [f"{tree}/a.jpg", f"{tree}/b.jpg"]


def test_from_list_reads_stdin(tree, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{tree}/b.jpg\n\n# comment\n{tree}/sub/c.jpg\n"))
    assert [f.name for f in discover([], from_list="-").files] == [f"{tree}/b.jpg", f"{tree}/sub/c.jpg"]


def test_missing_input_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="nothing.jpg: no such file or folder"):
        discover([tmp_path / "nothing.jpg"])


def _result(name, faces=1):
    points = np.arange(83 * 2, dtype=float).reshape(83, 2)
    face = FaceResult(Box(1.0, 2.0, 30.0), 0.98765, points, 0.5)
    return ImageResult(name, "ok", "", 100, 80, [face] * faces)


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


def test_csv_rows_carry_the_right_coordinates(tmp_path):
    out = tmp_path / "o.csv"
    with ResultWriter(str(out), "csv", KAGGLE_POINTS + IBUG_POINTS) as writer:
        writer.write([_result("x.jpg", faces=2), ImageResult("y.jpg", "error", "cannot decode: boom")])
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


def test_json_is_only_in_place_when_complete(tmp_path):
    out = tmp_path / "o.json"
    writer = ResultWriter(str(out), "json", KAGGLE_POINTS)
    writer.write([_result("x.jpg")])
    assert not out.exists()
    writer.close()
    assert json.loads(out.read_text())[0]["faces"][0]["keypoints"]["left_eye_center"] == [0.0, 1.0]


def test_resume_reads_jsonl_and_cuts_torn_lines(tmp_path):
    out = tmp_path / "o.jsonl"
    with ResultWriter(str(out), "jsonl", KAGGLE_POINTS) as writer:
        writer.write([_result("x.jpg"), _result("y.jpg")])
    write_sidecar(out, {"format": "jsonl"}, columns_for(KAGGLE_POINTS), None)
    out.write_bytes(out.read_bytes() + b'{"image": "z.jp')
    existing = open_existing(
        out, "jsonl", {"format": "jsonl"}, columns_for(KAGGLE_POINTS), InputIdentities([]), safe=True
    )
    assert existing.done == {"x.jpg", "y.jpg"} and existing.keep == out.read_bytes().rindex(b"\n") + 1
    with ResultWriter(str(out), "jsonl", KAGGLE_POINTS, resume_fd=existing.fd, keep=existing.keep) as writer:
        writer.write([_result("z.jpg")])
    assert [json.loads(line)["image"] for line in out.read_bytes().split(b"\n")[:-1]] == ["x.jpg", "y.jpg", "z.jpg"]


def test_shards_partition_the_inputs_stably(tree):
    files = discover([tree]).files
    parts = [select_shard(files, k, 3) for k in range(3)]
    assert sorted(f.name for part in parts for f in part) == sorted(f.name for f in files)
    assert shard_of("some/photo.jpg", 3) == shard_of("some/photo.jpg", 3)


def test_three_shards_merged_equal_the_single_run(tmp_path, tiny_weights):
    folder = tmp_path / "faces"
    folder.mkdir()
    for i, name in enumerate(sorted((REPO / "examples").glob("*.jpg")) * 3):
        (folder / f"{i:02d}_{name.name}").write_bytes(name.read_bytes())
    base = ["predict", str(folder), "-w", str(tiny_weights), "--workers", "0", "-q"]
    single = runner.invoke(app, base).stdout
    outputs = []
    for k in range(3):
        out = tmp_path / f"shard{k}.csv"
        assert runner.invoke(app, base + ["--shard", f"{k}/3", "-o", str(out)]).exit_code == 0
        outputs.append(str(out))
    merged = tmp_path / "all.csv"
    result = runner.invoke(app, ["merge", *outputs, "-o", str(merged), "--check", str(folder)])
    assert result.exit_code == 0, result.output
    assert merged.read_text() == single


def test_merge_reports_incomplete_shards_and_refuses_doubles(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    with ResultWriter(str(a), "csv", KAGGLE_POINTS) as writer:
        writer.write([_result("x.jpg")])
    with ResultWriter(str(b), "csv", KAGGLE_POINTS) as writer:
        writer.write([_result("x.jpg")])
    result = runner.invoke(app, ["merge", str(a), str(b), "-o", str(tmp_path / "m.csv")])
    assert result.exit_code == 2 and "appear more than once" in result.stderr
    report = merge_outputs([a], tmp_path / "m.csv", expected=["x.jpg", "y.jpg"], shards=1)
    assert report["missing"] == ["y.jpg"] and report["incomplete_shards"] == {0: 1}
