"""The architectures (fkpbatch.models): the registry, every model's outputs, and every one training
channels-last at odd batch sizes without a native crash."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fkpbatch.errors import UnknownModelError
from fkpbatch.models import create_model, list_models

from conftest import REPO


def test_seed_has_the_notebooks_trainable_parameter_count():
    model = create_model("seed", num_keypoints=15)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 18_007_710


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_maps_a_batch_to_unit_keypoints(name):
    model = create_model(name, num_keypoints=7).eval()
    with torch.inference_mode():
        out = model(torch.rand(2, 1, 96, 96))
    assert out["keypoints"].shape == (2, 7, 2)
    if "quality" in out:
        assert out["quality"].shape == (2,)
        assert ((out["quality"] >= 0) & (out["quality"] <= 1)).all()


def test_unknown_architecture_names_the_choices():
    with pytest.raises(UnknownModelError, match="unknown arch 'resnet9000'; choose from .*fkpnet.*seed"):
        create_model("resnet9000")


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


@pytest.mark.slow
@pytest.mark.parametrize("arch", list_models())
def test_every_architecture_trains_channels_last_without_a_native_crash(arch):
    """In a subprocess, so a native crash (the strided 1x1 conv backward on AVX-512) fails the test
    instead of killing pytest; batch sizes 3 and 5 as train.py runs them (channels-last)."""
    steps = 1 if arch == "seed" else 2
    result = subprocess.run(
        [sys.executable, "-c", TRAIN_STEPS, arch, str(steps)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{arch}: exit {result.returncode}\n{result.stderr[-2000:]}"
