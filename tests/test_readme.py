"""The Python examples of README.md's Usage section run, as written, against the shipped model."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO


def usage_python_blocks() -> list[str]:
    """The ```python blocks between '## Usage' and the next '## ' heading, in order."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Usage")
    end = text.index("\n## ", start + 1)
    return re.findall(r"^```python\n(.*?)^```", text[start:end], flags=re.S | re.M)


def test_the_usage_section_has_python_examples():
    blocks = usage_python_blocks()
    assert len(blocks) >= 3  # a path, an in-memory image, the typed results
    assert any("predict_images" in b for b in blocks) and any("Image.open" in b for b in blocks)


@pytest.mark.parametrize("index", range(len(usage_python_blocks())))
def test_readme_python_example_runs(index, tmp_path):
    if not (REPO / "weights" / "fkpnet68.pt").exists():
        pytest.fail("weights/fkpnet68.pt is missing: the README examples use the shipped model")
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    script = tmp_path / f"example_{index}.py"
    script.write_text(usage_python_blocks()[index], encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, f"README example {index} failed:\n{usage_python_blocks()[index]}\n{run.stderr[-3000:]}"
    assert run.stdout.strip(), "an example that prints nothing shows the reader nothing"
