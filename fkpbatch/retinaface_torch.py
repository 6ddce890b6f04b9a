"""RetinaFace-MobileNet0.25 rebuilt in PyTorch, its weights read from the ONNX graph's initializers.

The network is biubug6's ``cfg_mnet`` RetinaFace with every batch norm folded into its convolution
(as the ONNX export has it): a MobileNetV1-0.25 body (stages of 1/8, 1/16 and 1/32 scale), an FPN,
one SSH block per level and 1x1 heads for scores, boxes and five landmarks. Its outputs equal the
ONNX graph's (``loc``, ``conf`` after softmax, ``landmarks``), so the priors and decoding of
:mod:`fkpbatch.detect` serve both; it runs batched, on any device (fkpbatch runs it in fp32).

Batches of different sizes share a canvas (``forward(x, sizes=...)``): each image sits top-left and
every layer's output is zeroed outside the image's extent at that scale, which is what the network's
own zero padding gives an image alone, so each image's outputs equal its unbatched ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_SLOPE = 0.1  # every LeakyRelu of the graph (MobileNet body, FPN and SSH: out_channels <= 64)
# MobileNetV1-0.25: (output channels, stride) of each depthwise-separable block after the stem.
_STAGES = {
    "stage1": [(16, 1), (32, 2), (32, 1), (64, 2), (64, 1)],
    "stage2": [(128, 2), (128, 1), (128, 1), (128, 1), (128, 1), (128, 1)],
    "stage3": [(256, 2), (256, 1)],
}


class _Conv(nn.Module):
    """Convolution (batch norm folded in) and an optional LeakyReLU; ``onnx`` = the ONNX node's
    name without its ``/Conv`` suffix, used to find the weights."""

    def __init__(self, onnx: str, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.onnx, self.act = onnx, act
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.leaky_relu(x, _SLOPE) if self.act else x


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class _Extent:
    """Zeroes a feature map outside each image's extent: ``sizes`` (N, 2) heights and widths on a
    canvas of ``canvas`` (H, W) px, a multiple of 32, so a level of h rows has stride H / h."""

    def __init__(self, sizes: torch.Tensor, canvas: tuple[int, int]):
        self.sizes, self.canvas = sizes, canvas
        self.masks: dict[tuple[int, int, torch.dtype], torch.Tensor] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        key = (h, w, x.dtype)
        if key not in self.masks:
            stride = torch.tensor([self.canvas[0] // h, self.canvas[1] // w], device=x.device)
            extent = (self.sizes + stride - 1) // stride  # ceil: what the strided convolutions keep
            rows = torch.arange(h, device=x.device)[None, :, None] < extent[:, 0, None, None]
            cols = torch.arange(w, device=x.device)[None, None, :] < extent[:, 1, None, None]
            self.masks[key] = (rows & cols)[:, None].to(x.dtype)
        return x * self.masks[key]


class _SSH(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        self.conv3 = _Conv(f"/{name}/conv3X3/conv3X3.0", 64, 32, 3, act=False)
        self.conv5_1 = _Conv(f"/{name}/conv5X5_1/conv5X5_1.0", 64, 16, 3)
        self.conv5_2 = _Conv(f"/{name}/conv5X5_2/conv5X5_2.0", 16, 16, 3, act=False)
        self.conv7_2 = _Conv(f"/{name}/conv7X7_2/conv7X7_2.0", 16, 16, 3)
        self.conv7_3 = _Conv(f"/{name}/conv7x7_3/conv7x7_3.0", 16, 16, 3, act=False)

    def forward(self, x: torch.Tensor, mask=_identity) -> torch.Tensor:
        # the ONNX graph computes conv5X5_1 twice with the same weights; once is the same result
        mid = mask(self.conv5_1(x))
        return F.relu(torch.cat([self.conv3(x), self.conv5_2(mid), self.conv7_3(mask(self.conv7_2(mid)))], 1))


class RetinaFaceNet(nn.Module):
    """Input: (N, 3, H, W) float BGR minus the means (104, 117, 123), any H and W. Output: ``loc``
    (N, A, 4), ``conf`` (N, A, 2, softmaxed), ``landmarks`` (N, A, 10), A in the priors' order."""

    def __init__(self):
        super().__init__()
        layers, cin = [_Conv("/fx/stage1/stage1.0/stage1.0.0", 3, 8, 3, 2)], 8
        self.stages = nn.ModuleList()
        for stage, blocks in _STAGES.items():
            offset = 1 if stage == "stage1" else 0
            for i, (cout, stride) in enumerate(blocks, offset):
                base = f"/fx/{stage}/{stage}.{i}/{stage}.{i}"
                layers += [
                    _Conv(f"{base}.0/{stage}.{i}.0.0", cin, cin, 3, stride, groups=cin),
                    _Conv(f"{base}.1/{stage}.{i}.1.0", cin, cout, 1),
                ]
                cin = cout
            self.stages.append(nn.Sequential(*layers))
            layers = []
        self.outputs = nn.ModuleList(
            _Conv(f"/fpn/output{i}/output{i}.0", c, 64, 1) for i, c in ((1, 64), (2, 128), (3, 256))
        )
        self.merge1 = _Conv("/fpn/merge1/merge1.0", 64, 64, 3)
        self.merge2 = _Conv("/fpn/merge2/merge2.0", 64, 64, 3)
        self.ssh = nn.ModuleList(_SSH(f"ssh{i}") for i in (1, 2, 3))
        self.heads = nn.ModuleDict(
            {
                head: nn.ModuleList(_Conv(f"/{head}/{head}.{i}", 64, 2 * width, 1, act=False) for i in range(3))
                for head, width in (("class_head", 2), ("bbox_head", 4), ("landmark_head", 10))
            }
        )

    def forward(
        self, x: torch.Tensor, sizes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``sizes``: (N, 2) int heights and widths of the images on a canvas whose sides are
        multiples of 32 (see the module's docstring); None = each image fills ``x``."""
        if sizes is not None and (x.shape[2] % 32 or x.shape[3] % 32):
            raise ValueError(f"a canvas with sizes must be a multiple of 32 px, not {tuple(x.shape[2:])}")
        mask = _identity if sizes is None else _Extent(sizes.to(x.device), (x.shape[2], x.shape[3]))
        features = []
        # only what a 3x3 convolution reads must be zero outside the extents: a depthwise layer's
        # output feeds a 1x1 convolution, whose output is masked before the next 3x3 one
        for stage in self.stages:
            for layer in stage:
                x = layer(x) if layer.conv.groups > 1 else mask(layer(x))
            features.append(x)
        o1, o2, o3 = (conv(f) for conv, f in zip(self.outputs, features))
        o3 = mask(o3)
        o2 = mask(self.merge2(mask(o2 + F.interpolate(o3, size=o2.shape[2:], mode="nearest"))))
        o1 = mask(self.merge1(mask(o1 + F.interpolate(o2, size=o1.shape[2:], mode="nearest"))))
        levels = [ssh(f, mask) for ssh, f in zip(self.ssh, (o1, o2, o3))]
        n = x.shape[0]

        def head(name: str, width: int) -> torch.Tensor:
            return torch.cat(
                [conv(f).permute(0, 2, 3, 1).reshape(n, -1, width) for conv, f in zip(self.heads[name], levels)], 1
            )

        return head("bbox_head", 4), head("class_head", 2).softmax(-1), head("landmark_head", 10)

    @classmethod
    def from_onnx(cls, model: bytes | str) -> RetinaFaceNet:
        """The network with the weights of the ONNX graph ``model`` (its bytes or its path)."""
        import onnx
        from onnx import numpy_helper

        graph = (onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model)).graph
        tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        aliases = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
        convs = {n.name.removesuffix("/Conv"): n for n in graph.node if n.op_type == "Conv"}
        net = cls()
        for module in net.modules():
            if isinstance(module, _Conv):
                node = convs[module.onnx]
                for param, name in zip((module.conv.weight, module.conv.bias), node.input[1:3]):
                    value = torch.from_numpy(tensors[aliases.get(name, name)].copy())
                    if value.shape != param.shape:
                        raise ValueError(f"{module.onnx}: ONNX {tuple(value.shape)} vs network {tuple(param.shape)}")
                    param.data.copy_(value)
        return net.eval().requires_grad_(False)
