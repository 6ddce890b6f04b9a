import pytest
import torch

from fkpbatch.errors import UnknownModelError
from fkpbatch.models import create_model, list_models


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
