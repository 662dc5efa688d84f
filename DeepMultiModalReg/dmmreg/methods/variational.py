"""Method ``variational``: Theljani & Chen, unsupervised deep learning with a robust variational
loss (001_bc0de2fc45dae677.txt).

A network ``N(T, R)`` maps the moving and fixed images, two channels, to the deformation ("A
learning model", Figure 1), trained on the energy of eq. 2: a similarity of ``T(phi)`` and ``R``
(correlation-type for mono-modal pairs, parallel level sets (PLS) for multi-modal ones), first-
and second-order smoothness ("Regularisation") and a Jacobian-determinant term against folding.
Two networks, a small SN (Figure 2) and the recommended light U-net LU-net ("Registration
network", Conclusions); lambda = 60 ("Choice of lambda").  ``total = lambda * similarity +
first_order + second_order + jacobian`` (:meth:`VariationalRegistration.loss_terms`).

Follows the paper: one network outputs the displacement (voxels of the model grid, no affine:
the framework pre-aligns; no inverse); lambda = 60 for both similarities; the energy is the
paper's on its pixel grid, a pixel being a model-grid voxel; means over the whole grid (no masks).

Deviates or reconstructs (the extraction lost every formula and both network figures):
* Eq. 2 as ``lambda * S + R_1 + R_2 + R_J`` (weights 1, all settings): lambda on the regularisers
  instead makes the identity cheaper than the true warp of our known-warp pairs.
* PLS (Ehrhardt and Arridge's, cited) scales with the squared contrast and with lambda = 60 the
  network did not move: it is divided by its value for unrelated gradients of the pair
  (:func:`relative_parallel_level_sets`), so both similarities are 0 aligned and about 1 at worst.
* PLS's capture range is the edge width and brief training on raw images of our pairs (FIRE
  protocol) did not register them: images are smoothed first, ``pls_smoothing_mm`` = 6 (narrower
  was unstable across initialisations).
* Mono-modal measure: one minus the squared correlation coefficient (the paper's variant was
  lost); Jacobian term: the hyperelastic ``(J - 1)^2 / J`` (Burger et al., cited).
* SN: kernels 9, 7, 5, 3, 32 channels, ReLU and 2x max-pooling after the first three (Figure 1's
  pooling layers), a linear last block interpolated to the grid: without pooling SN lowered the
  loss but moved away from the truth.  LU-net: Ronneberger's U-net with four levels, a quarter of
  the channels (16-32-64-128), strided convolutions and interpolation (the shared U-net).
* Adam, 1e-3 (Keras' default; the paper gives neither); 3D too (the paper is 2D).
Figures: benchmarks/README.md, "Variational".
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
    times the spacing.  ``beta`` (``pls_beta``) is in intensity per voxel (intensities in
    [0, 1]).  Raw PLS (Ehrhardt and Arridge's functional) scales with the square of the image
    contrast, too small for lambda = 60 to move the network; relative, it is about 1 at worst."""
    with torch.no_grad():
        voxel = geometry.spacing[0]
        norms = [torch.sqrt((spatial.spatial_gradient(image, geometry)[:, 0] * voxel).pow(2).sum(dim=1) + beta**2)
                 for image in (fixed, moving)]
        orthogonal = (norms[0] * norms[1]).flatten(1).mean(dim=1)
    return -losses.parallel_level_sets(fixed, moved, beta=beta) / orthogonal


class SmallNetwork(nn.Module):
    """SN (001_bc0de2fc45dae677.txt, Figure 2): ``(B, 2, *shape) -> (B, dim, *shape)`` voxel
    displacements.  Blocks of one convolution each (kernel sizes ``kernels``, "different kernels
    with different sizes"), the first ones followed by ReLU and 2x max-pooling (Figure 1's
    "convolutional and pooling layers"); the last block (linear: a displacement is
    signed; started near zero so the untrained network predicts almost the identity) gives the
    displacement at ``2**len(channels)`` times coarser resolution, interpolated linearly to the
    input grid."""

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
        each term a batch mean (terms unweighted, ``total`` weighted), ``moved(p) = moving(p + u(p))``.

        ``similarity``: :meth:`dissimilarity`; ``first_order``: ``regularisers.diffusion``
        (``mean |grad u|^2``); ``second_order``: ``regularisers.bending_energy`` (``mean |Hessian
        u|^2``) times ``spacing_mm ** 2``; ``jacobian``: ``regularisers.jacobian_penalty``
        (``(J - 1)^2 / J`` with a barrier at J <= 0).  Units: the paper's energy is written on its
        pixel grid, here a model-grid voxel.  The shared regularisers use per-mm derivatives; a
        displacement gradient is mm/mm = voxel/voxel, so ``diffusion`` and the Jacobian take the
        paper's weights as they are, while ``bending_energy`` is per mm^2 and is multiplied by
        ``spacing_mm ** 2`` (per voxel^2)."""
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
        """The similarity term of eq. 2 as a loss, 0 at a perfect match, ``(B,)``: ``"pls"``
        (default; our pairs are multi-modal), :func:`relative_parallel_level_sets` of the images
        smoothed by a Gaussian of ``pls_smoothing_mm`` (3 voxels at the bundled 2 mm); or
        ``"correlation"``, one minus the squared correlation coefficient
        (``losses.correlation_similarity``).  Both are dimensionless and 0 when aligned, so one
        lambda serves both, as the paper uses one; the correlation term is bounded by 1."""
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
