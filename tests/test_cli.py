"""The console script as a shell meets it: exit codes, stderr, pipes, devices, signals. These run
the real CLI in a subprocess (real file descriptors, real signals); CliRunner where that is enough."""

import io
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
from typer.testing import CliRunner

from fkpbatch.cli import app
from fkpbatch.errors import OutputError
from fkpbatch.fileio import atomic_write

from conftest import REPO, gradient_image

runner = CliRunner()
EXAMPLES = REPO / "examples"
FKPBATCH = [sys.executable, "-m", "fkpbatch"]


def images(folder, count=4, size=(16, 16)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        gradient_image(size).save(folder / f"img{i:04d}.png")
    return folder


def fast(weights):
    return ["-w", str(weights), "--detect", "never", "--workers", "0"]


class Reader(threading.Thread):
    """Reads a FIFO to its end, as another program would."""

    def __init__(self, fifo):
        super().__init__(daemon=True)
        self.fifo, self.data = fifo, b""
        self.start()

    def run(self):
        with open(self.fifo, "rb") as stream:
            self.data = stream.read()


# 5. a FIFO or a device is written into, never replaced ---------------------------------------------------


@pytest.mark.parametrize("flags", [[], ["--overwrite"], ["--format", "json"]])
def test_predict_streams_into_a_fifo_and_leaves_it_a_fifo(tmp_path, tiny_weights, flags):
    folder = images(tmp_path / "in")
    fifo = tmp_path / "rows"
    os.mkfifo(fifo)
    reader = Reader(fifo)
    result = subprocess.run(
        [*FKPBATCH, "predict", str(folder), *fast(tiny_weights), "-o", str(fifo), "-q", *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )
    reader.join(30)
    assert result.returncode == 0, result.stderr
    if "json" in flags:
        assert [r["image"] for r in json.loads(reader.data)] == [str(p) for p in sorted(folder.iterdir())]
    else:
        assert pd.read_csv(io.BytesIO(reader.data))["image"].tolist() == [str(p) for p in sorted(folder.iterdir())]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "rows"]  # no sidecar, no lock, no temporary file


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
def test_dev_null_stays_a_character_device(tmp_path, tiny_weights, flags):
    folder = images(tmp_path / "in", 2)
    before = set(os.listdir("/dev"))
    result = runner.invoke(app, ["predict", str(folder), *fast(tiny_weights), "-o", "/dev/null", "-q", *flags])
    assert result.exit_code == 0, result.output
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)
    assert set(os.listdir("/dev")) == before  # no /dev/null.fkpbatch.json, no /dev/.null.fkpbatch.lock
    resumed = runner.invoke(app, ["predict", str(folder), *fast(tiny_weights), "-o", "/dev/null", "--resume"])
    assert resumed.exit_code == 2 and "--resume" in resumed.stderr
    assert len(resumed.stderr.strip().splitlines()) == 1


def test_merge_and_export_write_into_dev_null(tmp_path, tiny_weights):
    folder = images(tmp_path / "in", 2)
    shard = tmp_path / "s.csv"
    assert runner.invoke(app, ["predict", str(folder), *fast(tiny_weights), "-o", str(shard)]).exit_code == 0
    before = set(os.listdir("/dev"))
    for flags in ([], ["--overwrite"]):
        merged = runner.invoke(app, ["merge", str(shard), "-o", "/dev/null", *flags])
        assert merged.exit_code == 0, merged.output
    exported = runner.invoke(app, ["export", "-w", str(tiny_weights), "--onnx", "/dev/null", "--overwrite"])
    assert exported.exit_code == 0, exported.output
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode) and set(os.listdir("/dev")) == before


def test_a_fifo_that_is_not_the_named_target_is_never_replaced(tmp_path):
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="is a FIFO"):
        with atomic_write(fifo, overwrite=True) as handle:  # e.g. an annotated copy, a sidecar
            handle.write(b"data")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


# 12. a stderr that cannot be written never costs the output ---------------------------------------------------


@pytest.mark.parametrize("verbosity", [["-v"], []])
def test_an_unwritable_stderr_changes_nothing(tmp_path, tiny_weights, verbosity):
    out = tmp_path / "out.csv"
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [*FKPBATCH, "predict", str(EXAMPLES), "-w", str(tiny_weights), "-o", str(out), *verbosity],
            stderr=full,
            stdout=subprocess.PIPE,
            timeout=180,
        )
    assert result.returncode == 0
    table = pd.read_csv(out)
    assert sorted(set(table["image"])) == sorted(str(p) for p in EXAMPLES.iterdir() if p.suffix == ".jpg")


# 14. a closed pipe is a normal end; a closed stdout is one error line ----------------------------------------------


def test_a_reader_that_goes_away_ends_the_run_quietly_with_141(tmp_path, tiny_weights):
    folder = images(tmp_path / "in", 4)
    process = subprocess.Popen(
        [*FKPBATCH, "predict", str(folder), *fast(tiny_weights)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    process.stdout.close()  # the reader is gone before the first row
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 141, stderr
    assert stderr == b""  # no "error:", no "Exception ignored ... BrokenPipeError"


def test_head_in_a_pipeline_ends_the_run_quietly(tmp_path, tiny_weights):
    folder = images(tmp_path / "in", 300, size=(12, 12))
    command = " ".join([*FKPBATCH, "predict", str(folder), *fast(tiny_weights), "--batch-size", "2"])
    result = subprocess.run(
        [
            "bash",
            "-c",
            f'set -o pipefail; {command} 2>"$0" | head -2; echo "status ${{PIPESTATUS[0]}}"',
            tmp_path / "e",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    lines = result.stdout.splitlines()
    assert lines[0].startswith("image,face,") and lines[-1] == "status 141", result.stdout
    assert "error" not in (tmp_path / "e").read_text() and "Exception" not in (tmp_path / "e").read_text()


def test_models_into_a_closed_pipe_is_quiet_too():
    process = subprocess.Popen([*FKPBATCH, "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 141 and stderr == b""


def test_a_closed_stdout_is_one_error_line(tmp_path, tiny_weights):
    folder = images(tmp_path / "in", 2)
    closed = subprocess.run(
        [*FKPBATCH, "predict", str(folder), *fast(tiny_weights)],
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.close(1),
    )
    lines = closed.stderr.strip().splitlines()
    assert closed.returncode == 2 and len(lines) == 1 and "standard output is closed" in lines[0], closed.stderr
    out = tmp_path / "out.csv"  # with -o FILE a closed stdout does not matter
    written = subprocess.run(
        [*FKPBATCH, "predict", str(folder), *fast(tiny_weights), "-o", str(out), "-q"],
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.close(1),
    )
    assert written.returncode == 0 and written.stderr == "" and len(pd.read_csv(out)) == 2


# 13. SIGHUP (a closed terminal or ssh session) stops a run like SIGTERM ----------------------------------------------


def test_sighup_stops_cleanly_with_129_and_resume_completes(tmp_path, tiny_weights):
    folder = images(tmp_path / "many", 1000, size=(12, 12))
    out = tmp_path / "out.json"
    command = [*FKPBATCH, "predict", str(folder), *fast(tiny_weights), "--batch-size", "4", "-o", str(out), "-q"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not [
        p for p in tmp_path.glob(".out.json.*.tmp") if "fkpbatch" not in p.name and p.stat().st_size > 5000
    ]:
        time.sleep(0.02)
    process.send_signal(signal.SIGHUP)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 129, stderr
    assert "SIGHUP" in stderr and "--resume" in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "many",
        "out.json",
        "out.json.fkpbatch.json",
    ]  # no temp, no lock
    done = [r["image"] for r in json.loads(out.read_text())]
    assert 0 < len(done) == len(set(done)) < 1000
    finished = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    images_out = [r["image"] for r in json.loads(out.read_text())]
    assert sorted(images_out) == sorted(str(p) for p in folder.iterdir()) and images_out[: len(done)] == done
