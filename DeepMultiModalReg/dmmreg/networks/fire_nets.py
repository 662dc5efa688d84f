"""The networks of FIRE (000_9877b33c2dcaa129.txt, sec. 3.2-3.3), for 2D and 3D: the synthesis
encoder G, a synthesis decoder F, and the affine and non-rigid subnetworks of a transformation
network.  They work in voxel units and normalised coordinates only; the geometry (warping,
physical units) is in :mod:`dmmreg.methods.fire`.  Open details and the choices made for them
are listed in that module's docstring."""

from __future__ import annotations

import torch
from torch import nn

from .layers import ConvBlock, ResidualBlock, conv, instance_norm, small_init, upsample_doubling


def cyclegan_init(module: nn.Module) -> nn.Module:
    """The CycleGAN initialisation (its "normal" init, gain 0.02) of G and F, whose design FIRE
    adopts (sec. 3.2): convolution weights ~ N(0, 0.02), zero biases, instance-norm scales
    ~ N(1, 0.02).  With it the Tanh output starts unsaturated (PyTorch's default init of the
    final 1x1 convolution, fan-in 3, can start it saturated, where it learns slowly)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.InstanceNorm2d, nn.InstanceNorm3d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return module


class SynthesisEncoder(nn.Sequential):
    """G (sec. 3.2): ``(B, 1, *shape) -> (B, channels[2], *ceil(shape / 4))``.

    A 7x7 block of ``channels[0]`` (paper: 64) at stride 1, two 3x3 stride-2 downsampling blocks
    (128, 256) and ``blocks`` (4) residual blocks of ``channels[2]``; instance norm and ReLU."""

    def __init__(self, dim: int, channels=(64, 128, 256), blocks: int = 4):
        first, second, latent = channels
        norm = dict(norm="instance", activation="relu")
        super().__init__(
            ConvBlock(dim, 1, first, kernel_size=7, **norm),
            ConvBlock(dim, first, second, kernel_size=3, stride=2, **norm),
            ConvBlock(dim, second, latent, kernel_size=3, stride=2, **norm),
            *(ResidualBlock(dim, latent) for _ in range(blocks)),
        )
        cyclegan_init(self)


class SynthesisDecoder(nn.Module):
    """F (sec. 3.2): latent features -> an image in [0, 1] on the input grid.

    ``blocks`` (4) residual blocks of ``channels[2]`` (256), two upsampling steps (linear
    interpolation to the encoder's level shapes, then a 3x3 stride-1 block of 128, then of 64),
    a 7x7 block of ``image_channels`` (3), a 1x1 convolution to one channel and Tanh, read as
    ``(1 + tanh) / 2`` so the output has the range of the normalised images."""

    def __init__(self, dim: int, channels=(64, 128, 256), blocks: int = 4, image_channels: int = 3):
        super().__init__()
        first, second, latent = channels
        norm = dict(norm="instance", activation="relu")
        self.residual = nn.Sequential(*(ResidualBlock(dim, latent) for _ in range(blocks)))
        self.up_second = ConvBlock(dim, latent, second, kernel_size=3, **norm)
        self.up_first = ConvBlock(dim, second, first, kernel_size=3, **norm)
        self.image_block = ConvBlock(dim, first, image_channels, kernel_size=7, **norm)
        self.to_image = conv(dim, image_channels, 1, 1)
        cyclegan_init(self)

    def forward(self, features: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Image ``(B, 1, *shape)`` from ``features``; ``shape``: the encoder input's spatial shape."""
        half = tuple((n + 1) // 2 for n in shape)  # the shape after the encoder's first stride-2 block
        x = self.residual(features)
        x = self.up_second(upsample_doubling(x, half))
        x = self.up_first(upsample_doubling(x, shape))
        return (1 + torch.tanh(self.to_image(self.image_block(x)))) / 2


class AffineSubnet(nn.Module):
    """T_af (sec. 3.3): concatenated features of both images -> ``dim * (dim + 1)`` affine
    parameters in normalised coordinates (``[L | t]``, ``p' = (I + L) p + t`` with p in [-1, 1]).

    A convolution (``channels[0]``, kernel ``kernels[0]``, stride 2) with ReLU, two blocks
    "convolution + ReLU + instance norm" (``channels[1:]``, ``kernels[1:]``, stride 2), global
    average pooling and two dense layers (``hidden`` units, ReLU between).  The last layer starts
    near zero (the identity)."""

    def __init__(self, dim: int, in_channels: int, channels=(8, 10, 20), kernels=(7, 5, 2), hidden: int = 32):
        super().__init__()
        layers, previous = [], in_channels
        for i, (c, k) in enumerate(zip(channels, kernels)):
            layers += [conv(dim, previous, c, k, stride=2, padding=k // 2), nn.ReLU()]
            if i > 0:
                layers.append(instance_norm(dim, c))
            previous = c
        self.features = nn.Sequential(*layers)
        self.dense = nn.Sequential(nn.Linear(previous, hidden), nn.ReLU(), small_init(nn.Linear(hidden, dim * (dim + 1))))

    def forward(self, moving_features: torch.Tensor, fixed_features: torch.Tensor) -> torch.Tensor:
        x = self.features(torch.cat([moving_features, fixed_features], dim=1))
        return self.dense(x.flatten(2).mean(dim=2))


class NonrigidSubnet(nn.Module):
    """T_nr (sec. 3.3): affinely warped moving features and fixed features -> a displacement
    ``(B, dim, *feature shape)`` in normalised coordinates (components x, y, z; Tanh, so in
    [-1, 1]).

    Each input passes its own 3x3 block (``channels``, instance norm, LeakyReLU); the two are
    concatenated, pass a residual block (instance norm, LeakyReLU) and a 3x3 convolution that
    starts near zero (the identity), then Tanh."""

    def __init__(self, dim: int, in_channels: int, channels: int = 64):
        super().__init__()
        block = dict(kernel_size=3, norm="instance", activation="leaky_relu")
        self.moving_branch = ConvBlock(dim, in_channels, channels, **block)
        self.fixed_branch = ConvBlock(dim, in_channels, channels, **block)
        self.joint = ResidualBlock(dim, 2 * channels, activation="leaky_relu")
        self.head = small_init(conv(dim, 2 * channels, dim, 3))

    def forward(self, moved_features: torch.Tensor, fixed_features: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.moving_branch(moved_features), self.fixed_branch(fixed_features)], dim=1)
        return torch.tanh(self.head(self.joint(x)))
