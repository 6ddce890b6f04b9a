"""Weights files (fkpbatch.checkpoint): a corrupt, foreign, malformed, nonsensical or non-finite
checkpoint is refused with one line by every command, never half-used."""

import pytest
import torch

from fkpbatch import checkpoint
from fkpbatch.checkpoint import ModelSpec, load_model
from fkpbatch.errors import WeightsError
from fkpbatch.keypoints import KAGGLE_POINTS
from fkpbatch.transforms import Framing

from conftest import REPO, grey_pngs, invoke, one_line_error

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


def test_corrupt_or_foreign_weights_exit_2_with_one_line(mixed_folder, tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 garbage")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    text = tmp_path / "notes.pt"
    text.write_text("a,b\n")  # torch's unpickler fails on it with an IndexError
    for weights, message in [
        (corrupt, "is not a readable PyTorch checkpoint"),
        (text, "is not a readable PyTorch checkpoint"),
        (REPO / "examples" / "couple.jpg", "is not a readable PyTorch checkpoint"),
        (foreign, "was not written by fkpbatch train"),
    ]:
        result = invoke("predict", mixed_folder, "-w", weights)
        assert result.exit_code == 2 and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


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
    folder = grey_pngs(tmp_path / "in", 1)
    one_line_error(invoke("predict", folder, "-w", weights, "--workers", "0"))
    one_line_error(invoke("export", "--onnx", tmp_path / "m.onnx", "-w", weights))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_with_exit_2(tmp_path, value):
    spec = ModelSpec("fkpnet_tiny", KAGGLE_POINTS, 48, Framing())
    model = spec.build()
    state = model.state_dict()
    name = [k for k, v in state.items() if v.is_floating_point()][-1]
    state[name] = state[name].clone().fill_(value)
    weights = write_spec_checkpoint(tmp_path / "nan.pt", state=state)
    folder = grey_pngs(tmp_path / "in", 1)
    line = one_line_error(invoke("predict", folder, "-w", weights, "--workers", "0"))
    assert "NaN" in line
