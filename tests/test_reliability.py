"""A run over files of unknown quality finishes, accounts for every file once, and survives kill -9."""

import io
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pandas as pd
from PIL import Image
from typer.testing import CliRunner

from fkpbatch.cli import app

from conftest import REPO, gradient_image, predict_command

runner = CliRunner()
FACE = REPO / "examples" / "Celso_Lafer_12.jpg"


def build_zoo(root):
    """Every kind of bad, odd and good input; returns the names that must get exactly one row."""
    root.mkdir()
    rows = {}

    def add(name, status):
        rows[str(root / name)] = status

    (root / "zero.jpg").write_bytes(b"")
    add("zero.jpg", "error")
    data = FACE.read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    add("truncated.jpg", "error")
    (root / "text.png").write_text("hello, I am not a picture")
    add("text.png", "error")
    (root / "random.jpg").write_bytes(np.random.default_rng(0).bytes(5000))
    add("random.jpg", "error")
    (root / "folder.jpg").mkdir()  # a directory named like an image: walked into, holds nothing
    locked = root / "locked.jpg"
    shutil.copy(FACE, locked)
    locked.chmod(0)
    add("locked.jpg", "ok" if os.geteuid() == 0 else "error")  # root reads it anyway
    (root / "dangling.jpg").symlink_to(root / "does-not-exist.jpg")
    add("dangling.jpg", "error")
    (root / "loop").mkdir()
    (root / "loop" / "again").symlink_to(root, target_is_directory=True)
    Image.new("1", (12_000, 12_000)).save(root / "bomb.png")  # 144 MP declared, a few kB on disk
    add("bomb.png", "error")
    gradient_image((1, 1)).save(root / "one.png")
    add("one.png", "no_face")
    gradient_image((4, 4000)).save(root / "sliver.png")
    add("sliver.png", "no_face")
    Image.fromarray(np.asarray(Image.open(FACE).convert("L"), dtype=np.uint16) * 257).save(root / "sixteen.png")
    add("sixteen.png", "ok")
    Image.open(FACE).convert("CMYK").save(root / "cmyk.jpg")
    add("cmyk.jpg", "ok")
    palette = Image.open(FACE).convert("P")
    palette.save(root / "palette.png", transparency=0)
    add("palette.png", "ok")
    frames = [Image.open(FACE).convert("RGB"), gradient_image(Image.open(FACE).size)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:])
    add("animated.gif", "ok")
    for ext in ("webp", "tiff", "bmp"):
        Image.open(FACE).save(root / f"face.{ext}")
        add(f"face.{ext}", "ok")
    shutil.copy(FACE, root / "name with spaces.jpg")
    add("name with spaces.jpg", "ok")
    shutil.copy(FACE, root / "visage-été-顔.jpg")
    add("visage-été-顔.jpg", "ok")
    raw = os.fsencode(str(root)) + b"/latin1-\xe9t\xe9.jpg"
    shutil.copy(FACE, raw)
    rows[str(root) + "/latin1-\\xe9t\\xe9.jpg"] = "ok"
    (root / "README.txt").write_text("not an image, not named like one: skipped")
    (root / ".DS_Store").write_bytes(b"\0\0")
    return rows


def test_the_whole_bad_input_zoo_in_one_run(tmp_path, tiny_weights):
    expected = build_zoo(tmp_path / "zoo")
    result = runner.invoke(
        app, ["predict", str(tmp_path / "zoo"), "-w", str(tiny_weights), "--workers", "2", "--max-pixels", "50000000"]
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.stdout))
    per_image = table.groupby("image")["status"].agg(set).to_dict()
    assert set(per_image) == set(expected)
    assert {name: status.pop() for name, status in per_image.items()} == expected
    errors = dict(zip(table["image"], table["error"].fillna("")))
    assert "over --max-pixels" in errors[str(tmp_path / "zoo" / "bomb.png")]
    assert errors[str(tmp_path / "zoo" / "dangling.jpg")].startswith("cannot read")
    assert "2 skipped" in result.stderr  # README.txt and .DS_Store


def _rows(path):
    return pd.read_csv(path)["image"].tolist()


def test_killed_twice_then_resumed_every_image_once(tmp_path, tiny_weights):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(120):
        shutil.copy(FACE, folder / f"face{i:03d}.jpg")
    out = tmp_path / "out.csv"
    command = predict_command(folder, tiny_weights, out, "--batch-size", "4", "--workers", "1")
    for attempt in range(2):
        before = len(_rows(out)) if out.exists() else 0
        process = subprocess.Popen(command + (["--resume"] if attempt else []), cwd=tmp_path)
        deadline = time.time() + 120
        while time.time() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) <= before + 4):
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        text = out.read_bytes()
        assert text.endswith(b"\n")  # whole rows only
        rows = _rows(out)
        assert len(rows) == len(set(rows)) and before < len(rows) < 120
    finished = subprocess.run(command + ["--resume"], cwd=tmp_path, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    rows = _rows(out)
    assert sorted(rows) == sorted(str(p) for p in folder.iterdir()) and len(rows) == 120


def test_resume_cuts_a_torn_last_line(tmp_path, tiny_weights):
    shutil.copy(FACE, tmp_path / "a.jpg")
    shutil.copy(FACE, tmp_path / "b.jpg")
    out = tmp_path / "out.csv"
    args = [
        "predict",
        str(tmp_path / "a.jpg"),
        str(tmp_path / "b.jpg"),
        "-w",
        str(tiny_weights),
        "--workers",
        "0",
        "-q",
        "-o",
        str(out),
    ]
    assert runner.invoke(app, args).exit_code == 0
    whole = out.read_text()
    out.write_text(whole[: whole.rindex("\n", 0, len(whole) - 1) + 1] + whole.splitlines()[-1][:25])  # b's row torn
    assert runner.invoke(app, args + ["--resume"]).exit_code == 0
    assert out.read_text() == whole


def test_output_never_replaces_an_input_and_annotations_stay_inside(tmp_path, tiny_weights, monkeypatch):
    target = tmp_path / "face.jpg"
    shutil.copy(FACE, target)
    result = runner.invoke(
        app, ["predict", str(target), "-w", str(tiny_weights), "-o", str(target), "--overwrite", "-f", "csv"]
    )
    assert result.exit_code == 2 and "is one of the input files" in result.stderr
    assert target.read_bytes() == FACE.read_bytes()
    os.link(target, tmp_path / "alias.csv")  # the same file under another name: compared by inode, not by path
    for extra in (["--overwrite"], ["--resume"]):
        result = runner.invoke(
            app, ["predict", str(target), "-w", str(tiny_weights), "-o", str(tmp_path / "alias.csv"), *extra]
        )
        assert result.exit_code == 2 and "is one of the input files" in result.stderr
        assert target.read_bytes() == FACE.read_bytes()
    annotated = tmp_path / "ann"
    relative = os.path.relpath(target, tmp_path / "deep" / "er")
    (tmp_path / "deep" / "er").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "deep" / "er")
    result = runner.invoke(
        app, ["predict", relative, "-w", str(tiny_weights), "--workers", "0", "-q", "--annotate", str(annotated)]
    )
    assert result.exit_code == 0, result.output  # "../../face.jpg" lands at ann/face.jpg, not outside
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".jpg"]
    assert sorted(str(p.relative_to(tmp_path)) for p in written) == ["ann/face.jpg", "face.jpg"]


def test_annotating_into_the_input_tree_never_overwrites_an_input(tmp_path, tiny_weights, monkeypatch):
    (tmp_path / "faces").mkdir()
    shutil.copy(FACE, tmp_path / "faces" / "a.jpg")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["predict", "faces", "-w", str(tiny_weights), "--workers", "0", "--annotate", "."])
    assert result.exit_code == 0
    assert "would overwrite the input; not written" in result.stderr
    assert (tmp_path / "faces" / "a.jpg").read_bytes() == FACE.read_bytes()


def test_ctrl_c_flushes_whole_rows_says_how_to_resume_and_exits_130(tmp_path, tiny_weights):
    folder = tmp_path / "many"
    folder.mkdir()
    count = 300
    for i in range(count):
        (folder / f"face{i:03d}.jpg").symlink_to(FACE)
    out = tmp_path / "out.csv"
    process = subprocess.Popen(
        predict_command(folder, tiny_weights, out, "--batch-size", "4", "--workers", "1"),
        stderr=subprocess.PIPE,
        text=True,
        # a shell that started pytest in the background (nohup, &) leaves SIGINT
        # ignored, and Python then never raises KeyboardInterrupt: restore it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < 5):
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "--resume" in stderr and "Traceback" not in stderr
    rows = _rows(out)
    assert out.read_bytes().endswith(b"\n") and len(rows) == len(set(rows)) < count
