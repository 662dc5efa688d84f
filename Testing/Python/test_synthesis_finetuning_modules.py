"""The Synthesis Preview and Model Fine-tuning modules beyond what test_module_ui.py and
test_quality_module.py check for every module: their self-tests' cases hold on slicer-core
(dmmreg.slicer.selftest.synthesis_scene, dmmreg.slicer.selftest.finetuning_scene), the scene cohort grouping and the panel's
parameters, and how the widget code runs, cancels and displays (read from the source)."""

from __future__ import annotations

import re
import types

import pytest
from module_checks import module_file, widget_base_names, widget_helpers_text
from test_quality_module import cmake_calls

slicer = pytest.importorskip("slicer")

from dmmreg.slicer import scene_cohort, synthesis_logic  # noqa: E402
from dmmreg.errors import InputError  # noqa: E402
from dmmreg.slicer.finetuning_logic import FineTuningLogic, check_parameters  # noqa: E402
from dmmreg.slicer.selftest.finetuning_scene import cohort_test_scene, parameter_cases  # noqa: E402
from dmmreg.slicer.selftest.synthesis_scene import (OPACITY, TILE_MM, checkerboard_problems,
    display_test_scene, fade_problems, side_by_side_problems)  # noqa: E402


def method_body(text: str, name: str) -> str:
    return re.search(rf"    def {name}\(.*?(?=\n    def |\nclass |\ndef |\Z)", text, flags=re.S).group(0)


def test_cmake_ships_the_helpers_of_the_new_modules(tmp_path):
    modules, _ = cmake_calls(tmp_path)
    shared = modules["DeepMultiModalReg"]["scripts"]
    for path in ("dmmreg/slicer/synthesis_logic.py", "dmmreg/slicer/finetuning_logic.py", "dmmreg/slicer/scene_cohort.py"):
        assert path in shared
    assert modules["DeepMultiModalRegSynthesis"]["scripts"] == ["DeepMultiModalRegSynthesis.py"]
    assert modules["DeepMultiModalRegFineTuning"]["scripts"] == ["DeepMultiModalRegFineTuning.py"]


# --------------------------------------------------------------------------------------------
# Synthesis Preview


def test_synthesis_self_test_case_display_on_slicer_core():
    scene = slicer.vtkMRMLScene()
    case = display_test_scene(scene)
    count = scene.GetNumberOfNodes()
    board = synthesis_logic.show_checkerboard(case.real_node, case.synthesised_node, TILE_MM)
    assert checkerboard_problems(board, case, TILE_MM) == []
    assert scene.GetNumberOfNodes() > count
    assert fade_problems(synthesis_logic.show_fade(case.real_node, case.synthesised_node, OPACITY), case, OPACITY) == []
    assert side_by_side_problems(synthesis_logic.show_side_by_side(case.real_node, case.synthesised_node), case) == []
    # the checks see wrong displays
    assert checkerboard_problems(case.real_node, case, TILE_MM)
    assert fade_problems(synthesis_logic.show_fade(case.real_node, case.synthesised_node, 0.9), case, OPACITY)
    assert side_by_side_problems(synthesis_logic.show_side_by_side(case.synthesised_node, case.real_node), case)


def test_synthesis_self_test_bad_inputs_raise_on_slicer_core():
    scene = slicer.vtkMRMLScene()
    case = display_test_scene(scene)
    count = scene.GetNumberOfNodes()
    logic = synthesis_logic.SynthesisLogic(scene)
    for parameters, words in (
        (synthesis_logic.SynthesisParameters(case.real_node, case.synthesised_node, method="optimise", model="x"),
         "synthesises no images"),
        (synthesis_logic.SynthesisParameters(case.real_node, case.synthesised_node, method="fire", model=""),
         "select a trained fire model"),
        (synthesis_logic.SynthesisParameters(case.real_node, None, method="fire", model="x"), "select both"),
    ):
        with pytest.raises(InputError, match=words):
            logic.start(parameters)
    with pytest.raises(InputError, match="opacity"):
        synthesis_logic.show_fade(case.real_node, case.synthesised_node, 1.5)
    assert scene.GetNumberOfNodes() == count


def test_synthesis_widget_runs_in_the_background_and_displays_live():
    text = module_file("DeepMultiModalRegSynthesis").read_text(encoding="utf-8")
    shared = widget_helpers_text()  # the mixins of dmmreg.slicer.widgets the widget uses
    assert {"RunControls", "DeviceChoice", "MethodModelChoice"} <= set(widget_base_names("DeepMultiModalRegSynthesis"))
    apply = method_body(text, "onApplyButton")
    assert "self._mayStartRun()" in apply and "self.logic.synthesis.start(" in apply and "except InputError" in apply
    assert "self._runStarted(run," in apply
    # Apply was Cancel: the run is cancelled; else Apply becomes Cancel once the run started
    assert "self._cancel()" in method_body(shared, "_mayStartRun") and "self.run.cancel()" in method_body(shared, "_cancel")
    assert "_setupRunControls(self.ui.applyButton, self.ui.progressBar, self.ui.statusLabel)" in text
    assert '_runButton.text = "Cancel"' in method_body(shared, "_runStarted")
    assert "self.run.poll()" in method_body(shared, "onTimer") and "_runProgressBar.value" in method_body(shared, "onTimer")
    assert "self._finishRun(outputs)" in method_body(shared, "_collectRun")
    assert 'fadeSliderWidget.connect("valueChanged(double)", self.onFadeChanged)' in text
    assert "synthesis_logic.show_fade(" in method_body(text, "onFadeChanged")
    assert "synthesis_logic.show_checkerboard(" in method_body(text, "onCheckerboardButton")
    assert "synthesis_logic.show_side_by_side" in method_body(text, "onSideBySideButton")
    finish = method_body(text, "_finishRun")
    assert "p.report_table = outputs.table" in finish and "self._showTable(outputs.table)" in finish
    # the model combo is filled as the Registration module fills it; only synthesising methods
    assert "methods.available_models(method)" in method_body(shared, "_fillModels")
    assert "    METHODS = SYNTHESISING_METHODS\n" in text
    assert "row[0] in self.METHODS" in method_body(shared, "_fillMethods")
    assert "class DeepMultiModalRegSynthesisTest(ScriptedLoadableModuleTest)" in text


# --------------------------------------------------------------------------------------------
# Model Fine-tuning


@pytest.fixture()
def user_models(tmp_path, monkeypatch):
    folder = tmp_path / "user-models"
    monkeypatch.setenv("DMMREG_MODELS", str(folder))
    return folder


def test_scene_volumes_are_grouped_by_subject(user_models):
    scene = slicer.vtkMRMLScene()
    nodes = cohort_test_scene(scene)
    cohort = scene_cohort.group_scene_volumes(scene)
    assert {s: sorted(v) for s, v in cohort.subjects.items()} == {"s1": ["T1", "T2"], "s2": ["FLAIR", "T1"]}
    assert cohort.labels == {"s1": nodes["s1_labels"]} and cohort.skipped == ["Reference"]
    assert cohort.summary().splitlines()[0] == "s1: T1, T2 + labels"
    # attributes win over the name; two volumes of one subject and contrast are refused
    nodes["Reference"].SetAttribute(scene_cohort.SUBJECT_ATTRIBUTE, "s2")
    nodes["Reference"].SetAttribute(scene_cohort.CONTRAST_ATTRIBUTE, "T2")
    assert sorted(scene_cohort.group_scene_volumes(scene).subjects["s2"]) == ["FLAIR", "T1", "T2"]
    nodes["Reference"].SetAttribute(scene_cohort.CONTRAST_ATTRIBUTE, "t1")
    with pytest.raises(InputError, match="subject 's2' has two t1 volumes"):
        scene_cohort.group_scene_volumes(scene)


def test_finetuning_self_test_cases_on_slicer_core(user_models, tmp_path):
    """What the self-test asserts: the grouped scene passes the checks, every bad parameter names
    its problem, and nothing is added, written or started."""
    scene = slicer.vtkMRMLScene()
    nodes = cohort_test_scene(scene)
    good, bad = parameter_cases(scene, nodes, tmp_path / "work")
    count = scene.GetNumberOfNodes()
    assert check_parameters(good).subjects == {"s1": ["t1", "t2"], "s2": ["t1", "flair"]}
    assert len(bad) >= 10
    for parameters, words in bad:
        with pytest.raises(InputError, match=re.escape(words)):
            FineTuningLogic(scene).start(parameters)
    assert scene.GetNumberOfNodes() == count
    assert not user_models.exists() or not any(user_models.iterdir())


def test_panel_values_become_fine_tuning_parameters(user_models, tmp_path):
    scene = slicer.vtkMRMLScene()
    cohort_test_scene(scene)
    panel = types.SimpleNamespace(cohort_source="scene", cohort=None, base_model="base", name="new", epochs=2,
                                  epoch_steps=3, learning_rate=0.0, device="cpu")
    parameters = scene_cohort.parameters_from_panel(panel, scene)
    assert parameters.learning_rate is None and parameters.cohort == "" and sorted(parameters.subjects) == ["s1", "s2"]
    assert parameters.labels["s1"].GetName() == "s1_labels" and parameters.updates == 6
    panel.cohort_source, panel.cohort, panel.learning_rate = "files", tmp_path, 1e-4
    parameters = scene_cohort.parameters_from_panel(panel, scene)
    assert parameters.cohort == str(tmp_path) and parameters.subjects is None and parameters.learning_rate == 1e-4
    panel.cohort_source = "elsewhere"
    with pytest.raises(InputError, match="cohort source"):
        scene_cohort.parameters_from_panel(panel, scene)
    card = {"validation_at_start": {"epe_mm": 2.14, "folding_percent": 0.021}, "validation": {"epe_mm": 1.63}}
    assert scene_cohort.validation_summary(card) == ("validation before: EPE 2.140 mm, folding 0.021 %; "
                                                     "after: EPE 1.630 mm")


def test_finetuning_widget_cancels_through_the_logic_and_shows_the_curves():
    text = module_file("DeepMultiModalRegFineTuning").read_text(encoding="utf-8")
    cancel = method_body(text, "_cancel")
    assert "stopping" in cancel and "run.cancel()" in cancel and "startButton.enabled = False" in cancel
    assert cancel.index("stopping") < cancel.index("run.cancel()")
    assert "RunControls" in widget_base_names("DeepMultiModalRegFineTuning")
    start = method_body(text, "onStartButton")
    assert "self._mayStartRun()" in start and "self.logic.finetuning.start(" in start and "except InputError" in start
    assert "self._cancel()" in method_body(widget_helpers_text(), "_mayStartRun")  # Start was Cancel
    assert "_setupRunControls(self.ui.startButton," in text and "self._runStarted(run," in start
    assert "scene_cohort.parameters_from_panel(p, slicer.mrmlScene)" in start
    assert "ShowChartInLayout(curve.chart)" in method_body(text, "_showChart")
    assert "self._curves.validation" in method_body(text, "_showChart")
    finish = method_body(text, "_finishRun")
    assert "validation_summary(outputs.card)" in finish and "Registration module" in finish
    assert "model_io.list_models()" in method_body(text, "_fillBaseModels")
    assert "class DeepMultiModalRegFineTuningTest(ScriptedLoadableModuleTest)" in text
