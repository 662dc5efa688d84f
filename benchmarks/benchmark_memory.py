"""Peak memory and seconds of ``dmmreg register`` on a large volume (issue 18: under 8 GB on CPU
for 512x512x400).

The pair: the bundled stroke T1 (moving) and T2 (fixed) resampled by SimpleITK (linear) onto a
``--size`` grid over the same field of view (default 512x512x400: about 0.24 x 0.31 x 0.35 mm
voxels, 105 million per image), the T2 through the known warp of ``--seed``
(``dmmreg.known_warp.random_known_warp`` on that grid), so the warp is the exact answer.

Each ``--outputs`` setting runs ``dmmreg register --method optimise --threads 1`` as its own
process under ``measure_process.py`` (wall seconds, and the peak resident memory of the process:
``wait4``'s ``ru_maxrss``): ``transform`` writes the transform only (the registration
benchmark's command), ``all`` also the inverse transform and the warped moving volume.  Each run
is scored by the mean endpoint error against the known warp at ``--points`` random brain voxels
(mm).  Writes ``memory-<date>-<host>-<n>cpu.md`` to ``--out``.

    .venv/bin/python benchmarks/benchmark_memory.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmark_registration import MEASURE, results_file, write_lines

from dmmreg.geometry import Geometry
from dmmreg.image_io import geometry_from_sitk
from dmmreg.known_warp import random_known_warp
from dmmreg.transform_io import read_result, to_sitk_transform

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "Resources" / "SampleData" / "stroke"
LIMIT_GB = 8.0


def large_grid(geometry: Geometry, size: tuple[int, int, int]) -> Geometry:
    """``geometry``'s field of view (same centre, direction and extent) sampled with ``size`` voxels (x, y, z)."""
    spacing = geometry.extent / (np.asarray(size) - 1)
    origin = geometry.centre - geometry.direction @ (geometry.extent / 2)
    return Geometry(tuple(size), tuple(spacing), tuple(origin), geometry.direction)


def make_pair(size: tuple[int, int, int], seed: int, points: int, folder: Path):
    """Write ``fixed.nii.gz`` (T2 through the known warp) and ``moving.nii.gz`` (T1) on the large
    grid; returns the known warp (on the large grid) and ``points`` random physical points (LPS,
    mm) of the fixed image's brain (its non-zero voxels)."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    t1, t2 = (sitk.ReadImage(str(SAMPLES / name), sitk.sitkFloat32) for name in ("T1.nii.gz", "T2.nii.gz"))
    original = geometry_from_sitk(t2)
    # the warp is physical: made on the bundled grid, it holds on the large grid's (same) field of view
    truth = random_known_warp(original, seed, mask=sitk.GetArrayViewFromImage(t2) > 0)
    grid = large_grid(original, size)
    truth.fixed_geometry = grid
    reference = sitk.Image(grid.size, sitk.sitkFloat32)
    reference.SetSpacing(grid.spacing)
    reference.SetOrigin(grid.origin)
    reference.SetDirection(tuple(grid.direction.ravel()))
    fixed = sitk.Resample(t2, reference, to_sitk_transform(truth), sitk.sitkLinear, 0.0)
    moving = sitk.Resample(t1, reference, sitk.Transform(), sitk.sitkLinear, 0.0)
    sitk.WriteImage(fixed, str(folder / "fixed.nii.gz"), True)
    sitk.WriteImage(moving, str(folder / "moving.nii.gz"), True)
    values = sitk.GetArrayViewFromImage(fixed).ravel()
    candidates = np.random.default_rng(seed).integers(0, values.size, 20 * points)
    inside = candidates[values[candidates] > 0][:points]
    index_xyz = np.stack(np.unravel_index(inside, grid.shape)[::-1], axis=-1).astype(np.float64)
    return truth, index_xyz @ grid.index_to_physical[:3, :3].T + grid.index_to_physical[:3, 3]


def endpoint_error(transform: Path, truth, points: np.ndarray) -> float:
    """Mean ``|T(p) - G(p)|`` (mm) at physical ``points`` (N, 3), ``T`` read from ``transform``."""
    estimate = read_result(transform, truth.fixed_geometry, truth.moving_geometry)
    return float(np.linalg.norm(estimate.resampling_points(points) - truth.resampling_points(points), axis=-1).mean())


def run(outputs: str, folder: Path) -> dict:
    """One measured ``dmmreg register`` process writing ``outputs`` ("transform" or "all")."""
    command = [sys.executable, "-m", "dmmreg", "register", "--fixed", str(folder / "fixed.nii.gz"),
               "--moving", str(folder / "moving.nii.gz"), "--output-transform", str(folder / f"{outputs}.h5"),
               "--method", "optimise", "--threads", "1", "--progress", "none"]
    if outputs == "all":
        command += ["--output-inverse-transform", str(folder / "inverse.h5"),
                    "--output-volume", str(folder / "warped.nii.gz")]
    figures = folder / f"{outputs}.json"
    subprocess.run([sys.executable, str(MEASURE), str(figures), *command], check=True)
    return json.loads(figures.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=3, default=(512, 512, 400), metavar=("X", "Y", "Z"))
    parser.add_argument("--seed", type=int, default=3, help="known warp")
    parser.add_argument("--outputs", nargs="+", default=("transform", "all"), choices=("transform", "all"))
    parser.add_argument("--points", type=int, default=200_000, help="brain voxels the endpoint error is measured at")
    parser.add_argument("--note", default="", help="a line about the machine's load, written to the results")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        start = time.perf_counter()
        truth, brain_points = make_pair(tuple(args.size), args.seed, args.points, folder)
        grid = truth.fixed_geometry
        print(f"pair made in {time.perf_counter() - start:.0f} s", flush=True)
        for outputs in args.outputs:
            measured = run(outputs, folder)
            error = endpoint_error(folder / f"{outputs}.h5", truth, brain_points)
            rows.append((outputs, measured, error))
            print(outputs, f"{measured['seconds']:.1f} s, {measured['peak_mb'] / 1024:.2f} GB, {error:.2f} mm", flush=True)

    stamp, path = results_file(args.out, "memory")
    size = "x".join(map(str, args.size))
    lines = [f"# Peak memory of `dmmreg register` on a {size} volume, {stamp}", "",
             f"`benchmarks/benchmark_memory.py --size {' '.join(map(str, args.size))} --seed {args.seed}`: the bundled "
             f"stroke T1 (moving) and T2 (fixed, through known warp {args.seed}) resampled onto {size} voxels of "
             f"{' x '.join(f'{s:.3f}' for s in grid.spacing)} mm (float32 NIfTI); `dmmreg register --method optimise "
             "--threads 1` (default quality), one process each, on the CPU.  Peak memory: the process's peak resident "
             f"set (`ru_maxrss`); limit {LIMIT_GB:g} GB.  Endpoint error: mean at {args.points} random brain voxels.", "",
             f"Machine: 2-core VM; {args.note}", "",
             "| outputs | s | peak GB | under the limit | mean endpoint error (mm) |", "|---|---|---|---|---|"]
    names = {"transform": "transform (.h5)", "all": "transform, inverse transform, warped volume"}
    for outputs, measured, error in rows:
        peak_gb = measured["peak_mb"] / 1024
        lines.append(f"| {names[outputs]} | {measured['seconds']:.1f} | {peak_gb:.2f} | "
                     f"{'yes' if peak_gb < LIMIT_GB else 'no'} | {error:.2f} |")
    write_lines(path, lines)


if __name__ == "__main__":
    main()
