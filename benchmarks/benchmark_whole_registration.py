"""Trained models in the whole registration of one subject's known-warp cases.

For each model (a card path or a model name), the registration a user gets: ``optimise``'s
affine pre-alignment, the network, the map at full resolution
(:func:`dmmreg.methods.learned.register_with_model`), on ``--cases`` known-warp cases of
``--subject`` (:func:`dmmreg.training.validation.registration_cases`: volumes for 3D models,
axial slices through the middle of the brain for 2D ones; warps seeded from ``--seed``, by
default apart from the 20000... cases training keeps its best weights by), cycling through the
contrast pairs T2/FLAIR/T1 both ways.  Reports the mean endpoint error in the brain of the
pre-alignment alone and of the registration, and the folding %.

    .venv/bin/python benchmarks/benchmark_whole_registration.py MODEL [MODEL ...] --cases 36
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from benchmark_registration import DEFAULT_DATA, SUBJECTS, benchmark_subject, results_file, write_lines

from dmmreg.training.cohorts import Subject
from dmmreg.model_io import find_model, load_model
from dmmreg.training.validation import registration_cases, validate_registration

PAIRS = [("t2", "t1"), ("flair", "t1"), ("t1", "t2"), ("t1", "flair"), ("flair", "t2"), ("t2", "flair")]


def score_models(models, subject: Subject, count: int, seed: int, pairs=PAIRS) -> list[dict]:
    """Whole-registration figures of each model (card path or name) on the same cases (made once
    per kind of model: its dimension and whether it is pre-aligned affinely)."""
    rows, made = [], {}
    for name in models:
        path = find_model("", 0, str(name))
        model = load_model(path)[0]
        kind = (model.dim, model.predicts_affine)
        if kind not in made:
            made[kind] = registration_cases([subject], pairs, count, model, seed=seed)
        cases = made[kind]
        rows.append({"model": str(name), "dim": model.dim, **validate_registration(model, cases)})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="model cards (.json) or model names")
    parser.add_argument("--subject", choices=sorted(SUBJECTS), default="stroke")
    parser.add_argument("--cases", type=int, default=36)
    parser.add_argument("--seed", type=int, default=40_000)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    rows = score_models(args.models, benchmark_subject(args.data, args.subject), args.cases, args.seed)

    stamp, path = results_file(args.out, "whole-registration")
    lines = [f"# Whole registration of {args.cases} known-warp cases of {args.subject}, {stamp}", "",
             "`benchmarks/benchmark_whole_registration.py`: pre-alignment (`optimise`, affine), the network, the map at "
             f"full resolution; warps seeded from {args.seed}; contrast pairs {', '.join(f'{f}<-{m}' for f, m in PAIRS)} "
             "in turn (fixed <- moving); 2D models: one axial slice per case. EPE: mean endpoint error in the brain (mm).",
             "", "| model | dim | pre-alignment alone EPE | EPE | folding % |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['dim']} | {r['registration_epe_before_mm']:.3f} | {r['registration_epe_mm']:.3f} | "
              f"{r['registration_folding_percent']:.3f} |" for r in rows]
    write_lines(path, lines)


if __name__ == "__main__":
    main()
