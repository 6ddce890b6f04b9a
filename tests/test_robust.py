"""Trustworthy outputs (issue 14): outputs never replace inputs or existing files, discovery never
hangs or hides, environment errors are one line, nonsense is refused, options are never ignored."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fkpbatch import checkpoint
from fkpbatch.checkpoint import ModelSpec, load_model, save_checkpoint
from fkpbatch.cli import app
from fkpbatch.errors import WeightsError
from fkpbatch.keypoints import KAGGLE_POINTS, coordinate_columns
from fkpbatch.transforms import Framing

from conftest import REPO

runner = CliRunner()
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def cli(*args, stdin=subprocess.DEVNULL, timeout=120, close_stdin=False):
    """The real CLI in a subprocess: stderr as the user sees it (tracebacks, C-level prints)."""
    return subprocess.run(
        [PY, "-m", "fkpbatch", *map(str, args)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=None if close_stdin else stdin,
        preexec_fn=(lambda: os.close(0)) if close_stdin else None,
    )


def one_line_error(result, code=2):
    """Exit ``code`` with one 'error:' line on stderr and no traceback (a subprocess or a CliRunner result)."""
    if isinstance(result, subprocess.CompletedProcess):
        stderr, rc = result.stderr, result.returncode
    else:
        stderr, rc = result.output, result.exit_code
    assert rc == code, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    return lines[0]


def photos(folder, count=3):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((48, 48), (29 * i + 20) % 256, np.uint8)).convert("RGB").save(folder / f"p{i}.png")
    return folder


def kaggle_csv(path, rows=8, labelled=True):
    """A small Kaggle-format CSV with random faces (pixels) and labels."""
    rng = np.random.default_rng(0)
    columns = coordinate_columns(KAGGLE_POINTS)
    frame = pd.DataFrame(rng.uniform(20, 76, (rows, 30)) if labelled else np.full((rows, 30), np.nan), columns=columns)
    frame["Image"] = [" ".join(map(str, rng.integers(0, 255, 96 * 96))) for _ in range(rows)]
    frame.to_csv(path, index=False)
    return path


_VALID = object()


def write_spec_checkpoint(path, spec_dict=_VALID, state=None, arch="fkpnet_tiny", size=48):
    spec = ModelSpec(arch, KAGGLE_POINTS, size, Framing())
    model = spec.build()
    payload = {
        "format": checkpoint.FORMAT,
        "spec": spec.to_dict() if spec_dict is _VALID else spec_dict,
        "model": state if state is not None else model.state_dict(),
    }
    torch.save(payload, path)
    return path


# --- 5. never over inputs, existing files or through links -------------------------------------------


def test_export_refuses_existing_files_inputs_and_links(tmp_path, tiny_weights):
    before = tiny_weights.read_bytes()
    existing = tmp_path / "model.onnx"
    existing.write_bytes(b"keep me")
    one_line_error(runner.invoke(app, ["export", "--onnx", str(existing), "-w", str(tiny_weights)]))
    assert existing.read_bytes() == b"keep me"
    link = tmp_path / "link.onnx"
    link.symlink_to(tiny_weights)
    for target in (tiny_weights, link):  # the weights themselves, or a link to them: never, even with --overwrite
        result = runner.invoke(app, ["export", "--onnx", str(target), "-w", str(tiny_weights), "--overwrite"])
        assert result.exit_code == 2 and "input" in result.output
    assert tiny_weights.read_bytes() == before and link.is_symlink()
    result = runner.invoke(app, ["export", "--onnx", str(existing), "-w", str(tiny_weights), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert existing.read_bytes() != b"keep me" and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_evaluate_json_and_submission_never_replace_inputs_or_existing_files(tmp_path, tiny_weights):
    data = kaggle_csv(tmp_path / "training.csv", rows=4)
    original = data.read_bytes()
    report = tmp_path / "report.json"
    report.write_text("old")
    one_line_error(runner.invoke(app, ["evaluate", str(data), "-w", str(tiny_weights), "--json", str(report)]))
    assert report.read_text() == "old"
    result = runner.invoke(app, ["evaluate", str(data), "-w", str(tiny_weights), "--json", str(data), "--overwrite"])
    assert result.exit_code == 2 and data.read_bytes() == original
    result = runner.invoke(app, ["evaluate", str(data), "-w", str(tiny_weights), "--json", str(report), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "rmse" in json.loads(report.read_text())

    test = tmp_path / "test.csv"
    pd.read_csv(data).assign(ImageId=range(1, 5))[["ImageId", "Image"]].to_csv(test, index=False)
    lookup = tmp_path / "lookup.csv"
    pd.DataFrame({"RowId": [1], "ImageId": [1], "FeatureName": ["nose_tip_x"]}).to_csv(lookup, index=False)
    saved = lookup.read_bytes()
    for target in (test, lookup):
        result = runner.invoke(
            app,
            [
                "submission",
                str(test),
                "--lookup",
                str(lookup),
                "-w",
                str(tiny_weights),
                "-o",
                str(target),
                "--overwrite",
            ],
        )
        assert result.exit_code == 2 and "input" in result.output
    assert lookup.read_bytes() == saved
    out = tmp_path / "submission.csv"
    out.write_text("old")
    assert (
        runner.invoke(
            app, ["submission", str(test), "--lookup", str(lookup), "-w", str(tiny_weights), "-o", str(out)]
        ).exit_code
        == 2
    )
    assert out.read_text() == "old"
    result = runner.invoke(
        app, ["submission", str(test), "--lookup", str(lookup), "-w", str(tiny_weights), "-o", str(out), "--overwrite"]
    )
    assert result.exit_code == 0 and out.read_text().startswith("RowId,Location")


TRAIN = [
    "--arch",
    "fkpnet_tiny",
    "--input-size",
    "32",
    "--epochs",
    "1",
    "-b",
    "4",
    "--workers",
    "0",
    "--quiet",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    data = kaggle_csv(folder / "training.csv")
    run = folder / "run"
    result = runner.invoke(app, ["train", str(data), *TRAIN, "-o", str(run)])
    assert result.exit_code == 0, result.output
    return data, run


def test_training_never_writes_over_a_run_or_through_a_link(tiny_run, tmp_path):
    data, _ = tiny_run
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("precious")
    one_line_error(runner.invoke(app, ["train", str(data), *TRAIN, "-o", str(run)]))
    assert (run / "config.json").read_text() == "precious"
    victim = tmp_path / "victim.txt"
    victim.write_text("victim")
    (run / "metrics.jsonl").symlink_to(victim)
    result = runner.invoke(app, ["train", str(data), *TRAIN, "-o", str(run), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "victim"  # the link was replaced, not written through
    assert not (run / "metrics.jsonl").is_symlink() and json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert json.loads((run / "config.json").read_text())["arch"] == "fkpnet_tiny"
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


# --- 6. discovery never hangs, never hides ---------------------------------------------------------


def _in_process_predict(weights, out, *inputs_and_options):
    """``predict`` arguments for the in-process runner: whole images as faces, no workers."""
    return [
        "predict",
        *map(str, inputs_and_options),
        "-w",
        str(weights),
        "--workers",
        "0",
        "--detect",
        "never",
        "-o",
    ] + [str(out)]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_are_skipped_and_counted_never_opened(tmp_path, tiny_weights):
    folder = photos(tmp_path / "in", 2)
    os.mkfifo(folder / "pipe.jpg")
    os.mkfifo(tmp_path / "given.png")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / 'given.png'}\n")
    out = tmp_path / "out.csv"
    result = cli(
        "predict",
        folder,
        folder / "pipe.jpg",
        "--from-list",
        listing,
        "-w",
        tiny_weights,
        "--workers",
        "1",
        "--detect",
        "never",
        "-o",
        out,
        "--strict",
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    assert "2 images" in result.stderr and "2 skipped" in result.stderr
    assert sorted(pd.read_csv(out)["image"]) == sorted(str(p) for p in folder.glob("p*.png"))


def test_unreadable_folders_are_error_rows_and_fail_strict(tmp_path, tiny_weights, monkeypatch):
    folder = photos(tmp_path / "in", 1)
    locked = photos(folder / "locked", 1)
    real_scandir = os.scandir

    def scandir(path="."):
        if os.path.abspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "out.csv"
    result = runner.invoke(app, _in_process_predict(tiny_weights, out, folder, "--strict"))
    assert result.exit_code == 1, result.output
    rows = pd.read_csv(out, keep_default_na=False).set_index("image")
    assert rows.loc[str(locked), "status"] == "error" and "cannot read folder" in rows.loc[str(locked), "error"]
    assert rows.loc[str(folder / "p0.png"), "status"] == "ok"


def test_an_explicit_symlink_loop_is_one_error_row(tmp_path, tiny_weights):
    folder = photos(tmp_path / "in", 1)
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    out = tmp_path / "out.csv"
    result = runner.invoke(app, _in_process_predict(tiny_weights, out, folder, loop))
    assert result.exit_code == 0 and "Traceback" not in result.output
    rows = pd.read_csv(out, keep_default_na=False).set_index("image")
    assert rows.loc[str(loop), "status"] == "error" and "loop" in rows.loc[str(loop), "error"]


# --- 9. one line, never a traceback ------------------------------------------------------------------


def test_environment_errors_are_one_line(tmp_path, tiny_weights):
    folder = photos(tmp_path / "in", 1)
    base = ["-w", tiny_weights, "--workers", "0", "--detect", "never"]
    one_line_error(cli("predict", folder, *base, "-o", tmp_path / "missing" / "out.csv"))
    if os.path.exists("/dev/full"):
        one_line_error(cli("predict", folder, *base, "-o", "/dev/full", "--overwrite"))
    one_line_error(cli("predict", "--from-list", "-", *base, close_stdin=True))
    one_line_error(cli("export", "--onnx", tmp_path / "missing" / "m.onnx", "-w", tiny_weights))
    data = kaggle_csv(tmp_path / "training.csv", rows=2)
    one_line_error(cli("evaluate", data, "-w", tiny_weights, "--json", tmp_path / "missing" / "e.json"))


def test_a_full_disk_while_training_is_one_line_and_leaves_no_temporary_file(tiny_run, tmp_path, monkeypatch):
    data, _ = tiny_run

    def full_disk(*_args, **_kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", full_disk)
    run = tmp_path / "run"
    line = one_line_error(runner.invoke(app, ["train", str(data), *TRAIN, "-o", str(run)]))
    assert "cannot write" in line and not [p for p in run.iterdir() if p.name.startswith(".")]


def test_empty_csvs_are_one_line(tmp_path, tiny_weights):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    header_only = tmp_path / "header.csv"
    header_only.write_text(",".join(coordinate_columns(KAGGLE_POINTS) + ["Image"]) + "\n")
    for data in (empty, header_only):
        one_line_error(runner.invoke(app, ["train", str(data), *TRAIN, "-o", str(tmp_path / "run")]))
        one_line_error(runner.invoke(app, ["evaluate", str(data), "-w", str(tiny_weights)]))


def test_damaged_metrics_on_resume_is_one_line(tiny_run, tmp_path):
    _, source = tiny_run
    run = tmp_path / "run"
    shutil.copytree(source, run)
    for damage in ('{"epoch": 1, "train_loss": 0.1', "[1, 2]\n", "\x00\x01\n"):
        (run / "metrics.jsonl").write_text(damage)
        line = one_line_error(
            runner.invoke(
                app, ["train", "--resume", str(run), "--epochs", "2", "--workers", "0", "--quiet", "--device", "cpu"]
            )
        )
        assert "metrics.jsonl" in line


MALFORMED_SPECS = [
    None,
    [],
    "spec",
    {"keypoints": list(KAGGLE_POINTS), "input_size": 48, "framing": {"scale": 1.3, "shift": 0.3}},
    {"arch": "fkpnet_tiny", "input_size": 48, "framing": {"scale": 1.3, "shift": 0.3}},
    {"arch": "fkpnet_tiny", "keypoints": "abc", "input_size": 48, "framing": {"scale": 1.3, "shift": 0.3}},
    {"arch": "fkpnet_tiny", "keypoints": list(KAGGLE_POINTS), "input_size": "48", "framing": {"scale": 1.3}},
    {"arch": "fkpnet_tiny", "keypoints": list(KAGGLE_POINTS), "input_size": 48, "framing": [1.3, 0.3]},
    {"arch": "fkpnet_tiny", "keypoints": list(KAGGLE_POINTS), "input_size": 48, "framing": {"size": 1}},
    {"arch": 7, "keypoints": list(KAGGLE_POINTS), "input_size": 48, "framing": {"scale": 1.3, "shift": 0.3}},
]
NONSENSE_SPECS = [
    {"input_size": 0},
    {"input_size": -48},
    {"input_size": True},
    {"input_size": 2},
    {"framing": {"scale": 0.0, "shift": 0.3}},
    {"framing": {"scale": -1.3, "shift": 0.3}},
    {"framing": {"scale": float("nan"), "shift": 0.3}},
    {"pixel_scale": 0.0},
    {"pixel_scale": float("inf")},
]


GOOD_SPEC = ModelSpec("fkpnet_tiny", KAGGLE_POINTS, 48, Framing()).to_dict()


@pytest.mark.parametrize("spec", MALFORMED_SPECS + [dict(GOOD_SPEC, **change) for change in NONSENSE_SPECS])
def test_malformed_or_nonsensical_specs_are_refused(tmp_path, spec):
    weights = write_spec_checkpoint(tmp_path / "bad.pt", spec)
    with pytest.raises(WeightsError):
        load_model(weights)


def test_a_bad_checkpoint_is_one_line_for_every_command(tmp_path):
    weights = write_spec_checkpoint(tmp_path / "bad.pt", {"arch": "fkpnet_tiny", "keypoints": 3})
    folder = photos(tmp_path / "in", 1)
    one_line_error(runner.invoke(app, ["predict", str(folder), "-w", str(weights), "--workers", "0"]))
    one_line_error(runner.invoke(app, ["export", "--onnx", str(tmp_path / "m.onnx"), "-w", str(weights)]))


# --- 10. no silent garbage ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_with_exit_2(tmp_path, value):
    spec = ModelSpec("fkpnet_tiny", KAGGLE_POINTS, 48, Framing())
    model = spec.build()
    state = model.state_dict()
    name = [k for k, v in state.items() if v.is_floating_point()][-1]
    state[name] = state[name].clone().fill_(value)
    weights = write_spec_checkpoint(tmp_path / "nan.pt", state=state)
    folder = photos(tmp_path / "in", 1)
    line = one_line_error(runner.invoke(app, ["predict", str(folder), "-w", str(weights), "--workers", "0"]))
    assert "NaN" in line


def test_a_run_where_every_image_fails_alike_exits_non_zero(tmp_path, tiny_weights, monkeypatch):
    from fkpbatch import inputs

    def missing_library(*_args, **_kwargs):
        raise ImportError("libjpeg.so.62: cannot open shared object file")

    monkeypatch.setattr(inputs, "load_reduced", missing_library)
    folder = photos(tmp_path / "in", 3)
    result = runner.invoke(
        app, ["predict", str(folder), "-w", str(tiny_weights), "--workers", "0", "-o", str(tmp_path / "out.csv")]
    )
    assert result.exit_code == 1, result.output
    assert set(pd.read_csv(tmp_path / "out.csv")["status"]) == {"error"}


def test_training_on_labels_that_are_all_missing_is_refused(tmp_path):
    data = kaggle_csv(tmp_path / "unlabelled.csv", labelled=False)
    line = one_line_error(runner.invoke(app, ["train", str(data), *TRAIN, "-o", str(tmp_path / "run")]))
    assert "label" in line and not (tmp_path / "run" / "best.pt").exists()


# --- 11. options are never silently ignored ----------------------------------------------------------


@pytest.mark.parametrize(
    "option",
    [
        ["--annotate", "ann"],
        ["--resume"],
        ["--shard", "0/2"],
        ["--strict"],
        ["--overwrite"],
        ["--workers", "2"],
        ["--raw-names"],
        ["--detect-on", "device"],
    ],
)
def test_ray_refuses_what_it_does_not_implement(tmp_path, tiny_weights, option):
    folder = photos(tmp_path / "in", 1)
    result = runner.invoke(
        app,
        ["predict", str(folder), "-w", str(tiny_weights), "--engine", "ray", "-o", str(tmp_path / "shards"), *option],
    )
    line = one_line_error(result)
    assert option[0] in line and not (tmp_path / "shards").exists()


@pytest.mark.parametrize("option", [["--num-gpus", "1"], ["--concurrency", "3"], ["--ray-address", "auto"]])
def test_local_engine_refuses_ray_options(tmp_path, tiny_weights, option):
    folder = photos(tmp_path / "in", 1)
    line = one_line_error(runner.invoke(app, ["predict", str(folder), "-w", str(tiny_weights), *option]))
    assert option[0] in line


def test_ray_checks_points_68_and_runtime_before_starting(tmp_path, tiny_weights):
    pytest.importorskip("ray")
    folder = photos(tmp_path / "in", 1)
    base = ["predict", str(folder), "-w", str(tiny_weights), "--engine", "ray", "-o", str(tmp_path / "shards")]
    assert "--points 68" in one_line_error(runner.invoke(app, [*base, "--points", "68"]))
    entry = [sys.executable, "-m", "fkpbatch", *base[:3], str(tiny_weights), *base[4:]]  # the parser: real entry point
    bad = subprocess.run([*entry, "--runtime", "tensorrt"], capture_output=True, text=True, timeout=120)
    assert "--runtime" in one_line_error(bad)


def test_merge_check_takes_the_shard_count_from_the_shards(tmp_path, tiny_weights):
    folder = photos(tmp_path / "in", 8)
    (folder / "README.txt").write_text("not an image: predict skips it, so no shard holds it")
    base = ["predict", str(folder), "-w", str(tiny_weights), "--workers", "0", "--detect", "never"]
    outputs = []
    for k in range(4):
        out = tmp_path / f"part{k}.csv"
        assert runner.invoke(app, [*base, "--shard", f"{k}/4", "-o", str(out)]).exit_code == 0
        outputs.append(out)
    merge = ["merge", "--check", str(folder), "-o"]
    complete = runner.invoke(app, [*merge, str(tmp_path / "all.csv"), *map(str, outputs)])
    assert complete.exit_code == 0, complete.output  # README.txt is not reported missing
    lost = next(k for k, out in enumerate(outputs) if len(pd.read_csv(out)))
    given = [str(o) for k, o in enumerate(outputs) if k != lost]  # a shard whose output was lost
    result = runner.invoke(app, [*merge, str(tmp_path / "m.csv"), *given])
    assert result.exit_code == 1
    assert f"shard {lost}/4" in result.output and "README" not in result.output
    for out in outputs:  # no sidecar, no record: the count is not guessed from how many files were given
        (tmp_path / f"{out.name}.fkpbatch.json").unlink()
    result = runner.invoke(app, [*merge, str(tmp_path / "m2.csv"), *given])
    assert result.exit_code == 2 and "--shards" in result.output
    assert not (tmp_path / "m2.csv").exists()  # refused before writing: the rerun with --shards N needs no --overwrite
    result = runner.invoke(app, [*merge, str(tmp_path / "m3.csv"), "--shards", "4", *given])
    assert result.exit_code == 1 and f"shard {lost}/4" in result.output


# --- 12. every architecture trains with channels-last at odd batch sizes ------------------------------

TRAIN_STEPS = textwrap.dedent("""
    import sys, torch
    from fkpbatch.models import create_model
    from fkpbatch.train import masked_loss
    arch, steps = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    model = create_model(arch, num_keypoints=15).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for batch in (3, 5):
        print(f"batch {batch}", file=sys.stderr, flush=True)
        for _ in range(steps):
            images = torch.rand(batch, 1, 64, 64).contiguous(memory_format=torch.channels_last)
            loss = masked_loss(model(images)["keypoints"].float(), torch.rand(batch, 15, 2), "l1")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert torch.isfinite(loss)
""")


def _architectures():
    from fkpbatch.models import list_models

    return list_models()


@pytest.mark.parametrize("arch", _architectures())
def test_every_architecture_trains_channels_last_without_a_native_crash(arch):
    """In a subprocess, so a native crash (the strided 1x1 conv backward on AVX-512) fails the test
    instead of killing pytest; batch sizes 3 and 5 as train.py runs them (channels-last)."""
    steps = 1 if arch == "seed" else 2
    result = subprocess.run(
        [PY, "-c", TRAIN_STEPS, arch, str(steps)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{arch}: exit {result.returncode}\n{result.stderr[-2000:]}"


# --- 13. the seed network's ONNX fallback is quiet -----------------------------------------------------


def test_predict_with_a_seed_checkpoint_prints_no_exporter_graph(tmp_path):
    spec = ModelSpec("seed", KAGGLE_POINTS, 96, Framing())
    torch.manual_seed(0)
    weights = tmp_path / "seed.pt"
    save_checkpoint(weights, spec, spec.build())
    folder = photos(tmp_path / "in", 2)
    env = {**ENV, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    predict = ["predict", str(folder), "-w", str(weights), "--workers", "0", "--detect", "never", "--device", "cpu"]
    result = subprocess.run(
        [PY, "-m", "fkpbatch", *predict],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for text in (result.stdout, result.stderr):
        assert "Torch IR" not in text and "aten::" not in text, text[:2000]
    assert len(result.stdout.splitlines()) == 3 and len(pd.read_csv(io.StringIO(result.stdout))) == 2
    assert len(result.stderr.splitlines()) <= 3, result.stderr[:2000]


def test_a_failing_onnx_export_falls_back_quietly(capfd, tmp_path, monkeypatch):
    from contextlib import nullcontext

    from fkpbatch import export
    from fkpbatch.engine import Predictor

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(export, "_fixed_pools", lambda *args: nullcontext())  # the seed net unexportable again
    spec = ModelSpec("seed", KAGGLE_POINTS, 96, Framing())
    predictor = Predictor(spec.build().eval(), spec, torch.device("cpu"), "auto")
    assert predictor.onnx is None  # fell back to PyTorch
    out, err = capfd.readouterr()
    assert "Torch IR" not in out + err and "aten::" not in out + err and len((out + err).splitlines()) < 5


class _Garbage:
    """Unreachable once made (a reference cycle): only the garbage collector destroys it."""

    destroyed_in: list[int] = []

    def __init__(self):
        self.cycle = self

    def __del__(self):
        _Garbage.destroyed_in.append(os.getpid())


def test_garbage_is_collected_before_workers_are_forked(tmp_path, tiny_weights):
    """An earlier predictor's onnxruntime session, unreachable but not yet collected, hung a forked
    worker that collected it (its thread pool's locks copied mid-use): predict collects first."""
    import gc

    from fkpbatch.engine import PredictOptions, Predictor

    folder = photos(tmp_path / "in", 2)
    predictor = Predictor.load(tiny_weights, "cpu")
    _Garbage.destroyed_in.clear()
    gc.disable()  # only an explicit collection can destroy it now
    try:
        _Garbage()
        results = list(predictor.predict_paths([folder], PredictOptions(workers=2, detect="never")))
    finally:
        gc.enable()
    assert len(results) == 2 and _Garbage.destroyed_in == [os.getpid()]
