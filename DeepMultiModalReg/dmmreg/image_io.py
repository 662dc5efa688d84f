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


def _series_line(reader, directory: str, series_id: str) -> str:
    """``description (columns x rows x files)`` of one DICOM series, for messages."""
    import SimpleITK as sitk

    files = reader.GetGDCMSeriesFileNames(directory, series_id)
    first = sitk.ImageFileReader()
    first.SetFileName(files[0])
    try:
        first.ReadImageInformation()
        size = first.GetSize()
        description = first.GetMetaData("0008|103e").strip() if first.HasMetaDataKey("0008|103e") else "no description"
    except RuntimeError:
        return f"{series_id} ({len(files)} files)"
    return f"{description or 'no description'} ({size[0]} x {size[1]} x {len(files)})"


def _read_dicom_series(directory: str):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(directory)
    if not series:
        raise InputError(f"{directory} is a folder but holds no DICOM series; give an image file")
    if len(series) > 1:
        listing = "; ".join(_series_line(reader, directory, s) for s in series)
        raise InputError(f"{directory} holds {len(series)} DICOM series ({listing}); give the folder of one series "
                         "(move each series into its own folder)")
    files = reader.GetGDCMSeriesFileNames(directory, series[0])
    reader.SetFileNames(files)
    return reader.Execute()


# sizeof_hdr of NIfTI-1 and NIfTI-2 -> where their dim, bitpix and vox_offset are (byte offset,
# struct format); a file needs vox_offset + prod(dim) * bitpix / 8 bytes, whatever the datatype.
_NIFTI_HEADERS = {348: (40, "8h", 72, "h", 108, "f"), 540: (16, "8q", 14, "h", 168, "q")}


def _nifti_data_length(header: bytes) -> int | None:
    """Bytes a single-file NIfTI-1 or NIfTI-2 needs (header, extensions, voxels), from its
    header; None when ``header`` is not one (ITK then says what is wrong)."""
    import struct

    for endian in "<>":
        if len(header) < 4:
            return None
        size = struct.unpack(endian + "i", header[:4])[0]
        if size in _NIFTI_HEADERS and len(header) >= size:
            dim_at, dim_format, bitpix_at, bitpix_format, offset_at, offset_format = _NIFTI_HEADERS[size]
            dims = struct.unpack_from(endian + dim_format, header, dim_at)
            bitpix = struct.unpack_from(endian + bitpix_format, header, bitpix_at)[0]
            vox_offset = struct.unpack_from(endian + offset_format, header, offset_at)[0]
            if not 1 <= dims[0] <= 7 or any(d < 1 for d in dims[1:dims[0] + 1]) or bitpix < 1:
                return None
            voxels = 1
            for d in dims[1:dims[0] + 1]:
                voxels *= int(d)
            return int(vox_offset) + voxels * int(bitpix) // 8
    return None


def _metaimage_data_length(path: str) -> tuple[int, int] | None:
    """``(bytes present, bytes needed)`` of a MetaImage (.mha) file's voxel data, from its
    header; None when the data is in another file or the header is not understood."""
    sizes = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
             "MET_LONG": 8, "MET_ULONG": 8, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}
    fields: dict[str, str] = {}
    with open(path, "rb") as stream:
        for _ in range(100):
            line = stream.readline(4096).decode("latin-1")
            key, _, value = line.partition("=")
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
        header_end = stream.tell()
    if fields.get("ElementDataFile") != "LOCAL" or fields.get("ElementType") not in sizes:
        return None
    present = os.path.getsize(path) - header_end
    if fields.get("CompressedData", "False").lower() == "true":
        needed = fields.get("CompressedDataSize", "")
        return (present, int(needed)) if needed.isdigit() else None
    voxels = 1
    for d in fields.get("DimSize", "").split():
        voxels *= int(d)
    return present, voxels * int(fields.get("ElementNumberOfChannels", "1")) * sizes[fields["ElementType"]]


def _decompressed_chunks(path: str, gz: bool):
    """The file's bytes in chunks, inflated when ``gz`` and the file is gzip (as far as the
    stream goes)."""
    import zlib

    with open(path, "rb") as stream:
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if gz and stream.read(2) == b"\x1f\x8b" else None
        stream.seek(0)
        while chunk := stream.read(1 << 20):
            while inflate is not None and chunk:
                out = inflate.decompress(chunk)
                chunk = inflate.unused_data if inflate.eof else b""  # a further gzip member
                if inflate.eof:
                    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
                yield out
            if inflate is None:
                yield chunk


def check_complete(path: str, what: str) -> None:
    """``InputError`` when an image file holds less data than its header says (a copy or
    download that stopped early): NIfTI (``.nii``, ``.nii.gz``: the decompressed length against
    vox_offset + dims x bitpix) and MetaImage (``.mha``).  ITK reads the missing part as
    zeros; NRRD readers already refuse such files."""
    import zlib

    lower = path.lower()
    if lower.endswith(".mha"):
        lengths = _metaimage_data_length(path)
    elif lower.endswith((".nii", ".nii.gz")):
        header, present, needed = b"", 0, None
        try:
            for chunk in _decompressed_chunks(path, lower.endswith(".gz")):
                present += len(chunk)
                if needed is None and len(header) < 540:
                    header += chunk[:540 - len(header)]
                    needed = _nifti_data_length(header)
                if needed is not None and present >= needed:
                    break
        except zlib.error as error:
            raise InputError(f"{what} {path} is corrupt (not a valid gzip stream: {error}); copy the file again") from None
        lengths = None if needed is None else (present, needed)
    else:
        return
    if lengths is not None and lengths[0] < lengths[1]:
        unpacked = " (decompressed)" if lower.endswith(".gz") else ""
        raise InputError(f"{what} {path}: file is truncated: {lengths[0]} of {lengths[1]} bytes{unpacked}; "
                         "the copy or download stopped early: copy the file again")


def read_image(path: str | os.PathLike, what: str = "image") -> Image:
    """Read NIfTI, NRRD, MHA (any SimpleITK format) or a DICOM series folder.

    Raises ``InputError`` naming the file and the problem when it is missing or unreadable.
    """
    import SimpleITK as sitk

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{what} file not found: {path}")
    if not os.path.isdir(path):
        check_complete(path, what)
    try:
        img = _read_dicom_series(path) if os.path.isdir(path) else sitk.ReadImage(path)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise InputError(f"cannot read {what} {path}: not an image SimpleITK can read ({first})")
    img = _squeeze_single_slice(img)
    return from_sitk(img)


def file_size(path: str | os.PathLike) -> tuple[int, ...] | None:
    """The voxel counts (x, y[, z]) an image file's header gives (a one-slice volume keeps its
    third axis); None for a folder or an unreadable header."""
    import SimpleITK as sitk

    if os.path.isdir(path):
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(os.fspath(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return tuple(reader.GetSize())


def _squeeze_single_slice(img):
    """A 3D image one voxel thick along an index axis becomes 2D (its in-plane geometry kept)."""
    import SimpleITK as sitk

    if img.GetDimension() == 3 and img.GetSize()[2] == 1:
        return sitk.Extract(img, (img.GetSize()[0], img.GetSize()[1], 0), (0, 0, 0))
    if img.GetDimension() == 4:
        raise InputError(
            "4D image given (a series over time); register its frames with `dmmreg register-sequence --frames FILE`"
        )
    return img


def write_image(image: Image, path: str | os.PathLike) -> None:
    """Write ``image`` with its geometry (format from the extension), atomically."""
    import SimpleITK as sitk

    path = os.fspath(path)
    atomic_write(path, lambda tmp: sitk.WriteImage(to_sitk(image), tmp, True))
