"""The default method recovers known warps on real multi-contrast MRI (the FIRE protocol).

The stroke T2 and FLAIR are each deformed by a random known warp G (affine + smooth B-spline,
mean endpoint error > 10 mm inside the brain); the T1 of the same subject, aligned with them,
is registered to the deformed image with the default method and quality, and the result must
be G: mean endpoint error < 2 mm inside the brain, (almost) no folding, and the transform file
written must reproduce the warped volume written, through SimpleITK.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import KnownWarpCase, assert_same_resampling, folding_percent, known_warp_case, sitk_resample

from dmmreg import metrics
from dmmreg.geometry import Geometry
from dmmreg.image import Image
from dmmreg.image_io import read_image, write_image
from dmmreg.registration import register_pair
from dmmreg.result import RegistrationResult
from dmmreg.transform_io import read_transform, write_transform

#: contrast deformed -> seed of its known warp (initial mean endpoint error > 10 mm)
CASES_3D = {"T2": 2, "FLAIR": 4}
CASES_2D = (0, 1, 2, 3, 4, 5)
MAX_MEAN_ERROR_MM = 2.0
MAX_FOLDING_PERCENT = 0.1


@dataclass
class Registered:
    """A known-warp case, the T1 registered to it, and the transform (.h5) and warped T1
    written as the command line writes them."""

    case: KnownWarpCase
    moving: Image
    result: RegistrationResult
    transform_path: Path
    volume_path: Path


@pytest.fixture(scope="module")
def cases(stroke) -> dict[str, KnownWarpCase]:
    return {contrast: known_warp_case(stroke[contrast], seed) for contrast, seed in CASES_3D.items()}


@pytest.fixture(scope="module", params=list(CASES_3D))
def registered(request, cases, stroke, tmp_path_factory) -> Registered:
    contrast = request.param
    case = cases[contrast]
    moving = stroke["T1"]
    result = register_pair(case.fixed, moving)
    folder = tmp_path_factory.mktemp(contrast)
    transform_path, volume_path = folder / "T1_to_fixed.h5", folder / "T1_registered.nii.gz"
    write_transform(result, transform_path)
    write_image(result.warp(moving), volume_path)
    return Registered(case, moving, result, transform_path, volume_path)


def test_the_known_warp_is_large(registered):
    assert registered.case.initial_endpoint_error > 10.0


def test_default_method_recovers_the_known_warp(registered):
    initial, error = registered.case.initial_endpoint_error, registered.case.mean_endpoint_error(registered.result)
    assert error < MAX_MEAN_ERROR_MM, f"mean endpoint error {error:.2f} mm (initially {initial:.1f} mm)"
    assert registered.result.method == "optimise" and registered.result.settings["similarity"] == "nmi"


def test_registration_does_not_fold(registered):
    assert folding_percent(registered.result, registered.case.brain) < MAX_FOLDING_PERCENT


def test_the_inverse_undoes_the_registration(registered):
    error = metrics.inverse_consistency_error(registered.result, mask=registered.case.brain).array
    assert np.nanmean(error) < 0.1 and np.nanmax(error) < 1.0  # mm: mean well below a voxel, max within one


def test_written_transform_reproduces_the_written_volume(registered):
    moving = registered.moving
    expected = sitk_resample(moving, registered.case.fixed.geometry, read_transform(registered.transform_path))
    written = read_image(registered.volume_path)
    assert written.geometry == registered.case.fixed.geometry
    assert_same_resampling(written.array, expected, ".h5", moving.array.max())


def test_fixed_mask_still_recovers_the_warp(cases, stroke):
    case = cases["T2"]
    mask = case.fixed.with_array(case.brain.astype(np.uint8))
    result = register_pair(case.fixed, stroke["T1"], fixed_mask=mask)
    assert case.mean_endpoint_error(result) < MAX_MEAN_ERROR_MM
    assert folding_percent(result, case.brain) < MAX_FOLDING_PERCENT


# --------------------------------------------------------------------------------------------
# 2D: a mid axial slice


@pytest.fixture(scope="module")
def slices(stroke) -> dict[str, Image]:
    """The T1 and T2 mid axial slices as 2D images (in-plane spacing, 2D geometry)."""
    g = stroke["T1"].geometry
    geometry = Geometry(g.size[:2], g.spacing[:2], (0.0, 0.0), np.eye(2))
    middle = g.size[2] // 2
    return {contrast: Image(stroke[contrast].array[middle], geometry) for contrast in ("T1", "T2")}


@pytest.mark.parametrize("seed", CASES_2D)
def test_2d_slice_recovers_the_known_warp(slices, seed):
    case = known_warp_case(slices["T2"], seed)
    result = register_pair(case.fixed, slices["T1"])
    assert result.dim == 2 and result.displacement.shape[-1] == 2
    initial, error = case.initial_endpoint_error, case.mean_endpoint_error(result)
    assert initial > 5.0
    assert error < min(0.3 * initial, MAX_MEAN_ERROR_MM), f"mean endpoint error {error:.2f} mm (initially {initial:.1f} mm)"
    assert folding_percent(result, case.brain) == 0.0
