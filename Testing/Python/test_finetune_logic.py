"""Fine-tuning module logic on a real slicer-core scene: a small 2D MIDIR base model fine-tuned
in a background ``dmmreg finetune`` process on the bundled stroke volumes (axial slices at 2 mm),
from a cohort folder and from scene volumes grouped by subject, with live loss / validation
tables and plots, a cancel that leaves a consistent checkpoint and no model, and clear errors."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

slicer = pytest.importorskip("slicer")

from dmmreg import model_io
from dmmreg.slicer import mrml  # noqa: E402
from dmmreg.slicer.background import run_to_end  # noqa: E402
from dmmreg.training.cohorts import read_cohort  # noqa: E402
from dmmreg.errors import InputError  # noqa: E402
from dmmreg.slicer.finetuning_logic import (FineTuningFailed, FineTuningLogic, FineTuningParameters,
    check_parameters, export_cohort)  # noqa: E402
from dmmreg.image_io import read_image  # noqa: E402
from dmmreg.methods import available_models  # noqa: E402
from dmmreg.methods.midir import Midir, MidirConfig  # noqa: E402

SMALL = dict(dim=2, spacing_mm=2.0, encoder_channels=(8, 16, 16, 16, 16), decoder_channels=(16, 16, 16, 16),
             resize_channels=(16, 16), bins=32, learning_rate=1e-3)
BASE = "tiny-base"
#: fast settings: 2 epochs of 3 updates, 2 validation pairs, one thread, CPU
FAST = dict(base_model=BASE, epochs=2, epoch_steps=3, validation_pairs=2, device="cpu", threads=1)


@pytest.fixture()
def user_models(tmp_path, monkeypatch):
    """An empty user models folder (DMMREG_MODELS) holding only the small 2D base model."""
    folder = tmp_path / "user-models"
    monkeypatch.setenv("DMMREG_MODELS", str(folder))
    torch.manual_seed(0)
    model_io.save_model(Midir(MidirConfig(**SMALL)), folder / f"{BASE}.safetensors", training={"data": "none (random weights)"})
    return folder


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


def scene_subjects(scene, stroke):
    """``{s1: {T1, T2}, s2: {T1, FLAIR}}`` as scalar volume nodes, and a label map for s1."""
    nodes = {contrast: mrml.add_volume_node(scene, image, contrast) for contrast, image in stroke.items()}
    second = {contrast: mrml.add_volume_node(scene, stroke[contrast], f"{contrast} (2)") for contrast in ("T1", "FLAIR")}
    t1 = stroke["T1"].array
    labels = mrml.add_volume_node(scene, stroke["T1"].with_array(((t1 > np.percentile(t1, 60)).astype(np.int16)
                                                                   + (t1 > np.percentile(t1, 90)))), "s1 labels", labelmap=True)
    return {"s1": {"T1": nodes["T1"], "T2": nodes["T2"]}, "s2": second}, {"s1": labels}, [*nodes.values(), *second.values(), labels]


def node_state(node):
    return node.GetMTime(), node.GetImageData().GetMTime(), slicer.util.arrayFromVolume(node).copy()


def user_model_files(folder):
    return sorted(p.name for p in folder.glob("*") if p.suffix in (".json", ".safetensors"))


def assert_curves_filled(run, updates: int, validations: int):
    loss, validation = run.loss.table, run.validation.table
    assert loss.GetNumberOfRows() == updates and validation.GetNumberOfRows() == validations
    assert [loss.GetColumnName(i) for i in range(loss.GetNumberOfColumns())] == ["update", "loss"]
    assert [loss.GetTable().GetValue(i, 0).ToDouble() for i in range(updates)] == list(range(1, updates + 1))
    assert all(np.isfinite(loss.GetTable().GetValue(i, 1).ToDouble()) for i in range(updates))
    assert validation.GetColumnName(1) == "validation EPE mm"
    assert [validation.GetTable().GetValue(i, 0).ToDouble() for i in range(validations)] == [0, 3, 6][:validations]
    assert all(validation.GetTable().GetValue(i, 1).ToDouble() > 0 for i in range(validations))
    for curve in (run.loss, run.validation):
        assert curve.chart.GetNumberOfPlotSeriesNodes() == 1 and curve.chart.GetNthPlotSeriesNode(0) is curve.series
        assert curve.series.GetTableNode() is curve.table and curve.series.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter
        assert curve.series.GetLineStyle() == slicer.vtkMRMLPlotSeriesNode.LineStyleSolid


def assert_new_model(outputs, name: str, user_models):
    assert outputs.card_path == user_models / f"{name}.json" and outputs.model_path.exists()
    model, card = model_io.load_model(outputs.card_path, "midir")
    assert card["name"] == name and card["training"]["base_model"]["name"] == BASE
    assert card["training"]["steps"] == {"train": 6}
    assert outputs.card["validation_at_start"]["epe_mm"] > 0 and outputs.card["validation"]["epe_mm"] > 0
    assert outputs.card["validation"]["epe_mm"] <= outputs.card["validation_at_start"]["epe_mm"] + 1e-6  # best weights kept
    assert str(outputs.model_path) in [path for path, _ in available_models("midir")]


def test_finetuning_a_cohort_folder_makes_a_selectable_model_with_live_curves(scene, cohort_folder, user_models):
    logic = FineTuningLogic(scene)
    run = logic.start(FineTuningParameters(cohort=str(cohort_folder), name="tuned", contrast_pairs=[("t2", "t1")], **FAST))
    trained = validated = 0
    stages = []
    while not run.finished:  # what the module's timer does: after every poll the curves show every record so far
        reports = run.poll()
        trained += sum(r.stage == "train" for r in reports)
        validated += sum(r.stage == "validate" for r in reports)
        stages += [r.stage for r in reports]
        assert (run.loss.table.GetNumberOfRows(), run.validation.table.GetNumberOfRows()) == (trained, validated)
        assert 0.0 <= run.fraction <= 1.0
        time.sleep(0.05)
    outputs = run.finish()
    assert_curves_filled(run, updates=6, validations=3)
    assert stages[-1] == "done" and run.fraction == 1.0 and "load" in stages
    assert_new_model(outputs, "tuned", user_models)
    assert outputs.card["training"]["subjects"] == ["a"] and outputs.card["validation"]["source"] == "held-out subjects b"
    assert run.checkpoint is not None and not (run.run_folder / "cohort").exists()


def test_finetuning_from_scene_volumes_grouped_by_subject(scene, stroke, user_models, tmp_path):
    subjects, labels, inputs = scene_subjects(scene, stroke)
    before = [node_state(node) for node in inputs]
    # the export writes every node unchanged into the cohort folder layout
    folder = export_cohort(subjects, labels, tmp_path / "exported")
    cohort = read_cohort(folder)
    assert [(s.name, sorted(s.images), s.labels is not None) for s in cohort.subjects] == [
        ("s1", ["t1", "t2"], True), ("s2", ["flair", "t1"], False)]
    written = read_image(cohort.subjects[0].images["t2"])
    np.testing.assert_array_equal(written.array, slicer.util.arrayFromVolume(subjects["s1"]["T2"]))
    assert written.geometry == mrml.image_from_volume_node(subjects["s1"]["T2"]).geometry
    np.testing.assert_array_equal(read_image(cohort.subjects[0].labels).array, slicer.util.arrayFromVolume(labels["s1"]))

    parameters = FineTuningParameters(subjects=subjects, labels=labels, name="from-scene",
                                      contrast_pairs=[("t2", "t1"), ("flair", "t1")], **FAST)
    run = FineTuningLogic(scene).start(parameters)
    outputs = run_to_end(run)
    assert_curves_filled(run, updates=6, validations=3)
    assert_new_model(outputs, "from-scene", user_models)
    assert outputs.card["training"]["subjects"] == ["s1"] and outputs.card["validation"]["source"] == "held-out subjects s2"
    assert not (run.run_folder / "cohort").exists()  # the exported copy is gone once the model is made
    for node, (mtime, data_mtime, array) in zip(inputs, before):
        assert node.GetMTime() == mtime and node.GetImageData().GetMTime() == data_mtime
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), array)


def test_cancel_leaves_a_consistent_checkpoint_and_no_model(scene, stroke, user_models):
    from safetensors.torch import load_file

    subjects, labels, _ = scene_subjects(scene, stroke)
    parameters = FineTuningParameters(subjects=subjects, name="cancelled", contrast_pairs=[("t2", "t1"), ("flair", "t1")],
                                      **{**FAST, "epochs": 50})
    run = FineTuningLogic(scene).start(parameters)
    deadline = time.monotonic() + 60
    while not run.poll() and time.monotonic() < deadline:  # the first progress line
        time.sleep(0.05)
    assert not run.finished, "the run ended before it could be cancelled"
    pid = run.process.pid
    run.cancel()
    assert run.process.returncode == 130 and run.stage == "cancelled"  # stopped by itself, within the grace
    with pytest.raises(FineTuningFailed, match="cancelled after .* no model was written"):
        run.finish()
    assert user_model_files(user_models) == [f"{BASE}.json", f"{BASE}.safetensors"]
    assert str(user_models / "cancelled.safetensors") not in [p for p, _ in available_models("midir")]
    state = json.loads(run.checkpoint.read_text())
    assert 1 <= state["done"] < 100 and len([r for r in state["history"] if r["kind"] == "train"]) == state["done"]
    tensors = load_file(str(run.run_folder / state["weights"]))
    model, _ = model_io.load_model(user_models / f"{BASE}.json")
    assert {k for k in tensors if k.startswith("model.")} == {f"model.{k}" for k in model.state_dict()}
    job = json.loads((run.run_folder / "job.json").read_text())
    assert job["name"] == "cancelled" and read_cohort(job["cohorts"][0]).subjects  # resumable: its cohort is kept
    assert process_gone(pid)


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/status")  # a zombie (exited, not yet reaped) counts as gone
    return status.exists() and "\nState:\tZ" in status.read_text()


def test_bad_parameters_give_clear_errors_and_change_nothing(scene, stroke, cohort_folder, user_models, tmp_path, monkeypatch):
    subjects, labels, _ = scene_subjects(scene, stroke)
    folder = dict(cohort=str(cohort_folder), name="new", **FAST)
    bundled = tmp_path / "bundled"
    model_io.save_model(Midir(MidirConfig(**SMALL)), bundled / "shipped.safetensors")
    monkeypatch.setattr(model_io, "BUNDLED_MODELS", bundled)
    one_contrast = {"s1": {"T1": subjects["s1"]["T1"]}, "s2": subjects["s2"]}
    cases = [
        ({**folder, "base_model": ""}, "choose the base model"),
        ({**folder, "base_model": "no-such-model"}, "model 'no-such-model' not found"),
        ({**folder, "name": ""}, "give the new model a name"),
        ({**folder, "name": "../escape"}, "cannot be a file name"),
        ({**folder, "name": BASE}, "a model named 'tiny-base' exists already"),
        ({**folder, "name": "shipped"}, "name of a bundled model"),
        ({**folder, "cohort": ""}, "choose the cohort"),
        ({**folder, "cohort": str(tmp_path)}, "has no subject folders"),
        ({**folder, "subjects": subjects}, "not both"),
        ({**FAST, "name": "new", "subjects": {}}, "the cohort is empty"),
        ({**FAST, "name": "new", "subjects": one_contrast}, "subject 's1' has only t1: a multi-modal pair needs two"),
        ({**FAST, "name": "new", "subjects": one_contrast, "contrast_pairs": [("flair", "t1")]},
         "subject 's1' has only t1, none of the contrast pairs flair:t1"),
        ({**FAST, "name": "new", "subjects": {"s1": {"T1": labels["s1"], "T2": subjects["s1"]["T2"]}}}, "is a labelmap"),
        ({**FAST, "name": "new", "subjects": subjects, "labels": {"s3": labels["s1"]}}, "subject 's3', which has no volumes"),
        ({**folder, "contrast_pairs": [("pd", "t1")]}, "no subject has pd volumes"),
        ({**folder, "validation_subjects": ["c"]}, "validation subjects c are not in the cohort"),
        ({**folder, "validation_subjects": ["a", "b"]}, "leave at least one subject to train on"),
        ({**folder, "epochs": 0}, "number of epochs"),
        ({**folder, "learning_rate": -1.0}, "learning rate must be positive"),
        ({**folder, "device": "tpu"}, "device must be one of"),
    ]
    nodes_before = scene.GetNumberOfNodes()
    for values, message in cases:
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(".", r"\.")):
            FineTuningLogic(scene).start(FineTuningParameters(**values))
    assert scene.GetNumberOfNodes() == nodes_before  # nothing was added
    assert user_model_files(user_models) == [f"{BASE}.json", f"{BASE}.safetensors"] and not (user_models / "runs").exists()
    assert check_parameters(FineTuningParameters(**folder)).method == "midir"


def test_backend_failure_shows_its_message_and_leaves_no_model(scene, stroke_paths, user_models, tmp_path):
    cohort = tmp_path / "broken"
    (cohort / "a").mkdir(parents=True)
    (cohort / "a" / "T1.nii.gz").write_text("not an image")
    (cohort / "a" / "T2.nii.gz").symlink_to(stroke_paths["T2"])
    run = FineTuningLogic(scene).start(FineTuningParameters(cohort=str(cohort), name="broken", **FAST))
    with pytest.raises(FineTuningFailed, match="cannot read t1 image of subject 'a'"):
        run_to_end(run)
    assert run.process.returncode == 2
    assert user_model_files(user_models) == [f"{BASE}.json", f"{BASE}.safetensors"]
    assert not run.run_folder.exists()  # nothing to resume: the run folder is removed
