# Sourced by run_tests.sh and run_demo.sh: creates the virtual environment .venv in the project
# (if missing), installs the project into it (if not already there) and activates it.
# Idempotent: when pyproject.toml is unchanged since the last install and everything imports from
# this checkout, it installs nothing.
#
# Install order matters: torch first, pinned (pip finds the local CPU wheel through its config;
# an unpinned torch would pull several GB of CUDA packages), then the project with its extras.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
TORCH_VERSION="2.13.0"

if [ ! -x "$VENV/bin/python" ]; then
    if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
        echo "error: Python >= 3.10 is needed (python3 is $(python3 --version 2>&1))" >&2
        exit 1
    fi
    echo "creating the virtual environment $VENV" >&2
    python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"

STAMP="$VENV/.dmmreg-installed"
WANT="torch==$TORCH_VERSION pyproject.toml $(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ] || ! python - "$ROOT" >/dev/null 2>&1 <<'PY'
import os, sys
import dmmreg, torch, SimpleITK, scipy, slicer, pytest, PySide6  # noqa: F401  (runtime, slicer and test extras)
sys.exit(not os.path.realpath(dmmreg.__file__).startswith(os.path.join(sys.argv[1], "DeepMultiModalReg", "dmmreg")))
PY
then
    echo "installing torch==$TORCH_VERSION and the project (editable, with the slicer and test extras) into $VENV" >&2
    python -m pip install --quiet "torch==$TORCH_VERSION"
    python -m pip install --quiet -e "$ROOT[slicer,test]"
    echo "$WANT" > "$STAMP"
fi
