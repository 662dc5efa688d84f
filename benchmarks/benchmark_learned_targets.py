"""The learned methods against their targets (issue 15), on held-out known-warp 3D cases.

Cases: ``--cases`` known-warp cases of ``--subject`` (not trained on; warps seeded from
``--seed``, apart from the seeds training selects its weights by), T1 moving and the deformed
T2 or FLAIR fixed, at full resolution (:func:`dmmreg.training.validation.registration_cases`).
For each model (card path or name), each case is registered as a user would, timed for the
whole call (pre-alignment included):

* ``network``: ``--refine 0``, the network alone after the affine pre-alignment;
* ``default``: the method's default, the accurate mode (network, then
  :data:`~dmmreg.methods.DEFAULT_REFINE_ITERATIONS` of ``optimise``);
* ``optimise``: the instance optimisation (``balanced``), once per case.

Reports mean endpoint error in the brain (mm), folding % and seconds, and the target ratios:
network / pre-alignment EPE (target <= 0.8, folding < 0.5 %), default / optimise EPE
(<= 1.05) and time (<= 0.7).  Writes ``learned-targets-<date>-<host>-<n>cpu.md``.

    .venv/bin/python benchmarks/benchmark_learned_targets.py midir-brain-3d --cases 6 --threads 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmark_registration import DEFAULT_DATA, SUBJECTS, benchmark_subject, results_file, write_lines

from dmmreg.known_warp import endpoint_error
from dmmreg.model_io import find_model, load_model
from dmmreg.registration import register_pair
from dmmreg.training.validation import registration_cases

PAIRS = [("t2", "t1"), ("flair", "t1")]  # fixed <- moving


def measure(case, **settings) -> dict[str, float]:
    """Register ``case`` with ``settings``: EPE (mm) and folding % in the brain, seconds."""
    start = time.perf_counter()
    result = register_pair(case.fixed, case.moving, **settings)
    seconds = time.perf_counter() - start
    folding = 100 * float((result.jacobian_determinant().array[case.scored] <= 0).mean())
    return {"epe": float(endpoint_error(result, case.truth, case.scored).mean()), "folding": folding,
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="3D model cards (.json) or model names")
    parser.add_argument("--subject", choices=sorted(SUBJECTS), default="stroke")
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--seed", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    subject = benchmark_subject(args.data, args.subject)
    first = load_model(find_model("", 0, str(args.models[0])))[0]
    cases = registration_cases([subject], PAIRS, args.cases, first, seed=args.seed)
    prealigned = [float(endpoint_error(c.prealignment(), c.truth, c.scored).mean()) for c in cases]
    optimise = [measure(c, method="optimise") for c in cases]
    print("optimise", optimise, flush=True)

    stamp, path = results_file(args.out, "learned-targets")
    mean = lambda rows, key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    lines = [f"# Learned methods against their targets, {stamp}", "",
             f"`benchmarks/benchmark_learned_targets.py {' '.join(args.models)} --cases {args.cases} --threads "
             f"{args.threads}`: {args.cases} known-warp cases of {args.subject} (not trained on), fixed <- moving "
             f"{', '.join(f'{f}<-{m}' for f, m in PAIRS)} in turn, warps seeded from {args.seed}; whole `register_pair` "
             f"calls timed ({args.threads} CPU thread(s)). EPE: mean endpoint error in the brain (mm).", "",
             f"Pre-alignment alone (`optimise`'s affine): EPE {np.mean(prealigned):.3f}. `optimise` (balanced): EPE "
             f"{mean(optimise, 'epe'):.3f}, folding {mean(optimise, 'folding'):.3f} %, {mean(optimise, 'seconds'):.1f} s.", "",
             "| model | network EPE | network / pre-alignment (<= 0.8) | network folding % (< 0.5) | default EPE | "
             "default / optimise EPE (<= 1.05) | default s | default / optimise time (<= 0.7) |",
             "|---|---|---|---|---|---|---|---|"]
    for name in args.models:
        model = str(find_model("", 0, str(name)))
        method = load_model(model)[0].name
        network = [measure(c, method=method, model=model, refine=0) for c in cases]
        default = [measure(c, method=method, model=model) for c in cases]
        print(name, network, default, flush=True)
        lines.append(f"| {name} | {mean(network, 'epe'):.3f} | {mean(network, 'epe') / np.mean(prealigned):.2f} | "
                     f"{mean(network, 'folding'):.3f} | {mean(default, 'epe'):.3f} | "
                     f"{mean(default, 'epe') / mean(optimise, 'epe'):.2f} | {mean(default, 'seconds'):.1f} | "
                     f"{mean(default, 'seconds') / mean(optimise, 'seconds'):.2f} |")
    write_lines(path, lines)


if __name__ == "__main__":
    main()
