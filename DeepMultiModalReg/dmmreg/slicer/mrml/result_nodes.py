"""A backend registration result as transform nodes in the scene, nested or composed, forward
or inverse, or written into one transform node the user chose; each node described by
``DeepMultiModalReg.*`` attributes.

A result is the *resampling* transform ``T(p) = A(p + u(p))`` (LPS, mm), fixed-space points to
moving-space points; its nodes hold it as their FromParent direction (RAS), so a moving volume
placed under the leaf node is displayed on the fixed volume.  The inverse (moving to fixed)
puts the fixed volume on the moving one.

Needs slicer-core (``vtk``) and numpy; never torch.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass

import numpy as np

from ...errors import InputError
from ...geometry import Geometry
from .scene import ATTRIBUTE_PREFIX, set_attributes
from .transforms import (add_grid_transform_node, add_linear_transform_node, grid_transform_from_field,
                         linear_transform_from_parent, sampled_displacement_lps)


@dataclass
class ResultDescription:
    """What a result node is; stored as node attributes ``DeepMultiModalReg.*``."""

    method: str
    model: str = ""
    settings: dict | None = None
    fixed: str = ""
    moving: str = ""
    date: str = ""

    def attributes(self, role: str) -> dict[str, str]:
        date = self.date or datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        values = {
            "Role": role,
            "Method": self.method,
            "Model": self.model,
            "Settings": json.dumps(self.settings or {}, sort_keys=True),
            "Fixed": self.fixed,
            "Moving": self.moving,
            "Date": date,
        }
        return {ATTRIBUTE_PREFIX + key: value for key, value in values.items()}


@dataclass
class TransformNodes:
    """Transform nodes of one result: ``top`` is the outermost (parent-most) node, ``leaf`` the
    node to place a volume under (the same node when there is only one)."""

    top: object
    leaf: object

    @property
    def nodes(self) -> list:
        return [self.top] if self.top is self.leaf else [self.top, self.leaf]


def _resampling_parts(result, inverse: bool):
    """``[(kind, value)]`` applied in this order to a parent-space point: the resampling
    transform (``inverse``: its inverse) as a sequence of ("field", array) and ("affine", matrix)."""
    if inverse:
        if result.displacement is not None and result.inverse_displacement is None:
            raise InputError("the result has no inverse field; register with the inverse transform requested")
        parts = [("affine", np.linalg.inv(result.affine))]
        if result.inverse_displacement is not None:
            parts.append(("field", result.inverse_displacement))
        return parts
    parts = [("field", result.displacement)] if result.displacement is not None else []
    return parts + [("affine", result.affine)]


def _vtk_transform_of(kind: str, value, field_geometry: Geometry):
    return grid_transform_from_field(value, field_geometry) if kind == "field" else linear_transform_from_parent(value)


def _chained(parts, field_geometry: Geometry):
    """One ``vtkGeneralTransform`` applying ``parts`` (see :func:`_resampling_parts`) in order."""
    import vtk

    chain = vtk.vtkGeneralTransform()
    chain.PostMultiply()  # each Concatenate is applied after the ones before
    for kind, value in parts:
        chain.Concatenate(_vtk_transform_of(kind, value, field_geometry))
    return chain


def result_transform(result, composed: bool = False):
    """The whole forward result as one VTK transform (RAS, FromParent, i.e. fixed to moving):
    one linear transform for an affine-only result, else the exact chain of the displacement
    field and the affine matrix or, with ``composed``, one grid transform sampled on
    :meth:`~dmmreg.result.RegistrationResult.composed_field_geometry`."""
    parts = _resampling_parts(result, inverse=False)
    if len(parts) == 1:
        return _vtk_transform_of(*parts[0], result.field_geometry)
    chain = _chained(parts, result.field_geometry)
    if not composed:
        return chain
    geometry = result.composed_field_geometry(False)
    return grid_transform_from_field(sampled_displacement_lps(chain, geometry), geometry)


def write_result_transform(node, result, description: ResultDescription, composed: bool = False) -> TransformNodes:
    """Overwrite the transform node ``node`` (chosen by the user) with the whole forward result
    (:func:`result_transform`, FromParent); it is moved to the top of the scene (its own parent
    transform removed, so it maps world points) and described by ``DeepMultiModalReg.*``
    attributes.  Nothing else changes; the nodes under it follow the new transform."""
    parts = _resampling_parts(result, inverse=False)
    kind = "affine" if len(parts) == 1 else "composed" if composed else "deformable and affine"
    node.SetAndObserveTransformNodeID(None)
    node.SetAndObserveTransformFromParent(result_transform(result, composed))
    set_attributes(node, description.attributes(f"forward {kind}"))
    return TransformNodes(node, node)


def add_result_transform_nodes(scene, result, name: str, description: ResultDescription,
                               composed: bool = False, inverse: bool = False) -> TransformNodes:
    """Transform nodes of a backend result (``T(p) = A(p + u(p))``, LPS, fixed to moving).

    * nested (default): a grid transform node (``u``) on top, a linear transform node (``A``)
      under it; a moving volume placed under the leaf is displayed on the fixed volume.
    * ``composed``: one grid transform node holding the whole transform sampled on
      :meth:`~dmmreg.result.RegistrationResult.composed_field_geometry` (the grid the ITK
      displacement-field files use too).
    * ``inverse``: the inverse transform (moving to fixed in the resampling direction, so the
      fixed volume placed under it lands on the moving one), nested as a linear node (``A^-1``)
      on top and a grid node (the inverse field) under it.
    An affine-only result is always one linear transform node."""
    direction = "inverse" if inverse else "forward"
    parts = _resampling_parts(result, inverse)
    if composed and len(parts) > 1:
        geometry = result.composed_field_geometry(inverse)
        field = sampled_displacement_lps(_chained(parts, result.field_geometry), geometry)
        node = add_grid_transform_node(scene, field, geometry, f"{name} {'inverse ' if inverse else ''}transform",
                                       description.attributes(f"{direction} composed"))
        return TransformNodes(node, node)
    nodes = []
    # FromParent of a nested chain applies the parent-most node first
    for kind, value in parts:
        role = f"{direction} {'deformable' if kind == 'field' else 'affine'}"
        label = f"{name} {'inverse ' if inverse else ''}{'deformable' if kind == 'field' else 'affine'}"
        attributes = description.attributes(role)
        if kind == "field":
            node = add_grid_transform_node(scene, value, result.field_geometry, label, attributes)
        else:
            node = add_linear_transform_node(scene, value, label, attributes)
        if nodes:
            node.SetAndObserveTransformNodeID(nodes[-1].GetID())
        nodes.append(node)
    return TransformNodes(nodes[0], nodes[-1])
