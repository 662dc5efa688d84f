"""dmmreg.image: file formats keep the geometry, intensity normalisation, clear input errors."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import oblique_geometry

from dmmreg.errors import InputError
from dmmreg.geometry import MINIMUM_OVERLAP, Geometry, check_overlap, overlap_fraction
from dmmreg.image import Image, axial_slice, check_image, normalise_intensity
from dmmreg.image_io import read_image, to_sitk, write_image

EXTENSIONS = (".nii.gz", ".nrrd", ".mha")


def thick_slice_image() -> Image:
    """Oblique, anisotropic (0.8 x 0.7 x 3 mm) int16 image: a typical clinical 2D acquisition."""
    geometry = oblique_geometry(size=(20, 16, 6), spacing=(0.8, 0.7, 3.0))
    return Image(np.random.default_rng(0).integers(0, 1000, geometry.shape).astype(np.int16), geometry)


def assert_same_image(read: Image, written: Image) -> None:
    assert read.geometry == written.geometry
    # geometry equality is tolerant; the files must keep it far better than a voxel
    np.testing.assert_allclose(read.geometry.spacing, written.geometry.spacing, atol=1e-6)
    np.testing.assert_allclose(read.geometry.origin, written.geometry.origin, atol=1e-5)
    np.testing.assert_allclose(read.geometry.direction, written.geometry.direction, atol=1e-6)
    assert read.array.dtype == written.array.dtype
    np.testing.assert_array_equal(read.array, written.array)


@pytest.fixture(params=["stroke T1", "thick slices"])
def image(request, stroke_paths) -> Image:
    return read_image(stroke_paths["T1"]) if request.param == "stroke T1" else thick_slice_image()


@pytest.mark.parametrize("extension", EXTENSIONS)
def test_file_round_trip_keeps_geometry_and_voxels(image, extension, tmp_path):
    path = tmp_path / f"image{extension}"
    write_image(image, path)
    assert_same_image(read_image(path), image)


def test_stroke_images_are_oblique_and_share_one_grid(stroke):
    geometry = stroke["T1"].geometry
    assert geometry.size == (124, 160, 140)
    assert not np.allclose(geometry.direction, np.eye(3), atol=0.05)
    assert stroke["T2"].geometry == geometry and stroke["FLAIR"].geometry == geometry


def write_dicom_series(image: Image, folder) -> None:
    """One MR DICOM file per slice, with the position and orientation tags a series reader needs."""
    volume = to_sitk(image)
    d = volume.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.GetDepth()):
        slice_k = volume[:, :, k]
        tags = {
            "0008|0060": "MR",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.1.2",
            "0020|0037": "\\".join(f"{v:.10f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0020|0032": "\\".join(f"{v:.10f}" for v in volume.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0013": str(k + 1),
        }
        for key, value in tags.items():
            slice_k.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_k)


def test_dicom_series_folder_keeps_geometry(tmp_path):
    image = thick_slice_image()
    write_dicom_series(image, tmp_path)
    assert len(list(tmp_path.glob("*.dcm"))) == image.geometry.size[2]
    assert_same_image(read_image(tmp_path), image)


@pytest.mark.parametrize("extension", [".nii.gz", ".mha"])
def test_2d_image_round_trip(extension, tmp_path):
    geometry = oblique_geometry(size=(30, 20), spacing=(0.7, 1.3))
    image = Image(np.random.default_rng(1).random(geometry.shape, dtype=np.float32), geometry)
    path = tmp_path / f"slice{extension}"
    write_image(image, path)
    read = read_image(path)
    assert read.dim == 2
    assert_same_image(read, image)


def test_single_slice_volume_reads_as_2d_with_its_in_plane_geometry(tmp_path):
    volume = sitk.GetImageFromArray(np.arange(20 * 16, dtype=np.float32).reshape(1, 16, 20))
    volume.SetSpacing((0.7, 0.9, 5.0))
    volume.SetOrigin((1.0, -2.0, 30.0))
    sitk.WriteImage(volume, str(tmp_path / "one_slice.nii.gz"))
    image = read_image(tmp_path / "one_slice.nii.gz")
    assert image.geometry == Geometry((20, 16), (0.7, 0.9), (1.0, -2.0), np.eye(2))
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(volume)[0])


def test_axial_slice_keeps_the_slice_geometry_and_voxels(stroke):
    volume = Image(np.arange(4 * 3 * 5, dtype=np.float32).reshape(5, 3, 4),
                   Geometry((4, 3, 5), (0.7, 0.9, 2.0), (1.0, -2.0, 30.0), np.diag([-1.0, 1.0, 1.0])))
    cut = axial_slice(volume, 3)
    assert cut.geometry == Geometry((4, 3), (0.7, 0.9), (1.0, -2.0), np.diag([-1.0, 1.0]))
    np.testing.assert_array_equal(cut.array, volume.array[3])
    oblique = axial_slice(stroke["T1"], 70)  # tilted about 18 degrees: in-plane directions made orthonormal
    np.testing.assert_allclose(oblique.geometry.direction.T @ oblique.geometry.direction, np.eye(2), atol=1e-9)
    np.testing.assert_allclose(oblique.geometry.origin, stroke["T1"].geometry.physical_points(np.array([0, 0, 70.0]))[:2])
    with pytest.raises(InputError, match="outside the image's 5 slices"):
        axial_slice(volume, 5)
    with pytest.raises(InputError, match="needs a 3D image"):
        axial_slice(cut, 0)


# --------------------------------------------------------------------------------------------
# Intensity normalisation


def test_normalise_intensity_is_robust_to_outliers_and_background():
    rng = np.random.default_rng(2)
    array = np.zeros((20, 30, 30), dtype=np.float32)
    array[5:15, 5:25, 5:25] = rng.uniform(100, 200, size=(10, 20, 20))
    array[10, 10, 10] = 1e6  # one hot voxel must not squash the contrast
    out = normalise_intensity(array)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    foreground = out[5:15, 5:25, 5:25]
    assert np.median(foreground) == pytest.approx(0.5, abs=0.05)
    # the empty border is ~93 % of the voxels but does not decide the percentiles
    assert np.percentile(foreground, 5) > 0.02
    assert np.all(out[:5] == 0.0)


def test_normalise_intensity_uses_the_mask_and_survives_constant_images():
    array = np.concatenate([np.full((4, 8), 10.0), np.full((4, 8), 1000.0)]).astype(np.float32)
    array[0, 0] = 20.0
    mask = np.zeros_like(array)
    mask[:4] = 1
    out = normalise_intensity(array, mask)
    assert out[0, 0] == pytest.approx(1.0) and out[1, 1] == 0.0  # contrast set by the masked part
    assert np.all(out[4:] == 1.0)  # everything brighter is clipped
    constant = normalise_intensity(np.full((4, 4), 7.0))
    assert np.all(np.isfinite(constant)) and np.all((constant >= 0) & (constant <= 1))


# --------------------------------------------------------------------------------------------
# Bad inputs name their problem


def test_missing_file_is_named(tmp_path):
    with pytest.raises(InputError, match="fixed image file not found: .*nope.nii.gz"):
        read_image(tmp_path / "nope.nii.gz", "fixed image")


@pytest.mark.parametrize("content", [b"", b"this is not an image\n" * 10], ids=["empty", "text"])
def test_unreadable_file_is_named(content, tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(content)
    with pytest.raises(InputError, match="cannot read moving image .*broken.nii.gz"):
        read_image(path, "moving image")


def test_folder_without_dicom_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(InputError, match="holds no DICOM series"):
        read_image(tmp_path)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.pad(np.array([[[np.nan]]], np.float32), 3, constant_values=1.0), "contains NaN"),
        (np.pad(np.array([[[np.inf]]], np.float32), 3, constant_values=1.0), "contains NaN or infinite"),
        (np.full((8, 8, 8), 3.0, np.float32), "is constant"),
        (np.zeros((8, 8, 8), np.float32), "is constant"),
        (np.arange(8 * 8 * 3, dtype=np.float32).reshape(3, 8, 8), "is too small"),
    ],
    ids=["nan", "infinite", "constant", "all zero", "three slices"],
)
def test_unusable_images_are_refused(array, message):
    geometry = Geometry(array.shape[::-1], (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    with pytest.raises(InputError, match=f"the fixed image {message}"):
        check_image(Image(array, geometry), "the fixed image")


def test_real_image_passes_the_checks(stroke):
    for contrast, image in stroke.items():
        check_image(image, contrast)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: sitk.Image([8, 8, 8, 3], sitk.sitkFloat32), "4D image"),
        (lambda: sitk.Image([8, 8, 8], sitk.sitkVectorUInt8, 3), "3 components per voxel"),
    ],
    ids=["4D", "RGB"],
)
def test_images_of_the_wrong_kind_are_refused(make, message, tmp_path):
    path = str(tmp_path / "image.nrrd")
    sitk.WriteImage(make(), path)
    with pytest.raises(InputError, match=message):
        read_image(path)


def test_geometry_refuses_bad_grids():
    with pytest.raises(InputError, match="spacing must be positive"):
        Geometry((4, 4), (1.0, 0.0), (0.0, 0.0), np.eye(2))
    with pytest.raises(InputError, match="direction matrix is singular"):
        Geometry((4, 4), (1.0, 1.0), (0.0, 0.0), np.zeros((2, 2)))
    with pytest.raises(InputError, match="does not match"):
        Image(np.zeros((4, 5)), Geometry((4, 5), (1.0, 1.0), (0.0, 0.0), np.eye(2)))


# --------------------------------------------------------------------------------------------
# Derived grids


@pytest.mark.parametrize("spacing", [2.0, 4.0, (3.0, 1.0, 6.0)])
def test_with_spacing_keeps_centre_direction_and_field_of_view(spacing):
    geometry = oblique_geometry(size=(41, 33, 12), spacing=(1.0, 1.5, 2.5))
    coarse = geometry.with_spacing(spacing)
    np.testing.assert_allclose(coarse.centre, geometry.centre, atol=1e-9)
    np.testing.assert_array_equal(coarse.direction, geometry.direction)
    # never finer than the original (thick slices are not super-sampled)
    expected = np.maximum(np.broadcast_to(spacing, 3), geometry.spacing)
    np.testing.assert_allclose(coarse.spacing, expected)
    # the field of view stays within half a coarse voxel of the original on each side
    assert np.all(np.abs(coarse.extent - geometry.extent) <= expected / 2 + 1e-9)


def test_with_margin_grows_every_side_and_keeps_centre_and_direction():
    geometry = oblique_geometry(size=(24, 20, 16), spacing=(1.0, 1.5, 2.5))
    grown = geometry.with_margin(5.0)
    np.testing.assert_allclose(grown.centre, geometry.centre, atol=1e-9)
    np.testing.assert_array_equal(grown.direction, geometry.direction)
    assert grown.spacing == geometry.spacing
    pad = np.ceil(5.0 / np.asarray(geometry.spacing))
    np.testing.assert_array_equal(np.subtract(grown.size, geometry.size), 2 * pad)
    # the original first voxel is at index `pad` of the grown grid
    first = grown.physical_points(pad)
    np.testing.assert_allclose(first, geometry.origin, atol=1e-9)


# --------------------------------------------------------------------------------------------
# The one overlap rule (command line and Slicer modules)


def shifted(geometry: Geometry, along_i_mm: float) -> Geometry:
    origin = np.add(geometry.origin, geometry.direction[:, 0] * along_i_mm)
    return Geometry(geometry.size, geometry.spacing, tuple(origin), geometry.direction)


def test_overlap_fraction_is_the_share_of_the_fixed_grid_inside_the_moving_one():
    fixed = oblique_geometry(size=(33, 17, 9), spacing=(1.0, 1.5, 2.5))
    assert overlap_fraction(fixed, fixed) == 1.0
    # moved by half its extent along i: 9 of the lattice's 17 columns are inside
    half = overlap_fraction(fixed, shifted(fixed, 16.0))
    assert 0.45 < half < 0.55
    far = shifted(fixed, 500.0)
    assert overlap_fraction(fixed, far) == 0.0
    # the resampling affine (fixed to moving) maps the fixed grid onto the far one
    to_far = np.eye(4)
    to_far[:3, 3] = fixed.direction[:, 0] * 500.0
    assert overlap_fraction(fixed, far, to_far) == 1.0


def test_a_single_slice_overlaps_with_its_thickness():
    volume = oblique_geometry(size=(20, 16, 1), spacing=(1.0, 1.0, 3.0))
    normal = volume.direction[:, 2]
    def moved(mm):
        return Geometry(volume.size, volume.spacing, tuple(np.add(volume.origin, normal * mm)), volume.direction)
    assert overlap_fraction(volume, moved(1.4)) == 1.0  # within half the 3 mm slice
    assert overlap_fraction(volume, moved(1.6)) == 0.0


def test_check_overlap_names_both_images_and_the_fix():
    fixed = oblique_geometry(size=(33, 17, 9), spacing=(1.0, 1.5, 2.5))
    check_overlap(fixed, shifted(fixed, 30.0))  # 2 of the lattice's 17 columns (12 %): enough
    with pytest.raises(InputError, match=r"^the moving image does not overlap the fixed image in physical "
                                         r"space \(0% of it is covered.*initial transform"):
        check_overlap(fixed, shifted(fixed, 40.0))
    with pytest.raises(InputError, match="'M' does not overlap 'F'"):
        check_overlap(fixed, shifted(fixed, 40.0), fixed_name="'F'", moving_name="'M'")
    assert 0 < MINIMUM_OVERLAP < 0.05
