"""Networks of Wu & Zhou's disentangled-representation registration (002_0584f023bf238d80.txt),
for 2D and 3D: the MUNIT parts of its representation disentangling model (RDM, sec. II-B, "built
based on the work presented in [12]", i.e. Huang et al., MUNIT, ECCV 2018) and the registration
network ``R_theta`` (sec. II-A).

The MUNIT layer plan (its appendix, "Network architecture"), with ``c`` = ``channels``:

* content encoder: 7x7 conv c, then ``downsamplings`` x (4x4 stride-2 conv, doubling channels),
  each with instance normalisation and ReLU, then ``residual_blocks`` residual blocks
  (two 3x3 convs, instance normalisation);
* style encoder: 7x7 conv c, 4x4 stride-2 convs (channels doubled twice, then kept), ReLU, no
  normalisation, global average pooling, a 1x1 conv to the style code;
* generator: residual blocks with adaptive instance normalisation (AdaIN) whose scales and
  shifts an MLP (3 layers, ReLU) computes from the style code, then (2x nearest up-sampling,
  5x5 conv halving channels, layer normalisation, ReLU) per level, then a 7x7 conv and tanh;
* discriminator: multi-scale (the input and its 2x, 4x, ... average-pooled copies), each scale
  4x4 stride-2 convs (channels doubling) with LeakyReLU 0.2 and a 1x1 conv to real/fake logits.

Where we differ from MUNIT: zero instead of reflection padding (the images sit in the zero margin
of the model grid, so both pad with background); the generator's tanh output is mapped to the
[0, 1] intensity range of the framework, ``(1 + tanh) / 2``; PyTorch's default initialisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .layers import (ConvBlock, ResidualBlock, conv, conv_transpose, instance_norm, make_activation,
    small_init, upsample_to)


def adaptive_instance_norm(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """AdaIN (MUNIT eq. 7): instance-normalised ``x (B, C, *s)`` times ``scale (B, C)`` plus ``shift``."""
    expand = (slice(None), slice(None)) + (None,) * (x.ndim - 2)
    return F.instance_norm(x) * scale[expand] + shift[expand]


class AdaptiveResidualBlock(nn.Module):
    """The generator's residual block: two 3x3 convs, each followed by AdaIN (ReLU after the
    first); its four AdaIN parameter vectors come from the style MLP."""

    def __init__(self, dim: int, channels: int):
        super().__init__()
        self.first = conv(dim, channels, channels, 3)
        self.second = conv(dim, channels, channels, 3)
        self.style_parameters = 4 * channels

    def forward(self, x: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
        scale_1, shift_1, scale_2, shift_2 = parameters.chunk(4, dim=1)
        h = torch.relu(adaptive_instance_norm(self.first(x), scale_1, shift_1))
        return x + adaptive_instance_norm(self.second(h), scale_2, shift_2)


class ContentEncoder(nn.Module):
    """``(B, 1, *shape) -> (B, channels * 2**downsamplings, *shape / 2**downsamplings)``: the
    domain-invariant content code ``C = E_c(image)``, a spatial map."""

    def __init__(self, dim: int, channels: int, downsamplings: int, residual_blocks: int):
        super().__init__()
        layers = [ConvBlock(dim, 1, channels, kernel_size=7, norm="instance", activation="relu")]
        for _ in range(downsamplings):
            layers.append(_down(dim, channels, 2 * channels, norm="instance"))
            channels *= 2
        layers += [ResidualBlock(dim, channels) for _ in range(residual_blocks)]
        self.layers = nn.Sequential(*layers)
        self.out_channels = channels

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.layers(image)


class StyleEncoder(nn.Module):
    """``(B, 1, *shape) -> (B, style_dim)``: the domain-specific style code ``S = E_s(image)``."""

    def __init__(self, dim: int, channels: int, downsamplings: int, style_dim: int):
        super().__init__()
        layers = [ConvBlock(dim, 1, channels, kernel_size=7, activation="relu")]
        for level in range(downsamplings):
            out = 2 * channels if level < 2 else channels
            layers.append(_down(dim, channels, out, norm=None))
            channels = out
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(channels, style_dim)  # MUNIT's 1x1 convolution on the pooled features

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(image).flatten(2).mean(dim=2))  # global average pooling


class Generator(nn.Module):
    """``G(C, S)``: content code ``(B, content_channels, *s)`` and style code ``(B, style_dim)`` ->
    image ``(B, 1, *s * 2**upsamplings)`` in [0, 1]."""

    def __init__(self, dim: int, content_channels: int, upsamplings: int, residual_blocks: int,
                 style_dim: int, mlp_channels: int):
        super().__init__()
        channels = content_channels
        self.blocks = nn.ModuleList(AdaptiveResidualBlock(dim, channels) for _ in range(residual_blocks))
        self.mlp = nn.Sequential(nn.Linear(style_dim, mlp_channels), nn.ReLU(),
                                 nn.Linear(mlp_channels, mlp_channels), nn.ReLU(),
                                 nn.Linear(mlp_channels, sum(b.style_parameters for b in self.blocks)))
        layers = []
        for _ in range(upsamplings):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), conv(dim, channels, channels // 2, 5),
                       nn.GroupNorm(1, channels // 2), nn.ReLU()]  # one group: MUNIT's layer norm
            channels //= 2
        layers += [conv(dim, channels, 1, 7), nn.Tanh()]
        self.up = nn.Sequential(*layers)

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        parameters = self.mlp(style).split([b.style_parameters for b in self.blocks], dim=1)
        x = content
        for block, p in zip(self.blocks, parameters):
            x = block(x, p)
        return (1 + self.up(x)) / 2


class MultiScaleDiscriminator(nn.Module):
    """``D(image)``: real/fake logits, one map per scale (the image, then 2x average-pooled copies)."""

    def __init__(self, dim: int, channels: int, layers: int, scales: int):
        super().__init__()
        self.pool = (nn.AvgPool3d if dim == 3 else nn.AvgPool2d)(3, stride=2, padding=1, count_include_pad=False)
        self.layers = layers
        self.scales = nn.ModuleList()
        for _ in range(scales):
            blocks, width = [], channels
            blocks.append(_down(dim, 1, width, norm=None, activation="leaky_relu"))
            for _ in range(layers - 1):
                blocks.append(_down(dim, width, 2 * width, norm=None, activation="leaky_relu"))
                width *= 2
            blocks.append(conv(dim, width, 1, 1))
            self.scales.append(nn.Sequential(*blocks))

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        layers, scales = self.layers, len(self.scales)
        if not _fits(min(image.shape[2:]), layers, scales):
            smallest = next(n for n in range(1, 2 ** 16) if _fits(n, layers, scales))
            raise InputError(
                f"the model grid ({'x'.join(map(str, image.shape[2:][::-1]))} voxels) is too small for discriminators of "
                f"{layers} layers at {scales} scales, which need at least {smallest} voxels along every axis; "
                "use a finer spacing_mm or fewer discriminator_layers / discriminator_scales")
        logits = []
        for index, scale in enumerate(self.scales):
            if index:
                image = self.pool(image)
            logits.append(scale(image))
        return logits


def _fits(size: int, layers: int, scales: int) -> bool:
    """Whether an axis of ``size`` voxels passes every scale's ``layers`` 4-wide, stride-2,
    padding-1 convolutions (each needs at least 2 voxels) after the 3-wide stride-2 poolings."""
    for scale in range(scales):
        if scale:
            size = (size - 1) // 2 + 1
        reduced = size
        for _ in range(layers):
            if reduced < 2:
                return False
            reduced //= 2
    return True


def _down(dim: int, in_channels: int, out_channels: int, norm: str | None, activation: str = "relu") -> nn.Module:
    """MUNIT's down-sampling layer: 4x4 stride-2 convolution (padding 1: halves an even size)."""
    layers = [conv(dim, in_channels, out_channels, 4, stride=2, padding=1)]
    if norm == "instance":
        layers.append(instance_norm(dim, out_channels))
    return nn.Sequential(*layers, make_activation(activation))


class RegistrationNetwork(nn.Module):
    """``R_theta(moving, target)``: ``(B, 1, *shape)`` x 2 -> displacement ``(B, dim, *shape)`` in
    voxels along the index axes (x, y, z) (002_0584f023bf238d80.txt sec. II-A).

    An encoder-decoder with skip connections whose every convolution is followed by a LeakyReLU
    (slope 0.2), "small kernels of sizes 3x3 and 2x2 used alternatively": each encoder level is a
    2x2 stride-2 convolution (down-sampling) then a 3x3 convolution; each decoder level a 2x2
    stride-2 transposed convolution (up-sampling), concatenation of the encoder features of that
    level, then a 3x3 convolution.  ``encoder``: channels per level (level 0, a 3x3 convolution at
    full resolution, down to the bottleneck); ``decoder``: channels per level back up
    (``len(encoder) - 1`` of them).  The 3x3 output convolution starts near zero (identity)."""

    def __init__(self, dim: int, encoder=(16, 32, 32, 32), decoder=(32, 32, 32)):
        super().__init__()
        if len(decoder) != len(encoder) - 1:
            raise ValueError(f"the decoder needs {len(encoder) - 1} levels, got {len(decoder)}")
        self.encoder = nn.ModuleList([ConvBlock(dim, 2, encoder[0])])
        for previous, channels in zip(encoder[:-1], encoder[1:]):
            self.encoder.append(nn.Sequential(ConvBlock(dim, previous, channels, kernel_size=2, stride=2),
                                              ConvBlock(dim, channels, channels)))
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        channels = encoder[-1]
        for skip, out in zip(encoder[-2::-1], decoder):
            self.up.append(nn.Sequential(conv_transpose(dim, channels, out), nn.LeakyReLU(0.2)))
            self.decoder.append(ConvBlock(dim, out + skip, out))
            channels = out
        self.head = small_init(conv(dim, channels, dim, 3))

    def forward(self, moving: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = torch.cat([moving, target], dim=1)
        skips = []
        for level in self.encoder:
            x = level(x)
            skips.append(x)
        skips.pop()
        for up, level in zip(self.up, self.decoder):
            skip = skips.pop()
            x = level(torch.cat([upsample_to(up(x), skip.shape[2:]), skip], dim=1))
        return self.head(x)
