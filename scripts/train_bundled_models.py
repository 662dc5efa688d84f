"""Train the models bundled in ``models/`` from ``../shared/data`` (see models/README.md).

Every model is trained by the shared trainer (:func:`dmmreg.training_jobs.run_job`, the same
path as ``dmmreg train``) on one of two data sets (``data`` in :data:`MODELS`):

* ``multicontrast``: the real T1, T1c, T2 and FLAIR of aurora-met and tcga-du-7294 (2D models:
  their axial slices), pairs within a subject across contrasts, the fixed one deformed by a
  random known warp (the FIRE protocol); the stroke subject is held out for validation
  (best-weights selection, by the whole registration of its known-warp cases, axial slices of
  it for 2D models).  The registration benchmark's cases are stroke pairs too, under other
  warps (drawn at 1 mm).
* ``ixi``: the 185 labelled IXI T1s, a real T1 against a synthetic contrast drawn from its
  DLMUSE labels, or two synthetic contrasts; five IXI subjects held out.

    .venv/bin/python scripts/train_bundled_models.py [--only NAME ...] [--threads N] [--steps-scale F]
    .venv/bin/python scripts/train_bundled_models.py --report benchmarks/results/training-DATE.md

Steps and sizes fit two CPU cores (a few minutes to about twenty per model); each card records
data, steps, seconds and the validation numbers.  Run folders (resumable) go to ``--runs``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DeepMultiModalReg"))

DATA = ROOT.parent / "shared" / "data"
IXI = DATA / "brain-t1-labels" / "ixi"
MULTICONTRAST = DATA / "brain-multicontrast"
VALIDATION_SUBJECTS = 5
IXI_PAIRS = [["synthetic", "t1"], ["t1", "synthetic"], ["synthetic", "synthetic"]]
# real multi-contrast subjects: contrast -> file name in each subject's folder (names differ by source)
MULTICONTRAST_FILES = {
    "aurora-met": {"t1": "t1", "t1c": "t1c", "t2": "t2", "flair": "flair"},
    "tcga-du-7294": {"t1": "t1", "t1c": "t1c", "t2": "t2", "flair": "fla"},
    "stroke": {"t1": "T1", "t2": "T2", "flair": "FLAIR"},
}
MULTICONTRAST_VALIDATION = ["stroke"]
MULTICONTRAST_PAIRS = [["t2", "t1"], ["flair", "t1"], ["t1", "t2"], ["t1", "flair"], ["t2", "flair"], ["flair", "t2"]]

# name -> job settings; learning rates above the papers' (1e-4 and below) so that a few thousand
# CPU updates train; network sizes below the papers' defaults for the same reason (both recorded
# in each card's config)
FIRE_RATES = dict(learning_rate_affine=1e-3, learning_rate_nonrigid=5e-4, learning_rate_synthesis=3e-3)
SMALL_RDM = dict(residual_blocks=1, style_downsamplings=2, mlp_channels=16, discriminator_channels=8,
                 discriminator_layers=3, discriminator_scales=2, registration_learning_rate=1e-3)
MODELS = {
    "midir-brain-3d": dict(method="midir", data="multicontrast", config=dict(dim=3, spacing_mm=4.0, learning_rate=5e-4),
                           steps=2400, epoch_steps=200, decay=1800, clip=1.0, align=True, registration_cases=4),
    "hierarchical-brain-3d": dict(method="hierarchical", steps={"coarse": 600, "translation": 200, "fine": 600},
                                  config=dict(dim=3, spacing_mm=4.0, encoder=(8, 16, 16, 16), decoder=(16, 16, 16),
                                              learning_rate=1e-3)),
    "variational-brain-3d": dict(method="variational", steps=1200,
                                 config=dict(dim=3, spacing_mm=4.0, lunet_encoder=(8, 16, 16, 16),
                                             lunet_decoder=(16, 16, 16), learning_rate=1e-3)),
    "fire-brain-2d": dict(method="fire", data="multicontrast", steps=3000, epoch_steps=500, clip=1.0, align=True,
                          registration_cases=8, config=dict(dim=2, spacing_mm=2.0, synthesis_channels=(8, 16, 32),
                                                            resnet_blocks=2, nonrigid_channels=16, **FIRE_RATES)),
    "disentangled-brain-2d": dict(method="disentangled", data="multicontrast", steps={"disentangle": 1500, "register": 1500},
                                  epoch_steps=500, clip=1.0, align=True, augmentation="prealigned", registration_cases=8,
                                  config=dict(dim=2, spacing_mm=2.0, rdm_channels=8, **SMALL_RDM)),
    "variational-brain-2d": dict(method="variational", data="multicontrast", steps=6000, epoch_steps=1000, clip=1.0,
                                 align=True, augmentation="prealigned", registration_cases=8,
                                 config=dict(dim=2, spacing_mm=2.0, learning_rate=1e-3)),
    "hierarchical-brain-2d": dict(method="hierarchical", data="multicontrast",
                                  steps={"coarse": 3000, "translation": 1000, "fine": 3000}, epoch_steps=1000, clip=1.0,
                                  align=True, augmentation="prealigned", registration_cases=8,
                                  config=dict(dim=2, spacing_mm=2.0, learning_rate=1e-3)),
    "midir-brain-2d": dict(method="midir", data="multicontrast", steps=10000, epoch_steps=1000, decay=7500, clip=1.0,
                           align=True, augmentation="prealigned", registration_cases=8,
                           config=dict(dim=2, spacing_mm=2.0, bins=32, learning_rate=1e-3)),
    "fire-brain-3d": dict(method="fire", steps=150, config=dict(dim=3, spacing_mm=4.0, synthesis_channels=(4, 8, 16),
                                                                resnet_blocks=1, nonrigid_channels=8, **FIRE_RATES)),
    "disentangled-brain-3d": dict(method="disentangled", steps={"disentangle": 120, "register": 120},
                                  config=dict(dim=3, spacing_mm=4.0, rdm_channels=4, registration_encoder=(16, 32, 32, 32),
                                              registration_decoder=(32, 32, 32), **SMALL_RDM)),
}


def write_multicontrast_cohort(path: Path) -> list[str]:
    """A cohort CSV of the real multi-contrast subjects; returns the held-out validation subject."""
    contrasts = ["t1", "t1c", "t2", "flair"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subject", *contrasts])
        for subject, files in MULTICONTRAST_FILES.items():
            cells = [str(MULTICONTRAST / subject / f"{files[c]}.nii.gz") if c in files else "" for c in contrasts]
            writer.writerow([subject, *cells])
    return list(MULTICONTRAST_VALIDATION)


def write_ixi_cohort(path: Path) -> list[str]:
    """A cohort CSV of every IXI T1 with its labels; returns the held-out validation subjects."""
    rows = []
    for image in sorted(IXI.glob("*_T1.nii.gz")):
        labels = image.with_name(image.name.replace("_T1.nii.gz", "_T1_DLMUSE.nii.gz"))
        if labels.exists():
            rows.append([image.name.split("_")[0], str(image), str(labels)])
    if not rows:
        raise SystemExit(f"no IXI T1s with labels in {IXI}; is ../shared/data beside the project?")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subject", "t1", "labels"])
        writer.writerows(rows)
    step = len(rows) // VALIDATION_SUBJECTS
    return [rows[k * step][0] for k in range(VALIDATION_SUBJECTS)]


NOT_YET_BUNDLED = """None is bundled. On two CPU cores no network improved on its affine pre-alignment in
the whole registration of held-out known-warp cases: the 3D MIDIR runs on the real
multi-contrast subjects (and on IXI T1s with synthetic contrasts) registered the held-out stroke
cases worse than the pre-alignment alone, and the 2D networks trained on axial slices of the real
subjects stayed within about 0.1 mm of it or got worse (`registration` column of
benchmarks/results/training-*.md; benchmarks/benchmark_loss_optimum.py for what a network on
the model grid could reach). What they lack is training: MIDIR's 2D network learns slowly from
these pairs in every form measured (same-contrast pairs: from about 2000 updates with the known
warp as its loss, about 6000 with its own NMI loss; cross-contrast pairs: nothing in 8000 with
the known warp, 3.29 -> 3.05 mm with NMI; benchmarks/benchmark_learnability.py), and one
update of a 3D network on the 2 mm grid takes 4.6-9 s on two CPU cores
(benchmarks/benchmark_training_cost.py), so the 10^5 updates such training takes are GPU work. The script trains them with `--only NAME`, and with
`--steps-scale 20` (or more) on a CUDA GPU, where the trainer uses mixed precision;
`--registration-cases` keeps the weights best at the whole registration."""


def scaled(steps, factor: float):
    """``steps`` (a number or ``{stage: n}``) times ``factor``."""
    if isinstance(steps, dict):
        return {stage: max(1, round(n * factor)) for stage, n in steps.items()}
    return max(1, round(steps * factor))


def write_training_report(runs: Path, path: Path) -> Path:
    """A table of every run folder under ``runs``: updates done, seconds, and the validation
    (held-out pairs) at the start and at its best, from the runs' checkpoints."""
    from dmmreg.training import score

    lines = ["# Training runs of scripts/train_bundled_models.py", "",
             "Validation on held-out subjects (known warps, model grid): five IXI subjects for runs on the IXI "
             "cohort, the stroke subject for runs on the multi-contrast one; `start`: the untrained network (its "
             "output is about zero, so this is the identity; for a fine-tuning run, the base model); `best`: the best "
             "epoch so far. `registration`: runs "
             "validated by the whole registration too (`--registration-cases`), the endpoint error at full "
             "resolution of the pre-alignment alone, of the untrained network and of the weights kept (the best "
             "validation of the last stage, its starting weights included: the stage that trains the network the "
             "model registers with).", "",
             "| run | cohort | updates done | planned | seconds | EPE start (mm) | EPE best (mm) | at update | Dice start | Dice best | folding % at best | registration: pre-alignment, untrained, kept (mm) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for folder in sorted(p for p in runs.iterdir() if (p / "checkpoint.json").exists()):
        state = json.loads((folder / "checkpoint.json").read_text())
        job = json.loads((folder / "job.json").read_text())
        validations = [r for r in state["history"] if r["kind"] == "validation"]
        if not validations:
            continue
        start = validations[0]
        last_stage = validations[-1]["stage"]
        best = min((r for r in validations if r["stage"] == last_stage), key=score)  # as the trainer chooses
        planned = sum(job["steps"].values()) if isinstance(job["steps"], dict) else job["steps"]
        cell = lambda record, key: f"{record[key]:.3f}" if key in record else "-"  # noqa: E731
        cohorts = ", ".join(Path(c).stem for c in job["cohorts"])
        registration = "-" if "registration_epe_mm" not in best else (
            f"{start['registration_epe_before_mm']:.3f}, {start['registration_epe_mm']:.3f}, {best['registration_epe_mm']:.3f}")
        lines.append(f"| {folder.name} | {cohorts} | {state['done']} | {planned} | {state['history'][-1]['seconds']:.0f} | "
                     f"{cell(start, 'epe_mm')} | {cell(best, 'epe_mm')} | {best['done']} | {cell(start, 'dice')} | "
                     f"{cell(best, 'dice')} | {cell(best, 'folding_percent')} | {registration} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


DATA_DESCRIPTIONS = {
    "ixi": "IXI T1 (CC BY-SA 3.0) with DLMUSE labels: real T1 and synthetic contrasts drawn from the labels",
    "multicontrast": "real T1, T1c, T2 and FLAIR of aurora-met (BraTS-MET sample, BraTS data terms) and tcga-du-7294 "
                     "(TCGA via TCIA, CC BY 3.0), pairs within a subject across contrasts with random known warps",
}


def describe_data(card: Path, kind: str, validation: list[str]) -> None:
    """Record the training data (``kind``: ixi or multicontrast) in the card as the data, not as
    this machine's paths."""
    contents = json.loads(card.read_text())
    folder = "brain-t1-labels/ixi" if kind == "ixi" else "brain-multicontrast"
    contents["training"]["cohorts"] = [f"../shared/data/{folder} ({len(contents['training']['subjects'])} "
                                       f"training subjects; held out for validation: {', '.join(validation)})"]
    contents["training"]["data"] = DATA_DESCRIPTIONS[kind]
    card.write_text(json.dumps(contents, indent=2) + "\n")


def write_models_readme(folder: Path) -> Path:
    """``models/README.md``: a table of the bundled models, rendered from their cards."""
    from dmmreg.model_io import read_card

    lines = ["# Bundled models", "",
             "Made by `scripts/train_bundled_models.py` (this table is written by it from the cards) from `../shared/data`. "
             "Validation: known random warps (residual affine and smooth non-rigid) of pairs of held-out subjects, on "
             "the model grid: the stroke subject for models trained on real multi-contrast data, five IXI subjects "
             "(real T1 against a synthetic contrast drawn from the labels) for models trained on IXI. `EPE` is the "
             "mean endpoint error in the brain (mm); `start` is the identity's. `registration`: the whole "
             "registration (`optimise`'s affine pre-alignment, the network, the map at full resolution) of held-out "
             "known-warp cases (for 2D models, axial slices of the held-out subject), the EPE of the pre-alignment "
             "alone and with the network; its figure chose the weights.", "",
             "| model | method | dim | grid mm | MB | training data | steps | CPU minutes | EPE start | EPE | folding % | "
             "Dice start | Dice | registration: pre-alignment / network (mm) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for card_path in sorted(folder.glob("*.json")):
        card = read_card(card_path)
        v, t = card.get("validation", {}), card.get("training", {})
        size = card_path.with_suffix(".safetensors").stat().st_size / 2**20
        number = lambda key: f"{v[key]:.2f}" if isinstance(v.get(key), (int, float)) else "-"  # noqa: E731
        lines.append(f"| {card['name']} | {card['method']} | {card['dimension']} | {card['config']['spacing_mm']:g} | "
                     f"{size:.1f} | {t.get('data', '-')} | {sum(t.get('steps', {}).values())} | {t.get('seconds', 0) / 60:.0f} | "
                     f"{number('epe_before_mm')} | {number('epe_mm')} | {number('folding_percent')} | "
                     f"{number('dice_before')} | {number('dice')} | "
                     f"{number('registration_epe_before_mm')} / {number('registration_epe_mm')} |")
    missing = [name for name in MODELS if not (folder / f"{name}.json").exists()]
    if missing:
        lines += ["", f"Not bundled: {', '.join(missing)}. {NOT_YET_BUNDLED}"]
    path = folder / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=list(MODELS), help="train only these models")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--runs", default=str(ROOT / "benchmarks" / "runs"), help="run folders (checkpoints, logs)")
    parser.add_argument("--output", default=str(ROOT / "models"))
    parser.add_argument("--finalise", action="store_true",
                        help="only rewrite the cards' data descriptions and models/README.md")
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="multiply every model's updates (e.g. 20 on a GPU; the defaults fit two CPU cores)")
    parser.add_argument("--report", type=Path, metavar="FILE",
                        help="only write FILE (markdown): each run folder's validation at the start and at its best")
    args = parser.parse_args(argv)

    import torch

    from dmmreg.training import Cancelled
    from dmmreg.training_jobs import TrainingJob, cancel_on_signals, run_job

    if args.threads:
        torch.set_num_threads(args.threads)
    cancel = cancel_on_signals()  # Ctrl-C / SIGTERM: stop after the current update, resumable
    runs = Path(args.runs)
    cohort = runs / "ixi.csv"
    validation = write_ixi_cohort(cohort)
    multicontrast = runs / "multicontrast.csv"
    multicontrast_validation = write_multicontrast_cohort(multicontrast)
    if args.report:
        print(write_training_report(runs, args.report))
        return 0
    if args.finalise:
        for card in Path(args.output).glob("*.json"):
            kind = MODELS[card.stem].get("data", "ixi")
            describe_data(card, kind, multicontrast_validation if kind == "multicontrast" else validation)
        print(write_models_readme(Path(args.output)))
        return 0
    for name in args.only or list(MODELS):
        spec = MODELS[name]
        kind = spec.get("data", "ixi")
        real = kind == "multicontrast"
        job = TrainingJob(method=spec["method"], cohorts=[str(multicontrast if real else cohort)], name=name,
                          config=spec["config"], contrast_pairs=MULTICONTRAST_PAIRS if real else IXI_PAIRS,
                          validation_subjects=multicontrast_validation if real else validation, validation_pairs=8,
                          steps=scaled(spec["steps"], args.steps_scale), epoch_steps=spec.get("epoch_steps", 100),
                          learning_rate_decay_steps=spec.get("decay"),
                          max_gradient_norm=spec.get("clip"), align_contrasts=spec.get("align", False),
                          registration_cases=spec.get("registration_cases", 0), spatial=spec.get("augmentation"),
                          seed=0, device="auto",
                          output=str(Path(args.output) / f"{name}.safetensors"))
        with open(runs / f"{name}.log", "a") as log:
            def progress(kind, fraction, message, record=None, _log=log):
                if kind in ("validate", "load") or (record and record.get("step", 0) % 50 == 0):
                    _log.write(json.dumps({"time": time.strftime("%H:%M:%S"), "kind": kind, "message": message}) + "\n")
                    _log.flush()

            start = time.perf_counter()
            try:
                card = run_job(job, runs / name, progress, cancel, allow_bundled=True)
            except Cancelled as exc:
                print(f"{name}: {exc}", flush=True)
                return 130
        describe_data(card, kind, multicontrast_validation if real else validation)
        print(f"{name}: {time.perf_counter() - start:.0f} s -> {card}", flush=True)
        write_models_readme(Path(args.output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
