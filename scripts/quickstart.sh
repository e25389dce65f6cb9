#!/usr/bin/env bash
# Set up .venv, then run a real inference on two moons and the quick benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python examples/quickstart.py --output outputs/quickstart
.venv/bin/sbi-diffusion-bench --preset quick --output outputs/quickstart/results.jsonl
echo "Outputs in outputs/quickstart/: pairplot.png, results.md (table), results.png (figure)"
