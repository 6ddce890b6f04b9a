"""Pictures written beside the output: aligned faces (--aligned) and head pose (--pose) through the CLI."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

from fkpbatch.align import ALIGN_POINTS, aligned_crop
from fkpbatch.cli import app
from fkpbatch.decode import load_image

from conftest import REPO, need_data

runner = CliRunner()
EXAMPLES = REPO / "examples"


def predict(*args: str):
    result = runner.invoke(app, ["predict", *map(str, args), "--workers", "0", "-q"])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def photos(tmp_path):
    """The example photos in a folder with a subfolder (the aligned faces mirror the layout)."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for path in sorted(EXAMPLES.glob("*.jpg")):
        shutil.copy(path, folder / path.name)
    shutil.copy(EXAMPLES / "couple.jpg", folder / "sub" / "pair.jpg")
    return folder


def test_every_face_is_aligned_as_the_template_warp_of_its_rows_five_points(photos, tmp_path):
    out, aligned = tmp_path / "k.csv", tmp_path / "aligned"
    predict(photos, "-o", out, "--aligned", aligned)
    table = pd.read_csv(out)
    assert (table["status"] == "ok").all() and len(table) == 7
    for row in table.itertuples():
        source = photos.parent / row.image
        target = aligned / source.relative_to(photos.parent).parent / f"{source.stem}_{row.face}.png"
        crop = Image.open(target)
        assert crop.size == (112, 112) and crop.mode == "RGB"
        points = np.array([[getattr(row, f"{n}_x"), getattr(row, f"{n}_y")] for n in ALIGN_POINTS])
        expected = aligned_crop(load_image(source), points)  # the row's values are rounded to 0.01 px
        difference = np.abs(np.asarray(crop, dtype=int) - np.asarray(expected, dtype=int))
        assert difference.max() <= 2 and difference.mean() < 0.05, target
    assert sorted(p.name for p in (aligned / "in" / "sub").iterdir()) == ["pair_0.png", "pair_1.png"]


def test_aligned_size_scales_the_template_and_existing_crops_are_kept(photos, tmp_path):
    aligned = photos / "aligned"  # inside the input folder: never read back as input
    first = predict(photos, "-o", tmp_path / "a.csv", "--aligned", aligned, "--aligned-size", "64")
    crop = aligned / "in" / "couple_1.png"
    assert Image.open(crop).size == (64, 64)
    stamp = crop.stat().st_mtime_ns
    again = runner.invoke(
        app, ["predict", str(photos), "-o", str(tmp_path / "b.csv"), "--aligned", str(aligned), "--workers", "0"]
    )
    assert again.exit_code == 0, again.output
    assert "exists; not replaced (pass --overwrite)" in again.stderr and crop.stat().st_mtime_ns == stamp
    assert len(pd.read_csv(tmp_path / "b.csv")) == len(pd.read_csv(tmp_path / "a.csv")) == 7, first.output
    predict(photos, "-o", tmp_path / "c.csv", "--aligned", aligned, "--overwrite")
    assert Image.open(crop).size == (112, 112)


def test_pose_columns_follow_the_keypoints_and_json_carries_a_pose_object(tmp_path):
    predict(EXAMPLES, "-o", tmp_path / "k.csv", "--pose", "--points", "68")
    table = pd.read_csv(tmp_path / "k.csv")
    assert list(table.columns[-4:]) == ["p67_y", "yaw", "pitch", "roll"]
    assert table[["yaw", "pitch", "roll"]].abs().max().max() < 60
    predict(EXAMPLES, "-o", tmp_path / "k.json", "--pose")
    images = json.loads((tmp_path / "k.json").read_text())
    pose = images[0]["faces"][0]["pose"]
    assert set(pose) == {"yaw", "pitch", "roll"} and all(isinstance(v, float) for v in pose.values())
    assert "yaw" not in pd.read_csv(io.StringIO(predict(EXAMPLES).stdout)).columns  # not asked for: no columns


def test_pose_is_mirror_and_rotation_consistent_on_real_faces(tmp_path):
    """A mirrored photo: opposite yaw and roll, the same pitch; turned 15 degrees in-plane: roll
    changes by 15 (within 4 degrees), one face per picture (the largest)."""
    folder = tmp_path / "in"
    folder.mkdir()
    sources = [need_data("photos", "img10.jpg"), EXAMPLES / "Celso_Lafer_12.jpg", EXAMPLES / "couple.jpg"]
    for index, source in enumerate(sources):
        image = load_image(source)
        image.save(folder / f"{index}_a.png")
        ImageOps.mirror(image).save(folder / f"{index}_b_mirror.png")
        image.rotate(15, resample=Image.Resampling.BICUBIC, expand=True).save(folder / f"{index}_c_turned.png")
    predict(folder, "-o", tmp_path / "k.csv", "--pose", "--faces", "largest", "--points", "68")
    table = pd.read_csv(tmp_path / "k.csv")
    table.index = [Path(name).name for name in table["image"]]
    for index in range(len(sources)):
        base, mirror, turned = (table.loc[f"{index}_{kind}.png"] for kind in ("a", "b_mirror", "c_turned"))
        assert abs(base.yaw + mirror.yaw) < 4 and abs(base.roll + mirror.roll) < 4, (base, mirror)
        assert abs(base.pitch - mirror.pitch) < 4
        assert abs(abs(turned.roll - base.roll) - 15) < 4, (base.roll, turned.roll)
