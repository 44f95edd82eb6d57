#!/usr/bin/env bash
# Install ai4life-kit with its test dependencies and run the whole test suite.
# Container tests run where podman or docker is available (scripts/setup-podman.sh installs
# podman on Debian as root) and skip otherwise. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh dev
VENV="${VENV:-.venv}"
"$VENV/bin/ruff" check src tests benchmarks
"$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
