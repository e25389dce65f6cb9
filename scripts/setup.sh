#!/usr/bin/env bash
# Create .venv and install sbi-diffusion with everything the tests, tutorials and
# benchmarks need. Usage: bash scripts/setup.sh [python-executable]
# Set TORCH_SPEC to choose the torch build (default: the CPU-friendly pin below).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${1:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install --quiet --upgrade pip
$PIP install --quiet "$TORCH_SPEC"
$PIP install --quiet -e ".[dev,bench]"
# sbibm 1.1.0 pins sbi<0.22 but its tasks and metrics work with sbi 0.27:
# install it without its dependencies (the ones it needs are in the bench extra).
$PIP install --quiet --no-deps "sbibm==1.1.0"
echo "sbi-diffusion installed in .venv"
