"""Method ``variational``: Theljani & Chen, unsupervised deep learning with a robust variational
loss (001_bc0de2fc45dae677.txt).

The paper
---------
A network ``N(T, R)`` takes the moving image T and the fixed image R, concatenated as one
two-channel image, and outputs the deformation directly ("A learning model", Figure 1).  It is
trained without ground truth on a variational energy (eq. 2): an image similarity between
``T(phi)`` and ``R``, a smoothness constraint on the first- and second-order derivatives of the
displacement (the second order also penalises what lies in the first order's kernel;
"Regularisation") and a constraint on the Jacobian determinant of ``phi`` against folding.  The
similarity is "an alternative measure to the correlation coefficient" for mono-modal pairs and
the parallel level sets measure (alignment of image gradients) for multi-modal ones; nothing
else changes between the two.  Two networks are compared ("Registration network"): a small
network SN (four blocks of convolutions of different kernel sizes, ReLU at the end of each
block, the last block producing the deformation; Figure 2) and a light U-net, LU-net, which the
paper recommends (Conclusions).  The weight of eq. 2 is lambda = 60 ("Choice of lambda").

How it maps onto the framework
------------------------------
* :meth:`VariationalRegistration.predict`: ``N(fixed, moving)`` outputs a displacement in voxels
  of the model grid along its index axes, converted to mm by
  :func:`~dmmreg.methods.learned.index_to_physical_vectors`; ``T_n(p) = p + u(p)``.  No affine
  (the framework pre-aligns affinely with ``optimise``) and no inverse (computed numerically).
* :meth:`VariationalRegistration.loss_terms`, with ``moved(p) = moving(p + u(p))``::

      total = lambda * similarity + w1 * first_order + w2 * second_order + wJ * jacobian

  - ``similarity`` (0 at a perfect match): ``"pls"`` (default; our pairs are multi-modal):
    :func:`relative_parallel_level_sets` of the images smoothed by a Gaussian of
    ``pls_smoothing_mm``; ``"correlation"``: ``1 - losses.correlation_similarity`` (one minus
    the squared correlation coefficient).
  - ``first_order``: ``regularisers.diffusion`` (``mean |grad u|^2``, dimensionless).
  - ``second_order``: ``regularisers.bending_energy`` (``mean |Hessian u|^2``) times
    ``spacing_mm ** 2``.
  - ``jacobian``: ``regularisers.jacobian_penalty`` (``(J - 1)^2 / J`` with a barrier at J <= 0).

Weights and units
-----------------
The paper's energy is written on its pixel grid; here its pixel is a voxel of the model grid,
so the loss is the paper's discrete energy at any model spacing.  The shared regularisers use
per-mm derivatives: a displacement gradient is mm/mm = voxel/voxel, so ``diffusion`` and the
Jacobian take the paper's weights as they are; ``bending_energy`` is per mm^2, so it is
multiplied by ``spacing_mm ** 2`` (per voxel^2).  PLS uses image gradients per voxel
(``losses.parallel_level_sets`` with ``spacing=None``), ``pls_beta`` is in intensity per voxel
(intensities normalised to [0, 1]).

Reconstructed and open details (the extraction lost every formula and both network figures)
------------------------------------------------------------------------------------------
* Eq. 2 is reconstructed as ``lambda * S + R_1 + R_2 + R_J``: lambda = 60 weights the
  similarity, the regularisers have weight 1 (the paper names no other weight; all are config
  settings).  lambda on the regularisers instead would make the identity cheaper than the true
  warp of the known-warp stroke pairs for both measures.
* Both similarities are dimensionless and 0 when aligned, so that one lambda serves both, as the
  paper uses one.  The correlation term is bounded by 1; the PLS functional of
  ``losses.parallel_level_sets`` (Ehrhardt and Arridge's, which the paper cites) scales with
  the square of the image contrast, ~1e-3 for our [0, 1] images, and with lambda = 60 the
  network did not move (EPE 11.1 -> 11.1 mm in 100 steps).  It is therefore divided by its
  value for unrelated gradients of the pair (:func:`relative_parallel_level_sets`): 0.25 for
  the misaligned T1/T2 slice, 0.20 at its true warp (smoothed as below).  On one pair, local
  distortions lower it further (0.16 after 150 steps, EPE still 4.9 mm): what the paper's
  training on 120 pairs generalises over, brief training on one pair over-fits.
* PLS compares gradients, so its capture range is the width of the edges.  The paper's
  pairs may have been closer; ours (FIRE protocol: rotation, scaling, 10 mm shifts) were not
  registered by brief training on the raw images (2D, EPE 11.1 -> 8.1-9.2 mm in 200 steps, the
  fields rough).  The images are smoothed first, sigma ``pls_smoothing_mm`` = 6 mm (3 voxels
  at the bundled 2 mm): 4 mm was unstable across network initialisations (2.6-13.7 mm after
  150 steps, two LU-net sizes, three initialisations), 6 mm gave 3.9-4.9 mm for all six.
* The mono-modal measure is the squared correlation coefficient of
  ``losses.correlation_similarity`` (the paper's exact variant was lost); the Jacobian
  constraint is the hyperelastic volume term of ``regularisers.jacobian_penalty`` (the paper
  cites Burger et al. for it).
* SN (Figure 2 lost): four blocks with kernels ``sn_kernels`` = 9, 7, 5, 3 ("different kernels
  with different sizes"), 32 channels; the first three are convolution, ReLU and 2x max-pooling
  (Figure 1's "convolutional and pooling layers"), the last a linear convolution (a
  displacement is signed) started near zero whose 1/8-resolution output is interpolated to the
  grid.  Without pooling (same kernels, full resolution, 42 mm receptive field) SN lowered the
  loss but moved away from the truth (EPE 11.1 -> 12.4 mm in 150 steps).
* LU-net (figure lost): Ronneberger et al.'s U-net, which the paper cites, made light: four
  levels instead of five, a quarter of its channels (16-32-64-128), two 3x3 convolutions with
  ReLU per level; built with the shared :class:`~dmmreg.networks.unet.UNet`, which halves the
  resolution with strided convolutions instead of max-pooling and up-samples by interpolation.
* Optimiser: the paper trains 800 epochs and names neither optimiser nor learning rate; Adam
  with ``learning_rate`` = 1e-3 (Keras' default, the paper's era).
* Every term is a mean over the whole model grid: the paper uses no masks.
* The paper is 2D ("Future work will consider ... 3 dimensional"); the same loss and networks
  run in 3D with 3D convolutions (``dim`` of the config).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import losses, regularisers, spatial
from ..errors import InputError
from ..geometry import Geometry
from ..networks.layers import ConvBlock, conv, max_pool, small_init, upsample_to
from ..networks.unet import UNet
from .learned import (LearnedMethod, ModelConfig, Prediction, TrainingBatch, index_to_physical_vectors,
    registration_function, warp_on_grid)

NETWORKS = ("lunet", "sn")
SIMILARITIES = ("pls", "correlation")


@dataclass
class VariationalConfig(ModelConfig):
    """Settings of :class:`VariationalRegistration` (defaults: the paper's; see the module docstring).

    ``network``: "lunet" (light U-net, recommended) or "sn" (small network); ``similarity``:
    "pls" (multi-modal) or "correlation" (mono-modal); ``lunet_encoder`` / ``lunet_decoder``:
    channels per U-net level; ``sn_channels``: channels of SN's first three blocks,
    ``sn_kernels``: kernel sizes of its four blocks (odd); weights of eq. 2: ``lambda_similarity``
    (lambda), ``first_order_weight``, ``second_order_weight`` (per voxel^2), ``jacobian_weight``;
    ``pls_beta``: gradient magnitude (intensity per voxel) below which PLS counts a region as
    flat; ``pls_smoothing_mm``: Gaussian sigma applied to both images before PLS;
    ``learning_rate``: Adam's."""

    network: str = "lunet"
    similarity: str = "pls"
    lunet_encoder: tuple[int, ...] = (16, 32, 64, 128)
    lunet_decoder: tuple[int, ...] = (64, 32, 16)
    sn_channels: tuple[int, ...] = (32, 32, 32)
    sn_kernels: tuple[int, ...] = (9, 7, 5, 3)
    lambda_similarity: float = 60.0
    first_order_weight: float = 1.0
    second_order_weight: float = 1.0
    jacobian_weight: float = 1.0
    pls_beta: float = 1e-2
    pls_smoothing_mm: float = 6.0
    learning_rate: float = 1e-3


def relative_parallel_level_sets(fixed: torch.Tensor, moved: torch.Tensor, moving: torch.Tensor,
                                 geometry: Geometry, beta: float) -> torch.Tensor:
    """PLS of ``fixed`` and ``moved`` (``losses.parallel_level_sets``, gradients per voxel) relative
    to ``mean(|grad F|_beta |grad M|_beta)`` of the unwarped pair ``fixed``, ``moving`` (the PLS the
    two images would have if no level sets were parallel), ``(B,)``: dimensionless, 0 when
    aligned, about 1 when unrelated.  The denominator is a constant of the pair (no gradient
    flows through it); the model grid is isotropic, so per-voxel gradients are per-mm ones
    times the spacing."""
    with torch.no_grad():
        voxel = geometry.spacing[0]
        norms = [torch.sqrt((spatial.spatial_gradient(image, geometry)[:, 0] * voxel).pow(2).sum(dim=1) + beta**2)
                 for image in (fixed, moving)]
        orthogonal = (norms[0] * norms[1]).flatten(1).mean(dim=1)
    return -losses.parallel_level_sets(fixed, moved, beta=beta) / orthogonal


class SmallNetwork(nn.Module):
    """SN (001_bc0de2fc45dae677.txt, Figure 2): ``(B, 2, *shape) -> (B, dim, *shape)`` voxel
    displacements.  Blocks of one convolution each (kernel sizes ``kernels``), the first ones
    followed by ReLU and 2x max-pooling; the last block (linear, started near zero so the
    untrained network predicts almost the identity) gives the displacement at
    ``2**len(channels)`` times coarser resolution, interpolated linearly to the input grid."""

    def __init__(self, dim: int, channels: tuple[int, ...], kernels: tuple[int, ...]):
        super().__init__()
        if len(kernels) != len(channels) + 1 or any(k % 2 == 0 for k in kernels):
            raise InputError(f"SN needs one odd kernel size per block ({len(channels) + 1}), got {kernels}")
        inputs = (2,) + tuple(channels)
        self.blocks = nn.Sequential(*(
            nn.Sequential(ConvBlock(dim, i, o, kernel_size=k, activation="relu"), max_pool(dim))
            for i, o, k in zip(inputs, channels, kernels)
        ))
        self.head = small_init(conv(dim, inputs[-1], dim, kernels[-1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_to(self.head(self.blocks(x)), x.shape[2:])


class VariationalRegistration(LearnedMethod):
    """Theljani & Chen's network and robust variational loss (see the module docstring)."""

    name = "variational"
    config_class = VariationalConfig
    predicts_affine = False

    def __init__(self, config: VariationalConfig):
        super().__init__(config)
        if config.network not in NETWORKS:
            raise InputError(f"network must be one of {NETWORKS}, got {config.network!r}")
        if config.similarity not in SIMILARITIES:
            raise InputError(f"similarity must be one of {SIMILARITIES}, got {config.similarity!r}")
        if config.network == "lunet":
            self.network = UNet(config.dim, 2, config.dim, encoder=config.lunet_encoder,
                                decoder=config.lunet_decoder, convs_per_level=2, activation="relu")
        else:
            self.network = SmallNetwork(config.dim, config.sn_channels, config.sn_kernels)

    def predict(self, fixed: torch.Tensor, moving: torch.Tensor, geometry: Geometry) -> Prediction:
        """``u`` (mm) of ``T(p) = p + u(p)`` from ``N(fixed, moving)`` (the paper's ``N(T, R)``)."""
        voxels = self.network(torch.cat([fixed, moving], dim=1))
        return Prediction(displacement=index_to_physical_vectors(voxels, geometry))

    def loss_terms(self, batch: TrainingBatch, stage: str = "train") -> dict[str, torch.Tensor]:
        """Eq. 2 as reconstructed: ``lambda * similarity + first_order + second_order + jacobian``,
        each term a batch mean (terms unweighted, ``total`` weighted)."""
        cfg = self.config
        geometry = batch.geometry
        u = self.predict(batch.fixed, batch.moving, geometry).displacement
        moved = warp_on_grid(batch.moving, geometry, u)
        terms = {
            "similarity": self.dissimilarity(batch.fixed, moved, batch.moving, geometry).mean(),
            "first_order": regularisers.diffusion(u, geometry).mean(),
            "second_order": regularisers.bending_energy(u, geometry).mean() * cfg.spacing_mm**2,
            "jacobian": regularisers.jacobian_penalty(u, geometry).mean(),
        }
        terms["total"] = (cfg.lambda_similarity * terms["similarity"] + cfg.first_order_weight * terms["first_order"]
                          + cfg.second_order_weight * terms["second_order"] + cfg.jacobian_weight * terms["jacobian"])
        return terms

    def dissimilarity(self, fixed: torch.Tensor, moved: torch.Tensor, moving: torch.Tensor,
                      geometry: Geometry) -> torch.Tensor:
        """The similarity term of eq. 2 as a loss, 0 at a perfect match, ``(B,)``: relative PLS of
        the smoothed images, or one minus the squared correlation coefficient."""
        if self.config.similarity == "correlation":
            return 1 - losses.correlation_similarity(fixed, moved)
        sigma = [self.config.pls_smoothing_mm / s for s in geometry.spacing]
        smooth = lambda image: spatial.gaussian_smooth(image, sigma)  # noqa: E731
        return relative_parallel_level_sets(smooth(fixed), smooth(moved), smooth(moving), geometry,
                                            self.config.pls_beta)

    def make_optimisers(self, stage: str = "train") -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.parameters(), lr=self.config.learning_rate)]


MODEL = VariationalRegistration
register = registration_function("variational")
