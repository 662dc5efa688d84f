"""How close to the truth is the optimum of MIDIR's training loss, by control-point spacing?

A network trained on a loss can at best learn that loss's optimum.  For held-out known-warp pairs
of the stroke subject on a model grid (drawn as training draws them, with the ``prealigned``
augmentation: what the affine pre-alignment leaves), this optimises MIDIR's loss (NMI + lambda
times the diffusion of the velocity, 003_2f2aa96e65959a3c.txt eq. 4, computed by
``Midir.loss_terms`` itself) over the control-point velocities of each pair directly, with no
network, and reports the endpoint error in the brain before, at the best iteration and at the last
one, and the NMI reached against the NMI of the true map.  An optimum with NMI above the truth's
and an endpoint error that grows with the iterations is a loss that rewards the wrong map.

A second table bounds what any network on a model grid can give in the whole registration: on
known-warp cases of the stroke subject at full resolution (``registration_validation``'s cases,
pre-aligned), ``optimise``'s deformable stage run on that grid's spacing only, with control
points ``delta`` model voxels apart, scored at full resolution.

    .venv/bin/python benchmarks/benchmark_loss_optimum.py   # writes results/loss-optimum-<date>-<host>.md
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmark_registration import DEFAULT_DATA, benchmark_subject, results_file, write_lines

from dmmreg.training import augmentation
from dmmreg.known_warp import endpoint_error
from dmmreg.methods.learned import warp_on_grid
from dmmreg.methods.midir import Midir, MidirConfig
from dmmreg.methods.optimise import register_optimise, settings_for
from dmmreg.training.validation import registration_cases
from dmmreg.training.pairs import PairSampler, PairSettings, load_subject

ERROR_EVERY = 10  # iterations between endpoint-error measurements
GRIDS = {2: dict(spacing_mm=2.0, bins=32), 3: dict(spacing_mm=4.0, bins=64)}  # the bundled models' grids


class FreeVelocities(nn.Module):
    """Stands in for MIDIR's network: control-point velocities that are parameters themselves."""

    def __init__(self, dim: int, control_shape: tuple[int, ...]):
        super().__init__()
        self.velocities = nn.Parameter(torch.zeros(1, dim, *control_shape))

    def forward(self, fixed, moving, control_shape):
        return self.velocities


def brain_error(displacement: torch.Tensor, batch) -> float:
    inside = batch.fixed_mask[0, 0] > 0
    return float((displacement - batch.true_displacement).norm(dim=1)[0][inside].mean())


def optimise_pair(model: Midir, batch, iterations: int, learning_rate: float) -> dict[str, float]:
    """Adam on ``model``'s loss over free control-point velocities (voxels) for one pair."""
    model.network = FreeVelocities(batch.geometry.dim, model.control_grid(batch.geometry).shape)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    errors = {}
    for iteration in range(1, iterations + 1):
        loss = model.loss_terms(batch)["total"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if iteration % ERROR_EVERY == 0 or iteration == iterations:
            with torch.no_grad():
                prediction = model.predict(batch.fixed, batch.moving, batch.geometry)
            errors[iteration] = brain_error(prediction.displacement, batch)
    with torch.no_grad():
        reached = model.predict(batch.fixed, batch.moving, batch.geometry).displacement
        torch.manual_seed(0)
        nmi_reached = float(model.similarity(batch.fixed, warp_on_grid(batch.moving, batch.geometry, reached)))
        torch.manual_seed(0)
        nmi_truth = float(model.similarity(batch.fixed, warp_on_grid(batch.moving, batch.geometry,
                                                                      batch.true_displacement)))
    best_at = min(errors, key=errors.get)
    return {"start": brain_error(torch.zeros_like(batch.true_displacement), batch), "best": errors[best_at],
            "best_at": best_at, "last": errors[iterations], "nmi_reached": nmi_reached, "nmi_truth": nmi_truth}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", nargs="+", type=int, default=[2, 3], choices=[2, 3])
    parser.add_argument("--deltas", nargs="+", type=int, default=[2, 4, 8], help="control-point spacings (model voxels)")
    parser.add_argument("--weights", nargs="+", type=float, default=[0.1], help="regularisation weights lambda")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--learning-rate", type=float, default=0.02, help="Adam's, in model voxels per step")
    parser.add_argument("--pair", default="t2:t1", help="FIXED:MOVING contrasts of the stroke subject")
    parser.add_argument("--cases", type=int, default=4, help="whole-registration cases of the second table")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    fixed_contrast, moving_contrast = args.pair.split(":")
    subject = benchmark_subject(args.data, "stroke", (fixed_contrast, moving_contrast))

    lines = ["| dim | grid mm | delta (voxels) | control spacing mm | lambda | EPE start | EPE best (iteration) | "
             "EPE last | NMI reached | NMI of the truth |", "|---|---|---|---|---|---|---|---|---|---|"]
    for dim in args.dims:
        grid = GRIDS[dim]
        volumes = load_subject(subject, grid["spacing_mm"], 16.0)
        settings = PairSettings(dim=dim, contrast_pairs=((fixed_contrast, moving_contrast),),
                                spatial=augmentation.PREALIGNED)
        batches = PairSampler([volumes], settings).validation_pairs(args.pairs)
        for delta in args.deltas:
            for weight in args.weights:
                model = Midir(MidirConfig(dim=dim, control_spacing_voxels=delta, regularisation_weight=weight, **grid))
                rows = [optimise_pair(model, batch, args.iterations, args.learning_rate) for batch in batches]
                mean = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
                lines.append(f"| {dim} | {grid['spacing_mm']:g} | {delta} | {delta * grid['spacing_mm']:g} | {weight:g} | "
                             f"{mean['start']:.2f} | {mean['best']:.2f} ({mean['best_at']:.0f}) | {mean['last']:.2f} | "
                             f"{mean['nmi_reached']:.4f} | {mean['nmi_truth']:.4f} |")
                print(lines[-1], flush=True)

    ceiling = ["| dim | grid mm | control spacing mm | pre-alignment alone EPE | optimise's deformable stage on the grid only, EPE |",
               "|---|---|---|---|---|"]
    for dim in args.dims:
        grid = GRIDS[dim]
        cases = registration_cases([subject], [(fixed_contrast, moving_contrast), (moving_contrast, fixed_contrast)],
                                   args.cases, Midir(MidirConfig(dim=dim, **grid)))
        before = np.mean([endpoint_error(case.prealignment(), case.truth, case.scored).mean() for case in cases])
        for delta in args.deltas:
            settings = settings_for("balanced", deformable_levels_mm=(grid["spacing_mm"],), deformable_iterations=(60,),
                                    control_spacing_mm=delta * grid["spacing_mm"])
            after = np.mean([endpoint_error(register_optimise(case.fixed, case.moving, None, None, "cpu", settings,
                                                              case.initial_affine), case.truth, case.scored).mean()
                             for case in cases])
            ceiling.append(f"| {dim} | {grid['spacing_mm']:g} | {delta * grid['spacing_mm']:g} | {before:.2f} | {after:.2f} |")
            print(ceiling[-1], flush=True)

    stamp, path = results_file(args.out, "loss-optimum")
    write_lines(path, [
        f"# Optimum of MIDIR's loss against the truth, {stamp}", "",
        f"`benchmarks/benchmark_loss_optimum.py`: {args.pairs} known-warp pairs (seeds 10000...) of the stroke "
        f"subject, {moving_contrast} moving, deformed {fixed_contrast} fixed, on the model grid (`load_subject`, "
        f"`prealigned` augmentation, no intensity augmentation); Adam ({args.learning_rate:g} voxels per step, "
        f"{args.iterations} iterations, the endpoint error measured every {ERROR_EVERY}) on `Midir.loss_terms` over the "
        "control-point velocities of each pair. "
        "Means over the pairs; EPE in mm in the brain; NMI on the same voxel sample for both maps.", "", *lines, "",
        f"## What a network on the model grid could reach: {args.cases} whole-registration cases", "",
        f"Known-warp cases of the stroke subject ({args.pair} both ways; for 2D, axial slices), pre-aligned as a "
        "network's are; then `optimise` (its affine stage from the pre-alignment, then 60 deformable iterations on "
        "the model grid's spacing only, NMI, 32 bins) with control points as far apart as a network's with that delta; "
        "EPE at full resolution in the brain.", "", *ceiling])


if __name__ == "__main__":
    main()
