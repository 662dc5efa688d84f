"""The training campaign of the models bundled in ``models/``, from ``../shared/data`` (see models/README.md).

Each model follows a curriculum (:data:`CURRICULA`): phases run in order, each a training job of
the shared trainer (:func:`dmmreg.training.jobs.run_job`, the path of ``dmmreg train``) started
from the previous phase's model.  The first phases are supervised by the pairs' known warps
(``loss="known-warp"``: same-contrast pairs, then cross-contrast and synthetic-contrast pairs),
the last one trains on the method's own loss; what departs from a paper is in the method's
docstring and every phase is recorded in the card.

The campaign is resumable: phase run folders (checkpoints every epoch, a few MB) and phase
models live in ``campaign/`` and are committed, so the next working period continues where the
last one stopped.  It runs with one CPU thread in the background:

    .venv/bin/python scripts/train_bundled_models.py [--only NAME ...] [--hours H] &
    .venv/bin/python scripts/train_bundled_models.py --status
    .venv/bin/python scripts/train_bundled_models.py --bundle      # best phase model -> models/ when it beats the pre-alignment
    .venv/bin/python scripts/train_bundled_models.py --report benchmarks/results/training-DATE.md

Data: ``multicontrast`` = the real T1, T1c, T2 and FLAIR of aurora-met, tcga-du-7294, oms-p07
and oms-p19 (pairs within a subject, the fixed one deformed by a random known warp: the FIRE
protocol); the stroke subject is held out for validation (best-weights selection by the whole
registration of its known-warp cases); brats2013 and msseg-1 are never trained on (the
fine-tuning benchmark's pairs T1c -> FLAIR and T2 -> PD).  ``ixi`` = the 185 labelled IXI T1s,
real or with synthetic contrasts drawn from their DLMUSE labels, all trained on.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DeepMultiModalReg"))

DATA = ROOT.parent / "shared" / "data"
IXI = DATA / "brain-t1-labels" / "ixi"
MULTICONTRAST = DATA / "brain-multicontrast"
CAMPAIGN = Path("campaign")  # relative to ROOT (the script works there), so run folders move with the repository
# real multi-contrast subjects: contrast -> file name in each subject's folder (names differ by source)
MULTICONTRAST_FILES = {
    "aurora-met": {"t1": "t1", "t1c": "t1c", "t2": "t2", "flair": "flair"},
    "tcga-du-7294": {"t1": "t1", "t1c": "t1c", "t2": "t2", "flair": "fla"},
    "oms-p07": {"t1": "t1", "t1c": "t1post", "t2": "t2", "flair": "flair"},
    "oms-p19": {"t1": "t1", "t1c": "t1post", "t2": "t2", "flair": "flair"},
    "stroke": {"t1": "T1", "t2": "T2", "flair": "FLAIR"},
}
MULTICONTRAST_VALIDATION = ["stroke"]
SAME_CONTRAST = [["t1", "t1"], ["t2", "t2"], ["flair", "flair"], ["t1c", "t1c"]]
CROSS_CONTRAST = [["t2", "t1"], ["flair", "t1"], ["t1", "t2"], ["t1", "flair"], ["t2", "flair"], ["flair", "t2"],
                  ["t1c", "t2"], ["flair", "t1c"]]
SYNTHETIC = [["synthetic", "t1"], ["t1", "synthetic"], ["synthetic", "synthetic"]]


@dataclass
class Phase:
    """One step of a curriculum: a training job from the previous phase's model.  ``data``: the
    cohorts (``multicontrast``, ``ixi``); ``pairs``: allowed ``[fixed, moving]`` contrasts (each
    subject uses those it has); ``loss``: ``known-warp`` or ``paper``; ``steps``: updates;
    ``stages``: the method's training stages to run (None: all of them, or its fine-tuning
    stages after the first phase), ``steps`` updates each; ``registration_cases``: choose the
    phase's best weights by the whole registration of that many held-out cases (0: by the held-out model-grid pairs: early phases learn on pairs long
    before their registrations improve, and choosing by registration would keep the untrained
    weights)."""

    name: str
    loss: str
    data: tuple[str, ...]
    pairs: list[list[str]]
    steps: int
    epoch_steps: int = 250
    learning_rate: float = 1e-3
    decay: int | None = None
    stages: tuple[str, ...] | None = None
    registration_cases: int = 0


@dataclass
class Curriculum:
    method: str
    config: dict
    phases: list[Phase]
    spatial: str = "prealigned"
    clip: float = 1.0


def curriculum_phases(same: int, cross: int, fine: int, own: int, first_stages: tuple[str, ...] | None = None,
                      own_stages: tuple[str, ...] | None = None) -> list[Phase]:
    """The four phases every curriculum runs, with its updates per stage: same-contrast pairs, then
    cross-contrast and synthetic-contrast pairs, supervised by their known warps (Adam 1e-3); the
    cross-contrast pairs again at a tenth of the rate, the weights chosen by the whole
    registration of four held-out cases (MIDIR's training error was flat near 3.2 mm from update
    3000 at 1e-3); then the method's own loss at 1e-4.  ``first_stages`` / ``own_stages``: the
    method's stages of the first and the last phase (None: :func:`phase_stages`' default)."""
    data, pairs = ("multicontrast", "ixi"), CROSS_CONTRAST + SYNTHETIC
    return [
        Phase("same-contrast", "known-warp", data, SAME_CONTRAST, steps=same, stages=first_stages),
        Phase("cross-contrast", "known-warp", data, pairs, steps=cross),
        Phase("cross-contrast-fine", "known-warp", data, pairs, steps=fine, learning_rate=1e-4, registration_cases=4),
        Phase("own-loss", "paper", data, pairs, steps=own, learning_rate=1e-4, stages=own_stages, registration_cases=4),
    ]


#: ``campaign/midir-brain-3d-mind`` keeps the runs of a MIDIR curriculum whose network saw MIND-SSC
#: descriptors (``network_inputs="mind"``): at Adam 1e-3 its training error rose above the
#: identity's in 885 updates, at 3e-4 its output stayed at the identity through 1500 same- and 1292
#: cross-contrast updates (benchmarks/README.md, "Learned methods against their targets"), so the
#: intensity curriculum, the only one that learned, goes on.  Its own-loss phase, first run from
#: the cross-contrast model, made the held-out registration worse in 250 updates (2.31 -> 2.44 mm,
#: the pre-alignment's 2.44), so a known-warp phase at a tenth of the rate runs before it.
CURRICULA = {
    "midir-brain-3d": Curriculum(method="midir", config=dict(dim=3, spacing_mm=4.0),
                                 phases=curriculum_phases(3000, 6000, 2000, 3000)),
    # MIDIR's phases, the cross-contrast one cut where MIDIR's stopped improving (its best pairs at
    # update 4250 of 6000).  First run (2026-12-03): the held-out pairs stayed at the identity's
    # error through same-contrast (5.015 -> 5.008 mm in 2500 updates) and 1995 cross-contrast
    # updates (5.004), where MIDIR had left it by update 1250; that run folder was not kept
    "variational-brain-3d": Curriculum(method="variational", config=dict(dim=3, spacing_mm=4.0),
                                       phases=curriculum_phases(2500, 4000, 1500, 3000)),
    # steps are per stage: the first phase trains G1, G2 and G3 in turn (3 x 800 updates), the
    # later ones, from a base model, G2 and G3 (the method's fine-tuning stages)
    "hierarchical-brain-3d": Curriculum(method="hierarchical", config=dict(dim=3, spacing_mm=4.0),
                                        phases=curriculum_phases(800, 1500, 1500, 3000)),
    # a quarter of the paper's widths: at full width FIRE has 52 M parameters (210 MB, 7 s per
    # 3D update on one core) and the bundled models must fit in 60 MB together; 3.9 M, 0.9 s
    # (the paper's loss, synthesis both ways included, costs 13 s per update at these widths)
    "fire-brain-3d": Curriculum(
        method="fire", config=dict(dim=3, spacing_mm=4.0, synthesis_channels=(16, 32, 64), nonrigid_channels=16),
        phases=curriculum_phases(2500, 4000, 1500, 1000)),
    # a quarter of MUNIT's widths (163 M parameters at full width, 650 MB); two discriminator
    # scales so the 4 mm grid (48 voxels along its shortest axis) is large enough for the paper's
    # own loss; the known-warp phases train R only (the RDM does not take part in predict's map),
    # the own-loss phase both of the paper's stages (the RDM first learns there)
    "disentangled-brain-3d": Curriculum(
        method="disentangled", config=dict(dim=3, spacing_mm=4.0, rdm_channels=16, mlp_channels=64,
                                           discriminator_channels=16, discriminator_scales=2),
        phases=curriculum_phases(2500, 4000, 1500, 1000, first_stages=("register",),
                                 own_stages=("disentangle", "register"))),
}
#: the cases bundling chooses by: T1 moving, the deformed T2 or FLAIR of the held-out subject fixed
BUNDLE_PAIRS = [("t2", "t1"), ("flair", "t1")]
BUNDLE_CASES = 6


def write_multicontrast_cohort(path: Path) -> None:
    """A cohort CSV of the real multi-contrast subjects."""
    contrasts = ["t1", "t1c", "t2", "flair"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subject", *contrasts])
        for subject, files in MULTICONTRAST_FILES.items():
            cells = [str(MULTICONTRAST / subject / f"{files[c]}.nii.gz") if c in files else "" for c in contrasts]
            writer.writerow([subject, *cells])


def write_ixi_cohort(path: Path) -> None:
    """A cohort CSV of every IXI T1 with its labels."""
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


NOT_YET_BUNDLED = """These are still in training (`python scripts/train_bundled_models.py --status`), or none
of their phases yet beats the affine pre-alignment in the whole registration of the held-out
known-warp cases, the condition for bundling (`--bundle`)."""


def write_training_report(runs: Path, path: Path) -> Path:
    """A table of every run folder under ``runs``: updates done, seconds, and the validation
    (held-out pairs) at the start and at its best, from the runs' checkpoints."""
    from dmmreg.methods import method_class
    from dmmreg.training.trainer import score

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
    for folder in sorted(p.parent for p in runs.rglob("checkpoint.json")):
        state = json.loads((folder / "checkpoint.json").read_text())
        job = json.loads((folder / "job.json").read_text())
        validations = [r for r in state["history"] if r["kind"] == "validation"]
        if not validations:
            continue
        start = validations[0]
        last_stage = validations[-1]["stage"]
        best = min((r for r in validations if r["stage"] == last_stage), key=score)  # as the trainer chooses
        if isinstance(job["steps"], dict):
            planned = sum(job["steps"].values())
        else:  # updates per stage, for each of the method's stages (its fine-tuning ones from a base model)
            method = method_class(job["method"])
            planned = job["steps"] * len(method.finetune_stages if job.get("base_model") else method.stages)
        cell = lambda record, key: f"{record[key]:.3f}" if key in record else "-"  # noqa: E731
        cohorts = ", ".join(Path(c).stem for c in job["cohorts"])
        registration = "-" if "registration_epe_mm" not in best else (
            f"{start['registration_epe_before_mm']:.3f}, {start['registration_epe_mm']:.3f}, {best['registration_epe_mm']:.3f}")
        lines.append(f"| {folder.relative_to(runs)} | {cohorts} | {state['done']} | {planned} | {state['history'][-1]['seconds']:.0f} | "
                     f"{cell(start, 'epe_mm')} | {cell(best, 'epe_mm')} | {best['done']} | {cell(start, 'dice')} | "
                     f"{cell(best, 'dice')} | {cell(best, 'folding_percent')} | {registration} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


DATA_DESCRIPTIONS = {
    "ixi": "IXI T1 (CC BY-SA 3.0) with DLMUSE labels: real T1 and synthetic contrasts drawn from the labels",
    "multicontrast": "real T1, T1c, T2 and FLAIR of aurora-met (BraTS-MET sample, BraTS data terms), tcga-du-7294 "
                     "(TCGA via TCIA, CC BY 3.0), oms-p07 and oms-p19 (open_ms_data, CC BY), pairs within a subject "
                     "across contrasts with random known warps",
}


def describe_training(card: Path, curriculum: Curriculum, phases: list[dict]) -> None:
    """Record the data (as the data, not this machine's paths) and the curriculum's phases in the card."""
    contents = json.loads(card.read_text())
    kinds = sorted({kind for phase in curriculum.phases for kind in phase.data})
    contents["training"]["cohorts"] = [f"../shared/data/{'brain-t1-labels/ixi' if k == 'ixi' else 'brain-multicontrast'}"
                                       for k in kinds] + [f"held out for validation: {', '.join(MULTICONTRAST_VALIDATION)}"]
    contents["training"]["data"] = "; ".join(DATA_DESCRIPTIONS[k] for k in kinds)
    contents["training"]["curriculum"] = phases
    contents["training"]["seconds"] = round(sum(p["seconds"] for p in phases), 1)
    contents["training"]["steps"] = {p["phase"]: p["updates"] for p in phases}
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
    missing = [name for name in CURRICULA if not (folder / f"{name}.json").exists()]
    if missing:
        lines += ["", f"Not bundled: {', '.join(missing)}. {NOT_YET_BUNDLED}"]
    path = folder / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def phase_folder(name: str, phase: Phase) -> Path:
    return CAMPAIGN / name / phase.name


def phase_job(name: str, curriculum: Curriculum, index: int, cohorts: dict[str, Path]):
    """The training job of phase ``index`` of ``name``'s curriculum (from the previous phase's model)."""
    from dmmreg.training.jobs import TrainingJob

    phase = curriculum.phases[index]
    base = None if index == 0 else str(phase_folder(name, curriculum.phases[index - 1]).with_suffix(".json"))
    return TrainingJob(method=curriculum.method, cohorts=[str(cohorts[kind]) for kind in phase.data],
                       name=f"{name}-{phase.name}", config=dict(curriculum.config) if index == 0 else {},
                       base_model=base, contrast_pairs=phase.pairs, validation_subjects=list(MULTICONTRAST_VALIDATION),
                       validation_pairs=8, epoch_steps=phase.epoch_steps,
                       steps=phase.steps if phase.stages is None else {stage: phase.steps for stage in phase.stages},
                       learning_rate=phase.learning_rate, learning_rate_decay_steps=phase.decay,
                       max_gradient_norm=curriculum.clip, align_contrasts=True,
                       registration_cases=phase.registration_cases, spatial=curriculum.spatial, loss=phase.loss,
                       seed=index, device="auto", output=str(phase_folder(name, phase).with_suffix(".safetensors")))


def phase_stages(curriculum: Curriculum, index: int) -> tuple[str, ...]:
    """The method's training stages phase ``index`` runs, ``steps`` updates each."""
    from dmmreg.methods import method_class

    phase, cls = curriculum.phases[index], method_class(curriculum.method)
    return phase.stages or (cls.stages if index == 0 else cls.finetune_stages)


def phase_state(name: str, curriculum: Curriculum, index: int) -> dict:
    """Where phase ``index`` stands: finished (its model exists), updates done (all its stages),
    validation at start and best."""
    from dmmreg.training.trainer import score

    phase, stages = curriculum.phases[index], phase_stages(curriculum, index)
    folder = phase_folder(name, phase)
    state = {"phase": phase.name, "loss": phase.loss, "pairs": phase.pairs, "stages": list(stages),
             "planned": phase.steps * len(stages), "updates": 0, "seconds": 0.0,
             "finished": folder.with_suffix(".json").exists()}
    if (folder / "checkpoint.json").exists():
        checkpoint = json.loads((folder / "checkpoint.json").read_text())
        validations = [r for r in checkpoint["history"] if r["kind"] == "validation"]
        state["updates"] = checkpoint["done"]
        state["seconds"] = checkpoint["history"][-1]["seconds"] if checkpoint["history"] else 0.0
        if validations:
            keep = lambda record: {k: v for k, v in record.items() if k.endswith(("_mm", "_percent"))}  # noqa: E731
            state["start"] = keep(validations[0])
            best = min(validations, key=score)
            state["best"], state["best_at"] = keep(best), best["done"]
    return state


def print_status() -> None:
    for name, curriculum in CURRICULA.items():
        print(f"{name} ({curriculum.method}, {curriculum.config})")
        for index, phase in enumerate(curriculum.phases):
            state = phase_state(name, curriculum, index)
            best, start = state.get("best", {}), state.get("start", {})
            text = "not validated yet"
            if "epe_mm" in best:
                text = (f"held-out pairs {best['epe_mm']:.3f} mm at update {state['best_at']} "
                        f"(start {start['epe_mm']:.3f})")
            if "registration_epe_mm" in best:
                text += (f", registration {best['registration_epe_mm']:.3f} mm "
                         f"(pre-alignment {best['registration_epe_before_mm']:.3f})")
            done = "finished" if state["finished"] else f"{state['updates']}/{state['planned']} updates"
            print(f"  {phase.name:15s} {phase.loss:10s} {done:22s} {state['seconds'] / 60:6.1f} min  best: {text}")


def export_phase(name: str, curriculum: Curriculum, index: int, cohorts: dict[str, Path], target: Path) -> Path | None:
    """The best weights so far of an unfinished phase as a model (card included) at ``target``,
    by finishing a copy of its run folder at the updates done; None before its first epoch."""
    from dmmreg.training.jobs import run_job

    folder = phase_folder(name, curriculum.phases[index])
    if not (folder / "checkpoint.json").exists():
        return None
    checkpoint = json.loads((folder / "checkpoint.json").read_text())
    if checkpoint["done"] == 0:
        return None
    job = phase_job(name, curriculum, index, cohorts)
    stages, current = phase_stages(curriculum, index), checkpoint["stage_index"]
    job.steps = {**{stage: curriculum.phases[index].steps for stage in stages[:current]},
                 stages[current]: checkpoint["stage_step"]}
    job.output = str(target)
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "run"
        shutil.copytree(folder, copy)
        (copy / "job.json").unlink()
        return run_job(job, copy, allow_bundled=True)


def bundle(cohorts: dict[str, Path], output: Path) -> None:
    """For every curriculum: of its phase models (finished, or the best so far of the running
    phase), the one with the lowest whole-registration error on the held-out subject's
    T1 -> T2/FLAIR cases, copied to ``output`` (its card records those figures) when it beats the
    affine pre-alignment alone."""
    from dmmreg.model_io import load_model
    from dmmreg.training.cohorts import read_cohort
    from dmmreg.training.validation import registration_cases, validate_registration

    _, held_out = read_cohort(cohorts["multicontrast"]).split(MULTICONTRAST_VALIDATION)
    for name, curriculum in CURRICULA.items():
        candidates, cases = [], None
        for index, phase in enumerate(curriculum.phases):
            finished = phase_folder(name, phase).with_suffix(".json")
            card = finished if finished.exists() else export_phase(
                name, curriculum, index, cohorts, CAMPAIGN / name / f"{phase.name}-partial.safetensors")
            if card is None:
                break
            model = load_model(card)[0]
            cases = cases or registration_cases(held_out.subjects, BUNDLE_PAIRS, BUNDLE_CASES, model)
            figures = validate_registration(model, cases)
            print(f"{name} {phase.name}: {figures}", flush=True)
            candidates.append((figures["registration_epe_mm"], index, Path(card), figures))
            if not finished.exists():
                break
        if not candidates:
            print(f"{name}: no phase has validated weights yet")
            continue
        _, index, card, figures = min(candidates, key=lambda c: c[0])
        if figures["registration_epe_mm"] >= figures["registration_epe_before_mm"]:
            print(f"{name}: its best phase ({curriculum.phases[index].name}) does not beat the pre-alignment "
                  f"({figures['registration_epe_mm']:.3f} vs {figures['registration_epe_before_mm']:.3f} mm); not bundled")
            continue
        target = output / f"{name}.safetensors"
        shutil.copyfile(card.with_suffix(".safetensors"), target)
        contents = json.loads(card.read_text())
        contents["name"] = name
        contents["validation"].update({k: round(v, 4) for k, v in figures.items()})
        contents["validation"]["registration_cases"] = [case.name for case in cases]
        target.with_suffix(".json").write_text(json.dumps(contents, indent=2) + "\n")
        describe_training(target.with_suffix(".json"), curriculum,
                          [phase_state(name, curriculum, i) for i in range(index + 1)])
        print(f"{name}: bundled phase {curriculum.phases[index].name}: registration "
              f"{figures['registration_epe_mm']:.3f} mm (pre-alignment {figures['registration_epe_before_mm']:.3f})")
    print(write_models_readme(output))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=list(CURRICULA), help="train only these models")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: training beside other work)")
    parser.add_argument("--hours", type=float, default=None, help="stop (resumably) after this long")
    parser.add_argument("--output", default=str(ROOT / "models"))
    parser.add_argument("--status", action="store_true", help="only print where each model stands")
    parser.add_argument("--bundle", action="store_true",
                        help="only copy each model's best phase into --output when it beats the pre-alignment")
    parser.add_argument("--report", type=Path, metavar="FILE",
                        help="only write FILE (markdown): each phase's validation at the start and at its best")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    if args.status:
        print_status()
        return 0
    if args.report:
        print(write_training_report(CAMPAIGN, args.report))
        return 0

    import torch

    from dmmreg.errors import Cancelled
    from dmmreg.training.jobs import cancel_on_signals, resume_job, run_job

    torch.set_num_threads(args.threads)
    signalled = cancel_on_signals()  # Ctrl-C / SIGTERM: stop after the current update, resumable
    deadline = None if args.hours is None else time.time() + 3600 * args.hours
    cancel = lambda: signalled() or (deadline is not None and time.time() > deadline)  # noqa: E731
    cohorts = {"ixi": CAMPAIGN / "ixi.csv", "multicontrast": CAMPAIGN / "multicontrast.csv"}
    write_ixi_cohort(cohorts["ixi"])
    write_multicontrast_cohort(cohorts["multicontrast"])
    if args.bundle:
        bundle(cohorts, Path(args.output))
        return 0
    for name in args.only or list(CURRICULA):
        curriculum = CURRICULA[name]
        for index, phase in enumerate(curriculum.phases):
            folder = phase_folder(name, phase)
            if folder.with_suffix(".json").exists():
                continue
            folder.mkdir(parents=True, exist_ok=True)
            with open(CAMPAIGN / name / "training.log", "a") as log:
                def progress(kind, fraction, message, record=None, _log=log, _phase=phase.name):
                    if kind in ("validate", "load") or (record and record.get("step", 0) % 50 == 0):
                        _log.write(json.dumps({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "phase": _phase,
                                               "kind": kind, "message": message}) + "\n")
                        _log.flush()

                start = time.perf_counter()
                try:
                    if (folder / "job.json").exists():
                        card = resume_job(folder, progress, cancel, allow_bundled=True)
                    else:
                        card = run_job(phase_job(name, curriculum, index, cohorts), folder, progress, cancel,
                                       allow_bundled=True)
                except Cancelled as exc:
                    print(f"{name} {phase.name}: {exc}", flush=True)
                    return 130
            print(f"{name} {phase.name}: {time.perf_counter() - start:.0f} s -> {card}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
