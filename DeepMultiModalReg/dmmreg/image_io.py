"""Reading and writing images through SimpleITK: NIfTI, NRRD, MHA and DICOM series folders.

Every reader keeps the file's geometry (LPS, mm; see :mod:`dmmreg.geometry`); every writer
writes atomically (:func:`dmmreg.files.atomic_write`).
"""

from __future__ import annotations

import os

import numpy as np

from .errors import InputError
from .files import atomic_write
from .geometry import Geometry
from .image import Image


def geometry_from_sitk(img) -> Geometry:
    return Geometry(img.GetSize(), img.GetSpacing(), img.GetOrigin(), np.array(img.GetDirection()))


def to_sitk(image: Image, vector: bool = False):
    """SimpleITK image with the same geometry (``vector``: last array axis holds components)."""
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(np.ascontiguousarray(image.array), isVector=vector)
    g = image.geometry
    out.SetSpacing(g.spacing)
    out.SetOrigin(g.origin)
    out.SetDirection(tuple(g.direction.ravel()))
    return out


def from_sitk(img) -> Image:
    import SimpleITK as sitk

    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"expected a scalar image, got {img.GetNumberOfComponentsPerPixel()} components per "
            "voxel (an RGB or vector image); convert it to a scalar volume first"
        )
    array = sitk.GetArrayFromImage(img)
    return Image(array, geometry_from_sitk(img))


def _read_dicom_series(directory: str):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(directory)
    if not series:
        raise InputError(f"{directory} is a folder but holds no DICOM series; give an image file")
    if len(series) > 1:
        raise InputError(
            f"{directory} holds {len(series)} DICOM series; give the folder of one series"
        )
    files = reader.GetGDCMSeriesFileNames(directory, series[0])
    reader.SetFileNames(files)
    return reader.Execute()


def read_image(path: str | os.PathLike, what: str = "image") -> Image:
    """Read NIfTI, NRRD, MHA (any SimpleITK format) or a DICOM series folder.

    Raises ``InputError`` naming the file and the problem when it is missing or unreadable.
    """
    import SimpleITK as sitk

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{what} file not found: {path}")
    try:
        img = _read_dicom_series(path) if os.path.isdir(path) else sitk.ReadImage(path)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise InputError(f"cannot read {what} {path}: not an image SimpleITK can read ({first})")
    img = _squeeze_single_slice(img)
    return from_sitk(img)


def _squeeze_single_slice(img):
    """A 3D image one voxel thick along an index axis becomes 2D (its in-plane geometry kept)."""
    import SimpleITK as sitk

    if img.GetDimension() == 3 and img.GetSize()[2] == 1:
        return sitk.Extract(img, (img.GetSize()[0], img.GetSize()[1], 0), (0, 0, 0))
    if img.GetDimension() == 4:
        raise InputError(
            "4D image given; register its frames one by one (a sequence) instead"
        )
    return img


def write_image(image: Image, path: str | os.PathLike) -> None:
    """Write ``image`` with its geometry (format from the extension), atomically."""
    import SimpleITK as sitk

    path = os.fspath(path)
    atomic_write(path, lambda tmp: sitk.WriteImage(to_sitk(image), tmp, True))
