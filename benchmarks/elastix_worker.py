"""Run one elastix registration (itk-elastix) and write its result as dmmreg reads it.

Runs in the benchmark virtualenv ``.venv-bench`` (see benchmarks/README.md), called by
``benchmark_clinical_raw.py`` and ``benchmark_registration.py``::

    .venv-bench/bin/python benchmarks/elastix_worker.py --fixed F.nii.gz --moving M.nii.gz \
        --type rigid --out-dir DIR [--threads 1]

The registration runs itk-elastix's default parameter maps of ``--type`` in sequence ("rigid":
Euler transform; "affine": affine transform; "affine-bspline": the "affine" map, then the
"bspline" map: B-spline transform, final grid spacing 10 mm, Mattes mutual information plus
bending energy penalty of weight 1).  Every map: Mattes mutual information, 4 resolutions of 256
adaptive stochastic gradient steps, 2048 random samples; no automatic initialisation, so it
starts from the images' headers.  Writes to ``DIR``, as ``ants_worker.py`` does:

* ``displacement.nii.gz``: the resampling transform ``T(p) - p`` (fixed -> moving, LPS, mm) on the
  fixed grid (transformix's deformation field);
* ``warped.nii.gz``: elastix's own moving image resampled on the fixed grid, with linear
  interpolation (``ResampleInterpolator`` "FinalLinearInterpolator" instead of the default cubic
  B-spline, the one change to the default maps: it leaves the registration as it is and lets the
  caller compare with the moving image resampled linearly through the field);
* ``timing.json``: ``registration_seconds`` (the elastix call alone), the type, the metric, the
  thread count and the itk-elastix version.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

TYPES = {"rigid": ("rigid",), "affine": ("affine",), "affine-bspline": ("affine", "bspline")}  # default maps


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixed", required=True, type=Path)
    parser.add_argument("--moving", required=True, type=Path)
    parser.add_argument("--type", required=True, choices=sorted(TYPES), help="elastix default parameter map(s)")
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=1, help="ITK/elastix threads (default 1)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    import itk
    from importlib.metadata import version

    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(args.threads)
    fixed = itk.imread(str(args.fixed), itk.F)
    moving = itk.imread(str(args.moving), itk.F)
    parameters = itk.ParameterObject.New()
    parameter_maps = [parameters.GetDefaultParameterMap(name) for name in TYPES[args.type]]
    for parameter_map in parameter_maps:
        parameter_map["MaximumNumberOfThreads"] = [str(args.threads)]
        parameter_map["ResampleInterpolator"] = ["FinalLinearInterpolator"]
        parameters.AddParameterMap(parameter_map)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="elastix-") as scratch:
        start = time.perf_counter()
        warped, transform = itk.elastix_registration_method(
            fixed, moving, parameter_object=parameters, log_to_console=False, output_directory=scratch)
        seconds = time.perf_counter() - start
        # transformix's deformation field: T(p) - p at the fixed grid's points, T fixed -> moving;
        # transformix also writes deformationField.nii to the working folder: keep it in scratch
        here = os.getcwd()
        os.chdir(scratch)
        try:
            field = itk.transformix_deformation_field(moving, transform)
        finally:
            os.chdir(here)
    itk.imwrite(field, str(args.out_dir / "displacement.nii.gz"))
    itk.imwrite(warped, str(args.out_dir / "warped.nii.gz"))
    timing = {
        "type": args.type,
        "metrics": " then ".join(" + ".join(parameter_map["Metric"]) for parameter_map in parameter_maps),
        "registration_seconds": seconds,
        "itk_threads": args.threads,
        "itk_elastix_version": version("itk-elastix"),
    }
    (args.out_dir / "timing.json").write_text(json.dumps(timing, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
