"""What a finished pair registration leaves in the scene, as the Registration module's Outputs
section chooses it (:class:`~dmmreg.slicer.registration_inputs.RegistrationParameters`):

* the forward transform: written into the transform node the user chose (that node alone is
  overwritten), or new nodes (nested grid and linear nodes, or one composed grid node);
* the moving volume: left under the result transform (the default: its voxels and geometry
  unchanged, only observed by the transform), or hardened, i.e. resampled by the backend on the
  fixed grid, into the volume node the user chose or a new one (the moving volume as it was);
* the inverse transform, when asked for, in new nodes.

Result transforms refer to the fixed and moving volumes (node references
:data:`~dmmreg.slicer.registration_inputs.FIXED_ROLE` and ``MOVING_ROLE``), as Slicer's
registration modules do.  Needs slicer-core; no torch.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field

import numpy as np

from . import mrml
from .registration_inputs import FIXED_ROLE, MOVING_ROLE, RegistrationParameters
from ..image import Image

logger = logging.getLogger("DeepMultiModalReg")


@dataclass
class RegistrationOutputs:
    """Nodes a finished registration added to the scene or overwrote (``nodes``), and the volume
    to show on the fixed one (``moved_volume``: the warped volume, or the moving volume left
    under the result transform)."""

    transform: mrml.TransformNodes | None = None
    warped_volume: object = None
    inverse_transform: mrml.TransformNodes | None = None
    transform_sequence: object = None
    warped_sequence: object = None
    browser: object = None
    moved_volume: object = None
    nodes: list = field(default_factory=list)


def describe(parameters: RegistrationParameters, fixed_name: str, moving_name: str) -> mrml.ResultDescription:
    """What the result nodes of this registration are (their ``DeepMultiModalReg.*`` attributes)."""
    return mrml.ResultDescription(
        method=parameters.method, model=parameters.model, settings=parameters.settings(),
        fixed=fixed_name, moving=moving_name,
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    )


def add_output_nodes(scene, parameters: RegistrationParameters, result, warped: Image | None) -> RegistrationOutputs:
    """The outputs of a finished pair registration (see the module docstring): new nodes named
    after the moving volume and the method, or the chosen nodes overwritten; ``warped`` is the
    moving image resampled on the fixed grid (``None`` unless ``harden_moving_volume``)."""
    p = parameters
    moving_name = p.moving_volume.GetName()
    description = describe(p, p.fixed_volume.GetName(), moving_name)
    name = f"{moving_name} to {p.fixed_volume.GetName()} ({p.method})"
    outputs = RegistrationOutputs()
    if p.output_transform:
        if p.output_transform_node is not None:
            outputs.transform = mrml.write_result_transform(p.output_transform_node, result, description,
                                                            p.composed_transform)
        else:
            outputs.transform = mrml.add_result_transform_nodes(scene, result, name, description, p.composed_transform)
        outputs.nodes += outputs.transform.nodes
        set_volume_references(outputs.transform.nodes, p)
    if p.output_inverse_transform:
        outputs.inverse_transform = mrml.add_result_transform_nodes(
            scene, result, name, description, p.composed_transform, inverse=True)
        outputs.nodes += outputs.inverse_transform.nodes
        set_volume_references(outputs.inverse_transform.nodes, p)
    if warped is not None:
        outputs.warped_volume = warped_volume_node(scene, p, warped.with_array(warped.array.astype(np.float32)),
                                                   f"{name} warped")
        mrml.set_attributes(outputs.warped_volume, description.attributes("warped volume"))
        outputs.nodes.append(outputs.warped_volume)
        outputs.moved_volume = outputs.warped_volume
    if not p.harden_moving_volume and outputs.transform is not None:
        p.moving_volume.SetAndObserveTransformNodeID(outputs.transform.leaf.GetID())
        outputs.moved_volume = p.moving_volume
    logger.info("registration finished: %s", ", ".join(node.GetName() for node in outputs.nodes))
    return outputs


def warped_volume_node(scene, parameters: RegistrationParameters, warped: Image, name: str):
    """The hardened moving volume in the chosen output volume node (its voxels and geometry
    replaced, its parent transform removed: the image is in world coordinates) or a new node."""
    node = parameters.output_volume_node
    if node is None:
        return mrml.add_volume_node(scene, warped, name)
    mrml.set_volume_image(node, warped)
    node.SetAndObserveTransformNodeID(None)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def set_volume_references(nodes, parameters: RegistrationParameters) -> None:
    """Each result transform node refers to the registration's fixed and moving volumes
    (roles :data:`FIXED_ROLE`, :data:`MOVING_ROLE`), as Slicer's registration modules do."""
    for node in nodes:
        node.SetNodeReferenceID(FIXED_ROLE, parameters.fixed_volume.GetID())
        node.SetNodeReferenceID(MOVING_ROLE, parameters.moving_volume.GetID())
