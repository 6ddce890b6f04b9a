"""The seed network of the Kaggle notebook: a ResNet-50-style trunk (two stages) and a dense head."""

from __future__ import annotations

import torch
from torch import nn

from .layers import pointwise_conv
from .registry import register_model


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    conv = (
        pointwise_conv(cin, cout, stride) if kernel == 1 else nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2)
    )
    return [conv, nn.BatchNorm2d(cout)]


class Bottleneck(nn.Module):
    """Keras-style identity/conv block: 1x1 -> 3x3 -> 1x1 with a (projected) shortcut."""

    def __init__(self, cin: int, filters: tuple[int, int, int], stride: int = 1, project: bool = False):
        super().__init__()
        f1, f2, f3 = filters
        self.body = nn.Sequential(
            *_conv_bn(cin, f1, 1, stride),
            nn.ReLU(inplace=True),
            *_conv_bn(f1, f2, 3),
            nn.ReLU(inplace=True),
            *_conv_bn(f2, f3, 1),
        )
        self.shortcut = nn.Sequential(*_conv_bn(cin, f3, 1, stride)) if project else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def _stage(cin: int, filters: tuple[int, int, int], stride: int) -> nn.Sequential:
    out = filters[2]
    return nn.Sequential(
        Bottleneck(cin, filters, stride, project=True), Bottleneck(out, filters), Bottleneck(out, filters)
    )


class SeedNet(nn.Module):
    """96x96 grayscale -> 2K coordinates in unit coordinates of the crop.

    The notebook's "AvgPool 2" leaves a 2x2 map (Flatten = 2048); adaptive pooling to 2x2 keeps that
    exact and lets the trunk's stride choices stay the notebook's (stages at stride 2).
    """

    def __init__(self, num_keypoints: int = 15, dropout: float = 0.5):
        super().__init__()
        self.num_keypoints = num_keypoints
        self.features = nn.Sequential(
            nn.ZeroPad2d(3),
            nn.Conv2d(1, 64, 7, stride=2),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2),
            _stage(64, (64, 64, 256), stride=2),
            _stage(256, (128, 128, 512), stride=2),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(2048, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 2048),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(2048, 2 * num_keypoints),
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        coords = self.head(self.features(x)).view(-1, self.num_keypoints, 2) + 0.5
        return {"keypoints": coords}


@register_model
def seed(num_keypoints: int = 15, **kwargs) -> nn.Module:
    """The Kaggle seed network (18,007,710 trainable parameters for 15 keypoints)."""
    return SeedNet(num_keypoints=num_keypoints, **kwargs)
