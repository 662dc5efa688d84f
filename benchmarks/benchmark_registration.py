"""Benchmark multi-modal registration on known-warp cases built from real, aligned brains.

A case is (subject, fixed contrast, seed).  The fixed image is the subject's T2 or FLAIR deformed
by a random known warp ``G`` (``dmmreg.known_warp.random_known_warp``, seeded, its non-rigid
magnitude measured in the brain), the moving image is the subject's original T1.  As the
contrasts are aligned, ``G`` is the exact resampling transform from the fixed to the moving image.

Each method's estimate ``T`` is scored on the fixed grid:

* endpoint error ``|T(p) - G(p)|`` (mm), mean and 95th percentile over the brain mask of the
  fixed image (the fixed contrast's non-zero voxels, holes filled, deformed by ``G``);
* Dice of 3 tissue classes: a 1D k-means of the fixed contrast's original intensities inside
  its brain (3 clusters, initialised at the 1/6, 1/2, 5/6 quantiles; classes 1-3 by increasing
  mean intensity, e.g. on T2 roughly white matter, grey matter, CSF), a label map in moving
  space, warped once by ``G`` and once by ``T`` (nearest neighbour) and compared;
* folding (% of brain voxels with det(grad T) <= 0) and the std of log det (``dmmreg.metrics``);
* wall seconds and peak resident memory (MB) of the process that registered (a subprocess:
  ``dmmreg register`` in this virtualenv, ANTs and elastix through ``ants_worker.py`` and
  ``elastix_worker.py`` in ``.venv-bench``).

Methods: ``identity`` (no registration: the starting point), ``optimise`` (``dmmreg register
--method optimise``), ``ants-affine`` / ``ants-syn`` (antspyx 'Affine' / 'SyN', mutual
information), ``elastix`` (itk-elastix's default "affine" then "bspline" parameter maps, Mattes
mutual information, the B-spline map with its bending energy penalty), with ``--include-syn-s``,
``ants-syn-s`` ('antsRegistrationSyN[s]', slow), and with ``--models NAME ... --refine N ...``
trained models, each network alone (``--refine 0``) or refined by N optimise iterations
(``NAME+refineN``); "registration s" is the registration without the process start-up.  The
ANTs and elastix transforms are read as displacement fields; each is checked by resampling the
moving image through it and comparing with the tool's own warped image (``conversion_check_percent``).

Writes ``registration-<date>-<host>-<n>cpu.csv`` and ``.md`` (a table per case, a mean per
method, and the ratios to ``ants-syn``: median over the cases of SyN's seconds / the method's,
and the method's mean EPE / SyN's) to ``--out``.  See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from dmmreg import metrics
from dmmreg.training.cohorts import Subject
from dmmreg.image import Image
from dmmreg.image_io import read_image, write_image
from dmmreg.known_warp import deform, endpoint_error, random_known_warp
from dmmreg.result import RegistrationResult
from dmmreg.transform_io import read_result

REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPOSITORY.parent / "shared" / "data" / "brain-multicontrast"
DEFAULT_ANTS_PYTHON = REPOSITORY / ".venv-bench" / "bin" / "python"
ANTS_WORKER = Path(__file__).resolve().parent / "ants_worker.py"
ELASTIX_WORKER = Path(__file__).resolve().parent / "elastix_worker.py"
MEASURE = Path(__file__).resolve().parent / "measure_process.py"

# file names of each subject's contrasts (all on one grid, aligned)
SUBJECTS = {
    "stroke": {"T1": "T1.nii.gz", "T2": "T2.nii.gz", "FLAIR": "FLAIR.nii.gz"},
    "aurora-met": {"T1": "t1.nii.gz", "T2": "t2.nii.gz", "FLAIR": "flair.nii.gz"},
    "tcga-du-7294": {"T1": "t1.nii.gz", "T2": "t2.nii.gz", "FLAIR": "fla.nii.gz"},
}


def benchmark_subject(data: Path, name: str, contrasts=("t1", "t2", "flair")) -> Subject:
    """Subject ``name`` of ``data`` (a folder laid out as ``SUBJECTS``) with ``contrasts`` (lower case)."""
    return Subject(name, {c: data / name / SUBJECTS[name][c.upper()] for c in contrasts})


ANTS_TRANSFORMS = {"ants-affine": "Affine", "ants-syn": "SyN", "ants-syn-s": "antsRegistrationSyN[s]"}
ELASTIX_TYPES = {"elastix": "affine-bspline"}  # elastix_worker.py --type
METHODS = ("identity", "optimise", "ants-affine", "ants-syn", "elastix")  # ants-syn-s: --include-syn-s
RATIO_REFERENCE = "ants-syn"  # the method the ratios table compares with
TISSUE_CLASSES = 3
# a converted ANTs or elastix transform must reproduce the tool's warped image to this fraction of the range
CONVERSION_CHECK_TOLERANCE_PERCENT = 1.0


@dataclass
class Case:
    """A known-warp test case; images and masks of the fixed grid are arrays (z, y, x)."""

    name: str
    fixed_path: Path
    moving_path: Path
    moving: Image
    truth: RegistrationResult
    brain: np.ndarray  # fixed grid
    tissue: Image  # moving grid, classes 1..TISSUE_CLASSES
    truth_tissue: np.ndarray  # tissue warped by the truth, fixed grid


@dataclass
class Run:
    """What a method returned for a case: its estimate and the cost of the process that made it."""

    estimate: RegistrationResult
    seconds: float
    peak_memory_mb: float
    registration_seconds: float = math.nan  # registration alone, when the method reports it
    conversion_check_percent: float = math.nan  # ANTs and elastix only


def brain_mask(image: Image) -> np.ndarray:
    """Non-zero voxels of a skull-stripped image, holes filled."""
    return ndimage.binary_fill_holes(image.array != 0)


def tissue_classes(image: Image, brain: np.ndarray, classes: int = TISSUE_CLASSES, iterations: int = 100) -> Image:
    """1D k-means of the intensities inside ``brain`` (Lloyd's algorithm from the quantiles
    (2k+1)/(2 classes)); labels 1..classes by increasing mean intensity, 0 outside the brain."""
    values = image.array[brain].astype(np.float64)
    centres = np.quantile(values, (np.arange(classes) + 0.5) / classes)
    for _ in range(iterations):
        nearest = np.argmin(np.abs(values[:, None] - centres), axis=1)
        updated = np.array([values[nearest == k].mean() for k in range(classes)])
        if np.allclose(updated, centres):
            break
        centres = updated
    labels = np.zeros(image.array.shape, dtype=np.uint8)
    labels[brain] = nearest + 1  # 1D Lloyd iterations keep the centres in increasing order
    return image.with_array(labels)


def build_case(data_dir: Path, subject: str, contrast: str, seed: int, work_dir: Path) -> Case:
    """Deform the subject's ``contrast`` by the known warp of ``seed`` into the fixed image."""
    files = SUBJECTS[subject]
    moving_path = data_dir / subject / files["T1"]
    original = read_image(data_dir / subject / files[contrast], f"{subject} {contrast}")
    brain = brain_mask(original)
    truth = random_known_warp(original.geometry, seed, mask=brain)
    name = f"{subject}-{contrast}-seed{seed}"
    fixed_path = work_dir / name / "fixed.nii.gz"
    write_image(deform(original, truth), fixed_path)
    tissue = tissue_classes(original, brain)
    return Case(
        name=name,
        fixed_path=fixed_path,
        moving_path=moving_path,
        moving=read_image(moving_path, f"{subject} T1"),
        truth=truth,
        brain=deform(original.with_array(brain.astype(np.uint8)), truth, label=True).array > 0,
        tissue=tissue,
        truth_tissue=deform(tissue, truth, label=True).array,
    )


def run_measured(command: list[str], log_path: Path) -> tuple[float, float]:
    """Run ``command`` with its output in ``log_path``; return its wall seconds and the peak
    resident memory (MB) of its largest process (``wait4``'s ``ru_maxrss``, children included),
    both measured by ``measure_process.py``."""
    figures = log_path.with_suffix(".measured.json")
    with open(log_path, "w") as log:
        code = subprocess.call([sys.executable, str(MEASURE), str(figures), *command], stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        tail = log_path.read_text().strip().splitlines()[-5:]
        raise RuntimeError(f"exit status {code}: " + " | ".join(tail))
    measured = json.loads(figures.read_text())
    return measured["seconds"], measured["peak_mb"]


def run_identity(case: Case, case_dir: Path) -> Run:
    fixed_geometry = case.truth.fixed_geometry
    return Run(RegistrationResult(fixed_geometry, case.moving.geometry, np.eye(fixed_geometry.dim + 1)), 0.0, math.nan)


def run_optimise(case: Case, case_dir: Path) -> Run:
    """``dmmreg register --method optimise`` in a subprocess of this interpreter."""
    transform_path = case_dir / "optimise.h5"
    command = [
        sys.executable, "-m", "dmmreg", "register", "--fixed", str(case.fixed_path), "--moving",
        str(case.moving_path), "--output-transform", str(transform_path), "--method", "optimise",
    ]
    seconds, peak = run_measured(command, case_dir / "optimise.log")
    return Run(read_result(transform_path, case.truth.fixed_geometry, case.moving.geometry), seconds, peak)


def untrained_copy(model: str, folder: Path) -> str:
    """A freshly initialised network with ``model``'s configuration, saved in ``folder``: its
    output is (almost) zero, so registering with it measures the affine pre-alignment alone."""
    import torch

    from dmmreg.methods import method_class
    from dmmreg.model_io import find_model, read_card, save_model

    card = read_card(find_model("", 0, model))
    cls = method_class(card["method"])
    torch.manual_seed(0)
    path = folder / f"{card['name']}-untrained.safetensors"
    save_model(cls(cls.config_class.from_dict(card["config"])), path, training={"data": "none: untrained baseline"})
    return str(path)


def model_runner(model: str, refine: int, untrained: bool = False):
    """A runner for a trained model (``dmmreg register --model NAME [--refine N]``), or for an
    untrained copy of it (``untrained``: the pre-alignment baseline); the registration's own
    seconds (without process start-up) come from its JSON progress."""

    def run(case: Case, case_dir: Path) -> Run:
        from dmmreg.model_io import find_model, read_card

        method = read_card(find_model("", 0, model))["method"]
        stem = Path(model).stem  # file names of this run's transform and log
        label = f"{stem}-untrained" if untrained else f"{stem}+refine{refine}" if refine else stem
        chosen = untrained_copy(model, case_dir) if untrained else model
        transform_path = case_dir / f"{label}.h5"
        command = [
            sys.executable, "-m", "dmmreg", "register", "--fixed", str(case.fixed_path), "--moving",
            str(case.moving_path), "--output-transform", str(transform_path), "--method", method, "--model", chosen,
            "--refine", str(refine), "--progress", "json",
        ]
        seconds, peak = run_measured(command, case_dir / f"{label}.log")
        done = json.loads((case_dir / f"{label}.log").read_text().strip().splitlines()[-1])
        return Run(read_result(transform_path, case.truth.fixed_geometry, case.moving.geometry), seconds, peak,
                   registration_seconds=done.get("seconds", math.nan))

    return run


def worker_runner(method: str, worker: Path, kind: str, bench_python: Path, threads: int):
    """A runner for an ANTs or elastix registration of type ``kind``, through ``worker``
    (``ants_worker.py`` or ``elastix_worker.py``) in the benchmark virtualenv."""

    def run(case: Case, case_dir: Path) -> Run:
        out_dir = case_dir / method
        command = [
            str(bench_python), str(worker), "--fixed", str(case.fixed_path), "--moving",
            str(case.moving_path), "--type", kind, "--out-dir", str(out_dir), "--threads", str(threads),
        ]
        seconds, peak = run_measured(command, case_dir / f"{method}.log")
        estimate = read_result(out_dir / "displacement.nii.gz", case.truth.fixed_geometry, case.moving.geometry)
        timing = json.loads((out_dir / "timing.json").read_text())
        check = conversion_difference(case, estimate, read_image(out_dir / "warped.nii.gz"))
        if check > CONVERSION_CHECK_TOLERANCE_PERCENT:
            print(f"  WARNING {method}: the converted transform differs from the tool's warped image by {check:.2f} %")
        return Run(estimate, seconds, peak, timing["registration_seconds"], check)

    return run


def conversion_difference(case: Case, estimate: RegistrationResult, tool_warped: Image) -> float:
    """Mean |moving warped by our reading of a tool's transform - the tool's own warped moving
    image| inside the brain, in percent of the moving image's 99th-percentile brain intensity."""
    ours = estimate.warp(case.moving).array
    scale = np.percentile(case.moving.array[case.moving.array != 0], 99)
    return float(100.0 * np.mean(np.abs(ours[case.brain] - tool_warped.array[case.brain])) / scale)


def evaluate(case: Case, run: Run) -> dict[str, float]:
    """Accuracy and regularity of ``run.estimate`` against the case's truth (see module doc)."""
    error = endpoint_error(run.estimate, case.truth, mask=case.brain)
    warped_tissue = run.estimate.warp(case.tissue, mode="nearest").array
    dice = metrics.dice_per_label(case.truth_tissue, warped_tissue, labels=range(1, TISSUE_CLASSES + 1))
    jacobian = metrics.jacobian_statistics(run.estimate.jacobian_determinant(), mask=case.brain)
    return {
        "epe_mean_mm": float(error.mean()),
        "epe_p95_mm": float(np.percentile(error, 95)),
        "dice_mean": float(np.mean(list(dice.values()))),
        **{f"dice_class{label}": value for label, value in dice.items()},
        "folding_percent": jacobian["folding_percent"],
        "sdlogj": jacobian["sdlogj"],
        "seconds": run.seconds,
        "registration_seconds": run.registration_seconds,
        "peak_memory_mb": run.peak_memory_mb,
        "conversion_check_percent": run.conversion_check_percent,
    }


# --------------------------------------------------------------------------------------------
# Tables

TABLE_COLUMNS = {  # column: (header, format)
    "epe_mean_mm": ("EPE mean (mm)", "{:.2f}"),
    "epe_p95_mm": ("EPE 95% (mm)", "{:.2f}"),
    "dice_mean": ("Dice tissue", "{:.3f}"),
    "folding_percent": ("folding %", "{:.3f}"),
    "sdlogj": ("SD log J", "{:.3f}"),
    "seconds": ("seconds", "{:.1f}"),
    "registration_seconds": ("registration s", "{:.1f}"),
    "peak_memory_mb": ("peak MB", "{:.0f}"),
}


def markdown_table(rows: list[dict], keys: list[str]) -> list[str]:
    headers = keys + [header for header, _ in TABLE_COLUMNS.values()]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [str(row[key]) for key in keys]
        for column, (_, fmt) in TABLE_COLUMNS.items():
            value = row.get(column, math.nan)
            cells.append("" if value is None or not math.isfinite(value) else fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def method_means(rows: list[dict]) -> list[dict]:
    """Mean of every table column per method, over the cases where the method succeeded."""
    out = []
    for method in dict.fromkeys(row["method"] for row in rows):
        done = [row for row in rows if row["method"] == method and not row["error"]]
        summary = {"method": method, "cases": len(done)}
        for column in TABLE_COLUMNS:
            values = [row[column] for row in done if math.isfinite(row[column])]
            summary[column] = float(np.mean(values)) if values else math.nan
        out.append(summary)
    return out


def ratios_to_reference(rows: list[dict], reference: str = RATIO_REFERENCE) -> list[dict]:
    """Per method, on the cases where it and ``reference`` both succeeded: the median over the
    cases of the reference's seconds / the method's (whole processes; and the reference's
    registration call alone / the method's whole process), and the method's mean EPE / the
    reference's."""
    done = {(row["case"], row["method"]): row for row in rows if not row["error"]}
    out = []
    for method in dict.fromkeys(row["method"] for row in rows):
        pairs = [(done[case, method], done[case, reference]) for case, name in done
                 if name == method and (case, reference) in done]
        speed = [ref["seconds"] / row["seconds"] for row, ref in pairs if row["seconds"] > 0]
        call_speed = [ref["registration_seconds"] / row["seconds"] for row, ref in pairs if row["seconds"] > 0]
        epe = [(row["epe_mean_mm"], ref["epe_mean_mm"]) for row, ref in pairs]
        out.append({
            "method": method,
            "cases": len(pairs),
            "speed": float(np.median(speed)) if speed else math.nan,
            "call_speed": float(np.median(call_speed)) if call_speed else math.nan,
            "epe": float(np.mean([m for m, _ in epe]) / np.mean([r for _, r in epe])) if epe else math.nan,
        })
    return out


def ratios_table(rows: list[dict], reference: str = RATIO_REFERENCE) -> list[str]:
    """Markdown table of :func:`ratios_to_reference`."""
    lines = [f"| method | cases | speed vs {reference} (process / process) | speed vs {reference} "
             f"(its registration call / process) | mean EPE / {reference}'s |", "|---|---|---|---|---|"]
    for ratio in ratios_to_reference(rows, reference):
        cells = ["" if not math.isfinite(ratio[k]) else f"{ratio[k]:.2f}" for k in ("speed", "call_speed", "epe")]
        lines.append(f"| {ratio['method']} | {ratio['cases']} | " + " | ".join(cells) + " |")
    return lines


def results_file(out_dir: Path, kind: str) -> tuple[str, Path]:
    """``(stamp, out_dir / "KIND-<date>-<host>-<n>cpu.md")``: where a benchmark writes its figures
    (the folder is made; ``-2``, ``-3``... is added when two runs end in the same minute, so none
    overwrites another's)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    out_dir.mkdir(parents=True, exist_ok=True)
    base = f"{kind}-{stamp}-{platform.node().split('.')[0]}-{os.cpu_count()}cpu"
    path, copy = out_dir / f"{base}.md", 1
    while path.exists():
        copy += 1
        path = out_dir / f"{base}-{copy}.md"
    return stamp, path


def write_lines(path: Path, lines: list[str]) -> None:
    """A benchmark's markdown figures: ``lines`` written to ``path`` (from :func:`results_file`)."""
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def write_results(rows: list[dict], out_dir: Path, settings: dict) -> tuple[Path, Path]:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    base = out_dir / f"registration-{stamp}-{platform.node()}-{os.cpu_count()}cpu"
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with open(base.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    failures = [f"- {row['case']} {row['method']}: {row['error']}" for row in rows if row["error"]]
    lines = [
        f"# Registration benchmark, {stamp}, {platform.node()}, {os.cpu_count()} CPUs",
        "",
        f"Settings: `{json.dumps(settings)}`",
        "",
        "## Mean per method",
        "",
        *markdown_table(method_means(rows), ["method", "cases"]),
        "",
        f"## Ratios to {RATIO_REFERENCE}",
        "",
        f"Per case, same run: speed = {RATIO_REFERENCE}'s seconds / the method's (median over the cases); "
        f"EPE = the method's mean EPE / {RATIO_REFERENCE}'s, over the cases both completed.",
        "",
        *ratios_table(rows),
        "",
        "## Per case",
        "",
        *markdown_table([row for row in rows if not row["error"]], ["case", "method"]),
        "",
        *(["## Failures", "", *failures, ""] if failures else []),
    ]
    base.with_suffix(".md").write_text("\n".join(lines))
    return base.with_suffix(".csv"), base.with_suffix(".md")


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", nargs="+", choices=sorted(SUBJECTS), default=sorted(SUBJECTS))
    parser.add_argument("--contrasts", nargs="+", choices=["T2", "FLAIR"], default=["T2", "FLAIR"],
                        help="fixed contrasts (the moving image is always the T1)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="known-warp seeds")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--models", nargs="+", default=[], metavar="NAME",
                        help="also run these trained models (names from `dmmreg models`, or files)")
    parser.add_argument("--refine", nargs="+", type=int, default=[0], metavar="N",
                        help="refinement iterations to run each model with (0: the network alone)")
    parser.add_argument("--untrained-baseline", action="store_true",
                        help="also run an untrained copy of each model (what the affine pre-alignment alone gives)")
    parser.add_argument("--include-syn-s", action="store_true",
                        help="also run antsRegistrationSyN[s] (~26 min per 240x240x155 pair on 2 cores)")
    parser.add_argument("--syn-s-cases", type=int, default=1, help="run antsRegistrationSyN[s] on the first N cases")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the brain-multicontrast subjects")
    parser.add_argument("--bench-python", type=Path, default=DEFAULT_ANTS_PYTHON,
                        help="python of the virtualenv with antspyx and itk-elastix (see benchmarks/README.md)")
    parser.add_argument("--bench-threads", type=int, default=2, help="ITK threads of ANTs and elastix (default 2)")
    parser.add_argument("--keep-work", type=Path, help="keep the cases' images and transforms in this folder")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    runners = {"identity": run_identity, "optimise": run_optimise}
    runners.update({method: worker_runner(method, ANTS_WORKER, kind, args.bench_python, args.bench_threads)
                    for method, kind in ANTS_TRANSFORMS.items()})
    runners.update({method: worker_runner(method, ELASTIX_WORKER, kind, args.bench_python, args.bench_threads)
                    for method, kind in ELASTIX_TYPES.items()})
    for model in args.models:
        if args.untrained_baseline:
            runners[f"{Path(model).stem}-untrained"] = model_runner(model, 0, untrained=True)
        for refine in args.refine:
            runners[f"{model}+refine{refine}" if refine else model] = model_runner(model, refine)
    cases = [(s, c, seed) for s in args.subjects for c in args.contrasts for seed in args.seeds]
    rows = []
    with tempfile.TemporaryDirectory(prefix="dmmreg-bench-") as scratch:
        work_dir = args.keep_work or Path(scratch)
        for index, (subject, contrast, seed) in enumerate(cases):
            case = build_case(args.data, subject, contrast, seed, work_dir)
            case_dir = case.fixed_path.parent
            methods = list(args.methods) + [name for name in runners if name not in METHODS and name not in ANTS_TRANSFORMS]
            if args.include_syn_s and index < args.syn_s_cases:
                methods.append("ants-syn-s")
            for method in methods:
                print(f"{case.name}: {method} ...", flush=True)
                row = {"case": case.name, "subject": subject, "contrast": contrast, "seed": seed, "method": method}
                try:
                    row.update(evaluate(case, runners[method](case, case_dir)), error="")
                except RuntimeError as exc:
                    row["error"] = str(exc)
                print("  " + (row["error"] or ", ".join(f"{k} {row[k]:.3g}" for k in TABLE_COLUMNS)), flush=True)
                rows.append(row)
    settings = {key: str(value) for key, value in vars(args).items()}
    for path in write_results(rows, args.out, settings):
        print(f"wrote {path}")
    for summary in method_means(rows):
        print(f"{summary['method']:>12} ({summary['cases']} cases): "
              + ", ".join(f"{TABLE_COLUMNS[k][0]} {TABLE_COLUMNS[k][1].format(summary[k])}" for k in TABLE_COLUMNS))
    print("\n".join(ratios_table(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
