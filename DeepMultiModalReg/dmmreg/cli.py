"""Command line: ``dmmreg register | register-sequence | known-warp | train | finetune | methods | models`` (also
``python -m dmmreg``).

Exit codes: 0 success, 2 bad input (the message names the problem and the fix), 1 any other
failure, 130 cancelled (Ctrl-C, SIGTERM); each failure prints one ``error:`` line (the traceback
only with ``--debug``).  Inputs are checked before any work (complete files, writable outputs
that name no input); outputs are written as one transaction (:class:`dmmreg.files.OutputTransaction`)
after the work succeeded, so a failed or cancelled run leaves every earlier file as it was.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import threading
import time

from . import __version__
from .errors import Cancelled, InputError
from .methods import TRANSFORMS
from .threads import use_threads


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
    p.add_argument("--output-synthesised", metavar="PREFIX",
                   help="methods that synthesise images (fire, disentangled, hierarchical): write each one, on the "
                   "fixed grid, as PREFIX_<key>.nii.gz (keys: moving_in_fixed_contrast, fixed_in_moving_contrast)")
    p.add_argument("--method", default="optimise", help="registration method (see `dmmreg methods`)")
    p.add_argument("--model", help="learned methods: a trained model (.safetensors with its .json card, or the name "
                   "of a bundled model; default: the method's bundled model, see `dmmreg models`)")
    p.add_argument("--refine", type=int, metavar="N",
                   help="learned methods: N iterations of the optimise method started from the network's answer "
                   "(default: as many as the optimise method does at its finest level; 0: the network alone)")
    p.add_argument("--quality", default="balanced", choices=["fast", "balanced", "accurate"], help="speed/accuracy")
    p.add_argument("--transform", default="deformable", choices=TRANSFORMS,
                   help="transform model: rigid (rotation and translation), affine, or deformable (affine then a "
                   "displacement field). Learned methods stop at their rigid or affine pre-alignment (FIRE: its "
                   "network's affine part for affine; the rigid pre-alignment for rigid)")
    p.add_argument("--similarity", choices=["nmi", "lncc", "mind"], help="similarity measure (optimise method)")
    p.add_argument("--fixed-mask", help="label map: register only where > 0 in the fixed image")
    p.add_argument("--moving-mask", help="label map: use only moving-image points where > 0")
    p.add_argument("--initial-transform", help="affine ITK transform file (fixed to moving) to start from")
    _add_runtime_options(p, "cuda: the GPU", "stage, fraction 0..1, message")


def _add_runtime_options(p, cuda: str, json_fields: str) -> None:
    """``--device``, ``--threads`` and ``--progress``, shared by every command that computes."""
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help=f"auto: CUDA when available; {cuda}")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads (default: the cores other processes leave idle, at least one)")
    p.add_argument("--progress", choices=["text", "json", "none"], default="text",
                   help=f"json: one JSON object per line on stdout ({json_fields})")


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


def _add_training_data(p) -> None:
    """Options shared by ``train`` and ``finetune``: data, pairs, schedule, output, device."""
    p.add_argument("--cohort", action="append", metavar="C", help="cohort: a folder SUBJECT/CONTRAST.nii.gz (with optional "
                   "labels.* and mask.*) or a CSV with a subject column and one column per contrast (plus labels, mask); "
                   "repeat for several cohorts")
    p.add_argument("--name", help="name of the new model (its files NAME.safetensors and NAME.json)")
    p.add_argument("--output", help="write the model here instead of the user models folder")
    p.add_argument("--contrasts", help="comma-separated contrasts to use (default: all of the cohort's)")
    p.add_argument("--pair", action="append", metavar="FIXED:MOVING",
                   help="allowed (fixed, moving) contrast pair, e.g. t2:t1; repeat; 'synthetic' = drawn from labels")
    p.add_argument("--synthetic", type=float, default=0.0, metavar="P",
                   help="probability of replacing a contrast by a synthetic one drawn from the label map")
    p.add_argument("--across-subjects", action="store_true", help="pair different subjects (validated by Dice of labels)")
    p.add_argument("--validation-subjects", help="comma-separated subjects held out for validation "
                   "(default: the last subject; with one subject, held-out random warps of it)")
    p.add_argument("--validation-pairs", type=int, default=6, help="known-warp pairs validated on after every epoch")
    p.add_argument("--align-contrasts", action="store_true", help="register each training subject's contrasts to its "
                   "first one (affine) before drawing pairs, for cohorts whose contrasts are only roughly aligned")
    p.add_argument("--registration-cases", type=int, default=0, metavar="N",
                   help="also validate by the whole registration (pre-alignment, network, full resolution) of N "
                   "known-warp cases of the held-out subjects (axial slices of them for 2D models), and keep the "
                   "weights best at that")
    p.add_argument("--steps", default=None, help="updates per stage: N, or STAGE=N,STAGE=N")
    p.add_argument("--epoch-steps", type=int, default=100, help="updates between validations and checkpoints")
    p.add_argument("--augmentation", choices=["residual", "prealigned", "strong"], help="spatial augmentation: residual "
                   "(small affine, for networks run after affine pre-alignment), prealigned (about what the pre-alignment "
                   "leaves: 1 degree, 1%%, 1 mm) or strong (20-50%% affine, FIRE); default: by method")
    p.add_argument("--no-intensity-augmentation", action="store_true")
    p.add_argument("--learning-rate", type=float, help="largest learning rate (the method's ratios between its "
                   "optimisers are kept); default: the method's")
    p.add_argument("--learning-rate-decay-steps", type=int, metavar="N",
                   help="drop the learning rates to a tenth every N updates of a stage (default: constant)")
    p.add_argument("--max-gradient-norm", type=float, metavar="X",
                   help="clip the gradients to this norm before every update (default: no clipping)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-folder", help="checkpoints and job.json (default: the user models folder's runs/NAME)")
    p.add_argument("--resume", metavar="RUN_FOLDER", help="continue the run saved in RUN_FOLDER (after Ctrl-C, a "
                   "crash or a kill); every other setting comes from its job.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing user model of this name")
    _add_runtime_options(p, "cuda: the GPU, in mixed precision (bfloat16)",
                         "stage, fraction, message and a record: the loss terms or the validation numbers")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a new model of a learned method on cohorts",
                       description="Train a learned method on known-warp pairs drawn from cohorts, validate on "
                       "held-out subjects after every epoch, keep the best weights and write NAME.safetensors with "
                       "its model card into the user models folder. Ctrl-C (or SIGTERM) stops after the current "
                       "update with a checkpoint; --resume RUN_FOLDER continues.")
    p.add_argument("--method", help="learned method (see `dmmreg methods`)")
    p.add_argument("--dim", type=int, choices=[2, 3], default=3, help="3: volumes; 2: axial slices")
    p.add_argument("--spacing", type=float, help="model grid spacing (mm); default: the method's")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="method setting (see the method's config), e.g. encoder_channels=8,16,16,16,16")
    _add_training_data(p)


def _add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a trained model on your cohort",
                       description="Continue training MODEL (bundled or user) on the cohort's pairs and write a new "
                       "model; the base model is never changed. Its card records the validation before and after.")
    p.add_argument("--model", help="base model: a name from `dmmreg models` or a .safetensors file")
    _add_training_data(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmmreg", description="DeepMultiModalReg: multi-modal MRI registration")
    parser.add_argument("--version", action="version", version=f"dmmreg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_register(sub)
    _add_known_warp(sub)
    _add_train(sub)
    _add_finetune(sub)
    from .sequence_cli import add_parser as add_sequence_parser

    add_sequence_parser(sub, _add_runtime_options)
    sub.add_parser("methods", help="list the registration methods")
    models = sub.add_parser("models", help="list the bundled and user models with their cards")
    models.add_argument("--json", action="store_true", help="print the cards as JSON")
    debug = "show the traceback of an internal error (exit code 1)"
    parser.add_argument("--debug", action="store_true", help=debug)
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug)
    return parser


def _check_same_dimension(fixed, moving, args) -> None:
    """``InputError`` when the images differ in dimension, saying when one was a 3D volume one
    slice thick (read as a 2D slice)."""
    from .image_io import file_size

    if fixed.dim == moving.dim:
        return

    def described(image, path: str) -> str:
        size = file_size(path)
        if image.dim == 2 and size is not None and len(size) == 3:
            return f"a 3D volume one slice thick ({' x '.join(map(str, size))} voxels, read as a 2D slice)"
        return f"{image.dim}D"

    raise InputError(f"the fixed image is {described(fixed, args.fixed)} and the moving image "
                     f"{described(moving, args.moving)}; register images of the same dimension (a slice to a "
                     "slice of the other image, or a volume to a volume)")


def run_register(args, progress: _Progress) -> dict:
    from .files import OutputTransaction, check_output_paths
    from .image import label_count
    from .image_io import read_image, write_image
    from .registration import register_pair
    from .transform_io import check_transform_path, read_result, write_transform

    outputs = {"output transform": args.output_transform, "output volume": args.output_volume,
               "output inverse transform": args.output_inverse_transform, "output picture": args.output_picture}
    if args.output_synthesised:
        from .synthesis import SYNTHESISING_METHODS, check_synthesising, on_fixed_grid, synthesised_path

        check_synthesising(args.method)
        outputs.update({f"synthesised image {key}": synthesised_path(args.output_synthesised, key)
                        for key in SYNTHESISING_METHODS[args.method]})
    check_output_paths(outputs, {"fixed image": args.fixed, "moving image": args.moving, "fixed mask": args.fixed_mask,
                                 "moving mask": args.moving_mask, "initial transform": args.initial_transform,
                                 "model": args.model if args.model and os.path.exists(args.model) else None})
    check_transform_path(args.output_transform)
    if args.output_inverse_transform:
        check_transform_path(args.output_inverse_transform)
    use_threads(args.threads)
    progress("load", 0.0, "reading images")
    fixed = read_image(args.fixed, "fixed image")
    moving = read_image(args.moving, "moving image")
    fixed_mask = read_image(args.fixed_mask, "fixed mask") if args.fixed_mask else None
    moving_mask = read_image(args.moving_mask, "moving mask") if args.moving_mask else None
    _check_same_dimension(fixed, moving, args)
    labels = label_count(moving)
    if labels:
        progress("load", 0.01, f"the moving image looks like a label map ({labels} values): its warped volume is "
                 "resampled by nearest neighbour")
    initial = None
    if args.initial_transform:
        start = read_result(args.initial_transform, fixed.geometry, moving.geometry)
        if start.displacement is not None:
            raise InputError(f"{args.initial_transform} holds a displacement field; --initial-transform takes an affine")
        initial = start.affine
    settings = {"similarity": args.similarity} if args.similarity else {}
    if args.model or args.refine is not None:
        from .methods import check_model_options

        check_model_options(args.method, args.model, args.refine, args.transform)
        settings.update({"model": args.model, "refine": args.refine})
    result = register_pair(
        fixed, moving, method=args.method, fixed_mask=fixed_mask, moving_mask=moving_mask, device=args.device,
        quality=args.quality, initial_affine=initial, transform=args.transform,
        progress=lambda stage, fraction, message: progress(stage, 0.02 + 0.9 * fraction, message) if stage != "done" else None,
        **settings,
    )
    if args.output_synthesised and not result.synthesised:
        raise InputError(f"the {args.method} model synthesised no images; choose a model that does, or leave out "
                         "--output-synthesised")
    progress("write", 0.93, "writing outputs")
    with OutputTransaction() as transaction:
        transaction.stage("transform", args.output_transform, lambda tmp: write_transform(result, tmp))
        if args.output_inverse_transform:
            transaction.stage("inverse_transform", args.output_inverse_transform,
                              lambda tmp: write_transform(result, tmp, inverse=True))
        if args.output_volume:
            mode = "nearest" if labels else "linear"
            transaction.stage("volume", args.output_volume, lambda tmp: write_image(result.warp(moving, mode=mode), tmp))
        if args.output_picture:
            from .picture import save_registration_picture

            title = f"{args.method} ({args.transform}): {os.path.basename(args.moving)} to {os.path.basename(args.fixed)}"
            transaction.stage("picture", args.output_picture,
                              lambda tmp: save_registration_picture(fixed, moving, result, tmp, title=title))
        for key, image in sorted(result.synthesised.items()) if args.output_synthesised else []:
            transaction.stage(f"synthesised_{key}", synthesised_path(args.output_synthesised, key),
                              lambda tmp, image=image: write_image(on_fixed_grid(image, fixed.geometry), tmp))
        written = transaction.commit()
    return {"outputs": written, "seconds": round(result.seconds, 2)}


def run_known_warp(args, progress: _Progress) -> dict:
    import numpy as np

    from .files import OutputTransaction, check_output_paths
    from .image_io import read_image, write_image
    from .known_warp import KnownWarpSettings, deform, random_known_warp
    from .transform_io import check_transform_path, write_transform

    check_output_paths({"output": args.output, "output transform": args.output_transform}, {"input image": args.input})
    check_transform_path(args.output_transform)
    image = read_image(args.input, "input image")
    settings = KnownWarpSettings(args.max_rotation_deg, args.max_scaling, args.max_shift_mm,
                                 args.mean_nonrigid_mm, args.max_nonrigid_mm)
    progress("warp", 0.1, f"drawing a random known warp (seed {args.seed})")
    warp = random_known_warp(image.geometry, args.seed, settings, mask=image.array > np.min(image.array))
    with OutputTransaction() as transaction:
        transaction.stage("volume", args.output, lambda tmp: write_image(deform(image, warp), tmp))
        transaction.stage("transform", args.output_transform, lambda tmp: write_transform(warp, tmp))
        return {"outputs": transaction.commit()}


def _config_value(text: str):
    """``KEY=VALUE`` values: numbers, booleans, comma-separated tuples, else strings."""
    def one(item: str):
        for convert in (int, float):
            try:
                return convert(item)
            except ValueError:
                pass
        return {"true": True, "false": False}.get(item.lower(), item)

    return [one(v) for v in text.split(",")] if "," in text else one(text)


def training_job(args):
    """The :class:`~dmmreg.training.jobs.TrainingJob` of ``train`` / ``finetune`` arguments."""
    from .model_io import find_model, read_card
    from .training.jobs import TrainingJob

    if not args.cohort:
        raise InputError("give the training data with --cohort (a folder or a CSV file)")
    if not args.name:
        raise InputError("give the new model a name with --name")
    config, base = {}, None
    if args.command == "finetune":
        if not args.model:
            raise InputError("choose the model to fine-tune with --model (see `dmmreg models`)")
        base = args.model
        method = read_card(find_model("", 0, args.model))["method"]
    else:
        if not args.method:
            raise InputError("choose the method to train with --method (see `dmmreg methods`)")
        method = args.method
        config = {"dim": args.dim}
        if args.spacing:
            config["spacing_mm"] = args.spacing
        for item in args.config:
            key, sep, value = item.partition("=")
            if not sep:
                raise InputError(f"--config {item!r}: write KEY=VALUE")
            config[key.strip()] = _config_value(value.strip())
    steps = 500
    if args.steps:
        if "=" in args.steps:
            steps = {k.strip(): int(v) for k, v in (part.split("=") for part in args.steps.split(","))}
        else:
            steps = int(args.steps)
    pairs = None
    if args.pair:
        pairs = [p.split(":") for p in args.pair]
        if any(len(p) != 2 for p in pairs):
            raise InputError(f"--pair takes FIXED:MOVING, e.g. t2:t1 (got {', '.join(args.pair)})")
    return TrainingJob(
        method=method, cohorts=[os.path.abspath(c) for c in args.cohort], name=args.name, config=config, base_model=base,
        contrasts=args.contrasts.split(",") if args.contrasts else None, contrast_pairs=pairs, synthetic=args.synthetic,
        across_subjects=args.across_subjects,
        validation_subjects=args.validation_subjects.split(",") if args.validation_subjects else None,
        validation_pairs=args.validation_pairs, registration_cases=args.registration_cases,
        align_contrasts=args.align_contrasts, steps=steps,
        epoch_steps=args.epoch_steps, spatial=args.augmentation,
        intensity=not args.no_intensity_augmentation, learning_rate=args.learning_rate,
        learning_rate_decay_steps=args.learning_rate_decay_steps, max_gradient_norm=args.max_gradient_norm,
        seed=args.seed, device=args.device, output=args.output,
    )


def run_training(args, progress: _Progress) -> dict:
    """``train`` / ``finetune``: run (or resume) the job; SIGINT/SIGTERM cancel after the current
    update, leaving the run folder's checkpoint and no model file."""
    from .model_io import user_models_folder
    from .training.jobs import cancel_on_signals, resume_job, run_job

    use_threads(args.threads)
    cancel = cancel_on_signals()
    if getattr(args, "resume", None):
        card = resume_job(args.resume, progress, cancel)
    else:
        job = training_job(args)
        run_folder = args.run_folder or user_models_folder() / "runs" / job.name
        card = run_job(job, run_folder, progress, cancel, overwrite=args.overwrite)
    from .model_io import read_card

    contents = read_card(card)
    return {"outputs": {"model": str(card.with_suffix(".safetensors")), "card": str(card)},
            "validation": contents.get("validation", {})}


def model_line(card: dict) -> str:
    """One line describing a model card: name, method, dimension, where it is, validation numbers."""
    validation = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in card.get("validation", {}).items())
    return f"{card['name']}: {card['method']} {card['dimension']}D ({card.get('origin', 'file')}: {card['path']}){'; validation: ' + validation if validation else ''}"


#: What a failed or cancelled command leaves behind, for its error line.
_LEFT = {"register": "no output was written (existing files are unchanged)",
         "known-warp": "no output was written (existing files are unchanged)",
         "register-sequence": "no output was written (existing files are unchanged)",
         "train": "no model was written", "finetune": "no model was written"}


def _fail(progress: _Progress, stage: str, message: str, code: int) -> int:
    """Print the one ``error:`` line (and the JSON event); returns the exit code."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    if progress.mode == "json":
        progress(stage, 1.0, message)
    return code


def _interrupt(number, frame) -> None:
    """SIGTERM handler: stop like Ctrl-C, so the outputs' transaction cleans up."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: the process's arguments); returns the exit code.

    Without ``argv`` (the process's own command line: it exits next) the objects made so far are
    kept out of the garbage collector's last pass at exit (``gc.freeze``), which with torch
    loaded took about 0.4 s (benchmarks/README.md, "Profile")."""
    arguments = sys.argv[1:] if argv is None else [str(a) for a in argv]
    debug = "--debug" in arguments
    try:
        return _run(build_parser().parse_args(arguments), debug)
    except KeyboardInterrupt:
        print("error: cancelled; no output was written (existing files are unchanged)", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:
        if debug:
            raise
        print(f"error: internal error ({type(exc).__name__}: {exc}); run again with --debug for the traceback, "
              "and report it", file=sys.stderr, flush=True)
        return 1
    finally:
        if argv is None:
            gc.freeze()


def _run(args, debug: bool) -> int:
    if args.command == "methods":
        from .methods import available_methods

        for name, summary in available_methods():
            print(f"{name}: {summary}")
        return 0
    if args.command == "models":
        from .model_io import list_models

        cards = list_models()
        if args.json:
            print(json.dumps(cards, indent=2))
        for card in [] if args.json else cards:
            print(model_line(card))
        if not cards and not args.json:
            from .model_io import BUNDLED_MODELS, user_models_folder

            print(f"no models in {BUNDLED_MODELS} or {user_models_folder()}", file=sys.stderr)
        return 0
    from .files import interrupts_held

    progress = _Progress(getattr(args, "progress", "text"))
    start = time.perf_counter()
    from .sequence_cli import run as run_register_sequence

    commands = {"register": run_register, "known-warp": run_known_warp, "train": run_training, "finetune": run_training,
                "register-sequence": run_register_sequence}
    left = _LEFT[args.command]
    # training stops on signals by itself, after the current update; the other commands stop at once
    stop_on_sigterm = (args.command in ("register", "known-warp", "register-sequence") and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
                       and threading.current_thread() is threading.main_thread())
    if stop_on_sigterm:
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        summary = commands[args.command](args, progress)
    except InputError as exc:
        return _fail(progress, "error", str(exc), 2)
    except Cancelled as exc:
        return _fail(progress, "cancelled", f"{exc}; {left}", 130)
    except KeyboardInterrupt:
        return _fail(progress, "cancelled", f"cancelled; {left}", 130)
    except OSError as exc:
        if debug:
            raise
        return _fail(progress, "error", f"{exc}; {left}", 1)
    except Exception as exc:
        if debug:
            raise
        return _fail(progress, "error", f"internal error ({type(exc).__name__}: {exc}); {left}; run again with --debug "
                     "for the traceback, and report it", 1)
    finally:
        if stop_on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with interrupts_held():  # the outputs are written: finish the report
        progress("done", 1.0, f"finished in {time.perf_counter() - start:.1f} s", **summary)
    return 0
