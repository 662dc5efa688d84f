"""Reading and writing transforms as ITK files (LPS, resampling direction), through SimpleITK.

A result ``T(p) = A(p + u(p))`` is written as

* ``.h5`` / ``.hdf5`` / ``.tfm``-free composite: ITK ``CompositeTransform`` holding the affine and the
  displacement field (``.tfm`` cannot hold a field; it is accepted for affine-only results);
* ``.nii`` / ``.nii.gz`` / ``.nrrd`` / ``.mha``: one displacement field ``T(p) - p`` sampled on
  :meth:`RegistrationResult.composed_field_geometry` (the field grid; for the inverse, the
  moving grid with the field's spacing and margin), a vector image that
  ``SimpleITK.DisplacementFieldTransform`` reads.

Either way ``SimpleITK.Resample(moving, fixed, T)`` reproduces :meth:`RegistrationResult.warp`.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import InputError
from .geometry import Geometry
from .image import Image
from .files import atomic_write
from .image_io import check_complete, geometry_from_sitk, to_sitk
from .result import RegistrationResult

FIELD_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
COMPOSITE_EXTENSIONS = (".h5", ".hdf5", ".hdf", ".tfm", ".txt", ".mat")


def _kind(path: str) -> str:
    lower = path.lower()
    if lower.endswith(FIELD_EXTENSIONS):
        return "field"
    if lower.endswith(COMPOSITE_EXTENSIONS):
        return "composite"
    raise InputError(
        f"cannot tell the transform format of {path}: use .h5 (affine + displacement field) "
        "or .nii.gz (one displacement field)"
    )


def check_transform_path(path: str, has_field: bool = True) -> None:
    """Fail early (before any work) when ``path`` has an extension we cannot write."""
    kind = _kind(path)
    if kind == "composite" and has_field and not path.lower().endswith((".h5", ".hdf5", ".hdf")):
        raise InputError(f"{path}: a deformable transform needs .h5 or a displacement field .nii.gz")


def affine_to_sitk(matrix: np.ndarray):
    import SimpleITK as sitk

    dim = matrix.shape[0] - 1
    t = sitk.AffineTransform(dim)
    t.SetMatrix(tuple(np.asarray(matrix[:dim, :dim], dtype=np.float64).ravel()))
    t.SetTranslation(tuple(np.asarray(matrix[:dim, dim], dtype=np.float64)))
    return t


def displacement_to_sitk(displacement: np.ndarray, geometry: Geometry):
    """``DisplacementFieldTransform`` from an array ``(*shape, dim)`` (mm, LPS) on ``geometry``."""
    import SimpleITK as sitk

    img = to_sitk(Image(np.asarray(displacement, dtype=np.float64), geometry), vector=True)
    return sitk.DisplacementFieldTransform(img)


def to_sitk_transform(result: RegistrationResult, inverse: bool = False):
    """The resampling transform (or its inverse) as one SimpleITK transform."""
    import SimpleITK as sitk

    if inverse:
        affine = affine_to_sitk(np.linalg.inv(result.affine))
        field = result.inverse_displacement
        if result.displacement is not None and field is None:
            raise InputError("no inverse field was computed; request the inverse transform when registering")
    else:
        affine = affine_to_sitk(result.affine)
        field = result.displacement
    if field is None:
        return affine
    field_tx = displacement_to_sitk(field, result.field_geometry)
    if inverse:
        # T^-1(q) = w-map(A^-1(q)): the affine acts first.  ITK applies the last-added first.
        composite = sitk.CompositeTransform(field_tx)
        composite.AddTransform(affine)
    else:
        # T(p) = A(u-map(p)): the displacement acts first, so it is added last.
        composite = sitk.CompositeTransform(affine)
        composite.AddTransform(field_tx)
    return composite


def write_transform(result: RegistrationResult, path: str | os.PathLike, inverse: bool = False) -> None:
    """Write the resampling transform (``inverse``: moving to fixed) to ``path`` atomically."""
    import SimpleITK as sitk

    path = os.fspath(path)
    if _kind(path) == "composite":
        check_transform_path(path, has_field=result.displacement is not None)
        transform = to_sitk_transform(result, inverse)
        atomic_write(path, lambda tmp: sitk.WriteTransform(transform, tmp))
        return
    geometry = result.composed_field_geometry(inverse)
    if inverse:
        disp = result.inverse_resampling_displacement(geometry)
    else:
        disp = result.resampling_displacement(geometry)
    image = to_sitk(Image(disp.astype(np.float64), geometry), vector=True)
    atomic_write(path, lambda tmp: sitk.WriteImage(image, tmp, True))


def read_transform(path: str | os.PathLike):
    """Read an ITK transform file or a displacement-field image as a SimpleITK transform."""
    import SimpleITK as sitk

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"transform file not found: {path}")
    try:
        if _kind(path) == "field":
            check_complete(path, "transform")
            img = sitk.ReadImage(path, sitk.sitkVectorFloat64)
            return sitk.DisplacementFieldTransform(img)
        return sitk.ReadTransform(path)
    except RuntimeError as exc:
        raise InputError(f"cannot read transform {path}: {str(exc).strip().splitlines()[-1]}")


def read_result(
    path: str | os.PathLike,
    fixed_geometry: Geometry,
    moving_geometry: Geometry,
    inverse_path: str | os.PathLike | None = None,
) -> RegistrationResult:
    """Read a resampling transform file back as a :class:`RegistrationResult`.

    Understands what :func:`write_transform` writes (an affine, a composite of an affine and a
    displacement field, or one displacement field) and any ITK transform made only of those
    (translation, Euler, similarity and versor transforms count as affine).  ``inverse_path``:
    the matching inverse written by ``write_transform(..., inverse=True)`` as ``.h5``; its field
    becomes the result's inverse field."""
    import SimpleITK as sitk

    transform = read_transform(path)
    dim = fixed_geometry.dim
    affine = np.eye(dim + 1)
    field_geometry = displacement = None
    parts = _flatten(transform)
    # ITK applies the last transform of a composite first: T = parts[0] o ... o parts[-1]
    for part in reversed(parts):
        if part.GetName() == "DisplacementFieldTransform":
            if displacement is not None or not np.allclose(affine, np.eye(dim + 1)):
                raise InputError(f"{path}: only an affine applied after one displacement field is supported")
            field = sitk.DisplacementFieldTransform(part).GetDisplacementField()
            field_geometry = geometry_from_sitk(field)
            displacement = sitk.GetArrayFromImage(field).astype(np.float64)
        else:
            affine = _affine_of(part, dim, path) @ affine
    if displacement is not None and field_geometry.dim != dim:
        raise InputError(f"{path} is a {field_geometry.dim}D transform but the images are {dim}D")
    inverse = None if inverse_path is None else _inverse_field(os.fspath(inverse_path), field_geometry)
    return RegistrationResult(fixed_geometry, moving_geometry, affine, field_geometry, displacement, inverse, method="file")


def _inverse_field(path: str, field_geometry: Geometry | None) -> np.ndarray | None:
    """The field ``w`` of an inverse file ``T^-1(q) = A^-1(q) + w(A^-1(q))`` (on the forward field's grid)."""
    import SimpleITK as sitk

    fields = [p for p in _flatten(read_transform(path)) if p.GetName() == "DisplacementFieldTransform"]
    if not fields:
        return None
    field = sitk.DisplacementFieldTransform(fields[0]).GetDisplacementField()
    if field_geometry is None or geometry_from_sitk(field) != field_geometry:
        raise InputError(f"the inverse field in {path} is not on the forward transform's field grid")
    return sitk.GetArrayFromImage(field).astype(np.float64)


def _flatten(transform) -> list:
    import SimpleITK as sitk

    # a linear composite is one affine; SimpleITK also wraps the types it cannot downcast (e.g.
    # MatrixOffsetTransformBase from ITK .txt files) in a composite whose only part is itself
    if transform.GetName() == "CompositeTransform" and not transform.IsLinear():
        composite = sitk.CompositeTransform(transform)
        out = []
        for i in range(composite.GetNumberOfTransforms()):
            out.extend(_flatten(composite.GetNthTransform(i)))
        return out
    return [transform]


def _affine_of(transform, dim: int, path: str) -> np.ndarray:
    """Homogeneous matrix of a linear ITK transform, found by mapping the unit points."""
    if transform.GetDimension() != dim or not transform.IsLinear():
        raise InputError(f"{path}: {transform.GetName()} is not supported (need affine or displacement field)")
    origin = np.asarray(transform.TransformPoint((0.0,) * dim))
    m = np.eye(dim + 1)
    for k in range(dim):
        unit = [0.0] * dim
        unit[k] = 1.0
        m[:dim, k] = np.asarray(transform.TransformPoint(tuple(unit))) - origin
    m[:dim, dim] = origin
    return m
