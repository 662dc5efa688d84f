"""Registration methods, selectable by name.  Importing this module does not import torch, so
the Slicer modules can list methods without loading the backend.

Each method module defines ``register(fixed, moving, ...)``; a learned method's module also
defines ``MODEL``, its :class:`~dmmreg.methods.learned.LearnedMethod` subclass."""

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
    "fire": (
        "fire",
        "FIRE (000): bi-directional cross-modality synthesis with factorised affine + non-rigid "
        "transformation networks, inverse-consistent.",
    ),
    "variational": (
        "variational",
        "Theljani & Chen (001): light U-net trained with a robust variational loss (parallel level "
        "sets, first- and second-order smoothness, Jacobian penalty).",
    ),
    "disentangled": (
        "disentangled",
        "Wu & Zhou (002): registration on content codes of a disentangled (MUNIT-style) "
        "representation, trained in both directions.",
    ),
    "midir": (
        "midir",
        "MIDIR (003): U-net predicting B-spline velocities, diffeomorphic by scaling and squaring, "
        "trained on NMI.",
    ),
    "hierarchical": (
        "hierarchical",
        "Dai et al. (004): coarse registration, modal translation, then fine registration on the "
        "translated image; coarse composed with fine.",
    ),
}

LEARNED_METHODS = ("fire", "variational", "disentangled", "midir", "hierarchical")

#: Transform models every method can be asked for, simplest first.  ``rigid``: rotation and
#: translation (determinant 1, no scaling or shear); ``affine``: no displacement field;
#: ``deformable``: affine then a displacement field.
TRANSFORMS = ("rigid", "affine", "deformable")


def check_transform(transform: str) -> None:
    """``InputError`` unless ``transform`` is one of :data:`TRANSFORMS`."""
    if transform not in TRANSFORMS:
        raise InputError(f"unknown transform {transform!r}; choose one of {', '.join(TRANSFORMS)}")


def available_methods() -> list[tuple[str, str]]:
    """``(name, summary)`` of every method, in the order to show them."""
    return [(name, summary) for name, (_, summary) in METHODS.items()]


def _module(name: str):
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    return import_module(f".{METHODS[name][0]}", __name__)


def method_function(name: str):
    """The ``register(fixed, moving, ...)`` function of method ``name``."""
    return _module(name).register


def method_class(name: str):
    """The network class (:class:`~dmmreg.methods.learned.LearnedMethod`) of learned method ``name``."""
    if name not in LEARNED_METHODS:
        raise InputError(f"method {name!r} has no trained model; learned methods: {', '.join(LEARNED_METHODS)}")
    return _module(name).MODEL


#: The learned methods' default refinement (their accurate mode): as many ``optimise`` iterations
#: from the network's answer as the ``balanced`` optimisation does at its finest level
#: (test_learned_methods keeps the two equal); ``--refine 0`` gives the network alone.
DEFAULT_REFINE_ITERATIONS = 20


def check_model_options(method: str, model: str | None, refine: int | None, transform: str = "deformable") -> None:
    """``InputError`` unless ``model`` and ``refine`` fit ``method`` and ``transform``: both are for
    the learned methods only, and ``refine`` counts iterations (0 or more; None: the default) of
    a deformable refinement, so it is for the deformable transform only."""
    if (model or refine) and method not in LEARNED_METHODS:
        raise InputError(f"--model and --refine apply to the learned methods ({', '.join(LEARNED_METHODS)}), "
                         f"not to {method!r}: choose one of them, or leave the model and refinement out")
    if refine is not None and refine < 0:
        raise InputError(f"the refinement (--refine) must be 0 or more iterations, not {refine}")
    if refine and transform != "deformable":
        raise InputError(f"the refinement (--refine) adds a displacement field, which a {transform} transform has "
                         "not; leave the refinement out (or 0), or choose --transform deformable")


def available_models(method: str) -> list[tuple[str, str]]:
    """``(path, summary)`` of the trained models of ``method`` (empty for ``optimise``)."""
    from ..model_io import list_models

    return [(card["path"], f"{card['name']}: {card['dimension']}D {method} model, "
             f"{card.get('training', {}).get('data', 'training data not recorded')}") for card in list_models(method)]


def method_availability() -> list[tuple[str, str, str | None]]:
    """``(name, summary, why_not)`` of every method: ``why_not`` is ``None`` when the method can
    run now (``optimise``, or a learned method with a bundled or user model), else what it lacks
    and how to get it."""
    from ..model_io import BUNDLED_MODELS, list_models, user_models_folder

    rows = []
    for name, summary in available_methods():
        why_not = None
        if name in LEARNED_METHODS and not list_models(name):
            why_not = (f"No trained {name} model: none is bundled ({BUNDLED_MODELS}) and none is in your models "
                       f"folder ({user_models_folder()}). Train one with `dmmreg train --method {name}`, fine-tune "
                       "one in the Model Fine-tuning module, or copy NAME.safetensors with its NAME.json card into "
                       "your models folder.")
        rows.append((name, summary, why_not))
    return rows
