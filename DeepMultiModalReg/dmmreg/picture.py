"""A picture of a registration a person can check at a glance (PNG, matplotlib, no display).

Three orthogonal slices through the fixed image centre, in the fixed grid: the fixed image, the
moving image before (identity: resampled into the fixed grid without any transform) and after
registration, each with the fixed image's edges drawn over it in colour, and the deformation
grid with the Jacobian determinant of the transform.  Every view is drawn at its physical aspect
ratio (a voxel is as tall and wide as its spacing along the view's axes, so thick slices are not
squeezed); an oblique grid's views are its own index planes, shown unrotated.
"""

from __future__ import annotations

import os

import numpy as np

from .image import Image, normalise_intensity
from .files import atomic_write
from .result import RegistrationResult


def _edges(array: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(array)
    magnitude = np.hypot(gx, gy)
    return magnitude > np.percentile(magnitude, 92)


def mid_slices(volume: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal and sagittal mid slices of a (z, y, x) volume, in its voxel grid (index
    axes, not RAS or LPS): ``[volume[z], volume[:, y], volume[:, :, x]]`` at the middle index of
    each axis; a 2D image: ``[itself]``.  Views, not copies."""
    if volume.ndim == 2:
        return [volume]
    z, y, x = (n // 2 for n in volume.shape)
    return [volume[z], volume[:, y], volume[:, :, x]]


def _grid_lines(displacement: np.ndarray, step: int) -> list[np.ndarray]:
    """Lines of a regular grid (every ``step`` voxels) deformed by a 2D in-plane displacement
    ``(rows, cols, 2)`` given in voxels (row, col)."""
    rows, cols = displacement.shape[:2]
    lines = []
    for r in range(0, rows, step):
        lines.append(np.stack([np.arange(cols) + displacement[r, :, 1], r + displacement[r, :, 0]], axis=-1))
    for c in range(0, cols, step):
        lines.append(np.stack([c + displacement[:, c, 1], np.arange(rows) + displacement[:, c, 0]], axis=-1))
    return lines


#: In-plane index axes (row, column) of each view of :func:`mid_slices`, as (x, y, z) component numbers.
VIEW_AXES = {3: [(1, 0), (2, 0), (2, 1)], 2: [(1, 0)]}


def view_aspects(geometry) -> list[float]:
    """Height / width (mm per mm) of one voxel in each view of :func:`mid_slices` on ``geometry``:
    the physical step along the view's row axis over the step along its column axis."""
    steps = np.linalg.norm(geometry.direction @ np.diag(geometry.spacing), axis=0)  # mm per index step, (x, y, z)
    return [steps[row] / steps[col] for row, col in VIEW_AXES[geometry.dim]]


def save_registration_picture(
    fixed: Image,
    moving: Image,
    result: RegistrationResult,
    path: str | os.PathLike,
    title: str = "",
) -> None:
    """Write the picture described in the module docstring to ``path`` (PNG)."""
    fig = registration_figure(fixed, moving, result, title)
    import matplotlib.pyplot as plt

    atomic_write(os.fspath(path), lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)


def registration_figure(fixed: Image, moving: Image, result: RegistrationResult, title: str = ""):
    """The matplotlib figure of the picture (rows: views; columns: fixed, before, after, grid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    identity = RegistrationResult(result.fixed_geometry, result.moving_geometry, np.eye(result.dim + 1))
    before = normalise_intensity(identity.warp(moving).array)
    after = normalise_intensity(result.warp(moving).array)
    fixed_n = normalise_intensity(fixed.array)
    jacobian = result.jacobian_determinant().array
    # displacement in fixed voxel units (index axes), for drawing the deformed grid
    disp_mm = result.resampling_displacement(result.fixed_geometry)
    to_index = np.linalg.inv(result.fixed_geometry.direction @ np.diag(result.fixed_geometry.spacing))
    disp_vox = disp_mm @ to_index.T  # (..., dim) in (x, y, z) index units
    disp_vox = disp_vox - disp_vox.reshape(-1, result.dim).mean(axis=0)  # show the non-rigid part

    views = ["axial", "coronal", "sagittal"] if result.dim == 3 else ["slice"]
    planes = VIEW_AXES[result.dim]
    aspects = view_aspects(result.fixed_geometry)
    fig, axes = plt.subplots(len(views), 4, figsize=(16, 4.2 * len(views)), squeeze=False)
    columns = ["fixed", "moving before (identity)", "moving after registration", "deformation grid, Jacobian"]
    for row, (view, fixed_s, before_s, after_s, jac_s, (r_ax, c_ax)) in enumerate(
        zip(views, mid_slices(fixed_n), mid_slices(before), mid_slices(after), mid_slices(jacobian), planes)
    ):
        edges = _edges(fixed_s)
        for col, image in enumerate([fixed_s, before_s, after_s]):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", origin="lower", vmin=0, vmax=1, aspect=aspects[row])
            if col > 0:
                overlay = np.zeros((*edges.shape, 4))
                overlay[edges] = (1.0, 0.3, 0.0, 0.8)
                ax.imshow(overlay, origin="lower", aspect=aspects[row])
        ax = axes[row, 3]
        shown = ax.imshow(jac_s, cmap="RdBu_r", origin="lower", vmin=0.5, vmax=1.5, aspect=aspects[row])
        in_plane = np.stack([mid_slices(disp_vox[..., r_ax])[row], mid_slices(disp_vox[..., c_ax])[row]], axis=-1)
        for line in _grid_lines(in_plane, step=max(4, min(jac_s.shape) // 20)):
            ax.plot(line[:, 0], line[:, 1], color="k", linewidth=0.5)
        ax.set_xlim(0, jac_s.shape[1] - 1)
        ax.set_ylim(0, jac_s.shape[0] - 1)
        fig.colorbar(shown, ax=ax, fraction=0.046, label="det J")
        for col in range(4):
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
            if row == 0:
                axes[row, col].set_title(columns[col])
        axes[row, 0].set_ylabel(view)
    fig.suptitle(title or f"{result.method}: fixed edges (orange) over the moving image")
    fig.tight_layout()
    return fig
