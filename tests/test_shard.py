"""Shards and merge (fkpbatch.shard): a name's shard fixed for good, shards merged equal to a single
run, --check finding lost shards, and merge refusing what is not a shard output, doubles, other
models' shards and writes over existing files or its inputs."""

import os

import pandas as pd
import pytest

from fkpbatch.discover import discover
from fkpbatch.keypoints import KAGGLE_POINTS
from fkpbatch.shard import merge_outputs, select_shard, shard_of
from fkpbatch.writers import ResultWriter

from conftest import FAST, REPO, grey_pngs, image_result, invoke


def test_shards_partition_the_inputs_stably(tmp_path):
    for name in ["b.jpg", "a.jpg", "sub/c.jpg", "sub/deeper/d.jpg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    files = discover([tmp_path]).files
    parts = [select_shard(files, k, 3) for k in range(3)]
    assert sorted(f.name for part in parts for f in part) == sorted(f.name for f in files)
    # A name's shard depends on that name alone and never changes (resumed and merged shards rely on
    # it): the shards of these names among 2, 3, 4 and 7, as fkpbatch has always computed them.
    expected = {
        "some/photo.jpg": [0, 2, 2, 3],
        "a.jpg": [1, 0, 1, 6],
        "x/sub/c.jpg": [1, 2, 1, 4],
        "visage-été.jpg": [1, 1, 3, 2],
        "a\\xff.jpg": [1, 0, 3, 4],
    }
    assert {name: [shard_of(name, count) for count in (2, 3, 4, 7)] for name in expected} == expected


def test_three_shards_merged_equal_the_single_run(tmp_path, tiny_weights):
    folder = tmp_path / "faces"
    folder.mkdir()
    for i, name in enumerate(sorted((REPO / "examples").glob("*.jpg")) * 3):
        (folder / f"{i:02d}_{name.name}").write_bytes(name.read_bytes())
    base = ["predict", folder, "-w", tiny_weights, "--workers", "0", "-q"]
    single = invoke(*base).stdout
    outputs = []
    for k in range(3):
        out = tmp_path / f"shard{k}.csv"
        assert invoke(*base, "--shard", f"{k}/3", "-o", out).exit_code == 0
        outputs.append(out)
    merged = tmp_path / "all.csv"
    result = invoke("merge", *outputs, "-o", merged, "--check", folder)
    assert result.exit_code == 0, result.output
    assert merged.read_text() == single


def test_merge_check_takes_the_shard_count_from_the_shards(tmp_path, tiny_weights):
    folder = grey_pngs(tmp_path / "in", 8)
    (folder / "README.txt").write_text("not an image: predict skips it, so no shard holds it")
    base = ["predict", folder, "-w", tiny_weights, *FAST]
    outputs = []
    for k in range(4):
        out = tmp_path / f"part{k}.csv"
        assert invoke(*base, "--shard", f"{k}/4", "-o", out).exit_code == 0
        outputs.append(out)
    merge = ["merge", "--check", folder, "-o"]
    complete = invoke(*merge, tmp_path / "all.csv", *outputs)
    assert complete.exit_code == 0, complete.output  # README.txt is not reported missing
    lost = next(k for k, out in enumerate(outputs) if len(pd.read_csv(out)))
    given = [o for k, o in enumerate(outputs) if k != lost]  # a shard whose output was lost
    result = invoke(*merge, tmp_path / "m.csv", *given)
    assert result.exit_code == 1
    assert f"shard {lost}/4" in result.output and "README" not in result.output
    for out in outputs:  # no sidecar, no record: the count is not guessed from how many files were given
        (tmp_path / f"{out.name}.fkpbatch.json").unlink()
    result = invoke(*merge, tmp_path / "m2.csv", *given)
    assert result.exit_code == 2 and "--shards" in result.output
    assert not (tmp_path / "m2.csv").exists()  # refused before writing: the rerun with --shards N needs no --overwrite
    result = invoke(*merge, tmp_path / "m3.csv", "--shards", "4", *given)
    assert result.exit_code == 1 and f"shard {lost}/4" in result.output


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
    result = invoke("merge", shard, "-o", tmp_path / "m.csv")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {shard}: ") and why in lines[0], result.stderr
    assert not (tmp_path / "m.csv").exists()


def test_merge_reports_incomplete_shards_and_refuses_doubles(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    with ResultWriter(str(a), "csv", KAGGLE_POINTS) as writer:
        writer.write([image_result("x.jpg")])
    with ResultWriter(str(b), "csv", KAGGLE_POINTS) as writer:
        writer.write([image_result("x.jpg")])
    result = invoke("merge", a, b, "-o", tmp_path / "m.csv")
    assert result.exit_code == 2 and "appear more than once" in result.stderr
    report = merge_outputs([a], tmp_path / "m.csv", expected=["x.jpg", "y.jpg"], shards=1)
    assert report["missing"] == ["y.jpg"] and report["incomplete_shards"] == {0: 1}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_merge_warns_about_shards_without_sidecars_and_refuses_other_models(tmp_path, tiny_weights, weights68, fmt):
    folder = grey_pngs(tmp_path / "in", 6)
    shards = [tmp_path / f"s{k}.{fmt}" for k in range(2)]
    for k, shard in enumerate(shards):
        assert invoke("predict", folder, "-w", tiny_weights, "-o", shard, "--shard", f"{k}/2", *FAST).exit_code == 0
        (tmp_path / f"{shard.name}.fkpbatch.json").unlink()
    merged = invoke("merge", *shards, "-o", tmp_path / f"all.{fmt}")
    assert merged.exit_code == 0, merged.output
    warnings = [line for line in merged.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and all("fkpbatch.json" in w and "cannot be checked" in w for w in warnings)
    other = tmp_path / f"other.{fmt}"  # the same images, another model (68 points), no sidecar
    predict68 = ["predict", folder, "-w", weights68, "--points", "68", "-o", other, "--shard", "1/2", *FAST]
    assert invoke(*predict68).exit_code == 0
    (tmp_path / f"{other.name}.fkpbatch.json").unlink()
    refused = invoke("merge", shards[0], other, "-o", tmp_path / f"mixed.{fmt}")
    assert refused.exit_code == 2, refused.output
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(other) in lines[0], refused.stderr
    assert not (tmp_path / f"mixed.{fmt}").exists()


def test_merge_never_replaces_an_existing_file_or_an_input(tmp_path, tiny_weights, two_images):
    shard = tmp_path / "s.csv"
    assert invoke("predict", *two_images, "-w", tiny_weights, "-o", shard, *FAST, "-q").exit_code == 0
    original = shard.read_bytes()
    existing = tmp_path / "all.csv"
    existing.write_text("precious\n")
    os.link(shard, tmp_path / "alias.csv")
    for target, flags in ((existing, []), (shard, ["--overwrite"]), (tmp_path / "alias.csv", ["--overwrite"])):
        result = invoke("merge", shard, "-o", target, *flags)
        assert result.exit_code == 2, result.output
    assert existing.read_text() == "precious\n" and shard.read_bytes() == original
    assert invoke("merge", shard, "-o", existing, "--overwrite").exit_code == 0
    assert existing.read_bytes() == original
