"""What the bridge does to a scene besides adding result nodes: the ``DeepMultiModalReg.*``
attributes that describe a result node, and temporary work nodes removed again.

No coordinates here.  Needs slicer-core only through the nodes and scenes passed in.
"""

from __future__ import annotations

import contextlib

#: Prefix of the node attributes that describe a result.
ATTRIBUTE_PREFIX = "DeepMultiModalReg."


def set_attributes(node, attributes: dict[str, str]) -> None:
    """Set every ``{name: value}`` of ``attributes`` as a node attribute."""
    for key, value in attributes.items():
        node.SetAttribute(key, value)


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
