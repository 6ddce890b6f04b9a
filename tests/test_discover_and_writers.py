import io
import json
import os

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fkpbatch.annotate import annotation_path
from fkpbatch.cli import app
from fkpbatch.discover import discover, display_name, real_name
from fkpbatch.engine import FaceResult, ImageResult
from fkpbatch.errors import OutputError, UsageError
from fkpbatch.keypoints import IBUG_POINTS, KAGGLE_POINTS
from fkpbatch.results import columns_for
from fkpbatch.resume import InputIdentities, open_existing, write_sidecar
from fkpbatch.shard import merge_outputs, select_shard, shard_of
from fkpbatch.transforms import Box
from fkpbatch.writers import ResultWriter, infer_format

from conftest import REPO, gradient_image

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
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{tree}/b.jpg\n\n{tree}/sub/c.jpg\n"))
    assert [f.name for f in discover([], from_list="-").files] == [f"{tree}/b.jpg", f"{tree}/sub/c.jpg"]


class _BytesStdin:
    """sys.stdin as a pipe gives it: text on top of the raw bytes in ``buffer``."""

    def __init__(self, data: bytes):
        self.buffer = io.BytesIO(data)


def test_a_list_names_files_exactly_whatever_their_characters(tmp_path, monkeypatch):
    names = ["x.jpg", "x.jpg ", " x.jpg", "#2.jpg", "a\x85b.jpg", "c\u2028d.jpg", "e\x0cf.jpg", "g\\h.jpg"]
    raw = [os.fsencode(n) for n in names] + [b"n\xff.jpg"]
    for name in raw:
        (tmp_path / os.fsdecode(name)).write_bytes(b"x")
    expected = sorted(display_name(str(tmp_path / os.fsdecode(n))) for n in raw)
    lines = b"".join(bytes(tmp_path) + b"/" + n + b"\n" for n in raw)
    listing = tmp_path / "list.txt"
    for content in (lines, lines.replace(b"\n", b"\r\n"), lines.replace(b"\n", b"\0")):
        listing.write_bytes(content)  # LF, CRLF and NUL (find -print0) separated; one name is not UTF-8
        assert [f.name for f in discover([], from_list=str(listing)).files] == expected
        monkeypatch.setattr("sys.stdin", _BytesStdin(content))
        assert [f.name for f in discover([], from_list="-").files] == expected
    listing.write_bytes(lines + bytes(tmp_path) + b"/x.jpg  \n")  # a name that is not there: refused, named
    with pytest.raises(UsageError, match=r"--from-list .*list.txt: '.*/x.jpg  ': no such file or folder"):
        discover([], from_list=str(listing))


def test_from_list_cli_predicts_every_listed_name_and_nul_lists_from_stdin(tmp_path, tiny_weights):
    names = ["x.jpg", "x.jpg ", "#2.jpg"]
    for name in names:
        gradient_image().save(tmp_path / name, format="JPEG")
    base = ["predict", "-w", str(tiny_weights), "--workers", "0", "--detect", "never", "-q", "--from-list"]
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{tmp_path / n}\n" for n in names))
    result = runner.invoke(app, [*base, str(listing)])
    assert result.exit_code == 0, result.output
    assert sorted(pd.read_csv(io.StringIO(result.stdout))["image"]) == sorted(str(tmp_path / n) for n in names)
    nul = "".join(f"{tmp_path / n}\0" for n in names)
    result = runner.invoke(app, [*base, "-"], input=nul)
    assert result.exit_code == 0, result.output
    assert sorted(pd.read_csv(io.StringIO(result.stdout))["image"]) == sorted(str(tmp_path / n) for n in names)


def test_names_are_unambiguous_and_reversible(tmp_path):
    byte_name, literal_name = b"a\xff.jpg", b"a\\xff.jpg"  # the byte 0xFF, and backslash x f f
    for name in (byte_name, literal_name, b"b\\c.jpg"):
        (tmp_path / os.fsdecode(name)).write_bytes(b"x")
    found = discover([tmp_path]).files
    names = [f.name for f in found]
    assert names == [f"{tmp_path}/a\\\\xff.jpg", f"{tmp_path}/a\\xff.jpg", f"{tmp_path}/b\\\\c.jpg"]
    assert len(set(names)) == 3  # two files never share a name, so none is dropped as a double
    for item in found:
        assert real_name(item.name) == str(item.path) and os.path.exists(real_name(item.name))
    targets = {annotation_path(f.relative, tmp_path / "annotated") for f in found}
    assert {t.name for t in targets} == {os.fsdecode(n) for n in (byte_name, literal_name, b"b\\c.jpg")}


def test_resume_and_merge_match_escaped_names(tmp_path, tiny_weights):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in (b"a\xff.jpg", b"a\\xff.jpg", b"b\\c.jpg"):
        gradient_image().save(folder / os.fsdecode(name), format="JPEG")
    base = ["predict", str(folder), "-w", str(tiny_weights), "--workers", "0", "--detect", "never", "-q"]
    outputs = []
    for k in range(2):
        out = tmp_path / f"shard{k}.csv"
        assert runner.invoke(app, [*base, "--shard", f"{k}/2", "-o", str(out)]).exit_code == 0
        resumed = runner.invoke(app, [*base, "--shard", f"{k}/2", "-o", str(out), "--resume"])
        assert resumed.exit_code == 0, resumed.output  # nothing redone, nothing doubled
        outputs.append(str(out))
    merged = tmp_path / "all.csv"
    result = runner.invoke(app, ["merge", *outputs, "-o", str(merged), "--check", str(folder)])
    assert result.exit_code == 0, result.output
    assert sorted(pd.read_csv(merged)["image"]) == sorted(
        f"{folder}/{n}" for n in ("a\\\\xff.jpg", "a\\xff.jpg", "b\\\\c.jpg")
    )


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


def test_resume_refuses_an_older_output_whose_backslashes_meant_something_else(tmp_path):
    out = tmp_path / "o.jsonl"
    with ResultWriter(str(out), "jsonl", KAGGLE_POINTS) as writer:
        writer.write([_result("a\\xff.jpg")])  # up to 0.3.0: a literal backslash or the byte 0xFF
    columns = columns_for(KAGGLE_POINTS)
    write_sidecar(out, {"format": "jsonl"}, columns, None, names=None)  # as 0.3.0 wrote it
    before = out.read_bytes()
    with pytest.raises(OutputError, match="older fkpbatch"):
        open_existing(out, "jsonl", {"format": "jsonl"}, columns, InputIdentities([]), safe=True)
    assert out.read_bytes() == before
    write_sidecar(out, {"format": "jsonl"}, columns, None)  # this version's names
    existing = open_existing(out, "jsonl", {"format": "jsonl"}, columns, InputIdentities([]), safe=True)
    assert existing.done == {"a\\xff.jpg"}
    os.close(existing.fd)


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


@pytest.mark.parametrize(
    "content, why",
    [
        (b"", "an empty file"),
        (b"a,b\n1,2\n", "not an fkpbatch CSV output"),
        (b'{"image": "x.jpg", "face": 0}\n', "JSON lines, not CSV"),
        (b"\xff\xfe,\n", "not an fkpbatch"),
    ],
)
def test_merge_of_a_file_that_is_not_a_shard_output_is_one_line(tmp_path, content, why):
    shard = tmp_path / "shard.csv"
    shard.write_bytes(content)
    result = runner.invoke(app, ["merge", str(shard), "-o", str(tmp_path / "m.csv")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {shard}: ") and why in lines[0], result.stderr
    assert not (tmp_path / "m.csv").exists()


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
