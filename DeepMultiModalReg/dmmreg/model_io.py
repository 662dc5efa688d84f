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
from .files import atomic_write

CARD_FORMAT = "dmmreg-model/1"


def bundled_models_folder(package_folder: Path | None = None) -> Path:
    """The bundled models beside the ``dmmreg`` package in ``package_folder`` (default: this one):
    ``Resources/Models`` of the module folder holding the package, where the Slicer extension
    installs ``models/`` (and copies it in its build tree), else the source tree's ``models/``
    at the repository root."""
    package = Path(package_folder or Path(__file__).resolve().parent)
    installed = package.parent / "Resources" / "Models"
    return installed if installed.is_dir() else package.parents[1] / "models"


BUNDLED_MODELS = bundled_models_folder()

#: The user models folder chosen in Slicer's settings (see :func:`configure_user_models_folder`).
_configured_user_folder: Path | None = None


def configure_user_models_folder(folder: str | os.PathLike | None) -> None:
    """Use ``folder`` as the user models folder (``None`` or empty: the default); the
    ``DMMREG_MODELS`` environment variable still wins.  The Slicer modules call this with the
    folder saved in their settings (:mod:`dmmreg.slicer.settings`)."""
    global _configured_user_folder
    _configured_user_folder = Path(folder).expanduser() if folder else None


def default_user_models_folder(platform: str | None = None, environ=None) -> Path:
    """The per-OS default: ``%LOCALAPPDATA%\\DeepMultiModalReg\\models`` on Windows,
    ``~/Library/Application Support/DeepMultiModalReg/models`` on macOS, else
    ``$XDG_DATA_HOME/DeepMultiModalReg/models`` (default ``~/.local/share/...``)."""
    import sys

    platform = platform or sys.platform
    environ = os.environ if environ is None else environ
    if platform.startswith("win"):
        base = Path(environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "DeepMultiModalReg" / "models"


def user_models_folder() -> Path:
    """Where trained and fine-tuned models go: ``$DMMREG_MODELS``, else the folder chosen in
    Slicer's settings (:func:`configure_user_models_folder`), else
    :func:`default_user_models_folder`."""
    if os.environ.get("DMMREG_MODELS"):
        return Path(os.environ["DMMREG_MODELS"]).expanduser()
    if _configured_user_folder is not None:
        return _configured_user_folder
    return default_user_models_folder()


def model_folders() -> list[tuple[str, Path]]:
    """``[("bundled", models/), ("user", user folder)]``: where models are looked up, in order."""
    return [("bundled", BUNDLED_MODELS), ("user", user_models_folder())]


def check_new_model_path(path: Path, overwrite: bool = False) -> Path:
    """``path`` (``.safetensors``) if a new model may be written there: never inside the
    bundled ``models/`` folder (those are made by ``scripts/train_bundled_models.py``), never
    over an existing model unless ``overwrite``, never with a bundled model's name."""
    path = Path(path).with_suffix(".safetensors")
    if path.resolve().parent == BUNDLED_MODELS.resolve():
        raise InputError(f"{path} is in the bundled models folder {BUNDLED_MODELS}; write trained models into "
                         f"the user models folder ({user_models_folder()}) or give another --output")
    if (BUNDLED_MODELS / f"{path.stem}.json").exists():
        raise InputError(f"{path.stem!r} is the name of a bundled model; choose another --name")
    if path.with_suffix(".json").exists() and not overwrite:
        raise InputError(f"a model {path.with_suffix('.json')} exists already; choose another --name "
                         "(or pass --overwrite to replace it)")
    return path


def save_model(model, path: str | os.PathLike, **card) -> Path:
    """Write ``model`` (a :class:`~dmmreg.methods.learned.LearnedMethod`) as ``path`` (``.safetensors``;
    the card goes beside it as ``.json``) with ``card`` entries (training, validation, ...) added
    to the card.  Returns the card's path."""
    from dataclasses import asdict

    from safetensors.torch import save_file

    weights = Path(path).with_suffix(".safetensors")
    card_path = weights.with_suffix(".json")
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
             if not k.startswith(model.training_only)}
    contents = {
        "format": CARD_FORMAT,
        "name": weights.stem,
        "method": model.name,
        "dimension": model.dim,
        "config": asdict(model.config),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **card,
    }
    text = json.dumps(contents, indent=2, default=_json_default) + "\n"
    atomic_write(str(weights), lambda tmp: save_file(state, tmp, metadata={"method": model.name}))
    atomic_write(str(card_path), lambda tmp: Path(tmp).write_text(text))
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
    except ValueError as error:  # not JSON, or not text
        raise InputError(f"model card {card_path} is not valid JSON ({error}); re-save or re-train the model") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        found = card.get("format") if isinstance(card, dict) else None
        raise InputError(f"{card_path} is not a DeepMultiModalReg model card (format {found!r}); give the card "
                         "made with the model's .safetensors weights")
    return card


#: File endings of pickled PyTorch weights, which are never loaded (unpickling can run code).
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")
_RESAVE = ("save the weights with safetensors.torch.save_file beside a model card, or train a model with "
           "`dmmreg train`")


def check_safetensors(path: Path) -> None:
    """``InputError`` unless ``path`` is a complete safetensors file: an 8-byte little-endian
    header length, a JSON header, and the tensors' data ending within the file.  Reads the
    header only; nothing is unpickled."""
    size = path.stat().st_size
    with open(path, "rb") as stream:
        start = stream.read(8)
        if start[:2] == b"PK" or start[:1] == b"\x80":
            raise InputError(f"model weights {path} are a pickle (PyTorch .pt), not safetensors; pickles are never "
                             f"loaded, since they can run code: {_RESAVE}")
        header_length = int.from_bytes(start, "little") if len(start) == 8 else size
        if header_length > size - 8:
            raise InputError(f"model weights {path} are not a safetensors file (or the file is truncated: "
                             f"{size} bytes); copy the file again or {_RESAVE}")
        try:
            header = json.loads(stream.read(header_length))
            end = max((int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise InputError(f"model weights {path} are not a safetensors file (its header is not valid); "
                             f"{_RESAVE}") from None
    if 8 + header_length + end > size:
        raise InputError(f"model weights {path}: file is truncated: {size} of {8 + header_length + end} bytes; "
                         "copy the file again")


def load_model(path: str | os.PathLike, method: str | None = None, device="cpu"):
    """The model saved at ``path``; ``method``: the name it must be a model of.  Returns
    ``(model, card)``."""
    from safetensors.torch import load_file

    from .methods import LEARNED_METHODS, method_class

    card = read_card(path)
    weights = Path(path).with_suffix(".safetensors")
    if card.get("method") not in LEARNED_METHODS or card.get("dimension") not in (2, 3) \
            or not isinstance(card.get("config"), dict):
        raise InputError(f"model card {weights.with_suffix('.json')} lacks a learned method, a dimension (2 or 3) "
                         f"or a config; re-save or re-train the model")
    if method is not None and card["method"] != method:
        raise InputError(f"{weights} is a {card['method']!r} model, not a {method!r} one; choose a {method} model "
                         f"or --method {card['method']}")
    if not weights.exists():
        raise InputError(f"model weights {weights} are missing beside its card; copy them there or re-train")
    check_safetensors(weights)
    cls = method_class(card["method"])
    try:
        model = cls(cls.config_class.from_dict(card["config"]))
    except (TypeError, ValueError, KeyError) as error:
        raise InputError(f"the config in {weights.with_suffix('.json')} does not fit the {card['method']} network "
                         f"({error}); it was made by another version: re-train the model") from None
    try:
        state = load_file(str(weights), device=str(device))
    except Exception as error:  # safetensors raises its own error type for any malformed file
        raise InputError(f"cannot read model weights {weights} ({error}); copy the file again or {_RESAVE}") from None
    expected = {k for k in model.state_dict() if not k.startswith(model.training_only)}
    missing, unexpected = expected - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        raise InputError(f"{weights} does not match the {card['method']} network (missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}); it was made by another version")
    try:
        model.load_state_dict(state, strict=False)  # training-only parts (e.g. discriminators) keep their initial weights
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1].strip()
        raise InputError(f"{weights} does not match the network its card describes ({first}); re-train the model") from None
    return model.to(device), card


def list_models(method: str | None = None, dim: int | None = None) -> list[dict]:
    """Cards of the bundled models, then the user's, each with ``path`` (its weights) and
    ``origin`` ("bundled" or "user") added, optionally only those of ``method`` and ``dim``;
    unreadable cards are skipped."""
    cards = []
    for origin, folder in model_folders():
        for card_path in sorted(folder.glob("*.json")):
            try:
                card = read_card(card_path)
            except InputError:
                continue
            if (method is None or card["method"] == method) and (dim is None or card["dimension"] == dim):
                cards.append({**card, "path": str(card_path.with_suffix(".safetensors")), "origin": origin})
    return cards


def find_model(method: str, dim: int, model: str | None = None) -> Path:
    """The model card to use: ``model`` (a path, or the name of a bundled or user model), else
    the bundled model of ``method`` for ``dim``-D images."""
    if model is not None:
        given = Path(model)
        if given.suffix.lower() in PICKLE_SUFFIXES:
            raise InputError(f"model {model} is a {given.suffix} file (pickled PyTorch weights), which is never "
                             f"loaded, since unpickling can run code: {_RESAVE}")
        if given.is_file():
            if given.suffix.lower() not in (".safetensors", ".json"):
                raise InputError(f"model {model} is not a model file: give NAME.safetensors (with its card NAME.json "
                                 "beside it) or the name of a model from `dmmreg models`")
            return given.with_suffix(".json")
        candidates = [given] + [folder / f"{model}.json" for _, folder in model_folders()]
        for candidate in candidates:
            if candidate.with_suffix(".json").exists():
                return candidate.with_suffix(".json")
        raise InputError(f"model {model!r} not found (neither a file nor a model in {BUNDLED_MODELS} or "
                         f"{user_models_folder()}); see `dmmreg models`")
    cards = [card for card in list_models(method, dim) if card["origin"] == "bundled"]
    if cards:
        return Path(cards[0]["path"]).with_suffix(".json")
    raise InputError(f"no trained {dim}D model of method {method!r} is bundled in {BUNDLED_MODELS}; "
                     f"pass --model FILE.safetensors, or use --method optimise (needs no weights)")
