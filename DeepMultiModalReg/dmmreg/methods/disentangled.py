"""Method ``disentangled``: Wu & Zhou, "A disentangled representations based unsupervised deformable
framework for cross-modality image registration" (002_0584f023bf238d80.txt).

A representation disentangling model (RDM, sec. II-B, Fig. 1b, MUNIT-style [12]) splits an image
of either modality into a shared content map and a domain-specific style code; it is trained
first (stage ``"disentangle"``) on eq. (3), ``10 L_recon + 1 L_lat + 10 L_cc + 1 L_adv`` (eqs.
4-9, sec. II-D), Adam 1e-3.  The RDM is then frozen and a registration network ``R`` (sec. II-A)
is trained (stage ``"register"``) both ways with shared weights, ``phi_1 = R(x, y)``, ``phi_2 =
R(y, x)``, on eq. (12): ``L_smooth(phi_1) + L_smooth(phi_2) + L_c + 5 MSD`` (MSD to the other
image warped and translated, eqs. 2, 10; L1 content consistency, eq. 11), Adam 1e-4.

Follows the paper: ``x`` is the moving images' contrast, ``y`` the fixed ones'; ``phi_1`` is the
displacement, ``phi_2`` the inverse (two answers of the network, not exact inverses); at
inference each translation takes its style from the given image of the target contrast (eq. 2);
bilinear warping (eq. 1).  The paper is 2D; 3D runs with 3D kernels of the same sizes.

Deviates or chooses:
* RDM layers beyond "built on [12]": MUNIT's; R's sizes are not given: VoxelMorph's (encoder 16,
  32, 32, 32; decoder 32, 32, 32).
* Eq. (9): discriminators minimise the cross-entropy (MUNIT's ``nsgan``), generators the
  non-saturating ``-log D(fake)`` (``log(1 - D)``'s gradient vanishes while D wins); D steps
  first, then the generators, Adam betas (0.5, 0.999) (MUNIT).
* Eq. (9)'s sampling is garbled: encoded style codes as in eqs. (6)-(8) (MUNIT draws N(0, I));
  ``L_lat`` gets the mirror images of eqs. 6-7 as its other two terms.
* Sec. II-D's unused "gamma_rec = 20, gamma_lat = 10, gamma_cc = 20" are ignored; eq. (3)'s
  lambdas (10, 1, 10, 1) are the defaults.  L1 norms and ``L_smooth`` are means (a sum would
  outweigh the mean MSD of eq. 10 and the fields could not move); ``L_smooth`` per mm.
* The paper pre-trains on 5400 aligned pairs; its losses never compare the contrasts voxel by
  voxel, so unaligned pairs serve, but with few images the discriminators learn where structures
  lie and offset the domains' content spaces: train ``"disentangle"`` on many images
  (benchmarks/README.md, "Disentangled").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses, regularisers
from ..geometry import Geometry
from ..networks.disentangled_nets import (ContentEncoder, Generator, MultiScaleDiscriminator,
    RegistrationNetwork, StyleEncoder)
from .learned import (LearnedMethod, ModelConfig, Prediction, TrainingBatch, index_to_physical_vectors,
    registration_function, warp_on_grid)

DOMAINS = ("x", "y")  # x: the moving images' contrast, y: the fixed images' (the paper's x, y)


@dataclass
class DisentangledConfig(ModelConfig):
    """Settings of the ``disentangled`` method; defaults are the paper's (002_0584f023bf238d80.txt
    sec. II-D) and, for the RDM's layers, MUNIT's (its ref. [12]).

    RDM: ``rdm_channels`` of the first layer of every encoder/generator, doubled per content
    down-sampling; ``style_dim``: length of a style code; ``mlp_channels``: hidden width of the
    generators' AdaIN MLP; discriminators of ``discriminator_layers`` stride-2 convolutions at
    ``discriminator_scales`` scales.  R: channels per encoder / decoder level.
    Loss weights: eq. (3) (``weight_reconstruction`` ... ``weight_adversarial``: lambda_rec,
    lambda_lat, lambda_cc, lambda_adv) and eq. (12) (gamma_1 ... gamma_4)."""

    rdm_channels: int = 64
    content_downsamplings: int = 2
    residual_blocks: int = 4
    style_downsamplings: int = 4
    style_dim: int = 8
    mlp_channels: int = 256
    discriminator_channels: int = 64
    discriminator_layers: int = 4
    discriminator_scales: int = 3
    registration_encoder: tuple[int, ...] = (16, 32, 32, 32)
    registration_decoder: tuple[int, ...] = (32, 32, 32)
    weight_reconstruction: float = 10.0
    weight_latent: float = 1.0
    weight_cross_cycle: float = 10.0
    weight_adversarial: float = 1.0
    weight_smooth_forward: float = 1.0
    weight_smooth_backward: float = 1.0
    weight_content: float = 1.0
    weight_msd: float = 5.0
    rdm_learning_rate: float = 1e-3
    registration_learning_rate: float = 1e-4


class RepresentationDisentanglingModel(nn.Module):
    """The RDM's encoders and generators (Fig. 1b), one of each per domain ``"x"`` / ``"y"``."""

    def __init__(self, config: DisentangledConfig):
        super().__init__()
        c = config
        self.content = nn.ModuleDict({d: ContentEncoder(c.dim, c.rdm_channels, c.content_downsamplings, c.residual_blocks)
                                      for d in DOMAINS})
        self.style = nn.ModuleDict({d: StyleEncoder(c.dim, c.rdm_channels, c.style_downsamplings, c.style_dim)
                                    for d in DOMAINS})
        content_channels = self.content["x"].out_channels
        self.generator = nn.ModuleDict({d: Generator(c.dim, content_channels, c.content_downsamplings, c.residual_blocks,
                                                     c.style_dim, c.mlp_channels) for d in DOMAINS})

    def translate(self, image: torch.Tensor, source: str, style_image: torch.Tensor) -> torch.Tensor:
        """``image`` of domain ``source`` rendered in the other domain with the style code of
        ``style_image`` (of that domain): eq. (2), ``G_t(E_c^s(image), E_s^t(style_image))``."""
        target = "y" if source == "x" else "x"
        return self.generator[target](self.content[source](image), self.style[target](style_image))


def _l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().mean()


def _logits_loss(logits: list[torch.Tensor], real: bool) -> torch.Tensor:
    """Cross-entropy of multi-scale discriminator logits against "real" (1) or "fake" (0),
    mean over positions, summed over scales."""
    return sum(F.binary_cross_entropy_with_logits(l, torch.full_like(l, float(real))) for l in logits)


class Disentangled(LearnedMethod):
    """Wu & Zhou's framework: a MUNIT-style RDM (trained first, then frozen) and a registration
    network trained in both directions on translated images and content codes."""

    name = "disentangled"
    config_class = DisentangledConfig
    stages = ("disentangle", "register")
    predicts_affine = False
    training_only = ("discriminators.",)
    finetune_stages = ("register",)

    def __init__(self, config: DisentangledConfig):
        super().__init__(config)
        c = config
        self.rdm = RepresentationDisentanglingModel(c)
        self.discriminators = nn.ModuleDict({d: MultiScaleDiscriminator(c.dim, c.discriminator_channels,
                                                                        c.discriminator_layers, c.discriminator_scales)
                                             for d in DOMAINS})
        self.registration = RegistrationNetwork(c.dim, c.registration_encoder, c.registration_decoder)

    def displacement(self, moving: torch.Tensor, target: torch.Tensor, geometry: Geometry) -> torch.Tensor:
        """``R(moving, target)`` in mm ``(B, dim, *shape)``: ``moving(p + u(p))`` matches ``target``."""
        return index_to_physical_vectors(self.registration(moving, target), geometry)

    def predict(self, fixed: torch.Tensor, moving: torch.Tensor, geometry: Geometry) -> Prediction:
        """``phi_1 = R(moving, fixed)``; inverse: ``phi_2 = R(fixed, moving)`` (the fixed image
        registered to the moving one, a map from the moving grid to the fixed grid); both
        translations: ``"moving_in_fixed_contrast" = G_y(E_c^x(moving), E_s^y(fixed))`` and
        ``"fixed_in_moving_contrast" = G_x(E_c^y(fixed), E_s^x(moving))``."""
        return Prediction(
            displacement=self.displacement(moving, fixed, geometry),
            inverse_displacement=self.displacement(fixed, moving, geometry),
            synthesised={
                "moving_in_fixed_contrast": self.rdm.translate(moving, "x", fixed),
                "fixed_in_moving_contrast": self.rdm.translate(fixed, "y", moving),
            },
        )

    def loss_terms(self, batch: TrainingBatch, stage: str) -> dict[str, torch.Tensor]:
        """Stage ``"disentangle"``: the encoders' and generators' loss, eq. (3); ``"register"``:
        R's loss, eq. (12).  ``x`` = the moving images, ``y`` = the fixed images.

        ``L_lat`` has four terms: eqs. (6)-(7) and their mirror images ``||E_c^x(G_x(C_y, S_x)) -
        C_y||``, ``||E_s^x(G_x(C_y, S_x)) - S_x||``.  The L1 norms of eqs. (4)-(8) and (11) are
        means over voxels and channels (MUNIT's reconstruction criterion); ``L_smooth`` (written
        as a sum over Omega) is the mean of ``|grad u|^2`` of ``u = phi - id``
        (:func:`dmmreg.regularisers.diffusion`, per mm, so the same at any spacing; the
        identity's gradient is constant)."""
        if stage == "disentangle":
            return self._disentangling_terms(batch.moving, batch.fixed)
        if stage == "register":
            return self._registration_terms(batch.moving, batch.fixed, batch.geometry)
        raise ValueError(f"unknown stage {stage!r}; stages: {self.stages}")

    def _disentangling_terms(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        rdm, cfg = self.rdm, self.config
        content = {"x": rdm.content["x"](x), "y": rdm.content["y"](y)}
        style = {"x": rdm.style["x"](x), "y": rdm.style["y"](y)}
        u = rdm.generator["x"](content["y"], style["x"])  # y translated to domain x (eq. 8)
        v = rdm.generator["y"](content["x"], style["y"])  # x translated to domain y
        content_u, style_u = rdm.content["x"](u), rdm.style["x"](u)
        content_v, style_v = rdm.content["y"](v), rdm.style["y"](v)
        terms = {
            "reconstruction_x": _l1(rdm.generator["x"](content["x"], style["x"]), x),  # eq. (4)
            "reconstruction_y": _l1(rdm.generator["y"](content["y"], style["y"]), y),  # eq. (5)
            "latent_content_x": _l1(content_v, content["x"]),  # eq. (6)
            "latent_style_y": _l1(style_v, style["y"]),  # eq. (7)
            "latent_content_y": _l1(content_u, content["y"]),
            "latent_style_x": _l1(style_u, style["x"]),
            "cross_cycle_x": _l1(rdm.generator["x"](content_v, style_u), x),  # eq. (8)
            "cross_cycle_y": _l1(rdm.generator["y"](content_u, style_v), y),
            "adversarial_x_to_y": _logits_loss(self.discriminators["y"](v), real=True),  # eq. (9), non-saturating
            "adversarial_y_to_x": _logits_loss(self.discriminators["x"](u), real=True),
        }
        parts = {
            "reconstruction": terms["reconstruction_x"] + terms["reconstruction_y"],
            "latent": terms["latent_content_x"] + terms["latent_style_x"] + terms["latent_content_y"] + terms["latent_style_y"],
            "cross_cycle": terms["cross_cycle_x"] + terms["cross_cycle_y"],
            "adversarial": terms["adversarial_x_to_y"] + terms["adversarial_y_to_x"],
        }
        total = (cfg.weight_reconstruction * parts["reconstruction"] + cfg.weight_latent * parts["latent"]
                 + cfg.weight_cross_cycle * parts["cross_cycle"] + cfg.weight_adversarial * parts["adversarial"])
        return {**terms, **parts, "total": total}

    def discriminator_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``-lambda_adv (L_adv^{x->y} + L_adv^{y->x})`` (eq. 9) for the discriminators: real images
        against translations made by the current encoders and generators (not trained here)."""
        with torch.no_grad():
            v = self.rdm.translate(x, "x", y)
            u = self.rdm.translate(y, "y", x)
        loss = (_logits_loss(self.discriminators["y"](y), real=True) + _logits_loss(self.discriminators["y"](v), real=False)
                + _logits_loss(self.discriminators["x"](x), real=True) + _logits_loss(self.discriminators["x"](u), real=False))
        return self.config.weight_adversarial * loss

    def _registration_terms(self, x: torch.Tensor, y: torch.Tensor, geometry: Geometry) -> dict[str, torch.Tensor]:
        rdm, cfg = self.rdm, self.config
        phi_1 = self.displacement(x, y, geometry)
        phi_2 = self.displacement(y, x, geometry)
        x_hat = warp_on_grid(x, geometry, phi_1)  # x aligned to y
        y_hat = warp_on_grid(y, geometry, phi_2)  # y aligned to x
        with torch.no_grad():  # codes of the unwarped images do not depend on R
            content_x, content_y = rdm.content["x"](x), rdm.content["y"](y)
            style_x, style_y = rdm.style["x"](x), rdm.style["y"](y)
        content_x_hat, content_y_hat = rdm.content["x"](x_hat), rdm.content["y"](y_hat)
        x_tilde = rdm.generator["x"](content_y_hat, style_x)  # eq. (2)
        y_tilde = rdm.generator["y"](content_x_hat, style_y)
        terms = {
            "smooth_forward": regularisers.diffusion(phi_1, geometry).mean(),
            "smooth_backward": regularisers.diffusion(phi_2, geometry).mean(),
            "content": _l1(content_x_hat, content_y) + _l1(content_y_hat, content_x),  # eq. (11)
            "msd": (losses.mean_squared_error(x_tilde, x) + losses.mean_squared_error(y_tilde, y)).mean() / 2,  # eq. (10)
        }
        terms["total"] = (cfg.weight_smooth_forward * terms["smooth_forward"] + cfg.weight_smooth_backward * terms["smooth_backward"]
                          + cfg.weight_content * terms["content"] + cfg.weight_msd * terms["msd"])  # eq. (12)
        return terms

    def make_optimisers(self, stage: str) -> list[torch.optim.Optimizer]:
        """``"disentangle"``: [encoders and generators, discriminators], Adam 1e-3, betas (0.5,
        0.999); ``"register"``: [R], Adam 1e-4, with the RDM frozen (sec. II-D; ``requires_grad``
        off when this optimiser is made)."""
        cfg = self.config
        if stage == "disentangle":
            self.rdm.requires_grad_(True)
            return [torch.optim.Adam(module.parameters(), lr=cfg.rdm_learning_rate, betas=(0.5, 0.999))
                    for module in (self.rdm, self.discriminators)]
        if stage == "register":
            self.rdm.requires_grad_(False)
            return [torch.optim.Adam(self.registration.parameters(), lr=cfg.registration_learning_rate)]
        raise ValueError(f"unknown stage {stage!r}; stages: {self.stages}")

    def training_step(self, batch: TrainingBatch, optimisers: list[torch.optim.Optimizer], stage: str) -> dict[str, float]:
        """``"disentangle"``: one discriminator update, then one update of the encoders and
        generators (MUNIT's alternation); ``"register"``: one update of R."""
        if stage != "disentangle":
            return super().training_step(batch, optimisers, stage)
        generators, discriminators = optimisers
        discriminators.zero_grad(set_to_none=True)
        discriminator = self.discriminator_loss(batch.moving, batch.fixed)
        discriminator.backward()
        discriminators.step()
        generators.zero_grad(set_to_none=True)
        self.discriminators.requires_grad_(False)  # the adversarial terms train the generators only
        terms = self.loss_terms(batch, stage)
        terms["total"].backward()
        self.discriminators.requires_grad_(True)
        generators.step()
        return {**{k: float(v.detach()) for k, v in terms.items()}, "discriminator": float(discriminator.detach())}


MODEL = Disentangled
register = registration_function("disentangled")
