"""How many updates does a registration network need before its answers carry information?

A diagnostic of how fast MIDIR's network (2D by default, on the bundled models' grid) learns
from the training pairs: with the *known* warp of each pair as its loss (the mean endpoint error
in the brain; the papers all train unsupervised, so this is no method of the product, only a
loss that cannot reward a wrong map) or, ``--loss paper``, with MIDIR's own loss on the same
pairs.  It does not bound the unsupervised loss: on cross-contrast pairs NMI moved the network
where the known warp did not (see benchmarks/README.md).  Pairs: the real multi-contrast
training subjects (aurora-met, tcga-du-7294, contrasts aligned by ``optimise`` as the bundling
script does), ``prealigned`` augmentation, intensity augmentation; same-contrast (``t1:t1``) or
cross-contrast pairs (``--pairs``).
Reports, every ``--every`` updates, the endpoint error on held-out stroke pairs drawn the same
way (the zero map's is the start).  Writes ``learnability-<date>-<host>-<n>cpu.md``.

    python benchmarks/benchmark_learnability.py --pairs t1:t1 --updates 3000
    python benchmarks/benchmark_learnability.py --pairs t2:t1 t1:t2 flair:t1 t1:flair --updates 3000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from benchmark_registration import DEFAULT_DATA, benchmark_subject, results_file, write_lines

from dmmreg.training import augmentation
from dmmreg.methods.midir import Midir, MidirConfig
from dmmreg.training.trainer import validate
from dmmreg.training.pairs import PairSampler, PairSettings, load_subject

TRAINING_SUBJECTS = ("aurora-met", "tcga-du-7294")


def known_warp_error(model: Midir, batch) -> torch.Tensor:
    """Mean endpoint error (mm) in the fixed mask of the network's map against the known warp."""
    prediction = model.predict(batch.fixed, batch.moving, batch.geometry)
    inside = batch.fixed_mask[:, 0] > 0
    return (prediction.displacement - batch.true_displacement).norm(dim=1)[inside].mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", default=["t1:t1"], help="FIXED:MOVING contrasts (t1, t2, flair)")
    parser.add_argument("--updates", type=int, default=3000)
    parser.add_argument("--every", type=int, default=500, help="updates between validations")
    parser.add_argument("--dim", type=int, default=2, choices=[2, 3])
    parser.add_argument("--spacing-mm", type=float, default=2.0)
    parser.add_argument("--control-spacing", type=int, default=8, help="MIDIR's delta (model voxels)")
    parser.add_argument("--loss", choices=["known-warp", "paper"], default="known-warp",
                        help="known-warp: the endpoint error to the known warp; paper: MIDIR's own (NMI + lambda diffusion)")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--validation-pairs", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pairs = tuple(tuple(p.split(":")) for p in args.pairs)
    contrasts = sorted({c for p in pairs for c in p})
    settings = PairSettings(dim=args.dim, contrast_pairs=pairs, spatial=augmentation.PREALIGNED)
    training = [load_subject(benchmark_subject(args.data, name, contrasts), args.spacing_mm, 16.0, align_contrasts=True)
                for name in TRAINING_SUBJECTS]
    sampler = PairSampler(training, settings)
    held_out = PairSampler([load_subject(benchmark_subject(args.data, "stroke", contrasts), args.spacing_mm, 16.0)], settings)
    validation = held_out.validation_pairs(args.validation_pairs)
    torch.manual_seed(0)
    model = Midir(MidirConfig(dim=args.dim, spacing_mm=args.spacing_mm, control_spacing_voxels=args.control_spacing,
                              bins=32 if args.dim == 2 else 64))  # the bundled 2D models' bins (see Midir's docstring)
    optimiser = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    rows, training_errors = [], []
    for update in range(args.updates + 1):
        if update % args.every == 0:
            metrics = validate(model, validation)
            rows.append((update, metrics["epe_before_mm"], metrics["epe_mm"],
                         float(np.mean(training_errors[-args.every:])) if training_errors else float("nan")))
            print(rows[-1], flush=True)
        if update == args.updates:
            break
        model.train()
        batch = sampler(update)
        loss = known_warp_error(model, batch) if args.loss == "known-warp" else model.loss_terms(batch)["total"]
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        training_errors.append(float(loss.detach()))

    stamp, path = results_file(args.out, "learnability")
    lines = [f"# How fast MIDIR's network learns from the training pairs, {stamp}", "",
             f"`benchmarks/benchmark_learnability.py`: MIDIR's network ({args.dim}D, {args.spacing_mm:g} mm grid, delta "
             f"{args.control_spacing}) trained with "
             + ("the known warp as its loss (mean endpoint error in the brain, mm; " if args.loss == "known-warp" else
                "MIDIR's own loss (-NMI + lambda diffusion, `Midir.loss_terms`; ")
             + f"Adam {args.learning_rate:g}, gradients clipped to norm 1, one pair per update) on "
             f"{' and '.join(TRAINING_SUBJECTS)}, contrast pairs {', '.join(args.pairs)} (fixed:moving), `prealigned` "
             f"and intensity augmentation; validated on {args.validation_pairs} held-out stroke pairs drawn the same "
             f"way. {torch.get_num_threads()} CPU thread(s).", "",
             "| updates | held-out EPE of the zero map (mm) | held-out EPE of the network (mm) | training loss, last updates |",
             "|---|---|---|---|"]
    lines += [f"| {u} | {before:.3f} | {after:.3f} | {'-' if np.isnan(train) else f'{train:.3f}'} |"
              for u, before, after, train in rows]
    write_lines(path, lines)


if __name__ == "__main__":
    main()
