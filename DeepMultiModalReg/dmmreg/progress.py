"""How long backend work reports its progress.

A :data:`ProgressCallback` is called as ``progress(stage, fraction, message)``: ``stage`` names
the current step (e.g. ``"affine"``), ``fraction`` is the share of the whole work done (0..1)
and ``message`` says more.  The caller may raise :class:`dmmreg.errors.Cancelled` from it to
stop the work.  The command line prints each report (``--progress json``: one JSON object a
line, which :mod:`dmmreg.slicer.background` reads back)."""

from __future__ import annotations

from typing import Callable

ProgressCallback = Callable[[str, float, str], None]
