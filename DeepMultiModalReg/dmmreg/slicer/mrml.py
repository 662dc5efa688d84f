"""Bridge between MRML nodes (3D Slicer, RAS) and the backend's images and results (LPS).

Conventions:

* Slicer works in RAS, the backend and ITK files in LPS: ``p_LPS = F p_RAS`` with
  ``F = diag(-1, -1, 1)``; a matrix converts as ``F M F`` and a displacement field as
  ``u_RAS(p) = F u_LPS(F p)``.
* A backend result is the *resampling* transform ``T(p) = A(p + u(p))``: it maps fixed-space
  points to moving-space points.  In Slicer that is a transform's *FromParent* direction, so a
  moving volume placed under the result transform lands on the fixed volume.
* The geometry of a volume node is its IJK-to-RAS matrix followed by its parent transforms
  (linear only), i.e. where Slicer displays it.

Needs slicer-core (``slicer``, ``vtk``) and numpy; never torch.  Input nodes are never modified.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..geometry import Geometry
from ..image import Image

#: LPS <-> RAS flip, as a homogeneous matrix (its own inverse).
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: the same flip for point and vector coordinates ``(..., 3)``: ``p_LPS = p_RAS * FLIP`` (its own inverse)
FLIP = np.diag(LPS_FROM_RAS)[:3]

#: Prefix of the node attributes that describe a result.
ATTRIBUTE_PREFIX = "DeepMultiModalReg."


# --------------------------------------------------------------------------------------------
# Matrices


def vtk_matrix(matrix: np.ndarray):
    """``vtkMatrix4x4`` holding a homogeneous 4x4 numpy matrix."""
    import vtk

    out = vtk.vtkMatrix4x4()
    for row in range(4):
        for col in range(4):
            out.SetElement(row, col, float(matrix[row, col]))
    return out


def numpy_matrix(matrix) -> np.ndarray:
    """4x4 numpy array from a ``vtkMatrix4x4``."""
    return np.array([[matrix.GetElement(row, col) for col in range(4)] for row in range(4)])


def lps_matrix_from_ras(matrix_ras: np.ndarray) -> np.ndarray:
    """A point mapping ``RAS -> RAS`` as the same mapping ``LPS -> LPS`` (and back: ``F M F``)."""
    return LPS_FROM_RAS @ matrix_ras @ LPS_FROM_RAS


ras_matrix_from_lps = lps_matrix_from_ras


def _embed_3d(matrix: np.ndarray) -> np.ndarray:
    """A 2D homogeneous (3x3) matrix as a 3D one (4x4) acting on x and y only."""
    if matrix.shape == (4, 4):
        return matrix
    out = np.eye(4)
    out[:2, :2] = matrix[:2, :2]
    out[:2, 3] = matrix[:2, 2]
    return out


# --------------------------------------------------------------------------------------------
# Volumes


def ijk_to_world_ras(volume_node) -> np.ndarray:
    """4x4 matrix from voxel index (i, j, k) to world RAS: IJK-to-RAS, then the parent transforms.

    Raises ``InputError`` when a parent transform is non-linear (harden it first)."""
    import vtk

    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    matrix = numpy_matrix(ijk_to_ras)
    parent = volume_node.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise InputError(
                f"'{volume_node.GetName()}' is under a non-linear transform "
                f"('{parent.GetName()}'); harden the transform first"
            )
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        matrix = numpy_matrix(to_world) @ matrix
    return matrix


def geometry_from_ijk_to_ras(ijk_to_ras: np.ndarray, dimensions) -> Geometry:
    """Backend geometry (LPS) of a voxel grid of ``dimensions`` (i, j, k) with that IJK-to-RAS."""
    ijk_to_lps = LPS_FROM_RAS @ ijk_to_ras
    axes = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    return Geometry(tuple(int(d) for d in dimensions), tuple(spacing), tuple(ijk_to_lps[:3, 3]), axes / spacing)


def geometry_from_volume_node(volume_node) -> Geometry:
    """Backend geometry (LPS) of a volume node, as displayed (parent transforms included)."""
    image_data = volume_node.GetImageData()
    if image_data is None:
        raise InputError(f"'{volume_node.GetName()}' has no voxels")
    return geometry_from_ijk_to_ras(ijk_to_world_ras(volume_node), image_data.GetDimensions())


def _voxel_array(volume_node) -> np.ndarray:
    """Copy of the voxels, (k, j, i) order."""
    from vtk.util import numpy_support

    image_data = volume_node.GetImageData()
    scalars = image_data.GetPointData().GetScalars() if image_data is not None else None
    if scalars is None or image_data.GetNumberOfPoints() == 0:
        raise InputError(f"'{volume_node.GetName()}' has no voxels (an empty volume)")
    if scalars.GetNumberOfComponents() != 1:
        raise InputError(
            f"'{volume_node.GetName()}' has {scalars.GetNumberOfComponents()} components per voxel "
            "(a colour or vector volume); convert it to a scalar volume first"
        )
    shape = tuple(reversed(image_data.GetDimensions()))
    return numpy_support.vtk_to_numpy(scalars).reshape(shape).copy()


def image_from_volume_node(volume_node, what: str = "volume") -> Image:
    """A scalar volume node as a backend :class:`Image` (LPS geometry as displayed).

    Raises ``InputError`` for a labelmap, a vector/colour volume or a volume without voxels."""
    if volume_node is None:
        raise InputError(f"no {what} selected")
    if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(
            f"the {what} '{volume_node.GetName()}' is a labelmap; select an intensity volume "
            "(labelmaps can be used as masks)"
        )
    if not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"the {what} '{volume_node.GetName()}' is a {volume_node.GetClassName()}, not a scalar volume")
    return Image(_voxel_array(volume_node), geometry_from_volume_node(volume_node))


def mask_from_node(mask_node, reference_volume_node, what: str = "mask") -> Image:
    """A labelmap volume or segmentation node as a binary (uint8 0/1) :class:`Image`.

    A labelmap keeps its own grid; a segmentation's visible segments are rasterised on the
    grid of ``reference_volume_node``."""
    if mask_node.IsA("vtkMRMLSegmentationNode"):
        return _mask_from_segmentation(mask_node, reference_volume_node, what)
    if not mask_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"the {what} '{mask_node.GetName()}' must be a labelmap or a segmentation")
    array = _voxel_array(mask_node)
    if not np.any(array):
        raise InputError(f"the {what} '{mask_node.GetName()}' is empty (no voxel is set)")
    return Image((array > 0).astype(np.uint8), geometry_from_volume_node(mask_node))


def _mask_from_segmentation(segmentation_node, reference_volume_node, what: str) -> Image:
    import slicer

    scene = segmentation_node.GetScene()
    with scene_additions_removed(scene):
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__dmmreg_mask_export")
        exported = slicer.vtkSlicerSegmentationsModuleLogic.ExportVisibleSegmentsToLabelmapNode(
            segmentation_node, labelmap, reference_volume_node
        )
        if not exported or labelmap.GetImageData() is None:
            raise InputError(f"the {what} '{segmentation_node.GetName()}' has no visible segment to use")
        return mask_from_node(labelmap, reference_volume_node, what)


@contextlib.contextmanager
def scene_additions_removed(scene):
    """Remove every node added to ``scene`` inside the ``with`` block (temporary work nodes and
    the display, storage and colour nodes Slicer adds for them)."""
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    try:
        yield
    finally:
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in added:
            if node.GetID() not in before:
                scene.RemoveNode(node)


def add_volume_node(scene, image: Image, name: str, labelmap: bool = False):
    """New scalar (or labelmap) volume node in ``scene`` holding ``image`` at its geometry.

    A 2D image becomes a single-slice volume in the plane its geometry describes."""
    from vtk.util import numpy_support
    import vtk

    geometry = image.geometry
    ijk_to_lps = _embed_3d(geometry.index_to_physical)
    array = image.array if image.dim == 3 else image.array[None]
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(*reversed(array.shape))
    vtk_array = numpy_support.numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True)
    image_data.GetPointData().SetScalars(vtk_array)
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(vtk_matrix(LPS_FROM_RAS @ ijk_to_lps))
    node.SetAndObserveImageData(image_data)
    node.CreateDefaultDisplayNodes()
    return node


# --------------------------------------------------------------------------------------------
# Transforms


@dataclass
class ResultDescription:
    """What a result node is; stored as node attributes ``DeepMultiModalReg.*``."""

    method: str
    model: str = ""
    settings: dict | None = None
    fixed: str = ""
    moving: str = ""
    date: str = ""

    def attributes(self, role: str) -> dict[str, str]:
        date = self.date or datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        values = {
            "Role": role,
            "Method": self.method,
            "Model": self.model,
            "Settings": json.dumps(self.settings or {}, sort_keys=True),
            "Fixed": self.fixed,
            "Moving": self.moving,
            "Date": date,
        }
        return {ATTRIBUTE_PREFIX + key: value for key, value in values.items()}


def set_attributes(node, attributes: dict[str, str]) -> None:
    for key, value in attributes.items():
        node.SetAttribute(key, value)


def linear_transform_from_parent(matrix_lps: np.ndarray):
    """``vtkTransform`` of a homogeneous LPS matrix (2D or 3D), as a RAS point mapping."""
    import vtk

    transform = vtk.vtkTransform()
    transform.SetMatrix(vtk_matrix(ras_matrix_from_lps(_embed_3d(np.asarray(matrix_lps, dtype=np.float64)))))
    return transform


def grid_transform_from_field(displacement_lps: np.ndarray, geometry: Geometry):
    """``vtkOrientedGridTransform`` of an LPS displacement field sampled on ``geometry``.

    ``displacement_lps``: array ``(*geometry.shape, dim)`` in mm, components (x, y, z) LPS.
    The result maps a RAS point ``p`` to ``p + u_RAS(p)`` (linear interpolation); used as a
    FromParent transform it is the ITK resampling transform of the same field."""
    from vtk.util import numpy_support
    import slicer
    import vtk

    displacement = np.asarray(displacement_lps, dtype=np.float64)
    index_to_lps = _embed_3d(geometry.index_to_physical)
    if geometry.dim == 2:
        displacement = np.concatenate([displacement, np.zeros_like(displacement[..., :1])], axis=-1)[None]
    index_to_ras = LPS_FROM_RAS @ index_to_lps
    spacing = np.linalg.norm(index_to_ras[:3, :3], axis=0)
    direction = np.eye(4)
    direction[:3, :3] = index_to_ras[:3, :3] / spacing
    displacement_ras = displacement * FLIP

    grid_image = vtk.vtkImageData()
    grid_image.SetDimensions(*reversed(displacement.shape[:3]))
    grid_image.SetSpacing(*spacing)
    grid_image.SetOrigin(*index_to_ras[:3, 3])
    vectors = numpy_support.numpy_to_vtk(np.ascontiguousarray(displacement_ras).reshape(-1, 3), deep=True)
    grid_image.GetPointData().SetScalars(vectors)

    grid = slicer.vtkOrientedGridTransform()
    grid.SetDisplacementGridData(grid_image)
    grid.SetGridDirectionMatrix(vtk_matrix(direction))
    grid.SetInterpolationModeToLinear()
    return grid


def add_linear_transform_node(scene, matrix_lps: np.ndarray, name: str, attributes: dict[str, str] | None = None):
    """Linear transform node whose FromParent is the LPS resampling matrix ``matrix_lps``."""
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformFromParent(linear_transform_from_parent(matrix_lps).GetMatrix())
    set_attributes(node, attributes or {})
    return node


def add_grid_transform_node(scene, displacement_lps: np.ndarray, geometry: Geometry, name: str,
                            attributes: dict[str, str] | None = None):
    """Grid transform node (``vtkOrientedGridTransform``, FromParent) of an LPS displacement field."""
    node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", name)
    node.SetAndObserveTransformFromParent(grid_transform_from_field(displacement_lps, geometry))
    set_attributes(node, attributes or {})
    return node


def add_table_node(scene, name: str, columns: Mapping[str, list]):
    """New ``vtkMRMLTableNode`` with ``columns`` (name: values; ints, floats or strings by the
    type of the first value) of equal length."""
    import vtk

    table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = table_node.GetTable()
    lengths = {len(values) for values in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns of different lengths: {sorted(lengths)}")
    for column_name, values in columns.items():
        first = values[0] if values else 0.0
        if isinstance(first, str):
            array = vtk.vtkStringArray()
        elif isinstance(first, (int, np.integer)):
            array = vtk.vtkIntArray()
        else:
            array = vtk.vtkDoubleArray()
        array.SetName(column_name)
        for value in values:
            array.InsertNextValue(value if isinstance(first, str) else value.item() if hasattr(value, "item") else value)
        table.AddColumn(array)
    table_node.Modified()
    return table_node


def add_plot_chart(scene, table_node, x_column: str, y_column: str, name: str, plot_type: int,
                   series_name: str | None = None, x_title: str | None = None, y_title: str | None = None):
    """A ``vtkMRMLPlotChartNode`` titled ``name`` with one series (``vtkMRMLPlotSeriesNode`` of
    ``plot_type``) of ``y_column`` against ``x_column`` of ``table_node``; axis titles default to
    the column names.  Returns ``(chart, series)``."""
    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", series_name or name)
    series.SetAndObserveTableNodeID(table_node.GetID())
    series.SetXColumnName(x_column)
    series.SetYColumnName(y_column)
    series.SetPlotType(plot_type)
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle(name)
    chart.SetXAxisTitle(x_title or x_column)
    chart.SetYAxisTitle(y_title or y_column)
    return chart, series


def table_columns(table_node) -> dict[str, list]:
    """The columns of a table node as ``{name: values}`` (numbers as Python numbers)."""
    from vtk.util import numpy_support

    table = table_node.GetTable()
    columns = {}
    for index in range(table.GetNumberOfColumns()):
        array = table.GetColumn(index)
        if array.IsA("vtkStringArray"):
            columns[array.GetName()] = [array.GetValue(row) for row in range(array.GetNumberOfValues())]
        else:
            columns[array.GetName()] = numpy_support.vtk_to_numpy(array).tolist()
    return columns


def transform_points_ras(transform, points_ras: np.ndarray) -> np.ndarray:
    """Apply a VTK transform to points ``(n, 3)`` (RAS, mm)."""
    from vtk.util import numpy_support
    import vtk

    source = vtk.vtkPoints()
    source.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(points_ras, dtype=np.float64), deep=True))
    target = vtk.vtkPoints()
    transform.TransformPoints(source, target)
    return numpy_support.vtk_to_numpy(target.GetData()).astype(np.float64).reshape(-1, 3)


def transform_points_lps(transform_ras, points_lps: np.ndarray) -> np.ndarray:
    """Apply a VTK transform (acting on RAS points) to LPS points ``(n, 3)``; LPS out (mm)."""
    return transform_points_ras(transform_ras, points_lps * FLIP) * FLIP


def sampled_displacement_lps(transform_ras, geometry: Geometry) -> np.ndarray:
    """``T(p) - p`` of a VTK (RAS) transform on the voxels of an LPS ``geometry``: an LPS field
    ``(*geometry.shape, 3)``, for ``geometry`` 3D."""
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in reversed(geometry.size)],
                                 indexing="ij")[::-1], axis=-1)
    points_lps = geometry.physical_points(index).reshape(-1, 3)
    return (transform_points_lps(transform_ras, points_lps) - points_lps).reshape(*geometry.shape, 3)


@dataclass
class TransformNodes:
    """Transform nodes of one result: ``top`` is the outermost (parent-most) node, ``leaf`` the
    node to place a volume under (the same node when there is only one)."""

    top: object
    leaf: object

    @property
    def nodes(self) -> list:
        return [self.top] if self.top is self.leaf else [self.top, self.leaf]


def _resampling_parts(result, inverse: bool):
    """``[(kind, value)]`` applied in this order to a parent-space point: the resampling
    transform (``inverse``: its inverse) as a sequence of ("field", array) and ("affine", matrix)."""
    if inverse:
        if result.displacement is not None and result.inverse_displacement is None:
            raise InputError("the result has no inverse field; register with the inverse transform requested")
        parts = [("affine", np.linalg.inv(result.affine))]
        if result.inverse_displacement is not None:
            parts.append(("field", result.inverse_displacement))
        return parts
    parts = [("field", result.displacement)] if result.displacement is not None else []
    return parts + [("affine", result.affine)]


def _vtk_transform_of(kind: str, value, field_geometry: Geometry):
    return grid_transform_from_field(value, field_geometry) if kind == "field" else linear_transform_from_parent(value)


def _composed_grid_geometry(result, inverse: bool) -> Geometry:
    """Grid of a composed field: the field grid (fixed space), or for the inverse the moving
    volume at the field's spacing with the same margin."""
    if not inverse:
        return result.field_geometry
    field = result.field_geometry
    margin = max(float(np.max((field.extent - result.fixed_geometry.extent) / 2)), max(field.spacing))
    return result.moving_geometry.with_spacing(min(field.spacing)).with_margin(margin)


def add_result_transform_nodes(scene, result, name: str, description: ResultDescription,
                               composed: bool = False, inverse: bool = False) -> TransformNodes:
    """Transform nodes of a backend result (``T(p) = A(p + u(p))``, LPS, fixed to moving).

    * nested (default): a grid transform node (``u``) on top, a linear transform node (``A``)
      under it; a moving volume placed under the leaf is displayed on the fixed volume.
    * ``composed``: one grid transform node holding the whole transform sampled on the field grid.
    * ``inverse``: the inverse transform (moving to fixed in the resampling direction, so the
      fixed volume placed under it lands on the moving one), nested as a linear node (``A^-1``)
      on top and a grid node (the inverse field) under it.
    An affine-only result is always one linear transform node."""
    import vtk

    direction = "inverse" if inverse else "forward"
    parts = _resampling_parts(result, inverse)
    if composed and len(parts) > 1:
        chain = vtk.vtkGeneralTransform()
        chain.PostMultiply()  # each Concatenate is applied after the ones before
        for kind, value in parts:
            chain.Concatenate(_vtk_transform_of(kind, value, result.field_geometry))
        geometry = _composed_grid_geometry(result, inverse)
        field = sampled_displacement_lps(chain, geometry)
        node = add_grid_transform_node(scene, field, geometry, f"{name} {'inverse ' if inverse else ''}transform",
                                       description.attributes(f"{direction} composed"))
        return TransformNodes(node, node)
    nodes = []
    # FromParent of a nested chain applies the parent-most node first
    for kind, value in parts:
        role = f"{direction} {'deformable' if kind == 'field' else 'affine'}"
        label = f"{name} {'inverse ' if inverse else ''}{'deformable' if kind == 'field' else 'affine'}"
        attributes = description.attributes(role)
        if kind == "field":
            node = add_grid_transform_node(scene, value, result.field_geometry, label, attributes)
        else:
            node = add_linear_transform_node(scene, value, label, attributes)
        if nodes:
            node.SetAndObserveTransformNodeID(nodes[-1].GetID())
        nodes.append(node)
    return TransformNodes(nodes[0], nodes[-1])


# --------------------------------------------------------------------------------------------
# Files through Slicer's storage nodes


def save_transform_to_world(transform_node, path: str) -> None:
    """Write the transform from world to ``transform_node`` (its whole parent chain, FromParent,
    i.e. the resampling transform) as an ITK file (``.h5``, ``.tfm``, displacement ``.nii.gz``)
    through Slicer's ``vtkMRMLTransformStorageNode``."""
    import slicer

    import vtk

    scene = transform_node.GetScene()
    from_world = vtk.vtkGeneralTransform()
    transform_node.GetTransformFromWorld(from_world)
    with scene_additions_removed(scene):
        flattened = scene.AddNewNodeByClass("vtkMRMLTransformNode", "__dmmreg_save")
        flattened.SetAndObserveTransformFromParent(from_world)
        storage = slicer.vtkMRMLTransformStorageNode()
        storage.SetFileName(path)
        if not storage.WriteData(flattened):
            raise OSError(f"Slicer could not write the transform to {path}")


def read_transform_node(scene, path: str, name: str):
    """Transform node read from an ITK transform file through ``vtkMRMLTransformStorageNode``.

    Slicer's reader interpolates displacement grids cubically; they are set back to linear,
    as ITK (and the backend) apply them, so the node resamples as SimpleITK does."""
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLTransformNode", name)
    storage = slicer.vtkMRMLTransformStorageNode()
    storage.SetFileName(path)
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise InputError(f"Slicer could not read the transform file {path}")
    for transform in (node.GetTransformFromParent(), node.GetTransformToParent()):
        _interpolate_grids_linearly(transform)
    return node


def _interpolate_grids_linearly(transform) -> None:
    if transform is None:
        return
    if transform.IsA("vtkGeneralTransform"):
        for i in range(transform.GetNumberOfConcatenatedTransforms()):
            _interpolate_grids_linearly(transform.GetConcatenatedTransform(i))
    elif transform.IsA("vtkGridTransform"):
        transform.SetInterpolationModeToLinear()


def resampling_matrix_lps(transform_node) -> np.ndarray:
    """LPS matrix of a linear transform node's FromWorld direction: the resampling (fixed to
    moving) matrix of a transform the moving volume is placed under, e.g. an initial transform."""
    import vtk

    if not transform_node.IsTransformToWorldLinear():
        raise InputError(f"the transform '{transform_node.GetName()}' must be linear (harden it or choose another)")
    from_world = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformFromWorld(from_world)
    return lps_matrix_from_ras(numpy_matrix(from_world))


# --------------------------------------------------------------------------------------------
# Single-slice (2D) volumes


@dataclass(frozen=True)
class Plane:
    """Frame of a single-slice volume: ``lps_from_plane`` maps plane coordinates (mm along the
    volume's i and j axes from its first voxel, and along k) to LPS; ``thickness``: slice (k)
    spacing in mm."""

    lps_from_plane: np.ndarray
    thickness: float

    def same_as(self, other: Plane) -> bool:
        return np.allclose(self.lps_from_plane, other.lps_from_plane, atol=1e-4)


def is_single_slice(geometry: Geometry) -> bool:
    return geometry.dim == 3 and geometry.size[2] == 1


def split_plane(image: Image) -> tuple[Image, Plane]:
    """A single-slice 3D image as a 2D image in its own plane coordinates, and that plane."""
    geometry = image.geometry
    lps_from_plane = np.eye(4)
    lps_from_plane[:3, :3] = geometry.direction
    lps_from_plane[:3, 3] = geometry.origin
    in_plane = Geometry(geometry.size[:2], geometry.spacing[:2], (0.0, 0.0), np.eye(2))
    return Image(image.array[0], in_plane), Plane(lps_from_plane, geometry.spacing[2])


def geometry_on_plane(geometry: Geometry, plane: Plane) -> Geometry:
    """3D (one slice thick) geometry of a 2D plane-coordinate ``geometry``."""
    index_to_plane = _embed_3d(geometry.index_to_physical)
    index_to_plane[2, 2] = plane.thickness
    return geometry_from_ijk_to_ras(LPS_FROM_RAS @ plane.lps_from_plane @ index_to_plane, (*geometry.size, 1))


def image_on_plane(image: Image, plane: Plane) -> Image:
    """A 2D plane-coordinate image as a single-slice 3D image in LPS."""
    return Image(image.array[None], geometry_on_plane(image.geometry, plane))


def result_on_planes(result, fixed_plane: Plane, moving_plane: Plane, fixed_geometry: Geometry, moving_geometry: Geometry):
    """A 2D result (fixed plane coordinates to moving plane coordinates) as a 3D LPS result.

    ``T3 = P_m T2 P_f^-1``: the field lives in the fixed plane (constant along its normal), the
    affine becomes ``P_m A2 P_f^-1``."""
    from ..result import RegistrationResult

    affine = moving_plane.lps_from_plane @ _embed_3d(result.affine) @ np.linalg.inv(fixed_plane.lps_from_plane)
    fields = {}
    field_geometry = None
    if result.field_geometry is not None:
        field_geometry = geometry_on_plane(result.field_geometry, fixed_plane)
        rotation = fixed_plane.lps_from_plane[:3, :2]
        for key in ("displacement", "inverse_displacement"):
            value = getattr(result, key)
            fields[key] = None if value is None else (np.asarray(value) @ rotation.T)[None]
    return RegistrationResult(
        fixed_geometry, moving_geometry, affine, field_geometry, fields.get("displacement"),
        fields.get("inverse_displacement"), method=result.method, settings=result.settings, seconds=result.seconds,
    )
