"""The Python packages the backend needs inside Slicer, installed on first use (never at module
load): PyTorch through the PyTorch extension's ``PyTorchUtils`` (at least
:data:`MINIMUM_TORCH`), then every other requirement of the backend that Slicer's Python lacks
(:data:`REQUIREMENTS`), each after the user agrees.  The background process runs Slicer's own
Python (``PythonSlicer``), so what is installed here is what it finds.

:func:`install_dependencies` holds the decisions, with the Slicer calls passed in (so a test can
drive it); :func:`ensure_dependencies` runs it with Slicer's dialogs, ``pip_install`` and
``PyTorchUtils``.  The modules' Apply buttons and self-tests call :func:`ensure_dependencies`
first.  Nothing here imports torch: versions are read from the installed packages' metadata.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging

logger = logging.getLogger("DeepMultiModalReg")

#: The oldest PyTorch the backend is tested with (``torch.func``, ``grid_sample`` with bfloat16).
MINIMUM_TORCH = "2.1"
#: ``(import name, pip requirement)`` of the backend's other requirements (pyproject.toml's).
REQUIREMENTS = (
    ("safetensors", "safetensors>=0.4"),
    ("SimpleITK", "SimpleITK>=2.3"),
    ("scipy", "scipy>=1.10"),
    ("matplotlib", "matplotlib>=3.7"),
)


def missing_requirements(find_spec=importlib.util.find_spec) -> list[str]:
    """The pip requirements of :data:`REQUIREMENTS` whose package cannot be imported."""
    return [requirement for name, requirement in REQUIREMENTS if find_spec(name) is None]


def installed_torch_version() -> str | None:
    """The installed torch's version (from its metadata, without importing it), or ``None``."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def version_at_least(version: str, minimum: str) -> bool:
    """Whether ``version`` ("2.3.1+cpu") is at least ``minimum`` ("2.1"), by release numbers."""
    def release(text):
        numbers = []
        for part in text.split("+")[0].split("."):
            digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
            if not digits:
                break
            numbers.append(int(digits))
        return tuple(numbers)

    return release(version) >= release(minimum)


def install_dependencies(torch_logic, confirm, pip_install, torch_version=installed_torch_version,
                         find_spec=importlib.util.find_spec) -> bool:
    """Make the backend's requirements importable; True when they all are.

    ``torch_logic``: ``PyTorchUtils.PyTorchUtilsLogic()`` (``None``: the PyTorch extension is not
    installed, so nothing can be done); ``confirm(message) -> bool`` asks the user (a self-test
    passes one that agrees); ``pip_install(requirement)`` installs into Slicer's Python."""
    if torch_logic is None:
        logger.error("DeepMultiModalReg needs the PyTorch extension: install it from the Extensions Manager")
        return False
    version = torch_version()
    requirement = f"torch>={MINIMUM_TORCH}"
    if version is None or not version_at_least(version, MINIMUM_TORCH):
        found = f"PyTorch {version} is installed" if version else "PyTorch is not installed"
        if not confirm(f"DeepMultiModalReg needs {requirement}; {found}. Install it now through the PyTorch "
                       "extension (a download of several hundred MB)?"):
            logger.error("%s is needed; %s", requirement, found)
            return False
        logger.info("installing %s through PyTorchUtils (%s)", requirement, found)
        if torch_logic.installTorch(askConfirmation=False, torchVersionRequirement=f">={MINIMUM_TORCH}") is None:
            logger.error("PyTorch was not installed (%s needed)", requirement)
            return False
    missing = missing_requirements(find_spec)
    if missing:
        if not confirm("DeepMultiModalReg needs these Python packages, which Slicer's Python lacks: "
                       f"{', '.join(missing)}. Install them now?"):
            logger.error("not installed: %s; the registration cannot run without them", ", ".join(missing))
            return False
        for requirement in missing:
            logger.info("installing %s", requirement)
            pip_install(requirement)
        importlib.invalidate_caches()
        still = missing_requirements(find_spec)
        if still:
            logger.error("could not install %s", ", ".join(still))
            return False
    return True


def ensure_dependencies(ask: bool = True) -> bool:
    """:func:`install_dependencies` inside Slicer: PyTorchUtils, Slicer's confirmation dialog
    (``ask=False``: agreed, for the self-tests) and ``slicer.util.pip_install``; a failure is shown
    to the user.  Only inside the Slicer application."""
    import slicer

    try:
        import PyTorchUtils
        torch_logic = PyTorchUtils.PyTorchUtilsLogic()
    except ImportError:
        torch_logic = None
        slicer.util.errorDisplay("This module needs the PyTorch extension; install it from the Extensions Manager.")

    def confirm(message):
        return True if not ask else slicer.util.confirmOkCancelDisplay(message, windowTitle="DeepMultiModalReg")

    with slicer.util.tryWithErrorDisplay("The Python packages DeepMultiModalReg needs could not be installed.",
                                         waitCursor=True):
        return install_dependencies(torch_logic, confirm, slicer.util.pip_install)
    return False
