"""Bridge between MRML nodes (3D Slicer, RAS) and the backend's images and results (LPS).

Conventions:

* Slicer works in RAS, the backend and ITK files in LPS: ``p_LPS = F p_RAS`` with
  ``F = diag(-1, -1, 1)``; a matrix converts as ``F M F`` and a displacement field as
  ``u_RAS(p) = F u_LPS(F p)``.  Lengths in mm.
* A backend result is the *resampling* transform ``T(p) = A(p + u(p))``: it maps fixed-space
  points to moving-space points.  In Slicer that is a transform's *FromParent* direction, so a
  moving volume placed under the result transform lands on the fixed volume.
* The geometry of a volume node is its IJK-to-RAS matrix followed by its parent transforms
  (linear only), i.e. where Slicer displays it.

One module per concern: :mod:`.coordinates` (RAS/LPS matrices and points), :mod:`.scene`
(result attributes, temporary nodes), :mod:`.volumes`, :mod:`.transforms` (transform nodes,
sampling, ITK files), :mod:`.result_nodes` (a backend result as nodes), :mod:`.tables` (tables
and plots), :mod:`.planes` (single-slice volumes).  What the logic modules use is exported here.

Needs slicer-core (``slicer``, ``vtk``) and numpy; never torch.  Input nodes are never modified.
"""

from .coordinates import (FLIP, LPS_FROM_RAS, homogeneous_3d, lps_matrix_from_ras, numpy_matrix,
                          ras_matrix_from_lps, transform_points_lps, transform_points_ras, vtk_matrix)
from .planes import Plane, geometry_on_plane, image_on_plane, is_single_slice, result_on_planes, split_plane
from .result_nodes import (ResultDescription, TransformNodes, add_result_transform_nodes, result_transform,
                           write_result_transform)
from .scene import ATTRIBUTE_PREFIX, scene_additions_removed, set_attributes
from .tables import add_plot_chart, add_table_node, table_columns
from .transforms import (add_grid_transform_node, add_linear_transform_node, grid_transform_from_field,
                         linear_transform_from_parent, read_transform_node, resampling_matrix_lps,
                         sampled_displacement_lps, save_transform_to_world)
from .volumes import (add_volume_node, geometry_from_ijk_to_ras, geometry_from_volume_node, ijk_to_world_ras,
                      image_from_volume_node, mask_from_node, set_volume_image, voxel_array)

__all__ = [
    "ATTRIBUTE_PREFIX", "FLIP", "LPS_FROM_RAS", "Plane", "ResultDescription", "TransformNodes",
    "add_grid_transform_node", "add_linear_transform_node", "add_plot_chart", "add_result_transform_nodes",
    "add_table_node", "add_volume_node", "geometry_from_ijk_to_ras", "geometry_from_volume_node",
    "geometry_on_plane", "grid_transform_from_field", "homogeneous_3d", "ijk_to_world_ras",
    "image_from_volume_node", "image_on_plane", "is_single_slice", "linear_transform_from_parent",
    "lps_matrix_from_ras", "mask_from_node", "numpy_matrix", "ras_matrix_from_lps", "read_transform_node",
    "resampling_matrix_lps", "result_on_planes", "result_transform", "sampled_displacement_lps",
    "save_transform_to_world", "scene_additions_removed", "set_attributes", "set_volume_image", "split_plane",
    "table_columns", "transform_points_lps", "transform_points_ras", "vtk_matrix", "voxel_array", "write_result_transform",
]
