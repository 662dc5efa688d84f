"""A small known case for the Synthesis Preview module's self-test (run inside Slicer) and for the
tests that run here on slicer-core: a "real" and a "synthesised" volume on one oblique grid with
disjoint intensities (real >= 0, synthesised < 0), so every display can be checked voxel by voxel,
and checks of what :func:`~dmmreg.slicer.synthesis_logic.show_checkerboard`, ``show_fade`` and
``show_side_by_side`` did.  Each check returns a list of problems (empty: as expected).

Needs slicer-core and numpy only (no torch, no Qt).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import mrml
from ...geometry import Geometry
from ...image import Image

TILE_MM = 4.0
OPACITY = 0.3


@dataclass
class DisplayCase:
    real_node: object
    synthesised_node: object


def display_test_scene(scene, size=(12, 10, 8), spacing=(1.0, 1.5, 2.0)) -> DisplayCase:
    """Add a real volume (a ramp, >= 0) and a synthesised one (< 0) on the same oblique grid."""
    angle = np.radians(15.0)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    geometry = Geometry(tuple(size), tuple(spacing), (-5.0, 3.0, 2.0), direction)
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in geometry.shape), indexing="ij")
    real = i + 2 * j + 3 * k
    real_node = mrml.add_volume_node(scene, Image(real, geometry), scene.GenerateUniqueName("SynthesisReal"))
    synthesised_node = mrml.add_volume_node(scene, Image(-1.0 - real[::-1].copy(), geometry),
                                            scene.GenerateUniqueName("SynthesisSynthesised"))
    return DisplayCase(real_node, synthesised_node)


def _array(node) -> np.ndarray:
    return mrml.voxel_array(node).astype(np.float64)


def checkerboard_problems(board_node, case: DisplayCase, tile_mm: float) -> list[str]:
    """Whether ``board_node`` alternates real (even tiles) and synthesised (odd tiles) voxels of
    ``tile_mm`` tiles on the real volume's grid, and is shown in the slice views."""
    problems = []
    if mrml.geometry_from_volume_node(board_node) != mrml.geometry_from_volume_node(case.real_node):
        problems.append("the checkerboard is not on the real volume's grid")
        return problems
    board, real, synthesised = _array(board_node), _array(case.real_node), _array(case.synthesised_node)
    spacing = case.real_node.GetSpacing()[::-1]  # k, j, i like the array
    parity = sum(np.floor(np.arange(n)[tuple(slice(None) if a == axis else None for a in range(3))] * s / tile_mm + 1e-9)
                 for axis, (n, s) in enumerate(zip(board.shape, spacing))) % 2
    even = np.broadcast_to(parity == 0, board.shape)
    if not 0.3 < even.mean() < 0.7:
        problems.append(f"{even.mean():.0%} of the voxels are real tiles; tiles of {tile_mm} mm should give about half")
    if not np.array_equal(board[even], real[even]):
        problems.append("even tiles are not the real volume")
    if not np.array_equal(board[~even], synthesised[~even]):
        problems.append("odd tiles are not the synthesised volume")
    scene = board_node.GetScene()
    composites = [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
                  for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]
    if not composites or any(c.GetBackgroundVolumeID() != board_node.GetID() for c in composites):
        problems.append("the checkerboard is not the background of every slice view")
    return problems


def fade_problems(composites, case: DisplayCase, opacity: float) -> list[str]:
    """Every slice view: real in the background, synthesised in the foreground at ``opacity``."""
    if not composites:
        return ["no slice view was set"]
    problems = []
    for composite in composites:
        view = composite.GetLayoutName()
        if composite.GetBackgroundVolumeID() != case.real_node.GetID():
            problems.append(f"{view}: the background is not the real volume")
        if composite.GetForegroundVolumeID() != case.synthesised_node.GetID():
            problems.append(f"{view}: the foreground is not the synthesised volume")
        if abs(composite.GetForegroundOpacity() - opacity) > 1e-9:
            problems.append(f"{view}: foreground opacity {composite.GetForegroundOpacity()}, not {opacity}")
    return problems


def side_by_side_problems(composites, case: DisplayCase) -> list[str]:
    """Two different slice views: the real volume in the first, the synthesised one in the second."""
    if len(composites) != 2 or composites[0].GetLayoutName() == composites[1].GetLayoutName():
        return ["side by side needs two different slice views"]
    problems = []
    for composite, node in zip(composites, (case.real_node, case.synthesised_node)):
        if composite.GetBackgroundVolumeID() != node.GetID() or composite.GetForegroundVolumeID() is not None:
            problems.append(f"{composite.GetLayoutName()} does not show only '{node.GetName()}'")
    return problems
