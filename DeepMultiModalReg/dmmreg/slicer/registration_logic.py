"""Logic of the Registration module: MRML nodes in, a background ``dmmreg register`` process,
MRML nodes out.  Works on a slicer-core scene without Qt; the module's widget only calls it.

* :meth:`RegistrationLogic.start` checks the inputs (:mod:`dmmreg.slicer.registration_inputs`:
  ``InputError`` before anything is written or added), exports them to a temporary folder and
  starts the backend in a separate process (:mod:`dmmreg.slicer.background`); it returns a run
  whose ``poll()`` never blocks (a GUI calls it on a timer).
* Nodes are added to the scene only in ``finish()``, after the process succeeded, so a
  cancelled or failed run leaves the scene as it was (:mod:`dmmreg.slicer.registration_outputs`:
  new nodes or the chosen ones overwritten; the moving volume left under the result transform
  or hardened into an output volume).  Input voxels are never modified.
* Sequences (4D): every frame is registered to a reference frame or a fixed volume in one
  background process (``dmmreg register-sequence``), giving a transform sequence, a warped
  sequence and a browser node.

Needs slicer-core; torch only runs in the background process.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

import numpy as np

from . import mrml
from .background import BackgroundJobRun, Progress, start_backend
from .registration_inputs import (PairInputs, RegistrationParameters, check_pair, check_parameters,
    check_settings, initial_affine_of)
from .registration_outputs import RegistrationOutputs, add_output_nodes, describe
from ..errors import InputError
from ..image import Image
from ..image_io import read_image, write_image


#: Slicer shows Python logging in its Error Log (and the application log file).
logger = logging.getLogger("DeepMultiModalReg")
#: The log a run keeps in its folder with ``keep_temporary_files``.
RUN_LOG = "run.log"


class RegistrationFailed(RuntimeError):
    """The background registration ended with an error; the message is the backend's."""


# --------------------------------------------------------------------------------------------
# One registration in a background process (files in, files out)


class RegistrationJob:
    """One ``dmmreg register`` process on checked inputs, in its own temporary folder."""

    def __init__(self, inputs: PairInputs, parameters: RegistrationParameters, python: str | None = None):
        self.inputs = inputs
        self.parameters = parameters
        self.folder = tempfile.mkdtemp(prefix="dmmreg-")
        self.error_message = ""
        self.log_lines: list[str] = []
        self.paths = {name: os.path.join(self.folder, name) for name in
                      ("fixed.nii.gz", "moving.nii.gz", "fixed-mask.nii.gz", "moving-mask.nii.gz",
                       "initial.tfm", "transform.h5", "inverse.h5", "warped.nii.gz")}
        try:
            arguments = self._arguments()
            self.process = start_backend(arguments, python)
        except BaseException:
            self.remove_files()
            raise
        logger.info("registration started (%s, folder %s): dmmreg %s", parameters.method, self.folder,
                    " ".join(arguments))

    def _arguments(self) -> list[str]:
        inputs, p, path = self.inputs, self.parameters, self.paths
        write_image(inputs.fixed, path["fixed.nii.gz"])
        write_image(inputs.moving, path["moving.nii.gz"])
        args = ["register", "--fixed", path["fixed.nii.gz"], "--moving", path["moving.nii.gz"],
                "--output-transform", path["transform.h5"], "--method", p.method,
                "--device", p.device, "--quality", p.quality, "--transform", p.transform, "--progress", "json"]
        if p.method == "optimise":
            args += ["--similarity", p.similarity]
        if p.model:
            args += ["--model", p.model]
        if p.refines:
            args += ["--refine", str(p.refine)]
        if p.harden_moving_volume:
            args += ["--output-volume", path["warped.nii.gz"]]
        if p.output_inverse_transform:
            args += ["--output-inverse-transform", path["inverse.h5"]]
        for key, option in (("fixed_mask", "--fixed-mask"), ("moving_mask", "--moving-mask")):
            mask = getattr(inputs, key)
            if mask is not None:
                name = key.replace("_", "-") + ".nii.gz"
                write_image(mask, path[name])
                args += [option, path[name]]
        if inputs.initial_affine_lps is not None:
            from ..transform_io import affine_to_sitk
            import SimpleITK as sitk

            sitk.WriteTransform(affine_to_sitk(inputs.initial_affine_lps), path["initial.tfm"])
            args += ["--initial-transform", path["initial.tfm"]]
        return args

    def poll(self) -> list[tuple[str, object]]:
        """New events (``("progress", Progress)`` / ``("log", str)``); keeps the backend's error message."""
        events = self.process.poll()
        for kind, value in events:
            if kind == "log":
                self.log_lines.append(value)
                logger.debug("registration: %s", value)
            if kind == "log" and value.startswith("error:"):
                self.error_message = value[len("error:"):].strip()
            elif kind == "progress" and value.stage == "error":
                self.error_message = value.message
        return events

    @property
    def finished(self) -> bool:
        return self.process.returncode is not None

    def failure(self) -> str | None:
        """The backend's message when the finished process failed, else ``None``."""
        returncode = self.process.returncode
        if returncode == 0 or returncode is None:
            return None
        if self.error_message:
            return self.error_message
        lines = [line for line in self.process.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else f"the registration process ended with exit code {returncode}"

    def read_outputs(self):
        """``(result, warped)`` read back from the finished process: a 3D LPS result (fixed to
        moving) with the inverse field when requested, and the warped moving image (or ``None``)."""
        from ..transform_io import read_result

        inputs = self.inputs
        inverse_path = self.paths["inverse.h5"] if self.parameters.output_inverse_transform else None
        result = read_result(self.paths["transform.h5"], inputs.fixed.geometry, inputs.moving.geometry, inverse_path)
        result.method = self.parameters.method
        warped = read_image(self.paths["warped.nii.gz"]) if self.parameters.harden_moving_volume else None
        if inputs.fixed_plane is not None:
            result = mrml.result_on_planes(result, inputs.fixed_plane, inputs.moving_plane,
                                           inputs.fixed_geometry_3d, inputs.moving_geometry_3d)
            warped = None if warped is None else mrml.image_on_plane(warped, inputs.fixed_plane)
        return result, warped

    def cancel(self) -> None:
        self.process.cancel()
        self.remove_files()

    def remove_files(self) -> None:
        """Remove the run's folder, or with ``keep_temporary_files`` keep it with the run's log
        (:data:`RUN_LOG`: the command, its output, the exit status) for a bug report."""
        if not self.parameters.keep_temporary_files:
            shutil.rmtree(self.folder, ignore_errors=True)
            return
        process = getattr(self, "process", None)
        status = "not started" if process is None else f"exit status {process.returncode}"
        text = "\n".join([f"# {status}", *self.log_lines]) + "\n"
        with open(os.path.join(self.folder, RUN_LOG), "w", encoding="utf-8") as stream:
            stream.write(text)
        logger.info("kept the registration's temporary folder %s (log: %s)", self.folder, RUN_LOG)


# --------------------------------------------------------------------------------------------
# Runs: progress while working, nodes at the end


def job_outputs(run):
    """What ``run``'s finished job wrote (its ``read_outputs()``), its temporary files removed;
    ``RegistrationFailed`` (logged) if the run was cancelled or the job failed."""
    if run.cancelled:
        raise RegistrationFailed("the registration was cancelled")
    run.job.process.wait()
    run.poll()
    try:
        failure = run.job.failure()
        if failure:
            logger.error("registration failed: %s", failure)
            raise RegistrationFailed(failure)
        return run.job.read_outputs()
    finally:
        run.job.remove_files()


class RegistrationRun(BackgroundJobRun):
    """A pair registration in progress; :meth:`finish` adds the result nodes."""

    #: The job run; a subclass may run one that writes more outputs (and add other nodes in :meth:`_add_nodes`).
    job_class = RegistrationJob

    def __init__(self, scene, parameters: RegistrationParameters, inputs: PairInputs, python: str | None = None):
        super().__init__()
        self.scene = scene
        self.parameters = parameters
        self.job = self.job_class(inputs, parameters, python)

    def poll(self) -> list[Progress]:
        return self._follow(self.job)

    @property
    def finished(self) -> bool:
        return self.job.finished

    def cancel(self) -> None:
        """End the background process tree; the scene stays as it was."""
        self.cancelled = True
        self.job.cancel()

    def finish(self) -> RegistrationOutputs:
        """Wait for the process, then add the requested nodes (raises ``RegistrationFailed``)."""
        result, warped = job_outputs(self)
        return self._add_nodes(result, warped)

    def _add_nodes(self, result, warped: Image | None):
        return add_output_nodes(self.scene, self.parameters, result, warped)


class RegistrationLogic:
    """Everything the Registration module does, on an MRML scene (no Qt needed).

    ``python``: interpreter for the background process (default: PythonSlicer inside Slicer,
    else the current one)."""

    def __init__(self, scene, python: str | None = None):
        self.scene = scene
        self.python = python

    def start(self, parameters: RegistrationParameters) -> RegistrationRun:
        """Check the inputs and start the background registration (``InputError`` if unusable)."""
        return RegistrationRun(self.scene, parameters, check_parameters(parameters), self.python)

    def start_sequence(self, parameters: RegistrationParameters, sequence_node, reference_index: int | None = 0) -> SequenceRegistrationRun:
        """Register every frame of ``sequence_node`` to its frame ``reference_index`` or, when that
        is ``None``, to ``parameters.fixed_volume``; ``parameters.moving_volume`` is ignored."""
        return SequenceRegistrationRun(self.scene, parameters, sequence_node, reference_index, self.python)


# --------------------------------------------------------------------------------------------
# Sequences


class SequenceJob(RegistrationJob):
    """One ``dmmreg register-sequence`` process registering every frame to the reference
    (``inputs``: one :class:`PairInputs` per frame, all with the reference as fixed image)."""

    def _arguments(self) -> list[str]:
        p, frames = self.parameters, os.path.join(self.folder, "frames")
        reference, self.output_folder = os.path.join(self.folder, "reference.nii.gz"), os.path.join(self.folder, "out")
        os.mkdir(frames)
        write_image(self.inputs[0].fixed, reference)
        for index, inputs in enumerate(self.inputs):
            write_image(inputs.moving, os.path.join(frames, f"frame_{index:04d}.nii.gz"))
        args = ["register-sequence", "--frames", frames, "--reference-image", reference, "--output-folder",
                self.output_folder, "--output-warped", "--method", p.method, "--device", p.device, "--quality", p.quality,
                "--transform", p.transform, "--progress", "json"]
        if p.method == "optimise" and p.similarity != RegistrationParameters.similarity:
            args += ["--similarity", p.similarity]  # the panel's default leaves 2D series their cine settings
        if p.model:
            args += ["--model", p.model]
        if p.refines:
            args += ["--refine", str(p.refine)]
        if self.inputs[0].initial_affine_lps is not None:
            from ..transform_io import affine_to_sitk
            import SimpleITK as sitk

            sitk.WriteTransform(affine_to_sitk(self.inputs[0].initial_affine_lps), self.paths["initial.tfm"])
            args += ["--initial-transform", self.paths["initial.tfm"]]
        return args

    def read_outputs(self) -> list:
        """``(result, warped)`` of every frame, as :meth:`RegistrationJob.read_outputs`."""
        from ..transform_io import read_result

        outputs = []
        for index, inputs in enumerate(self.inputs):
            name = os.path.join(self.output_folder, f"frame_{index:04d}")
            result = read_result(name + "_transform.h5", inputs.fixed.geometry, inputs.moving.geometry)
            result.method = self.parameters.method
            warped = read_image(name + "_warped.nii.gz")
            if inputs.fixed_plane is not None:
                result = mrml.result_on_planes(result, inputs.fixed_plane, inputs.moving_plane,
                                               inputs.fixed_geometry_3d, inputs.moving_geometry_3d)
                warped = mrml.image_on_plane(warped, inputs.fixed_plane)
            outputs.append((result, warped))
        return outputs


class SequenceRegistrationRun(BackgroundJobRun):
    """Frames of a sequence registered to the reference in one background process (the images
    read and a network loaded once: ``dmmreg register-sequence``)."""

    def __init__(self, scene, parameters: RegistrationParameters, sequence_node, reference_index: int | None, python: str | None):
        super().__init__()
        self.scene, self.parameters, self.sequence, self.python = scene, parameters, sequence_node, python
        check_settings(parameters)
        count = sequence_node.GetNumberOfDataNodes()
        if count == 0:
            raise InputError(f"the sequence '{sequence_node.GetName()}' has no frames")
        if reference_index is None:
            if parameters.fixed_volume is None:
                raise InputError("choose a reference frame or a fixed volume for the sequence")
            self.reference_node = parameters.fixed_volume
        else:
            if not 0 <= reference_index < count:
                raise InputError(f"reference frame {reference_index} is outside the sequence (0..{count - 1})")
            self.reference_node = sequence_node.GetNthDataNode(reference_index)
        self.frames = [sequence_node.GetNthDataNode(i) for i in range(count)]
        self.fixed = mrml.image_from_volume_node(self.reference_node, "reference frame")
        self.initial_affine = initial_affine_of(parameters.initial_transform)
        self.inputs = [self._frame_inputs(i) for i in range(count)]  # every frame checked before any work
        self.job: SequenceJob | None = SequenceJob(self.inputs, self._frame_parameters(), self.python)

    def _frame_inputs(self, index: int) -> PairInputs:
        frame = mrml.image_from_volume_node(self.frames[index], f"frame {index}")
        return check_pair(self.fixed, frame, self.reference_node.GetName(), f"frame {index}", self.initial_affine)

    def _frame_parameters(self) -> RegistrationParameters:
        p = self.parameters
        return RegistrationParameters(method=p.method, model=p.model, device=p.device, quality=p.quality,
                                      transform=p.transform, refine=p.refine, output_transform=True,
                                      harden_moving_volume=True, similarity=p.similarity,
                                      keep_temporary_files=p.keep_temporary_files)

    @property
    def finished(self) -> bool:
        return self.job is None or self.job.finished

    def poll(self) -> list[Progress]:
        return [] if self.job is None else self._follow(self.job)

    def cancel(self) -> None:
        self.cancelled = True
        if self.job is not None:
            self.job.cancel()
            self.job = None

    def finish(self) -> RegistrationOutputs:
        """Wait for the process, then add the transform and warped sequences and a browser."""
        results = job_outputs(self)
        return add_sequence_nodes(self.scene, self.parameters, self.sequence, self.reference_node.GetName(), results)


def add_sequence_nodes(scene, parameters: RegistrationParameters, sequence_node, reference_name: str, results) -> RegistrationOutputs:
    """A transform sequence (one composed grid transform per frame, FromParent), the warped
    sequence and a browser node playing both, with the input sequence's index values."""
    import slicer

    name = f"{sequence_node.GetName()} to {reference_name} ({parameters.method})"
    description = describe(parameters, reference_name, sequence_node.GetName())
    transforms = scene.AddNewNodeByClass("vtkMRMLSequenceNode", f"{name} transforms")
    warped_frames = scene.AddNewNodeByClass("vtkMRMLSequenceNode", f"{name} warped")
    scratch = slicer.vtkMRMLScene()  # frames are copied into the sequences, then dropped
    for sequence in (transforms, warped_frames):
        sequence.SetIndexName(sequence_node.GetIndexName())
        sequence.SetIndexUnit(sequence_node.GetIndexUnit())
        sequence.SetIndexType(sequence_node.GetIndexType())
    for index, (result, warped) in enumerate(results):
        value = sequence_node.GetNthIndexValue(index)
        nodes = mrml.add_result_transform_nodes(scratch, result, f"frame {value}", description, composed=True)
        transforms.SetDataNodeAtValue(nodes.top, value)
        volume = mrml.add_volume_node(scratch, warped.with_array(warped.array.astype(np.float32)), f"frame {value}")
        warped_frames.SetDataNodeAtValue(volume, value)
    for sequence, role in ((transforms, "transform sequence"), (warped_frames, "warped sequence")):
        mrml.set_attributes(sequence, description.attributes(role))
    sequences_logic = _sequences_logic(scene)
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", name)
    browser.SetAndObserveMasterSequenceNodeID(warped_frames.GetID())
    browser.AddSynchronizedSequenceNodeID(transforms.GetID())
    sequences_logic.UpdateProxyNodesFromSequences(browser)
    return RegistrationOutputs(transform_sequence=transforms, warped_sequence=warped_frames, browser=browser,
                               nodes=[transforms, warped_frames, browser])


def _sequences_logic(scene):
    """Slicer's Sequences module logic (it makes a browser's proxy nodes); outside the Slicer
    application a new one attached to ``scene``, which also registers the browser node class."""
    import slicer

    modules = getattr(slicer, "modules", None)
    if modules is not None and hasattr(modules, "sequences"):
        return modules.sequences.logic()
    logic = slicer.vtkSlicerSequencesLogic()
    logic.SetMRMLScene(scene)
    return logic
