"""Benchmark rigid, affine and default registration on raw clinical series of one visit.

Data: ``../shared/data/brain-clinical-raw`` (open_ms_data ``longitudinal/raw``, Lesjak et al.
2016): per patient folder and study ``studyK_{T1W,T2W,FLAIR}.nii.gz`` as acquired (skull and neck,
0.6-0.9 mm in-plane, 3-3.3 mm slices, different fields of view, bias fields) and the data
authors' ITK affines ``studyK_C_intrastudy_to_FLAIR.txt`` (fixed: that study's FLAIR, moving:
contrast C).  A case is one study's T1W or T2W registered to its FLAIR; a pair whose image or
transform file is missing is skipped.

Each result ``T`` is compared with the authors' affine ``R`` over the FLAIR's head: the points
``p`` of a head mask of the FLAIR (``dmmreg.image.head_mask``: Otsu threshold, largest connected
component, holes filled in 3D and in every slice), deviation ``|T(p) - R(p)|`` in mm, mean and 95th percentile.  The
authors' transform is a reference (their own registration), not the truth: a result better than
it by some other measure still shows a deviation.

Methods, each in its own process, timed as wall seconds of the process (``measure_process.py``)
and of the registration call alone (``registration s``):

* ``header``: the identity (the scanner's headers alone), no process;
* ``ours-rigid``, ``ours-affine``, ``ours-default``: ``dmmreg register --method optimise
  --transform rigid|affine|deformable --threads N`` (default: deformable); its registration
  seconds are the in-process ``register_pair`` call (the JSON progress's ``seconds``);
* ``ants-rigid``, ``ants-affine``: antspyx ``Rigid`` / ``Affine`` (Mattes MI, its defaults)
  through ``ants_worker.py`` in ``.venv-bench``;
* ``elastix-rigid``, ``elastix-affine``: itk-elastix's default ``rigid`` / ``affine`` parameter
  maps (Mattes MI) through ``elastix_worker.py`` in ``.venv-bench``.

Writes ``clinical-raw-<date>-<host>-<n>cpu.{md,csv}`` to ``--out``.  See benchmarks/README.md,
"Raw clinical visits".
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
from benchmark_registration import ANTS_WORKER, DEFAULT_ANTS_PYTHON, ELASTIX_WORKER, results_file, run_measured, write_lines
from dmmreg.image import Image, head_mask
from dmmreg.image_io import read_image
from dmmreg.result import RegistrationResult
from dmmreg.transform_io import read_result

REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPOSITORY.parent / "shared" / "data" / "brain-clinical-raw"
CONTRASTS = ("T1W", "T2W")
OURS = {"ours-rigid": "rigid", "ours-affine": "affine", "ours-default": "deformable"}
ANTS = {"ants-rigid": "Rigid", "ants-affine": "Affine"}
ELASTIX = {"elastix-rigid": "rigid", "elastix-affine": "affine"}
METHODS = ("header", *OURS, *ANTS, *ELASTIX)


def find_cases(data: Path) -> list[dict]:
    """Every (patient, study, contrast) with its moving image, the study's FLAIR and the authors'
    transform all present, sorted by name."""
    cases = []
    for flair in sorted(data.glob("*/study*_FLAIR.nii.gz")):
        study = flair.name.split("_")[0]
        for contrast in CONTRASTS:
            moving = flair.with_name(f"{study}_{contrast}.nii.gz")
            reference = flair.with_name(f"{study}_{contrast}_intrastudy_to_FLAIR.txt")
            if moving.exists() and reference.exists():
                cases.append({"case": f"{flair.parent.name}/{study} {contrast}", "fixed": flair, "moving": moving,
                              "reference": reference})
    return cases


def mask_points(image: Image, mask: np.ndarray) -> np.ndarray:
    """Physical (LPS) points of the voxels of ``mask`` (z, y, x) of ``image``."""
    return image.geometry.physical_points(np.argwhere(mask)[:, ::-1].astype(np.float64))


def deviation(result: RegistrationResult, reference: RegistrationResult, points: np.ndarray) -> tuple[float, float]:
    """Mean and 95th percentile of ``|T(p) - R(p)|`` (mm) over ``points``."""
    d = np.linalg.norm(result.resampling_points(points) - reference.resampling_points(points), axis=1)
    return float(d.mean()), float(np.percentile(d, 95))


def run_ours(case: dict, transform: str, folder: Path, threads: int) -> tuple[Path, float, float]:
    out = folder / f"ours-{transform}.h5"
    log = folder / f"ours-{transform}.log"
    command = [sys.executable, "-m", "dmmreg", "register", "--fixed", str(case["fixed"]), "--moving", str(case["moving"]),
               "--output-transform", str(out), "--method", "optimise", "--transform", transform, "--device", "cpu",
               "--threads", str(threads), "--progress", "json"]
    seconds, _ = run_measured(command, log)
    done = json.loads(log.read_text().strip().splitlines()[-1])
    return out, seconds, float(done.get("seconds", math.nan))


def run_worker(python: Path, worker: Path, case: dict, kind: str, folder: Path, threads: int, name: str):
    out_dir = folder / name
    command = [str(python), str(worker), "--fixed", str(case["fixed"]), "--moving", str(case["moving"]), "--type", kind,
               "--out-dir", str(out_dir), "--threads", str(threads)]
    seconds, _ = run_measured(command, folder / f"{name}.log")
    timing = json.loads((out_dir / "timing.json").read_text())
    return out_dir / "displacement.nii.gz", seconds, float(timing["registration_seconds"])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--cases", nargs="+", help="only cases whose name contains one of these (e.g. p20/study2)")
    parser.add_argument("--threads", type=int, default=1, help="threads of every tool (default 1)")
    parser.add_argument("--bench-python", type=Path, default=DEFAULT_ANTS_PYTHON,
                        help="python of the virtualenv with antspyx and itk-elastix (benchmarks/README.md)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--keep-work", type=Path, help="keep the transforms and logs in this folder")
    return parser.parse_args(argv)


COLUMNS = ("mean_mm", "p95_mm", "seconds", "registration_seconds")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    cases = [c for c in find_cases(args.data) if not args.cases or any(k in c["case"] for k in args.cases)]
    if not cases:
        print(f"no cases in {args.data}")
        return 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="dmmreg-raw-") as scratch:
        work = args.keep_work or Path(scratch)
        for case in cases:
            fixed, moving = read_image(case["fixed"]), read_image(case["moving"])
            reference = read_result(case["reference"], fixed.geometry, moving.geometry)
            points = mask_points(fixed, head_mask(fixed.array))
            folder = work / case["case"].replace("/", "-").replace(" ", "-")
            folder.mkdir(parents=True, exist_ok=True)
            for method in args.methods:
                row = {"case": case["case"], "method": method, "error": ""}
                try:
                    if method == "header":
                        path, seconds, registration = None, math.nan, math.nan
                    elif method in OURS:
                        path, seconds, registration = run_ours(case, OURS[method], folder, args.threads)
                    elif method in ANTS:
                        path, seconds, registration = run_worker(args.bench_python, ANTS_WORKER, case, ANTS[method], folder,
                                                                 args.threads, method)
                    else:
                        path, seconds, registration = run_worker(args.bench_python, ELASTIX_WORKER, case, ELASTIX[method],
                                                                 folder, args.threads, method)
                    result = (RegistrationResult(fixed.geometry, moving.geometry, np.eye(4)) if path is None
                              else read_result(path, fixed.geometry, moving.geometry))
                    mean, p95 = deviation(result, reference, points)
                    row.update(mean_mm=mean, p95_mm=p95, seconds=seconds, registration_seconds=registration)
                except (RuntimeError, OSError, ValueError) as exc:
                    row["error"] = str(exc)
                print(f"{case['case']:<26} {method:<15} " + (row["error"] or " ".join(
                    f"{k} {row[k]:.2f}" for k in COLUMNS)), flush=True)
                rows.append(row)
    write_results(rows, cases, args)
    return 0


def _cell(value: float, fmt: str = "{:.2f}") -> str:
    return "" if value is None or not math.isfinite(value) else fmt.format(value)


def write_results(rows: list[dict], cases: list[dict], args) -> None:
    stamp, path = results_file(args.out, "clinical-raw")
    with open(path.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["case", "method", *COLUMNS, "error"])
        writer.writeheader()
        writer.writerows(rows)
    methods = list(dict.fromkeys(row["method"] for row in rows))
    header = "| case | " + " | ".join(methods) + " |"
    lines = [f"# Raw clinical visits, {stamp}, {platform.node().split('.')[0]}, {os.cpu_count()} CPUs, "
             f"{args.threads} thread(s) per tool", "",
             f"Data: `{args.data}`, {len(cases)} cases (each study's T1W/T2W to its FLAIR).  Deviation from the "
             "data authors' affine over the FLAIR's head mask, mean / 95th percentile (mm); seconds: whole process "
             "(registration call alone).  Command: `python benchmarks/benchmark_clinical_raw.py "
             + " ".join(argv_text(args)) + "`", "",
             "## Deviation mean / p95 (mm)", "", header, "|---|" + "---|" * len(methods)]
    by = {(row["case"], row["method"]): row for row in rows}
    names = list(dict.fromkeys(row["case"] for row in rows))
    for name in names:
        lines.append(f"| {name} | " + " | ".join(
            (f"{by[name, m]['mean_mm']:.2f} / {by[name, m]['p95_mm']:.2f}" if not by[name, m]["error"] else "failed")
            for m in methods) + " |")
    lines.append("| **mean** | " + " | ".join(
        "{:.2f} / {:.2f}".format(*_means(rows, m, ("mean_mm", "p95_mm"))) for m in methods) + " |")
    lines += ["", "## Seconds: process (registration call)", "", header, "|---|" + "---|" * len(methods)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(
            _seconds(by[name, m].get("seconds", math.nan), by[name, m].get("registration_seconds", math.nan))
            for m in methods) + " |")
    lines.append("| **mean** | " + " | ".join(
        _seconds(*_means(rows, m, ("seconds", "registration_seconds"))) for m in methods) + " |")
    failures = [f"- {row['case']} {row['method']}: {row['error']}" for row in rows if row["error"]]
    if failures:
        lines += ["", "## Failures", "", *failures]
    write_lines(path, lines)


def _seconds(process: float, call: float) -> str:
    return "-" if not math.isfinite(process) else f"{_cell(process, '{:.1f}')} ({_cell(call, '{:.1f}')})"


def _means(rows: list[dict], method: str, keys) -> list[float]:
    done = [row for row in rows if row["method"] == method and not row["error"]]
    return [float(np.mean([row[k] for row in done])) if done else math.nan for k in keys]


def argv_text(args) -> list[str]:
    out = []
    if args.methods != list(METHODS):
        out += ["--methods", *args.methods]
    if args.cases:
        out += ["--cases", *args.cases]
    if args.threads != 1:
        out += ["--threads", str(args.threads)]
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
