"""The thread policy on an idle and on a busy machine (issues 18 and 19).

Registers the bundled stroke T1 to the T2 with ``dmmreg register`` (the whole process, default
method, ``--quality balanced``) with ``--threads 1``, ``--threads N`` (every usable core) and
the default (:func:`dmmreg.threads.default_threads`), alternating, ``--repeats`` times each; once
on the machine as it is and once beside ``--busy`` processes that each keep one core busy (a
user's other programs).  Reports the median seconds and the default's ratio to the best thread
count (target: at most 1.3 on the busy machine).  Writes ``threads-<date>-<host>-<n>cpu.md``.
Run it on an otherwise idle machine:

    .venv/bin/python benchmarks/benchmark_threads.py --repeats 3 --busy 1
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmark_registration import results_file, write_lines

from dmmreg.threads import usable_cores

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "Resources" / "SampleData" / "stroke"
BUSY_LOOP = "while True: pass"


def register_seconds(threads: int | None, folder: Path) -> float:
    """Wall seconds of one ``dmmreg register`` process (``threads`` None: the default)."""
    command = [sys.executable, "-m", "dmmreg", "register", "--fixed", str(SAMPLES / "T2.nii.gz"),
               "--moving", str(SAMPLES / "T1.nii.gz"), "--output-transform", str(folder / "t.h5"),
               "--progress", "none"]
    command += [] if threads is None else ["--threads", str(threads)]
    start = time.perf_counter()
    environment = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # dmmreg chooses
    subprocess.run(command, check=True, env=environment)
    return time.perf_counter() - start


def measure(repeats: int, folder: Path) -> dict[str, float]:
    """Median seconds of each setting, the settings alternating within each repeat."""
    settings = {"1 thread": 1, f"{usable_cores()} threads": usable_cores(), "default": None}
    times: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(repeats):
        for name, threads in settings.items():
            times[name].append(register_seconds(threads, folder))
            print(name, f"{times[name][-1]:.1f} s", flush=True)
    return {name: float(np.median(values)) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", type=int, default=1, help="busy processes beside the registration")
    parser.add_argument("--settle-s", type=float, default=60.0,
                        help="seconds to let the busy processes show in the load average first")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        rows.append(("as it is", measure(args.repeats, Path(scratch))))
        busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(args.busy)]
        try:
            time.sleep(args.settle_s)
            rows.append((f"{args.busy} busy process(es)", measure(args.repeats, Path(scratch))))
        finally:
            for process in busy:
                process.kill()

    stamp, path = results_file(args.out, "threads")
    names = list(rows[0][1])
    lines = [f"# Thread policy, {stamp}", "",
             f"`benchmarks/benchmark_threads.py --repeats {args.repeats} --busy {args.busy}`: `dmmreg register` of the "
             f"bundled stroke T1 to T2 (default method, balanced), whole process, median of {args.repeats}, settings "
             f"alternating; {usable_cores()} usable cores.", "",
             "| machine | " + " | ".join(f"{n} (s)" for n in names) + " | default / best |",
             "|---|" + "---|" * (len(names) + 1)]
    for machine, seconds in rows:
        best = min(seconds.values())
        lines.append(f"| {machine} | " + " | ".join(f"{seconds[n]:.1f}" for n in names)
                     + f" | {seconds['default'] / best:.2f} |")
    write_lines(path, lines)


if __name__ == "__main__":
    main()
