"""Method ``fire``: FIRE (Wang et al., Sensors 2022; 000_9877b33c2dcaa129.txt), bi-directional
cross-modality synthesis with factorised affine + non-rigid transformation networks.

One synthesis encoder ``G`` maps either contrast to modality-invariant features, decoders
``F_AB``, ``F_BA`` render them in the other contrast (sec. 3.2), and transformation networks
``T_AB(G(x_A), G(x_B))``, ``T_BA`` each chain an affine and a non-rigid subnetwork, ``phi =
phi_af o phi_nr`` (sec. 3.3), the field computed on G's grid and resampled for images (sec.
3.6).  Everything trains end to end on RMS synthesis, registration and regularisation losses
(eqs. 1-13, sec. 3.4-3.7) with three Adam optimisers, 1e-5 affine, 5e-5 non-rigid, 1e-4 G/F
(sec. 3.8).  ``A`` is the moving contrast, ``B`` the fixed one (see :class:`Fire`).

Follows the paper: G, F and T as sec. 3.2-3.3 give them; the loss terms and weights of eq. 1
(:meth:`Fire.loss_terms`); the three optimisers; 2D and 3D, 4D (cine) frame by frame from the
Slicer sequence logic, as sec. 5.3 registers 3D phases to the first.

Deviates or reconstructs (the text extraction garbled formulas and lost Figure 3):
* Eq. 7 reads like eq. 2; sec. 3.6 and 3.8 say the image is warped, then encoded:
  ``F_AB(G(x_A o phi_AB))``, like eq. 12.  Eq. 8's ``x_A phi_AB phi_BA`` is one composed map.
* lambda (sec. 3.7, "λ = 22n/10N") is read as ``2^(2n) / (10 N)``, 0.1 x the mean squared second
  derivative on the feature grid, independent of image size; bending energy (all second
  derivatives) for the text's bending energy / squared Laplacian (equal integrals).
* Affine subnetwork "(1 × 8, 7)", "8 × 10, 5", "16 × 20, 2" read as (in -> out, kernel) of the
  cited STN [8], the third as 10 -> 20 to chain; stride 2, padding ``k // 2``; 32 hidden units.
* Non-rigid widths (Figure 3 only): 64 per input, residual block 128, output near zero + Tanh.
* Decoder: 2x linear upsampling before each stride-1 block; Tanh read as ``(1 + tanh) / 2`` for
  [0, 1] images; zero padding (CycleGAN: reflection).  Adam's other settings: PyTorch's.
* Last layers start near zero (identity); the paper's 144,000 iterations are a training choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import losses, regularisers, spatial
from ..geometry import Geometry
from ..networks.fire_nets import AffineSubnet, NonrigidSubnet, SynthesisDecoder, SynthesisEncoder
from .learned import (LearnedMethod, ModelConfig, Prediction, TrainingBatch, affine_from_parameters,
    compose_maps, index_to_physical_vectors, registration_function, warp_on_grid)


@dataclass
class FireConfig(ModelConfig):
    """FIRE's settings; defaults are the paper's (000_9877b33c2dcaa129.txt sec. 3.2, 3.3, 3.8).

    ``synthesis_channels``: G's 7x7 block, its two downsampling blocks (= F's upsampling blocks
    in reverse); ``resnet_blocks``: residual blocks in G and in each F; ``image_channels``: F's
    7x7 block; ``affine_channels`` / ``affine_kernels`` / ``affine_hidden``: the affine
    subnetwork; ``nonrigid_channels``: each input branch of the non-rigid subnetwork;
    ``learning_rate_*``: the three Adam optimisers; ``inverse_consistency_weight``: factor of
    eq. 8 in the total (1 in the paper)."""

    synthesis_channels: tuple[int, int, int] = (64, 128, 256)
    resnet_blocks: int = 4
    image_channels: int = 3
    affine_channels: tuple[int, int, int] = (8, 10, 20)
    affine_kernels: tuple[int, int, int] = (7, 5, 2)
    affine_hidden: int = 32
    nonrigid_channels: int = 64
    learning_rate_affine: float = 1e-5
    learning_rate_nonrigid: float = 5e-5
    learning_rate_synthesis: float = 1e-4
    inverse_consistency_weight: float = 1.0


@dataclass(frozen=True)
class Grids:
    """The model grid ``image`` and the grid ``features`` of G's output (``feature_shape``, z, y, x):
    same field of view and direction, corner voxel centres coinciding."""

    image: Geometry
    features: Geometry

    @classmethod
    def of(cls, image: Geometry, feature_shape: tuple[int, ...]) -> "Grids":
        size = np.asarray(feature_shape[::-1])
        spacing = image.extent / np.maximum(size - 1, 1)
        return cls(image, Geometry(tuple(size), tuple(spacing), image.origin, image.direction))


def affine_from_normalised(parameters: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Physical affines ``(B, dim+1, dim+1)`` from STN parameters ``(B, dim*(dim+1))`` on the
    normalised coordinates of ``geometry`` (``p' = (I + L) p + t``, p in [-1, 1], index axes
    x, y, z): with ``S = diag((size - 1) / 2)`` voxels per normalised unit, the voxel-frame map
    about the centre has ``L_v = S L S^-1`` and ``t_v = S t`` (see :func:`affine_from_parameters`)."""
    dim = geometry.dim
    half = torch.as_tensor((np.asarray(geometry.size) - 1) / 2, dtype=parameters.dtype, device=parameters.device)
    linear = parameters[:, : dim * dim].reshape(-1, dim, dim) * half[:, None] / half[None, :]
    shift = parameters[:, dim * dim:] * half
    return affine_from_parameters(torch.cat([linear.flatten(1), shift], dim=1), geometry)


def normalised_to_mm(displacement: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """A displacement ``(B, dim, *shape)`` in normalised coordinates of ``geometry`` (1 = half the
    grid's extent along that index axis) -> physical mm (x, y, z, LPS)."""
    half = torch.as_tensor((np.asarray(geometry.size) - 1) / 2, dtype=displacement.dtype, device=displacement.device)
    return index_to_physical_vectors(displacement * half.reshape(1, -1, *([1] * geometry.dim)), geometry)


@dataclass
class Transformation:
    """One direction's map ``phi(p) = A(p + u(p))``, from a point of the fixed frame of that
    direction to its moving image.

    ``affine``: ``A`` (B, dim+1, dim+1), physical; ``displacement``: ``u`` (mm) on the model
    grid; ``coarse_displacement``: ``u`` (mm) on the feature grid, where it is computed;
    ``normalised_displacement``: the same in the network's normalised units (for eq. 10);
    ``affine_features``: the moving features through ``A`` alone, ``G(x) o phi_af``."""

    affine: torch.Tensor
    displacement: torch.Tensor
    coarse_displacement: torch.Tensor
    normalised_displacement: torch.Tensor
    affine_features: torch.Tensor


class TransformationNetwork(nn.Module):
    """T (sec. 3.3): the affine subnetwork, then the non-rigid subnetwork on the affinely warped
    moving features and the fixed features.

    G works at a quarter of the model-grid resolution (two stride-2 blocks); its feature grid
    spans the same field of view, corner voxel centres on the model grid's (:class:`Grids`).  The
    affine subnetwork sees ``[G(x_A), G(x_B)]`` (sec. 3.3: "the concatenated features obtained
    from the two input images"; sec. 3.1: ``phi = T(G(x_A), G(x_B))``) and outputs the STN matrix
    on the normalised coordinates ``[-1, 1]`` of the model grid, converted to a physical affine.
    Its layers (1 -> 8, k 7; 8 -> 10, k 5; 10 -> 20, k 2, the input being the concatenated
    features) have stride 2 and padding ``k // 2`` so that 1/4-resolution features of a small grid
    keep more than one voxel for instance norm; the first is followed by ReLU and the dense
    layers have 32 hidden units, as in the STN the paper cites [8]; the last starts near zero.
    The non-rigid subnetwork receives ``G(x_A) o phi_af`` and ``G(x_B)``; its Tanh output is a
    displacement in normalised coordinates on the feature grid (sec. 3.3), converted to mm and,
    as sec. 3.6 says, "calculated on G(x) and linearly resampled before being applied to image
    x": features are warped with the coarse field, images with the resampled one."""

    def __init__(self, config: FireConfig):
        super().__init__()
        latent = config.synthesis_channels[2]
        self.affine = AffineSubnet(config.dim, 2 * latent, config.affine_channels, config.affine_kernels, config.affine_hidden)
        self.nonrigid = NonrigidSubnet(config.dim, latent, config.nonrigid_channels)

    def forward(self, moving_features: torch.Tensor, fixed_features: torch.Tensor, grids: Grids) -> Transformation:
        affine = affine_from_normalised(self.affine(moving_features, fixed_features), grids.image)
        affine_features = warp_on_grid(moving_features, grids.features, displacement=None, affine=affine)
        normalised = self.nonrigid(affine_features, fixed_features)
        coarse = normalised_to_mm(normalised, grids.features)
        displacement = spatial.resample_field(coarse, grids.features, grids.image)
        return Transformation(affine, displacement, coarse, normalised, affine_features)


def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batch mean of the RMS difference (images or feature maps)."""
    return losses.root_mean_square_error(a, b).mean()


class Fire(LearnedMethod):
    """FIRE (see the module docstring).

    ``A`` is the moving contrast, ``B`` the fixed one.  ``x_A o phi_AB`` is compared with
    ``x_B``, so ``phi_AB`` maps fixed-grid points to moving points: it is the resampling map of
    the prediction, ``phi_AB(p) = A_AB(p + u_AB(p))`` (``x o phi_af o phi_nr (p) = x(A(p +
    u(p)))``, the non-rigid field acting first on the fixed-grid point, sec. 3.6).  ``phi_BA``
    maps moving-grid points to fixed points, the inverse map ``T^-1(q) = A_BA(q + u_BA(q))``.
    4D (cine) data (sec. 4.2) are registered frame by frame by
    :class:`dmmreg.slicer.registration_logic.SequenceRegistrationRun`.

    Decoder details (sec. 3.2): "two convolutional layers used for upsampling (3 × 3, 128;
    3 × 3, 64) with stride 1" are linear 2x upsampling, each followed by a 3x3 stride-1 block;
    the "(7 × 7, 3)" block keeps its 3 channels (CycleGAN's RGB output), then a 1x1 convolution
    to one channel and ``(1 + tanh) / 2``; zero padding, instance norm with learned scale and
    shift.  The RMS terms use the whole model grid (the paper uses no masks)."""

    name = "fire"
    config_class = FireConfig
    predicts_affine = True

    def __init__(self, config: FireConfig):
        super().__init__(config)
        dim, channels, blocks = config.dim, config.synthesis_channels, config.resnet_blocks
        self.encoder = SynthesisEncoder(dim, channels, blocks)
        self.decoder_ab = SynthesisDecoder(dim, channels, blocks, config.image_channels)
        self.decoder_ba = SynthesisDecoder(dim, channels, blocks, config.image_channels)
        self.transform_ab = TransformationNetwork(config)
        self.transform_ba = TransformationNetwork(config)

    def _encode(self, *images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """G of each image, in one batch (instance norm keeps the items independent)."""
        return self.encoder(torch.cat(images)).split(images[0].shape[0])

    @staticmethod
    def _decode(decoder: SynthesisDecoder, shape, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return decoder(torch.cat(features), shape).split(features[0].shape[0])

    def _transformations(self, moving: torch.Tensor, fixed: torch.Tensor, geometry: Geometry):
        """``G(x_A), G(x_B)``, the grids, ``phi_AB`` and ``phi_BA``."""
        g_a, g_b = self._encode(moving, fixed)
        grids = Grids.of(geometry, tuple(g_a.shape[2:]))
        return g_a, g_b, grids, self.transform_ab(g_a, g_b, grids), self.transform_ba(g_b, g_a, grids)

    def predict(self, fixed: torch.Tensor, moving: torch.Tensor, geometry: Geometry) -> Prediction:
        """``phi_AB`` as (affine, displacement), ``phi_BA`` as (inverse_affine,
        inverse_displacement), and the synthesised ``F_AB(G(x_A))`` ("moving_in_fixed_contrast")
        and ``F_BA(G(x_B))`` ("fixed_in_moving_contrast")."""
        g_a, g_b, _, ab, ba = self._transformations(moving, fixed, geometry)
        shape = tuple(fixed.shape[2:])
        return Prediction(
            displacement=ab.displacement,
            affine=ab.affine,
            inverse_displacement=ba.displacement,
            inverse_affine=ba.affine,
            synthesised={"moving_in_fixed_contrast": self.decoder_ab(g_a, shape),
                         "fixed_in_moving_contrast": self.decoder_ba(g_b, shape)},
        )

    def loss_terms(self, batch: TrainingBatch, stage: str) -> dict[str, torch.Tensor]:
        """The terms of eq. 1 (``x o phi``: ``x`` resampled through ``phi``; RMS on [0, 1] images):

        * eq. 2  ``synthesis_accuracy``   RMS(F_AB(G(x_A) o phi_AB), x_B) + RMS(F_BA(G(x_B) o phi_BA), x_A)
        * eq. 3  ``synthesis_feature``    RMS(G(x_A), G(x_B) o phi_BA) + RMS(G(x_B), G(x_A) o phi_AB)
        * eq. 4  ``synthesis_cycle``      RMS(F_BA(G(F_AB(G(x_A)))), x_A) + RMS(F_AB(G(F_BA(G(x_B)))), x_B)
        * eq. 5  ``synthesis_alignment``  RMS(G(x_A), G(F_AB(G(x_A)))) + RMS(G(x_B), G(F_BA(G(x_B))))
        * eq. 7  ``registration_accuracy`` RMS(F_AB(G(x_A o phi_AB)), x_B) + RMS(F_BA(G(x_B o phi_BA)), x_A)
        * eq. 8  ``inverse_consistency``  RMS(x_A, x_A o phi_AB o phi_BA) + RMS(x_B, x_B o phi_BA o phi_AB)
        * eq. 11 ``synthesis_regularisation``    RMS(x_B, F_AB(G(x_A) o phi_af_AB)) + RMS(x_A, F_BA(G(x_B) o phi_af_BA))
        * eq. 12 ``registration_regularisation`` RMS(x_B, F_AB(G(x_A o phi_af_AB))) + RMS(x_A, F_BA(G(x_B o phi_af_BA)))
        * eq. 10 ``bending_energy``       ||grad^2 phi_nr_AB||^2 + ||grad^2 phi_nr_BA||^2

        ``total`` = eqs. 2 + 3 + 4 + 5 + 7 + ``inverse_consistency_weight`` x 8 + 11 + 12 + lambda
        x 10 (the weight is 1 in the paper; 0 switches the term off for comparison).  Eq. 7 as
        extracted reads ``F_AB(G(x_A) phi_AB)``, identical to eq. 2; sec. 3.6 ("the synthesised
        image obtained from a transformed x_A image should be identical to x_B") and sec. 3.8
        ("computing L_reg requires the input of the transformed images into G, which creates a
        circular computing graph") say the image is warped, then encoded.  Eq. 8 is read as
        ``x_A(phi_AB(phi_BA(q)))``, the composed map sampled once (no double interpolation).
        Eq. 10 differentiates the field in its own units (normalised coordinates, per
        feature-grid voxel, central differences), summed over the feature grid of ``N / 4^n``
        points, so ``lambda = 2^(2n) / (10 N)`` makes it 0.1 x the mean squared second
        derivative; the bending energy (:func:`dmmreg.regularisers.bending_energy`) has the
        integral of the squared Laplacian for fields vanishing at the border."""
        x_a, x_b, geometry = batch.moving, batch.fixed, batch.geometry
        shape = tuple(x_a.shape[2:])
        g_a, g_b, grids, ab, ba = self._transformations(x_a, x_b, geometry)
        g_a_moved = warp_on_grid(g_a, grids.features, ab.coarse_displacement, ab.affine)  # G(x_A) o phi_AB
        g_b_moved = warp_on_grid(g_b, grids.features, ba.coarse_displacement, ba.affine)
        synth_b, synth_b_moved, synth_b_affine = self._decode(self.decoder_ab, shape, g_a, g_a_moved, ab.affine_features)
        synth_a, synth_a_moved, synth_a_affine = self._decode(self.decoder_ba, shape, g_b, g_b_moved, ba.affine_features)
        a_moved = warp_on_grid(x_a, geometry, ab.displacement, ab.affine)  # x_A o phi_AB
        b_moved = warp_on_grid(x_b, geometry, ba.displacement, ba.affine)
        a_affine = warp_on_grid(x_a, geometry, displacement=None, affine=ab.affine)  # x_A o phi_af_AB
        b_affine = warp_on_grid(x_b, geometry, displacement=None, affine=ba.affine)
        g_synth_b, g_synth_a, g_a_registered, g_b_registered, g_a_affine, g_b_affine = self._encode(
            synth_b, synth_a, a_moved, b_moved, a_affine, b_affine)
        cycle_b, registered_b, affine_b = self._decode(self.decoder_ab, shape, g_synth_a, g_a_registered, g_a_affine)
        cycle_a, registered_a, affine_a = self._decode(self.decoder_ba, shape, g_synth_b, g_b_registered, g_b_affine)
        # eq. 8: x_A(phi_AB(phi_BA(q))) and x_B(phi_BA(phi_AB(p))), each sampled once
        a_round_trip = compose_maps(ba.affine, ba.displacement, ab.affine, ab.displacement, geometry)
        b_round_trip = compose_maps(ab.affine, ab.displacement, ba.affine, ba.displacement, geometry)
        a_there_and_back = spatial.sample(x_a, geometry, a_round_trip, padding="border")
        b_there_and_back = spatial.sample(x_b, geometry, b_round_trip, padding="border")
        # eq. 10 on the feature grid, in the network's units; lambda = 2^(2n) / (10 N) (sec. 3.7)
        dim = self.dim
        index_grid = Geometry(grids.features.size, (1.0,) * dim, (0.0,) * dim, np.eye(dim))
        feature_points = math.prod(grids.features.size)
        bending = sum(regularisers.bending_energy(t.normalised_displacement, index_grid).mean() * feature_points
                      for t in (ab, ba))
        smoothness_weight = 2 ** (2 * dim) / (10 * math.prod(geometry.size))
        terms = {
            "synthesis_accuracy": _rms(synth_b_moved, x_b) + _rms(synth_a_moved, x_a),  # eq. 2
            "synthesis_feature": _rms(g_a, g_b_moved) + _rms(g_b, g_a_moved),  # eq. 3
            "synthesis_cycle": _rms(cycle_a, x_a) + _rms(cycle_b, x_b),  # eq. 4
            "synthesis_alignment": _rms(g_a, g_synth_b) + _rms(g_b, g_synth_a),  # eq. 5
            "registration_accuracy": _rms(registered_b, x_b) + _rms(registered_a, x_a),  # eq. 7
            "inverse_consistency": _rms(a_there_and_back, x_a) + _rms(b_there_and_back, x_b),  # eq. 8
            "synthesis_regularisation": _rms(x_b, synth_b_affine) + _rms(x_a, synth_a_affine),  # eq. 11
            "registration_regularisation": _rms(x_b, affine_b) + _rms(x_a, affine_a),  # eq. 12
            "bending_energy": bending,  # eq. 10
        }
        terms["total"] = (sum(v for k, v in terms.items() if k not in ("inverse_consistency", "bending_energy"))
                          + self.config.inverse_consistency_weight * terms["inverse_consistency"]
                          + smoothness_weight * bending)  # eqs. 1, 6, 9, 13
        return terms

    def make_optimisers(self, stage: str) -> list[torch.optim.Optimizer]:
        """Three Adam optimisers (sec. 3.8): both affine subnetworks, both non-rigid subnetworks,
        and G with both decoders."""
        cfg = self.config
        transforms = (self.transform_ab, self.transform_ba)
        synthesis = (self.encoder, self.decoder_ab, self.decoder_ba)
        return [
            torch.optim.Adam([p for t in transforms for p in t.affine.parameters()], lr=cfg.learning_rate_affine),
            torch.optim.Adam([p for t in transforms for p in t.nonrigid.parameters()], lr=cfg.learning_rate_nonrigid),
            torch.optim.Adam([p for m in synthesis for p in m.parameters()], lr=cfg.learning_rate_synthesis),
        ]


MODEL = Fire
register = registration_function("fire")
