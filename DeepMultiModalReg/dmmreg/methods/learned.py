"""What every learned (network) method shares: its configuration, its prediction, its training
batch, the model grid it runs on, and the one ``register`` path from images to a
:class:`~dmmreg.result.RegistrationResult`.

Data flow of a learned registration (:func:`register_with_model`)::

    fixed, moving Image  ->  normalised tensors on the *model grid* (fixed field of view plus a
    margin, isotropic ``spacing_mm``, axis-aligned in patient space)  ->  network prediction
    (affine ``A_n``, displacement ``u`` in mm on that grid, inverse, synthesised images)  ->
    RegistrationResult ``T(p) = A0 A_n (p + u(p))`` in physical space  ->  optional refinement
    by the ``optimise`` method.

``A0`` is the starting affine: the user's initial transform, else an affine pre-alignment by
``optimise`` (methods whose networks are deformable only, as in their papers), else a
centre-of-mass shift (methods that predict their own affine, e.g. FIRE).  The moving image is
resampled onto the model grid through ``A0`` before the network sees it.

Rigid and affine registrations (``transform``) stop before the displacement field: a network
without an affine part is not run and the answer is the rigid or affine pre-alignment; FIRE's
affine answer is its network's affine part ``A0 A_n`` (no field, no refinement).  FIRE's affine
part is a general affine that cannot be made rigid, so a rigid registration with FIRE is, as
with every learned method, the rigid pre-alignment.

Network outputs are converted to physical units with :func:`index_to_physical_vectors`, so the
networks themselves work in voxel units of the model grid and never see the geometry.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from .. import spatial
from ..errors import InputError
from ..geometry import Geometry
from ..image import Image, normalise_intensity
from ..progress import ProgressCallback
from ..result import RegistrationResult


@dataclass
class ModelConfig:
    """Settings shared by every learned method (each method subclasses it with its own).

    ``dim``: 2 or 3; ``spacing_mm``: isotropic spacing of the model grid; ``margin_mm``: the
    model grid covers the fixed field of view plus this much on every side."""

    dim: int = 3
    spacing_mm: float = 2.0
    margin_mm: float = 8.0

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """Config from a model card's ``config`` (lists become tuples; unknown keys are an error)."""
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise InputError(f"model card has settings {sorted(unknown)} that {cls.__name__} does not know; "
                             "the model was made by another version of DeepMultiModalReg")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


@dataclass
class Prediction:
    """A network's answer on the model grid ``geometry`` (both images were presented there).

    * ``displacement``: ``u (B, dim, *shape)`` in mm (components x, y, z, LPS): the resampling
      map of the network is ``T_n(p) = A_n(p + u(p))``, fixed-grid point to moving-image point.
    * ``affine``: ``A_n (B, dim+1, dim+1)`` physical homogeneous matrices, or None (identity).
    * ``inverse_displacement`` / ``inverse_affine``: the backward map in the same form,
      ``T_n^-1(q) = A_i(q + w(q))``, where the method predicts one (bi-directional methods,
      exp(-v) of a velocity field); None: computed numerically from ``u``.
    * ``synthesised``: images the method made, ``(B, 1, *shape)`` on the model grid, keyed by
      what they are: ``"moving_in_fixed_contrast"`` (the moving image as the network presented
      it, rendered in the fixed image's contrast, not warped), ``"fixed_in_moving_contrast"``.
    """

    displacement: torch.Tensor
    affine: torch.Tensor | None = None
    inverse_displacement: torch.Tensor | None = None
    inverse_affine: torch.Tensor | None = None
    synthesised: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class TrainingBatch:
    """Images on one model grid ``geometry``, normalised to [0, 1], ``(B, 1, *shape)``.

    ``fixed`` and ``moving`` are of different contrasts (or the same, for mono-modal training);
    ``true_displacement`` (known-warp pairs: ``G(p) - p`` in mm on ``geometry``) is for
    validation and must never enter an unsupervised loss; masks are 1 inside the object; label
    maps (integer, ``(B, 1, *shape)``), where known, are for validation (Dice) only."""

    fixed: torch.Tensor
    moving: torch.Tensor
    geometry: Geometry
    fixed_mask: torch.Tensor | None = None
    moving_mask: torch.Tensor | None = None
    true_displacement: torch.Tensor | None = None
    fixed_labels: torch.Tensor | None = None
    moving_labels: torch.Tensor | None = None

    def to(self, device) -> "TrainingBatch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return TrainingBatch(move(self.fixed), move(self.moving), self.geometry, move(self.fixed_mask),
                             move(self.moving_mask), move(self.true_displacement), move(self.fixed_labels),
                             move(self.moving_labels))


class LearnedMethod(nn.Module):
    """Base of the five papers' methods.  A subclass sets the class attributes and implements
    :meth:`predict`, :meth:`loss_terms`, :meth:`make_optimisers` and (when its paper updates
    parts of the model in turn, e.g. adversarially) :meth:`training_step`.

    * ``name``: the method's name in the registry and on the command line.
    * ``config_class``: its :class:`ModelConfig` subclass.
    * ``stages``: training stages in order (e.g. ``("disentangle", "register")``); one stage
      ``("train",)`` for end-to-end methods.
    * ``predicts_affine``: whether the network predicts an affine part itself (then the model
      starts from a centre-of-mass shift, else from an affine pre-alignment).
    * ``training_only``: prefixes of parameters needed for training only (e.g. discriminators),
      not saved with the model.
    * ``finetune_stages``: the stages fine-tuning runs by default (the registration stages).
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    stages: ClassVar[tuple[str, ...]] = ("train",)
    predicts_affine: ClassVar[bool] = False
    training_only: ClassVar[tuple[str, ...]] = ()
    finetune_stages: ClassVar[tuple[str, ...]] = ("train",)

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.dim not in (2, 3):
            raise InputError(f"a model is 2D or 3D, not {config.dim}D")
        self.config = config

    @property
    def dim(self) -> int:
        return self.config.dim

    def predict(self, fixed: torch.Tensor, moving: torch.Tensor, geometry: Geometry) -> Prediction:
        """Register ``moving`` to ``fixed`` (``(B, 1, *shape)`` on ``geometry``)."""
        raise NotImplementedError

    def loss_terms(self, batch: TrainingBatch, stage: str) -> dict[str, torch.Tensor]:
        """Every term of the paper's loss for ``stage``, each a scalar, and ``"total"`` (the
        weighted sum that the stage's optimisers minimise)."""
        raise NotImplementedError

    def make_optimisers(self, stage: str) -> list[torch.optim.Optimizer]:
        """The optimisers of ``stage``, with the paper's learning rates."""
        raise NotImplementedError

    def training_step(self, batch: TrainingBatch, optimisers: list[torch.optim.Optimizer], stage: str) -> dict[str, float]:
        """One update of ``stage``; returns the value of every loss term.  Default: all
        optimisers step on ``loss_terms(...)["total"]``."""
        for optimiser in optimisers:
            optimiser.zero_grad(set_to_none=True)
        terms = self.loss_terms(batch, stage)
        terms["total"].backward()
        for optimiser in optimisers:
            optimiser.step()
        return {k: float(v.detach()) for k, v in terms.items()}


# --------------------------------------------------------------------------------------------
# Geometry of the model grid, and conversions between voxel and physical units


def model_grid(fixed_geometry: Geometry, spacing_mm: float, margin_mm: float, multiple: int = 16) -> Geometry:
    """The grid a model runs on for this fixed image: axis-aligned in patient space (identity
    direction, so index axes x, y, z are L, P, S for every input, whatever its orientation),
    covering the fixed image's bounding box plus ``margin_mm``, isotropic ``spacing_mm``,
    centred on the fixed centre, each axis a multiple of ``multiple`` voxels (so every U-net
    level halves it exactly)."""
    dim = fixed_geometry.dim
    corners = fixed_geometry.corners
    extent = corners.max(axis=0) - corners.min(axis=0) + 2 * margin_mm
    size = np.ceil(extent / spacing_mm - 1e-6).astype(int) + 1
    size = (np.ceil(size / multiple) * multiple).astype(int)
    origin = fixed_geometry.centre - (size - 1) * spacing_mm / 2
    return Geometry(tuple(size), (float(spacing_mm),) * dim, tuple(origin), np.eye(dim))


def index_to_physical_vectors(vectors: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Vectors ``(B, dim, *shape)`` in voxel units along the index axes (x, y, z) of
    ``geometry`` -> physical (LPS, mm): ``v_mm = D diag(spacing) v_voxels``."""
    dim = geometry.dim
    m = torch.as_tensor(geometry.index_to_physical[:dim, :dim], dtype=vectors.dtype, device=vectors.device)
    return torch.einsum("dk,bk...->bd...", m, vectors)


def affine_from_parameters(parameters: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Batched physical affines ``(B, dim+1, dim+1)`` from ``(B, dim*(dim+1))`` network outputs.

    The outputs are read in the index frame of ``geometry`` about its centre, ``p' = c + (I + L)(p - c)
    + t`` with ``L`` the first ``dim*dim`` outputs (row-major) and ``t`` the last ``dim`` in
    voxels, then expressed in physical coordinates; zero outputs give the identity."""
    b = parameters.shape[0]
    dim = geometry.dim
    linear = torch.eye(dim, dtype=parameters.dtype, device=parameters.device) + parameters[:, : dim * dim].reshape(b, dim, dim)
    shift = parameters[:, dim * dim:]
    index = torch.zeros(b, dim + 1, dim + 1, dtype=parameters.dtype, device=parameters.device)
    index[:, :dim, :dim] = linear
    centre = torch.as_tensor((np.asarray(geometry.size) - 1) / 2, dtype=parameters.dtype, device=parameters.device)
    index[:, :dim, dim] = centre + shift - (linear @ centre[:, None])[..., 0]
    index[:, dim, dim] = 1
    to_physical = torch.as_tensor(geometry.index_to_physical, dtype=parameters.dtype, device=parameters.device)
    to_index = torch.as_tensor(geometry.physical_to_index, dtype=parameters.dtype, device=parameters.device)
    return to_physical @ index @ to_index


def warp_on_grid(image: torch.Tensor, geometry: Geometry, displacement: torch.Tensor,
                 affine: torch.Tensor | None = None, mode: str = "linear") -> torch.Tensor:
    """``image (B, C, *shape)`` on ``geometry`` seen through ``A(p + u(p))`` (same grid in and out;
    outside the grid: the edge value, as the images are zero-padded by the model grid's margin)."""
    return spatial.warp(image, geometry, geometry, affine, displacement, mode=mode, padding="border")


def compose_maps(first_affine, first_displacement, second_affine, second_displacement, geometry: Geometry) -> torch.Tensor:
    """Points of ``T2(T1(p))`` for every voxel ``p`` of ``geometry``, ``(B, *shape, dim)``, where
    ``T_k(p) = A_k(p + u_k(p))`` (affines may be None)."""
    points = spatial.transform_points(geometry, first_affine, first_displacement)
    inner = points + spatial.field_at(second_displacement, geometry, points)
    return inner if second_affine is None else spatial.apply_matrix(inner, second_affine)


# --------------------------------------------------------------------------------------------
# From images to a registration result


def image_tensor(image: Image, mask: Image | None, device) -> torch.Tensor:
    """Percentile-normalised intensities ``(1, 1, *shape)`` float32."""
    array = normalise_intensity(image.array, None if mask is None else mask.array)
    return torch.as_tensor(array, device=device)[None, None]


def onto_model_grid(volume: torch.Tensor, source: Geometry, geometry: Geometry, affine=None, mode: str = "linear") -> torch.Tensor:
    """``volume (B, C, *shape)`` on ``source`` resampled onto the model grid through ``p -> A p``
    (zeros outside), smoothed first (linear mode) when the model grid is coarser."""
    if mode == "linear":
        volume = spatial.antialias(volume, source, geometry.spacing)
    return spatial.warp(volume, source, geometry, affine=affine, mode=mode)


def register_with_model(
    model: LearnedMethod,
    fixed: Image,
    moving: Image,
    fixed_mask: Image | None = None,
    moving_mask: Image | None = None,
    device="cpu",
    initial_affine: np.ndarray | None = None,
    refine: int = 0,
    progress: ProgressCallback | None = None,
    model_name: str = "",
    transform: str = "deformable",
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` with a trained ``model`` (see the module docstring).

    ``refine``: iterations of the ``optimise`` method's deformable stage started from the
    network's answer (0: the network alone; deformable only).  ``transform``: rigid, affine or
    deformable.  The inputs are not modified."""
    from . import check_model_options, check_transform
    from .optimise import prealign

    start = time.perf_counter()
    report = progress or (lambda *_: None)
    device = torch.device(device)
    check_transform(transform)
    check_model_options(model.name, None, refine, transform)
    if fixed.dim != model.dim:
        raise InputError(f"the model {model_name or model.name!r} is {model.dim}D but the images are {fixed.dim}D; "
                         f"choose a {fixed.dim}D model")
    if transform == "rigid" or (transform == "affine" and not model.predicts_affine):
        result = RegistrationResult(fixed.geometry, moving.geometry, prealign(
            fixed, moving, fixed_mask, moving_mask, device, transform, initial_affine, report), method=model.name,
            settings={"model": model_name, "transform": transform, "network": f"not run: the {transform} pre-alignment"})
        return _finished(result, start, report)
    if initial_affine is None:  # deformable-only networks: affine pre-alignment; else centre of mass
        initial_affine = prealign(fixed, moving, fixed_mask, moving_mask, device,
                                  "translation" if model.predicts_affine else "affine", progress=report)
    cfg = model.config
    geometry = model_grid(fixed.geometry, cfg.spacing_mm, cfg.margin_mm)
    report("predict", 0.3, f"running the {model.name} network on a {'x'.join(map(str, geometry.size))} grid at {cfg.spacing_mm:g} mm")
    fixed_t = onto_model_grid(image_tensor(fixed, fixed_mask, device), fixed.geometry, geometry)
    moving_t = onto_model_grid(image_tensor(moving, moving_mask, device), moving.geometry, geometry,
                               affine=torch.as_tensor(initial_affine, dtype=torch.float32, device=device))
    model.to(device).eval()
    with torch.no_grad():
        prediction = model.predict(fixed_t, moving_t, geometry)
        result = result_from_prediction(prediction, geometry, fixed.geometry, moving.geometry, initial_affine)
    if transform == "affine":  # the network's affine part alone
        result = replace(result, field_geometry=None, displacement=None, inverse_displacement=None)
    result.method = model.name
    result.settings = {"model": model_name, **asdict(cfg), "refine": refine, "transform": transform}
    if refine > 0:
        from .optimise import refine_result

        report("refine", 0.6, f"refining the network's answer with {refine} optimise iterations")
        result = refine_result(result, fixed, moving, fixed_mask, moving_mask, device, refine, report)
    return _finished(result, start, report)


def _finished(result: RegistrationResult, start: float, report: ProgressCallback) -> RegistrationResult:
    """``result`` with its run time (s) since ``start``, reported done."""
    result.seconds = time.perf_counter() - start
    report("done", 1.0, f"registration finished in {result.seconds:.1f} s")
    return result


def result_from_prediction(prediction: Prediction, geometry: Geometry, fixed_geometry: Geometry,
                           moving_geometry: Geometry, initial_affine: np.ndarray) -> RegistrationResult:
    """The physical result ``T(p) = A0 A_n (p + u(p))`` of a prediction for batch item 0, with the
    inverse field on the model grid: ``w(r) = T_n^-1(A_n r) - r`` (from the predicted inverse,
    or by fixed-point inversion of ``u``), so ``T^-1(q) = A^-1 q + w(A^-1 q)`` (``A0`` cancels)."""
    dim = geometry.dim
    u = prediction.displacement[:1].double()
    a_n = torch.eye(dim + 1, dtype=torch.float64) if prediction.affine is None else prediction.affine[0].double().cpu()
    if prediction.inverse_displacement is None:
        w = spatial.invert_displacement(u, geometry)
    else:
        grid = spatial.grid_points(geometry, device=u.device, dtype=torch.float64)
        points = spatial.apply_matrix(grid, a_n.to(u.device))[None]
        back = points + spatial.field_at(prediction.inverse_displacement[:1].double(), geometry, points)
        if prediction.inverse_affine is not None:
            back = spatial.apply_matrix(back, prediction.inverse_affine[0].double())
        w = spatial.to_channels_first(back - grid)
    synthesised = {
        key: Image(image[0, 0].detach().float().cpu().numpy(), geometry) for key, image in prediction.synthesised.items()
    }
    return RegistrationResult(
        fixed_geometry=fixed_geometry,
        moving_geometry=moving_geometry,
        affine=np.asarray(initial_affine, dtype=np.float64) @ a_n.numpy(),
        field_geometry=geometry,
        displacement=spatial.to_channels_last(u)[0].cpu().numpy(),
        inverse_displacement=spatial.to_channels_last(w)[0].cpu().numpy(),
        synthesised=synthesised,
    )


def registration_function(name: str):
    """``register(fixed, moving, ...)`` for the registry: loads the model (``model``: a path or a
    bundled model's name; default: the bundled model of method ``name`` for the images'
    dimension) and runs :func:`register_with_model`; ``refine``: ``optimise`` iterations after the
    network (None: :data:`~dmmreg.methods.DEFAULT_REFINE_ITERATIONS`, the accurate mode; 0: the
    network alone; rigid and affine transforms: none).  ``quality`` is accepted for the
    registry's common signature."""

    def register(fixed, moving, fixed_mask=None, moving_mask=None, device="cpu", quality="balanced",
                 initial_affine=None, progress=None, model=None, refine: int | None = None,
                 transform: str = "deformable", **overrides) -> RegistrationResult:
        from ..model_io import find_model, load_model

        from . import DEFAULT_REFINE_ITERATIONS, check_model_options

        if overrides:
            raise InputError(f"method {name!r} does not take {', '.join(sorted(overrides))} (these are "
                             "settings of the optimise method)")
        check_model_options(name, model, refine, transform)
        if refine is None:
            refine = DEFAULT_REFINE_ITERATIONS if transform == "deformable" else 0
        path = find_model(name, fixed.dim, model)
        network, card = load_model(path, method=name, device=device)
        return register_with_model(network, fixed, moving, fixed_mask, moving_mask, device, initial_affine,
                                   refine, progress, model_name=card.get("name", str(path)), transform=transform)

    register.__doc__ = f"Entry point of the method registry: the trained {name!r} network (see :func:`register_with_model`)."
    return register
