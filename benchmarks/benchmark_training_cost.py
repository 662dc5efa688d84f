"""What one training update of each learned method costs, by model grid: the figure that sizes a
training run (how many updates a machine can give in an hour).

For each method and grid (``DIM:SPACING_MM``), the method's network at its paper's default size
is trained by the shared :class:`~dmmreg.training.trainer.Trainer` (mixed precision on CUDA, as ``dmmreg
train`` runs it) for ``--updates`` updates per stage on known-warp pairs of the bundled stroke
subject (``PairSampler``, the ``prealigned`` augmentation, 2D models on its axial slices); the
first update of each stage (warm-up) is not counted.  Reports seconds per update, the hours
10^5 updates would take, and on CUDA the peak GPU memory.  Writes
``training-cost-<date>-<host>-<n>cpu.md`` to ``--out``.

    python benchmarks/benchmark_training_cost.py [--methods midir ...] [--grids 3:4 3:2 2:2] [--device auto]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from benchmark_registration import results_file, write_lines

from dmmreg.training import augmentation
from dmmreg.training.cohorts import Subject
from dmmreg.errors import InputError
from dmmreg.methods import LEARNED_METHODS, method_class
from dmmreg.training.trainer import Trainer
from dmmreg.training.pairs import PairSampler, PairSettings, load_subject
from dmmreg.training.jobs import resolve_device

STROKE = Path(__file__).resolve().parents[1] / "Resources" / "SampleData" / "stroke"
MARGIN_MM = 16.0


def update_seconds(history: list[dict]) -> dict[str, float]:
    """Mean seconds per update of each stage from a trainer's history (``seconds`` counts on from
    the start), leaving out each stage's first update."""
    per_stage: dict[str, list[float]] = {}
    previous = None
    for record in (r for r in history if r["kind"] == "train"):
        times = per_stage.setdefault(record["stage"], [])
        if previous is not None and previous["stage"] == record["stage"]:
            times.append(record["seconds"] - previous["seconds"])
        previous = record
    return {stage: float(np.mean(times)) if times else float("nan") for stage, times in per_stage.items()}


def training_cost(name: str, dim: int, spacing_mm: float, updates: int, device: torch.device) -> list[dict]:
    """Rows (one per stage) of seconds per update of method ``name`` on a ``spacing_mm`` grid."""
    subject = Subject("stroke", {c.lower(): STROKE / f"{c}.nii.gz" for c in ("T1", "T2", "FLAIR")})
    volumes = load_subject(subject, spacing_mm, MARGIN_MM)
    sampler = PairSampler([volumes], PairSettings(dim=dim, spatial=augmentation.PREALIGNED))
    cls = method_class(name)
    torch.manual_seed(0)
    model = cls(cls.config_class(dim=dim, spacing_mm=spacing_mm))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    row = {"method": name, "dim": dim, "spacing_mm": spacing_mm, "grid": "x".join(map(str, sampler(0).geometry.size))}
    try:
        history = Trainer(model, sampler, {stage: updates + 1 for stage in cls.stages}, epoch_steps=10**9,
                          device=device).run()
    except InputError as error:  # a default network that does not fit the grid
        return [{**row, "stage": "-", "seconds": float("nan"), "peak_mb": float("nan"), "note": str(error)}]
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return [{**row, "stage": stage, "seconds": seconds, "peak_mb": peak, "note": ""}
            for stage, seconds in update_seconds(history).items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", choices=LEARNED_METHODS, default=list(LEARNED_METHODS))
    parser.add_argument("--grids", nargs="+", default=["3:4", "3:2", "2:2"], help="DIM:SPACING_MM of the model grids")
    parser.add_argument("--updates", type=int, default=3, help="timed updates per stage (after one warm-up update)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    rows = []
    for grid in args.grids:
        dim, spacing = grid.split(":")
        for name in args.methods:
            rows += training_cost(name, int(dim), float(spacing), args.updates, device)
            print(rows[-1], flush=True)
    stamp, path = results_file(args.out, "training-cost")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    lines = [f"# Cost of one training update, {stamp}, {where}", "",
             "`benchmarks/benchmark_training_cost.py`: each method's network at its default (paper) size, trained by "
             f"the shared trainer for {args.updates} timed updates per stage (after one warm-up update) on known-warp "
             "pairs of the bundled stroke subject (`prealigned` augmentation; 2D: axial slices); "
             "batches of one pair.", "",
             "| method | dim | grid mm | model grid | stage | seconds per update | hours for 10^5 updates | peak GPU MB | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    peak = lambda r: "-" if np.isnan(r["peak_mb"]) else f"{r['peak_mb']:.0f}"  # noqa: E731
    lines += [f"| {r['method']} | {r['dim']} | {r['spacing_mm']:g} | {r['grid']} | {r['stage']} | {r['seconds']:.3f} | "
              f"{r['seconds'] * 1e5 / 3600:.1f} | {peak(r)} | {r['note']} |" for r in rows]
    write_lines(path, lines)


if __name__ == "__main__":
    main()
