"""A U-net (Ronneberger et al. 2015) for 2D and 3D, in the form the registration papers use
(VoxelMorph's: strided convolutions down, interpolation up, skip connections by concatenation)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import ConvBlock, conv, small_init, upsample_doubling


class UNet(nn.Module):
    """``(B, in_channels, *shape) -> (B, out_channels, *shape / 2**output_level)``.

    * ``encoder``: channels per level; level 0 keeps the input resolution, each further level
      halves it with a stride-2 convolution; the last level is the bottleneck.
    * ``decoder``: channels of the decoder levels, from the bottleneck upwards; each doubles the
      resolution (linear interpolation that keeps each coarse voxel on the fine voxel it was
      computed at, :func:`~dmmreg.networks.layers.upsample_doubling`; any input shape works),
      concatenates the encoder features of that level and convolves.  There are
      ``len(encoder) - 1 - output_level`` of them.
    * ``convs_per_level``: convolutions in every block; ``norm``, ``activation``: see
      :class:`~dmmreg.networks.layers.ConvBlock`.
    * ``flow_head``: the output convolution starts near zero (N(0, 1e-5) weights), so an untrained
      registration network predicts (almost) the identity.
    """

    def __init__(self, dim: int, in_channels: int, out_channels: int, encoder=(16, 32, 32, 32),
                 decoder=(32, 32, 32), output_level: int = 0, convs_per_level: int = 1,
                 norm: str | None = None, activation: str = "leaky_relu", flow_head: bool = True):
        super().__init__()
        levels = len(encoder)
        if len(decoder) != levels - 1 - output_level:
            raise ValueError(f"decoder needs {levels - 1 - output_level} levels for output_level {output_level}, got {len(decoder)}")
        block = dict(n=convs_per_level, norm=norm, activation=activation)
        self.encoder = nn.ModuleList(
            ConvBlock(dim, in_channels if i == 0 else encoder[i - 1], c, stride=1 if i == 0 else 2, **block)
            for i, c in enumerate(encoder)
        )
        self.decoder = nn.ModuleList()
        channels = encoder[-1]
        for j, c in enumerate(decoder):
            skip = encoder[levels - 2 - j]
            self.decoder.append(ConvBlock(dim, channels + skip, c, **block))
            channels = c
        self.head = conv(dim, channels, out_channels, 3)
        if flow_head:
            small_init(self.head)
        self.out_channels = out_channels
        self.reduction = 2**output_level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for block in self.decoder:
            skip = skips.pop()
            x = block(torch.cat([upsample_doubling(x, skip.shape[2:]), skip], dim=1))
        return self.head(x)
