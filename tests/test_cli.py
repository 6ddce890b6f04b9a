"""The console script as a shell meets it (fkpbatch.cli): exit codes, one-line usage and environment
errors, the summary on stderr, pipes, FIFOs and devices. The real CLI in a subprocess where file
descriptors matter; CliRunner where that is enough."""

import io
import json
import os
import stat
import subprocess
import sys
import threading

import pandas as pd
import pytest

import fkpbatch

from conftest import (
    FAST,
    REPO,
    fkpbatch_process,
    gradient_pngs,
    grey_pngs,
    invoke,
    one_line_error,
    random_kaggle_csv,
)

EXAMPLES = REPO / "examples"


def test_version_and_module_entry_point(tmp_path):
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.startswith("fkpbatch ")
    module = fkpbatch_process("--version", cwd=tmp_path)  # python -m fkpbatch, from any folder
    assert module.returncode == 0, module.stderr
    assert module.stdout == result.stdout and module.stdout.startswith(f"fkpbatch {fkpbatch.__version__} ")


@pytest.mark.parametrize(
    "args, message",
    [
        (["/no/such/folder"], "/no/such/folder: no such file or folder"),
        # choice options are Enums: the parser checks them, all with one message form
        (
            ["--detect", "sometimes"],
            "Invalid value for '--detect': Value error, 'sometimes' is not one of 'auto', 'always', 'never'",
        ),
        (["--faces", "some"], "Invalid value for '--faces': Value error, 'some' is not one of 'all', 'largest'"),
        (["--points", "5"], "Invalid value for '--points': Value error, '5' is not one of '15', '68'"),
        (["--batch-size", "0"], "Invalid value for '--batch-size' / '-b'"),
        (["--no-such-option"], "No such option: --no-such-option"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(mixed_folder, tiny_weights, args, message):
    """Through the real entry point: the parser's own errors are one line too, not a framed box."""
    inputs = args if args[0].startswith("/") else [mixed_folder, *args]
    result = fkpbatch_process("predict", *inputs, "-w", tiny_weights)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_points_68_needs_weights_that_have_them(mixed_folder, tiny_weights):
    result = invoke("predict", mixed_folder, "-w", tiny_weights, "--points", "68")
    assert result.exit_code == 2 and "predict the 15 Kaggle points only" in result.stderr


@pytest.mark.slow
def test_environment_errors_are_one_line(tmp_path, tiny_weights):
    folder = grey_pngs(tmp_path / "in", 1)
    data = random_kaggle_csv(tmp_path / "training.csv", rows=2)
    base = ["-w", tiny_weights, "--workers", "0", "--detect", "never"]
    runs = [
        (["predict", folder, *base, "-o", tmp_path / "missing" / "out.csv"], {}),
        (["predict", "--from-list", "-", *base], {"preexec_fn": lambda: os.close(0)}),  # no stdin at all
        (["export", "--onnx", tmp_path / "missing" / "m.onnx", "-w", tiny_weights], {}),
        (["evaluate", data, "-w", tiny_weights, "--json", tmp_path / "missing" / "e.json"], {}),
    ]
    if os.path.exists("/dev/full"):
        runs.append((["predict", folder, *base, "-o", "/dev/full", "--overwrite"], {}))
    # started together (each is mostly Python importing torch), then checked one by one
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    started = [fkpbatch_process(*args, start=True, **pipes, **options) for args, options in runs]
    for process in started:
        stdout, stderr = process.communicate(timeout=120)
        one_line_error(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))


def test_summary_goes_to_stderr_and_counts_skipped_files(mixed_folder, tiny_weights):
    result = invoke("predict", mixed_folder, "-w", tiny_weights, "--workers", "0")
    assert "4 images" in result.stderr and "1 errors" in result.stderr and "2 skipped" in result.stderr
    assert "images/s" not in result.stdout


def test_strict_exits_1_when_a_file_failed(mixed_folder, tiny_weights):
    assert invoke("predict", mixed_folder, "-w", tiny_weights, "--workers", "0", "--strict", "-q").exit_code == 1


class Reader(threading.Thread):
    """Reads a FIFO to its end, as another program would."""

    def __init__(self, fifo):
        super().__init__(daemon=True)
        self.fifo, self.data = fifo, b""
        self.start()

    def run(self):
        with open(self.fifo, "rb") as stream:
            self.data = stream.read()


@pytest.mark.parametrize("flags", [[], ["--overwrite"], ["--format", "json"]])
def test_predict_streams_into_a_fifo_and_leaves_it_a_fifo(tmp_path, tiny_weights, flags):
    folder = gradient_pngs(tmp_path / "in")
    fifo = tmp_path / "rows"
    os.mkfifo(fifo)
    reader = Reader(fifo)
    result = fkpbatch_process("predict", folder, "-w", tiny_weights, *FAST, "-o", fifo, "-q", *flags)
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
    folder = gradient_pngs(tmp_path / "in", 2)
    before = set(os.listdir("/dev"))
    result = invoke("predict", folder, "-w", tiny_weights, *FAST, "-o", "/dev/null", "-q", *flags)
    assert result.exit_code == 0, result.output
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)
    assert set(os.listdir("/dev")) == before  # no /dev/null.fkpbatch.json, no /dev/.null.fkpbatch.lock
    resumed = invoke("predict", folder, "-w", tiny_weights, *FAST, "-o", "/dev/null", "--resume")
    assert resumed.exit_code == 2 and "--resume" in resumed.stderr
    assert len(resumed.stderr.strip().splitlines()) == 1


def test_merge_and_export_write_into_dev_null(tmp_path, tiny_weights):
    folder = gradient_pngs(tmp_path / "in", 2)
    shard = tmp_path / "s.csv"
    assert invoke("predict", folder, "-w", tiny_weights, *FAST, "-o", shard).exit_code == 0
    before = set(os.listdir("/dev"))
    for flags in ([], ["--overwrite"]):
        merged = invoke("merge", shard, "-o", "/dev/null", *flags)
        assert merged.exit_code == 0, merged.output
    exported = invoke("export", "-w", tiny_weights, "--onnx", "/dev/null", "--overwrite")
    assert exported.exit_code == 0, exported.output
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode) and set(os.listdir("/dev")) == before


@pytest.mark.parametrize("verbosity", [["-v"], []])
def test_an_unwritable_stderr_changes_nothing(tmp_path, tiny_weights, verbosity):
    out = tmp_path / "out.csv"
    with open("/dev/full", "w") as full:
        result = fkpbatch_process(
            "predict",
            EXAMPLES,
            "-w",
            tiny_weights,
            "-o",
            out,
            *verbosity,
            stderr=full,
            stdout=subprocess.PIPE,
            timeout=180,
        )
    assert result.returncode == 0
    table = pd.read_csv(out)
    assert sorted(set(table["image"])) == sorted(str(p) for p in EXAMPLES.iterdir() if p.suffix == ".jpg")


def test_a_reader_that_goes_away_ends_the_run_quietly_with_141(tmp_path, tiny_weights):
    folder = gradient_pngs(tmp_path / "in", 4)
    process = fkpbatch_process(
        "predict", folder, "-w", tiny_weights, *FAST, start=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    process.stdout.close()  # the reader is gone before the first row
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 141, stderr
    assert stderr == b""  # no "error:", no "Exception ignored ... BrokenPipeError"


def test_head_in_a_pipeline_ends_the_run_quietly(tmp_path, tiny_weights, many_pngs):
    command = [
        sys.executable,
        "-m",
        "fkpbatch",
        "predict",
        str(many_pngs),
        "-w",
        str(tiny_weights),
        *FAST,
        "--batch-size",
        "2",
    ]
    result = subprocess.run(
        [
            "bash",
            "-c",
            f'set -o pipefail; {" ".join(command)} 2>"$0" | head -2; echo "status ${{PIPESTATUS[0]}}"',
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
    process = fkpbatch_process("models", start=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 141 and stderr == b""


@pytest.mark.slow
def test_a_closed_stdout_is_one_error_line(tmp_path, tiny_weights):
    folder = gradient_pngs(tmp_path / "in", 2)
    closed = fkpbatch_process(
        "predict", folder, "-w", tiny_weights, *FAST, stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1)
    )
    lines = closed.stderr.strip().splitlines()
    assert closed.returncode == 2 and len(lines) == 1 and "standard output is closed" in lines[0], closed.stderr
    out = tmp_path / "out.csv"  # with -o FILE a closed stdout does not matter
    written = fkpbatch_process(
        "predict",
        folder,
        "-w",
        tiny_weights,
        *FAST,
        "-o",
        out,
        "-q",
        stderr=subprocess.PIPE,
        preexec_fn=lambda: os.close(1),
    )
    assert written.returncode == 0 and written.stderr == "" and len(pd.read_csv(out)) == 2
