"""Does fine-tuning help?  Fine-tune a bundled model on real multi-contrast subjects and compare
the base and the fine-tuned model on held-out known-warp pairs of those contrasts.

Fine-tuning cohort (``--tuning-subjects``, default: the stroke subject, the one multi-contrast
subject the bundled models are not trained on): T1, T2 and FLAIR of ``../shared/data``, pairs T2
or FLAIR fixed, deformed by random known warps, T1 moving, run by the same path as ``dmmreg
finetune``.  Tested on ``--test-subject`` (default: stroke), on two measures:

* the trainer's validation (model grid, residual-affine known warps; when the test subject is
  tuned on, held-out random warps of it), recorded in the new card as ``validation_at_start``
  (the base model) and ``validation`` (the fine-tuned one);
* the whole registration (``dmmreg register --model``: affine pre-alignment, network, result
  at full resolution) on the benchmark's known-warp cases (``benchmark_registration.py``),
  whose warps (drawn at 1 mm by ``known_warp``) are not among the training pairs; for a 2D
  model, on axial slices of the test subject under such warps
  (:func:`dmmreg.training.validation.registration_cases`, seeds from 30000, apart from the
  20000... cases the fine-tuning keeps its best weights by).

Writes ``finetuning-<date>-<host>-<n>cpu.md`` to ``--out``; the fine-tuned model goes to a
temporary user models folder (``--keep`` keeps it).

    python benchmarks/benchmark_finetuning.py --model midir-brain-3d --steps 300
    python benchmarks/benchmark_finetuning.py --model midir-brain-2d --steps 1000 --epoch-steps 250
    python benchmarks/benchmark_finetuning.py --tuning-subjects aurora-met tcga-du-7294  # held-out subject
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import tempfile
from pathlib import Path

from benchmark_registration import (DEFAULT_DATA, SUBJECTS, benchmark_subject, build_case, evaluate, model_runner, results_file,
                                    write_lines)
from benchmark_whole_registration import score_models

from dmmreg.model_io import find_model, read_card
from dmmreg.training.jobs import TrainingJob, run_job

def write_cohort(data: Path, subjects, path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subject", "t1", "t2", "flair"])
        for subject in subjects:
            writer.writerow([subject, *benchmark_subject(data, subject).images.values()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="midir-brain-3d", help="the base model (bundled name or file)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--epoch-steps", type=int, default=50)
    parser.add_argument("--tuning-subjects", nargs="+", choices=sorted(SUBJECTS), default=["stroke"])
    parser.add_argument("--test-subject", choices=sorted(SUBJECTS), default="stroke")
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="largest learning rate (0: the base model's)")
    parser.add_argument("--max-gradient-norm", type=float, default=1.0)
    parser.add_argument("--augmentation", default="prealigned", help="spatial augmentation of the tuning pairs "
                        "(for networks that predict their own affine, e.g. FIRE: strong)")
    parser.add_argument("--slice-cases", type=int, default=16, help="2D models: slice cases tested on")
    parser.add_argument("--selection-cases", type=int, default=8,
                        help="2D models: whole-registration cases (other warps) that choose the best tuned weights")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="known-warp seeds of the held-out cases")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--keep", type=Path, help="copy the fine-tuned model (and its card) here")
    args = parser.parse_args()

    base_path = find_model("", 0, args.model)
    base_card = read_card(base_path)
    flat = base_card["dimension"] == 2
    with tempfile.TemporaryDirectory(prefix="dmmreg-finetune-") as scratch:
        work = Path(scratch)
        tested_apart = args.test_subject not in args.tuning_subjects
        write_cohort(args.data, (*args.tuning_subjects, *([args.test_subject] if tested_apart else [])),
                     work / "cohort.csv")
        job = TrainingJob(method=base_card["method"], cohorts=[str(work / "cohort.csv")], name="finetuned",
                          base_model=args.model, contrast_pairs=[["t2", "t1"], ["flair", "t1"]],
                          validation_subjects=[args.test_subject] if tested_apart else [], validation_pairs=8,
                          steps=args.steps, epoch_steps=args.epoch_steps, learning_rate=args.learning_rate or None,
                          max_gradient_norm=args.max_gradient_norm, spatial=args.augmentation,
                          registration_cases=args.selection_cases if flat else 0,
                          output=str(work / "models" / "finetuned.safetensors"))
        tuned_path = run_job(job, work / "run", progress=lambda kind, fraction, message, record=None:
                             print(message, flush=True) if kind == "validate" else None)
        tuned = read_card(tuned_path)
        rows = test_on_slices(args, base_path, tuned_path) if flat else test_on_volumes(args, tuned_path, work)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for suffix in (".safetensors", ".json"):
                shutil.copy(tuned_path.with_suffix(suffix), args.keep / f"{args.model}-finetuned{suffix}")

    stamp, path = results_file(args.out, "finetuning")
    mean = lambda label, key: sum(r[key] for r in rows if r["model"] == label) / max(1, sum(r["model"] == label for r in rows))  # noqa: E731
    start, end = tuned["validation_at_start"], tuned["validation"]
    tested = (f"held-out subject {args.test_subject}" if tested_apart else
              f"{args.test_subject}, held-out random warps (the subject was tuned on)")
    chooser = f" in the whole registration of {args.selection_cases} other slice cases" if flat else ""
    lines = [f"# Fine-tuning {args.model} on {', '.join(args.tuning_subjects)}, {stamp}, {os.cpu_count()} CPUs", "",
             f"{args.steps} updates ({tuned['training']['seconds']:.0f} s, {tuned['training']['device']}), learning rate "
             f"{args.learning_rate or 'of the base model'}, gradient norm clipped at {args.max_gradient_norm}, pairs T2/FLAIR "
             f"fixed, T1 moving; tested on: {tested}. The fine-tuned model keeps the weights after "
             f"{end.get('after_updates')} updates (0: no epoch beat the base model{chooser}).", "",
             "## Trainer validation (model grid)", "",
             "| model | EPE (mm) | folding % |", "|---|---|---|",
             f"| base | {start.get('epe_mm', float('nan')):.2f} | {start.get('folding_percent', float('nan')):.3f} |",
             f"| fine-tuned | {end.get('epe_mm', float('nan')):.2f} | {end.get('folding_percent', float('nan')):.3f} |", "",
             "## Whole registration on the benchmark's known-warp cases (T1 to deformed T2/FLAIR)", ""]
    if flat:
        lines += [f"{args.slice_cases} axial slices of {args.test_subject}, T1 to deformed T2/FLAIR, warps seeded from "
                  "30000; EPE in the brain at full resolution.", "",
                  "| model | pre-alignment alone EPE (mm) | EPE mean (mm) | folding % |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['registration_epe_before_mm']:.2f} | {r['registration_epe_mm']:.2f} | "
                  f"{r['registration_folding_percent']:.3f} |" for r in rows]
    else:
        lines += ["| model | EPE mean (mm) | EPE 95% (mm) | Dice tissue | folding % | registration s |",
                  "|---|---|---|---|---|---|"]
    for label in (() if flat else ("base", "fine-tuned")):
        lines.append(f"| {label} | {mean(label, 'epe_mean_mm'):.2f} | {mean(label, 'epe_p95_mm'):.2f} | "
                     f"{mean(label, 'dice_mean'):.3f} | {mean(label, 'folding_percent'):.3f} | "
                     f"{mean(label, 'registration_seconds'):.1f} |")
    if not flat:
        lines += ["", "Per case:", "", "```", *(json.dumps({k: (round(v, 3) if isinstance(v, float) else v)
                                                          for k, v in r.items()}) for r in rows), "```"]
    write_lines(path, lines)


def test_on_volumes(args, tuned_path: Path, work: Path) -> list[dict]:
    """Base and fine-tuned 3D model on the registration benchmark's cases of the test subject."""
    rows = []
    for contrast in ("T2", "FLAIR"):
        for seed in args.seeds:
            case = build_case(args.data, args.test_subject, contrast, seed, work / "cases")
            for label, model in (("base", args.model), ("fine-tuned", str(tuned_path))):
                row = evaluate(case, model_runner(model, 0)(case, case.fixed_path.parent))
                rows.append({"case": case.name, "model": label, **row})
                print(f"{case.name} {label}: EPE {row['epe_mean_mm']:.2f} mm", flush=True)
    return rows


def test_on_slices(args, base_path: Path, tuned_path: Path) -> list[dict]:
    """Base and fine-tuned 2D model on the same axial-slice known-warp cases of the test subject."""
    rows = score_models([base_path, tuned_path], benchmark_subject(args.data, args.test_subject), args.slice_cases,
                        30_000, pairs=[("t2", "t1"), ("flair", "t1")])
    return [{**row, "model": label} for row, label in zip(rows, ("base", "fine-tuned"))]


if __name__ == "__main__":
    main()
