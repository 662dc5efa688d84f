"""``register_pair``: checks the inputs, picks the device and runs a method by name."""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .geometry import check_overlap
from .image import Image, check_image
from .methods import check_transform, method_function
from .progress import ProgressCallback
from .result import RegistrationResult


def select_device(name: str = "auto"):
    """torch device for ``name`` ("auto": CUDA when available, else CPU)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise InputError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


def _mask_on(mask: Image | None, image: Image, what: str) -> Image | None:
    """A mask on its image's grid (resampled by nearest neighbour when it has another grid)."""
    if mask is None:
        return None
    if mask.dim != image.dim:
        raise InputError(f"{what} is {mask.dim}D but its image is {image.dim}D")
    if mask.geometry != image.geometry:
        identity = RegistrationResult(image.geometry, mask.geometry, np.eye(image.dim + 1))
        mask = identity.warp(mask, mode="nearest")
    if not np.any(mask.array > 0):
        raise InputError(f"{what} is empty (no voxel > 0) over its image; check the mask")
    return mask


def check_pair(fixed: Image, moving: Image, initial_affine: np.ndarray | None = None) -> None:
    """Raise ``InputError`` when the pair cannot be registered (names the problem and the fix)."""
    check_image(fixed, "the fixed image")
    check_image(moving, "the moving image")
    if fixed.dim != moving.dim:
        raise InputError(
            f"the fixed image is {fixed.dim}D and the moving image {moving.dim}D; register images "
            "of the same dimension (extract a slice, or register a 3D volume to a 3D volume)"
        )
    check_overlap(fixed.geometry, moving.geometry, initial_affine)


def register_pair(
    fixed: Image,
    moving: Image,
    method: str = "optimise",
    fixed_mask: Image | None = None,
    moving_mask: Image | None = None,
    device: str = "auto",
    quality: str = "balanced",
    initial_affine: np.ndarray | None = None,
    progress: ProgressCallback | None = None,
    transform: str = "deformable",
    **settings,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` with method ``method`` and transform model ``transform``
    ("rigid": rotation and translation; "affine"; "deformable": affine then a displacement field).

    Returns the resampling transform ``T(p) = A(p + u(p))`` (fixed-space LPS point to moving-space
    point, mm) with its inverse field.  ``progress(stage, fraction, message)`` is called along the
    way and may raise :class:`dmmreg.errors.Cancelled` to stop.  The inputs are not modified."""
    register = method_function(method)
    check_transform(transform)
    check_pair(fixed, moving, initial_affine)
    fixed_mask = _mask_on(fixed_mask, fixed, "the fixed mask")
    moving_mask = _mask_on(moving_mask, moving, "the moving mask")
    return register(
        fixed, moving, fixed_mask=fixed_mask, moving_mask=moving_mask, device=select_device(device),
        quality=quality, initial_affine=initial_affine, progress=progress, transform=transform, **settings,
    )
