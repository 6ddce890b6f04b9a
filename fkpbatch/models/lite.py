"""fkpnet_lite0: an EfficientNet-Lite0 encoder under fkpnet's heatmap head.

Why: the from-scratch fkpnets under-fit a few thousand faces; an encoder whose layers match the
ImageNet-pretrained EfficientNet-Lite0 (``training/pretrained_init.py`` converts those weights; they
are a training-time input only) starts from features that already know edges and parts. Lite is
EfficientNet without squeeze-excitation and with ReLU6, which keeps it fast on CPUs and in ONNX.
Module names mirror the pretrained state dict's (``_blocks.3._depthwise_conv`` ->
``blocks.3.depthwise_conv``) so the conversion is a rename.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fkpnet import conv_bn_relu, heatmap_outputs
from .registry import register_model

# EfficientNet-Lite0's 16 MBConv blocks: (expansion, kernel, stride, output channels).
LITE0_BLOCKS = (
    (1, 3, 1, 16),
    (6, 3, 2, 24),
    (6, 3, 1, 24),
    (6, 5, 2, 40),
    (6, 5, 1, 40),
    (6, 3, 2, 80),
    (6, 3, 1, 80),
    (6, 3, 1, 80),
    (6, 5, 1, 112),
    (6, 5, 1, 112),
    (6, 5, 1, 112),
    (6, 5, 2, 192),
    (6, 5, 1, 192),
    (6, 5, 1, 192),
    (6, 5, 1, 192),
    (6, 3, 1, 320),
)
# Blocks whose outputs feed the decoder: strides 4, 8, 16 and 32.
TAPS = (2, 4, 10, 15)
BN_EPS = 1e-3  # TensorFlow's, which the pretrained statistics were computed with


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


def _upsample(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Nearest upsampling to ``like``'s map size (input sizes need not be multiples of 32)."""
    return F.interpolate(x, size=like.shape[-2:])


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project; identity shortcut when shapes match."""

    def __init__(self, cin: int, expansion: int, kernel: int, stride: int, cout: int):
        super().__init__()
        mid = cin * expansion
        if expansion != 1:
            self.expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self.bn0 = _bn(mid)
        self.depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self.bn1 = _bn(mid)
        self.project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.bn0(self.expand_conv(x))) if hasattr(self, "expand_conv") else x
        y = self.bn2(self.project_conv(F.relu6(self.bn1(self.depthwise_conv(y)))))
        return x + y if self.residual else y


class FkpNetLite(nn.Module):
    """Lite0 encoder (grayscale stem), a three-step top-down decoder to stride 4, one heatmap per point."""

    def __init__(self, num_keypoints: int = 15, decoder: tuple[int, int] = (96, 64)):
        super().__init__()
        wide, narrow = decoder
        self.num_keypoints = num_keypoints
        # One input channel: a gray image replicated to RGB is the same as summing the RGB filters.
        self.conv_stem = nn.Conv2d(1, 32, 3, 2, 1, bias=False)
        self.bn0 = _bn(32)
        blocks, cin = [], 32
        for expansion, kernel, stride, cout in LITE0_BLOCKS:
            blocks.append(MBConv(cin, expansion, kernel, stride, cout))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        c4, c8, c16, c32 = (LITE0_BLOCKS[i][3] for i in TAPS)
        self.lateral32, self.lateral16, self.lateral8 = (
            nn.Conv2d(c32, wide, 1),
            nn.Conv2d(c16, wide, 1),
            nn.Conv2d(c8, wide, 1),
        )
        self.lateral4, self.reduce8 = nn.Conv2d(c4, narrow, 1), nn.Conv2d(wide, narrow, 1)
        self.smooth16, self.smooth8, self.smooth4 = conv_bn_relu(wide), conv_bn_relu(wide), conv_bn_relu(narrow)
        self.heatmaps = nn.Conv2d(narrow, num_keypoints, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = F.relu6(self.bn0(self.conv_stem(x * 2 - 1)))  # the pretrained encoder saw pixels in [-1, 1]
        taps = []
        for index, block in enumerate(self.blocks):
            y = block(y)
            if index in TAPS:
                taps.append(y)
        c4, c8, c16, c32 = taps
        p16 = self.smooth16(self.lateral16(c16) + _upsample(self.lateral32(c32), c16))
        p8 = self.smooth8(self.lateral8(c8) + _upsample(p16, c8))
        p4 = self.smooth4(self.lateral4(c4) + _upsample(self.reduce8(p8), c4))
        return heatmap_outputs(self.heatmaps(p4))


@register_model
def fkpnet_lite0(num_keypoints: int = 15, **kwargs) -> nn.Module:
    """EfficientNet-Lite0 encoder (ImageNet-pretrainable) with fkpnet's heatmap decoder."""
    return FkpNetLite(num_keypoints=num_keypoints, **kwargs)
