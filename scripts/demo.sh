#!/usr/bin/env bash
# Install ai4life-kit and run the demo: simulate noisy data, train, denoise, package, report.
# Usage: scripts/demo.sh [demo options]   (e.g. --out demo_output --overwrite)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh bioimageio
"${VENV:-.venv}/bin/ai4life-kit" demo "$@"
