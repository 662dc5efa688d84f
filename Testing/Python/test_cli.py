"""The ``dmmreg`` command line, run as a user runs it (a subprocess), on the bundled stroke data.

Two real registrations (quality fast): one writing an ``.h5`` transform, one a ``.nii.gz`` field,
each to a case made by ``dmmreg known-warp``.  Bad inputs fail before any work, with exit code 2
and a message naming the problem, and never replace an existing output.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_resampling, sitk_resample

from dmmreg.geometry import Geometry
from dmmreg.image import Image
from dmmreg.image_io import read_image, write_image
from dmmreg.known_warp import endpoint_error
from dmmreg.transform_io import read_result, read_transform

KNOWN_WARP_SEED = 2


def dmmreg(*arguments, check: bool = False) -> subprocess.CompletedProcess:
    """``python -m dmmreg ARGUMENTS`` with its output captured."""
    run = subprocess.run([sys.executable, "-m", "dmmreg", *map(str, arguments)], capture_output=True, text=True, timeout=600)
    if check:
        assert run.returncode == 0, f"dmmreg {' '.join(map(str, arguments))} failed:\n{run.stderr}"
    return run


@pytest.fixture(scope="module")
def case(tmp_path_factory, stroke_paths) -> dict[str, Path]:
    """Fixed: the T2 deformed by a known warp (``dmmreg known-warp``); moving: the T1."""
    folder = tmp_path_factory.mktemp("known_warp")
    fixed, truth = folder / "T2_deformed.nii.gz", folder / "truth.h5"
    dmmreg("known-warp", "--input", stroke_paths["T2"], "--output", fixed, "--output-transform", truth,
           "--seed", KNOWN_WARP_SEED, check=True)
    return {"fixed": fixed, "truth": truth, "moving": stroke_paths["T1"]}


class Registration:
    """One ``dmmreg register --quality fast --progress json`` run and its output files."""

    def __init__(self, case, folder: Path, extension: str):
        self.extension = extension
        self.transform = folder / f"T1_to_T2{extension}"
        self.inverse = folder / f"T2_to_T1{extension}"
        self.volume = folder / "T1_registered.nii.gz"
        self.picture = folder / "registration.png"
        self.run = dmmreg(
            "register", "--fixed", case["fixed"], "--moving", case["moving"], "--quality", "fast", "--progress", "json",
            "--output-transform", self.transform, "--output-inverse-transform", self.inverse,
            "--output-volume", self.volume, "--output-picture", self.picture,
        )
        self.events = [json.loads(line) for line in self.run.stdout.splitlines()]


@pytest.fixture(scope="module", params=[".h5", ".nii.gz"])
def registration(request, case, tmp_path_factory) -> Registration:
    return Registration(case, tmp_path_factory.mktemp("register"), request.param)


def test_register_writes_its_outputs_and_reports_progress(registration):
    assert registration.run.returncode == 0, registration.run.stderr
    for path in (registration.transform, registration.inverse, registration.volume, registration.picture):
        assert path.is_file() and path.stat().st_size > 0, path
    events = registration.events
    assert len(events) > 5 and all({"stage", "fraction", "message"} <= set(e) for e in events)
    fractions = [e["fraction"] for e in events]
    assert fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] == 1.0
    assert {"affine", "deformable", "write"} <= {e["stage"] for e in events}
    done = events[-1]
    assert done["stage"] == "done"
    assert {Path(p) for p in done["outputs"].values()} == {
        registration.transform, registration.inverse, registration.volume, registration.picture}


def test_simpleitk_with_the_written_transform_reproduces_the_written_volume(registration, case):
    moving, fixed = read_image(case["moving"]), read_image(case["fixed"])
    warped = read_image(registration.volume)
    assert warped.geometry == fixed.geometry
    expected = sitk_resample(moving, fixed.geometry, read_transform(registration.transform))
    assert_same_resampling(warped.array, expected, registration.extension, moving.array.max())


def test_register_recovers_the_known_warp(registration, case):
    fixed, moving = read_image(case["fixed"]), read_image(case["moving"])
    estimate = read_result(registration.transform, fixed.geometry, moving.geometry)
    truth = read_result(case["truth"], fixed.geometry, moving.geometry)
    brain = fixed.array > 0
    initial = np.linalg.norm(truth.resampling_displacement(fixed.geometry)[brain], axis=-1).mean()
    error = endpoint_error(estimate, truth, brain).mean()
    assert initial > 10.0
    assert error < 2.0, f"mean endpoint error {error:.2f} mm (initially {initial:.1f} mm)"


def test_methods_lists_optimise():
    run = dmmreg("methods", check=True)
    assert run.stdout.startswith("optimise: ")


# --------------------------------------------------------------------------------------------
# Bad inputs


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory, stroke) -> dict[str, Path]:
    """Images registration must refuse, each next to a good one (the stroke T1)."""
    folder = tmp_path_factory.mktemp("bad")
    t1 = stroke["T1"]
    g = t1.geometry
    nan = t1.array.copy()
    nan[70, 80, 60] = np.nan
    images = {
        "2D": Image(t1.array[70], Geometry(g.size[:2], g.spacing[:2], g.origin[:2], np.eye(2))),
        "constant": t1.with_array(np.zeros_like(t1.array)),
        "nan": t1.with_array(nan),
        "far": Image(t1.array, Geometry(g.size, g.spacing, tuple(np.add(g.origin, 1000.0)), g.direction)),
    }
    # NRRD keeps NaN (ITK reads a NaN in a NIfTI file as 0)
    paths = {name: folder / f"{name}.nrrd" for name in images}
    for name, image in images.items():
        write_image(image, paths[name])
    paths["missing"] = folder / "missing.nrrd"
    return paths


#: name -> (moving image, options replacing the defaults (output paths relative to the output
#: folder), the message expected)
BAD_INPUTS = {
    "missing file": ("missing", {}, "moving image file not found: .*missing.nrrd"),
    "2D against 3D": ("2D", {}, "fixed image is 3D and the moving image 2D"),
    "constant image": ("constant", {}, "the moving image is constant"),
    "NaN image": ("nan", {}, "the moving image contains NaN"),
    "no physical overlap": ("far", {}, "the moving image does not overlap the fixed image in physical space"),
    "unknown method": ("T1", {"--method": "no-such-method"}, "unknown method 'no-such-method'; available: optimise"),
    "unknown transform format": ("T1", {"--output-transform": "T.png"}, "cannot tell the transform format of .*T.png"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_exits_2_naming_the_problem(name, bad_images, stroke_paths, tmp_path):
    moving, overrides, message = BAD_INPUTS[name]
    options = {
        "--fixed": stroke_paths["T2"],
        "--moving": stroke_paths["T1"] if moving == "T1" else bad_images[moving],
        "--output-transform": tmp_path / "T.h5",
        **{key: tmp_path / value if key.startswith("--output") else value for key, value in overrides.items()},
    }
    run = dmmreg("register", *[item for pair in options.items() for item in pair])
    assert run.returncode == 2, run.stderr
    error_lines = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, run.stderr
    assert re.search(message, error_lines[0]), error_lines[0]
    assert "Traceback" not in run.stderr
    assert list(tmp_path.iterdir()) == [], "a refused run must not write anything"


def test_failed_run_keeps_existing_outputs(bad_images, stroke_paths, tmp_path):
    outputs = {name: tmp_path / name for name in ("T.h5", "T_inverse.h5", "W.nii.gz", "picture.png")}
    for path in outputs.values():
        path.write_text("earlier result")
    run = dmmreg("register", "--fixed", stroke_paths["T2"], "--moving", bad_images["nan"], "--progress", "json",
                 "--output-transform", outputs["T.h5"], "--output-inverse-transform", outputs["T_inverse.h5"],
                 "--output-volume", outputs["W.nii.gz"], "--output-picture", outputs["picture.png"])
    assert run.returncode == 2
    assert json.loads(run.stdout.splitlines()[-1])["stage"] == "error"
    assert all(path.read_text() == "earlier result" for path in outputs.values())
    assert sorted(tmp_path.iterdir()) == sorted(outputs.values()), "no partial file may be left behind"
