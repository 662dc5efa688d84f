"""The ``DeepMultiModalReg.*`` attributes every quality result node carries (role, transform,
direction, reference, mask, statistics as JSON, date), and the JSON form of statistics.

The recorded direction is always the resampling one (FromParent): fixed (reference) to moving.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping

import numpy as np

from .. import mrml


def result_attributes(role: str, transform_node, reference_node, mask_node, stats: dict) -> dict[str, str]:
    """``DeepMultiModalReg.*`` attributes of a result node: what it is (``role``), of which
    transform, on which reference and mask (names; "" for none), its statistics and the date."""
    values = {
        "Role": role,
        "Transform": transform_node.GetName(),
        "Direction": "resampling (FromParent): fixed (reference) to moving",
        "Reference": reference_node.GetName() if reference_node is not None else "",
        "Mask": mask_node.GetName() if mask_node is not None else "",
        "Statistics": json.dumps(jsonable(stats), sort_keys=True),
        "Date": now_iso(),
    }
    return {mrml.ATTRIBUTE_PREFIX + key: value for key, value in values.items()}


def now_iso() -> str:
    """Local date and time, ISO 8601 to the second with the UTC offset."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def jsonable(value):
    """``value`` with numpy types as Python ones and non-finite numbers as None (valid JSON)."""
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(item) for item in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
