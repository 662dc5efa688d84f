"""Regularisers of displacement / velocity fields ``(B, dim, *shape)`` on a Geometry (mm).

Derivatives are physical (per mm), so weights mean the same at any resolution."""

from __future__ import annotations

import torch

from . import spatial
from .geometry import Geometry


def diffusion(field: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """First-order smoothness ``mean |grad v|^2`` (003_2f2aa96e65959a3c.txt eq. 5), ``(B,)``.

    Forward differences along the index axes divided by the spacing: the direction matrix is a
    rotation, so the sum of their squares equals the squared physical gradient norm."""
    dim = geometry.dim
    total = 0
    for axis_xyz in range(dim):
        tensor_axis = 2 + dim - 1 - axis_xyz
        diff = torch.diff(field, dim=tensor_axis) / geometry.spacing[axis_xyz]
        total = total + diff.pow(2).sum(dim=1).flatten(1).mean(dim=1)
    return total


def bending_energy(field: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Second-order smoothness ``mean sum_ij |d^2 v / dx_i dx_j|^2`` (mixed terms counted twice,
    Rueckert et al. 1999; FIRE's bending term, 000_9877b33c2dcaa129.txt sec. 3.7), ``(B,)``."""
    b, dim = field.shape[:2]
    grad = spatial.spatial_gradient(field, geometry).reshape(b, dim * dim, *field.shape[2:])
    hessian = spatial.spatial_gradient(grad, geometry)  # (B, dim*dim, dim, *shape)
    return hessian.pow(2).sum(dim=(1, 2)).flatten(1).mean(dim=1)


def first_and_second_order(field: torch.Tensor, geometry: Geometry, first: float = 1.0, second: float = 1.0) -> torch.Tensor:
    """Weighted sum of :func:`diffusion` and :func:`bending_energy` (001_bc0de2fc45dae677.txt:
    first- and second-order derivatives, the latter penalising non-affine bending)."""
    return first * diffusion(field, geometry) + second * bending_energy(field, geometry)


def jacobian_penalty(displacement: torch.Tensor, geometry: Geometry, epsilon: float = 0.05) -> torch.Tensor:
    """Penalty on the Jacobian determinant of ``p -> p + u(p)`` against folding, ``(B,)``.

    001_bc0de2fc45dae677.txt constrains det(grad phi) to stay positive and near 1; its formula
    was lost in text extraction.  We use the volume term of hyperelastic registration it cites
    (Burger et al.), ``(J - 1)^2 / J``, which is 0 at J = 1 and grows without bound as J -> 0+;
    below ``epsilon`` it continues as a steep linear barrier so folded voxels (J <= 0) still
    receive a gradient pushing them back."""
    det = spatial.jacobian_determinant(displacement, geometry)
    safe = det.clamp_min(epsilon)
    volume = (safe - 1) ** 2 / safe
    barrier = torch.relu(epsilon - det) / epsilon**2
    return (volume + barrier).flatten(1).mean(dim=1)


def inverse_consistency(forward: torch.Tensor, backward: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """``mean |(id+b) o (id+f) - id|^2 + |(id+f) o (id+b) - id|^2`` (mm^2), ``(B,)``: zero when the
    two fields are each other's inverse (FIRE's inverse-consistency loss, 000_9877b33c2dcaa129.txt
    sec. 3.6, written on the fields)."""
    there_and_back = spatial.compose(forward, backward, geometry)
    back_and_there = spatial.compose(backward, forward, geometry)
    return (there_and_back.pow(2).sum(dim=1) + back_and_there.pow(2).sum(dim=1)).flatten(1).mean(dim=1)
