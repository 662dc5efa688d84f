"""Logic of the Registration Quality module: how good is a registration, for *any* transform
node in the scene (ours or another tool's: linear, grid, B-spline or a composite of them).

Each measure evaluates the node's resampling transform (FromParent, fixed to moving), checks
its inputs before adding any node (:class:`~dmmreg.errors.InputError`), never modifies them and
returns new nodes; positions are RAS in Slicer and LPS in the backend, lengths in mm (see
:mod:`.inputs` for which space each input is read in).  Needs slicer-core and numpy; torch is
imported only when a measure is computed.  Exported here: what the module's panel uses.
"""

from .display import VISUALIZATION_MODES, show_deformation_grid
from .inverse_consistency import inverse_consistency
from .jacobian import JACOBIAN_COLOR_NODE_NAME, jacobian_volume
from .label_overlap import label_overlap
from .landmarks import landmark_error
from .report import write_report

__all__ = [
    "JACOBIAN_COLOR_NODE_NAME", "VISUALIZATION_MODES", "inverse_consistency", "jacobian_volume", "label_overlap",
    "landmark_error", "show_deformation_grid", "write_report",
]
