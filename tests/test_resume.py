"""--resume, the lock and the sidecar: an output is continued whatever the spelling of its inputs,
failed images are retried, a lock left by a killed run never locks anyone out, and a FIFO where a
sidecar belongs never hangs a run."""

import csv
import errno
import io
import json
import os
import stat
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fkpbatch import resume
from fkpbatch.checkpoint import ModelSpec, save_checkpoint
from fkpbatch.cli import app
from fkpbatch.engine import FaceResult, ImageResult, PredictOptions
from fkpbatch.errors import OutputError
from fkpbatch.keypoints import IBUG_POINTS, KAGGLE_POINTS
from fkpbatch.predict_run import PredictRequest, run_predict
from fkpbatch.resume import OutputLock, lock_path
from fkpbatch.transforms import Box, Framing

from conftest import gradient_image

runner = CliRunner()


def images(folder, count=4):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        gradient_image((16 + i, 16)).save(folder / f"img{i}.png")
    return folder


def predict(*args):
    return runner.invoke(app, ["predict", *map(str, args), "--detect", "never", "--workers", "0"])


def csv_rows(out):
    return list(csv.DictReader(io.StringIO(out.read_bytes().decode(), newline="")))


def real_images(out, base):
    """The files the rows name (relative names from ``base``), as (device, inode, name) entries."""
    return [resume.EntryKeys()(os.path.join(base, r["image"])) for r in csv_rows(out)]


# 4. one image, however its name is spelt ----------------------------------------------------------------


def test_resume_recognises_the_images_whatever_the_spelling_of_their_folder(tmp_path, tiny_weights, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images(tmp_path / "p")
    (tmp_path / "q").symlink_to("p", target_is_directory=True)
    os.link(tmp_path / "p" / "img0.png", tmp_path / "p" / "same_inode.png")  # a hard link: another image
    out = tmp_path / "o.csv"
    assert predict("p", "-w", tiny_weights, "-o", out).exit_code == 0
    whole = out.read_bytes()
    for spelling in (tmp_path / "p", "./p/", "p/../p", "q"):
        result = predict(spelling, "-w", tiny_weights, "-o", out, "--resume")
        assert result.exit_code == 0, result.output
        assert out.read_bytes() == whole, spelling  # nothing appended again
        assert "5 already done" in result.stderr
    half = whole[: whole.index(b"\n", len(whole) // 2) + 1]
    out.write_bytes(half)  # killed half way
    result = predict(tmp_path / "p", "-w", tiny_weights, "-o", out, "--resume")
    assert result.exit_code == 0, result.output
    entries = real_images(out, tmp_path)
    assert len(entries) == len(set(entries)) == 5  # every image once, the hard link too
    assert None not in entries


def test_resume_from_another_folder_that_cannot_match_the_names_refuses(tmp_path, tiny_weights, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images(tmp_path / "p")
    out = tmp_path / "o.csv"
    assert predict("p", "-w", tiny_weights, "-o", out).exit_code == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # 'p/img0.png' means nothing here
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    result = predict(tmp_path / "p", "-w", tiny_weights, "-o", out, "--resume")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'p/img0.png'" in lines[0] and "cannot be found from this folder" in lines[0]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before  # sidecar too


# 15. error rows are retried, nothing else is ---------------------------------------------------------------


class FlakyPredictor:
    """Stands in for Predictor: ``bad*`` images fail on the first try only, ``none*`` have no face."""

    def __init__(self, fail=True):
        self.spec = SimpleNamespace(keypoints=KAGGLE_POINTS, arch="fake")
        self.model = torch.nn.Linear(1, 1)
        torch.nn.init.zeros_(self.model.weight)
        torch.nn.init.zeros_(self.model.bias)
        self.fail, self.calls = fail, []

    def predict_paths(self, files, options):
        for item in files:
            self.calls.append(item.path.name)
            if item.path.name.startswith("bad") and self.fail:
                yield ImageResult(item.name, "error", "truncated file (still being copied?)", source=item)
            elif item.path.name.startswith("none"):
                yield ImageResult(item.name, "no_face", "", 100, 80, [], source=item)
            else:
                face = FaceResult(Box(10.0, 5.0, 30.0), 0.9, np.full((15, 2), 1.5), 0.5)
                yield ImageResult(item.name, "ok", "", 100, 80, [face, face], source=item)


def _images_of(out, fmt):
    if fmt == "csv":
        return [(r["image"], r["status"]) for r in csv_rows(out) if r["face"] == "0"]
    if fmt == "jsonl":
        records = [json.loads(line) for line in out.read_bytes().splitlines()]
    else:
        records = json.loads(out.read_bytes())
    return [(r["image"], r["status"]) for r in records]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json"])
def test_resume_predicts_failed_images_again_and_replaces_their_rows(tmp_path, fmt):
    names = ["a.png", "bad1.png", "c.png", "none.png", "bad2.png", "e.png"]
    files = []
    for name in names:
        (tmp_path / name).write_bytes(b"x")
        files.append(tmp_path / name)
    out = tmp_path / f"out.{fmt}"
    options = PredictOptions(batch_size=2, workers=0)
    run_predict(FlakyPredictor(), PredictRequest(tuple(files), str(out)), options)
    out.chmod(0o640)
    first = _images_of(out, fmt)
    assert sorted(status for _, status in first) == ["error", "error", "no_face", "ok", "ok", "ok"]
    again = FlakyPredictor(fail=False)
    summary = run_predict(again, PredictRequest(tuple(files), str(out), resume=True), options)
    assert again.calls == ["bad1.png", "bad2.png"]  # no_face is final, ok rows are kept
    assert (summary.resumed, summary.retried, summary.images) == (4, 2, 2)
    assert "2 retried" in summary.line()
    after = _images_of(out, fmt)
    assert [i for i, _ in after] == [i for i, s in first if s != "error"] + [
        str(tmp_path / "bad1.png"),
        str(tmp_path / "bad2.png"),
    ]
    assert dict(after)[str(tmp_path / "none.png")] == "no_face"
    assert all(status != "error" for _, status in after)
    if fmt == "csv":
        assert len(csv_rows(out)) == 5 * 2 + 1  # two faces per ok image, one row for no_face
    if fmt != "json":  # (JSON is rewritten whole by any resume)
        assert stat.S_IMODE(out.stat().st_mode) == 0o640  # the rewritten file keeps its permissions
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names + [out.name, out.name + ".fkpbatch.json"])
    third = FlakyPredictor(fail=False)
    run_predict(third, PredictRequest(tuple(files), str(out), resume=True), options)
    assert third.calls == [] and _images_of(out, fmt) == after


def test_an_image_read_while_being_copied_is_right_after_resume(tmp_path, tiny_weights):
    folder = images(tmp_path / "in", 3)
    whole = (folder / "img2.png").read_bytes()
    (folder / "img2.png").write_bytes(whole[:40])  # the copy is not finished
    out = tmp_path / "out.csv"
    assert predict(folder, "-w", tiny_weights, "-o", out).exit_code == 0
    assert [r["status"] for r in csv_rows(out)] == ["ok", "ok", "error"]
    (folder / "img2.png").write_bytes(whole)
    result = predict(folder, "-w", tiny_weights, "-o", out, "--resume")
    assert result.exit_code == 0, result.output
    assert "1 retried" in result.stderr and "2 already done" in result.stderr
    rows = csv_rows(out)
    assert [(r["image"], r["status"]) for r in rows] == [(str(folder / f"img{i}.png"), "ok") for i in range(3)]


# 9. the lock file follows the umask; a leftover one never locks anyone out -----------------------------------

SHOW_LOCK_MODE = """
import os, stat, sys
from pathlib import Path
from fkpbatch.resume import OutputLock, lock_path
out = Path(sys.argv[1])
with OutputLock(out):
    print(oct(stat.S_IMODE(os.stat(lock_path(out)).st_mode)))
"""


@pytest.mark.parametrize("umask, mode", [("002", "0o664"), ("007", "0o660"), ("077", "0o600")])
def test_the_lock_file_is_created_following_the_umask(tmp_path, umask, mode):
    shown = subprocess.run(
        [
            "sh",
            "-c",
            f'umask {umask} && exec "$@"',
            "sh",
            sys.executable,
            "-c",
            SHOW_LOCK_MODE,
            str(tmp_path / "o.csv"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout.strip() == mode


@pytest.fixture()
def no_write_permission(monkeypatch):
    """Opening a lock file that has no write permission bit for writing fails with EACCES, for root
    too (root passes permission checks: this plays the group colleague)."""
    real_open = os.open

    def checked_open(path, flags, *args, **kwargs):
        if str(path).endswith(".fkpbatch.lock") and flags & (os.O_WRONLY | os.O_RDWR):
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                mode = None
            if mode is not None and not mode & 0o222:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(resume.os, "open", checked_open)


def test_a_lock_file_left_by_a_killed_run_that_cannot_be_written_is_replaced(
    tmp_path, tiny_weights, no_write_permission
):
    folder = images(tmp_path / "in", 2)
    out = tmp_path / "out.csv"
    assert predict(folder, "-w", tiny_weights, "-o", out).exit_code == 0
    whole = out.read_bytes()
    out.write_bytes(whole[:-20])  # SIGKILL: a torn output ...
    left = lock_path(out)
    left.write_text("pid 99999 on elsewhere, since 2026-01-01 00:00:00\n")  # ... and its lock file,
    left.chmod(0o444)  # made by a colleague under umask 022 (or by fkpbatch <= 0.3)
    result = predict(folder, "-w", tiny_weights, "-o", out, "--resume")
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == whole and not left.exists()


HOLD_THE_LOCK = """
import sys, time
from pathlib import Path
from fkpbatch.resume import OutputLock
with OutputLock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_lock_file_that_cannot_be_written_but_is_held_is_left_alone(tmp_path, no_write_permission):
    out = tmp_path / "out.csv"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        lock_path(out).chmod(0o444)
        before = os.stat(lock_path(out))
        with pytest.raises(OutputError, match=f"another fkpbatch run \\(pid {holder.pid} "):
            with OutputLock(out):
                pass
        after = os.stat(lock_path(out))
        assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    finally:
        holder.kill()
        holder.wait()
    with OutputLock(out):  # its holder is gone: the leftover is replaced by a lock file with write permission
        assert os.stat(lock_path(out)).st_mode & 0o200


# 10. a FIFO where the sidecar or the lock belongs never hangs a run -------------------------------------------


def _cli(*args, timeout=90):
    return subprocess.run(
        [sys.executable, "-m", "fkpbatch", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def _one_error_line(result, name):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and name in lines[0], result.stderr


def test_a_fifo_at_the_sidecar_or_lock_name_is_one_error_line_never_a_hang(tmp_path, tiny_weights):
    folder = images(tmp_path / "in", 2)
    out = tmp_path / "out.csv"
    assert predict(folder, "-w", tiny_weights, "-o", out).exit_code == 0
    sidecar = tmp_path / "out.csv.fkpbatch.json"
    sidecar.unlink()
    os.mkfifo(sidecar)
    base = ["--detect", "never", "--workers", "0", "-w", tiny_weights]
    _one_error_line(_cli("predict", folder, *base, "-o", out, "--resume"), str(sidecar))
    _one_error_line(_cli("merge", out, "-o", tmp_path / "all.csv"), str(sidecar))
    _one_error_line(_cli("predict", folder, *base, "-o", out, "--overwrite"), str(sidecar))  # never replaced
    assert stat.S_ISFIFO(os.lstat(sidecar).st_mode)
    sidecar.unlink()
    os.mkfifo(lock_path(tmp_path / "new.csv"))
    _one_error_line(_cli("predict", folder, *base, "-o", tmp_path / "new.csv"), str(lock_path(tmp_path / "new.csv")))


# 20. merge says when it cannot check shards; refuses shards of other models ------------------------------------


@pytest.fixture(scope="module")
def weights68(tmp_path_factory):
    torch.manual_seed(0)
    spec = ModelSpec("fkpnet_tiny", KAGGLE_POINTS + IBUG_POINTS, 48, Framing())
    path = tmp_path_factory.mktemp("w68") / "tiny68.pt"
    save_checkpoint(path, spec, spec.build())
    return path


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_merge_warns_about_shards_without_sidecars_and_refuses_other_models(tmp_path, tiny_weights, weights68, fmt):
    folder = images(tmp_path / "in", 6)
    shards = [tmp_path / f"s{k}.{fmt}" for k in range(2)]
    for k, shard in enumerate(shards):
        assert predict(folder, "-w", tiny_weights, "-o", shard, "--shard", f"{k}/2").exit_code == 0
        (tmp_path / f"{shard.name}.fkpbatch.json").unlink()
    merged = runner.invoke(app, ["merge", *map(str, shards), "-o", str(tmp_path / f"all.{fmt}")])
    assert merged.exit_code == 0, merged.output
    warnings = [line for line in merged.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and all("fkpbatch.json" in w and "cannot be checked" in w for w in warnings)
    other = tmp_path / f"other.{fmt}"  # the same images, another model (68 points), no sidecar
    assert predict(folder, "-w", weights68, "--points", "68", "-o", other, "--shard", "1/2").exit_code == 0
    (tmp_path / f"{other.name}.fkpbatch.json").unlink()
    refused = runner.invoke(app, ["merge", str(shards[0]), str(other), "-o", str(tmp_path / f"mixed.{fmt}")])
    assert refused.exit_code == 2, refused.output
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(other) in lines[0], refused.stderr
    assert not (tmp_path / f"mixed.{fmt}").exists()


def test_read_sidecar_never_opens_a_fifo(tmp_path):
    out = tmp_path / "o.csv"
    os.mkfifo(resume.sidecar_path(out))
    with pytest.raises(OutputError, match="is a FIFO"):
        resume.read_sidecar(out)
