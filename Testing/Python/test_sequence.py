"""Series over time (cine): a 2D+t file and a folder of frames both load as a series, a 3D file
only with --third-axis-time, and ``dmmreg register-sequence`` registers real ACDC frames in one
process, writing a transform per frame and carrying the end-diastolic myocardium onto the
end-systolic frame better than leaving it where it is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import require

from dmmreg.errors import InputError
from dmmreg.image_io import read_image
from dmmreg.metrics import dice_per_label
from dmmreg.sequence import frame_number, read_series

ACDC = Path(__file__).parents[2].parent / "shared" / "data" / "cardiac" / "acdc-cine" / "Video001m"


def moving_disc(frames: int, size=(40, 32)) -> np.ndarray:
    """``(t, y, x)`` float32 frames of a bright disc moving right one pixel per frame."""
    y, x = np.mgrid[:size[1], :size[0]]
    return np.stack([(np.hypot(x - 12 - t, y - 16) < 6).astype(np.float32) * 100 + 10 for t in range(frames)])


def write_sitk(array: np.ndarray, path: Path, spacing, origin) -> None:
    image = sitk.GetImageFromArray(array, isVector=False)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))


def test_a_2d_plus_t_nifti_loads_as_a_series(tmp_path):
    frames = moving_disc(5)
    path = tmp_path / "cine.nii.gz"
    write_sitk(frames[:, None], path, (1.5, 1.4, 8.0, 30.0), (-20.0, 10.0, 4.0, 0.0))  # (x, y, 1, t)
    series = read_series(path)
    assert len(series) == 5 and series.dim == 2
    assert series.names == [f"frame_{t:03d}" for t in range(5)]
    assert series.times == pytest.approx([0.0, 30.0, 60.0, 90.0, 120.0])
    assert series.frames[0].geometry.spacing == pytest.approx((1.5, 1.4))
    assert series.frames[0].geometry.origin == pytest.approx((-20.0, 10.0))
    np.testing.assert_array_equal(series.frames[3].array, frames[3])


def test_a_3d_file_is_a_series_only_with_third_axis_time(tmp_path):
    path = tmp_path / "cine3d.nii.gz"
    write_sitk(moving_disc(4), path, (1.5, 1.5, 1.0), (0.0, 0.0, 0.0))  # (x, y, t)
    with pytest.raises(InputError, match="--third-axis-time"):
        read_series(path)
    series = read_series(path, third_axis_time=True)
    assert len(series) == 4 and series.dim == 2
    np.testing.assert_array_equal(series.frames[2].array, moving_disc(4)[2])


def test_a_frame_folder_loads_in_frame_number_order(tmp_path):
    frames = moving_disc(12)
    for t in (0, 2, 10, 11, 1):  # 10 and 11 sort before 2 by name
        write_sitk(frames[t], tmp_path / f"p001_frame_{t}_slice_05.nii.gz", (1.5, 1.5), (0.0, 0.0))
    write_sitk(frames[5][None], tmp_path / "p001_frame_5_slice_05.nii.gz", (1.5, 1.5, 8.0), (0.0, 0.0, 0.0))  # one slice thick
    (tmp_path / "notes.txt").write_text("not a frame")
    series = read_series(tmp_path)
    assert [frame_number(name) for name in series.names] == [0, 1, 2, 5, 10, 11]
    assert series.dim == 2
    for name, frame in zip(series.names, series.frames):
        np.testing.assert_array_equal(frame.array, frames[frame_number(name)])
    write_sitk(frames[3], tmp_path / "p001_frame_02_copy.nii.gz", (1.5, 1.5), (0.0, 0.0))
    with pytest.raises(InputError, match="two files numbered 2"):
        read_series(tmp_path)


def test_not_a_series_is_refused_with_the_reason(tmp_path):
    write_sitk(moving_disc(1)[0], tmp_path / "one.nii.gz", (1.0, 1.0), (0.0, 0.0))
    with pytest.raises(InputError, match="single frame"):
        read_series(tmp_path / "one.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        read_series(tmp_path / "empty")


def dmmreg(*arguments) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dmmreg", *map(str, arguments)], capture_output=True, text=True,
                          timeout=600)


def test_register_sequence_on_acdc_frames_propagates_the_myocardium(tmp_path):
    """Frames 0 (end-diastole), 4, 8 and 11 (end-systole) of one mid-ventricular slice, one process."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for t in (0, 4, 8, 11):
        (frames / f"patient001_frame_{t:02d}_slice_05.nii.gz").symlink_to(
            require(ACDC / "Frame" / f"patient001_frame_{t:02d}_slice_05.nii.gz"))
    ed_mask = require(ACDC / "GT" / "patient001_frame_00_slice_05.nii.gz")
    es_mask = read_image(require(ACDC / "GT" / "patient001_frame_11_slice_05.nii.gz")).array > 0
    out = tmp_path / "out"
    run = dmmreg("register-sequence", "--frames", frames, "--reference", 0, "--output-folder", out,
                 "--reference-mask", ed_mask, "--output-warped", "--progress", "json", "--threads", 1)
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    fractions = [event["fraction"] for event in events]
    assert fractions == sorted(fractions) and events[-1]["stage"] == "done" and events[-1]["frames"] == 4
    summary = json.loads((out / "series.json").read_text(encoding="utf-8"))
    assert [frame["name"] for frame in summary["frames"]] == [f"patient001_frame_{t:02d}_slice_05" for t in (0, 4, 8, 11)]
    for frame in summary["frames"]:
        for kind in ("transform", "warped", "mask"):
            assert Path(frame["outputs"][kind]).is_file()
    propagated = read_image(out / "patient001_frame_11_slice_05_mask.nii.gz").array > 0
    identity = dice_per_label(es_mask, read_image(ed_mask).array > 0)[1]
    registered = dice_per_label(es_mask, propagated)[1]
    assert registered > identity + 0.05, (identity, registered)


def test_a_failed_sequence_writes_nothing(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for t, frame in enumerate(moving_disc(3)):
        write_sitk(frame, frames / f"frame_{t}.nii.gz", (1.5, 1.5), (0.0, 0.0))
    out = tmp_path / "out"
    run = dmmreg("register-sequence", "--frames", frames, "--reference", 7, "--output-folder", out)
    assert run.returncode == 2 and "reference frame 7 is outside" in run.stderr
    assert not out.exists()
    run = dmmreg("register-sequence", "--frames", frames, "--output-folder", frames / "inside")
    assert run.returncode == 2 and "inputs are never modified" in run.stderr
