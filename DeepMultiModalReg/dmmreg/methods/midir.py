"""Method ``midir``: Qiu et al., learning diffeomorphic and modality-invariant registration using
B-splines (MIDIR, 003_2f2aa96e65959a3c.txt).

The paper
---------
A CNN maps the fixed and the moving image (after affine alignment) to the velocities of a grid
of cubic B-spline control points ``v^beta`` with spacing ``delta`` (sec. 3.2).  The dense
stationary velocity field (SVF) is their B-spline tensor product (eq. 6), computed as a
transposed convolution with the sampled B-spline as kernel; the transformation is its group
exponential ``phi = exp(v)`` by scaling and squaring (sec. 3.2.1, Arsigny et al.).  The network
(sec. 3.2.2, Figure B3) is a U-net whose decoder stops at the largest feature map smaller than
the control-point grid, followed by a linear resize to that grid and three convolutions; every
convolution is 3x3(x3) with LeakyReLU(0.2), the last one linear.  The loss (eq. 4) is
``L = -I_NMI(F, M o phi) + lambda * L_Reg`` with the differentiable NMI of eqs. 1-3 (Gaussian
Parzen windows whose FWHM is one bin, 64 bins, evaluated on 50 % of the voxels drawn at random
at each iteration, sec. 4.4, appendix C) or LNCC (window 7) as the alternative similarity, and
``L_Reg`` the diffusion ``mean |grad v|^2`` of the dense velocity (eq. 5).  Adam, learning rate
1e-4 (sec. 4.4).  For brain T1w-T2w (appendix C, Table 2) MIDIR uses ``delta`` = 2 and
``lambda`` = 0.1 with NMI and with LNCC (0.08 for T1w-T1w with NMI).

How it maps onto the framework
------------------------------
* :class:`ControlPointVelocityNet` (the network) outputs control-point velocities in voxels of
  the model grid along its index axes (x, y, z).  :meth:`Midir.dense_velocity` evaluates them
  on the model grid with ``spatial.bspline_to_dense`` and converts them to mm with
  :func:`~dmmreg.methods.learned.index_to_physical_vectors` (the B-spline sum is linear, so
  the order does not matter).
* Geometry (:meth:`Midir.control_grid`): control point ``k`` sits at model voxel
  ``(k - 1) * delta`` along every axis, so ``spatial.dense_grid`` of the control grid starts
  exactly on model voxel 0 with the model spacing; it has ``ceil((n - 1) / delta) + 3`` control
  points per axis, so its dense grid covers the ``n`` model voxels (the last points, beyond the
  model grid when ``delta`` does not divide ``n - 1``, are cropped).  The field is therefore
  the exact B-spline sum of eq. 6 at every model voxel, with no resampling.  This is the
  geometry of the public code (output size ``ceil((n - 1) / delta) + 3``, crop from ``delta``).
* :meth:`Midir.predict`: ``displacement = exp(v)`` and ``inverse_displacement = exp(-v)`` (mm,
  ``spatial.integrate_velocity``), no affine (``predicts_affine = False``: the framework
  pre-aligns affinely with ``optimise``, as the paper registers after affine alignment).
* :meth:`Midir.loss_terms`: ``total = similarity + regularisation_weight * regularisation``
  with ``similarity = -losses.normalised_mutual_information`` on the sampled voxels
  (``similarity="nmi"``, default) or ``-losses.local_normalised_cross_correlation``
  (``"lncc"``), and ``regularisation = regularisers.diffusion(v)``; the moved image is
  ``moving(p + exp(v)(p))`` by linear interpolation (``warp_on_grid``).
* A zero velocity gives the identity exactly: the framework samples with
  ``align_corners=True`` on the grid's own voxel positions, so a zero displacement samples every
  voxel at itself.  The public code builds its identity grid as ``linspace(-1, 1, n)`` (the
  ``align_corners=True`` convention) but samples with ``align_corners=False``, so its zero
  displacement resamples the image scaled by ``(n - 1) / n`` about the centre; not reproduced.

Open details and deviations
---------------------------
* Figure B3 (layer sizes) is an image lost by the text extraction; channels are those of the
  public code's configuration (``conf/train/network/bspline_net.yaml``): encoder 16, 32, 32,
  32, 32 (level 0 at full resolution, then stride-2 convolutions), decoder 32, 32, 32, 32 of
  which the first ``levels - 1 - ceil(log2 delta)`` are kept (the public code's rule, which is
  the paper's "largest feature map smaller than the control grid"), resize convolutions 32, 32
  and the output convolution.
* The shared :class:`~dmmreg.networks.unet.UNet` convolves after each skip concatenation and
  ends with an output convolution; the public code convolves before each up-sampling and
  resizes the concatenation itself.  So before the resize there is one convolution more than in
  the public code (the U-net's output convolution, followed here by LeakyReLU(0.2) like every
  hidden layer); after it, the paper's three convolutions.  The resize is linear with
  ``align_corners=True`` (``layers.upsample_to``).
* The output convolution starts near zero (VoxelMorph's N(0, 1e-5), ``layers.small_init``), so
  the untrained network predicts almost the identity; the public code keeps PyTorch's default
  initialisation.  The paper does not say.
* Scaling and squaring steps: not in the paper; 7 as in the public code
  (``conf/train/transformation/bspline.yaml``: ``svf_steps: 7``).
* ``delta`` is in voxels of the model grid, as the paper's is in voxels of its 1 mm images: the
  default 2 is 4 mm at the bundled models' 2 mm grid (2 mm in the paper).  Network outputs,
  velocities and the diffusion term are per voxel as in the public code (a velocity gradient
  is voxel/voxel = mm/mm on the isotropic model grid), so ``lambda`` = 0.1 means what it means
  in the paper at any model spacing.
* NMI is computed over the whole model grid, background included, as in the paper ("all
  points in the overlapping image domain"; the border-padded warp keeps every point in the
  overlap); the same random 50 % of the voxels is used for every item of a batch.  The public
  configuration samples 70 %; the paper's 50 % is the default.  64 bins need many samples: on a
  2D brain slice at 2 mm (7680 voxels, fewer samples than joint-histogram bins) the NMI gradient
  is noise and training makes no progress (measured), while 32 bins (the paper's choice for
  SVFFD on its 2D cardiac images) learns; 3D volumes at 4 mm (10^5 voxels) learn with 64.
* ``delta`` on coarse model grids: the paper's ``delta`` = 2 is 2 mm between control points on
  its 1 mm images.  On the 4 mm 3D grid (8 mm apart), optimising the loss directly over one
  pair's control points (no network) drives NMI well above the true map's (1.35 against 1.25)
  while the endpoint error falls only from 3.81 to 3.22 mm and then rises again; with
  ``delta`` = 8 (32 mm) it falls to 1.86 mm (stroke pairs, benchmarks/benchmark_loss_optimum.py,
  results/loss-optimum-*).  The default stays the paper's; set ``control_spacing_voxels`` for
  coarse grids.
* The learning-rate decay of 1/10 every 50 epochs (sec. 4.4, brain models) is not implemented:
  an epoch depends on the training set and the shared training loop has no schedule.
* The paper's brain experiments are 3D and its cardiac ones 2D with the same architecture; both
  are supported (``dim`` of the config).
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


@dataclass
class MidirConfig(ModelConfig):
    """Settings of :class:`Midir` (defaults: the paper's for brain T1w-T2w; see the module docstring).

    ``control_spacing_voxels``: ``delta``, control-point spacing in model-grid voxels;
    ``similarity``: "nmi" or "lncc"; ``regularisation_weight``: ``lambda`` of eq. 4;
    ``bins``: NMI histogram bins; ``nmi_sample_fraction``: share of the voxels NMI is evaluated
    on per step; ``lncc_window``: LNCC window (voxels); ``integration_steps``: scaling and
    squaring steps; ``encoder_channels`` / ``decoder_channels``: the base U-net's channels per
    level (``decoder_channels`` from the bottleneck up, one fewer than the encoder's);
    ``resize_channels``: the convolutions after the resize, before the output convolution;
    ``feature_level``: the U-net level the decoder stops at (None: the paper's
    ``ceil(log2 delta)``; 0: full resolution); ``learning_rate``: Adam's."""

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


class ControlPointVelocityNet(nn.Module):
    """003_2f2aa96e65959a3c.txt sec. 3.2.2, Figure B3 b: ``(fixed, moving)`` ``(B, 1, *shape)``
    -> control-point velocities ``(B, dim, *control_shape)`` in voxels along the index axes.

    The U-net's decoder ends at ``feature_level`` (the paper's rule, ``ceil(log2 delta)``: the
    largest feature map smaller than the control grid; 0 decodes to full resolution), where
    feature ``j`` sits on model voxel ``j * 2**level``.  Each control point ``k`` reads the
    features at its own position, model voxel ``(k - 1) * delta`` (linear interpolation, averaged
    over its ``delta / 2**level`` cell when the features are finer than the control grid), then
    three convolutions (``resize_channels``, then ``dim`` outputs, linear, started near zero)
    predict the velocities."""

    def __init__(self, dim: int, control_spacing: int, encoder: tuple[int, ...], decoder: tuple[int, ...],
                 resize: tuple[int, ...], feature_level: int | None = None):
        super().__init__()
        level = paper_feature_level(control_spacing) if feature_level is None else feature_level
        kept = tuple(decoder[: len(encoder) - 1 - level])
        features = kept[-1] if kept else encoder[-1]
        self.unet = UNet(dim, 2, features, encoder=encoder, decoder=kept, output_level=level, flow_head=False)
        self.activation = make_activation("leaky_relu")
        inputs = (features, *resize[:-1])
        self.resize_convs = nn.Sequential(*(ConvBlock(dim, i, o) for i, o in zip(inputs, resize)))
        self.head = small_init(conv(dim, resize[-1], dim))
        self.control_spacing = control_spacing
        self.feature_level = level

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, control_shape: tuple[int, ...]) -> torch.Tensor:
        features = self.activation(self.unet(torch.cat([fixed, moving], dim=1)))
        cell = self.control_spacing / 2**self.feature_level  # control-point spacing in feature voxels
        positions = [(torch.arange(n, dtype=features.dtype, device=features.device) - 1) * cell for n in control_shape]
        smoothing = 2 * math.floor(cell / 2) + 1 if cell >= 2 else 1
        return self.head(self.resize_convs(sample_feature_points(features, positions, smoothing)))


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
        if not 0 < config.nmi_sample_fraction <= 1:
            raise InputError(f"nmi_sample_fraction must be in (0, 1], got {config.nmi_sample_fraction}")
        self.network = ControlPointVelocityNet(config.dim, config.control_spacing_voxels, config.encoder_channels,
                                               config.decoder_channels, config.resize_channels, config.feature_level)

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
        coefficients = self.network(fixed, moving, self.control_grid(geometry).shape)
        return self.dense_velocity(coefficients, geometry)

    def predict(self, fixed: torch.Tensor, moving: torch.Tensor, geometry: Geometry) -> Prediction:
        """``u = exp(v) - id`` and its inverse ``exp(-v) - id`` (mm) by scaling and squaring."""
        v = self.velocity(fixed, moving, geometry)
        steps = self.config.integration_steps
        return Prediction(displacement=spatial.integrate_velocity(v, geometry, steps),
                          inverse_displacement=spatial.integrate_velocity(-v, geometry, steps))

    def similarity(self, fixed: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
        """``I_NMI`` (eqs. 1-3) on a random ``nmi_sample_fraction`` of the voxels (the same for
        every batch item), or LNCC over the whole grid; ``(B,)``, higher is better."""
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
        """Adam with ``learning_rate`` (1e-4, sec. 4.4)."""
        return [torch.optim.Adam(self.parameters(), lr=self.config.learning_rate)]


MODEL = Midir
register = registration_function("midir")
