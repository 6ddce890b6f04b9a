"""Trustworthy outputs: every face of every image exactly once, whatever stops a run; --resume
never touches a file it cannot prove it may continue; one writer per output; no write through a
link or over an input; any file name round-trips; CSV cells are spreadsheet-safe."""

import csv
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from fkpbatch import writers
from fkpbatch.checkpoint import ModelSpec, save_checkpoint
from fkpbatch.cli import app
from fkpbatch.engine import FaceResult, ImageResult, PredictOptions
from fkpbatch.errors import OutputError
from fkpbatch.keypoints import IBUG_POINTS, KAGGLE_POINTS
from fkpbatch.predict_run import PredictRequest, run_predict
from fkpbatch.transforms import Box, Framing

from conftest import REPO, gradient_image, predict_command

runner = CliRunner()
FACE = REPO / "examples" / "Celso_Lafer_12.jpg"


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
    return [(r["image"], r["face"]) for r in csv.DictReader(io.StringIO(out.read_bytes().decode(), newline=""))]


def _once_each(out, files):
    pairs = _faces(out)
    expected = sorted((str(f), str(i)) for f in files for i in range(3 if "faces3" in f.name else 1))
    return sorted(pairs) == expected and len(pairs) == len(set(pairs))


# 1. Resume is whole-image atomic --------------------------------------------------------------


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


# 2. SIGTERM like Ctrl-C ------------------------------------------------------------------------


def _start(command, out, rows=8):
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < rows):
        time.sleep(0.02)
    return process


def _many_images(folder, count):
    folder.mkdir()
    for i in range(count):
        gradient_image((12, 12)).save(folder / f"img{i:04d}.png")
    return folder


@pytest.fixture()
def many(tmp_path):
    return _many_images(tmp_path / "many", 1000)


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
            second = runner.invoke(app, ["predict", str(folder), "-w", str(tiny_weights), "-o", str(out), *extra])
            assert second.exit_code == 2, second.output
            assert f"pid {holder.pid}" in second.stderr and "another fkpbatch run" in second.stderr
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    assert runner.invoke(app, ["predict", str(folder), "-w", str(tiny_weights), "-o", str(out), "-q"]).exit_code == 0


def test_sigterm_to_the_job_stops_cleanly_and_resume_completes(tmp_path, tiny_weights, many):
    out = tmp_path / "out.csv"
    command = predict_command(many, tiny_weights, out, "--detect", "never", "--batch-size", "2", "--workers", "1")
    first = _start(command, out)
    os.killpg(first.pid, signal.SIGTERM)  # as a scheduler does: the whole job, DataLoader workers too
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == 143, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    names = pd.read_csv(out)["image"].tolist()
    assert 0 < len(names) == len(set(names)) < 1000
    finished = subprocess.run(command + ["--resume"], capture_output=True, text=True, check=False)
    assert finished.returncode == 0, finished.stderr
    names = pd.read_csv(out)["image"].tolist()
    assert sorted(names) == sorted(str(p) for p in many.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many", "out.csv", "out.csv.fkpbatch.json"]


def test_sigterm_on_json_writes_a_valid_array_that_resume_completes(tmp_path, tiny_weights, many):
    out = tmp_path / "out.json"
    command = predict_command(many, tiny_weights, out, "--detect", "never", "--batch-size", "4", "--workers", "0")
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not [
        p for p in tmp_path.glob(".out.json.*.tmp") if "fkpbatch" not in p.name and p.stat().st_size > 5000
    ]:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "--resume" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many", "out.json", "out.json.fkpbatch.json"]  # no temp
    done = [r["image"] for r in json.loads(out.read_text())]
    assert len(done) == len(set(done)) < 1000
    finished = subprocess.run(command + ["--resume"], capture_output=True, text=True, check=False)  # the hint works
    assert finished.returncode == 0, finished.stderr
    images = [r["image"] for r in json.loads(out.read_text())]
    assert sorted(images) == sorted(str(p) for p in many.iterdir()) and images[: len(done)] == done


# 3. --resume checks before it touches anything ---------------------------------------------------


@pytest.fixture(scope="module")
def weights68(tmp_path_factory):
    torch.manual_seed(0)
    spec = ModelSpec("fkpnet_tiny", KAGGLE_POINTS + IBUG_POINTS, 48, Framing())
    path = tmp_path_factory.mktemp("w68") / "tiny68.pt"
    save_checkpoint(path, spec, spec.build())
    return path


@pytest.fixture()
def two_images(tmp_path):
    for name in ("a.png", "b.png"):
        gradient_image((16, 16)).save(tmp_path / name)
    return [tmp_path / "a.png", tmp_path / "b.png"]


def _predict(*args):
    return runner.invoke(app, ["predict", *map(str, args), "--detect", "never", "--workers", "0", "-q"])


def test_resume_never_modifies_a_file_fkpbatch_did_not_write(tmp_path, tiny_weights, two_images):
    payroll = tmp_path / "payroll.csv"
    payroll.write_bytes(b"name,salary\nalice,100\nbob,2")  # no newline at the end: today the last line was cut
    for options in ([], ["--format", "jsonl"]):
        result = _predict(*two_images, "-w", tiny_weights, "-o", payroll, "--resume", *options)
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
    assert _predict(*two_images, "-w", weights68, "-o", out).exit_code == 0
    before = out.read_bytes()
    out.write_bytes(before[:-7])  # as a killed run left it
    before = out.read_bytes()
    args = [*two_images, "-w", tiny_weights if change == ["--weights"] else weights68, "-o", out, "--resume"]
    result = runner.invoke(
        app,
        [
            "predict",
            *map(str, args),
            "--workers",
            "0",
            "-q",
            *([] if change[0] in ("--detect", "--weights") else ["--detect", "never"]),
            *([] if change == ["--weights"] else change),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "other options" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == before


def test_resume_refuses_an_edited_header_or_foreign_rows(tmp_path, tiny_weights, two_images):
    out = tmp_path / "out.csv"
    assert _predict(*two_images, "-w", tiny_weights, "-o", out).exit_code == 0
    good = out.read_bytes()
    header, rest = good.split(b"\n", 1)
    for bad in (header.replace(b"quality", b"q") + b"\n" + rest, good + b"x,y\n", good + good.split(b"\n")[1] + b"\n"):
        out.write_bytes(bad)
        result = _predict(*two_images, "-w", tiny_weights, "-o", out, "--resume")
        assert result.exit_code == 2 and out.read_bytes() == bad, result.output


# 5. Never write through links or over inputs --------------------------------------------------------


def test_links_planted_at_output_and_temporary_names_never_redirect_a_write(tmp_path, tiny_weights, two_images):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out.json"
    for name in (".out.json.partial", ".out.json.tmp", ".out.csv.partial"):
        (tmp_path / name).symlink_to(victim)
    link = tmp_path / "link.csv"
    link.symlink_to(victim)
    assert _predict(*two_images, "-w", tiny_weights, "-o", out).exit_code == 0
    assert _predict(*two_images, "-w", tiny_weights, "-o", link).exit_code == 2  # exists: --overwrite needed
    assert _predict(*two_images, "-w", tiny_weights, "-o", link, "--resume").exit_code == 2
    assert _predict(*two_images, "-w", tiny_weights, "-o", link, "--overwrite").exit_code == 0
    assert victim.read_text() == "keep me" and not link.is_symlink() and link.read_text().startswith("image,")
    assert len(json.loads(out.read_text())) == 2


def test_annotations_never_replace_an_input_or_an_existing_file(tmp_path, tiny_weights, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gradient_image((40, 40)).save("x.gif")
    gradient_image((40, 40), "L").save("x.gif.png")  # where x.gif's annotated copy goes with --annotate .
    original = (tmp_path / "x.gif.png").read_bytes()
    for flags in ([], ["--overwrite"]):  # without -q: the warnings are what this checks
        result = runner.invoke(
            app,
            [
                "predict",
                "x.gif",
                "x.gif.png",
                "-w",
                str(tiny_weights),
                "--detect",
                "never",
                "--workers",
                "0",
                "--annotate",
                ".",
                *flags,
            ],
        )
        assert result.exit_code == 0, result.output
        assert (tmp_path / "x.gif.png").read_bytes() == original
        assert "would overwrite the input; not written" in result.stderr
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "x.gif.png").write_bytes(b"mine")
    result = runner.invoke(
        app, ["predict", "x.gif", "-w", str(tiny_weights), "--detect", "never", "--workers", "0", "--annotate", "ann"]
    )
    assert result.exit_code == 0 and "not replaced" in result.stderr
    assert (tmp_path / "ann" / "x.gif.png").read_bytes() == b"mine"
    assert _predict("x.gif", "-w", tiny_weights, "--annotate", "ann", "--overwrite").exit_code == 0
    assert (tmp_path / "ann" / "x.gif.png").read_bytes()[:4] == b"\x89PNG"
    # no temporary files left; index.html is the contact sheet of --annotate .
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann", "index.html", "x.gif", "x.gif.png"]


def test_merge_never_replaces_an_existing_file_or_an_input(tmp_path, tiny_weights, two_images):
    shard = tmp_path / "s.csv"
    assert _predict(*two_images, "-w", tiny_weights, "-o", shard).exit_code == 0
    original = shard.read_bytes()
    existing = tmp_path / "all.csv"
    existing.write_text("precious\n")
    os.link(shard, tmp_path / "alias.csv")
    for target, flags in ((existing, []), (shard, ["--overwrite"]), (tmp_path / "alias.csv", ["--overwrite"])):
        result = runner.invoke(app, ["merge", str(shard), "-o", str(target), *flags])
        assert result.exit_code == 2, result.output
    assert existing.read_text() == "precious\n" and shard.read_bytes() == original
    assert runner.invoke(app, ["merge", str(shard), "-o", str(existing), "--overwrite"]).exit_code == 0
    assert existing.read_bytes() == original


# 7 + 8. Any name round-trips; spreadsheet-safe cells ---------------------------------------------------

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


def test_any_name_is_one_csv_row_through_csv_pandas_resume_and_merge(tmp_path, tiny_weights, odd):
    folder, names = odd
    out = tmp_path / "out.csv"
    assert _predict(folder, "-w", tiny_weights, "-o", out).exit_code == 0
    rows = list(csv.DictReader(io.StringIO(out.read_bytes().decode(), newline="")))
    assert len(rows) == len(names) and sorted(writers.unprotect(r["image"]) for r in rows) == names
    table = pd.read_csv(out)
    assert len(table) == len(names) and sorted(table["image"].map(writers.unprotect)) == names
    whole = out.read_bytes()
    out.write_bytes(whole[: len(whole) * 2 // 3])  # killed two thirds of the way through
    assert _predict(folder, "-w", tiny_weights, "-o", out, "--resume").exit_code == 0
    assert sorted(r["image"] for r in csv.DictReader(io.StringIO(out.read_bytes().decode(), newline=""))) == sorted(
        r["image"] for r in rows
    )
    shards = [tmp_path / f"s{k}.csv" for k in range(2)]
    for k, shard in enumerate(shards):
        assert _predict(folder, "-w", tiny_weights, "-o", shard, "--shard", f"{k}/2").exit_code == 0
    result = runner.invoke(app, ["merge", *map(str, shards), "-o", str(tmp_path / "m.csv"), "--check", str(folder)])
    assert result.exit_code == 0, result.output
    merged = (tmp_path / "m.csv").read_bytes()
    stdout = _predict(folder, "-w", tiny_weights).stdout_bytes
    assert merged == stdout


def test_any_name_is_one_jsonl_record_and_resumes(tmp_path, tiny_weights, odd):
    folder, names = odd
    out = tmp_path / "out.jsonl"
    assert _predict(folder, "-w", tiny_weights, "-o", out).exit_code == 0
    whole = out.read_bytes()
    assert sorted(json.loads(line)["image"] for line in whole.split(b"\n")[:-1]) == names
    out.write_bytes(whole[: len(whole) // 2])
    assert _predict(folder, "-w", tiny_weights, "-o", out, "--resume").exit_code == 0
    assert sorted(json.loads(line)["image"] for line in out.read_bytes().split(b"\n")[:-1]) == names
    assert len(pd.read_json(out, lines=True)) == len(names)


def test_csv_cells_that_would_be_formulas_are_prefixed_and_numbers_stay_numbers(tmp_path, tiny_weights, odd):
    folder, names = odd
    out = tmp_path / "out.csv"
    assert _predict(folder, "-w", tiny_weights, "-o", out).exit_code == 0
    cells = [r["image"] for r in csv.DictReader(io.StringIO(out.read_bytes().decode(), newline=""))]
    for cell in cells:
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert {"'=1+1.png", "'+x.png", "'-x.png", "'@x.png", "'\tlead.png", "'\rlead.png", "''quoted.png"} <= set(cells)
    raw = tmp_path / "raw.csv"
    assert _predict(folder, "-w", tiny_weights, "-o", raw, "--raw-names").exit_code == 0
    assert sorted(pd.read_csv(raw)["image"]) == names
    wide = tmp_path / "wide.csv"  # not square: the whole-image box starts above the image, a negative number
    gradient_image((60, 40)).save("-wide.png")
    args = [
        "predict",
        "-w",
        str(tiny_weights),
        "-o",
        str(wide),
        "--detect",
        "never",
        "--workers",
        "0",
        "--",
        "-wide.png",
    ]
    assert runner.invoke(app, args).exit_code == 0
    assert wide.read_text().splitlines()[1].startswith("'-wide.png,0,ok,,60,40,,0.0,-10.0,60.0,60.0,")
    assert pd.read_csv(wide)["box_y"].tolist() == [-10.0]


def test_output_extension_is_checked_unless_format_is_given(tmp_path, tiny_weights, two_images):
    result = _predict(*two_images, "-w", tiny_weights, "-o", tmp_path / "out.xlsx")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1 and "--format" in result.stderr
    assert not (tmp_path / "out.xlsx").exists()
    assert _predict(*two_images, "-w", tiny_weights, "-o", tmp_path / "out.txt", "--format", "csv").exit_code == 0
