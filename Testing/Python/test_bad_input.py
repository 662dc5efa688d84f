"""The bad-input catalogue: every way a run can go wrong ends in one ``error:`` line, exit code 2
(bad input), 1 (internal error) or 130 (cancelled), no traceback, untouched inputs and untouched
earlier outputs (no output set half-updated, no temporary file left).

Each case runs ``dmmreg register`` in-process (:func:`dmmreg.cli.main`) on a small copy of the
stroke data (4 mm, smoothed) with earlier outputs already in place, and compares a checksum of
every file in its folder before and after.  Failures after the registration use a stand-in
result (the identity), so the catalogue needs no registration; signals run a real one in a
subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dmmreg import cli
from dmmreg.result import RegistrationResult

#: Standard outputs of a case, each holding an earlier result before the run.
EARLIER = {"--output-transform": "out/T.h5", "--output-inverse-transform": "out/I.h5",
           "--output-volume": "out/W.nii.gz", "--output-picture": "out/p.png"}


@pytest.fixture(scope="module")
def small(tmp_path_factory, stroke_paths) -> Path:
    """The stroke T1 and T2 smoothed and shrunk to 4 mm (31 x 40 x 35), as float32 NIfTI."""
    folder = tmp_path_factory.mktemp("small")
    for contrast in ("T1", "T2"):
        image = sitk.ReadImage(str(stroke_paths[contrast]), sitk.sitkFloat32)
        sitk.WriteImage(sitk.Shrink(sitk.SmoothingRecursiveGaussian(image, 2.0), [4, 4, 4]), str(folder / f"{contrast}.nii.gz"))
    return folder


@pytest.fixture
def work(tmp_path, small) -> Path:
    """A case's folder: ``in/`` (the inputs) and ``out/`` (earlier outputs)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    for name in ("T1.nii.gz", "T2.nii.gz"):
        shutil.copy(small / name, tmp_path / "in" / name)
    for path in EARLIER.values():
        (tmp_path / path).write_text(f"earlier result {path}")
    return tmp_path


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file (links: their target) under ``folder``."""
    return {str(p.relative_to(folder)): (f"link {os.readlink(p)}" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file() or p.is_symlink()}


def run(work: Path, capsys, options: dict, *extra: str) -> tuple[int, str]:
    """``dmmreg register`` on the case's inputs and earlier outputs, ``options`` replacing
    them (value None: left out); returns (exit code, standard error)."""
    arguments = {"--fixed": "in/T2.nii.gz", "--moving": "in/T1.nii.gz", **EARLIER, "--quality": "fast",
                 "--progress": "none", **options}
    argv = ["register"] + [str(item) for key, value in arguments.items() if value is not None
                           for item in (key, work / value if isinstance(value, str) and "/" in value and not value.startswith("/") else value)]
    capsys.readouterr()
    try:
        code = cli.main(argv + list(extra))
    except SystemExit as exit:  # argparse
        code = exit.code
    return code, capsys.readouterr().err


def assert_refused(work: Path, capsys, options: dict, code: int, message: str, *extra: str) -> None:
    """The run exits with ``code`` and one error line matching ``message``, without a
    traceback, and leaves every file of the folder as it was."""
    before = snapshot(work)
    exit_code, stderr = run(work, capsys, options, *extra)
    errors = [line for line in stderr.splitlines() if "error: " in line]
    assert exit_code == code, stderr
    assert len(errors) == 1, stderr
    assert re.search(message, errors[0]), errors[0]
    assert "Traceback" not in stderr
    assert snapshot(work) == before, "inputs and earlier outputs must stay as they were, with no file added"


# --------------------------------------------------------------------------------------------
# Making bad inputs


def truncated(path: Path, keep: float = 0.5, name: str | None = None) -> str:
    data = path.read_bytes()
    target = path.with_name(name or f"cut_{path.name}")
    target.write_bytes(data[: int(len(data) * keep)])
    return str(target.relative_to(path.parents[1]))


def written(work: Path, name: str, image: sitk.Image) -> str:
    sitk.WriteImage(image, str(work / "in" / name), True)
    return f"in/{name}"


def t1(work: Path) -> sitk.Image:
    return sitk.ReadImage(str(work / "in" / "T1.nii.gz"))


def converted(work: Path, name: str) -> Path:
    """The T1 in another format (``name``'s extension), written uncompressed."""
    sitk.WriteImage(t1(work), str(work / "in" / name), False)
    return work / "in" / name


def dicom_series(folder: Path, description: str, uid: str, slices: int = 5) -> None:
    """``slices`` 16 x 12 MR slices of one series."""
    folder.mkdir(exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(slices):
        image = sitk.GetImageFromArray((np.arange(16 * 12).reshape(12, 16) + k).astype(np.int16))
        for tag, value in {"0008|0060": "MR", "0020|000d": "1.2.3", "0020|000e": uid, "0008|103e": description,
                           "0020|0013": str(k + 1), "0020|0032": f"0\\0\\{k}", "0020|0037": "1\\0\\0\\0\\1\\0",
                           "0008|0018": f"{uid}.{k}", "0008|0016": "1.2.840.10008.5.1.4.1.1.4"}.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid}-{k}.dcm"))
        writer.Execute(image)


def pickle_bomb(path: Path, marker: Path) -> None:
    """A pickle that creates ``marker`` when unpickled."""
    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path.write_bytes(pickle.dumps(Payload()))


def model_card(path: Path, method: str = "midir", dimension: int = 3, **extra) -> None:
    path.with_suffix(".json").write_text(json.dumps({"format": "dmmreg-model/1", "name": path.stem, "method": method,
                                                     "dimension": dimension, "config": {}, **extra}))


def safetensors_file(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(64, 64)}, str(path))


# --------------------------------------------------------------------------------------------
# The catalogue: name -> make(work) returning (options, exit code, message)


def _one_slice(work):
    image = t1(work)
    return {"--moving": written(work, "slice.nii.gz", image[:, :, 17:18])}, 2, "moving image a 3D volume one slice thick \\(31 x 40 x 1 voxels"


def _two_dimensional(work):
    return {"--moving": written(work, "2d.nrrd", t1(work)[:, :, 17])}, 2, "fixed image is 3D and the moving image 2D"


def _four_dimensional(work):
    image = t1(work)
    return {"--moving": written(work, "4d.nii.gz", sitk.JoinSeries([image, image]))}, 2, "4D image given"


def _vector(work):
    image = t1(work)
    return {"--moving": written(work, "rgb.nrrd", sitk.Compose([image, image, image]))}, 2, "3 components per voxel"


def _constant(work):
    return {"--moving": written(work, "zero.nii.gz", t1(work) * 0)}, 2, "the moving image is constant"


def _nan(work):
    image = t1(work)
    array = sitk.GetArrayFromImage(image)
    array[10, 10, 10] = np.nan
    nan = sitk.GetImageFromArray(array)
    nan.CopyInformation(image)
    return {"--moving": written(work, "nan.nrrd", nan)}, 2, "the moving image contains NaN"


def _far(work):
    image = t1(work)
    image.SetOrigin(tuple(np.add(image.GetOrigin(), 1000.0)))
    return {"--moving": written(work, "far.nii.gz", image)}, 2, "does not overlap the fixed image"


def _tiny(work):
    return {"--moving": written(work, "tiny.nii.gz", t1(work)[:3, :3, :3])}, 2, "the moving image is too small"


def _two_series(work):
    dicom_series(work / "in" / "dicom", "T1 axial", "1.2.3.1")
    dicom_series(work / "in" / "dicom", "FLAIR sagittal", "1.2.3.2", slices=4)
    return ({"--moving": "in/dicom"}, 2,
            r"holds 2 DICOM series \(.*FLAIR sagittal \(16 x 12 x 4\).*T1 axial \(16 x 12 x 5\)|"
            r"holds 2 DICOM series \(.*T1 axial \(16 x 12 x 5\).*FLAIR sagittal \(16 x 12 x 4\)")


def _no_dicom(work):
    (work / "in" / "empty").mkdir()
    return {"--moving": "in/empty"}, 2, "holds no DICOM series"


def _text_as_nifti(work):
    (work / "in" / "notes.nii").write_text("not an image\n" * 50)
    return {"--moving": "in/notes.nii"}, 2, "cannot read moving image .*notes.nii"


def _random_as_nifti(work):
    (work / "in" / "random.nii.gz").write_bytes(np.random.default_rng(0).bytes(5000))
    return {"--moving": "in/random.nii.gz"}, 2, "moving image .*random.nii.gz"


def _empty_file(work):
    (work / "in" / "empty.nii.gz").write_bytes(b"")
    return {"--moving": "in/empty.nii.gz"}, 2, "moving image .*empty.nii.gz"


def _corrupt_gzip(work):
    data = bytearray((work / "in" / "T1.nii.gz").read_bytes())
    data[3000:3100] = b"x" * 100
    (work / "in" / "corrupt.nii.gz").write_bytes(bytes(data))
    return {"--moving": "in/corrupt.nii.gz"}, 2, "moving image .*corrupt.nii.gz is corrupt"


def _mask_of_zeros(work):
    return {"--fixed-mask": written(work, "mask.nii.gz", sitk.ReadImage(str(work / "in" / "T2.nii.gz")) * 0)}, 2, \
        "the fixed mask is empty"


def _mask_2d(work):
    return {"--moving-mask": written(work, "mask2d.nrrd", t1(work)[:, :, 17] > 0)}, 2, "the moving mask is 2D"


def _field_as_initial(work):
    field = sitk.Image(t1(work).GetSize(), sitk.sitkVectorFloat64, 3)
    field.CopyInformation(t1(work))
    return {"--initial-transform": written(work, "field.nii.gz", field)}, 2, "holds a displacement field; --initial-transform takes an affine"


def _garbage_h5(work):
    (work / "in" / "initial.h5").write_bytes(b"\x89HDF\r\n" + bytes(300))
    return {"--initial-transform": "in/initial.h5"}, 2, "cannot read transform .*initial.h5"


def _truncated_field(work):
    field = sitk.Image(t1(work).GetSize(), sitk.sitkVectorFloat64, 3)
    field.CopyInformation(t1(work))
    written(work, "field.nii.gz", field)
    return {"--initial-transform": truncated(work / "in" / "field.nii.gz")}, 2, "transform .*: file is truncated"


def _hard_link_output(work):
    os.link(work / "in" / "T2.nii.gz", work / "out" / "T2_copy.nii.gz")
    return {"--output-volume": "out/T2_copy.nii.gz"}, 2, "output volume .* would overwrite the fixed image"


def _link_output(work):
    (work / "out" / "link.nii.gz").symlink_to(work / "in" / "T1.nii.gz")
    return {"--output-volume": "out/link.nii.gz"}, 2, "output volume .*link.nii.gz would overwrite the moving image"


def _output_in_dicom_folder(work):
    dicom_series(work / "in" / "dicom", "T1 axial", "1.2.3.1")
    return {"--fixed": "in/dicom", "--output-picture": "in/dicom/check.png"}, 2, "would overwrite the fixed image"


def _model_pickle(suffix):
    def make(work):
        pickle_bomb(work / "in" / f"model{suffix}", work / "MARKER")
        model_card(work / "in" / "model.json")
        return ({"--method": "midir", "--model": f"in/model{suffix}"}, 2,
                "pickle.*never loaded" if suffix == ".safetensors" else r"\.pt file \(pickled PyTorch weights\), which is never loaded")
    return make


def _model_random(work):
    (work / "in" / "model.safetensors").write_bytes(np.random.default_rng(1).bytes(4000))
    model_card(work / "in" / "model.json")
    return {"--method": "midir", "--model": "in/model.safetensors"}, 2, "model.safetensors are not a safetensors file"


def _model_truncated(work):
    safetensors_file(work / "in" / "full.safetensors")
    model_card(work / "in" / "model.json")
    data = (work / "in" / "full.safetensors").read_bytes()
    (work / "in" / "model.safetensors").write_bytes(data[: len(data) // 2])
    return {"--method": "midir", "--model": "in/model.safetensors"}, 2, r"model.safetensors: file is truncated: \d+ of \d+ bytes"


def _model_other_network(work):
    safetensors_file(work / "in" / "model.safetensors")
    model_card(work / "in" / "model.json")
    return {"--method": "midir", "--model": "in/model.safetensors"}, 2, "does not match the midir network"


def _model_without_card(work):
    safetensors_file(work / "in" / "model.safetensors")
    return {"--method": "midir", "--model": "in/model.safetensors"}, 2, "no model card .*model.json"


def _model_card_not_json(work):
    safetensors_file(work / "in" / "model.safetensors")
    (work / "in" / "model.json").write_bytes(b"\xff\xfe not json")
    return {"--method": "midir", "--model": "in/model.safetensors"}, 2, "model card .*model.json is not valid JSON"


def _model_wrong_method(work):
    safetensors_file(work / "in" / "model.safetensors")
    model_card(work / "in" / "model.json", method="variational")
    return {"--method": "midir", "--model": "in/model.safetensors"}, 2, "is a 'variational' model, not a 'midir' one"


def _model_wrong_dimension(work):
    from dmmreg.methods import method_class
    from dmmreg.model_io import save_model

    cls = method_class("midir")
    save_model(cls(cls.config_class(dim=2, spacing_mm=8.0)), work / "in" / "model.safetensors")
    return {"--method": "midir", "--model": "in/model.safetensors"}, 2, "is 2D but the images are 3D; choose a 3D model"


def _model_not_a_model_file(work):
    (work / "in" / "weights.npz").write_bytes(b"PK\x03\x04")
    return {"--method": "midir", "--model": "in/weights.npz"}, 2, "weights.npz is not a model file"


CATALOGUE = {
    # input images
    "missing moving image": lambda w: ({"--moving": "in/none.nii.gz"}, 2, "moving image file not found: .*none.nii.gz"),
    "missing fixed image": lambda w: ({"--fixed": "in/none.nii.gz"}, 2, "fixed image file not found"),
    "truncated .nii.gz": lambda w: ({"--moving": truncated(w / "in" / "T1.nii.gz")}, 2,
                                    r"moving image .*: file is truncated: \d+ of 173952 bytes \(decompressed\)"),
    "truncated .nii.gz fixed": lambda w: ({"--fixed": truncated(w / "in" / "T2.nii.gz", 0.9)}, 2, "fixed image .*: file is truncated"),
    "truncated .nii": lambda w: ({"--moving": truncated(converted(w, "T1.nii"), 0.99)}, 2,
                                r"file is truncated: \d+ of 173952 bytes; .*copy the file again"),
    "truncated .mha": lambda w: ({"--moving": truncated(converted(w, "T1.mha"), 0.7)}, 2, "T1.mha: file is truncated"),
    "truncated .nrrd": lambda w: ({"--moving": truncated(converted(w, "T1.nrrd"), 0.7)}, 2, "cannot read moving image .*T1.nrrd"),
    "corrupt gzip": _corrupt_gzip,
    "empty file": _empty_file,
    "random bytes as .nii.gz": _random_as_nifti,
    "text as .nii": _text_as_nifti,
    "folder without DICOM": _no_dicom,
    "folder with two DICOM series": _two_series,
    "one-slice 3D volume": _one_slice,
    "2D against 3D": _two_dimensional,
    "4D image": _four_dimensional,
    "RGB image": _vector,
    "constant image": _constant,
    "NaN image": _nan,
    "no physical overlap": _far,
    "too small": _tiny,
    # masks and initial transform
    "missing mask": lambda w: ({"--moving-mask": "in/mask.nii.gz"}, 2, "moving mask file not found"),
    "truncated mask": lambda w: ({"--fixed-mask": truncated(w / "in" / "T2.nii.gz", 0.5, "mask.nii.gz")}, 2, "fixed mask .*: file is truncated"),
    "empty mask": _mask_of_zeros,
    "2D mask of a 3D image": _mask_2d,
    "missing initial transform": lambda w: ({"--initial-transform": "in/initial.tfm"}, 2, "transform file not found"),
    "displacement field as initial transform": _field_as_initial,
    "garbage .h5 initial transform": _garbage_h5,
    "truncated field initial transform": _truncated_field,
    # outputs
    "output volume is the moving image": lambda w: ({"--output-volume": "in/T1.nii.gz"}, 2,
                                                     "output volume .*T1.nii.gz would overwrite the moving image"),
    "output transform is the fixed image": lambda w: ({"--output-transform": "in/T2.nii.gz"}, 2, "would overwrite the fixed image"),
    "output through a link to an input": _link_output,
    "output is a second name of an input": _hard_link_output,
    "output inside an input DICOM folder": _output_in_dicom_folder,
    "two outputs on one file": lambda w: ({"--output-inverse-transform": "out/T.h5"}, 2,
                                          "output inverse transform and output transform are both"),
    "output folder not writable": lambda w: ({"--output-volume": "/proc/dmmreg-test/W.nii.gz"}, 2,
                                             "cannot write output volume /proc/dmmreg-test/W.nii.gz: /proc is not writable"),
    "output under a file": lambda w: ({"--output-picture": "out/p.png/p.png"}, 2, "cannot write output picture .*: .*p.png is a file, not a folder"),
    "output is a folder": lambda w: ({"--output-volume": "out/"}, 2, "output volume .*out is a folder"),
    "unknown transform format": lambda w: ({"--output-transform": "out/T.png"}, 2, "cannot tell the transform format"),
    "deformable transform as .tfm": lambda w: ({"--output-transform": "out/T.tfm"}, 2, "a deformable transform needs .h5"),
    # options
    "unknown method": lambda w: ({"--method": "no-such-method"}, 2, "unknown method 'no-such-method'"),
    "model for optimise": lambda w: ({"--model": "midir-brain"}, 2, "--model and --refine apply to the learned methods"),
    "negative refinement": lambda w: ({"--method": "midir", "--refine": "-1"}, 2, "must be 0 or more iterations"),
    "synthesised images from optimise": lambda w: ({"--output-synthesised": "out/syn"}, 2, "synthesises no images"),
    "unknown quality (argparse)": lambda w: ({"--quality": "best"}, 2, "argument --quality: invalid choice"),
    # models
    "model not found": lambda w: ({"--method": "midir", "--model": "no-such-model"}, 2, "model 'no-such-model' not found"),
    "pickle renamed .safetensors": _model_pickle(".safetensors"),
    "pickle as .pt": _model_pickle(".pt"),
    "random .safetensors": _model_random,
    "truncated .safetensors": _model_truncated,
    "weights of another network": _model_other_network,
    "weights without a card": _model_without_card,
    "card not JSON": _model_card_not_json,
    "model of another method": _model_wrong_method,
    "model of another dimension": _model_wrong_dimension,
    "not a model file": _model_not_a_model_file,
}


@pytest.mark.parametrize("name", CATALOGUE)
def test_bad_input_is_refused_and_changes_nothing(name, work, capsys):
    options, code, message = CATALOGUE[name](work)
    assert_refused(work, capsys, options, code, message)
    assert not (work / "MARKER").exists(), "a pickle's payload ran"


# --------------------------------------------------------------------------------------------
# Failures and cancels after the registration: outputs all or nothing


@pytest.fixture
def identity_result(monkeypatch):
    """``register_pair`` replaced by one returning the identity at once."""
    def register_pair(fixed, moving, **settings):
        return RegistrationResult(fixed.geometry, moving.geometry, np.eye(fixed.dim + 1), method="identity")

    monkeypatch.setattr("dmmreg.registration.register_pair", register_pair)


def test_a_failing_later_output_writes_nothing(work, capsys, identity_result, monkeypatch):
    def broken_picture(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("dmmreg.picture.save_registration_picture", broken_picture)
    assert_refused(work, capsys, {}, 1, r"No space left on device; no output was written \(existing files are unchanged\)")


def test_ctrl_c_while_writing_writes_nothing(work, capsys, identity_result, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("dmmreg.image_io.write_image", interrupted)
    assert_refused(work, capsys, {}, 130, r"cancelled; no output was written")


def test_a_failing_move_puts_back_the_earlier_outputs(work, capsys, identity_result, monkeypatch):
    moves = []
    replace = os.replace

    def failing_third_move(source, target):
        if ".partial-" in os.fspath(source) and Path(target).parent == work / "out":
            moves.append(target)
            if len(moves) == 3:
                raise OSError(5, "Input/output error")
        replace(source, target)

    monkeypatch.setattr(os, "replace", failing_third_move)
    assert_refused(work, capsys, {}, 1, "Input/output error; no output was written")
    assert len(moves) == 3


def test_an_internal_error_is_one_line_and_debug_shows_the_traceback(work, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something inside broke")

    monkeypatch.setattr("dmmreg.registration.register_pair", broken)
    assert_refused(work, capsys, {}, 1, r"internal error \(RuntimeError: something inside broke\); no output was written")
    with pytest.raises(RuntimeError, match="something inside broke"):
        run(work, capsys, {}, "--debug")


def test_a_run_that_succeeds_replaces_every_output(work, capsys, identity_result):
    before = snapshot(work)
    code, stderr = run(work, capsys, {})
    assert code == 0, stderr
    after = snapshot(work)
    assert all(after[path] != before[path] for path in EARLIER.values())
    assert set(after) == set(before), "no temporary file may be left"


def test_a_label_map_is_warped_by_nearest_neighbour(work, capsys, identity_result):
    array = (sitk.GetArrayFromImage(t1(work)) > 0.3 * sitk.GetArrayFromImage(t1(work)).max()).astype(np.uint8) * 3
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(t1(work))
    moving = written(work, "labels.nii.gz", labels)
    code, stderr = run(work, capsys, {"--moving": moving, "--progress": "text"})
    assert code == 0, stderr
    assert "looks like a label map (2 values)" in stderr
    assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(work / "out" / "W.nii.gz"))))) <= {0, 3}


# --------------------------------------------------------------------------------------------
# Signals, as a user sends them (a real registration in a subprocess)


def _register_process(work: Path) -> subprocess.Popen:
    arguments = ["--fixed", work / "in/T2.nii.gz", "--moving", work / "in/T1.nii.gz", "--quality", "fast",
                 "--progress", "json"] + [item for key, value in EARLIER.items() for item in (key, work / value)]
    return subprocess.Popen([sys.executable, "-m", "dmmreg", "register", *map(str, arguments)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_the_run_exits_130_and_keeps_the_earlier_outputs(sig, work):
    before = snapshot(work)
    process = _register_process(work)
    for line in process.stdout:
        if json.loads(line)["stage"] not in ("load",):  # the registration has started
            break
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.startswith("error: ")] == [
        "error: cancelled; no output was written (existing files are unchanged)"]
    assert snapshot(work) == before


def test_ctrl_c_while_starting_exits_130_without_a_traceback(work):
    before = snapshot(work)
    process = _register_process(work)
    time.sleep(0.5)  # importing
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert snapshot(work) == before
