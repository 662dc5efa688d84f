"""Writing files so that a failure never leaves a half-written one where an earlier result was."""

from __future__ import annotations

import os


def atomic_write(path: str, write) -> None:
    """Call ``write(tmp_path)`` then move the file into place, so a failure never leaves a
    half-written file where an earlier result was."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    # keep the full extension (.nii.gz) so the writer picks the right format
    tmp = os.path.join(directory, f".partial-{os.getpid()}-{base}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
