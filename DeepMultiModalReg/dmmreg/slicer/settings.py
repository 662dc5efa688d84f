"""The extension's settings saved with Slicer's application settings (``qt.QSettings``), not with
the scene: the user models folder.

Every function takes the settings object (anything with ``value(key)`` and
``setValue(key, value)``: Slicer's ``qt.QSettings()``, PySide's ``QSettings``); ``None`` means
Slicer's own, so the functions with ``None`` run only inside Slicer.  The ``DMMREG_MODELS``
environment variable still wins over the saved folder (:func:`dmmreg.model_io.user_models_folder`).
"""

from __future__ import annotations

import os

from .. import model_io

USER_MODELS_FOLDER_KEY = "DeepMultiModalReg/UserModelsFolder"


def _settings(settings):
    if settings is None:
        import qt

        return qt.QSettings()
    return settings


def apply_saved_settings(settings=None) -> None:
    """Make the backend use the saved user models folder (call when a module's panel is set up)."""
    model_io.configure_user_models_folder(saved_user_models_folder(settings))


def saved_user_models_folder(settings=None) -> str:
    """The folder saved in the settings ("" when none is: the per-OS default applies)."""
    return str(_settings(settings).value(USER_MODELS_FOLDER_KEY) or "")


def save_user_models_folder(folder, settings=None) -> None:
    """Save ``folder`` ("" or ``None``: back to the default) and use it from now on."""
    _settings(settings).setValue(USER_MODELS_FOLDER_KEY, str(folder or ""))
    model_io.configure_user_models_folder(folder or None)


def user_models_folder_source() -> str:
    """Where the user models folder in use comes from: "environment" (``DMMREG_MODELS``),
    "settings" or "default"; shown beside the folder in the panel."""
    if os.environ.get("DMMREG_MODELS"):
        return "environment"
    return "settings" if model_io.user_models_folder() != model_io.default_user_models_folder() else "default"


def models_folder_field() -> tuple[str, bool]:
    """What the modules' models-folder field shows: the folder in use and whether it can be
    changed there (not while ``DMMREG_MODELS`` sets it); a change is saved with
    :func:`save_user_models_folder`."""
    return str(model_io.user_models_folder()), user_models_folder_source() != "environment"
