"""dmmreg.transform_io: ITK transform files that SimpleITK applies exactly as the backend does."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import affine_about_centre, assert_same_resampling, sitk_resample

from dmmreg.errors import InputError
from dmmreg.known_warp import KnownWarpSettings, random_known_warp
from dmmreg.result import RegistrationResult
from dmmreg.transform_io import read_result, read_transform, write_transform

FORMATS = [".h5", ".nii.gz"]
#: largest point-mapping error (mm) of each format: .h5 keeps the float64 field and the affine
#: as they are; .nii.gz holds the whole transform as one field, its header geometry in float32
POINT_TOLERANCE = {".h5": 1e-9, ".nii.gz": 1e-3}


@pytest.fixture(scope="module")
def result(stroke) -> RegistrationResult:
    """A deformable result with its inverse: fixed = the stroke grid at 2 mm, moving = the 1 mm
    stroke grid (both oblique), T = a random affine + B-spline warp of ~3 mm."""
    moving_geometry = stroke["T1"].geometry
    fixed_geometry = moving_geometry.with_spacing(2.0)
    warp = random_known_warp(fixed_geometry, seed=1, settings=KnownWarpSettings(field_spacing_mm=5.0))
    return replace(warp, moving_geometry=moving_geometry)


def random_points(geometry, count: int = 500, seed: int = 0) -> np.ndarray:
    """Physical points spread over the grid (continuous indices inside it)."""
    index = np.random.default_rng(seed).uniform(0, np.asarray(geometry.size) - 1, size=(count, geometry.dim))
    return geometry.physical_points(index)


def sitk_points(transform, points: np.ndarray) -> np.ndarray:
    return np.array([transform.TransformPoint(tuple(p)) for p in points])


@pytest.mark.parametrize("extension", FORMATS)
def test_forward_round_trip(result, extension, tmp_path):
    path = tmp_path / f"forward{extension}"
    write_transform(result, path)
    read = read_result(path, result.fixed_geometry, result.moving_geometry)
    points = random_points(result.fixed_geometry)
    np.testing.assert_allclose(read.resampling_points(points), result.resampling_points(points), atol=POINT_TOLERANCE[extension])
    # SimpleITK maps points the same way: T(p) = A(p + u(p)), the field applied first
    np.testing.assert_allclose(sitk_points(read_transform(path), points), result.resampling_points(points),
                               atol=POINT_TOLERANCE[extension])


@pytest.mark.parametrize("extension", FORMATS)
def test_inverse_round_trip(result, extension, tmp_path):
    """The inverse file maps moving-space points to fixed space (for resampling the fixed image
    onto the moving grid): checked on points of the moving grid."""
    path = tmp_path / f"inverse{extension}"
    write_transform(result, path, inverse=True)
    points = random_points(result.moving_geometry, count=2000)
    expected = result.inverse_points(points)
    readers = [lambda: sitk_points(read_transform(path), points)]
    if extension == ".nii.gz":  # one field: also the resampling transform of the opposite registration
        readers.append(lambda: read_result(path, result.moving_geometry, result.fixed_geometry).resampling_points(points))
    for read in readers:
        error = np.linalg.norm(read() - expected, axis=-1)
        if extension == ".h5":
            assert error.max() < 1e-9
        else:  # T^-1 resampled onto a 5 mm moving-space grid: interpolation error of a smooth field
            assert error.max() < 0.25 and error.mean() < 0.05


def test_read_result_with_its_inverse_file(result, tmp_path):
    write_transform(result, tmp_path / "forward.h5")
    write_transform(result, tmp_path / "inverse.h5", inverse=True)
    read = read_result(tmp_path / "forward.h5", result.fixed_geometry, result.moving_geometry, inverse_path=tmp_path / "inverse.h5")
    np.testing.assert_array_equal(read.inverse_displacement, result.inverse_displacement)
    points = random_points(result.moving_geometry)
    np.testing.assert_allclose(read.inverse_points(points), result.inverse_points(points), atol=1e-9)


def test_composite_order_matters_and_is_right(result, tmp_path):
    """The file's composite applies the field, then the affine; the other order is far off."""
    write_transform(result, tmp_path / "forward.h5")
    points = random_points(result.fixed_geometry, seed=1)
    transform = sitk.CompositeTransform(read_transform(tmp_path / "forward.h5"))
    assert [transform.GetNthTransform(i).GetName() for i in range(2)] == ["AffineTransform", "DisplacementFieldTransform"]
    np.testing.assert_allclose(sitk_points(transform, points), result.resampling_points(points), atol=1e-9)
    # u applied after the affine: A(p) + u(A(p)) differs by millimetres
    affine_first = RegistrationResult(result.fixed_geometry, result.moving_geometry, result.affine).resampling_points(points)
    swapped = affine_first + (RegistrationResult(result.fixed_geometry, result.moving_geometry, np.eye(4), result.field_geometry,
                                                 result.displacement).resampling_points(affine_first) - affine_first)
    assert np.mean(np.linalg.norm(swapped - result.resampling_points(points), axis=-1)) > 0.5


@pytest.mark.parametrize("extension", FORMATS)
def test_simpleitk_resample_reproduces_the_warp_everywhere(result, stroke, extension, tmp_path):
    """Including the border: points within half a voxel outside the moving grid take the edge
    value, points further out 0, in both."""
    moving = stroke["T1"]
    path = tmp_path / f"forward{extension}"
    write_transform(result, path)
    ours = result.warp(moving).array
    theirs = sitk_resample(moving, result.fixed_geometry, read_transform(path))
    assert 0.05 < np.mean(ours == 0) < 0.95, "the warp should map part of the grid outside the moving image"
    assert_same_resampling(ours, theirs, extension, moving.array.max())


def test_inverse_warp_matches_simpleitk(result, stroke, tmp_path):
    write_transform(result, tmp_path / "inverse.h5", inverse=True)
    fixed = result.warp(stroke["T1"])  # an image on the fixed grid
    ours = result.warp(fixed, inverse=True).array
    theirs = sitk_resample(fixed, result.moving_geometry, read_transform(tmp_path / "inverse.h5"))
    assert_same_resampling(ours, theirs, ".h5", fixed.array.max())


def test_affine_only_result_as_tfm(result, tmp_path):
    affine = affine_about_centre(result.fixed_geometry, [5.0, -3.0, 2.0], [0.1, -0.2, 0.05], [1.1, 0.95, 1.0])
    affine_result = RegistrationResult(result.fixed_geometry, result.moving_geometry, affine)
    write_transform(affine_result, tmp_path / "affine.tfm")
    write_transform(affine_result, tmp_path / "inverse.tfm", inverse=True)
    assert read_transform(tmp_path / "affine.tfm").GetName() == "AffineTransform"
    read = read_result(tmp_path / "affine.tfm", result.fixed_geometry, result.moving_geometry)
    assert read.displacement is None
    np.testing.assert_allclose(read.affine, affine, atol=1e-12)
    inverse = read_result(tmp_path / "inverse.tfm", result.moving_geometry, result.fixed_geometry)
    np.testing.assert_allclose(inverse.affine, np.linalg.inv(affine), atol=1e-12)
    # an affine written as .nii.gz is a displacement field on the fixed grid: same points
    write_transform(affine_result, tmp_path / "affine.nii.gz")
    as_field = read_result(tmp_path / "affine.nii.gz", result.fixed_geometry, result.moving_geometry)
    points = random_points(result.fixed_geometry)
    np.testing.assert_allclose(as_field.resampling_points(points), affine_result.resampling_points(points), atol=1e-3)


def test_itk_linear_transforms_are_read_as_affines(result, tmp_path):
    euler = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (4.0, -5.0, 6.0))
    sitk.WriteTransform(euler, str(tmp_path / "euler.tfm"))
    read = read_result(tmp_path / "euler.tfm", result.fixed_geometry, result.moving_geometry)
    points = random_points(result.fixed_geometry)
    np.testing.assert_allclose(read.resampling_points(points), sitk_points(euler, points), atol=1e-9)


# --------------------------------------------------------------------------------------------
# Bad paths and files


@pytest.mark.parametrize("name", ["transform.png", "transform", "transform.nii.bz2"])
def test_unknown_extension_is_refused(result, name, tmp_path):
    with pytest.raises(InputError, match="cannot tell the transform format .*use .h5"):
        write_transform(result, tmp_path / name)
    assert not (tmp_path / name).exists()


def test_deformable_result_cannot_go_to_tfm(result, tmp_path):
    with pytest.raises(InputError, match="deformable transform needs .h5"):
        write_transform(result, tmp_path / "result.tfm")


def test_missing_inverse_field_is_reported(result, tmp_path):
    without_inverse = replace(result, inverse_displacement=None)
    with pytest.raises(InputError, match="no inverse field"):
        write_transform(without_inverse, tmp_path / "inverse.h5", inverse=True)


def test_missing_and_broken_transform_files(result, tmp_path):
    with pytest.raises(InputError, match="transform file not found"):
        read_transform(tmp_path / "absent.h5")
    (tmp_path / "broken.h5").write_text("not a transform")
    with pytest.raises(InputError, match="cannot read transform .*broken.h5"):
        read_transform(tmp_path / "broken.h5")


def test_transform_of_the_wrong_dimension_is_refused(result, tmp_path):
    sitk.WriteTransform(sitk.AffineTransform(2), str(tmp_path / "affine2d.tfm"))
    with pytest.raises(InputError, match="not supported"):
        read_result(tmp_path / "affine2d.tfm", result.fixed_geometry, result.moving_geometry)
