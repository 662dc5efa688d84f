"""Trained models on disk: weights as ``NAME.safetensors`` beside a JSON model card ``NAME.json``.

The card records what the model is and how it was made::

    {"format": "dmmreg-model/1", "name": ..., "method": "midir", "dimension": 3,
     "config": {...the method's ModelConfig...}, "training": {...data, steps, seconds...},
     "validation": {...measured metrics...}, "created": ISO date}

Weights are read with ``safetensors`` only (never a pickle).  A model is complete when its card
exists: :func:`save_model` writes the weights first, then the card, each through a temporary
file, so an interrupted save leaves no model that looks complete.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from .errors import InputError

CARD_FORMAT = "dmmreg-model/1"
BUNDLED_MODELS = Path(__file__).resolve().parents[2] / "models"


def save_model(model, path: str | os.PathLike, **card) -> Path:
    """Write ``model`` (a :class:`~dmmreg.methods.learned.LearnedMethod`) as ``path`` (``.safetensors``;
    the card goes beside it as ``.json``) with ``card`` entries (training, validation, ...) added
    to the card.  Returns the card's path."""
    from dataclasses import asdict

    from safetensors.torch import save_file

    weights = Path(path).with_suffix(".safetensors")
    card_path = weights.with_suffix(".json")
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    contents = {
        "format": CARD_FORMAT,
        "name": weights.stem,
        "method": model.name,
        "dimension": model.dim,
        "config": asdict(model.config),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **card,
    }
    temporary = weights.with_name(weights.name + ".tmp")
    save_file(state, str(temporary), metadata={"method": model.name})
    os.replace(temporary, weights)
    temporary = card_path.with_name(card_path.name + ".tmp")
    temporary.write_text(json.dumps(contents, indent=2, default=_json_default) + "\n")
    os.replace(temporary, card_path)
    return card_path


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_card(path: str | os.PathLike) -> dict:
    """The model card of ``path`` (the ``.json`` or its ``.safetensors``)."""
    card_path = Path(path).with_suffix(".json")
    if not card_path.exists():
        raise InputError(f"no model card {card_path}: a model is a .safetensors file with its .json card beside it")
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"model card {card_path} is not valid JSON ({error}); re-save or re-train the model") from error
    if card.get("format") != CARD_FORMAT:
        raise InputError(f"{card_path} is not a DeepMultiModalReg model card (format {card.get('format')!r})")
    return card


def load_model(path: str | os.PathLike, method: str | None = None, device="cpu"):
    """The model saved at ``path``; ``method``: the name it must be a model of.  Returns
    ``(model, card)``."""
    from safetensors.torch import load_file

    from .methods import method_class

    card = read_card(path)
    weights = Path(path).with_suffix(".safetensors")
    if method is not None and card["method"] != method:
        raise InputError(f"{weights} is a {card['method']!r} model, not a {method!r} one; choose a {method} model "
                         f"or --method {card['method']}")
    if not weights.exists():
        raise InputError(f"model weights {weights} are missing beside its card; copy them there or re-train")
    cls = method_class(card["method"])
    model = cls(cls.config_class.from_dict(card["config"]))
    state = load_file(str(weights), device=str(device))
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        raise InputError(f"{weights} does not match the {card['method']} network (missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}); it was made by another version")
    model.load_state_dict(state)
    return model.to(device), card


def list_models(method: str | None = None, dim: int | None = None) -> list[dict]:
    """Cards of the bundled models (``models/``), each with its ``path`` added, optionally only
    those of ``method`` and ``dim``; unreadable cards are skipped."""
    cards = []
    for card_path in sorted(BUNDLED_MODELS.glob("*.json")):
        try:
            card = read_card(card_path)
        except InputError:
            continue
        if (method is None or card["method"] == method) and (dim is None or card["dimension"] == dim):
            cards.append({**card, "path": str(card_path.with_suffix(".safetensors"))})
    return cards


def find_model(method: str, dim: int, model: str | None = None) -> Path:
    """The model file to use: ``model`` (a path, or the name of a bundled model), else the bundled
    model of ``method`` for ``dim``-D images."""
    if model is not None:
        candidates = [Path(model), BUNDLED_MODELS / f"{model}.json"]
        for candidate in candidates:
            if candidate.with_suffix(".json").exists():
                return candidate.with_suffix(".json")
        raise InputError(f"model {model!r} not found (neither a file nor a bundled model in {BUNDLED_MODELS})")
    cards = list_models(method, dim)
    if cards:
        return Path(cards[0]["path"]).with_suffix(".json")
    raise InputError(f"no trained {dim}D model of method {method!r} is bundled in {BUNDLED_MODELS}; "
                     f"pass --model FILE.safetensors, or use --method optimise (needs no weights)")
