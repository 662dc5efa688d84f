"""Spatial transforms in torch, with one grid convention for the whole backend.

Convention
----------
* Tensors holding images are ``(B, C, Z, Y, X)`` (3D) or ``(B, C, Y, X)`` (2D), in the array
  order of :class:`dmmreg.image.Image`.
* Points and displacements are physical (LPS, mm) and their last axis (or channel axis for
  fields) is ordered ``(x, y, z)``.  A displacement field ``u`` is a tensor ``(B, dim, *shape)``
  sampled on a :class:`~dmmreg.geometry.Geometry`; it represents the map ``p -> p + u(p)``.
* An affine transform is a homogeneous ``(dim+1, dim+1)`` matrix acting on physical points.
* A registration result is the *resampling* transform (ITK's convention, Slicer's
  "FromParent"): it maps a point ``p`` of the fixed image to the moving image,
  ``T(p) = A(p + u(p))``, with ``u`` on the fixed grid and ``A`` the affine part.
* Sampling uses ``grid_sample(..., align_corners=True)``: a continuous index ``i`` along an axis
  of ``n`` voxels becomes ``2 i / (n - 1) - 1``.  The index order (x, y, z) is the order
  ``grid_sample`` expects in the grid's last axis, so no channel reversal is needed beyond the
  one implied by storing arrays as (z, y, x).  A zero displacement gives the input back exactly
  (up to float rounding).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import Geometry


def _matrix(m: np.ndarray | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(m) if not torch.is_tensor(m) else m, dtype=like.dtype, device=like.device)


def apply_matrix(points: torch.Tensor, matrix) -> torch.Tensor:
    """Apply a homogeneous matrix ``(dim+1, dim+1)`` (or batched ``(B, dim+1, dim+1)`` with points
    ``(B, ..., dim)``) to points ``(..., dim)``."""
    m = _matrix(matrix, points)
    dim = points.shape[-1]
    if m.ndim == 2:
        return points @ m[:dim, :dim].T + m[:dim, dim]
    b = points.shape[0]
    flat = points.reshape(b, -1, dim)
    out = flat @ m[:, :dim, :dim].transpose(1, 2) + m[:, None, :dim, dim]
    return out.reshape(points.shape)


def grid_points(geometry: Geometry, device=None, dtype=torch.float32) -> torch.Tensor:
    """Physical points of every voxel, ``(*shape, dim)`` with shape in (z, y, x) order.

    Cached per geometry, device and dtype (treat the result as read-only)."""
    key = (geometry.size, geometry.spacing, geometry.origin, geometry.direction.tobytes(), str(device), dtype)
    points = _GRID_POINTS.get(key)
    if points is None:
        axes = [torch.arange(n, device=device, dtype=torch.float64) for n in geometry.shape]
        mesh = torch.meshgrid(*axes, indexing="ij")  # z, y, x
        index = torch.stack(mesh[::-1], dim=-1)  # x, y, z
        points = apply_matrix(index, geometry.index_to_physical).to(dtype)
        if len(_GRID_POINTS) >= 16:
            _GRID_POINTS.pop(next(iter(_GRID_POINTS)))
        _GRID_POINTS[key] = points
    return points


_GRID_POINTS: dict = {}


def physical_to_normalised(geometry: Geometry) -> np.ndarray:
    """Homogeneous matrix mapping an LPS point to ``grid_sample`` coordinates (align_corners=True)."""
    dim = geometry.dim
    scale = np.eye(dim + 1)
    size = np.asarray(geometry.size, dtype=np.float64)
    scale[:dim, :dim] = np.diag(2.0 / np.maximum(size - 1, 1))  # a one-voxel axis maps to 0
    scale[:dim, dim] = -1.0
    return scale @ geometry.physical_to_index


def sample(
    volume: torch.Tensor,
    geometry: Geometry,
    points: torch.Tensor,
    mode: str = "linear",
    padding: str = "zeros",
) -> torch.Tensor:
    """Sample ``volume (B, C, *shape)`` on ``geometry`` at physical ``points (B, *out, dim)``
    (a batch of 1 is shared by all items; ``out`` may have any number of axes).

    ``mode`` is "linear" or "nearest" (label maps); ``padding`` "zeros" or "border".
    Returns ``(B, C, *out)``.
    """
    dim = volume.ndim - 2
    if points.shape[0] != volume.shape[0]:
        points = points.expand(volume.shape[0], *points.shape[1:])
    out_shape = points.shape[1:-1]
    grid = apply_matrix(points, physical_to_normalised(geometry)).to(volume.dtype)
    values = F.grid_sample(
        volume,
        grid.reshape(grid.shape[0], -1, *([1] * (dim - 1)), dim),
        mode="bilinear" if mode == "linear" else "nearest",
        padding_mode=padding,
        align_corners=True,
    )
    return values.reshape(*values.shape[:2], *out_shape)


def centre_of_mass(weights: torch.Tensor, geometry: Geometry) -> np.ndarray:
    """Physical centre (LPS, mm) of the voxels of ``geometry`` weighted by ``weights``
    (``(1, 1, *shape)`` or ``(*shape)``, e.g. an image or a mask)."""
    points = grid_points(geometry, device=weights.device).reshape(-1, geometry.dim)
    w = weights.reshape(-1)
    return ((points * w[:, None]).sum(0) / w.sum().clamp_min(1e-6)).double().cpu().numpy()


def inside_weight(points: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """What :func:`sample` of an all-ones image on ``geometry`` (zero padding) returns at
    ``points (B, *out, dim)``: 1 inside, falling linearly to 0 over the voxel beyond each edge.
    Returns ``(B, *out)``."""
    index = apply_matrix(points, geometry.physical_to_index)
    size = torch.as_tensor(geometry.size, dtype=index.dtype, device=index.device)
    return torch.minimum(index + 1, size - index).clamp(0, 1).prod(dim=-1)


def field_at(displacement: torch.Tensor, geometry: Geometry, points: torch.Tensor) -> torch.Tensor:
    """Displacement ``(B, dim, *shape)`` on ``geometry`` evaluated at ``points (B, *out, dim)``,
    linearly, clamped to the edge outside the grid; returns ``(B, *out, dim)``."""
    values = sample(displacement, geometry, points, padding="border")
    return torch.movedim(values, 1, -1)


def to_channels_last(field: torch.Tensor) -> torch.Tensor:
    """``(B, dim, *shape)`` -> ``(B, *shape, dim)``."""
    return torch.movedim(field, 1, -1)


def to_channels_first(field: torch.Tensor) -> torch.Tensor:
    """``(B, *shape, dim)`` -> ``(B, dim, *shape)``."""
    return torch.movedim(field, -1, 1)


def transform_points(
    fixed_geometry: Geometry,
    affine=None,
    displacement: torch.Tensor | None = None,
    batch: int = 1,
    device=None,
    dtype=torch.float32,
) -> torch.Tensor:
    """Moving-space points ``T(p) = A(p + u(p))`` for every fixed voxel, ``(B, *shape, dim)``."""
    if displacement is not None:
        batch, device, dtype = displacement.shape[0], displacement.device, displacement.dtype
    points = grid_points(fixed_geometry, device=device, dtype=dtype).unsqueeze(0).expand(batch, *fixed_geometry.shape, fixed_geometry.dim)
    if displacement is not None:
        points = points + to_channels_last(displacement)
    if affine is not None:
        points = apply_matrix(points, affine)
    return points


def warp(
    moving: torch.Tensor,
    moving_geometry: Geometry,
    fixed_geometry: Geometry,
    affine=None,
    displacement: torch.Tensor | None = None,
    mode: str = "linear",
    padding: str = "zeros",
) -> torch.Tensor:
    """Resample ``moving (B, C, *moving shape)`` into the fixed grid through ``T(p) = A(p + u(p))``."""
    points = transform_points(fixed_geometry, affine, displacement, batch=moving.shape[0], device=moving.device, dtype=moving.dtype)
    return sample(moving, moving_geometry, points, mode=mode, padding=padding)


def compose(inner: torch.Tensor, outer: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Displacement of ``(id + outer) o (id + inner)``: ``u(p) = inner(p) + outer(p + inner(p))``.

    Both fields ``(B, dim, *shape)`` live on ``geometry``."""
    points = grid_points(geometry, device=inner.device, dtype=inner.dtype) + to_channels_last(inner)
    return inner + to_channels_first(field_at(outer, geometry, points))


def integrate_velocity(velocity: torch.Tensor, geometry: Geometry, steps: int = 7) -> torch.Tensor:
    """Displacement of ``exp(v)`` for a stationary velocity field ``v (B, dim, *shape)`` (mm)
    by scaling and squaring (Arsigny et al. 2006; 003_2f2aa96e65959a3c.txt sec. 3.2.1)."""
    u = velocity / (2**steps)
    for _ in range(steps):
        u = compose(u, u, geometry)
    return u


def invert_displacement(displacement: torch.Tensor, geometry: Geometry, iterations: int = 30) -> torch.Tensor:
    """Numerical inverse by fixed-point iteration ``w(p) = -u(p + w(p))``; returns ``w`` on the
    same grid.  Converges where the map is smooth and invertible (|grad u| < 1)."""
    points = grid_points(geometry, device=displacement.device, dtype=displacement.dtype)
    inverse = -displacement
    for _ in range(iterations):
        inverse = -to_channels_first(field_at(displacement, geometry, points + to_channels_last(inverse)))
    return inverse


def resample_field(displacement: torch.Tensor, source: Geometry, target: Geometry) -> torch.Tensor:
    """Displacement on ``source`` re-sampled (linearly, edge-clamped) onto ``target``'s voxels."""
    points = grid_points(target, device=displacement.device, dtype=displacement.dtype)[None]
    return to_channels_first(field_at(displacement, source, points))


def resample_image(volume: torch.Tensor, source: Geometry, target: Geometry, mode: str = "linear") -> torch.Tensor:
    """Image ``(B, C, *shape)`` on ``source`` resampled onto ``target`` (identity transform).

    When ``target`` is coarser, the image is first smoothed with a Gaussian whose sigma (mm) is
    ``sqrt(s_t^2 - s_s^2) / 2`` per axis to limit aliasing (labels are never smoothed).
    The same grid returns ``volume`` itself."""
    if target == source:
        return volume
    if mode == "linear":
        volume = antialias(volume, source, target.spacing)
    points = grid_points(target, device=volume.device, dtype=volume.dtype)[None]
    return sample(volume, source, points, mode=mode)


def antialias(volume: torch.Tensor, source: Geometry, target_spacing) -> torch.Tensor:
    """``volume (B, C, *shape)`` on ``source`` smoothed before resampling at ``target_spacing``
    (mm, x y z): a Gaussian of sigma ``sqrt(s_t^2 - s_s^2) / 2`` mm per axis (none where the
    target is not coarser)."""
    sigma_vox = [max(0.0, (t * t - s * s)) ** 0.5 / 2 / s for s, t in zip(source.spacing, target_spacing)]
    return gaussian_smooth(volume, sigma_vox)


def gaussian_smooth(volume: torch.Tensor, sigma_voxels) -> torch.Tensor:
    """Separable Gaussian filter, edges replicated; ``sigma_voxels`` ordered (x, y, z); sigmas
    below 0.3 voxel are skipped.  Each axis is a sum of shifted copies (:func:`smooth_axis`), not a
    convolution: on the CPU torch's 3D convolution copies the volume once per kernel tap (5.5 GB
    for a 13-tap kernel on 512x512x400 voxels) and ran several times slower."""
    dim = volume.ndim - 2
    out = volume
    for axis_xyz, sigma in enumerate(sigma_voxels):
        if sigma < 0.3:
            continue
        radius = int(np.ceil(3 * sigma))
        x = torch.arange(-radius, radius + 1, dtype=volume.dtype, device=volume.device)
        kernel = torch.exp(-0.5 * (x / sigma) ** 2)
        kernel = kernel / kernel.sum()
        out = smooth_axis(out, kernel.tolist(), 2 + dim - 1 - axis_xyz)  # spatial axis in (z, y, x) order
    return out


def smooth_axis(volume: torch.Tensor, kernel: list[float], axis: int) -> torch.Tensor:
    """``volume`` filtered along tensor axis ``axis`` by a symmetric ``kernel`` of odd length
    (centre tap in the middle), edges replicated: a weighted sum of shifted views."""
    radius = len(kernel) // 2
    n = volume.shape[axis]
    out = volume * kernel[radius]
    for offset in range(1, radius + 1):
        weight = kernel[radius + offset]
        inside = max(n - offset, 0)  # voxels whose neighbour at +offset (and at -offset) is in the volume
        if inside:
            out.narrow(axis, 0, inside).add_(volume.narrow(axis, offset, inside), alpha=weight)
            out.narrow(axis, offset, inside).add_(volume.narrow(axis, 0, inside), alpha=weight)
        out.narrow(axis, inside, n - inside).add_(volume.narrow(axis, n - 1, 1), alpha=weight)
        out.narrow(axis, 0, n - inside).add_(volume.narrow(axis, 0, 1), alpha=weight)
    return out


# --------------------------------------------------------------------------------------------
# Cubic B-spline control-point fields (003_2f2aa96e65959a3c.txt eq. 6: transposed convolution)


def cubic_bspline(t: torch.Tensor) -> torch.Tensor:
    """Uniform cubic B-spline basis beta_3(t), support (-2, 2)."""
    t = t.abs()
    return torch.where(
        t < 1, 2 / 3 - t**2 + t**3 / 2, torch.where(t < 2, (2 - t) ** 3 / 6, torch.zeros_like(t))
    )


def control_grid(geometry: Geometry, control_spacing_mm: float) -> Geometry:
    """B-spline control-point grid covering ``geometry``'s field of view.

    Control points are ``control_spacing_mm`` apart (same direction), centred on the image, with
    one extra control point beyond each side, so every point of the field of view lies within
    the support of a full 4**dim set of control points."""
    spacing = float(control_spacing_mm)
    n_inner = np.ceil(geometry.extent / spacing).astype(int) + 1
    size = n_inner + 2
    extent = (size - 1) * spacing
    origin = geometry.centre - geometry.direction @ (extent / 2)
    return Geometry(tuple(size), (spacing,) * geometry.dim, tuple(origin), geometry.direction)


def dense_grid(control: Geometry, stride: int) -> Geometry:
    """Dense grid on which a control grid is evaluated with ``stride`` voxels per control
    spacing: it spans control points 1 .. n-2 (the field of view), spacing = control / stride."""
    size = (np.asarray(control.size) - 3) * stride + 1
    origin = control.physical_points(np.ones(control.dim))
    spacing = tuple(s / stride for s in control.spacing)
    return Geometry(tuple(size), spacing, tuple(origin), control.direction)


def bspline_kernel(stride: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """1D transposed-convolution kernel of length 4*stride: ``w[m] = beta_3((m - 2 stride)/stride)``."""
    m = torch.arange(4 * stride, dtype=torch.float64, device=device)
    return cubic_bspline((m - 2 * stride) / stride).to(dtype)


def bspline_to_dense(coefficients: torch.Tensor, stride: int) -> torch.Tensor:
    """Evaluate control-point values ``(B, C, *n)`` on the dense grid of :func:`dense_grid`.

    Separable transposed convolution with the sampled cubic B-spline; control point ``k`` sits at
    dense index ``(k - 1) * stride``.  Output ``(B, C, *((n - 3) * stride + 1))``."""
    dim = coefficients.ndim - 2
    kernel = bspline_kernel(stride, coefficients.dtype, coefficients.device)
    out = coefficients
    b, c = out.shape[:2]
    conv_t = F.conv_transpose3d if dim == 3 else F.conv_transpose2d
    for axis in range(dim):
        shape = [1] * dim
        shape[axis] = kernel.numel()
        stride_nd = [1] * dim
        stride_nd[axis] = stride
        flat = out.reshape(b * c, 1, *out.shape[2:])
        flat = conv_t(flat, kernel.reshape(1, 1, *shape), stride=stride_nd)
        n = out.shape[2 + axis]
        flat = flat.narrow(2 + axis, 3 * stride, (n - 3) * stride + 1)
        out = flat.reshape(b, c, *flat.shape[2:])
    return out


# --------------------------------------------------------------------------------------------
# Affine transforms about a centre, and derivatives of fields


def rotation_matrix(angles: torch.Tensor) -> torch.Tensor:
    """Rotation from angles (radians): one angle in 2D, three (about x, then y, then z) in 3D."""
    if angles.numel() == 1:
        c, s = torch.cos(angles[0]), torch.sin(angles[0])
        return torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
    cx, cy, cz = torch.cos(angles)
    sx, sy, sz = torch.sin(angles)
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)
    rx = torch.stack([torch.stack([one, zero, zero]), torch.stack([zero, cx, -sx]), torch.stack([zero, sx, cx])])
    ry = torch.stack([torch.stack([cy, zero, sy]), torch.stack([zero, one, zero]), torch.stack([-sy, zero, cy])])
    rz = torch.stack([torch.stack([cz, -sz, zero]), torch.stack([sz, cz, zero]), torch.stack([zero, zero, one])])
    return rz @ ry @ rx


def affine_matrix(
    centre,
    translation: torch.Tensor,
    angles: torch.Tensor,
    log_scale: torch.Tensor | None = None,
    shear: torch.Tensor | None = None,
) -> torch.Tensor:
    """Homogeneous matrix of ``p -> R S H (p - c) + c + t`` (physical, mm, radians).

    ``shear`` holds the upper off-diagonal entries of ``H`` (1 in 2D, 3 in 3D); ``log_scale``
    one log-factor per axis."""
    dim = translation.numel()
    linear = rotation_matrix(angles)
    if log_scale is not None:
        linear = linear @ torch.diag(torch.exp(log_scale))
    if shear is not None:
        h = torch.eye(dim, dtype=translation.dtype, device=translation.device)
        rows, cols = torch.triu_indices(dim, dim, offset=1)
        h = h.index_put((rows, cols), shear)
        linear = linear @ h
    c = torch.as_tensor(np.asarray(centre), dtype=translation.dtype, device=translation.device)
    offset = c + translation - linear @ c
    top = torch.cat([linear, offset[:, None]], dim=1)
    bottom = torch.zeros(1, dim + 1, dtype=translation.dtype, device=translation.device)
    bottom[0, dim] = 1
    return torch.cat([top, bottom], dim=0)


def spatial_gradient(field: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Physical gradient of ``field (B, C, *shape)``: ``(B, C, dim, *shape)`` where entry ``d`` is
    the derivative along physical axis d (x, y, z, mm^-1).  Central differences inside,
    one-sided at the border."""
    dim = geometry.dim
    index_derivatives = []
    for axis_xyz in range(dim):
        tensor_axis = 2 + dim - 1 - axis_xyz
        index_derivatives.append(torch.gradient(field, dim=tensor_axis)[0])
    d_index = torch.stack(index_derivatives, dim=2)  # derivative per unit index, (x, y, z)
    # d/dp = (d/di) @ inv(D diag(s)):  grad_p[d] = sum_k grad_i[k] * inv[k, d]
    inv = torch.as_tensor(geometry.physical_to_index[:dim, :dim], dtype=field.dtype, device=field.device)
    return torch.einsum("bck...,kd->bcd...", d_index, inv)


def jacobian_matrix(displacement: torch.Tensor, geometry: Geometry, affine=None) -> torch.Tensor:
    """Jacobian of ``T(p) = A(p + u(p))``: ``(B, *shape, dim, dim)``, row = output component."""
    dim = geometry.dim
    grad = spatial_gradient(displacement, geometry)  # (B, dim_out, dim_in, *shape)
    jac = torch.movedim(grad, (1, 2), (-2, -1)) + torch.eye(dim, dtype=grad.dtype, device=grad.device)
    if affine is not None:
        jac = _matrix(affine, jac)[:dim, :dim] @ jac
    return jac


def jacobian_determinant(displacement: torch.Tensor, geometry: Geometry, affine=None) -> torch.Tensor:
    """Determinant of the Jacobian of ``T(p) = A(p + u(p))`` at every voxel, ``(B, *shape)``.

    Values above 1 mean local expansion of the fixed region in moving space, below 1
    compression, and <= 0 folding."""
    return torch.linalg.det(jacobian_matrix(displacement, geometry, affine))
