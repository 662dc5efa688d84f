"""Registration methods, selectable by name.  Importing this module does not import torch, so
the Slicer modules can list methods without loading the backend."""

from __future__ import annotations

from importlib import import_module

from ..errors import InputError

# name -> (module implementing ``register``, one-line summary)
METHODS = {
    "optimise": (
        "optimise",
        "Instance optimisation, no trained weights: multi-resolution affine then a diffeomorphic "
        "B-spline velocity field maximising NMI (LNCC, MIND selectable).",
    ),
}


def available_methods() -> list[tuple[str, str]]:
    """``(name, summary)`` of every method, in the order to show them."""
    return [(name, summary) for name, (_, summary) in METHODS.items()]


def method_function(name: str):
    """The ``register(fixed, moving, ...)`` function of method ``name``."""
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    return import_module(f".{METHODS[name][0]}", __name__).register
