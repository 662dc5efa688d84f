"""Layers chosen by spatial dimension (2 or 3), so one network definition serves 2D and 3D."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def conv(dim: int, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
         padding: int | None = None, bias: bool = True) -> nn.Module:
    """``Conv2d`` or ``Conv3d``; "same" padding for odd kernels unless ``padding`` is given."""
    cls = nn.Conv3d if dim == 3 else nn.Conv2d
    return cls(in_channels, out_channels, kernel_size, stride=stride,
               padding=(kernel_size - 1) // 2 if padding is None else padding, bias=bias)


def conv_transpose(dim: int, in_channels: int, out_channels: int, kernel_size: int = 2, stride: int = 2) -> nn.Module:
    """``ConvTranspose2d`` / ``ConvTranspose3d`` (default: 2x up-sampling with 2x2(x2) kernels)."""
    cls = nn.ConvTranspose3d if dim == 3 else nn.ConvTranspose2d
    return cls(in_channels, out_channels, kernel_size, stride=stride)


def instance_norm(dim: int, channels: int, affine: bool = True) -> nn.Module:
    return (nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d)(channels, affine=affine)


def max_pool(dim: int, kernel_size: int = 2) -> nn.Module:
    return (nn.MaxPool3d if dim == 3 else nn.MaxPool2d)(kernel_size)


class ConvBlock(nn.Sequential):
    """``n`` x (convolution, optional normalisation, activation).

    ``norm``: None or "instance"; ``activation``: "leaky_relu" (slope 0.2), "relu",
    "tanh" or None; ``stride`` applies to the first convolution only."""

    def __init__(self, dim: int, in_channels: int, out_channels: int, n: int = 1, kernel_size: int = 3,
                 stride: int = 1, norm: str | None = None, activation: str | None = "leaky_relu"):
        layers = []
        for i in range(n):
            layers.append(conv(dim, in_channels if i == 0 else out_channels, out_channels, kernel_size,
                               stride=stride if i == 0 else 1, bias=norm is None))
            if norm == "instance":
                layers.append(instance_norm(dim, out_channels))
            elif norm is not None:
                raise ValueError(f"unknown norm {norm!r}")
            if activation is not None:
                layers.append(make_activation(activation))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """``x + (conv 3x3(x3), IN, activation, conv 3x3(x3), IN)(x)``: the residual block of CycleGAN
    and MUNIT (used by FIRE's G, F and non-rigid subnet, and by the disentangled content encoders)."""

    def __init__(self, dim: int, channels: int, activation: str = "relu"):
        super().__init__()
        self.body = nn.Sequential(ConvBlock(dim, channels, channels, norm="instance", activation=activation),
                                  ConvBlock(dim, channels, channels, norm="instance", activation=None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def make_activation(name: str) -> nn.Module:
    if name == "leaky_relu":
        return nn.LeakyReLU(0.2)
    if name == "relu":
        return nn.ReLU()
    if name == "tanh":
        return nn.Tanh()
    raise ValueError(f"unknown activation {name!r}")


def upsample_to(x: torch.Tensor, shape) -> torch.Tensor:
    """``x (B, C, *s)`` resized to spatial ``shape`` by (bi/tri)linear interpolation."""
    if tuple(x.shape[2:]) == tuple(shape):
        return x
    mode = "trilinear" if x.ndim == 5 else "bilinear"
    return F.interpolate(x, size=tuple(shape), mode=mode, align_corners=True)


def small_init(module: nn.Module, std: float = 1e-5) -> nn.Module:
    """Flow-head initialisation of VoxelMorph: weights ~ N(0, std), zero bias: the network
    starts near the identity but gradients still reach the layers before it."""
    with torch.no_grad():
        module.weight.normal_(0.0, std)
        if module.bias is not None:
            module.bias.zero_()
    return module
