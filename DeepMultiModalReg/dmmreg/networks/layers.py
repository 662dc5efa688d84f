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
    """``x (B, C, *s)`` resized to spatial ``shape`` by (bi/tri)linear interpolation, corners on
    corners (for maps that span the same extent, e.g. an output resized to the input's shape)."""
    if tuple(x.shape[2:]) == tuple(shape):
        return x
    mode = "trilinear" if x.ndim == 5 else "bilinear"
    return F.interpolate(x, size=tuple(shape), mode=mode, align_corners=True)


def upsample_doubling(x: torch.Tensor, shape) -> torch.Tensor:
    """Undo a stride-2 level: ``x (B, C, *m)``, whose voxel ``j`` sits on voxel ``2 j`` of the finer
    level (a stride-2, padding-1 convolution's output), interpolated linearly onto the finer
    level's ``shape``, so each finer voxel ``i`` reads position ``i / 2`` (edges repeated past
    the last coarse voxel).  ``upsample_to`` would stretch the map corner to corner instead,
    shifting features by up to a voxel per level."""
    mode = "trilinear" if x.ndim == 5 else "bilinear"
    exact = tuple(2 * m - 1 for m in x.shape[2:])
    x = F.interpolate(x, size=exact, mode=mode, align_corners=True) if any(m > 1 for m in x.shape[2:]) else \
        x.expand(*x.shape[:2], *exact)
    for axis, n in enumerate(shape):
        have = x.shape[2 + axis]
        if have > n:
            x = x.narrow(2 + axis, 0, n)
        elif have < n:
            edge = x.narrow(2 + axis, have - 1, 1)
            x = torch.cat([x, *([edge] * (n - have))], dim=2 + axis)
    return x


def sample_feature_points(features: torch.Tensor, positions: list[torch.Tensor], smoothing: int = 1) -> torch.Tensor:
    """Features at a tensor grid of points: ``features (B, C, *m)``, ``positions[axis]`` the
    points' coordinates along that axis in voxels of ``features`` (the grid is their outer
    product); linear interpolation, edges repeated outside.  ``smoothing``: first average each
    axis over that many voxels centred on each voxel (odd), so a point reads its neighbourhood."""
    dim = features.ndim - 2
    if smoothing > 1:
        pool = F.avg_pool3d if dim == 3 else F.avg_pool2d
        for axis in range(dim):
            kernel = [1] * dim
            kernel[axis] = smoothing
            padding = [0] * dim
            padding[axis] = smoothing // 2
            features = pool(features, tuple(kernel), stride=1, padding=tuple(padding), count_include_pad=False)
    # normalised coordinates (align_corners=True), last axis of the grid is x = the last array axis
    normalised = [2 * p / max(n - 1, 1) - 1 for p, n in zip(positions, features.shape[2:])]
    mesh = torch.meshgrid(*normalised, indexing="ij")
    grid = torch.stack(mesh[::-1], dim=-1).to(features)
    grid = grid.unsqueeze(0).expand(features.shape[0], *grid.shape)
    return F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=True)


def small_init(module: nn.Module, std: float = 1e-5) -> nn.Module:
    """Flow-head initialisation of VoxelMorph: weights ~ N(0, std), zero bias: the network
    starts near the identity but gradients still reach the layers before it."""
    with torch.no_grad():
        module.weight.normal_(0.0, std)
        if module.bias is not None:
            module.bias.zero_()
    return module
