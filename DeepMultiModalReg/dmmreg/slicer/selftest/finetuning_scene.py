"""Input checks of the Fine-tuning module, for its self-test (run inside Slicer) and for the tests
that run here on slicer-core: a small scene of volumes named ``SUBJECT_CONTRAST`` (see
:mod:`dmmreg.slicer.scene_cohort`), a model card to fine-tune (a card only: the checks never load
weights), and bad parameters with the words of the error each must raise.

Needs slicer-core and numpy only (no torch, no Qt); nothing is written outside ``folder``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ... import model_io
from .. import mrml
from ..finetuning_logic import FineTuningParameters
from ...geometry import Geometry
from ...image import Image

BASE_METHOD = "midir"


def write_test_card(folder) -> Path:
    """A model card (no weights) of a 3D ``midir`` model in ``folder``; returns its path."""
    path = Path(folder) / "selftest-base.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": model_io.CARD_FORMAT, "name": "selftest-base", "method": BASE_METHOD,
                                "dimension": 3}))
    return path


def unused_model_name(stem: str = "selftest-finetuned") -> str:
    """A model name neither bundled nor in the user models folder."""
    name, count = stem, 1
    while (model_io.user_models_folder() / f"{name}.json").exists() or (model_io.BUNDLED_MODELS / f"{name}.json").exists():
        count += 1
        name = f"{stem}-{count}"
    return name


def cohort_test_scene(scene, size=(10, 9, 8)) -> dict:
    """Volumes ``s1_T1``, ``s1_T2``, ``s2_T1``, ``s2_FLAIR``, the label map ``s1_labels`` and an
    unnamed ``Reference``; returns ``{node name: node}``."""
    geometry = Geometry(tuple(size), (1.5, 1.5, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in geometry.shape), indexing="ij")
    nodes = {}
    for offset, name in enumerate(("s1_T1", "s1_T2", "s2_T1", "s2_FLAIR", "Reference")):
        nodes[name] = mrml.add_volume_node(scene, Image(np.sin(i / 3 + offset) + j + (offset + 1) * k, geometry), name)
    nodes["s1_labels"] = mrml.add_volume_node(scene, Image((i > size[0] // 2).astype(np.int16) + (k > 3), geometry),
                                              "s1_labels", labelmap=True)
    return nodes


def parameter_cases(scene, nodes: dict, folder) -> tuple[FineTuningParameters, list[tuple[FineTuningParameters, str]]]:
    """``(good, bad)``: parameters that pass :func:`~dmmreg.slicer.finetuning_logic.check_parameters` (scene
    volumes grouped by subject), and ``[(parameters, words of the InputError they must raise)]``; ``nodes`` from
    :func:`cohort_test_scene`, ``folder``: a temporary folder (an empty cohort folder is made there)."""
    folder = Path(folder)
    empty_cohort = folder / "empty-cohort"
    empty_cohort.mkdir(parents=True, exist_ok=True)
    subjects = {"s1": {"T1": nodes["s1_T1"], "T2": nodes["s1_T2"]}, "s2": {"T1": nodes["s2_T1"], "FLAIR": nodes["s2_FLAIR"]}}
    good = FineTuningParameters(base_model=str(write_test_card(folder)), subjects=subjects,
                                labels={"s1": nodes["s1_labels"]}, name=unused_model_name(), epochs=1, epoch_steps=1,
                                device="cpu")
    return good, [
        (replace(good, base_model=""), "choose the base model"),
        (replace(good, base_model=str(folder / "missing.json")), "not found"),
        (replace(good, name=""), "give the new model a name"),
        (replace(good, name="../escape"), "cannot be a file name"),
        (replace(good, device="tpu"), "device must be one of"),
        (replace(good, epochs=0), "number of epochs"),
        (replace(good, epoch_steps=0), "number of updates per epoch"),
        (replace(good, learning_rate=-1.0), "learning rate must be positive"),
        (replace(good, cohort=str(empty_cohort)), "not both"),
        (replace(good, subjects=None, labels=None), "choose the cohort"),
        (replace(good, subjects=None, labels=None, cohort=str(empty_cohort)), "has no subject folders"),
        (replace(good, subjects={}, labels=None), "the cohort is empty"),
        (replace(good, subjects={"s1": {"T1": nodes["s1_T1"]}}, labels=None), "a multi-modal pair needs two"),
        (replace(good, subjects={"s1": {"T1": nodes["s1_labels"], "T2": nodes["s1_T2"]}}, labels=None), "is a labelmap"),
        (replace(good, labels={"s3": nodes["s1_labels"]}), "which has no volumes"),
    ]
