"""--engine ray gives the rows a local run gives (a local Ray instance with 2 CPUs)."""

import io
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from fkpbatch.cli import app

from conftest import REPO

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'fkpbatch[ray]'")
runner = CliRunner()


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _sorted(frame):
    return frame.sort_values(["image", "face"]).reset_index(drop=True)


def test_ray_run_equals_the_local_run(tmp_path, tiny_weights, local_ray):
    folder = tmp_path / "faces"
    folder.mkdir()
    for photo in sorted((REPO / "examples").glob("*.jpg")):
        shutil.copy(photo, folder / photo.name)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("skipped")
    local = pd.read_csv(
        io.StringIO(
            runner.invoke(app, ["predict", str(folder), "-w", str(tiny_weights), "--workers", "0", "-q"]).stdout
        )
    )
    out = tmp_path / "ray-out"
    result = runner.invoke(
        app,
        ["predict", str(folder), "-w", str(tiny_weights), "--engine", "ray", "-o", str(out), "-q", "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    shards = pd.concat([pd.read_csv(p) for p in sorted(out.glob("*.csv"))])
    assert list(shards.columns) == list(local.columns)
    local, shards = _sorted(local), _sorted(shards)
    assert local["image"].tolist() == shards["image"].tolist() and local["status"].tolist() == shards["status"].tolist()
    numeric = local.select_dtypes("number").columns
    pd.testing.assert_frame_equal(local[numeric], shards[numeric], check_dtype=False, atol=0.02)


def test_ray_refuses_a_non_empty_output_folder(tmp_path, tiny_weights):
    (tmp_path / "old.csv").write_text("x")
    result = runner.invoke(
        app, ["predict", str(REPO / "examples"), "-w", str(tiny_weights), "--engine", "ray", "-o", str(tmp_path)]
    )
    assert result.exit_code == 2 and "is not empty" in result.stderr
