#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install ai4life-kit into it.
# Usage: scripts/install.sh [EXTRAS]   e.g. scripts/install.sh bioimageio,test
# torch is installed first with an exact pin: an unpinned torch (or a package whose range
# admits a newer one) would pull several GB of CUDA wheels on a CPU-only machine.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
EXTRAS="${1:-bioimageio}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "torch==${TORCH_VERSION}"
"$VENV/bin/python" -m pip install --quiet -e ".[${EXTRAS}]"
echo "ai4life-kit installed in $VENV (torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'))"
