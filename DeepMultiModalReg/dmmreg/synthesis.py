"""Synthesised images of the learned methods: which methods make them, their files, and how
similar they are to the real image of the same contrast.

* ``fire``, ``disentangled`` and ``hierarchical`` render the moving image in the fixed image's
  contrast (``"moving_in_fixed_contrast"``; fire and disentangled also the fixed image in the
  moving contrast, ``"fixed_in_moving_contrast"``).  A registration returns them on its model
  grid, in fixed space (:attr:`dmmreg.result.RegistrationResult.synthesised`);
  :func:`on_fixed_grid` resamples them onto the fixed image's grid (identity transform).
* The similarity measures work on images normalised to [0, 1] inside a mask:
  :func:`normalised_mutual_information` (hard 2D histogram, Studholme et al. 1999: ``(H(A) +
  H(B)) / H(A, B)`` in [1, 2], 2 when one image determines the other, so an image with itself
  gives exactly 2) and :func:`structural_similarity` (Wang et al. 2004, Gaussian window).

numpy and scipy only, except :func:`on_fixed_grid` (torch, through :mod:`dmmreg.spatial`).
"""

from __future__ import annotations

import os

import numpy as np

from .errors import InputError
from .geometry import Geometry
from .image import Image

#: Methods whose networks synthesise images, and the keys of what they make.
SYNTHESISING_METHODS = {
    "fire": ("moving_in_fixed_contrast", "fixed_in_moving_contrast"),
    "disentangled": ("moving_in_fixed_contrast", "fixed_in_moving_contrast"),
    "hierarchical": ("moving_in_fixed_contrast",),
}


def check_synthesising(method: str) -> None:
    """``InputError`` naming the fix unless ``method`` synthesises images."""
    if method not in SYNTHESISING_METHODS:
        raise InputError(f"the method {method!r} synthesises no images; choose one that does "
                         f"({', '.join(SYNTHESISING_METHODS)}) or leave out the synthesised output")


def synthesised_path(prefix: str, key: str) -> str:
    """File of synthesised image ``key`` for the output prefix: ``PREFIX_<key>.nii.gz``."""
    return f"{os.fspath(prefix)}_{key}.nii.gz"


def on_fixed_grid(image: Image, fixed_geometry: Geometry) -> Image:
    """A synthesised image (fixed space, on the model grid) resampled linearly onto the fixed
    grid through the identity (zero outside the model grid, which covers the fixed image)."""
    import torch

    from . import spatial

    volume = torch.from_numpy(np.asarray(image.array, dtype=np.float32))[None, None]
    out = spatial.resample_image(volume, image.geometry, fixed_geometry)[0, 0]
    return Image(out.numpy().astype(np.float32), fixed_geometry)


# --------------------------------------------------------------------------------------------
# Intensities and similarity


def _comparable(a, b, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``a``, ``b`` as float64 arrays of one shape, and the boolean mask to compare them in."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise InputError(f"images of shapes {a.shape} and {b.shape} cannot be compared; put them on one grid")
    inside = np.ones(a.shape, bool) if mask is None else np.asarray(mask) > 0
    if not inside.any():
        raise InputError("the mask for the similarity is empty")
    return a, b, inside


def normalised_mutual_information(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, bins: int = 64) -> float:
    """``(H(A) + H(B)) / H(A, B)`` of two images with values in [0, 1] over ``mask`` (hard
    histogram of ``bins`` x ``bins`` equal bins).  In [1, 2]: 1 for independent images, 2 when
    one determines the other (an image with itself).  Unlike the Parzen-window
    :func:`dmmreg.losses.normalised_mutual_information` (smooth, for optimisation; an image with
    itself gives less than 2), this is the evaluation form."""
    a, b, inside = _comparable(a, b, mask)
    index_a = np.clip((a[inside] * bins).astype(np.int64), 0, bins - 1)
    index_b = np.clip((b[inside] * bins).astype(np.int64), 0, bins - 1)
    joint = np.bincount(index_a * bins + index_b, minlength=bins * bins).astype(np.float64)
    joint /= joint.sum()

    def entropy(p):
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    joint = joint.reshape(bins, bins)
    h_joint = entropy(joint.ravel())
    if h_joint == 0.0:  # both constant inside the mask: one determines the other
        return 2.0
    return (entropy(joint.sum(axis=1)) + entropy(joint.sum(axis=0))) / h_joint


def structural_similarity(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, sigma_voxels: float = 1.5,
                          data_range: float = 1.0) -> float:
    """Mean SSIM over ``mask`` (Wang, Bovik, Sheikh & Simoncelli 2004, eq. 13):

    ``SSIM = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2))``

    with local means, variances and covariance from a Gaussian window of ``sigma_voxels``
    (their 11-tap window has sigma 1.5; 2D or 3D, the same in every axis), ``C1 = (0.01 L)^2``,
    ``C2 = (0.03 L)^2``, ``L = data_range``.  ``sigma_voxels=None``: the global SSIM (one window,
    the whole mask).  An image with itself gives 1; values lie in [-1, 1]."""
    from scipy.ndimage import gaussian_filter

    a, b, inside = _comparable(a, b, mask)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    if sigma_voxels is None:
        x, y = a[inside], b[inside]
        mu_a, mu_b = x.mean(), y.mean()
        var_a, var_b = x.var(), y.var()
        cov = ((x - mu_a) * (y - mu_b)).mean()
    else:
        smooth = lambda v: gaussian_filter(v, sigma_voxels, mode="reflect", truncate=3.5)  # noqa: E731
        mu_a, mu_b = smooth(a), smooth(b)
        var_a = smooth(a * a) - mu_a * mu_a
        var_b = smooth(b * b) - mu_b * mu_b
        cov = smooth(a * b) - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(ssim if np.ndim(ssim) == 0 else ssim[inside].mean())
