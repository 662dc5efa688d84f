"""Cine MRI (2D+t) as the FIRE paper registers it (issue 17 item 4, issue 18 item 3): the
end-diastolic (ED) myocardium carried to end-systole (ES) on the 18 ACDC slices of
``../shared/data/cardiac/acdc-cine`` (six patients, apical/middle/basal), scored against the ES
mask (Dice, HD95 in mm), with folding (% of fixed-grid pixels with det J <= 0) and seconds.

Rows, each over every slice:

* ``identity``: the ED mask left where it is;
* ``optimise, pair defaults``: ``register_pair(fixed=ES frame, moving=ED frame)`` with the
  method's defaults (what ``dmmreg register`` does), the ED mask resampled through the result
  onto the ES grid (linear interpolation of the mask, > 0.5);
* ``optimise, cine settings``: the same pair with :func:`dmmreg.sequence.cine_optimise_settings`
  (what ``dmmreg register-sequence`` uses for 2D frames);
* ``sequence (ED reference)``: as ``dmmreg register-sequence --reference ED --reference-mask``:
  the ES frame registered to the ED frame (fixed = ED) with the cine settings, the ED mask carried
  onto the ES frame through the inverse transform.

No learned method has a bundled 2D model yet, so only ``optimise`` is scored.  Timing, whole
processes (``measure_process.py``): ``dmmreg register`` on each slice's ES/ED pair, and
``dmmreg register-sequence`` on every frame of ``--sequences`` slices (reference ED).
Writes ``cine-<date>-<host>-<n>cpu.md`` and ``.csv``.

    .venv/bin/python benchmarks/benchmark_cine.py --threads 1
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from benchmark_registration import MEASURE, REPOSITORY, results_file, write_lines

from dmmreg.image_io import read_image
from dmmreg.metrics import dice_per_label, hausdorff95_per_label, jacobian_statistics
from dmmreg.registration import register_pair
from dmmreg.sequence import cine_optimise_settings, propagate_mask, read_series, warp_mask

DEFAULT_DATA = REPOSITORY.parent / "shared" / "data" / "cardiac" / "acdc-cine"
ROWS = ("identity", "optimise, pair defaults", "optimise, cine settings", "sequence (ED reference)")


def slice_case(folder: Path) -> dict:
    """ED and ES frames and masks of one slice folder (``Frame/``, ``GT/``: the masks' names give
    the ED and ES frame numbers, ED first)."""
    masks = sorted(folder.glob("GT/*.nii*"), key=lambda p: int(re.search(r"frame_(\d+)", p.name).group(1)))
    numbers = [int(re.search(r"frame_(\d+)", p.name).group(1)) for p in masks]
    frames = {int(re.search(r"frame_(\d+)", p.name).group(1)): p for p in folder.glob("Frame/*.nii*")}
    return {"name": folder.name, "ed_frame": numbers[0], "es_frame": numbers[1],
            "ed": read_image(frames[numbers[0]]), "es": read_image(frames[numbers[1]]),
            "ed_mask": read_image(masks[0]), "es_mask": read_image(masks[1]),
            "ed_path": frames[numbers[0]], "es_path": frames[numbers[1]], "ed_mask_path": masks[0],
            "frames": len(frames)}


def score(case: dict, propagated: np.ndarray) -> dict:
    truth = case["es_mask"].array > 0
    return {"dice": dice_per_label(truth, propagated, labels=[1])[1],
            "hd95": hausdorff95_per_label(truth.astype(np.uint8), propagated.astype(np.uint8), case["es"].geometry, labels=[1])[1]}


def rows_of(case: dict) -> dict[str, dict]:
    ed_mask = case["ed_mask"].with_array((case["ed_mask"].array > 0).astype(np.uint8))
    out = {"identity": {**score(case, ed_mask.array > 0), "folding": 0.0, "seconds": 0.0}}
    cine = cine_optimise_settings(case["es"].geometry)
    for row, fixed, moving, settings, carry in (
            ("optimise, pair defaults", case["es"], case["ed"], {}, warp_mask),
            ("optimise, cine settings", case["es"], case["ed"], cine, warp_mask),
            ("sequence (ED reference)", case["ed"], case["es"], cine, propagate_mask)):
        start = time.perf_counter()
        result = register_pair(fixed, moving, method="optimise", device="cpu", **settings)
        seconds = time.perf_counter() - start
        propagated = carry(result, ed_mask).array > 0
        folding = jacobian_statistics(result.jacobian_determinant())["folding_percent"]
        out[row] = {**score(case, propagated), "folding": folding, "seconds": seconds}
    return out


def timed(command: list[str], threads: int) -> dict:
    """Wall seconds and peak memory of ``command`` run as its own process (``measure_process.py``)."""
    with tempfile.TemporaryDirectory() as folder:
        record = Path(folder) / "measure.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        run = subprocess.run([sys.executable, str(MEASURE), str(record), *command], env=env, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{run.stderr[-2000:]}")
        return json.loads(record.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sequences", type=int, default=3, help="slices whose whole sequence is timed (0: none)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sitk.ProcessObject_SetGlobalWarningDisplay(False)  # ACDC headers: "unexpected scales in sform"
    folders = sorted(p for p in args.data.iterdir() if (p / "GT").is_dir())
    dmmreg = [sys.executable, "-m", "dmmreg"]
    table, csv_rows = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for folder in folders:
            case = slice_case(folder)
            rows = rows_of(case)
            pair = timed([*dmmreg, "register", "--fixed", case["es_path"], "--moving", case["ed_path"], "--output-transform",
                          f"{scratch}/pair.h5", "--threads", str(args.threads), "--progress", "none"], args.threads)
            rows["optimise, pair defaults"]["process_seconds"] = pair["seconds"]
            table.append((case, rows))
            for row, values in rows.items():
                csv_rows.append({"slice": case["name"], "ed_frame": case["ed_frame"], "es_frame": case["es_frame"], "row": row,
                                 **{k: round(float(v), 4) for k, v in values.items()}})
            print(case["name"], {r: f"{v['dice']:.3f}/{v['hd95']:.1f}" for r, v in rows.items()}, f"pair {pair['seconds']:.1f} s",
                  flush=True)
        sequences = []
        for folder in folders[:: max(1, len(folders) // args.sequences)][: args.sequences] if args.sequences else []:
            case = slice_case(folder)
            out = Path(scratch) / f"sequence-{folder.name}"
            series = read_series(folder / "Frame")
            reference = series.names.index(Path(case["ed_path"]).name.split(".nii")[0])
            measured = timed([*dmmreg, "register-sequence", "--frames", folder / "Frame", "--reference", str(reference),
                              "--output-folder", out, "--reference-mask", case["ed_mask_path"], "--threads",
                              str(args.threads), "--progress", "none"], args.threads)
            es_mask = read_image(out / f"{Path(case['es_path']).name.split('.nii')[0]}_mask.nii.gz").array > 0
            sequences.append({"slice": folder.name, "frames": len(series), "seconds": measured["seconds"],
                              "peak_mb": measured["peak_mb"], "es_dice": score(case, es_mask)["dice"]})
            print("sequence", sequences[-1], flush=True)

    stamp, path = results_file(args.out, "cine")
    with open(path.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for r in csv_rows for k in r)))
        writer.writeheader()
        writer.writerows(csv_rows)
    lines = [f"# Cine: ED myocardium carried to ES, {stamp}", "",
             f"`benchmarks/benchmark_cine.py --threads {args.threads} --sequences {args.sequences}` on "
             f"{len(folders)} ACDC slices ({args.data.name}); {args.threads} CPU thread(s). Dice and HD95 (mm) of the "
             "carried ED myocardium against the ES mask; folding: % of pixels with det J <= 0; s: one in-process "
             "`register_pair`; pair process: the whole `dmmreg register` process on the ES/ED pair (defaults). "
             f"Cine settings: `{cine_optimise_settings(table[0][0]['es'].geometry)}` (finest level = pixel spacing).",
             "", "| slice | ED, ES | identity Dice / HD95 | defaults Dice / HD95 / fold % / s | cine Dice / HD95 / fold % / s | "
             "sequence (ED ref.) Dice / HD95 / fold % / s | pair process s |", "|---|---|---|---|---|---|---|"]

    def cell(values: dict, timing: bool = True) -> str:
        text = f"{values['dice']:.3f} / {values['hd95']:.2f}"
        return text + (f" / {values['folding']:.2f} / {values['seconds']:.2f}" if timing else "")

    for case, rows in table:
        lines.append(f"| {case['name']} | {case['ed_frame']}, {case['es_frame']} | {cell(rows['identity'], False)} | "
                     f"{cell(rows['optimise, pair defaults'])} | {cell(rows['optimise, cine settings'])} | "
                     f"{cell(rows['sequence (ED reference)'])} | {rows['optimise, pair defaults']['process_seconds']:.2f} |")
    mean = {row: {k: float(np.mean([rows[row][k] for _, rows in table])) for k in ("dice", "hd95", "folding", "seconds")}
            for row in ROWS}
    process = float(np.mean([rows["optimise, pair defaults"]["process_seconds"] for _, rows in table]))
    lines.append(f"| **mean** | | {cell(mean['identity'], False)} | {cell(mean['optimise, pair defaults'])} | "
                 f"{cell(mean['optimise, cine settings'])} | {cell(mean['sequence (ED reference)'])} | {process:.2f} |")
    lines.append("")
    for row in ROWS[1:]:
        above = sum(rows[row]["dice"] > rows["identity"]["dice"] for _, rows in table)
        worst = min(rows[row]["dice"] - rows["identity"]["dice"] for _, rows in table)
        folded = max(rows[row]["folding"] for _, rows in table)
        lines.append(f"- {row}: Dice above identity on {above} of {len(table)} slices (smallest gain {worst:+.3f}), "
                     f"largest folding {folded:.3f} %.")
    if sequences:
        lines += ["", "Whole `dmmreg register-sequence` processes (every frame to the ED frame, ED mask carried to each "
                  "frame, cine settings):", "", "| slice | frames | seconds | s / frame | peak MB | ES Dice |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {s['slice']} | {s['frames']} | {s['seconds']:.1f} | {s['seconds'] / s['frames']:.2f} | "
                  f"{s['peak_mb']:.0f} | {s['es_dice']:.3f} |" for s in sequences]
    write_lines(path, lines)


if __name__ == "__main__":
    main()
