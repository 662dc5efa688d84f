"""Method ``midir``: Qiu et al., diffeomorphic and modality-invariant registration using B-splines
(MIDIR, 003_2f2aa96e65959a3c.txt).

A CNN maps the affinely aligned images to the velocities of cubic B-spline control points
``delta`` voxels apart (sec. 3.2), summed into a stationary velocity ``v`` (eq. 6, a transposed
convolution) with ``phi = exp(v)`` by scaling and squaring (sec. 3.2.1); the network is a U-net
whose decoder stops at the largest feature map smaller than the control grid, resized to it,
then three convolutions (sec. 3.2.2, Figure B3).  Loss ``-I_NMI(F, M o phi) + lambda mean |grad
v|^2`` (eqs. 1-5: Parzen NMI, 64 bins, on 50 % of the voxels per step; or LNCC), Adam 1e-4, a
tenth every 50 epochs (sec. 4.4); brain T1w-T2w ``delta`` = 2, ``lambda`` = 0.1 (appendix C, Table 2).

Follows the paper:
* Control point ``k`` on model voxel ``(k - 1) * delta``, ``ceil((n - 1) / delta) + 3`` per axis
  (the public code's geometry): eq. 6 exactly at every voxel; ``exp(-v)`` is the inverse.
* ``delta``, velocities and eq. 5 per model-grid voxel (the paper's 1 mm voxel), so ``lambda``
  keeps its meaning at any spacing; NMI over the whole grid, background included; 2D and 3D.
* The step decay is the shared trainer's (``learning_rate_decay_steps``, training/trainer.py),
  in updates, as an epoch depends on the training set.

Deviates:
* Each control point reads the features at its own position (averaged over its cell when they
  are finer), not Figure B3's resize to the control grid: a corner-to-corner resize reads
  features up to ``2 * delta`` voxels away.  ``feature_level`` may decode finer than the
  paper's ``ceil(log2 delta)`` (its default; 0: full resolution).
* Figure B3's sizes are lost: the public code's channels (``bspline_net.yaml``); the shared U-net
  adds its output convolution (+ LeakyReLU) before the sampling.  Output layer starts near zero
  (untrained = identity); 7 squarings (public code); paper silent on both.
* One 50 % voxel sample per batch (public code: 70 %).  2D slices want ``bins`` = 32: 64 need
  more samples than a slice has (the paper's 2D SVFFD uses 32; benchmarks/README.md, "MIDIR").
* ``delta`` = 2 is 8 mm on the 4 mm 3D grid, where the loss optimum strays from the truth: set
  ``control_spacing_voxels`` for coarse grids (benchmarks/README.md, "MIDIR").
* Bundled models follow a curriculum (scripts/train_bundled_models.py): supervised by the known
  warps of synthetic-warp pairs, same- then cross-contrast, then the paper's NMI loss, as two CPU
  cores cannot afford the paper's order of 10^5 unsupervised updates.
* ``network_inputs="mind"`` (not the paper's: its modality invariance comes from NMI alone) feeds
  the network MIND-SSC descriptors instead of the images; in the campaign it did not learn faster
  than intensities (benchmarks/README.md, "Learned methods against their targets").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import losses, regularisers, spatial
from ..errors import InputError
from ..geometry import Geometry
from ..networks.layers import ConvBlock, conv, make_activation, sample_feature_points, small_init
from ..networks.unet import UNet
from .learned import (LearnedMethod, ModelConfig, Prediction, TrainingBatch, index_to_physical_vectors,
    registration_function, warp_on_grid)

SIMILARITIES = ("nmi", "lncc")
NETWORK_INPUTS = ("intensity", "mind")


@dataclass
class MidirConfig(ModelConfig):
    """Settings of :class:`Midir` (defaults: the paper's for brain T1w-T2w; see the module docstring).

    ``control_spacing_voxels``: ``delta``, control-point spacing in model-grid voxels (the
    paper's 2 is 2 mm on its 1 mm images; a coarse model grid may want a larger one);
    ``similarity``: "nmi" or "lncc"; ``regularisation_weight``: ``lambda`` of eq. 4; ``bins``:
    NMI histogram bins (64; a 2D slice has too few voxels for 64: use 32 in 2D);
    ``nmi_sample_fraction``: share of the voxels NMI is evaluated on per step; ``lncc_window``:
    LNCC window (voxels); ``integration_steps``: scaling and squaring steps;
    ``encoder_channels`` / ``decoder_channels``: the base U-net's channels per level
    (``decoder_channels`` from the bottleneck up, one fewer than the encoder's);
    ``resize_channels``: the convolutions after the features are sampled at the control points
    (Figure B3's convolutions after its resize), before the output convolution;
    ``feature_level``: the U-net level the decoder stops at (None: the paper's
    ``ceil(log2 delta)``; 0: full resolution); ``learning_rate``: Adam's; ``network_inputs``:
    what the network sees, ``"intensity"`` (the paper's two images) or ``"mind"`` (each image's
    MIND-SSC descriptors, :func:`network_input_channels`)."""

    control_spacing_voxels: int = 2
    similarity: str = "nmi"
    regularisation_weight: float = 0.1
    bins: int = 64
    nmi_sample_fraction: float = 0.5
    lncc_window: int = 7
    integration_steps: int = 7
    encoder_channels: tuple[int, ...] = (16, 32, 32, 32, 32)
    decoder_channels: tuple[int, ...] = (32, 32, 32, 32)
    resize_channels: tuple[int, ...] = (32, 32)
    feature_level: int | None = None
    learning_rate: float = 1e-4
    network_inputs: str = "intensity"


class ControlPointVelocityNet(nn.Module):
    """003_2f2aa96e65959a3c.txt sec. 3.2.2, Figure B3 b: ``(fixed, moving)`` ``(B, 1, *shape)``
    -> control-point velocities ``(B, dim, *control_shape)`` in voxels along the index axes.

    The U-net's decoder ends at ``feature_level`` (the paper's rule, ``ceil(log2 delta)``: the
    largest feature map smaller than the control grid; 0 decodes to full resolution), where
    feature ``j`` sits on model voxel ``j * 2**level``.  Each control point ``k`` reads the
    features at its own position, model voxel ``(k - 1) * delta`` (linear interpolation, averaged
    over its ``delta / 2**level`` cell when the features are finer than the control grid), then
    three 3x3(x3) convolutions (``resize_channels`` with LeakyReLU(0.2), then ``dim`` outputs,
    linear, started near zero: VoxelMorph's N(0, 1e-5), ``layers.small_init``) predict the
    velocities.  Channels: the public code's ``conf/train/network/bspline_net.yaml`` (encoder 16,
    32, 32, 32, 32, level 0 at full resolution, then stride-2 convolutions; decoder 32 x 4 of
    which ``levels - 1 - level`` are kept, the public code's rule).  The shared U-net convolves
    after each skip concatenation and ends with an output convolution (here followed by
    LeakyReLU(0.2)); the public code convolves before each up-sampling, so there is one
    convolution more before the sampling than in the public code."""

    def __init__(self, dim: int, control_spacing: int, encoder: tuple[int, ...], decoder: tuple[int, ...],
                 resize: tuple[int, ...], feature_level: int | None = None, in_channels: int = 2):
        super().__init__()
        level = paper_feature_level(control_spacing) if feature_level is None else feature_level
        kept = tuple(decoder[: len(encoder) - 1 - level])
        features = kept[-1] if kept else encoder[-1]
        self.unet = UNet(dim, in_channels, features, encoder=encoder, decoder=kept, output_level=level, flow_head=False)
        self.activation = make_activation("leaky_relu")
        inputs = (features, *resize[:-1])
        self.resize_convs = nn.Sequential(*(ConvBlock(dim, i, o) for i, o in zip(inputs, resize)))
        self.head = small_init(conv(dim, resize[-1], dim))
        self.control_spacing = control_spacing
        self.feature_level = level

    def forward(self, pair: torch.Tensor, control_shape: tuple[int, ...]) -> torch.Tensor:
        """``pair``: the fixed image's input channels, then the moving image's."""
        features = self.activation(self.unet(pair))
        cell = self.control_spacing / 2**self.feature_level  # control-point spacing in feature voxels
        positions = [(torch.arange(n, dtype=features.dtype, device=features.device) - 1) * cell for n in control_shape]
        smoothing = 2 * math.floor(cell / 2) + 1 if cell >= 2 else 1
        return self.head(self.resize_convs(sample_feature_points(features, positions, smoothing)))


def network_input_channels(image: torch.Tensor, inputs: str) -> torch.Tensor:
    """What the network sees of one image ``(B, 1, *shape)`` on the model grid: the image itself
    (``"intensity"``, the paper's), or its MIND-SSC descriptors (``"mind"``, losses.mind_ssc with
    patch radius 1 and dilation 1 model voxel: 12 channels in 3D, 4 in 2D), which look alike
    across contrasts (Heinrich et al. 2012) and do not change under ``a I + b``."""
    return losses.mind_ssc(image, radius=1, dilation=1) if inputs == "mind" else image


def input_channels_per_image(config: MidirConfig) -> int:
    """Channels :func:`network_input_channels` gives per image: 1 for intensities, MIND-SSC's 12
    (3D) or 4 (2D)."""
    return 1 if config.network_inputs == "intensity" else (12 if config.dim == 3 else 4)


def paper_feature_level(control_spacing: int) -> int:
    """The U-net level MIDIR's decoder stops at (sec. 3.2.2): ``ceil(log2 delta)``."""
    return math.ceil(math.log2(control_spacing))


class Midir(LearnedMethod):
    """MIDIR: B-spline SVF predicted by a U-net, trained on NMI (see the module docstring)."""

    name = "midir"
    config_class = MidirConfig
    predicts_affine = False

    def __init__(self, config: MidirConfig):
        super().__init__(config)
        levels = len(config.encoder_channels)
        if config.similarity not in SIMILARITIES:
            raise InputError(f"similarity must be one of {SIMILARITIES}, got {config.similarity!r}")
        if len(config.decoder_channels) != levels - 1:
            raise InputError(f"decoder_channels needs {levels - 1} levels (one fewer than encoder_channels), "
                             f"got {len(config.decoder_channels)}")
        if not 1 <= config.control_spacing_voxels <= 2 ** (levels - 1):
            raise InputError(f"control_spacing_voxels must be 1 .. {2 ** (levels - 1)} for a {levels}-level "
                             f"U-net, got {config.control_spacing_voxels}")
        if config.feature_level is not None and not 0 <= config.feature_level <= paper_feature_level(
                config.control_spacing_voxels):
            raise InputError(f"feature_level must be 0 .. {paper_feature_level(config.control_spacing_voxels)} "
                             f"(finer than the control grid) for delta {config.control_spacing_voxels}, "
                             f"got {config.feature_level}")
        if not config.resize_channels:
            raise InputError("resize_channels needs at least one convolution before the output convolution")
        if config.network_inputs not in NETWORK_INPUTS:
            raise InputError(f"network_inputs must be one of {NETWORK_INPUTS}, got {config.network_inputs!r}")
        if not 0 < config.nmi_sample_fraction <= 1:
            raise InputError(f"nmi_sample_fraction must be in (0, 1], got {config.nmi_sample_fraction}")
        self.network = ControlPointVelocityNet(config.dim, config.control_spacing_voxels, config.encoder_channels,
                                               config.decoder_channels, config.resize_channels, config.feature_level,
                                               in_channels=2 * input_channels_per_image(config))

    def control_grid(self, geometry: Geometry) -> Geometry:
        """The B-spline control points for the model grid ``geometry``: ``delta`` voxels apart,
        point ``k`` on model voxel ``(k - 1) * delta``, ``ceil((n - 1) / delta) + 3`` per axis
        (one beyond each side of the model grid, eq. 6 needs four per interval)."""
        delta = self.config.control_spacing_voxels
        size = np.ceil((np.asarray(geometry.size) - 1) / delta).astype(int) + 3
        origin = geometry.physical_points(np.full(geometry.dim, -float(delta)))
        spacing = tuple(delta * s for s in geometry.spacing)
        return Geometry(tuple(size), spacing, tuple(origin), geometry.direction)

    def dense_velocity(self, coefficients: torch.Tensor, geometry: Geometry) -> torch.Tensor:
        """Eq. 6: control-point velocities ``(B, dim, *control_shape)`` in voxels -> the dense
        SVF ``v (B, dim, *shape)`` in mm at every voxel of the model grid ``geometry``."""
        dense = spatial.bspline_to_dense(coefficients, self.config.control_spacing_voxels)
        crop = tuple(slice(0, n) for n in geometry.shape)
        return index_to_physical_vectors(dense[(..., *crop)], geometry)

    def velocity(self, fixed: torch.Tensor, moving: torch.Tensor, geometry: Geometry) -> torch.Tensor:
        """The network's dense SVF ``v`` (mm) for ``fixed`` and ``moving`` on ``geometry``."""
        inputs = self.config.network_inputs
        pair = torch.cat([network_input_channels(fixed, inputs), network_input_channels(moving, inputs)], dim=1)
        coefficients = self.network(pair, self.control_grid(geometry).shape)
        return self.dense_velocity(coefficients, geometry)

    def predict(self, fixed: torch.Tensor, moving: torch.Tensor, geometry: Geometry) -> Prediction:
        """``u = exp(v) - id`` and its inverse ``exp(-v) - id`` (mm) by scaling and squaring
        (``integration_steps``; the public code's ``svf_steps: 7``).  A zero velocity gives the
        identity exactly (the framework samples with ``align_corners=True`` on the grid's own
        voxels); the public code builds its identity as ``linspace(-1, 1, n)`` but samples with
        ``align_corners=False``, so its zero displacement rescales the image by ``(n - 1) / n``
        about the centre: not reproduced."""
        v = self.velocity(fixed, moving, geometry)
        steps = self.config.integration_steps
        return Prediction(displacement=spatial.integrate_velocity(v, geometry, steps),
                          inverse_displacement=spatial.integrate_velocity(-v, geometry, steps))

    def similarity(self, fixed: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
        """``I_NMI`` (eqs. 1-3, Gaussian Parzen windows of one bin FWHM) on a random
        ``nmi_sample_fraction`` of the voxels (the same for every batch item; the paper's 50 %,
        sec. 4.4, the public configuration's 70 %), or LNCC over the whole grid; ``(B,)``,
        higher is better."""
        cfg = self.config
        if cfg.similarity == "lncc":
            return losses.local_normalised_cross_correlation(fixed, moved, window=cfg.lncc_window)
        f, m = fixed.flatten(1), moved.flatten(1)
        count = max(1, int(cfg.nmi_sample_fraction * f.shape[1]))
        chosen = torch.randperm(f.shape[1], device=f.device)[:count]
        return losses.normalised_mutual_information(f[:, chosen], m[:, chosen], bins=cfg.bins)

    def loss_terms(self, batch: TrainingBatch, stage: str = "train") -> dict[str, torch.Tensor]:
        """Eq. 4: ``similarity`` (``-I_NMI`` or ``-LNCC``) and ``regularisation`` (eq. 5, the
        diffusion of the dense velocity), batch means; ``total = similarity + lambda * regularisation``."""
        geometry = batch.geometry
        v = self.velocity(batch.fixed, batch.moving, geometry)
        u = spatial.integrate_velocity(v, geometry, self.config.integration_steps)
        moved = warp_on_grid(batch.moving, geometry, u)
        terms = {
            "similarity": -self.similarity(batch.fixed, moved).mean(),
            "regularisation": regularisers.diffusion(v, geometry).mean(),
        }
        terms["total"] = terms["similarity"] + self.config.regularisation_weight * terms["regularisation"]
        return terms

    def make_optimisers(self, stage: str = "train") -> list[torch.optim.Optimizer]:
        """Adam with ``learning_rate`` (1e-4, sec. 4.4); the paper's decay (1/10 every 50 epochs)
        is the trainer's ``decay_steps`` (``learning_rate_decay_steps`` of a training job)."""
        return [torch.optim.Adam(self.parameters(), lr=self.config.learning_rate)]


MODEL = Midir
register = registration_function("midir")
