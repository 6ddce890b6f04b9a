"""fkpnet: a small residual encoder-decoder that predicts one heatmap per keypoint and reads the
coordinates off with a spatial soft-argmax (integral regression).

Why: on a few thousand faces a heatmap head learns faster and generalises better than the seed's
dense regressor, while a 4x-strided map and soft-argmax keep sub-pixel precision. The spread of
each heatmap gives a per-face quality score for free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import pointwise_conv
from .registry import register_model

# Mean heatmap spread (crop units) at which the quality score is 1/e.
QUALITY_SPREAD = 0.03


class BasicBlock(nn.Module):
    """ResNet basic block (3x3, 3x3) with a projected shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(pointwise_conv(cin, cout, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def _layer(cin: int, cout: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(cin, cout, 2), *[BasicBlock(cout, cout) for _ in range(blocks - 1)])


def conv_bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
    )


def soft_argmax(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K, H, W) logits -> unit coordinates (N, K, 2) and spread (N, K), both in crop units."""
    n, k, h, w = logits.shape
    prob = logits.float().flatten(2).softmax(-1).view(n, k, h, w)
    xs = (torch.arange(w, device=logits.device, dtype=prob.dtype) + 0.5) / w
    ys = (torch.arange(h, device=logits.device, dtype=prob.dtype) + 0.5) / h
    px, py = prob.sum(2), prob.sum(3)
    mean_x, mean_y = (px * xs).sum(-1), (py * ys).sum(-1)
    var = (px * xs**2).sum(-1) - mean_x**2 + (py * ys**2).sum(-1) - mean_y**2
    return torch.stack([mean_x, mean_y], -1), var.clamp_min(1e-12).sqrt()


def heatmap_outputs(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """A heatmap network's outputs from its (N, K, H, W) logits: keypoints and spread by soft-argmax,
    and the per-face quality score the spread gives."""
    coords, spread = soft_argmax(logits)
    return {"keypoints": coords, "spread": spread, "quality": torch.exp(-spread.mean(1) / QUALITY_SPREAD)}


class FkpNet(nn.Module):
    """Encoder at strides 2..16, a two-step top-down decoder to stride 4, one heatmap per point."""

    def __init__(
        self,
        num_keypoints: int = 15,
        widths: tuple[int, ...] = (24, 48, 96, 160),
        decoder: tuple[int, int] = (64, 48),
        blocks: int = 2,
    ):
        super().__init__()
        w0, w1, w2, w3 = widths
        d2, d1 = decoder
        self.num_keypoints = num_keypoints
        self.stem = nn.Sequential(nn.Conv2d(1, w0, 3, 2, 1, bias=False), nn.BatchNorm2d(w0), nn.ReLU(inplace=True))
        self.layer1, self.layer2, self.layer3 = _layer(w0, w1, blocks), _layer(w1, w2, blocks), _layer(w2, w3, blocks)
        self.lateral3, self.lateral2 = nn.Conv2d(w3, d2, 1), nn.Conv2d(w2, d2, 1)
        self.lateral1, self.reduce2 = nn.Conv2d(w1, d1, 1), nn.Conv2d(d2, d1, 1)
        self.smooth2, self.smooth1 = conv_bn_relu(d2), conv_bn_relu(d1)
        self.heatmaps = nn.Conv2d(d1, num_keypoints, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        c1 = self.layer1(self.stem(x))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        p2 = self.smooth2(self.lateral2(c2) + F.interpolate(self.lateral3(c3), scale_factor=2.0))
        p1 = self.smooth1(self.lateral1(c1) + F.interpolate(self.reduce2(p2), scale_factor=2.0))
        return heatmap_outputs(self.heatmaps(p1))


@register_model
def fkpnet(num_keypoints: int = 15, **kwargs) -> nn.Module:
    """Default architecture: residual encoder-decoder with integral heatmap regression."""
    return FkpNet(num_keypoints=num_keypoints, **kwargs)


@register_model
def fkpnet_tiny(num_keypoints: int = 15, **kwargs) -> nn.Module:
    """A quarter-width fkpnet for tests and quick experiments."""
    return FkpNet(num_keypoints=num_keypoints, widths=(8, 8, 16, 16), decoder=(16, 8), blocks=1, **kwargs)


@register_model
def fkpnet_small(num_keypoints: int = 15, **kwargs) -> nn.Module:
    """Two-thirds width (16/32/64/128): under half the multiply-adds of fkpnet, for the fast model."""
    return FkpNet(num_keypoints=num_keypoints, widths=(16, 32, 64, 128), decoder=(48, 32), **kwargs)


@register_model
def fkpnet_wide(num_keypoints: int = 15, **kwargs) -> nn.Module:
    """4/3 width (32/64/128/256) with a wider decoder: about 1.9x fkpnet's multiply-adds, for the
    accurate model (fkpnet under-fitted its training faces)."""
    return FkpNet(num_keypoints=num_keypoints, widths=(32, 64, 128, 256), decoder=(96, 64), **kwargs)
