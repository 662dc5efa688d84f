"""Logic of the "Synthesis preview" module: what a learned method's networks make of the images.

Methods ``fire``, ``disentangled`` and ``hierarchical`` render the moving image in the fixed
image's contrast (and fire/disentangled the fixed image in the moving contrast).  This module
runs such a registration in a background process, reusing the Registration module's job and
run (:class:`dmmreg.slicer.registration_logic.RegistrationJob` / ``RegistrationRun``, with
``dmmreg register --output-synthesised``), and on finish adds:

* one scalar volume node per synthesised image, on the fixed volume's grid, named
  ``"<moving> in <fixed> contrast"`` / ``"<fixed> in <moving> contrast"``, with attributes
  saying what it is (``DeepMultiModalReg.*``).  The networks work on intensities normalised to
  [0, 1] by the percentiles of :func:`dmmreg.image.normalise_intensity`; the node holds the
  synthesised image mapped back through the same window of the real image of its contrast,
  so it has that image's intensity scale (attribute ``IntensityWindow``);
* a similarity report, a dict and a ``vtkMRMLTableNode``: NMI and SSIM
  (:mod:`dmmreg.synthesis`) between each synthesised image and the real image of its contrast
  on the fixed grid, inside the brain (the fixed volume's voxels above its minimum: the
  skull-stripped brain), both normalised by the real image's window.  The real image of the
  fixed contrast is the fixed volume; that of the moving contrast is the registered (warped)
  moving volume.  ``moving_in_fixed_contrast`` shows the moving anatomy as the network saw it
  (through the starting affine, not warped), so its similarity also reflects the misalignment.

Display helpers (pure MRML): :func:`show_side_by_side`, :func:`show_fade`,
:func:`show_checkerboard`.  Input nodes are never modified; nodes are added only on success.
Needs slicer-core; torch only runs in the background process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from . import mrml
from ..errors import InputError
from ..image import Image, apply_intensity_window, intensity_window
from ..image_io import read_image
from .background import DEVICES
from .registration_inputs import RegistrationParameters, check_parameters as check_registration_parameters
from .registration_logic import RegistrationJob, RegistrationRun, describe
from ..synthesis import (SYNTHESISING_METHODS, normalised_mutual_information, structural_similarity,
    synthesised_path)

ATTRIBUTE = mrml.ATTRIBUTE_PREFIX
#: Slice views used by the display helpers when the scene has no layout (tests, scripts).
SLICE_VIEWS = ("Red", "Yellow", "Green")


@dataclass
class SynthesisParameters:
    """What a synthesis preview needs; the module's parameter node holds the same fields."""

    fixed_volume: object = None
    moving_volume: object = None
    method: str = "fire"
    model: str = ""
    device: str = "auto"

    def registration_parameters(self) -> RegistrationParameters:
        """The Registration module's parameters of the same run: transform (needed by the
        backend) and warped volume (the real image of the moving contrast on the fixed grid)."""
        return RegistrationParameters(fixed_volume=self.fixed_volume, moving_volume=self.moving_volume,
                                      method=self.method, model=self.model, device=self.device, quality="fast",
                                      output_transform=True, harden_moving_volume=True)


def check_parameters(parameters: SynthesisParameters):
    """``InputError`` naming the problem and the fix; returns the checked
    :class:`~dmmreg.slicer.registration_inputs.PairInputs`.  Changes nothing."""
    p = parameters
    if p.fixed_volume is None or p.moving_volume is None:
        raise InputError("select both a fixed and a moving volume")
    if p.method not in SYNTHESISING_METHODS:
        raise InputError(f"the method {p.method!r} synthesises no images; choose one of "
                         f"{', '.join(SYNTHESISING_METHODS)}")
    if not p.model:
        raise InputError(f"select a trained {p.method} model (a .safetensors file with its .json card); "
                         "no model is bundled")
    if p.model.endswith((".json", ".safetensors")) and not os.path.exists(p.model):
        raise InputError(f"the model file {p.model} does not exist; select an existing model")
    if p.device not in DEVICES:
        raise InputError(f"device must be one of {', '.join(DEVICES)}, not '{p.device}'")
    return check_registration_parameters(p.registration_parameters())


# --------------------------------------------------------------------------------------------
# Background run


class SynthesisJob(RegistrationJob):
    """A :class:`RegistrationJob` that also writes the synthesised images (``--output-synthesised``)."""

    def _arguments(self) -> list[str]:
        return super()._arguments() + ["--output-synthesised", os.path.join(self.folder, "synthesised")]

    def read_outputs(self):
        """``(result, warped)`` as the parent reads them; the synthesised images (fixed grid, 3D
        LPS, single-slice for 2D inputs) go to ``self.synthesised``."""
        result, warped = super().read_outputs()
        self.synthesised = {}
        for key in SYNTHESISING_METHODS[self.parameters.method]:
            path = synthesised_path(os.path.join(self.folder, "synthesised"), key)
            if os.path.exists(path):
                image = read_image(path, f"synthesised {key}")
                if self.inputs.fixed_plane is not None:
                    image = mrml.image_on_plane(image, self.inputs.fixed_plane)
                self.synthesised[key] = image.with_array(image.array.astype(np.float32))
        if not self.synthesised:
            raise RuntimeError("the registration wrote no synthesised image")
        return result, warped


@dataclass
class SynthesisOutputs:
    """Nodes a finished synthesis preview added, and its similarity report."""

    volumes: dict = field(default_factory=dict)  # key -> scalar volume node
    report: dict = field(default_factory=dict)  # key -> {"nmi", "ssim", "reference", "node"}
    table: object = None
    nodes: list = field(default_factory=list)


class SynthesisRun(RegistrationRun):
    """A synthesis preview in progress (``poll``, ``cancel``, ``finished`` as a registration
    run); :meth:`finish` adds the synthesised volumes and the report table."""

    job_class = SynthesisJob

    def __init__(self, scene, parameters: SynthesisParameters, inputs, python: str | None = None):
        self.synthesis_parameters = parameters
        super().__init__(scene, parameters.registration_parameters(), inputs, python)

    def _add_nodes(self, result, warped: Image | None) -> SynthesisOutputs:
        inputs, p = self.job.inputs, self.synthesis_parameters
        fixed = inputs.fixed if inputs.fixed_plane is None else mrml.image_on_plane(inputs.fixed, inputs.fixed_plane)
        return add_synthesis_nodes(self.scene, p, self.job.synthesised, fixed, inputs.moving, warped)


def _real_images(fixed: Image, moving: Image, warped: Image) -> dict:
    """key -> (real image of that contrast on the fixed grid, its intensity window, role text)."""
    return {
        "moving_in_fixed_contrast": (fixed, intensity_window(fixed.array), "fixed"),
        "fixed_in_moving_contrast": (warped, intensity_window(moving.array), "moving"),
    }


def add_synthesis_nodes(scene, parameters: SynthesisParameters, synthesised: dict, fixed: Image, moving: Image,
                        warped: Image) -> SynthesisOutputs:
    """Volume nodes, the similarity report and its table (see the module docstring)."""
    fixed_name, moving_name = parameters.fixed_volume.GetName(), parameters.moving_volume.GetName()
    description = describe(parameters.registration_parameters(), fixed_name, moving_name)
    brain = fixed.array > fixed.array.min()
    names = {"moving_in_fixed_contrast": (f"{moving_name} in {fixed_name} contrast", moving_name, fixed_name),
             "fixed_in_moving_contrast": (f"{fixed_name} in {moving_name} contrast", fixed_name, moving_name)}
    reals = _real_images(fixed, moving, warped)
    outputs = SynthesisOutputs()
    for key, image in sorted(synthesised.items()):
        real, window, contrast_role = reals[key]
        lo, hi = window
        name, anatomy, contrast = names[key]
        node = mrml.add_volume_node(scene, image.with_array((lo + image.array * (hi - lo)).astype(np.float32)), name)
        mrml.set_attributes(node, description.attributes(f"synthesised {key}"))
        mrml.set_attributes(node, {
            ATTRIBUTE + "Synthesised": key,
            ATTRIBUTE + "Anatomy": anatomy + (" (through the starting affine, not warped)" if key.startswith("moving") else ""),
            ATTRIBUTE + "Contrast": contrast,
            ATTRIBUTE + "IntensityWindow": f"{lo:.6g} {hi:.6g}",
        })
        real_name = fixed_name if contrast_role == "fixed" else f"{moving_name} registered"
        outputs.volumes[key] = node
        synthesised, real_unit = np.clip(image.array, 0, 1), apply_intensity_window(real.array, window)
        outputs.report[key] = {
            "nmi": normalised_mutual_information(synthesised, real_unit, brain),
            "ssim": structural_similarity(synthesised, real_unit, brain),
            "reference": real_name, "node": name,
        }
        outputs.nodes.append(node)
    outputs.table = add_report_table(scene, outputs.report, f"{moving_name} to {fixed_name} ({parameters.method}) synthesis similarity")
    mrml.set_attributes(outputs.table, description.attributes("synthesis similarity"))
    outputs.nodes.append(outputs.table)
    return outputs


def add_report_table(scene, report: dict, name: str):
    """A table node, one row per synthesised image: Image, Compared with, NMI, SSIM."""
    rows = [report[key] for key in sorted(report)]
    return mrml.add_table_node(scene, name, {
        "Image": [row["node"] for row in rows],
        "Compared with": [row["reference"] + " (inside the brain)" for row in rows],
        "NMI": [float(row["nmi"]) for row in rows],
        "SSIM": [float(row["ssim"]) for row in rows],
    })


class SynthesisLogic:
    """Everything the Synthesis preview module does, on an MRML scene (no Qt needed)."""

    def __init__(self, scene, python: str | None = None):
        self.scene = scene
        self.python = python

    def start(self, parameters: SynthesisParameters) -> SynthesisRun:
        """Check the inputs and start the background run (``InputError`` if unusable)."""
        return SynthesisRun(self.scene, parameters, check_parameters(parameters), self.python)


# --------------------------------------------------------------------------------------------
# Display (pure MRML)


def slice_composite_nodes(scene, count: int = 1) -> list:
    """The scene's slice composite nodes (Red, Yellow, Green first); when it has fewer than
    ``count`` (no layout, as in scripts and tests) new ones for the missing views are added."""
    nodes = [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
             for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]
    order = {name: i for i, name in enumerate(SLICE_VIEWS)}
    nodes.sort(key=lambda n: order.get(n.GetLayoutName() or "", len(order)))
    used = {n.GetLayoutName() for n in nodes}
    for view in (v for v in SLICE_VIEWS + tuple(f"View{i}" for i in range(count)) if v not in used):
        if len(nodes) >= count:
            break
        node = scene.CreateNodeByClass("vtkMRMLSliceCompositeNode")
        node.SetLayoutName(view)
        scene.AddNode(node)
        nodes.append(node)
        used.add(view)
    return nodes


def show_side_by_side(real_node, synthesised_node, scene=None) -> list:
    """Real volume in the first slice view, synthesised in the second (backgrounds, no
    foreground); returns the two composite nodes."""
    first, second = slice_composite_nodes(scene or real_node.GetScene(), 2)[:2]
    for composite, volume in ((first, real_node), (second, synthesised_node)):
        composite.SetBackgroundVolumeID(volume.GetID())
        composite.SetForegroundVolumeID(None)
    return [first, second]


def show_fade(real_node, synthesised_node, opacity: float = 0.5, scene=None) -> list:
    """Every slice view: background = real, foreground = synthesised at ``opacity`` (0: real
    only, 1: synthesised only); returns the composite nodes."""
    if not 0.0 <= float(opacity) <= 1.0:
        raise InputError(f"the fade opacity must lie between 0 and 1, not {opacity}")
    composites = slice_composite_nodes(scene or real_node.GetScene(), 1)
    for composite in composites:
        composite.SetBackgroundVolumeID(real_node.GetID())
        composite.SetForegroundVolumeID(synthesised_node.GetID())
        composite.SetForegroundOpacity(float(opacity))
    return composites


def checkerboard(real: Image, synthesised: Image, tile_mm: float) -> np.ndarray:
    """Tiles of ``tile_mm`` along each index axis of the (common) grid, counted from the first
    voxel: tile ``(a, b, c) = floor(index * spacing / tile_mm)``; even ``a + b + c``: the real
    image, odd: the synthesised one."""
    if not tile_mm > 0:
        raise InputError(f"the checkerboard tile size must be positive, not {tile_mm} mm")
    if real.geometry != synthesised.geometry:
        raise InputError("the synthesised volume is not on the real volume's grid; use the synthesised volume "
                         "made for this fixed volume")
    g = real.geometry
    tiles = np.meshgrid(*[np.floor(np.arange(n) * s / tile_mm + 1e-9).astype(np.int64)
                          for n, s in zip(g.shape, reversed(g.spacing))], indexing="ij")
    odd = (sum(tiles) % 2).astype(bool)
    return np.where(odd, synthesised.array, real.array).astype(np.float32)


def show_checkerboard(real_node, synthesised_node, tile_mm: float = 10.0, scene=None):
    """A new volume node alternating ``tile_mm`` tiles of the real and the synthesised volume
    (on the real volume's grid, see :func:`checkerboard`), shown in every slice view."""
    real = mrml.image_from_volume_node(real_node, "real volume")
    synthesised = mrml.image_from_volume_node(synthesised_node, "synthesised volume")
    scene = scene or real_node.GetScene()
    node = mrml.add_volume_node(scene, real.with_array(checkerboard(real, synthesised, tile_mm)),
                                f"{synthesised_node.GetName()} checkerboard ({tile_mm:g} mm)")
    mrml.set_attributes(node, {ATTRIBUTE + "Role": "checkerboard", ATTRIBUTE + "Real": real_node.GetName(),
                               ATTRIBUTE + "Synthesised": synthesised_node.GetName(),
                               ATTRIBUTE + "TileMillimetres": f"{tile_mm:g}"})
    for composite in slice_composite_nodes(scene, 1):
        composite.SetBackgroundVolumeID(node.GetID())
        composite.SetForegroundVolumeID(None)
    return node
