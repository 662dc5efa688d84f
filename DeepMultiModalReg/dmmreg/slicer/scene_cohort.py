"""Scene volumes grouped by subject, for the Fine-tuning module's "volumes of this scene" cohort.

A volume belongs to subject ``SUBJECT`` with contrast ``CONTRAST`` when it is named
``SUBJECT_CONTRAST`` (split at the last underscore: ``sub-01_T1``, ``patient_7_FLAIR``), or when
it has the node attributes ``DeepMultiModalReg.CohortSubject`` / ``DeepMultiModalReg.CohortContrast``
(which win over the name).  A label map volume named ``SUBJECT_labels`` (or with the subject
attribute) is that subject's label map.  Volumes that follow neither rule, and the results of this
extension (nodes with a ``DeepMultiModalReg.Role``), are left out and listed as skipped.

Also the panel's values turned into :class:`~dmmreg.slicer.finetuning_logic.FineTuningParameters`, and the
text of a new model's validation before and after.  Needs slicer-core only (no Qt, no torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InputError
from .finetuning_logic import FineTuningParameters
from .mrml import ATTRIBUTE_PREFIX

SUBJECT_ATTRIBUTE = ATTRIBUTE_PREFIX + "CohortSubject"
CONTRAST_ATTRIBUTE = ATTRIBUTE_PREFIX + "CohortContrast"
LABELS = "labels"
#: The cohort sources of the panel: a cohort folder or CSV file, or the volumes of the scene.
COHORT_SOURCES = ("files", "scene")


@dataclass
class SceneCohort:
    """``subjects``: ``{subject: {contrast: volume node}}``; ``labels``: ``{subject: label map node}``;
    ``skipped``: names of the volumes left out."""

    subjects: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)

    def summary(self) -> str:
        """One line per subject (``s1: T1, T2 + labels``), then the skipped volumes."""
        lines = [f"{subject}: {', '.join(sorted(volumes))}" + (" + labels" if subject in self.labels else "")
                 for subject, volumes in sorted(self.subjects.items())]
        if not lines:
            lines.append("no volume named SUBJECT_CONTRAST (e.g. sub-01_T1) in the scene")
        if self.skipped:
            lines.append(f"skipped (not named SUBJECT_CONTRAST): {', '.join(sorted(self.skipped))}")
        return "\n".join(lines)


def subject_and_contrast(node) -> tuple[str, str] | None:
    """``(subject, contrast)`` of a volume node by its attributes or its name, else ``None``."""
    name = node.GetName() or ""
    by_name = name.rsplit("_", 1) if "_" in name else ["", ""]
    subject = node.GetAttribute(SUBJECT_ATTRIBUTE) or by_name[0].strip()
    contrast = node.GetAttribute(CONTRAST_ATTRIBUTE) or by_name[1].strip()
    if node.IsA("vtkMRMLLabelMapVolumeNode") and subject and (node.GetAttribute(SUBJECT_ATTRIBUTE) or contrast.lower() == LABELS):
        contrast = LABELS
    return (subject, contrast) if subject and contrast else None


def group_scene_volumes(scene) -> SceneCohort:
    """The scene's scalar and label map volumes grouped by subject (see the module docstring);
    ``InputError`` when two volumes claim the same subject and contrast."""
    cohort = SceneCohort()
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        explicit = node.GetAttribute(SUBJECT_ATTRIBUTE) is not None
        key = subject_and_contrast(node)
        if key is None or (node.GetAttribute(ATTRIBUTE_PREFIX + "Role") is not None and not explicit):
            cohort.skipped.append(node.GetName())
            continue
        subject, contrast = key
        if node.IsA("vtkMRMLLabelMapVolumeNode"):
            if contrast != LABELS:
                cohort.skipped.append(node.GetName())
                continue
            if subject in cohort.labels:
                raise InputError(f"subject {subject!r} has two label maps ('{cohort.labels[subject].GetName()}' and "
                                 f"'{node.GetName()}'); rename or delete one")
            cohort.labels[subject] = node
            continue
        volumes = cohort.subjects.setdefault(subject, {})
        same = [c for c in volumes if c.lower() == contrast.lower()]
        if same:
            raise InputError(f"subject {subject!r} has two {contrast} volumes ('{volumes[same[0]].GetName()}' and "
                             f"'{node.GetName()}'); rename or delete one")
        volumes[contrast] = node
    return cohort


def parameters_from_panel(source, scene) -> FineTuningParameters:
    """The fine-tuning parameters of the module's parameter node ``source`` (fields ``cohort_source``,
    ``cohort``, ``base_model``, ``name``, ``epochs``, ``epoch_steps``, ``learning_rate`` (0: the
    method's), ``device``); scene volumes are grouped by :func:`group_scene_volumes`."""
    if source.cohort_source not in COHORT_SOURCES:
        raise InputError(f"the cohort source must be one of {', '.join(COHORT_SOURCES)}, not {source.cohort_source!r}")
    values = dict(base_model=source.base_model or "", name=source.name or "", epochs=int(source.epochs),
                  epoch_steps=int(source.epoch_steps), device=source.device,
                  learning_rate=float(source.learning_rate) if source.learning_rate else None)
    if source.cohort_source == "scene":
        cohort = group_scene_volumes(scene)
        return FineTuningParameters(subjects=cohort.subjects, labels=cohort.labels, **values)
    path = str(source.cohort) if source.cohort is not None else ""
    return FineTuningParameters(cohort="" if path in ("", ".") else path, **values)


def validation_summary(card: dict) -> str:
    """The new model's validation before (base model) and after fine-tuning, from its card."""
    before, after = card.get("validation_at_start") or {}, card.get("validation") or {}

    def numbers(values: dict) -> str:
        parts = []
        if "epe_mm" in values:
            parts.append(f"EPE {values['epe_mm']:.3f} mm")
        if "folding_percent" in values:
            parts.append(f"folding {values['folding_percent']:.3f} %")
        return ", ".join(parts) or "not recorded"

    return f"validation before: {numbers(before)}; after: {numbers(after)}"
