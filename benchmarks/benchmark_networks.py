"""Inference cost of each learned method's default 3D network, at the papers' sizes (not its
accuracy: the networks are freshly initialised, as the cost does not depend on the weights;
the bundled models' accuracy is measured by ``benchmark_registration.py --models``).

For each method: parameters, the size of its weights file, and the seconds and peak memory of
one ``dmmreg register --method NAME --model M`` run (affine pre-alignment, network on the 2 mm
model grid, writing the transform) on the bundled stroke T1 against its known-warp-deformed T2,
each in its own process measured as ``benchmark_registration.run_measured`` does.  Writes
``networks-<date>-<host>-<n>cpu.md`` to ``--out``.

    python benchmarks/benchmark_networks.py [--methods fire midir ...] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from benchmark_registration import results_file, run_measured, write_lines

from dmmreg.image_io import read_image, write_image
from dmmreg.known_warp import deform, random_known_warp
from dmmreg.methods import LEARNED_METHODS, method_class
from dmmreg.model_io import save_model

REPOSITORY = Path(__file__).resolve().parents[1]
STROKE = REPOSITORY / "Resources" / "SampleData" / "stroke"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", choices=LEARNED_METHODS, default=list(LEARNED_METHODS))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="dmmreg-networks-") as scratch:
        work = Path(scratch)
        t2 = read_image(STROKE / "T2.nii.gz")
        write_image(deform(t2, random_known_warp(t2.geometry, 0, mask=t2.array > 0)), work / "fixed.nii.gz")
        for name in args.methods:
            cls = method_class(name)
            torch.manual_seed(0)
            model = cls(cls.config_class(dim=3))
            weights = work / f"{name}.safetensors"
            save_model(model, weights)
            command = [sys.executable, "-m", "dmmreg", "register", "--fixed", str(work / "fixed.nii.gz"),
                       "--moving", str(STROKE / "T1.nii.gz"), "--method", name, "--model", str(weights),
                       "--output-transform", str(work / f"{name}.h5"), "--progress", "none"]
            try:
                seconds, peak, outcome = *run_measured(command, work / f"{name}.log"), "ok"
            except RuntimeError as error:
                seconds, peak, outcome = float("nan"), float("nan"), f"failed: {error}"
            rows.append((name, sum(p.numel() for p in model.parameters()), weights.stat().st_size / 2**20,
                         seconds, peak, outcome))
            print(f"{name}: {rows[-1]}", flush=True)
    stamp, path = results_file(args.out, "networks")
    lines = [f"# Default 3D networks, inference cost, {stamp}, {os.cpu_count()} CPUs", "",
             "Stroke T1 to its known-warp-deformed T2 (124x160x140, 1 mm), model grid 2 mm, untrained weights; "
             "seconds and peak memory of the whole `dmmreg register` process (pre-alignment included).", "",
             "| method | parameters | weights MB | seconds | peak MB | run |", "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {p:,} | {mb:.1f} | {s:.1f} | {m:.0f} | {c} |" for n, p, mb, s, m, c in rows]
    write_lines(path, lines)


if __name__ == "__main__":
    main()
