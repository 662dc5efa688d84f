"""Image series over time (cine MRI): reading one, and registering every frame to a reference in
one process (the images read once, a learned method's network loaded once).

What counts as a series (:func:`read_series`):

* a **folder of frames**: every image file in it (``.nii.gz``, ``.nii``, ``.nrrd``, ``.nhdr``,
  ``.mha``, ``.mhd``, ``.dcm``; hidden files skipped), each one 2D frame (a 3D file one slice
  thick counts as 2D) or each one 3D volume (3D+t), in the order of their frame numbers: the
  number after ``frame`` in the name (``patient001_frame_07_slice_02.nii.gz``), else the last
  number in the name, else the name itself;
* one **4D file** ``(x, y, z, t)``, NIfTI's layout for time series: frames along the fourth
  axis, 2D when ``z`` is 1 (2D+t), else 3D volumes (3D+t); the frames' times come from the
  fourth axis's spacing;
* one **3D file whose third axis is time** ``(x, y, t)``: only when asked for
  (``third_axis_time=True``, ``--third-axis-time`` on the command line).  A 3D file is otherwise
  a volume: its header cannot say which it is (NIfTI's ``xyzt_units`` time unit belongs to the
  fourth axis, and converters set it on plain volumes too), so the reader refuses it with the
  flag to add rather than guess.

:func:`register_series` registers every frame (moving) to the reference (fixed: a frame of the
series or another image), so each transform maps a point of the reference to the frame
(ITK's resampling transform): resampling a frame through it gives the frame in the reference's
space (motion compensation), and resampling a reference-space label map through the inverse
gives the label map on the frame (:func:`propagate_mask`: the end-diastolic myocardium carried
to every phase).

For ``optimise`` on 2D frames of one series, :func:`cine_settings` adapts the method's own
settings to frames that share one grid and one contrast (benchmarks/README.md, "Cine").
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .geometry import Geometry
from .image import Image

FRAME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


@dataclass
class Series:
    """Frames of one series over time, in time order: ``frames[i]`` named ``names[i]`` (a file
    stem, or ``frame_NNN`` for the frames of one file), at ``times[i]`` when the file says."""

    frames: list[Image]
    names: list[str]
    source: str
    times: list[float] | None = None
    files: list[str] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return self.frames[0].dim

    def __len__(self) -> int:
        return len(self.frames)


def _stem(name: str) -> str:
    lower = name.lower()
    for extension in FRAME_EXTENSIONS:
        if lower.endswith(extension):
            return name[: -len(extension)]
    return name


def frame_number(name: str) -> int | None:
    """The frame number in a file name: the number after ``frame`` (any case, ``_``/``-``
    allowed between), else the last number in the name, else None."""
    stem = _stem(os.path.basename(name))
    match = re.search(r"frame[_\-\s]*(\d+)", stem, flags=re.IGNORECASE)
    if match:
        return int(match.group(1))
    numbers = re.findall(r"\d+", stem)
    return int(numbers[-1]) if numbers else None


def frame_files(folder: str) -> list[str]:
    """The image files of a frame folder in frame order (see the module docstring)."""
    names = [n for n in os.listdir(folder) if not n.startswith(".") and n.lower().endswith(FRAME_EXTENSIONS)
             and os.path.isfile(os.path.join(folder, n))]
    if not names:
        raise InputError(f"the frame folder {folder} holds no image files ({', '.join(FRAME_EXTENSIONS)}); give a "
                         "folder with one file per frame, or one 2D+t file")
    numbers = {n: frame_number(n) for n in names}
    if all(number is not None for number in numbers.values()):
        seen: dict[int, str] = {}
        for name, number in sorted(numbers.items()):
            if number in seen:
                raise InputError(f"the frame folder {folder} has two files numbered {number} ({seen[number]}, {name}); "
                                 "keep one file per frame in the folder")
            seen[number] = name
        names.sort(key=lambda n: (numbers[n], n))
    else:
        names.sort()
    return [os.path.join(folder, n) for n in names]


def _read_frame_folder(folder: str) -> Series:
    from .image_io import read_image

    files = frame_files(folder)
    frames = [read_image(path, f"frame {os.path.basename(path)}") for path in files]
    dims = {frame.dim for frame in frames}
    if len(dims) > 1:
        first_2d = next(f for f, frame in zip(files, frames) if frame.dim == 2)
        first_3d = next(f for f, frame in zip(files, frames) if frame.dim == 3)
        raise InputError(f"the frame folder {folder} mixes 2D frames ({os.path.basename(first_2d)}) and 3D volumes "
                         f"({os.path.basename(first_3d)}); a series has frames of one dimension")
    return Series(frames, [_stem(os.path.basename(f)) for f in files], folder, None, files)


def _plane_geometry(size, spacing, origin, direction: np.ndarray) -> Geometry:
    """The 2D geometry of the first two index axes (as :func:`dmmreg.image.axial_slice`: the
    in-plane block of the directions, made orthonormal)."""
    u, _, vt = np.linalg.svd(np.asarray(direction)[:2, :2])
    return Geometry(tuple(size[:2]), tuple(spacing[:2]), tuple(origin[:2]), u @ vt)


def _read_series_file(path: str, third_axis_time: bool) -> Series:
    import SimpleITK as sitk

    from .image_io import check_complete

    check_complete(path, "series file")
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise InputError(f"cannot read the series file {path}: not an image SimpleITK can read ({first})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"the series file {path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                         "give a scalar series")
    size, spacing, origin = image.GetSize(), image.GetSpacing(), image.GetOrigin()
    dim = image.GetDimension()
    direction = np.array(image.GetDirection()).reshape(dim, dim)
    array = sitk.GetArrayFromImage(image)  # (t, z, y, x) or (t, y, x)
    shown = " x ".join(map(str, size))
    times = None
    if dim == 4:
        if size[2] == 1:
            geometry = _plane_geometry(size, spacing, origin, direction)
            frames = [array[t, 0] for t in range(size[3])]
        else:
            geometry = Geometry(tuple(size[:3]), tuple(spacing[:3]), tuple(origin[:3]), direction[:3, :3])
            frames = [array[t] for t in range(size[3])]
        times = [origin[3] + t * spacing[3] for t in range(size[3])]
    elif dim == 3:
        if not third_axis_time:
            raise InputError(f"{path} is a 3D image ({shown} voxels): read as a volume, not a series. If its third "
                             "axis is time (a 2D+t cine stored as 3D), add --third-axis-time; a 2D+t NIfTI "
                             "(x, y, 1, t) needs no flag")
        geometry = _plane_geometry(size, spacing, origin, direction)
        frames = [array[t] for t in range(size[2])]
    else:
        raise InputError(f"{path} is one {dim}D image ({shown} voxels), a single frame; give a 2D+t file "
                         "(x, y, 1, t), a 3D file with --third-axis-time, or a folder of frames")
    if len(frames) < 2:
        raise InputError(f"{path} holds one frame; a series needs at least two")
    width = max(3, len(str(len(frames) - 1)))
    return Series([Image(np.ascontiguousarray(a), geometry) for a in frames],
                  [f"frame_{t:0{width}d}" for t in range(len(frames))], path, times, [path] * len(frames))


def read_series(path: str | os.PathLike, third_axis_time: bool = False) -> Series:
    """A series from a folder of frames or one 2D+t / 3D+t file (see the module docstring);
    ``InputError`` names the problem and the fix."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"frames not found: {path}")
    if os.path.isdir(path):
        if third_axis_time:
            raise InputError("--third-axis-time is for a 3D file whose third axis is time, not for a folder of frames")
        series = _read_frame_folder(path)
    else:
        series = _read_series_file(path, third_axis_time)
    if len(series) < 2:
        raise InputError(f"{path} holds {len(series)} frame; a series needs at least two")
    return series


def cine_optimise_settings(geometry: Geometry) -> dict:
    """``optimise`` settings for the 2D frames of one cine series on ``geometry``'s grid
    (benchmarks/README.md, "Cine"): no affine stage and no centre-of-mass shift (the frames share
    one grid and one breath-hold; what moves between them is the heart, not the patient), MIND
    (a local structure descriptor) as the similarity, the finest level at the frames' own pixel
    spacing instead of 1 mm (no upsampled level), fewer steps, diffusion weight 0.75 and 10 mm
    control points (the brain defaults, 2 and 12 mm, were not measured on cine)."""
    finest = round(max(float(max(geometry.spacing)), 1.0), 4)
    levels = tuple(sorted({*(level for level in CINE_COARSE_LEVELS_MM if level > finest), finest}, reverse=True))
    return {"similarity": "mind", "initial_affine": np.eye(geometry.dim + 1), "affine_levels_mm": (8.0,),
            "affine_iterations_before_deformable": (0,), "deformable_levels_mm": levels,
            "deformable_iterations": CINE_ITERATIONS[-len(levels):], "regularisation": CINE_REGULARISATION,
            "control_spacing_mm": CINE_CONTROL_SPACING_MM}


#: The cine preset's coarse deformable levels (mm; the finest is the pixel spacing), iterations
#: per level, diffusion weight and control point spacing: the default pyramid's 4 and 2 mm, fewer
#: steps, a stiffer field than the 2D default had then (chosen by benchmarks/benchmark_cine.py; the
#: measured variants: benchmarks/README.md, "Cine").
CINE_COARSE_LEVELS_MM = (4.0, 2.0)
CINE_ITERATIONS = (20, 15, 15)
CINE_REGULARISATION = 0.75
CINE_CONTROL_SPACING_MM = 10.0


def cine_settings(series: Series, method: str, given: dict, transform: str = "deformable",
                  quality: str = "balanced") -> dict:
    """The settings a series is registered with: for ``optimise`` on a 2D series
    :func:`cine_optimise_settings` under ``given`` (the caller's settings win; a rigid or affine
    transform keeps the method's affine stage; the "fast" and "accurate" qualities keep their
    own iterations); otherwise ``given`` alone."""
    if method != "optimise" or series.dim != 2:
        return dict(given)
    from .methods.optimise import QUALITY_PRESETS

    cine = cine_optimise_settings(series.frames[0].geometry)
    if transform != "deformable":
        cine = {"similarity": cine["similarity"]}
    preset = QUALITY_PRESETS.get(quality, {})
    return {**{k: v for k, v in cine.items() if k not in preset}, **given}


def reference_of(series: Series, reference: int | None, reference_image: Image | None) -> tuple[Image, str]:
    """The fixed image (frame ``reference`` or ``reference_image``) and its name."""
    if reference_image is not None:
        if reference is not None:
            raise InputError("give either a reference frame or a reference image, not both")
        if reference_image.dim != series.dim:
            raise InputError(f"the reference image is {reference_image.dim}D but the frames are {series.dim}D")
        return reference_image, "reference image"
    index = 0 if reference is None else reference
    if not -len(series) <= index < len(series):
        raise InputError(f"reference frame {index} is outside the series (0..{len(series) - 1}, in frame order)")
    index %= len(series)
    return series.frames[index], series.names[index]


def register_series(series: Series, fixed: Image, method: str = "optimise", device: str = "auto",
                    quality: str = "balanced", transform: str = "deformable", progress=None, on_frame=None,
                    **settings) -> list:
    """Register every frame of ``series`` (moving) to ``fixed``; returns the results (fixed
    point -> frame point), or, with ``on_frame(index, result)``, hands each result over as it
    is made and keeps none (a long series in little memory).  ``progress(stage, fraction,
    message)`` covers the whole series."""
    from .methods import LEARNED_METHODS, check_transform
    from .registration import check_pair, register_pair, select_device

    check_transform(transform)
    report = progress or (lambda *_: None)
    count = len(series)
    register = _model_once(method, fixed.dim, device, dict(settings)) if method in LEARNED_METHODS else None
    results = []
    for index, frame in enumerate(series.frames):
        label = f"frame {index + 1} of {count} ({series.names[index]})"

        def frame_progress(stage, fraction, message, index=index, label=label):
            if stage != "done":
                report(stage, (index + min(max(fraction, 0.0), 1.0)) / count, f"{label}: {message}")

        if register is None:
            result = register_pair(fixed, frame, method=method, device=device, quality=quality, transform=transform,
                                   progress=frame_progress, **settings)
        else:
            check_pair(fixed, frame)
            result = register(fixed, frame, select_device(device), transform, frame_progress)
        report("frame", (index + 1) / count, f"{label}: registered in {result.seconds:.1f} s")
        if on_frame is None:
            results.append(result)
        else:
            on_frame(index, result)
    return results


def _model_once(method: str, dim: int, device: str, settings: dict):
    """``register(fixed, moving, device, transform, progress)`` with the learned method's network
    loaded once for the whole series."""
    from .methods import DEFAULT_REFINE_ITERATIONS, check_model_options
    from .methods.learned import register_with_model
    from .model_io import find_model, load_model
    from .registration import select_device

    model, refine = settings.pop("model", None), settings.pop("refine", None)
    initial_affine = settings.pop("initial_affine", None)
    if settings:
        raise InputError(f"method {method!r} does not take {', '.join(sorted(settings))} (these are settings of the "
                         "optimise method)")
    path = find_model(method, dim, model)
    network, card = load_model(path, method=method, device=select_device(device))

    def register(fixed, moving, torch_device, transform, progress):
        check_model_options(method, model, refine, transform)
        steps = (DEFAULT_REFINE_ITERATIONS if transform == "deformable" else 0) if refine is None else refine
        return register_with_model(network, fixed, moving, device=torch_device, initial_affine=initial_affine,
                                   refine=steps, progress=progress,
                                   model_name=card.get("name", str(path)), transform=transform)

    return register


def propagate_mask(result, mask: Image) -> Image:
    """A label map on the fixed (reference) grid carried onto the moving frame's grid through the
    inverse transform: linear interpolation of each label's indicator, the label with the
    largest weight above 0.5 kept (smoother than nearest neighbour on coarse cine pixels)."""
    if result.displacement is not None and result.inverse_displacement is None:
        raise InputError("this result has no inverse field, so the mask cannot be carried onto the frame")
    return _warp_labels(lambda image: result.warp(image, inverse=True), mask)


def warp_mask(result, mask: Image) -> Image:
    """A label map on the moving grid resampled onto the fixed grid (as :func:`propagate_mask`)."""
    return _warp_labels(lambda image: result.warp(image), mask)


def _warp_labels(warp, mask: Image) -> Image:
    labels = [v for v in np.unique(mask.array) if v != 0] or [None]
    best = out = geometry = None
    for label in labels:
        indicator = np.zeros(mask.array.shape, np.float32) if label is None else (mask.array == label).astype(np.float32)
        weight = warp(mask.with_array(indicator))
        if out is None:
            geometry = weight.geometry
            best = np.full(weight.array.shape, 0.5, dtype=np.float32)
            out = np.zeros(weight.array.shape, dtype=mask.array.dtype)
        if label is not None:
            above = weight.array > best
            out[above], best[above] = label, weight.array[above]
    return Image(out, geometry)
