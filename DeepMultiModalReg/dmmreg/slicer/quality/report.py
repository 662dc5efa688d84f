"""The quality report written to disk: tables as CSV, statistics as JSON and a picture (PNG),
beside the saved scene or in a chosen folder, never overwriting an earlier report.

Files are written atomically; non-finite numbers become JSON null.  The Jacobian picture shows
middle slices in the volume's voxel grid (index axes, not RAS or LPS).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping

from .. import mrml
from ...errors import InputError
from ...files import atomic_write
from .attributes import jsonable, now_iso
from .jacobian import JACOBIAN_WINDOW_LEVEL, jacobian_colours


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "table"


def _report_folder(scene, folder) -> str:
    if folder:
        return os.fspath(folder)
    url = scene.GetURL() if scene is not None else ""
    if not url:
        raise InputError("the scene has not been saved, so there is no folder beside it; choose a report folder")
    return os.path.dirname(os.path.abspath(url))


def _report_paths(folder: str, base: str, table_names: list[str], picture: bool) -> dict[str, str]:
    """Paths of one report ``base``, ``base-2``, ... : the first counter with none of its files there."""
    counter = 1
    while True:
        stem = base if counter == 1 else f"{base}-{counter}"
        paths = {"json": os.path.join(folder, f"{stem}.json")}
        paths.update({name: os.path.join(folder, f"{stem}-{_slug(name)}.csv") for name in table_names})
        if picture:
            paths["picture"] = os.path.join(folder, f"{stem}.png")
        if not any(os.path.exists(path) for path in paths.values()):
            return paths
        counter += 1


def _write_csv(table_node, path: str) -> None:
    import csv

    columns = mrml.table_columns(table_node)

    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(columns)
            writer.writerows(zip(*columns.values()))

    atomic_write(path, write)


def _write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as stream:
            stream.write(text)

    atomic_write(path, write)


def save_jacobian_picture(jacobian_volume_node, path: str) -> None:
    """PNG (matplotlib, no render window) of the axial, coronal and sagittal middle slices (in
    the volume's voxel grid) of a Jacobian volume, in the colours of :func:`jacobian_colours`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from ...picture import mid_slices

    volume = mrml.voxel_array(jacobian_volume_node)
    if volume.shape[0] == 1:
        volume = volume[0]
    window, level = JACOBIAN_WINDOW_LEVEL
    colour_map = ListedColormap(jacobian_colours()[:, :3])
    views = mid_slices(volume)
    fig, axes = plt.subplots(1, len(views), figsize=(4.5 * len(views), 4.4), squeeze=False, layout="constrained")
    for ax, view, title in zip(axes[0], views, ["axial", "coronal", "sagittal"] if len(views) == 3 else ["slice"]):
        shown = ax.imshow(view, cmap=colour_map, vmin=level - window / 2, vmax=level + window / 2, origin="lower")
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(shown, ax=list(axes[0]), fraction=0.025, label="det J (black: folding)")
    fig.suptitle(jacobian_volume_node.GetName())
    atomic_write(os.fspath(path), lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)


def write_report(scene, folder, tables, stats: Mapping, picture_png=None, jacobian_volume_node=None,
                 name: str = "quality-report") -> dict[str, str]:
    """Write a quality report into ``folder`` (None: the folder of the saved scene): each table
    node as ``<name>-<table>.csv``, the ``stats`` (any JSON-like mapping; non-finite numbers
    become null) as ``<name>.json``, and a picture ``<name>.png``: ``picture_png`` (a PNG made
    elsewhere, e.g. by :mod:`dmmreg.picture`) copied, else one of ``jacobian_volume_node`` drawn
    by :func:`save_jacobian_picture`, else none.

    ``tables``: a mapping ``{name: table node}`` or a sequence of table nodes (named after the
    nodes).  Every file is written atomically (temporary file, then ``os.replace``); an existing
    report is never overwritten: the next free ``<name>-2``, ``<name>-3``, ... is used.
    Returns ``{"json": path, <table name>: path, "picture": path}``."""
    if picture_png is not None and not os.path.isfile(picture_png):
        raise InputError(f"the picture {picture_png} does not exist; make it first or leave it out")
    named = dict(tables) if isinstance(tables, Mapping) else {node.GetName(): node for node in (tables or [])}
    folder = _report_folder(scene, folder)
    os.makedirs(folder, exist_ok=True)
    paths = _report_paths(folder, name, list(named), picture_png is not None or jacobian_volume_node is not None)
    for table_name, table_node in named.items():
        _write_csv(table_node, paths[table_name])
    if picture_png is not None:
        atomic_write(paths["picture"], lambda tmp: shutil.copyfile(picture_png, tmp))
    elif jacobian_volume_node is not None:
        save_jacobian_picture(jacobian_volume_node, paths["picture"])
    document = {
        "created": now_iso(),
        "scene": scene.GetURL() if scene is not None else "",
        "statistics": jsonable(stats),
        "tables": {table_name: os.path.basename(paths[table_name]) for table_name in named},
        "picture": os.path.basename(paths["picture"]) if "picture" in paths else None,
    }
    # the JSON last: a report whose JSON exists is complete
    _write_text(paths["json"], json.dumps(document, indent=2, sort_keys=False) + "\n")
    return paths
