"""Dai et al., "Unsupervised hierarchical translation-based model for multi-modal medical image
registration" (004_b2c378d3610a3326.txt): coarse registration, modal translation, then fine
registration helped by the translated image; the final map is the coarse map composed with the
fine one.

Three U-nets trained one after the other, each frozen when done (sec. 3.1), so ``stages =
("coarse", "translation", "fine")``, each stage's optimiser over its own network, no joint stage.
G1 (sec. 2.1, eq. 1): ``(F, M) -> phi0``, smoothness plus MI both ways (``phi0^-1``), VoxelMorph's
bidirectional strategy [3].  G2 (sec. 2.2, eq. 2): ``M_t = M + Mask``, ``Mask = G2(F, M)``, MI
structure terms and the MSE of ``M_t o phi0`` to ``F``.  G3 (sec. 2.3, eq. 3): ``phi1`` from
``F``, the coarse-warped ``M`` and ``M_t``; smoothness, MI and MSE of ``phi = phi0 o phi1``.
Weights (sec. 3.1): ``a1 = 0.02, b1 = 0.15; a2 = 0.02, b2 = 0.02, l2 = 2.5; a3 = 0.02, b3 =
0.1, l3 = 1.5``; Adam.

Follows the paper: the stages, losses, weights and composition (``A o phi = A(phi(p))``, so
``u(p) = u1(p) + u0(p + u1(p))``); MI over the whole grid (no masks); no inverse of ``phi1``.

Reconstructs or chooses (the paper leaves these open):
* "NMI" is the *negative* mutual information (sec. 1, 2.1), not normalised MI:
  :func:`dmmreg.losses.mutual_information` in nats, Gaussian-Parzen, 32 bins (none given).
* G1 predicts a stationary velocity, ``phi0 = exp(v)``, ``phi0^-1 = exp(-v)`` (7 squarings), as
  VoxelMorph [3], whose bidirectional strategy the paper takes; G3 predicts a displacement.
* ``Lsmooth`` (a sum) and ``Lmse`` are means over voxels, as Keras losses are: a sum would tie the
  weights to the image size.
* The mask goes through tanh (it must lower and raise intensities), read as ``(Mask + 1) / 2``
  for the MI; G2's output starts near zero, so an untrained G2 leaves ``M`` unchanged.
* G3 sees ``M o phi0`` and ``M_t o phi0`` (the paper writes ``G3(F, M, M_t)``) since ``phi1`` acts
  on the coarse-warped images, as in the recursive cascades [4] the paper cites.
* U-net sizes are not given: VoxelMorph's [3] (16, 32 x 4; decoder 32, 32, 32, 16); learning
  rate 1e-4, VoxelMorph's.  The paper is 2D; the same networks run in 3D (``dim``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import spatial
from ..errors import InputError
from ..geometry import Geometry
from ..losses import mean_squared_error, mutual_information
from ..networks.unet import UNet
from ..regularisers import diffusion
from .learned import (LearnedMethod, ModelConfig, Prediction, TrainingBatch, index_to_physical_vectors,
    registration_function, warp_on_grid)


@dataclass
class HierarchicalConfig(ModelConfig):
    """Settings of the Dai et al. model (defaults: 004_b2c378d3610a3326.txt sec. 3.1 weights).

    ``encoder``/``decoder``: U-net channels of each of G1, G2, G3 (VoxelMorph's widths: 16 at
    full resolution, 32 at four halvings; inputs concatenated as channels; G1 outputs a
    velocity, G3 a displacement, in voxels converted to mm, G2 one mask channel);
    ``velocity_steps``: scaling-and-squaring steps of G1's velocity field; ``histogram_bins``:
    bins of the mutual information; ``*_weight``: the paper's alpha, beta, lambda of eqs. 1-3;
    ``learning_rate``: Adam's, every stage."""

    encoder: tuple[int, ...] = (16, 32, 32, 32, 32)
    decoder: tuple[int, ...] = (32, 32, 32, 16)
    velocity_steps: int = 7
    histogram_bins: int = 32
    coarse_smooth_weight: float = 0.02  # alpha_1, eq. 1
    coarse_mi_weight: float = 0.15  # beta_1, eq. 1 (both directions)
    mask_mi_weight: float = 0.02  # alpha_2, eq. 2
    translated_mi_weight: float = 0.02  # beta_2, eq. 2
    translation_mse_weight: float = 2.5  # lambda_2, eq. 2
    fine_smooth_weight: float = 0.02  # alpha_3, eq. 3
    fine_mi_weight: float = 0.1  # beta_3, eq. 3
    fine_mse_weight: float = 1.5  # lambda_3, eq. 3
    learning_rate: float = 1e-4


#: loss term of each stage -> the config field weighting it in the stage's total
TERM_WEIGHTS = {
    "coarse": {
        "coarse_smooth": "coarse_smooth_weight",
        "coarse_mi_moving_to_fixed": "coarse_mi_weight",
        "coarse_mi_fixed_to_moving": "coarse_mi_weight",
    },
    "translation": {
        "translation_mi_mask": "mask_mi_weight",
        "translation_mi_translated": "translated_mi_weight",
        "translation_mse": "translation_mse_weight",
    },
    "fine": {
        "fine_smooth": "fine_smooth_weight",
        "fine_mi": "fine_mi_weight",
        "fine_mse": "fine_mse_weight",
    },
}


class HierarchicalRegistration(LearnedMethod):
    """G1 (coarse velocity), G2 (additive translation mask), G3 (fine displacement); see the
    module docstring.  All images ``(B, 1, *shape)`` on one model grid, fields in mm."""

    name = "hierarchical"
    config_class = HierarchicalConfig
    stages = ("coarse", "translation", "fine")
    predicts_affine = False
    finetune_stages = ("translation", "fine")  # G1's mutual information needs no new contrast

    def __init__(self, config: HierarchicalConfig):
        super().__init__(config)
        channels = dict(encoder=config.encoder, decoder=config.decoder)
        self.coarse_net = UNet(config.dim, 2, config.dim, **channels)  # G1: (F, M) -> v
        self.translation_net = UNet(config.dim, 2, 1, **channels)  # G2: (F, M) -> Mask
        self.fine_net = UNet(config.dim, 3, config.dim, **channels)  # G3: (F, M o phi0, M_t o phi0) -> u1
        self.stage_networks = {"coarse": self.coarse_net, "translation": self.translation_net, "fine": self.fine_net}

    def coarse_velocity(self, fixed: torch.Tensor, moving: torch.Tensor, geometry: Geometry) -> torch.Tensor:
        """G1's stationary velocity ``v`` (mm): ``phi0 = exp(v)``, ``phi0^-1 = exp(-v)``."""
        return index_to_physical_vectors(self.coarse_net(torch.cat([fixed, moving], dim=1)), geometry)

    def exponential(self, velocity: torch.Tensor, geometry: Geometry) -> torch.Tensor:
        """Displacement (mm) of ``exp(velocity)`` by scaling and squaring."""
        return spatial.integrate_velocity(velocity, geometry, self.config.velocity_steps)

    def coarse(self, fixed: torch.Tensor, moving: torch.Tensor, geometry: Geometry) -> torch.Tensor:
        """G1: displacement ``u0`` (mm) of ``phi0 = exp(v)``."""
        return self.exponential(self.coarse_velocity(fixed, moving, geometry), geometry)

    def translate(self, fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """G2: the additive mask (in (-1, 1)) and the translated moving image ``M_t = M + Mask``
        (on the moving image's own, unwarped, positions)."""
        mask = torch.tanh(self.translation_net(torch.cat([fixed, moving], dim=1)))
        return mask, moving + mask

    def fine(self, fixed: torch.Tensor, coarse_moving: torch.Tensor, coarse_translated: torch.Tensor,
             geometry: Geometry) -> torch.Tensor:
        """G3: displacement ``u1`` (mm) of ``phi1``, registering the coarse-warped moving images to ``fixed``."""
        return index_to_physical_vectors(
            self.fine_net(torch.cat([fixed, coarse_moving, coarse_translated], dim=1)), geometry)

    def _fine_and_final(self, fixed, moving, translated, coarse, geometry) -> tuple[torch.Tensor, torch.Tensor]:
        """``u1`` and the final ``u`` of ``phi0 o phi1``: ``u(p) = u1(p) + u0(p + u1(p))``."""
        fine = self.fine(fixed, warp_on_grid(moving, geometry, coarse), warp_on_grid(translated, geometry, coarse), geometry)
        return fine, spatial.compose(fine, coarse, geometry)

    def predict(self, fixed: torch.Tensor, moving: torch.Tensor, geometry: Geometry) -> Prediction:
        """The final ``u`` of ``T(p) = T0(T1(p))`` (:func:`dmmreg.spatial.compose`, ``u1`` inner),
        no affine (the networks are deformable only; the framework pre-aligns affinely), no
        inverse (``phi1`` has none in the paper; the framework inverts ``u`` numerically), and
        ``{"moving_in_fixed_contrast": M_t}``."""
        coarse = self.coarse(fixed, moving, geometry)
        _, translated = self.translate(fixed, moving)
        _, final = self._fine_and_final(fixed, moving, translated, coarse, geometry)
        return Prediction(displacement=final, synthesised={"moving_in_fixed_contrast": translated})

    def loss_terms(self, batch: TrainingBatch, stage: str) -> dict[str, torch.Tensor]:
        """Eq. 1 (``"coarse"``), eq. 2 (``"translation"``) or eq. 3 (``"fine"``) of
        004_b2c378d3610a3326.txt; the networks of earlier stages run frozen (no gradients)."""
        self._check_stage(stage)
        terms = {"coarse": self._coarse_terms, "translation": self._translation_terms, "fine": self._fine_terms}[stage](batch)
        weights = TERM_WEIGHTS[stage]
        terms["total"] = sum(getattr(self.config, weights[key]) * value for key, value in terms.items())
        return terms

    def _negative_mi(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return -mutual_information(first, second, bins=self.config.histogram_bins).mean()

    def _coarse_terms(self, batch: TrainingBatch) -> dict[str, torch.Tensor]:
        """Eq. 1: smoothness of ``u0`` and the NMI (negative MI) of both directions."""
        fixed, moving, geometry = batch.fixed, batch.moving, batch.geometry
        velocity = self.coarse_velocity(fixed, moving, geometry)
        forward, backward = self.exponential(velocity, geometry), self.exponential(-velocity, geometry)
        return {
            "coarse_smooth": diffusion(forward, geometry).mean(),
            "coarse_mi_moving_to_fixed": self._negative_mi(warp_on_grid(moving, geometry, forward), fixed),
            "coarse_mi_fixed_to_moving": self._negative_mi(warp_on_grid(fixed, geometry, backward), moving),
        }

    def _translation_terms(self, batch: TrainingBatch) -> dict[str, torch.Tensor]:
        """Eq. 2 with G1 frozen: structure of the mask and of ``M_t`` (negative MI with ``M``), and
        the MSE of ``M_t o phi0`` to ``F``."""
        fixed, moving, geometry = batch.fixed, batch.moving, batch.geometry
        with torch.no_grad():
            coarse = self.coarse(fixed, moving, geometry)
        mask, translated = self.translate(fixed, moving)
        return {
            "translation_mi_mask": self._negative_mi((mask + 1) / 2, moving),
            "translation_mi_translated": self._negative_mi(translated, moving),
            "translation_mse": mean_squared_error(fixed, warp_on_grid(translated, geometry, coarse)).mean(),
        }

    def _fine_terms(self, batch: TrainingBatch) -> dict[str, torch.Tensor]:
        """Eq. 3 with G1 and G2 frozen: smoothness of ``u1``, negative MI of ``M o phi`` to ``F``
        and MSE of ``M_t o phi`` to ``F``, ``phi = phi0 o phi1``."""
        fixed, moving, geometry = batch.fixed, batch.moving, batch.geometry
        with torch.no_grad():
            coarse = self.coarse(fixed, moving, geometry)
            _, translated = self.translate(fixed, moving)
        fine, final = self._fine_and_final(fixed, moving, translated, coarse, geometry)
        return {
            "fine_smooth": diffusion(fine, geometry).mean(),
            "fine_mi": self._negative_mi(warp_on_grid(moving, geometry, final), fixed),
            "fine_mse": mean_squared_error(fixed, warp_on_grid(translated, geometry, final)).mean(),
        }

    def make_optimisers(self, stage: str) -> list[torch.optim.Optimizer]:
        """One Adam (sec. 3.1) over the stage's own network; the others stay frozen."""
        self._check_stage(stage)
        return [torch.optim.Adam(self.stage_networks[stage].parameters(), lr=self.config.learning_rate)]

    def _check_stage(self, stage: str) -> None:
        if stage not in self.stages:
            raise InputError(f"the hierarchical model has stages {', '.join(self.stages)}, not {stage!r}")


MODEL = HierarchicalRegistration
register = registration_function("hierarchical")
