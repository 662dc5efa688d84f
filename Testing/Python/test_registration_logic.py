"""Registration logic on a real slicer-core scene: nodes in, background process, nodes out.

* The background process runner (progress lines, cancel of the whole process tree) is tested
  with a small stand-in command.
* Bad inputs give clear errors and change no node.
* End to end with the real backend (``python -m dmmreg register``, quality fast): the result
  nodes agree with SimpleITK on an oblique volume, cancel leaves the scene unchanged, a backend
  failure shows its message, and a cine MRI sequence gives transform and warped sequences.
"""

from __future__ import annotations

import glob
import json
import importlib.util
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
sitk = pytest.importorskip("SimpleITK")

from dmmreg.slicer import mrml  # noqa: E402
from dmmreg.slicer.background import BackgroundProcess, device_choices, parse_progress_line, run_to_end  # noqa: E402
from dmmreg.errors import InputError  # noqa: E402
from dmmreg.geometry import Geometry
from dmmreg.image import Image
from dmmreg.image_io import from_sitk, read_image, to_sitk  # noqa: E402
from dmmreg.slicer.registration_inputs import RegistrationParameters  # noqa: E402
from dmmreg.slicer.registration_logic import RegistrationFailed, RegistrationLogic  # noqa: E402

DATA = Path(__file__).parents[3] / "shared" / "data"
STROKE = DATA / "brain-multicontrast" / "stroke"
CINE = DATA / "cardiac" / "rvsc-p09" / "patient09" / "P09dicom"
HAS_CLI = importlib.util.find_spec("dmmreg.cli") is not None
needs_cli = pytest.mark.skipif(not HAS_CLI, reason="the backend command line (dmmreg.cli) is not there yet")


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real test data not found at {path} (the shared data folder is absent)")
    return path


def scene_snapshot(scene) -> list[tuple[str, str, int]]:
    """IDs, names and modification times of every node: equal snapshots = unchanged scene."""
    return [(n.GetID(), n.GetName(), n.GetMTime()) for n in (scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()))]


def temporary_folders() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "dmmreg-*")))


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


@pytest.fixture(scope="module")
def stroke():
    """T1 and FLAIR of the stroke subject (aligned, oblique, 1 mm), as float images."""
    images = {}
    for contrast in ("T1", "FLAIR"):
        image = read_image(require(STROKE / f"{contrast}.nii.gz"))
        images[contrast] = image.with_array(image.array.astype(np.float32))
    return images


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


# --------------------------------------------------------------------------------------------
# Background process runner


STAND_IN = textwrap.dedent(
    """
    import json, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    print(json.dumps({"stage": "child", "fraction": 0.0, "message": str(child.pid)}), flush=True)
    print("plain log text", flush=True)
    for i in range(1, 4):
        print(json.dumps({"stage": "work", "fraction": i / 4, "message": f"step {i}"}), flush=True)
        time.sleep(0.05)
    if sys.argv[1] == "fail":
        print("error: the stand-in failed on purpose", file=sys.stderr, flush=True)
        child.kill()
        sys.exit(2)
    if sys.argv[1] == "hang":
        time.sleep(60)
    child.kill()
    print(json.dumps({"stage": "done", "fraction": 1.0, "message": "ok", "outputs": {"x": 1}}), flush=True)
    """
)


def run_stand_in(mode: str) -> BackgroundProcess:
    return BackgroundProcess([sys.executable, "-c", STAND_IN, mode])


def test_progress_lines_are_parsed():
    assert parse_progress_line('{"stage": "affine", "fraction": 0.25, "message": "level 1"}').fraction == 0.25
    done = parse_progress_line('{"stage": "done", "fraction": 1, "message": "", "outputs": {"a": "b"}}')
    assert done.stage == "done" and done.details == {"outputs": {"a": "b"}}
    assert parse_progress_line("Loading model...") is None
    assert parse_progress_line("{not json") is None


def test_background_process_reports_progress_and_log():
    process = run_stand_in("ok")
    assert process.wait(30) == 0
    events = process.poll()
    stages = [value.stage for kind, value in events if kind == "progress"]
    assert stages == ["child", "work", "work", "work", "done"]
    assert ("log", "plain log text") in events
    assert [v for k, v in events if k == "progress"][-1].details["outputs"] == {"x": 1}


def test_background_failure_keeps_the_message():
    process = run_stand_in("fail")
    assert process.wait(30) == 2
    assert "error: the stand-in failed on purpose" in process.stderr


def test_cancel_ends_the_whole_process_tree():
    process = run_stand_in("hang")
    child_pid = None
    deadline = time.monotonic() + 30
    while child_pid is None and time.monotonic() < deadline:
        for kind, value in process.poll():
            if kind == "progress" and value.stage == "child":
                child_pid = int(value.message)
        time.sleep(0.02)
    assert child_pid and process_exists(child_pid)
    started = time.monotonic()
    process.cancel()
    assert time.monotonic() - started < 5
    assert process.returncode is not None and not process_exists(process.pid)
    deadline = time.monotonic() + 5
    while process_exists(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_exists(child_pid), "the grandchild survived the cancel"


def test_device_choices_name_the_gpu():
    assert device_choices(None) == [("auto", "Automatic"), ("cpu", "CPU")]
    choices = device_choices(['[{"name": "NVIDIA H100", "memory": 85899345920}]'])
    assert choices[-1] == ("cuda", "CUDA: NVIDIA H100 (80 GiB)")
    assert device_choices(["[]"]) == [("auto", "Automatic"), ("cpu", "CPU")]


# --------------------------------------------------------------------------------------------
# Bad inputs: clear errors, nothing changed


def bad_input_cases(scene, stroke):
    t1, flair = stroke["T1"], stroke["FLAIR"]
    fixed = mrml.add_volume_node(scene, t1, "T1")
    moving = mrml.add_volume_node(scene, flair, "FLAIR")
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    constant = mrml.add_volume_node(scene, t1.with_array(np.zeros_like(t1.array)), "zeros")
    g = t1.geometry
    one_slice = mrml.add_volume_node(scene, Image(t1.array[70:71], Geometry((*g.size[:2], 1), g.spacing, g.origin, g.direction)), "slice")
    far = mrml.add_volume_node(scene, Image(flair.array, Geometry(g.size, g.spacing, np.add(g.origin, 500.0), g.direction)), "far away")
    labelmap = mrml.add_volume_node(scene, t1.with_array((t1.array > 50).astype(np.uint8)), "lesion", labelmap=True)
    return fixed, {
        "empty volume": (dict(moving_volume=empty), "no voxels"),
        "constant volume": (dict(moving_volume=constant), "constant"),
        "2D against 3D": (dict(moving_volume=one_slice), "is 3D but .* is 2D"),
        "no overlap": (dict(moving_volume=far), "does not overlap"),
        "labelmap as volume": (dict(moving_volume=labelmap), "is a labelmap"),
        "same volume": (dict(moving_volume=fixed), "same node"),
        "no moving volume": (dict(moving_volume=None), "select both"),
        "no output": (dict(moving_volume=moving, output_transform=False), "keep the transform output"),
        "unknown quality": (dict(moving_volume=moving, quality="best"), "quality must be"),
        "unknown transform": (dict(moving_volume=moving, transform="similarity"), "unknown transform 'similarity'"),
        "model for optimise": (dict(moving_volume=moving, model="midir-brain-3d"), "apply to the learned methods"),
        "negative refinement": (dict(moving_volume=moving, method="midir", refine=-1), "0 or more iterations"),
        "non-linear initial transform": (dict(moving_volume=moving, initial_transform=scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "grid")), "must be linear"),
    }


def test_bad_inputs_give_clear_errors_and_change_nothing(scene, stroke):
    fixed, cases = bad_input_cases(scene, stroke)
    logic = RegistrationLogic(scene)
    before, folders = scene_snapshot(scene), temporary_folders()
    voxels = slicer.util.arrayFromVolume(fixed).copy()
    for name, (overrides, message) in cases.items():
        with pytest.raises(InputError, match=message):
            logic.start(RegistrationParameters(fixed_volume=fixed, **overrides))
    assert scene_snapshot(scene) == before
    assert temporary_folders() == folders, "a refused run must not leave files behind"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(fixed), voxels)


def test_the_module_refuses_the_pairs_the_command_line_refuses(scene, stroke):
    """One overlap rule (:func:`dmmreg.geometry.check_overlap`) for ``dmmreg register`` and the module."""
    from dmmreg.registration import check_pair
    from dmmreg.slicer.registration_inputs import check_parameters

    t1, flair = stroke["T1"], stroke["FLAIR"]
    fixed = mrml.add_volume_node(scene, t1, "T1")
    g = flair.geometry
    for shift_mm, accepted in ((g.extent[0] / 2, True), (g.extent[0] + 2 * g.spacing[0], False)):
        moved = Image(flair.array, Geometry(g.size, g.spacing, tuple(np.add(g.origin, g.direction[:, 0] * shift_mm)), g.direction))
        parameters = RegistrationParameters(fixed_volume=fixed, moving_volume=mrml.add_volume_node(scene, moved, "FLAIR moved"))
        if accepted:
            check_pair(t1, moved)
            check_parameters(parameters)
            continue
        with pytest.raises(InputError, match="^the moving image does not overlap the fixed image in physical space"):
            check_pair(t1, moved)
        with pytest.raises(InputError, match="^the moving volume 'FLAIR moved' does not overlap the fixed volume 'T1' in physical space"):
            check_parameters(parameters)


# --------------------------------------------------------------------------------------------
# End to end with the real backend


def crop(image: Image, first, end) -> Image:
    """Index box ``[first, end)`` (x, y, z) of ``image``, keeping its oblique direction."""
    g = image.geometry
    array = image.array[first[2]:end[2], first[1]:end[1], first[0]:end[0]]
    return Image(array, Geometry(tuple(np.subtract(end, first)), g.spacing, tuple(g.physical_points(np.asarray(first, float))), g.direction))


@pytest.fixture(scope="module")
def oblique_case(stroke):
    """Fixed: the T1 under a known random warp on its oblique grid; moving: the FLAIR.
    Both cropped to the central 80 x 100 x 80 mm so the fast registration takes ~30 s on 2 cores."""
    from dmmreg.known_warp import KnownWarpSettings, deform, random_known_warp

    box = ((22, 30, 30), (102, 130, 110))
    t1, flair = crop(stroke["T1"], *box), crop(stroke["FLAIR"], *box)
    warp = random_known_warp(t1.geometry, seed=5, settings=KnownWarpSettings(max_rotation_deg=5.0, max_shift_mm=5.0, mean_nonrigid_mm=2.0))
    return deform(t1, warp), flair, warp


@needs_cli
def test_registration_end_to_end_matches_simpleitk(scene, oblique_case, tmp_path):
    fixed_image, moving_image, truth = oblique_case
    fixed = mrml.add_volume_node(scene, fixed_image, "T1 warped")
    moving = mrml.add_volume_node(scene, moving_image, "FLAIR")
    moving_voxels = slicer.util.arrayFromVolume(moving).copy()
    parameters = RegistrationParameters(fixed_volume=fixed, moving_volume=moving, quality="fast",
                                        harden_moving_volume=True, output_inverse_transform=True)
    logic = RegistrationLogic(scene)
    reports = []
    run = logic.start(parameters)
    outputs = run_to_end(run, on_progress=lambda run, report: reports.append((report.stage, run.fraction)))
    assert reports and reports[-1][0] == "done"
    assert [f for _, f in reports] == sorted(f for _, f in reports), "progress must not go backwards"

    # nodes say what they are
    assert outputs.transform.top.IsA("vtkMRMLGridTransformNode") and outputs.transform.leaf.IsA("vtkMRMLLinearTransformNode")
    assert outputs.transform.leaf.GetAttribute("DeepMultiModalReg.Method") == "optimise"
    assert "fast" in outputs.transform.leaf.GetAttribute("DeepMultiModalReg.Settings")
    assert outputs.warped_volume.GetAttribute("DeepMultiModalReg.Role") == "warped volume"
    # inputs untouched
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(moving), moving_voxels)
    assert moving.GetParentTransformNode() is None

    # hardening the moving volume under the result = SimpleITK resampling with the saved transform,
    # away from the moving volume's border (where toolkits differ on partial voxels)
    inside_moving = to_sitk(moving_image.with_array(np.pad(np.ones(np.subtract(moving_image.array.shape, 4), np.float32), 2)))
    path = str(tmp_path / "result.h5")
    mrml.save_transform_to_world(outputs.transform.leaf, path)
    transform = sitk.ReadTransform(path)
    hardened = mrml.add_volume_node(scene, moving_image, "hardened")
    hardened.SetAndObserveTransformNodeID(outputs.transform.leaf.GetID())
    hardened.HardenTransform()
    geometry = mrml.geometry_from_volume_node(hardened)
    reference = to_sitk(Image(np.zeros(geometry.shape, np.float32), geometry))
    expected = sitk.GetArrayFromImage(sitk.Resample(to_sitk(moving_image), reference, transform, sitk.sitkLinear, 0.0))
    intensity_range = float(moving_image.array.max())
    inside = sitk.GetArrayFromImage(sitk.Resample(inside_moving, reference, transform, sitk.sitkNearestNeighbor, 0.0)) > 0
    assert inside.mean() > 0.5
    assert np.abs(slicer.util.arrayFromVolume(hardened) - expected)[inside].max() < 1e-4 * intensity_range

    # the warped volume (computed by the backend) is that resampling on the fixed grid, away
    # from the moving volume's border (where toolkits differ on partial voxels)
    warped = mrml.image_from_volume_node(outputs.warped_volume)
    assert warped.geometry == fixed_image.geometry
    on_fixed = sitk.GetArrayFromImage(sitk.Resample(to_sitk(moving_image), to_sitk(fixed_image), transform, sitk.sitkLinear, 0.0))
    inside = sitk.GetArrayFromImage(sitk.Resample(inside_moving, to_sitk(fixed_image), transform, sitk.sitkNearestNeighbor, 0.0)) > 0
    assert inside.mean() > 0.5
    assert np.abs(warped.array - on_fixed)[inside].max() < 1e-3 * intensity_range

    # the registration recovered the known warp (coarsely: quality fast)
    from dmmreg.known_warp import endpoint_error
    from dmmreg.transform_io import read_result

    estimate = read_result(path, fixed_image.geometry, moving_image.geometry)
    mask = fixed_image.array > 20
    assert np.median(endpoint_error(estimate, truth, mask)) < 0.5 * np.median(np.linalg.norm(
        truth.resampling_displacement(fixed_image.geometry)[mask], axis=-1))

    # the inverse nodes undo the forward transform
    import vtk

    forward, inverse = vtk.vtkGeneralTransform(), vtk.vtkGeneralTransform()
    outputs.transform.leaf.GetTransformFromWorld(forward)
    outputs.inverse_transform.leaf.GetTransformFromWorld(inverse)
    points = fixed_image.geometry.physical_points(np.array([[40.0, 60.0, 70.0], [80.0, 100.0, 60.0]])) * (-1, -1, 1)
    back = mrml.transform_points_ras(inverse, mrml.transform_points_ras(forward, points))
    assert np.abs(back - points).max() < 0.5


@needs_cli
def test_a_learned_method_runs_from_the_logic_with_its_model(scene, oblique_case, tmp_path):
    from dmmreg.methods import method_class
    from dmmreg.model_io import save_model

    fixed_image, moving_image, _ = oblique_case
    cls = method_class("midir")
    torch.manual_seed(0)
    model_path = save_model(cls(cls.config_class(dim=3, spacing_mm=4.0)), tmp_path / "midir-test.safetensors")
    fixed = mrml.add_volume_node(scene, fixed_image, "T1 warped")
    moving = mrml.add_volume_node(scene, moving_image, "FLAIR")
    parameters = RegistrationParameters(fixed_volume=fixed, moving_volume=moving, method="midir",
                                        model=str(model_path.with_suffix(".safetensors")), refine=5,
                                        harden_moving_volume=True)
    logic = RegistrationLogic(scene)
    outputs = run_to_end(logic.start(parameters))
    assert outputs.transform.leaf.GetAttribute("DeepMultiModalReg.Method") == "midir"
    settings = json.loads(outputs.transform.leaf.GetAttribute("DeepMultiModalReg.Settings"))
    assert settings["model"].endswith("midir-test.safetensors") and settings["refine"] == 5
    assert outputs.warped_volume is not None


@needs_cli
def test_rigid_transform_from_the_logic(scene, oblique_case):
    """The panel's Transform choice reaches the backend: a rigid result is one linear node whose
    matrix is a rotation (determinant 1, no scaling), and a learned method's refinement setting
    is not passed with it (the refinement is deformable).  The output transform chosen in the
    panel is overwritten (no node is added) and the moving volume is left under it, its voxels
    unchanged."""
    fixed_image, moving_image, _ = oblique_case
    fixed = mrml.add_volume_node(scene, fixed_image, "T1 warped")
    moving = mrml.add_volume_node(scene, moving_image, "FLAIR")
    chosen = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "my rigid")
    moving_voxels, count = slicer.util.arrayFromVolume(moving).copy(), scene.GetNumberOfNodes()
    parameters = RegistrationParameters(fixed_volume=fixed, moving_volume=moving, quality="fast", transform="rigid",
                                        output_transform_node=chosen)
    outputs = run_to_end(RegistrationLogic(scene).start(parameters))
    leaf = outputs.transform.leaf
    assert leaf is chosen and leaf.GetName() == "my rigid" and scene.GetNumberOfNodes() == count
    assert moving.GetParentTransformNode() is chosen and outputs.moved_volume is moving
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(moving), moving_voxels)
    assert leaf.IsTransformToWorldLinear() and json.loads(leaf.GetAttribute("DeepMultiModalReg.Settings"))["transform"] == "rigid"
    matrix = slicer.util.arrayFromTransformMatrix(leaf)[:3, :3]
    assert abs(np.linalg.det(matrix) - 1) < 1e-6
    np.testing.assert_allclose(np.linalg.svd(matrix)[1], 1.0, atol=1e-6)
    assert RegistrationParameters(method="midir", transform="rigid").refines is False


def test_run_logs_keeps_its_folder_and_refers_to_its_volumes(scene, oblique_case, caplog):
    """Slicer's Error Log gets the run through logging (start with the command, the end, a
    failure); "keep temporary files" keeps the run's folder with its log; the result transforms
    refer to the fixed and moving volumes; the panel's similarity reaches the backend."""
    import logging

    from dmmreg.slicer.registration_inputs import FIXED_ROLE, MOVING_ROLE
    from dmmreg.slicer.registration_logic import RUN_LOG

    fixed_image, moving_image, _ = oblique_case
    fixed = mrml.add_volume_node(scene, fixed_image, "T1 warped")
    moving = mrml.add_volume_node(scene, moving_image, "FLAIR")
    parameters = RegistrationParameters(fixed_volume=fixed, moving_volume=moving, quality="fast", transform="rigid",
                                        similarity="lncc", keep_temporary_files=True, output_inverse_transform=True)
    with caplog.at_level(logging.DEBUG, logger="DeepMultiModalReg"):
        run = RegistrationLogic(scene).start(parameters)
        folder = run.job.folder
        outputs = run_to_end(run)
    try:
        messages = [record.getMessage() for record in caplog.records if record.name == "DeepMultiModalReg"]
        assert any("registration started" in m and "--similarity lncc" in m for m in messages), messages
        assert any("registration finished" in m for m in messages)
        assert any(folder in m and RUN_LOG in m for m in messages)
        log = Path(folder, RUN_LOG).read_text()
        assert log.startswith("# exit status 0")
        for node in outputs.transform.nodes + outputs.inverse_transform.nodes:
            assert node.GetNodeReference(FIXED_ROLE) is fixed and node.GetNodeReference(MOVING_ROLE) is moving
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="DeepMultiModalReg"):
        with pytest.raises(RegistrationFailed):
            run_to_end(RegistrationLogic(scene).start(RegistrationParameters(
                fixed_volume=fixed, moving_volume=moving, method="no-such-method")))
    assert any(r.levelno == logging.ERROR and "no-such-method" in r.getMessage() for r in caplog.records)


@needs_cli
def test_cancel_mid_run_leaves_the_scene_unchanged(scene, stroke):
    fixed = mrml.add_volume_node(scene, stroke["T1"], "T1")
    moving = mrml.add_volume_node(scene, stroke["FLAIR"], "FLAIR")
    before, folders = scene_snapshot(scene), temporary_folders()
    run = RegistrationLogic(scene).start(RegistrationParameters(fixed_volume=fixed, moving_volume=moving, quality="accurate"))
    deadline = time.monotonic() + 120
    while not run.poll() and time.monotonic() < deadline:  # wait until the backend reports work
        time.sleep(0.1)
    assert not run.finished, "the run ended before it could be cancelled"
    pid = run.job.process.pid
    run.cancel()
    assert not process_exists(pid)
    assert scene_snapshot(scene) == before
    assert temporary_folders() == folders
    with pytest.raises(RegistrationFailed, match="cancelled"):
        run.finish()


@needs_cli
def test_backend_failure_shows_its_message(scene, stroke):
    fixed = mrml.add_volume_node(scene, stroke["T1"], "T1")
    moving = mrml.add_volume_node(scene, stroke["FLAIR"], "FLAIR")
    before = scene_snapshot(scene)
    logic = RegistrationLogic(scene)
    run = logic.start(RegistrationParameters(fixed_volume=fixed, moving_volume=moving, method="no-such-method"))
    with pytest.raises(RegistrationFailed, match="no-such-method"):
        run_to_end(run)
    assert scene_snapshot(scene) == before


def cine_sequence(scene, frames: int):
    """The first ``frames`` cardiac phases (one oblique short-axis slice) as a sequence node,
    indexed by trigger time (ms)."""
    files = sorted(require(CINE).glob("*.dcm"))[:frames]
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine")
    sequence.SetIndexName("time")
    sequence.SetIndexUnit("ms")
    scratch = slicer.vtkMRMLScene()
    for path in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        image = reader.Execute()  # 3D, one slice, oblique direction kept
        frame = from_sitk(sitk.Cast(image, sitk.sitkFloat32))
        node = mrml.add_volume_node(scratch, frame, path.stem)
        sequence.SetDataNodeAtValue(node, reader.GetMetaData("0018|1060").strip())
    return sequence


@needs_cli
def test_cine_sequence_registered_to_a_reference_frame(scene):
    sequence = cine_sequence(scene, frames=3)
    frame_geometry = mrml.geometry_from_volume_node(sequence.GetNthDataNode(0))
    assert mrml.is_single_slice(frame_geometry)
    logic = RegistrationLogic(scene)
    run = logic.start_sequence(RegistrationParameters(quality="fast"), sequence, reference_index=0)
    fractions = []
    outputs = run_to_end(run, on_progress=lambda run, report: fractions.append(run.fraction))
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)

    transforms, warped = outputs.transform_sequence, outputs.warped_sequence
    assert transforms.GetNumberOfDataNodes() == warped.GetNumberOfDataNodes() == 3
    assert [transforms.GetNthIndexValue(i) for i in range(3)] == [sequence.GetNthIndexValue(i) for i in range(3)]
    assert transforms.GetNthDataNode(1).IsA("vtkMRMLGridTransformNode")
    warped_frame = warped.GetNthDataNode(1)
    assert mrml.geometry_from_volume_node(warped_frame) == frame_geometry
    assert outputs.browser.GetMasterSequenceNode() is warped
    assert outputs.browser.IsSynchronizedSequenceNodeID(transforms.GetID())
    proxy = outputs.browser.GetProxyNode(warped)
    assert proxy is not None and proxy.GetScene() is scene, "browsing shows the warped frames"

    # the reference frame registered to itself stays (nearly) in place
    import vtk

    identity = transforms.GetNthDataNode(0).GetTransformFromParent()
    centre = frame_geometry.physical_points(np.array([108.0, 128.0, 0.0])) * (-1, -1, 1)
    assert np.linalg.norm(np.subtract(identity.TransformPoint(centre), centre)) < 1.0
    assert isinstance(identity, vtk.vtkAbstractTransform)
