"""--resume, the sidecar and the lock (fkpbatch.resume): every face of every image exactly once,
whatever stopped a run (kill -9, a full disk, SIGTERM, SIGHUP, Ctrl-C); an output continued
whatever the spelling of its inputs, failed images retried; nothing touched that --resume cannot
prove it may continue; one writer per output, a lock left by a killed run never locking anyone out,
and a FIFO where a sidecar belongs never hanging a run."""

import contextlib
import csv
import errno
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from fkpbatch import resume, writers
from fkpbatch.engine import FaceResult, ImageResult, PredictOptions
from fkpbatch.errors import OutputError
from fkpbatch.keypoints import KAGGLE_POINTS
from fkpbatch.predict_run import PredictRequest, run_predict
from fkpbatch.results import columns_for
from fkpbatch.resume import InputIdentities, OutputLock, lock_path, open_existing, write_sidecar
from fkpbatch.transforms import Box
from fkpbatch.writers import ResultWriter

from conftest import (
    FAST,
    REPO,
    fkpbatch_process,
    gradient_image,
    image_result,
    invoke,
    lines_in,
    one_line_error,
    wait_until,
)

FACE = REPO / "examples" / "Celso_Lafer_12.jpg"


def images(folder, count=4):
    """``count`` gradient PNGs of different widths, img0.png, img1.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        gradient_image((16 + i, 16)).save(folder / f"img{i}.png")
    return folder


def csv_rows(out):
    return list(csv.DictReader(io.StringIO(out.read_bytes().decode(), newline="")))


def real_images(out, base):
    """The files the rows name (relative names from ``base``), as (device, inode, name) entries."""
    return [resume.EntryKeys()(os.path.join(base, r["image"])) for r in csv_rows(out)]


class FakePredictor:
    """Stands in for Predictor: image ``faces3_x`` has 3 faces, anything else one."""

    def __init__(self):
        self.spec = SimpleNamespace(keypoints=KAGGLE_POINTS, arch="fake")
        self.model = torch.nn.Linear(1, 1)
        torch.nn.init.zeros_(self.model.weight)
        torch.nn.init.zeros_(self.model.bias)
        self.calls = []

    def predict_paths(self, files, options):
        for item in files:
            self.calls.append(item.name)
            count = 3 if "faces3" in item.name else 1
            faces = [FaceResult(Box(10.0 * i, -5.0, 30.0), 0.9, np.full((15, 2), -1.5 + i), 0.5) for i in range(count)]
            yield ImageResult(item.name, "ok", "", 100, 80, faces, source=item)


class FlakyPredictor(FakePredictor):
    """Stands in for Predictor: ``bad*`` images fail on the first try only, ``none*`` have no face."""

    def __init__(self, fail=True):
        super().__init__()
        self.fail = fail

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


def _files(tmp_path, names):
    files = []
    for name in names:
        (tmp_path / name).write_bytes(b"x")
        files.append(tmp_path / name)
    return files


def _run(predictor, files, out, **request):
    return run_predict(
        predictor, PredictRequest(tuple(files), str(out), **request), PredictOptions(batch_size=2, workers=0)
    )


def _faces(out):
    return [(r["image"], r["face"]) for r in csv_rows(out)]


def _once_each(out, files):
    pairs = _faces(out)
    expected = sorted((str(f), str(i)) for f in files for i in range(3 if "faces3" in f.name else 1))
    return sorted(pairs) == expected and len(pairs) == len(set(pairs))


def test_a_run_killed_inside_a_multi_face_image_is_resumed_with_every_face_once(tmp_path):
    files = _files(tmp_path, ["a.jpg", "b_faces3.jpg", "c_faces3.jpg", "d.jpg"])
    out = tmp_path / "out.csv"
    _run(FakePredictor(), files, out)
    whole = out.read_bytes()
    cut = whole.rindex(b"\n", 0, whole.index(b"c_faces3.jpg,1,")) + 1  # c's face 0 is there, face 1 is not ...
    for tail in (cut, cut + 20):  # ... or is torn: a SIGKILL or a power loss
        out.write_bytes(whole[:tail])
        predictor = FakePredictor()
        summary = _run(predictor, files, out, resume=True)
        assert _once_each(out, files), _faces(out)
        assert out.read_bytes() == whole and predictor.calls == [str(files[2]), str(files[3])]
        assert summary.resumed == 2


def test_disk_full_inside_a_batch_keeps_whole_images_and_resume_completes(tmp_path, monkeypatch):
    files = _files(tmp_path, ["a.jpg", "b_faces3.jpg", "c_faces3.jpg", "d_faces3.jpg", "e.jpg"])
    out = tmp_path / "out.csv"
    real_write, calls = os.write, []

    def full_disk(fd, data):
        calls.append(fd)
        if len(calls) == 2:  # the second batch: part of it lands, then the disk is full
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(writers.os, "write", full_disk)
    with pytest.raises(OutputError, match="No space left on device.*--resume"):
        _run(FakePredictor(), files, out)
    monkeypatch.undo()
    assert [image for image, _ in _faces(out)] == [str(files[0]), *[str(files[1])] * 3]  # the first batch, whole
    _run(FakePredictor(), files, out, resume=True)
    assert _once_each(out, files)


def test_resume_after_a_clean_stop_redoes_nothing(tmp_path):
    files = _files(tmp_path, ["a.jpg", "b_faces3.jpg"])
    out = tmp_path / "out.csv"
    _run(FakePredictor(), files, out)
    predictor = FakePredictor()
    assert _run(predictor, files, out, resume=True).resumed == 2 and predictor.calls == []
    assert _once_each(out, files)


def test_resume_cuts_a_torn_last_line(tmp_path, tiny_weights):
    shutil.copy(FACE, tmp_path / "a.jpg")
    shutil.copy(FACE, tmp_path / "b.jpg")
    out = tmp_path / "out.csv"
    args = ["predict", tmp_path / "a.jpg", tmp_path / "b.jpg", "-w", tiny_weights, "--workers", "0", "-q", "-o", out]
    assert invoke(*args).exit_code == 0
    whole = out.read_text()
    out.write_text(whole[: whole.rindex("\n", 0, len(whole) - 1) + 1] + whole.splitlines()[-1][:25])  # b's row torn
    assert invoke(*args, "--resume").exit_code == 0
    assert out.read_text() == whole


def test_resume_reads_jsonl_and_cuts_torn_lines(tmp_path):
    out = tmp_path / "o.jsonl"
    with ResultWriter(str(out), "jsonl", KAGGLE_POINTS) as writer:
        writer.write([image_result("x.jpg"), image_result("y.jpg")])
    write_sidecar(out, {"format": "jsonl"}, columns_for(KAGGLE_POINTS), None)
    out.write_bytes(out.read_bytes() + b'{"image": "z.jp')
    existing = open_existing(
        out, "jsonl", {"format": "jsonl"}, columns_for(KAGGLE_POINTS), InputIdentities([]), safe=True
    )
    assert existing.done == {"x.jpg", "y.jpg"} and existing.keep == out.read_bytes().rindex(b"\n") + 1
    with ResultWriter(str(out), "jsonl", KAGGLE_POINTS, resume_fd=existing.fd, keep=existing.keep) as writer:
        writer.write([image_result("z.jpg")])
    assert [json.loads(line)["image"] for line in out.read_bytes().split(b"\n")[:-1]] == ["x.jpg", "y.jpg", "z.jpg"]


def test_resume_refuses_an_older_output_whose_backslashes_meant_something_else(tmp_path):
    out = tmp_path / "o.jsonl"
    with ResultWriter(str(out), "jsonl", KAGGLE_POINTS) as writer:
        writer.write([image_result("a\\xff.jpg")])  # up to 0.3.0: a literal backslash or the byte 0xFF
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


def test_resume_never_modifies_a_file_fkpbatch_did_not_write(tmp_path, tiny_weights, two_images):
    payroll = tmp_path / "payroll.csv"
    payroll.write_bytes(b"name,salary\nalice,100\nbob,2")  # no newline at the end: today the last line was cut
    for options in ([], ["--format", "jsonl"]):
        result = invoke("predict", *two_images, "-w", tiny_weights, "-o", payroll, "--resume", *options, *FAST, "-q")
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
        assert payroll.read_bytes() == b"name,salary\nalice,100\nbob,2"


@pytest.mark.parametrize(
    "change",
    [
        ["--points", "68"],
        ["--detect", "always"],
        ["--format", "jsonl"],
        ["--raw-names"],
        ["--weights"],
        ["--faces", "largest"],
        ["--shard", "0/2"],
    ],
)
def test_resume_with_other_options_exits_2_and_leaves_the_file_as_it_was(
    tmp_path, tiny_weights, weights68, two_images, change
):
    out = tmp_path / "out.csv"
    assert invoke("predict", *two_images, "-w", weights68, "-o", out, *FAST, "-q").exit_code == 0
    before = out.read_bytes()
    out.write_bytes(before[:-7])  # as a killed run left it
    before = out.read_bytes()
    result = invoke(
        "predict",
        *two_images,
        "-w",
        tiny_weights if change == ["--weights"] else weights68,
        "-o",
        out,
        "--resume",
        "--workers",
        "0",
        "-q",
        *([] if change[0] in ("--detect", "--weights") else ["--detect", "never"]),
        *([] if change == ["--weights"] else change),
    )
    assert result.exit_code == 2, result.output
    assert "other options" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == before


def test_resume_refuses_an_edited_header_or_foreign_rows(tmp_path, tiny_weights, two_images):
    out = tmp_path / "out.csv"
    predict = ["predict", *two_images, "-w", tiny_weights, "-o", out, *FAST, "-q"]
    assert invoke(*predict).exit_code == 0
    good = out.read_bytes()
    header, rest = good.split(b"\n", 1)
    for bad in (header.replace(b"quality", b"q") + b"\n" + rest, good + b"x,y\n", good + good.split(b"\n")[1] + b"\n"):
        out.write_bytes(bad)
        result = invoke(*predict, "--resume")
        assert result.exit_code == 2 and out.read_bytes() == bad, result.output


def test_resume_recognises_the_images_whatever_the_spelling_of_their_folder(tmp_path, tiny_weights, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images(tmp_path / "p")
    (tmp_path / "q").symlink_to("p", target_is_directory=True)
    os.link(tmp_path / "p" / "img0.png", tmp_path / "p" / "same_inode.png")  # a hard link: another image
    out = tmp_path / "o.csv"
    assert invoke("predict", "p", "-w", tiny_weights, "-o", out, *FAST).exit_code == 0
    whole = out.read_bytes()
    for spelling in (tmp_path / "p", "./p/", "p/../p", "q"):
        result = invoke("predict", spelling, "-w", tiny_weights, "-o", out, "--resume", *FAST)
        assert result.exit_code == 0, result.output
        assert out.read_bytes() == whole, spelling  # nothing appended again
        assert "5 already done" in result.stderr
    half = whole[: whole.index(b"\n", len(whole) // 2) + 1]
    out.write_bytes(half)  # killed half way
    result = invoke("predict", tmp_path / "p", "-w", tiny_weights, "-o", out, "--resume", *FAST)
    assert result.exit_code == 0, result.output
    entries = real_images(out, tmp_path)
    assert len(entries) == len(set(entries)) == 5  # every image once, the hard link too
    assert None not in entries


def test_resume_from_another_folder_that_cannot_match_the_names_refuses(tmp_path, tiny_weights, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images(tmp_path / "p")
    out = tmp_path / "o.csv"
    assert invoke("predict", "p", "-w", tiny_weights, "-o", out, *FAST).exit_code == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # 'p/img0.png' means nothing here
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    result = invoke("predict", tmp_path / "p", "-w", tiny_weights, "-o", out, "--resume", *FAST)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'p/img0.png'" in lines[0] and "cannot be found from this folder" in lines[0]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before  # sidecar too


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
    files = _files(tmp_path, names)
    out = tmp_path / f"out.{fmt}"
    _run(FlakyPredictor(), files, out)
    out.chmod(0o640)
    first = _images_of(out, fmt)
    assert sorted(status for _, status in first) == ["error", "error", "no_face", "ok", "ok", "ok"]
    again = FlakyPredictor(fail=False)
    summary = _run(again, files, out, resume=True)
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
    _run(third, files, out, resume=True)
    assert third.calls == [] and _images_of(out, fmt) == after


def test_an_image_read_while_being_copied_is_right_after_resume(tmp_path, tiny_weights):
    folder = images(tmp_path / "in", 3)
    whole = (folder / "img2.png").read_bytes()
    (folder / "img2.png").write_bytes(whole[:40])  # the copy is not finished
    out = tmp_path / "out.csv"
    assert invoke("predict", folder, "-w", tiny_weights, "-o", out, *FAST).exit_code == 0
    assert [r["status"] for r in csv_rows(out)] == ["ok", "ok", "error"]
    (folder / "img2.png").write_bytes(whole)
    result = invoke("predict", folder, "-w", tiny_weights, "-o", out, "--resume", *FAST)
    assert result.exit_code == 0, result.output
    assert "1 retried" in result.stderr and "2 already done" in result.stderr
    rows = csv_rows(out)
    assert [(r["image"], r["status"]) for r in rows] == [(str(folder / f"img{i}.png"), "ok") for i in range(3)]


HOLD_THE_LOCK = """
import sys, time
from pathlib import Path
from fkpbatch.resume import OutputLock
with OutputLock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_run_on_a_locked_output_exits_2_naming_the_first(tmp_path, tiny_weights):
    """One writer per output: a run (here a process holding the lock as a run does) keeps every
    other run off its output, whether that one resumes, overwrites or starts anew."""
    folder = tmp_path / "in"
    folder.mkdir()
    gradient_image((12, 12)).save(folder / "a.png")
    out = tmp_path / "out.csv"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for extra in ([], ["--overwrite"], ["--resume"]):
            second = invoke("predict", folder, "-w", tiny_weights, "-o", out, *extra)
            assert second.exit_code == 2, second.output
            assert f"pid {holder.pid}" in second.stderr and "another fkpbatch run" in second.stderr
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    assert invoke("predict", folder, "-w", tiny_weights, "-o", out, "-q").exit_code == 0


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
    assert invoke("predict", folder, "-w", tiny_weights, "-o", out, *FAST).exit_code == 0
    whole = out.read_bytes()
    out.write_bytes(whole[:-20])  # SIGKILL: a torn output ...
    left = lock_path(out)
    left.write_text("pid 99999 on elsewhere, since 2026-01-01 00:00:00\n")  # ... and its lock file,
    left.chmod(0o444)  # made by a colleague under umask 022 (or by fkpbatch <= 0.3)
    result = invoke("predict", folder, "-w", tiny_weights, "-o", out, "--resume", *FAST)
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == whole and not left.exists()


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


@pytest.mark.slow
def test_a_fifo_at_the_sidecar_or_lock_name_is_one_error_line_never_a_hang(tmp_path, tiny_weights):
    folder = images(tmp_path / "in", 2)
    out = tmp_path / "out.csv"
    assert invoke("predict", folder, "-w", tiny_weights, "-o", out, *FAST).exit_code == 0
    sidecar = tmp_path / "out.csv.fkpbatch.json"
    sidecar.unlink()
    os.mkfifo(sidecar)
    base = [*FAST, "-w", tiny_weights]
    assert str(sidecar) in one_line_error(fkpbatch_process("predict", folder, *base, "-o", out, "--resume", timeout=90))
    assert str(sidecar) in one_line_error(fkpbatch_process("merge", out, "-o", tmp_path / "all.csv", timeout=90))
    overwrite = fkpbatch_process("predict", folder, *base, "-o", out, "--overwrite", timeout=90)
    assert str(sidecar) in one_line_error(overwrite)  # never replaced
    assert stat.S_ISFIFO(os.lstat(sidecar).st_mode)
    sidecar.unlink()
    os.mkfifo(lock_path(tmp_path / "new.csv"))
    locked = fkpbatch_process("predict", folder, *base, "-o", tmp_path / "new.csv", timeout=90)
    assert str(lock_path(tmp_path / "new.csv")) in one_line_error(locked)


def test_read_sidecar_never_opens_a_fifo(tmp_path):
    out = tmp_path / "o.csv"
    os.mkfifo(resume.sidecar_path(out))
    with pytest.raises(OutputError, match="is a FIFO"):
        resume.read_sidecar(out)


@pytest.mark.slow
def test_sigterm_to_the_job_stops_cleanly_and_resume_completes(tmp_path, tiny_weights, many_pngs):
    out = tmp_path / "out.csv"
    command = ["predict", many_pngs, "-w", tiny_weights, "-o", out, "--detect", "never", "--batch-size", "2"]
    command += ["--workers", "1", "-q"]
    first = fkpbatch_process(*command, start=True, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_until(lambda: lines_in(out) >= 8, first)
    os.killpg(first.pid, signal.SIGTERM)  # as a scheduler does: the whole job, DataLoader workers too
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == 143, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    names = pd.read_csv(out)["image"].tolist()
    assert 0 < len(names) == len(set(names)) < 1000
    finished = fkpbatch_process(*command, "--resume", timeout=300)
    assert finished.returncode == 0, finished.stderr
    names = pd.read_csv(out)["image"].tolist()
    assert sorted(names) == sorted(str(p) for p in many_pngs.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "out.csv.fkpbatch.json"]


def _json_written(folder) -> int:
    """The size of out.json's temporary file (not the sidecar's), the array written so far."""
    sizes = [0]
    for path in folder.glob(".out.json.*.tmp"):
        if "fkpbatch" not in path.name:
            with contextlib.suppress(FileNotFoundError):
                sizes.append(path.stat().st_size)
    return max(sizes)


@pytest.mark.slow
@pytest.mark.parametrize("stop, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_or_sighup_on_json_writes_a_valid_array_that_resume_completes(
    tmp_path, tiny_weights, many_pngs, stop, code
):
    """SIGTERM (a scheduler) and SIGHUP (a closed terminal or ssh session) stop a run alike: a valid
    JSON array of whole images, no temporary file or lock left, and the --resume hint works."""
    out = tmp_path / "out.json"
    command = ["predict", many_pngs, "-w", tiny_weights, *FAST, "--batch-size", "4", "-o", out, "-q"]
    process = fkpbatch_process(*command, start=True, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: _json_written(tmp_path) > 5000, process)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert stop.name in stderr and "--resume" in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "out.json.fkpbatch.json"]  # no temp, no lock
    done = [r["image"] for r in json.loads(out.read_text())]
    assert 0 < len(done) == len(set(done)) < 1000
    finished = fkpbatch_process(*command, "--resume", timeout=300)  # the hint works
    assert finished.returncode == 0, finished.stderr
    images_out = [r["image"] for r in json.loads(out.read_text())]
    assert sorted(images_out) == sorted(str(p) for p in many_pngs.iterdir()) and images_out[: len(done)] == done


@pytest.mark.slow
def test_ctrl_c_flushes_whole_rows_says_how_to_resume_and_exits_130(tmp_path, tiny_weights):
    folder = tmp_path / "many"
    folder.mkdir()
    count = 300
    for i in range(count):
        (folder / f"face{i:03d}.jpg").symlink_to(FACE)
    out = tmp_path / "out.csv"
    process = fkpbatch_process(
        "predict",
        folder,
        "-w",
        tiny_weights,
        "-o",
        out,
        "--batch-size",
        "4",
        "--workers",
        "1",
        "-q",
        start=True,
        stderr=subprocess.PIPE,
        text=True,
        # a shell that started pytest in the background (nohup, &) leaves SIGINT
        # ignored, and Python then never raises KeyboardInterrupt: restore it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_until(lambda: lines_in(out) >= 5, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "--resume" in stderr and "Traceback" not in stderr
    rows = pd.read_csv(out)["image"].tolist()
    assert out.read_bytes().endswith(b"\n") and len(rows) == len(set(rows)) < count


@pytest.mark.slow
def test_killed_twice_then_resumed_every_image_once(tmp_path, tiny_weights):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(120):
        shutil.copy(FACE, folder / f"face{i:03d}.jpg")
    out = tmp_path / "out.csv"
    command = ["predict", folder, "-w", tiny_weights, "-o", out, "--batch-size", "4", "--workers", "1", "-q"]
    for attempt in range(2):
        before = len(pd.read_csv(out)) if out.exists() else 0
        process = fkpbatch_process(*command, *(["--resume"] if attempt else []), start=True, cwd=tmp_path)
        wait_until(lambda before=before: lines_in(out) > before + 4, process)
        process.send_signal(signal.SIGKILL)
        process.wait()
        text = out.read_bytes()
        assert text.endswith(b"\n")  # whole rows only
        rows = pd.read_csv(out)["image"].tolist()
        assert len(rows) == len(set(rows)) and before < len(rows) < 120
    finished = fkpbatch_process(*command, "--resume", cwd=tmp_path, timeout=300)
    assert finished.returncode == 0, finished.stderr
    rows = pd.read_csv(out)["image"].tolist()
    assert sorted(rows) == sorted(str(p) for p in folder.iterdir()) and len(rows) == 120
