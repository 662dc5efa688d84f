"""Accuracy and in-process time of ``optimise`` settings variants on the registration benchmark's
known-warp cases (issue 18: the settings behind the default's speed and error).

Each variant is a JSON object of :class:`dmmreg.methods.optimise.OptimiseSettings` overrides on
top of the current defaults (``{}``: the defaults).  Every variant registers the same cases
(``benchmark_registration.build_case``: T1 to the deformed T2 and FLAIR of stroke, aurora-met and
tcga-du-7294, one case per ``--seeds`` seed) in this process with ``--threads`` torch threads;
scored by the mean endpoint error in the brain (mm), as ``benchmark_registration.py`` scores it.
Seconds are the registration call alone (no start-up, no file writing), after one untimed
registration of the first case (CUDA's initialisation, first-call allocations): compare them
between variants of one run; the whole-process figures against ANTs and elastix come from
``benchmark_registration.py``.  ``--device cuda`` times the CUDA path (issue 18's target: under
1 s per 3D pair), a few minutes on a GPU machine:

    python benchmarks/benchmark_optimise_settings.py --device cuda --variant defaults '{}'

    python benchmarks/benchmark_optimise_settings.py --seeds 1 \\
        --variant defaults '{}' --variant soft '{"regularisation": 0.5, "control_spacing_mm": 10}'

Writes ``optimise-settings-<date>-<host>-<n>cpu.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_registration import DEFAULT_DATA, build_case, results_file, write_lines  # noqa: E402

SUBJECTS = ("aurora-met", "stroke", "tcga-du-7294")
CONTRASTS = ("T2", "FLAIR")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"), required=True,
                        help="a name and the settings overrides (JSON object); repeat for each variant")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of torch")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--note", default="", help="a line about the machine's load, written to the results")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    variants = [(name, json.loads(text)) for name, text in args.variant]

    import torch

    from dmmreg.image_io import read_image
    from dmmreg.known_warp import endpoint_error
    from dmmreg.registration import register_pair

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        cases = [build_case(args.data, subject, contrast, seed, Path(work))
                 for seed in args.seeds for subject in SUBJECTS for contrast in CONTRASTS]
        register_pair(read_image(cases[0].fixed_path), cases[0].moving, method="optimise", device=args.device)
        for name, overrides in variants:
            errors, seconds = [], []
            for case in cases:
                fixed = read_image(case.fixed_path)
                start = time.perf_counter()
                result = register_pair(fixed, case.moving, method="optimise", device=args.device, **overrides)
                seconds.append(time.perf_counter() - start)
                errors.append(float(endpoint_error(result, case.truth, mask=case.brain).mean()))
            rows.append((name, overrides, errors, seconds))
            print(name, f"EPE {np.mean(errors):.3f} mm, {np.mean(seconds):.2f} s", flush=True)

    _, path = results_file(args.out, "optimise-settings")
    lines = [f"# optimise settings variants, {path.stem}", "",
             f"`benchmarks/benchmark_optimise_settings.py --seeds {' '.join(map(str, args.seeds))} --threads {args.threads} "
             f"--device {args.device}`"
             f" on {len(cases)} known-warp cases ({', '.join(c.name for c in cases)}); mean endpoint error in the "
             "brain (mm) and seconds of the registration call (in-process). " + args.note, "",
             "| variant | overrides | EPE mean (mm) | per case (mm) | s mean | per case (s) |", "|---|---|---|---|---|---|"]
    for name, overrides, errors, seconds in rows:
        lines.append(f"| {name} | `{json.dumps(overrides)}` | {np.mean(errors):.3f} | {' / '.join(f'{e:.2f}' for e in errors)} "
                     f"| {np.mean(seconds):.2f} | {' / '.join(f'{s:.1f}' for s in seconds)} |")
    write_lines(path, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
