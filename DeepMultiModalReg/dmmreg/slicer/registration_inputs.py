"""What the Registration module takes and whether it can be registered: the parameters (the
module's parameter node holds the same fields) and their checks.

:func:`check_parameters` reads the input nodes and raises ``InputError`` (the problem and the
fix) before anything is written or added; it returns :class:`PairInputs`, the images in the form
the backend gets them.  The pair rule itself (image content, dimension, overlap) is the
backend's (:func:`dmmreg.geometry.check_overlap`, :func:`dmmreg.image.check_image`), so the
module refuses exactly what ``dmmreg register`` refuses; the module adds single-slice (2D)
volumes, masks given as nodes and initial transform nodes.

Needs slicer-core; no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from . import mrml
from .background import DEVICES
from ..errors import InputError
from ..geometry import check_overlap
from ..image import Image, check_image
from ..methods import DEFAULT_REFINE_ITERATIONS, LEARNED_METHODS, check_model_options, check_transform

QUALITIES = ("fast", "balanced", "accurate")
#: Similarity measures of the optimise method (``dmmreg register --similarity``).
SIMILARITIES = ("nmi", "lncc", "mind")


@dataclass
class RegistrationParameters:
    """Everything a registration needs; the module's parameter node holds the same fields."""

    fixed_volume: object = None
    moving_volume: object = None
    fixed_mask: object = None
    moving_mask: object = None
    initial_transform: object = None
    method: str = "optimise"
    model: str = ""
    device: str = "auto"
    quality: str = "balanced"
    transform: str = "deformable"  # rigid | affine | deformable (dmmreg.methods.TRANSFORMS)
    refine: int = DEFAULT_REFINE_ITERATIONS
    output_transform: bool = True
    composed_transform: bool = False
    output_warped_volume: bool = True
    output_inverse_transform: bool = False
    similarity: str = "nmi"  # SIMILARITIES: the optimise method's measure
    keep_temporary_files: bool = False  # keep the background run's folder and its log (for a bug report)

    @classmethod
    def from_object(cls, source) -> RegistrationParameters:
        """Copy the same-named attributes of ``source`` (e.g. the module's parameter node)."""
        return cls(**{f.name: getattr(source, f.name) for f in fields(cls) if hasattr(source, f.name)})

    def settings(self) -> dict:
        """The non-node settings, as stored in the result nodes' attributes."""
        return {"method": self.method, "model": self.model, "device": self.device, "quality": self.quality,
                "transform": self.transform, "refine": self.refine, "similarity": self.similarity}

    @property
    def refines(self) -> bool:
        """Whether the refinement setting applies: a learned method's deformable registration."""
        return self.method in LEARNED_METHODS and self.transform == "deformable"


@dataclass
class PairInputs:
    """Checked images of one registration, in the form the backend gets them (LPS; 2D plane
    coordinates for single-slice volumes, with their planes)."""

    fixed: Image
    moving: Image
    fixed_mask: Image | None = None
    moving_mask: Image | None = None
    initial_affine_lps: np.ndarray | None = None
    fixed_geometry_3d: object = None
    moving_geometry_3d: object = None
    fixed_plane: mrml.Plane | None = None
    moving_plane: mrml.Plane | None = None


def check_pair(fixed: Image, moving: Image, fixed_name: str, moving_name: str,
               initial_affine_lps: np.ndarray | None = None) -> PairInputs:
    """Raise ``InputError`` for images that cannot be registered; return them ready for the backend."""
    _check_image_or_slice(fixed, f"the fixed volume '{fixed_name}'")
    _check_image_or_slice(moving, f"the moving volume '{moving_name}'")
    fixed_2d, moving_2d = mrml.is_single_slice(fixed.geometry), mrml.is_single_slice(moving.geometry)
    if fixed_2d != moving_2d:
        kinds = {True: "2D (a single slice)", False: "3D"}
        raise InputError(
            f"the fixed volume '{fixed_name}' is {kinds[fixed_2d]} but the moving volume '{moving_name}' is "
            f"{kinds[moving_2d]}; register volumes of the same dimension"
        )
    # in 3D, where the slices of single-slice volumes are (a slice counts with its thickness)
    check_overlap(fixed.geometry, moving.geometry, initial_affine_lps,
                  f"the fixed volume '{fixed_name}'", f"the moving volume '{moving_name}'")
    inputs = PairInputs(fixed, moving, initial_affine_lps=initial_affine_lps,
                        fixed_geometry_3d=fixed.geometry, moving_geometry_3d=moving.geometry)
    if fixed_2d:
        if initial_affine_lps is not None:
            raise InputError("an initial transform is not supported for single-slice (2D) volumes")
        inputs.fixed, inputs.fixed_plane = mrml.split_plane(fixed)
        inputs.moving, inputs.moving_plane = mrml.split_plane(moving)
    return inputs


def _check_image_or_slice(image: Image, what: str) -> None:
    """:func:`check_image` that accepts a single slice (size 1 along k)."""
    if mrml.is_single_slice(image.geometry):
        image = mrml.split_plane(image)[0]
    check_image(image, what)


def _checked_mask(mask_node, reference_node, what: str, inputs_plane: mrml.Plane | None) -> Image | None:
    if mask_node is None:
        return None
    mask = mrml.mask_from_node(mask_node, reference_node, what)
    if inputs_plane is None:
        return mask
    if not mrml.is_single_slice(mask.geometry):
        raise InputError(f"the {what} '{mask_node.GetName()}' must be a single slice like its volume")
    plane_mask, plane = mrml.split_plane(mask)
    if not plane.same_as(inputs_plane):
        raise InputError(f"the {what} '{mask_node.GetName()}' must lie in the plane of its volume")
    return plane_mask


def initial_affine_of(transform_node) -> np.ndarray | None:
    """LPS resampling matrix (fixed to moving) of the optional initial transform node."""
    return None if transform_node is None else mrml.resampling_matrix_lps(transform_node)


def check_settings(parameters: RegistrationParameters) -> None:
    """``InputError`` for an unknown quality, transform or device, or a model / refinement for a
    method that has no network."""
    check_transform(parameters.transform)
    # the refinement setting is the learned methods' deformable one (the panel keeps it for them)
    check_model_options(parameters.method, parameters.model, parameters.refine if parameters.refines else None,
                        parameters.transform)
    if parameters.quality not in QUALITIES:
        raise InputError(f"quality must be one of {', '.join(QUALITIES)}, not '{parameters.quality}'")
    if parameters.device not in DEVICES:
        raise InputError(f"device must be one of {', '.join(DEVICES)}, not '{parameters.device}'")
    if parameters.similarity not in SIMILARITIES:
        raise InputError(f"similarity must be one of {', '.join(SIMILARITIES)}, not '{parameters.similarity}'")


def check_parameters(parameters: RegistrationParameters) -> PairInputs:
    """Read and check the input nodes; ``InputError`` names the problem and changes nothing."""
    p = parameters
    if p.fixed_volume is None or p.moving_volume is None:
        raise InputError("select both a fixed and a moving volume")
    if p.fixed_volume is p.moving_volume:
        raise InputError("the fixed and moving volumes are the same node; select two volumes")
    check_settings(p)
    if not (p.output_transform or p.output_warped_volume or p.output_inverse_transform):
        raise InputError("choose at least one output (transform, warped volume or inverse transform)")
    fixed = mrml.image_from_volume_node(p.fixed_volume, "fixed volume")
    moving = mrml.image_from_volume_node(p.moving_volume, "moving volume")
    inputs = check_pair(fixed, moving, p.fixed_volume.GetName(), p.moving_volume.GetName(),
                        initial_affine_of(p.initial_transform))
    inputs.fixed_mask = _checked_mask(p.fixed_mask, p.fixed_volume, "fixed mask", inputs.fixed_plane)
    inputs.moving_mask = _checked_mask(p.moving_mask, p.moving_volume, "moving mask", inputs.moving_plane)
    return inputs
