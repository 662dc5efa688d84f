#!/usr/bin/env bash
# Runs the test suite, setting up .venv first when needed.  Extra arguments go to pytest
# (e.g. ./run_tests.sh -k spatial).  Any pytest failure is a failure, exit code 5 ("no tests
# collected") included.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/setup_env.sh"
cd "$ROOT"
QT_QPA_PLATFORM=offscreen python -m pytest -q Testing/Python "$@"
