"""Run one ANTs registration (antspyx) and write its result as dmmreg reads it.

Runs in the benchmark virtualenv ``.venv-bench`` (antspyx pins its own numpy), called by
``benchmark_registration.py`` and ``benchmark_clinical_raw.py``::

    .venv-bench/bin/python benchmarks/ants_worker.py --fixed F.nii.gz --moving M.nii.gz \
        --type SyN --out-dir DIR [--threads 2]

Writes to ``DIR``:

* ``displacement.nii.gz``: the whole resampling transform ``T(p) - p`` (fixed -> moving, LPS, mm)
  on the fixed grid, a vector image that ``dmmreg.transform_io.read_result`` reads;
* ``warped.nii.gz``: ANTs' own moving image resampled on the fixed grid (``warpedmovout``), so
  the caller can check the conversion by resampling the moving image through the field;
* ``timing.json``: ``registration_seconds`` (``ants.registration`` alone), the transform type,
  the metrics used, the thread count and the antspyx version.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# antsRegistrationSyN[*] in antspyx ignores aff_metric / syn_metric: it uses mutual information
# for its rigid and affine stages and cross-correlation (radius 2) for SyN, as antsRegistrationSyN.sh
METRICS = {
    "Rigid": "mattes (mutual information)",
    "Affine": "mattes (mutual information)",
    "SyN": "mattes (mutual information), affine and SyN stages",
    "antsRegistrationSyN[s]": "MI (rigid, affine stages), CC radius 2 (SyN stage): fixed by antspyx",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixed", required=True, type=Path)
    parser.add_argument("--moving", required=True, type=Path)
    parser.add_argument("--type", required=True, choices=sorted(METRICS), help="ants.registration type_of_transform")
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=2, help="ITK threads (default 2)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # set before antspyx loads ITK
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    import ants

    fixed = ants.image_read(str(args.fixed))
    moving = ants.image_read(str(args.moving))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ants-") as scratch:
        prefix = os.path.join(scratch, "reg_")
        start = time.perf_counter()
        registration = ants.registration(
            fixed, moving, type_of_transform=args.type, outprefix=prefix, aff_metric="mattes", syn_metric="mattes"
        )
        seconds = time.perf_counter() - start
        # fwdtransforms maps fixed-grid points into the moving image (resampling direction);
        # antsApplyTransforms composes the list into one displacement field on the fixed grid
        composed = ants.apply_transforms(fixed, moving, registration["fwdtransforms"], compose=prefix + "total_")
        ants.image_write(ants.image_read(composed), str(args.out_dir / "displacement.nii.gz"))
    ants.image_write(registration["warpedmovout"], str(args.out_dir / "warped.nii.gz"))
    timing = {
        "type_of_transform": args.type,
        "metrics": METRICS[args.type],
        "registration_seconds": seconds,
        "itk_threads": args.threads,
        "antspyx_version": ants.__version__,
    }
    (args.out_dir / "timing.json").write_text(json.dumps(timing, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
