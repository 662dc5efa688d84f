"""Where the time of one ``dmmreg register`` process goes (issue 18, item 1).

The case: a subject's T2 deformed by the known warp of ``--seed``
(``benchmark_registration.build_case``) is the fixed image, its T1 the moving one; by default
the bundled stroke subject (124x160x140, 1 mm), or ``--subject`` of ``--data`` (e.g. aurora-met
of ``../shared/data/brain-multicontrast``, 240x240x155, the registration benchmark's size).
The command is the registration benchmark's (``dmmreg register --method optimise
--output-transform t.h5``, default quality) with ``--threads`` and ``--progress json``.

Two measurements:

* whole processes (``--repeats``, median): the wall clock from starting the interpreter to its
  exit, split by the moments the process's JSON progress reports reach this parent: start-up
  (interpreter, command-line imports, checks) until "reading images"; reading and the backend's
  imports (torch) until the pyramid starts; pyramid; affine; deformable levels and the final
  field with its inverse; writing; interpreter exit;
* one more process under cProfile (the same command run in-process by this script's
  ``--in-process`` mode, imports included): cumulative seconds of the functions that make the
  phases (imports, reading, pyramid, affine, deformable, inverse, writing) and the functions
  with the most own time.

It also scores the transform against the known warp (mean endpoint error in the brain, mm), so a
change that saves time shows what it costs in accuracy.  Writes ``profile-<date>-<host>-<n>cpu.md``
to ``--out``.  Run on an otherwise idle machine: the figures are wall seconds.

    .venv/bin/python benchmarks/profile_registration.py --repeats 3
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = ROOT / "Resources" / "SampleData"

# whole-process phases: (name, the progress stage that ends it); None: the process's exit
PHASES = (
    ("start-up: interpreter, CLI imports, checks", "load"),
    ("reading images, backend imports (torch)", "preprocess"),
    ("intensity normalisation and pyramids", "affine"),
    ("affine levels", "deformable"),
    ("deformable levels, final field and inverse", "write"),
    ("writing outputs", "done"),
    ("interpreter exit", None),
)

# in-process phases from cProfile: (name, function as "file:function", whose cumulative seconds it is)
PROFILED = (
    ("backend imports (dmmreg.methods.optimise: torch)", "methods/__init__.py:_module"),
    ("reading images", "image_io.py:read_image"),
    ("registration call (everything below)", "methods/optimise.py:register_optimise"),
    ("  pyramids", "methods/optimise.py:_prepare_levels"),
    ("  deformable stage (levels, final field, inverse)", "methods/optimise.py:_deformable_stage"),
    ("    scaling and squaring (all calls)", "spatial.py:integrate_velocity"),
    ("  similarity (all calls)", "methods/optimise.py:__call__"),
    ("  NMI histogram (all calls)", "losses.py:joint_distribution"),
    ("  backward passes (all calls)", "torch/_tensor.py:backward"),
    ("writing outputs", "files.py:commit"),
    ("  transform file", "transform_io.py:write_transform"),
)


def register_command(fixed: Path, moving: Path, transform: Path, threads: int) -> list[str]:
    """The ``dmmreg register`` arguments of the profiled run (without the interpreter)."""
    return ["register", "--fixed", str(fixed), "--moving", str(moving), "--output-transform", str(transform),
            "--method", "optimise", "--threads", str(threads), "--progress", "json"]


def timed_process(arguments: list[str]) -> dict[str, float]:
    """Run ``python -m dmmreg ARGUMENTS``; seconds of each of :data:`PHASES` and ``total``, timed by
    when the progress reports reach this process (stdout is line-buffered JSON)."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "dmmreg", *arguments], stdout=subprocess.PIPE, text=True)
    first_seen: dict[str, float] = {}
    for line in process.stdout:
        stage = json.loads(line)["stage"]
        first_seen.setdefault(stage, time.perf_counter() - start)
    if process.wait() != 0:
        raise RuntimeError(f"dmmreg register failed (exit status {process.returncode})")
    total = time.perf_counter() - start
    seconds, previous = {}, 0.0
    for name, end_stage in PHASES:
        end = total if end_stage is None else first_seen[end_stage]
        seconds[name], previous = end - previous, end
    seconds["total"] = total
    return seconds


def run_in_process(stats_path: str, arguments: list[str]) -> None:
    """``--in-process`` mode: the command line run in this interpreter under cProfile, imports
    included; the statistics go to ``stats_path``."""
    profiler = cProfile.Profile()
    profiler.enable()
    from dmmreg.cli import main

    code = main(arguments)
    profiler.disable()
    profiler.dump_stats(stats_path)
    sys.exit(code)


def profiled_seconds(stats: pstats.Stats) -> tuple[dict[str, float], list[tuple[float, float, int, str]]]:
    """Cumulative seconds of :data:`PROFILED` and the 20 functions with the most own time as
    ``(own s, cumulative s, calls, name)``."""
    found: dict[str, float] = {}
    rows = []
    for (filename, _, function), (_, calls, own, cumulative, _) in stats.stats.items():
        path = filename.replace(os.sep, "/")
        for name, key in PROFILED:
            file_part, function_part = key.split(":")
            if function == function_part and path.endswith("/" + file_part):
                found[name] = found.get(name, 0.0) + cumulative
        short = "/".join(path.split("/")[-2:])
        rows.append((own, cumulative, calls, f"{short}:{function}"))
    rows.sort(reverse=True)
    return found, rows[:20]


def profile(args) -> None:
    """Build the case, time the processes, profile one, score it and write the markdown file."""
    import numpy as np

    from benchmark_registration import build_case, results_file, write_lines
    from dmmreg.known_warp import endpoint_error
    from dmmreg.transform_io import read_result

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.keep_work or scratch)
        case = build_case(args.data, args.subject, "T2", args.seed, work)
        transform = work / case.name / "transform.h5"
        arguments = register_command(case.fixed_path, case.moving_path, transform, args.threads)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare_interpreter = time.perf_counter() - start
        runs = []
        for repeat in range(args.repeats):
            runs.append(timed_process(arguments))
            print(f"process {repeat + 1}/{args.repeats}: {runs[-1]['total']:.1f} s", flush=True)
        estimate = read_result(transform, case.truth.fixed_geometry, case.moving.geometry)
        error = endpoint_error(estimate, case.truth, mask=case.brain)
        stats_path = work / "register.pstats"
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--in-process", str(stats_path), "--", *arguments],
                       check=True, stdout=subprocess.DEVNULL)
        profiled_total = time.perf_counter() - start
        found, top = profiled_seconds(pstats.Stats(str(stats_path)))

    median = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
    total = median["total"]
    stamp, path = results_file(args.out, "profile")
    lines = [f"# Profile of one `dmmreg register` process, {stamp}", "",
             f"`benchmarks/profile_registration.py --subject {args.subject} --seed {args.seed} --repeats {args.repeats} "
             f"--threads {args.threads}`: the {args.subject} T2 ({args.data.name}) deformed by known warp {args.seed} "
             f"({'x'.join(map(str, case.moving.geometry.size))} voxels of "
             f"{'x'.join(f'{s:g}' for s in case.moving.geometry.spacing)} mm) is the fixed image, its T1 the moving "
             "one; `dmmreg register --method optimise --output-transform t.h5 "
             f"--threads {args.threads}` (default quality), the whole process.  Mean endpoint error against the "
             f"known warp in the brain: {error.mean():.2f} mm (95th percentile {np.percentile(error, 95):.2f} mm).", "",
             f"Machine: {os.cpu_count()} cores; {args.note}", "",
             f"## Whole process (median of {args.repeats}, wall seconds)", "",
             "Phases end when the process's progress report of the next stage reaches the parent.", "",
             "| phase | s | share |", "|---|---|---|"]
    for name, _ in PHASES:
        lines.append(f"| {name} | {median[name]:.2f} | {100 * median[name] / total:.0f} % |")
    lines += [f"| **total** | **{total:.2f}** | 100 % |", "",
              "Each run (s): " + ", ".join(f"{run['total']:.2f}" for run in runs)
              + f"; a bare interpreter (`python -c pass`) {bare_interpreter:.2f} s.", "",
              f"## In-process cProfile (one run, {profiled_total:.1f} s under the profiler)", "",
              "Cumulative seconds of the functions that make the phases (the profiler's overhead included; "
              "\"all calls\" sums every call, some inside the rows above them).", "",
              "| part | function | s | share of the profiled run |", "|---|---|---|---|"]
    for name, key in PROFILED:
        seconds = found.get(name, 0.0)
        lines.append(f"| {name} | `{key}` | {seconds:.2f} | {100 * seconds / profiled_total:.0f} % |")
    lines += ["", "Functions with the most own time:", "", "| own s | cumulative s | calls | function |", "|---|---|---|---|"]
    lines += [f"| {own:.2f} | {cumulative:.2f} | {calls} | `{name}` |" for own, cumulative, calls, name in top]
    write_lines(path, lines)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--in-process":
        run_in_process(sys.argv[2], sys.argv[4:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SAMPLE_DATA, help="folder of subjects laid out as "
                        "benchmark_registration.SUBJECTS (default: the bundled sample data)")
    parser.add_argument("--subject", default="stroke", help="stroke, aurora-met or tcga-du-7294")
    parser.add_argument("--seed", type=int, default=3, help="known warp")
    parser.add_argument("--repeats", type=int, default=3, help="whole processes to time (median)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--note", default="", help="a line about the machine's load, written to the results")
    parser.add_argument("--keep-work", type=Path, help="keep the case, the transform and the cProfile statistics here")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    profile(parser.parse_args())


if __name__ == "__main__":
    main()
