"""--engine ray (fkpbatch.ray_engine) gives the rows a local run gives (a local Ray instance with 2
CPUs), and refuses, before starting, what it does not implement; the local engine refuses Ray's
options."""

import importlib.util
import io
import shutil

import pandas as pd
import pytest

from conftest import REPO, fkpbatch_process, grey_pngs, invoke, one_line_error

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray is an optional extra: pip install 'fkpbatch[ray]'"
)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'fkpbatch[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _sorted(frame):
    return frame.sort_values(["image", "face"]).reset_index(drop=True)


@pytest.mark.slow
def test_ray_run_equals_the_local_run(tmp_path, tiny_weights, local_ray):
    folder = tmp_path / "faces"
    folder.mkdir()
    for photo in sorted((REPO / "examples").glob("*.jpg")):
        shutil.copy(photo, folder / photo.name)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("skipped")
    local = pd.read_csv(io.StringIO(invoke("predict", folder, "-w", tiny_weights, "--workers", "0", "-q").stdout))
    out = tmp_path / "ray-out"
    result = invoke("predict", folder, "-w", tiny_weights, "--engine", "ray", "-o", out, "-q", "--device", "cpu")
    assert result.exit_code == 0, result.output
    shards = pd.concat([pd.read_csv(p) for p in sorted(out.glob("*.csv"))])
    assert list(shards.columns) == list(local.columns)
    local, shards = _sorted(local), _sorted(shards)
    assert local["image"].tolist() == shards["image"].tolist() and local["status"].tolist() == shards["status"].tolist()
    numeric = local.select_dtypes("number").columns
    pd.testing.assert_frame_equal(local[numeric], shards[numeric], check_dtype=False, atol=0.02)


@needs_ray
def test_ray_refuses_a_non_empty_output_folder(tmp_path, tiny_weights):
    (tmp_path / "old.csv").write_text("x")
    result = invoke("predict", REPO / "examples", "-w", tiny_weights, "--engine", "ray", "-o", tmp_path)
    assert result.exit_code == 2 and "is not empty" in result.stderr


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
    folder = grey_pngs(tmp_path / "in", 1)
    result = invoke("predict", folder, "-w", tiny_weights, "--engine", "ray", "-o", tmp_path / "shards", *option)
    line = one_line_error(result)
    assert option[0] in line and not (tmp_path / "shards").exists()


@needs_ray
def test_ray_checks_points_68_and_runtime_before_starting(tmp_path, tiny_weights):
    folder = grey_pngs(tmp_path / "in", 1)
    base = ["predict", folder, "-w", tiny_weights, "--engine", "ray", "-o", tmp_path / "shards"]
    assert "--points 68" in one_line_error(invoke(*base, "--points", "68"))
    bad = fkpbatch_process(*base, "--runtime", "tensorrt")  # the parser: the real entry point
    assert "--runtime" in one_line_error(bad)


@pytest.mark.parametrize("option", [["--num-gpus", "1"], ["--concurrency", "3"], ["--ray-address", "auto"]])
def test_local_engine_refuses_ray_options(tmp_path, tiny_weights, option):
    folder = grey_pngs(tmp_path / "in", 1)
    line = one_line_error(invoke("predict", folder, "-w", tiny_weights, *option))
    assert option[0] in line
