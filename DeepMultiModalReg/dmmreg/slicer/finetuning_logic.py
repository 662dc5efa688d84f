"""Logic of the Fine-tuning module: a base model, a cohort (files or scene volumes), a background
``dmmreg finetune`` process, live loss and validation curves as MRML table and plot nodes, and
a new user model at the end.  Works on a slicer-core scene without Qt; the widget only calls it.

* :func:`check_parameters` raises ``InputError`` (problem and fix) before anything is written,
  started or added to the scene.
* Scene volumes grouped by subject are written unchanged as NIfTI into a cohort folder
  (``SUBJECT/CONTRAST.nii.gz``, ``SUBJECT/labels.nii.gz``) inside the run folder, so the
  background process reads files like any cohort (:func:`export_cohort`).
* :class:`FineTuningRun` follows the process (``poll()`` never blocks), appends every update's
  loss and every validation's endpoint error to table nodes drawn by plot charts, cancels with
  a grace long enough for the backend's checkpoint, and returns the new model's card in
  :meth:`FineTuningRun.finish`.  New models go to the user models folder only
  (:func:`dmmreg.model_io.user_models_folder`), where the Registration module's model selector
  (:func:`dmmreg.methods.available_models`) finds them at once.

Every run gets its own run folder (default ``<user models>/runs/NAME-DATE-XXXX``), so a new run
never silently resumes an older one.  It keeps the backend's ``job.json`` and checkpoints; a
cancelled run keeps its exported cohort beside its checkpoint, so
``dmmreg train --resume RUN_FOLDER`` can continue it.

Needs slicer-core; torch only runs in the background process.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .. import model_io
from . import mrml
from .background import DEVICES, BackgroundJobRun, Progress, start_backend
from ..training.cohorts import RESERVED
from ..errors import InputError
from ..image import Image, check_image
from ..image_io import write_image

#: Seconds ``cancel()`` waits for the backend to finish its update and write its checkpoint
#: before it ends the process tree (one 3D update plus a validation on a CPU can take minutes).
CANCEL_GRACE_SECONDS = 300.0
#: The contrast name the backend gives images drawn from a subject's label map
#: (``dmmreg.training.pairs.SYNTHETIC``; that module imports torch).
SYNTHETIC = "synthetic"
#: Sub-folder of the run folder holding the cohort exported from scene volumes.
EXPORTED_COHORT = "cohort"
LOSS_COLUMNS = ("update", "loss")
VALIDATION_COLUMNS = ("update", "validation EPE mm", "folding %")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


class FineTuningFailed(RuntimeError):
    """The background fine-tuning ended with an error or was cancelled; the message says which."""


@dataclass
class FineTuningParameters:
    """Everything a fine-tuning needs; the module's parameter node holds the same fields.

    * ``base_model``: a model name (bundled or user, see ``dmmreg models``) or a ``.safetensors``/``.json`` path.
    * The data: either ``cohort`` (a cohort folder or CSV, see :mod:`dmmreg.training.cohorts`) or
      ``subjects`` = ``{subject: {contrast: scalar volume node}}`` with optional ``labels`` =
      ``{subject: label map volume node}`` (on the grid of that subject's first volume).
    * ``name``: of the new model (written as ``NAME.safetensors`` + ``NAME.json`` in the user folder).
    * ``epochs`` x ``epoch_steps`` updates (per fine-tuned stage of the method), validated after every epoch.
    * ``contrast_pairs``: allowed ``(fixed, moving)`` contrasts (None: any two of a subject);
      ``validation_subjects``: held out (None: the last subject when there are several).
    """

    base_model: str = ""
    cohort: str = ""
    subjects: dict | None = None
    labels: dict | None = None
    name: str = ""
    epochs: int = 5
    epoch_steps: int = 100
    learning_rate: float | None = None
    device: str = "auto"
    contrast_pairs: list | None = None
    validation_subjects: list | None = None
    validation_pairs: int = 6
    threads: int = 0
    run_folder: str = ""

    @property
    def updates(self) -> int:
        """Updates per fine-tuned stage: ``epochs`` x ``epoch_steps``."""
        return int(self.epochs) * int(self.epoch_steps)


@dataclass
class FineTuningInputs:
    """Checked parameters: the base model's card, its method, and the cohort's subjects
    (``{subject: [contrast, ...]}``, lower case) with the subjects that have labels."""

    base_card_path: Path
    base_card: dict
    method: str
    subjects: dict[str, list[str]]
    labelled: set[str] = field(default_factory=set)


# --------------------------------------------------------------------------------------------
# Checking inputs


def _check_file_name(name: str, what: str) -> str:
    name = (name or "").strip()
    if not _NAME.match(name):
        raise InputError(f"{what} {name!r} cannot be a file name; use letters, digits, '.', '_', '+' or '-' "
                         "(starting with a letter or digit)")
    return name


def _check_base_model(base_model: str) -> tuple[Path, dict]:
    if not (base_model or "").strip():
        raise InputError("choose the base model to fine-tune (a model from the Registration module's list "
                         "or a .safetensors file)")
    path = model_io.find_model("", 0, base_model.strip())
    return path, model_io.read_card(path)


def _check_new_name(name: str) -> str:
    if not (name or "").strip():
        raise InputError("give the new model a name (it is saved as NAME.safetensors with its card NAME.json)")
    name = _check_file_name(name, "the new model's name")
    if (model_io.BUNDLED_MODELS / f"{name}.json").exists():
        raise InputError(f"{name!r} is the name of a bundled model; choose another name for the new model")
    existing = model_io.user_models_folder() / f"{name}.json"
    if existing.exists():
        raise InputError(f"a model named {name!r} exists already ({existing}); choose another name, "
                         "or delete that model first")
    return name


def _scene_subjects(p: FineTuningParameters) -> tuple[dict[str, list[str]], set[str]]:
    """Check the scene volumes (and label maps) grouped by subject; ``({subject: contrasts}, labelled)``."""
    if not p.subjects:
        raise InputError("the cohort is empty: add at least one subject with its volumes")
    subjects: dict[str, list[str]] = {}
    for subject, volumes in p.subjects.items():
        subject = _check_file_name(str(subject), "subject name")
        if subject.lower() in (s.lower() for s in subjects):
            raise InputError(f"subject {subject!r} is listed twice; give every subject one name")
        if not volumes:
            raise InputError(f"subject {subject!r} has no volumes; add its volumes or remove the subject")
        contrasts: list[str] = []
        for contrast, node in volumes.items():
            contrast = _check_file_name(str(contrast), f"contrast name of subject {subject!r}")
            if contrast.lower() in RESERVED:
                raise InputError(f"{contrast!r} is reserved for label maps and masks; give subject {subject!r}'s "
                                 "volume a contrast name such as T1, T2 or FLAIR")
            if contrast.lower() in contrasts:
                raise InputError(f"subject {subject!r} has two {contrast} volumes; keep one")
            image = mrml.image_from_volume_node(node, f"{contrast} volume of subject {subject!r}")
            _check_3d(image, f"the {contrast} volume '{node.GetName()}' of subject {subject!r}")
            check_image(image, f"the {contrast} volume '{node.GetName()}' of subject {subject!r}")
            contrasts.append(contrast.lower())
        subjects[subject] = contrasts
    labelled = set()
    for subject, node in (p.labels or {}).items():
        if node is None:
            continue
        if subject not in subjects:
            raise InputError(f"there is a label map for subject {subject!r}, which has no volumes; "
                             f"subjects: {', '.join(subjects)}")
        if not node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise InputError(f"the label map of subject {subject!r} ('{node.GetName()}') is a {node.GetClassName()}; "
                             "select a label map volume (convert a segmentation to a label map first)")
        _check_3d(_label_image(node), f"the label map '{node.GetName()}' of subject {subject!r}")
        labelled.add(subject)
    return subjects, labelled


def _check_3d(image: Image, what: str) -> None:
    if image.dim != 3 or mrml.is_single_slice(image.geometry):
        raise InputError(f"{what} is a single slice; fine-tuning reads 3D volumes (2D models train on their "
                         "axial slices)")


def _label_image(node) -> Image:
    import slicer.util

    return Image(slicer.util.arrayFromVolume(node).copy(), mrml.geometry_from_volume_node(node))


def _file_subjects(cohort: str) -> tuple[dict[str, list[str]], set[str]]:
    from ..training.cohorts import read_cohort

    read = read_cohort(cohort)
    return {s.name: list(s.images) for s in read.subjects}, {s.name for s in read.subjects if s.labels is not None}


def _check_pairs(pairs, subjects: dict[str, list[str]], labelled: set[str]) -> list[tuple[str, str]] | None:
    if pairs is None:
        for subject, contrasts in subjects.items():
            if len(contrasts) < 2:
                raise InputError(f"subject {subject!r} has only {', '.join(contrasts)}: a multi-modal pair needs two "
                                 f"contrasts; add another volume of it, or allow the pair "
                                 f"{contrasts[0]}:{contrasts[0]} (mono-modal) in the contrast pairs")
        return None
    checked = []
    for pair in pairs:
        pair = tuple(str(c).strip().lower() for c in pair)
        if len(pair) != 2 or not all(pair):
            raise InputError(f"contrast pair {pair} must name a fixed and a moving contrast, e.g. t2:t1")
        checked.append(pair)
    if not checked:
        raise InputError("no contrast pairs given; add one (e.g. t2:t1) or leave the pairs out to use any two contrasts")
    known = {c for contrasts in subjects.values() for c in contrasts} | {SYNTHETIC}
    unknown = sorted({c for pair in checked for c in pair} - known)
    if unknown:
        raise InputError(f"no subject has {', '.join(unknown)} volumes (the cohort has "
                         f"{', '.join(sorted(known - {SYNTHETIC}))}); choose pairs of those contrasts")
    for subject, contrasts in subjects.items():
        usable = [p for p in checked if all(c in contrasts or (c == SYNTHETIC and subject in labelled) for c in p)]
        if not usable:
            need = "two contrasts" if any(a != b for a, b in checked) else "that contrast"
            raise InputError(f"subject {subject!r} has only {', '.join(contrasts)}, none of the contrast pairs "
                             f"{', '.join(':'.join(p) for p in checked)} (a pair needs {need}); add its missing "
                             "volume, remove the subject or change the pairs")
    return checked


def check_parameters(parameters: FineTuningParameters) -> FineTuningInputs:
    """Check everything that can be checked before the background process starts; ``InputError``
    names the problem and the fix, and nothing is written or added."""
    p = parameters
    base_path, base_card = _check_base_model(p.base_model)
    _check_new_name(p.name)
    if p.device not in DEVICES:
        raise InputError(f"device must be one of {', '.join(DEVICES)}, not {p.device!r}")
    for value, what in ((p.epochs, "epochs"), (p.epoch_steps, "updates per epoch"), (p.validation_pairs, "validation pairs")):
        if not isinstance(value, int) or value < 1:
            raise InputError(f"the number of {what} must be a whole number of at least 1, not {value!r}")
    if p.learning_rate is not None and not p.learning_rate > 0:
        raise InputError(f"the learning rate must be positive, not {p.learning_rate}; leave it empty for the method's")
    if p.cohort and p.subjects:
        raise InputError("give the cohort either as a folder/CSV file or as scene volumes, not both")
    if p.cohort:
        subjects, labelled = _file_subjects(p.cohort)
    elif p.subjects is not None:
        subjects, labelled = _scene_subjects(p)
    else:
        raise InputError("choose the cohort to fine-tune on: a cohort folder or CSV file, or scene volumes grouped by subject")
    _check_pairs(p.contrast_pairs, subjects, labelled)
    if p.validation_subjects:
        missing = [s for s in p.validation_subjects if s not in subjects]
        if missing:
            raise InputError(f"validation subjects {', '.join(missing)} are not in the cohort "
                             f"(it has {', '.join(subjects)}); choose subjects of the cohort")
        if len(set(p.validation_subjects)) >= len(subjects):
            raise InputError("every subject is held out for validation; leave at least one subject to train on")
    return FineTuningInputs(base_path, base_card, base_card["method"], subjects, labelled)


# --------------------------------------------------------------------------------------------
# Scene volumes to a cohort folder


def export_cohort(subjects: dict, labels: dict | None, folder: str | os.PathLike) -> Path:
    """Write ``{subject: {contrast: volume node}}`` (and ``{subject: label map node}``) unchanged,
    as ``folder/SUBJECT/CONTRAST.nii.gz`` and ``folder/SUBJECT/labels.nii.gz``: a cohort folder
    that :func:`dmmreg.training.cohorts.read_cohort` reads.  Geometry as displayed (LPS), voxel type kept."""
    folder = Path(folder)
    for subject, volumes in subjects.items():
        for contrast, node in volumes.items():
            write_image(mrml.image_from_volume_node(node, f"{contrast} volume of subject {subject!r}"),
                        folder / str(subject) / f"{contrast}.nii.gz")
        label_node = (labels or {}).get(subject)
        if label_node is not None:
            write_image(_label_image(label_node), folder / str(subject) / "labels.nii.gz")
    return folder


# --------------------------------------------------------------------------------------------
# Curves as table and plot nodes


class _Curve:
    """A table node with numeric columns and a chart drawing its second column against its first."""

    def __init__(self, scene, name: str, columns: tuple[str, ...], y_title: str, markers: bool):
        import slicer

        self.table = mrml.add_table_node(scene, name, {column: [] for column in columns})  # empty: numbers
        self.columns = [self.table.GetTable().GetColumnByName(column) for column in columns]
        # scatter: x from a column; with a solid line the points are joined
        self.chart, self.series = mrml.add_plot_chart(scene, self.table, columns[0], columns[1], name,
                                                      slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter,
                                                      x_title="update", y_title=y_title)
        self.series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)
        self.series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle if markers
                                   else slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        self.chart.SetLegendVisibility(False)

    def add(self, *values) -> None:
        for array, value in zip(self.columns, values):
            array.InsertNextValue(float("nan") if value is None else float(value))
        self.table.GetTable().Modified()
        self.table.Modified()  # the plot views redraw

    @property
    def nodes(self) -> list:
        return [self.table, self.series, self.chart]


# --------------------------------------------------------------------------------------------
# The run


@dataclass
class FineTuningOutputs:
    """The new model: its card file (beside ``model_path``, the weights) and the card's contents
    (``card["validation_at_start"]``: the base model's numbers, ``card["validation"]``: the new one's)."""

    card_path: Path
    card: dict
    model_path: Path
    method: str


class FineTuningRun(BackgroundJobRun):
    """A fine-tuning in progress: ``poll()`` on a timer, ``cancel()`` or ``finish()``.

    ``loss`` / ``validation``: the live curves (``.table``, ``.chart``, ``.series``; rows are
    updates and validations); ``history``: every record the backend reported."""

    def __init__(self, scene, parameters: FineTuningParameters, inputs: FineTuningInputs, python: str | None = None):
        super().__init__()
        self.scene, self.parameters, self.inputs, self.method = scene, parameters, inputs, inputs.method
        self.history: list[dict] = []
        self.updates = 0
        self.outputs: dict = {}
        self.error_message = ""
        self._own_run_folder = not parameters.run_folder
        self.run_folder = Path(parameters.run_folder) if parameters.run_folder else _new_run_folder(parameters.name)
        self.run_folder.mkdir(parents=True, exist_ok=True)
        self.exported_cohort: Path | None = None
        self.loss = self.validation = None
        try:
            if parameters.cohort:
                cohort = os.path.abspath(parameters.cohort)
            else:
                self.exported_cohort = export_cohort(parameters.subjects, parameters.labels, self.run_folder / EXPORTED_COHORT)
                cohort = str(self.exported_cohort)
            name = parameters.name.strip()
            self.loss = _Curve(scene, f"{name} loss", LOSS_COLUMNS, "loss", markers=False)
            self.validation = _Curve(scene, f"{name} validation", VALIDATION_COLUMNS, "validation EPE (mm)", markers=True)
            self.process = start_backend(self._arguments(cohort), python)
        except BaseException:
            for curve in (self.loss, self.validation):
                for node in [] if curve is None else curve.nodes:
                    scene.RemoveNode(node)
            self._clean_up(succeeded=False)
            raise

    def _arguments(self, cohort: str) -> list[str]:
        p = self.parameters
        args = ["finetune", "--model", str(self.inputs.base_card_path), "--cohort", cohort, "--name", p.name.strip(),
                "--steps", str(p.updates), "--epoch-steps", str(p.epoch_steps), "--device", p.device,
                "--validation-pairs", str(p.validation_pairs), "--run-folder", str(self.run_folder), "--progress", "json"]
        for fixed, moving in p.contrast_pairs or []:
            args += ["--pair", f"{fixed.strip().lower()}:{moving.strip().lower()}"]
        if p.learning_rate is not None:
            args += ["--learning-rate", repr(float(p.learning_rate))]
        if p.validation_subjects:
            args += ["--validation-subjects", ",".join(p.validation_subjects)]
        if p.threads:
            args += ["--threads", str(int(p.threads))]
        return args

    # ---------------------------------------------------------------- following

    def poll(self) -> list[Progress]:
        """New progress reports (never blocks); fills the curves and keeps the backend's messages."""
        reports = self._follow(self.process)
        for report in reports:
            record = report.details.get("record") or {}
            if record:
                self.history.append(record)
            if report.stage == "train" and record.get("kind") == "train":
                self.updates += 1
                self.loss.add(self.updates, record.get("total"))
            elif report.stage == "validate" and record.get("kind") == "validation":
                self.validation.add(record.get("done"), record.get("epe_mm"), record.get("folding_percent"))
            elif report.stage == "error":
                self.error_message = report.message
            elif report.stage == "done":
                self.outputs = report.details.get("outputs") or {}
        return reports

    @property
    def finished(self) -> bool:
        return self.process.returncode is not None

    @property
    def checkpoint(self) -> Path | None:
        """The run folder's ``checkpoint.json`` (``None`` before the first one)."""
        from ..training.trainer import CHECKPOINT

        path = self.run_folder / CHECKPOINT
        return path if path.exists() else None

    def failure(self) -> str | None:
        """The backend's message when the finished process failed, else ``None``."""
        returncode = self.process.returncode
        if returncode in (0, None):
            return None
        if self.error_message:
            return self.error_message
        errors = [line[len("error:"):].strip() for line in self.log if line.startswith("error:")]
        if errors:
            return errors[-1]
        lines = [line for line in self.process.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else f"the fine-tuning process ended with exit code {returncode}"

    # ---------------------------------------------------------------- ending

    def cancel(self, grace_seconds: float = CANCEL_GRACE_SECONDS) -> None:
        """Ask the backend to stop after its current update (it writes a checkpoint and no model),
        ending the process tree after ``grace_seconds``; blocks until it is gone."""
        if self.finished:
            return
        self.cancelled = True
        self.process.cancel(grace_seconds)
        self.poll()
        checkpoint = self.checkpoint
        self.stage = "cancelled"
        self.message = (f"cancelled after {self.updates} updates; no model was written"
                        + (f"; the checkpoint is in {self.run_folder}" if checkpoint else ""))
        self._clean_up(succeeded=False)

    def finish(self) -> FineTuningOutputs:
        """Wait for the process; the new model's card (raises ``FineTuningFailed``)."""
        if self.cancelled:
            raise FineTuningFailed(f"the fine-tuning was {self.message}")
        self.process.wait()
        self.poll()
        failure = self.failure()
        if failure is not None:
            self._clean_up(succeeded=False)
            raise FineTuningFailed(failure)
        if "card" not in self.outputs:
            self._clean_up(succeeded=False)
            raise FineTuningFailed("the fine-tuning process ended without naming its model; see its log")
        card_path = Path(self.outputs["card"])
        card = model_io.read_card(card_path)
        self._clean_up(succeeded=True)
        return FineTuningOutputs(card_path, card, card_path.with_suffix(".safetensors"), card["method"])

    def _clean_up(self, succeeded: bool) -> None:
        """Drop the exported cohort unless it serves a resumable checkpoint; drop a run folder of
        ours that holds no checkpoint."""
        resumable = not succeeded and self.checkpoint is not None
        if self.exported_cohort is not None and not resumable:
            shutil.rmtree(self.exported_cohort, ignore_errors=True)
        if self._own_run_folder and not succeeded and self.checkpoint is None:
            shutil.rmtree(self.run_folder, ignore_errors=True)


def _new_run_folder(name: str) -> Path:
    runs = model_io.user_models_folder() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.mkdtemp(prefix=f"{name.strip()}-{stamp}-", dir=runs))


class FineTuningLogic:
    """Everything the Fine-tuning module does, on an MRML scene (no Qt needed).

    ``python``: interpreter for the background process (default: PythonSlicer inside Slicer,
    else the current one)."""

    def __init__(self, scene, python: str | None = None):
        self.scene = scene
        self.python = python

    def start(self, parameters: FineTuningParameters) -> FineTuningRun:
        """Check the parameters (``InputError`` if unusable) and start the background fine-tuning."""
        return FineTuningRun(self.scene, parameters, check_parameters(parameters), self.python)
