"""``dmmreg register-sequence``: every frame of a series (a folder of frames or one 2D+t file,
:mod:`dmmreg.sequence`) registered to a reference frame in one process.

Writes into ``--output-folder``, as one transaction (all files or none, as ``dmmreg register``):
``NAME_transform.h5`` per frame (the resampling transform, reference point -> frame point;
``NAME`` the frame file's stem, or ``frame_NNN`` for the frames of one file), optionally
``NAME_warped.nii.gz`` (the frame on the reference grid), ``NAME_inverse.h5`` and
``NAME_mask.nii.gz`` (``--reference-mask`` carried onto the frame), and ``series.json``: the
frames in order with their files, times and seconds.
"""

from __future__ import annotations

import json
import os
import time

from .errors import InputError


def add_parser(sub, runtime_options) -> None:
    """The command's parser; ``runtime_options(parser, cuda_help, json_fields)`` adds
    ``--device``, ``--threads`` and ``--progress`` as for every other command."""
    from .methods import TRANSFORMS

    p = sub.add_parser("register-sequence", help="register every frame of a series (cine) to a reference frame",
                       description="Register every frame of FRAMES (a folder with one image per frame, in frame-number "
                       "order, or one 2D+t file: NIfTI (x, y, 1, t), or (x, y, t) with --third-axis-time) to a "
                       "reference frame, in one process. Each transform maps a reference point to the frame (LPS).")
    p.add_argument("--frames", required=True, help="folder of frames, or one 2D+t (or 3D+t) file")
    p.add_argument("--third-axis-time", action="store_true",
                   help="FRAMES is a 3D file whose third axis is time (a 2D+t cine stored as 3D); without it a 3D file "
                   "is refused, as it may be a volume")
    p.add_argument("--reference", type=int, help="reference frame: its position in frame order, from 0 (default 0)")
    p.add_argument("--reference-image", help="register the frames to this image instead of one of them")
    p.add_argument("--output-folder", required=True, help="folder for the per-frame files and series.json")
    p.add_argument("--transform-format", choices=["h5", "nii.gz"], default="h5",
                   help="h5: affine + displacement field (ITK composite); nii.gz: one displacement field")
    p.add_argument("--output-warped", action="store_true", help="also write each frame resampled onto the reference grid")
    p.add_argument("--output-inverse", action="store_true", help="also write each inverse transform (frame to reference)")
    p.add_argument("--reference-mask", help="label map on the reference (e.g. the end-diastolic myocardium): carried "
                   "onto every frame through the inverse transform, NAME_mask.nii.gz")
    p.add_argument("--initial-transform", help="affine ITK transform file (reference to frame) every frame starts from")
    p.add_argument("--method", default="optimise", help="registration method (see `dmmreg methods`)")
    p.add_argument("--model", help="learned methods: a trained model (file or bundled name), loaded once")
    p.add_argument("--refine", type=int, metavar="N", help="learned methods: optimise iterations after the network")
    p.add_argument("--quality", default="balanced", choices=["fast", "balanced", "accurate"], help="speed/accuracy")
    p.add_argument("--transform", default="deformable", choices=TRANSFORMS, help="transform model")
    p.add_argument("--similarity", choices=["nmi", "lncc", "mind"],
                   help="similarity measure (optimise; 2D series default: the cine settings, see benchmarks/README.md)")
    runtime_options(p, "cuda: the GPU", "stage, fraction 0..1, message")


def output_paths(args, names: list[str]) -> list[dict[str, str]]:
    """Per frame, ``{output kind: path}`` of what the arguments ask for."""
    folder = args.output_folder
    paths = []
    for name in names:
        frame = {"transform": os.path.join(folder, f"{name}_transform.{args.transform_format}")}
        if args.output_inverse:
            frame["inverse_transform"] = os.path.join(folder, f"{name}_inverse.{args.transform_format}")
        if args.output_warped:
            frame["warped"] = os.path.join(folder, f"{name}_warped.nii.gz")
        if args.reference_mask:
            frame["mask"] = os.path.join(folder, f"{name}_mask.nii.gz")
        paths.append(frame)
    return paths


def run(args, progress) -> dict:
    """The command (``progress(stage, fraction, message, **extra)``); returns the summary."""
    import numpy as np

    from .files import OutputTransaction, check_output_paths
    from .image import label_count
    from .image_io import read_image, write_image
    from .result import RegistrationResult
    from .sequence import cine_settings, propagate_mask, read_series, reference_of, register_series
    from .threads import use_threads
    from .transform_io import check_transform_path, write_transform

    if os.path.isfile(args.output_folder):
        raise InputError(f"the output folder {args.output_folder} is a file; give a folder")
    if args.reference is not None and args.reference_image:
        raise InputError("give either --reference (a frame) or --reference-image, not both")
    inputs = {"frames": args.frames, "reference image": args.reference_image, "reference mask": args.reference_mask,
              "initial transform": args.initial_transform,
              "model": args.model if args.model and os.path.exists(args.model) else None}
    progress("load", 0.0, f"reading the frames of {args.frames}")
    series = read_series(args.frames, args.third_axis_time)
    paths = output_paths(args, series.names)
    summary_path = os.path.join(args.output_folder, "series.json")
    outputs = {"series summary": summary_path}
    for name, frame in zip(series.names, paths):
        outputs.update({f"{kind} of {name}": path for kind, path in frame.items()})
    check_output_paths(outputs, inputs)
    for frame in paths:
        check_transform_path(frame["transform"])
    use_threads(args.threads)
    reference_image = read_image(args.reference_image, "reference image") if args.reference_image else None
    fixed, reference_name = reference_of(series, args.reference, reference_image)
    mask = None
    if args.reference_mask:
        mask = read_image(args.reference_mask, "reference mask")
        if mask.dim != fixed.dim:
            raise InputError(f"the reference mask is {mask.dim}D but the reference is {fixed.dim}D")
        if mask.geometry != fixed.geometry:  # onto the reference grid, nearest neighbour
            mask = RegistrationResult(fixed.geometry, mask.geometry, np.eye(fixed.dim + 1)).warp(mask, mode="nearest")
        if not np.any(mask.array > 0):
            raise InputError(f"the reference mask {args.reference_mask} is empty (no voxel > 0)")
    given = {"similarity": args.similarity} if args.similarity else {}
    if args.initial_transform:
        from .transform_io import read_result

        start = read_result(args.initial_transform, fixed.geometry, series.frames[0].geometry)
        if start.displacement is not None:
            raise InputError(f"{args.initial_transform} holds a displacement field; --initial-transform takes an affine")
        given["initial_affine"] = start.affine
    if args.model or args.refine is not None:
        from .methods import check_model_options

        check_model_options(args.method, args.model, args.refine, args.transform)
        given.update({k: v for k, v in (("model", args.model), ("refine", args.refine)) if v is not None})
    settings = cine_settings(series, args.method, given, args.transform, args.quality)
    progress("load", 0.02, f"{len(series)} {series.dim}D frames; reference: {reference_name}")
    records = []
    start = time.perf_counter()
    with OutputTransaction() as transaction:
        def on_frame(index, result):
            frame, name, files = series.frames[index], series.names[index], paths[index]
            transaction.stage(f"transform of {name}", files["transform"], lambda tmp: write_transform(result, tmp))
            if "inverse_transform" in files:
                transaction.stage(f"inverse transform of {name}", files["inverse_transform"],
                                  lambda tmp: write_transform(result, tmp, inverse=True))
            if "warped" in files:
                mode = "nearest" if label_count(frame) else "linear"
                transaction.stage(f"warped {name}", files["warped"], lambda tmp: write_image(result.warp(frame, mode=mode), tmp))
            if "mask" in files:
                transaction.stage(f"mask of {name}", files["mask"], lambda tmp: write_image(propagate_mask(result, mask), tmp))
            records.append({"name": name, "file": series.files[index] if series.files else None,
                            "time": None if series.times is None else series.times[index],
                            "seconds": round(result.seconds, 3),
                            "outputs": {kind: os.path.abspath(path) for kind, path in files.items()}})

        register_series(series, fixed, method=args.method, device=args.device, quality=args.quality,
                        transform=args.transform, on_frame=on_frame,
                        progress=lambda stage, fraction, message: progress(stage, 0.03 + 0.95 * fraction, message),
                        **settings)
        seconds = time.perf_counter() - start
        summary = {"source": os.path.abspath(args.frames), "reference": reference_name, "method": args.method,
                   "transform": args.transform, "quality": args.quality,
                   "settings": {k: v.tolist() if hasattr(v, "tolist") else v for k, v in settings.items()},
                   "seconds": round(seconds, 2), "frames": records}
        transaction.stage("series summary", summary_path, lambda tmp: _write_json(summary, tmp))
        progress("write", 0.99, "moving the outputs into place")
        transaction.commit()
    return {"outputs": {"folder": os.path.abspath(args.output_folder), "summary": os.path.abspath(summary_path)},
            "frames": len(series), "seconds": round(seconds, 2), "seconds_per_frame": round(seconds / len(series), 3)}


def _write_json(record: dict, path: str) -> None:
    with open(path, "w", encoding="utf-8") as stream:
        json.dump(record, stream, indent=1)
