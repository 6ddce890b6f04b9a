"""Layers shared by the architectures."""

from __future__ import annotations

import torch
from torch import nn


class StridedPointwiseConv(nn.Conv2d):
    """A 1x1 convolution with a stride, computed as subsample-then-convolve at stride 1.

    Why: PyTorch's CPU backward pass of a *strided* 1x1 convolution on channels-last tensors with
    few input channels (4 or 8 seen) crashes the process (segmentation fault, "double free or
    corruption") on AVX-512 CPUs. Subsampling first is the same arithmetic with the same
    parameters, so channels-last (1.4x faster training) stays on for every architecture.
    """

    def __init__(self, cin: int, cout: int, stride: int, bias: bool = True):
        super().__init__(cin, cout, 1, bias=bias)
        self.step = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x[:, :, :: self.step, :: self.step])


def pointwise_conv(cin: int, cout: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    """A 1x1 convolution; strided ones avoid the crashing kernel (see StridedPointwiseConv)."""
    return StridedPointwiseConv(cin, cout, stride, bias) if stride > 1 else nn.Conv2d(cin, cout, 1, bias=bias)
