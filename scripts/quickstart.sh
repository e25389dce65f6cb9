#!/usr/bin/env bash
# Set up .venv, then run a real inference on two moons and the quick benchmark.
# The benchmark reuses the example's trained DiffusionNPE through the model cache.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=outputs/quickstart
start=$(date +%s)
.venv/bin/python examples/quickstart.py --output "$OUT" --model-cache "$OUT/models"
.venv/bin/sbi-diffusion-bench --preset quick --output "$OUT/results.jsonl" \
    --model-cache "$OUT/models"
echo "Outputs in $OUT/: pairplot.png, results.md (table), results.png (figure)"
echo "quickstart took $(( $(date +%s) - start )) s after set-up"
