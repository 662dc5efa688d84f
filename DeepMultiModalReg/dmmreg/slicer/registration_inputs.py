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
#: Node reference roles on result transform nodes: the registration's fixed and moving volumes.
FIXED_ROLE, MOVING_ROLE = "Fixed", "Moving"


@dataclass
class RegistrationParameters:
    """Everything a registration needs; the module's parameter node holds the same fields.

    Outputs of a pair registration (a sequence always gives new sequences): the forward
    transform goes into ``output_transform_node`` when one is chosen (overwritten, nothing else
    is), else into new nodes; the moving volume is left under it (its voxels unchanged) or, with
    ``harden_moving_volume``, resampled on the fixed grid into ``output_volume_node`` (or a new
    volume), the moving volume left as it was."""

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
    output_transform_node: object = None  # a transform node to overwrite; None: new nodes
    composed_transform: bool = False
    harden_moving_volume: bool = False  # False: the moving volume is left under the result transform
    output_volume_node: object = None  # a scalar volume node for the hardened volume; None: a new one
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


def transforms_over(node) -> list:
    """The transform nodes ``node`` is under, nearest first."""
    chain, parent = [], node.GetParentTransformNode()
    while parent is not None:
        chain.append(parent)
        parent = parent.GetParentTransformNode()
    return chain


def is_earlier_result_over(transform_node, moving_volume) -> bool:
    """Whether ``transform_node`` is a forward result of an earlier registration of
    ``moving_volume`` (which left the moving volume under it)."""
    role = transform_node.GetAttribute(mrml.ATTRIBUTE_PREFIX + "Role") or ""
    return role.startswith("forward") and transform_node.GetNodeReference(MOVING_ROLE) is moving_volume


def moving_volume_parent(parameters: RegistrationParameters):
    """The transform node the moving volume counts as placed under in this registration
    (``None``: none): its parent transform, leaving out from below the transforms the run
    replaces, i.e. the chosen output transform and earlier results over the moving volume (so a
    second run registers the moving volume, not the first run's answer)."""
    p = parameters
    for node in transforms_over(p.moving_volume):
        replaced = p.output_transform and node is p.output_transform_node
        if not (replaced or is_earlier_result_over(node, p.moving_volume)):
            return node
    return None


def check_outputs(parameters: RegistrationParameters) -> None:
    """``InputError`` for output choices that cannot be honoured or would change an input: the
    moving volume left under no transform, a deformable result into a linear transform node, an
    output transform that is (or is above) an input, an input volume as output volume, or a
    moving volume under another transform that leaving it under the result would drop."""
    p = parameters
    if not (p.output_transform or p.harden_moving_volume):
        raise InputError("the moving volume is left under the result transform, so keep the transform output "
                         "(or harden the moving volume into an output volume)")
    chosen = p.output_transform_node if p.output_transform else None
    if chosen is not None:
        name = chosen.GetName()
        if chosen.IsA("vtkMRMLLinearTransformNode") and p.transform == "deformable":
            raise InputError(f"the output transform '{name}' is a linear transform node but the deformable "
                             "transform is not linear; choose another transform node or create a new one")
        for what, node in (("initial transform", p.initial_transform), ("fixed volume", p.fixed_volume),
                           ("fixed mask", p.fixed_mask), ("moving mask", p.moving_mask)):
            if node is not None and (node is chosen or chosen in transforms_over(node)):
                raise InputError(f"the output transform '{name}' is or moves the {what} '{node.GetName()}', which "
                                 "must not change; choose another transform node or create a new one")
    if p.harden_moving_volume:
        if p.output_volume_node is not None and p.output_volume_node in (p.fixed_volume, p.moving_volume):
            raise InputError(f"the output volume '{p.output_volume_node.GetName()}' is an input volume, which must "
                             "not change; choose another volume or create a new one")
        return
    other = moving_volume_parent(p)
    if other is not None:
        raise InputError(f"the moving volume '{p.moving_volume.GetName()}' is under the transform '{other.GetName()}', "
                         "which leaving it under the result would drop; harden that transform first, or harden the "
                         "moving volume into an output volume")


def check_parameters(parameters: RegistrationParameters) -> PairInputs:
    """Read and check the input nodes; ``InputError`` names the problem and changes nothing."""
    p = parameters
    if p.fixed_volume is None or p.moving_volume is None:
        raise InputError("select both a fixed and a moving volume")
    if p.fixed_volume is p.moving_volume:
        raise InputError("the fixed and moving volumes are the same node; select two volumes")
    check_settings(p)
    check_outputs(p)
    fixed = mrml.image_from_volume_node(p.fixed_volume, "fixed volume")
    moving = mrml.image_from_volume_node(p.moving_volume, "moving volume", moving_volume_parent(p))
    inputs = check_pair(fixed, moving, p.fixed_volume.GetName(), p.moving_volume.GetName(),
                        initial_affine_of(p.initial_transform))
    inputs.fixed_mask = _checked_mask(p.fixed_mask, p.fixed_volume, "fixed mask", inputs.fixed_plane)
    inputs.moving_mask = _checked_mask(p.moving_mask, p.moving_volume, "moving mask", inputs.moving_plane)
    return inputs
