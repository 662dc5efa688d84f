"""Command line: ``dmmreg register | known-warp | methods`` (also ``python -m dmmreg``).

Exit codes: 0 success, 2 bad input (the message names the problem and the fix), 1 any other
failure.  Outputs are written only after the registration succeeded, each atomically, so a
failed or cancelled run never leaves a half-written file or replaces an earlier result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import __version__
from .errors import InputError


class _Progress:
    """Reports ``(stage, fraction, message)``: JSON lines on stdout, or plain lines on stderr."""

    def __init__(self, mode: str | None):
        self.mode = mode

    def __call__(self, stage: str, fraction: float, message: str, **extra) -> None:
        if self.mode == "json":
            print(json.dumps({"stage": stage, "fraction": round(float(fraction), 4), "message": message, **extra}), flush=True)
        elif self.mode != "none":
            print(f"[{100 * fraction:5.1f}%] {stage}: {message}", file=sys.stderr, flush=True)


def _add_register(sub) -> None:
    p = sub.add_parser("register", help="register a moving image to a fixed image",
                       description="Register MOVING to FIXED. The transform written is ITK's resampling "
                       "transform: it maps a fixed-space point to the moving space (LPS).")
    p.add_argument("--fixed", required=True, help="fixed image (NIfTI, NRRD, MHA, or a DICOM series folder)")
    p.add_argument("--moving", required=True, help="moving image")
    p.add_argument("--output-transform", required=True,
                   help=".h5 (affine + displacement field, ITK composite) or .nii.gz (one displacement field)")
    p.add_argument("--output-volume", help="the moving image resampled onto the fixed grid")
    p.add_argument("--output-inverse-transform", help="the inverse transform (moving space to fixed space)")
    p.add_argument("--output-picture", help="PNG showing the result (slices, edges, deformation grid)")
    p.add_argument("--method", default="optimise", help="registration method (see `dmmreg methods`)")
    p.add_argument("--model", help="learned methods: a trained model (.safetensors with its .json card, or the name "
                   "of a bundled model; default: the method's bundled model, see `dmmreg models`)")
    p.add_argument("--refine", type=int, default=0, metavar="N",
                   help="learned methods: N iterations of the optimise method started from the network's answer")
    p.add_argument("--quality", default="balanced", choices=["fast", "balanced", "accurate"], help="speed/accuracy")
    p.add_argument("--similarity", choices=["nmi", "lncc", "mind"], help="similarity measure (optimise method)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--fixed-mask", help="label map: register only where > 0 in the fixed image")
    p.add_argument("--moving-mask", help="label map: use only moving-image points where > 0")
    p.add_argument("--initial-transform", help="affine ITK transform file (fixed to moving) to start from")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    p.add_argument("--progress", choices=["text", "json", "none"], default="text",
                   help="json: one JSON object per line on stdout (stage, fraction 0..1, message)")


def _add_known_warp(sub) -> None:
    p = sub.add_parser("known-warp", help="deform an image by a random known warp (ground truth for testing)",
                       description="Writes OUTPUT(p) = INPUT(G(p)) and G, the resampling transform from "
                       "OUTPUT's space to INPUT's: registering any image aligned with INPUT to OUTPUT should "
                       "recover G (the FIRE evaluation protocol).")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--output-transform", required=True, help=".h5 or .nii.gz: the true resampling transform G")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-rotation-deg", type=float, default=10.0)
    p.add_argument("--max-scaling", type=float, default=0.10)
    p.add_argument("--max-shift-mm", type=float, default=10.0)
    p.add_argument("--mean-nonrigid-mm", type=float, default=3.0)
    p.add_argument("--max-nonrigid-mm", type=float, default=8.0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmmreg", description="DeepMultiModalReg: multi-modal MRI registration")
    parser.add_argument("--version", action="version", version=f"dmmreg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_register(sub)
    _add_known_warp(sub)
    sub.add_parser("methods", help="list the registration methods")
    sub.add_parser("models", help="list the bundled trained models with their cards")
    return parser


def _check_output_paths(paths: list[str | None]) -> None:
    for path in paths:
        if path is None:
            continue
        directory = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise InputError(f"output {path} is a folder; give a file name")
        if os.path.exists(directory) and not os.access(directory, os.W_OK):
            raise InputError(f"cannot write into {directory}; choose another output folder")


def run_register(args, progress: _Progress) -> dict:
    from .image import read_image
    from .registration import register_pair
    from .transform_io import check_transform_path, read_result, write_transform

    outputs = [args.output_transform, args.output_volume, args.output_inverse_transform, args.output_picture]
    _check_output_paths(outputs)
    check_transform_path(args.output_transform)
    if args.output_inverse_transform:
        check_transform_path(args.output_inverse_transform)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    progress("load", 0.0, "reading images")
    fixed = read_image(args.fixed, "fixed image")
    moving = read_image(args.moving, "moving image")
    fixed_mask = read_image(args.fixed_mask, "fixed mask") if args.fixed_mask else None
    moving_mask = read_image(args.moving_mask, "moving mask") if args.moving_mask else None
    initial = None
    if args.initial_transform:
        start = read_result(args.initial_transform, fixed.geometry, moving.geometry)
        if start.displacement is not None:
            raise InputError(f"{args.initial_transform} holds a displacement field; --initial-transform takes an affine")
        initial = start.affine
    settings = {"similarity": args.similarity} if args.similarity else {}
    if args.model or args.refine:
        from .methods import check_model_options

        check_model_options(args.method, args.model, args.refine)
        settings.update({"model": args.model, "refine": args.refine})
    result = register_pair(
        fixed, moving, method=args.method, fixed_mask=fixed_mask, moving_mask=moving_mask, device=args.device,
        quality=args.quality, initial_affine=initial,
        progress=lambda stage, fraction, message: progress(stage, 0.02 + 0.9 * fraction, message) if stage != "done" else None,
        **settings,
    )
    progress("write", 0.93, "writing outputs")
    write_transform(result, args.output_transform)
    written = {"transform": os.path.abspath(args.output_transform)}
    if args.output_inverse_transform:
        write_transform(result, args.output_inverse_transform, inverse=True)
        written["inverse_transform"] = os.path.abspath(args.output_inverse_transform)
    if args.output_volume:
        from .image import write_image

        write_image(result.warp(moving), args.output_volume)
        written["volume"] = os.path.abspath(args.output_volume)
    if args.output_picture:
        from .picture import save_registration_picture

        save_registration_picture(fixed, moving, result, args.output_picture,
                                  title=f"{args.method}: {os.path.basename(args.moving)} to {os.path.basename(args.fixed)}")
        written["picture"] = os.path.abspath(args.output_picture)
    return {"outputs": written, "seconds": round(result.seconds, 2)}


def run_known_warp(args, progress: _Progress) -> dict:
    import numpy as np

    from .image import read_image, write_image
    from .known_warp import KnownWarpSettings, deform, random_known_warp
    from .transform_io import check_transform_path, write_transform

    _check_output_paths([args.output, args.output_transform])
    check_transform_path(args.output_transform)
    image = read_image(args.input, "input image")
    settings = KnownWarpSettings(args.max_rotation_deg, args.max_scaling, args.max_shift_mm,
                                 args.mean_nonrigid_mm, args.max_nonrigid_mm)
    progress("warp", 0.1, f"drawing a random known warp (seed {args.seed})")
    warp = random_known_warp(image.geometry, args.seed, settings, mask=image.array > np.min(image.array))
    write_image(deform(image, warp), args.output)
    write_transform(warp, args.output_transform)
    return {"outputs": {"volume": os.path.abspath(args.output), "transform": os.path.abspath(args.output_transform)}}


def model_line(card: dict) -> str:
    """One line describing a model card: name, method, dimension, where it is, validation numbers."""
    validation = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in card.get("validation", {}).items())
    return f"{card['name']}: {card['method']} {card['dimension']}D ({card['path']}){'; validation: ' + validation if validation else ''}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "methods":
        from .methods import available_methods

        for name, summary in available_methods():
            print(f"{name}: {summary}")
        return 0
    if args.command == "models":
        from .model_io import list_models

        for card in list_models():
            print(model_line(card))
        return 0
    progress = _Progress(getattr(args, "progress", "text"))
    start = time.perf_counter()
    try:
        summary = (run_register if args.command == "register" else run_known_warp)(args, progress)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        if progress.mode == "json":
            progress("error", 1.0, str(exc))
        return 2
    except KeyboardInterrupt:
        print("error: cancelled; no output was written", file=sys.stderr, flush=True)
        return 130
    progress("done", 1.0, f"finished in {time.perf_counter() - start:.1f} s", **summary)
    return 0
