#!/usr/bin/env bash
# Consistency-model posteriors (ConsistencyNPE) on the sbibm protocol: consistency
# training (`consistency`) and distillation of the default DiffusionNPE
# (`consistency:teacher=diffusion`), each sampled with 1, 2 and 4 steps from one
# training. Rows go to benchmarks/results/consistency.jsonl; the DiffusionNPE and
# NPE rows they are compared with are the grid rows of benchmarks/results/sbibm.jsonl
# (same trained models through the shared model cache, same observations).
#
# Resumable: rows already written are skipped and trained models are kept in
# outputs/models, so the distillation reuses the grid's DiffusionNPE as its teacher.
#
#   bash benchmarks/consistency/run.sh [task ...]   # default: the four tasks below
set -u
cd "$(dirname "$0")/../.."
OUT=benchmarks/results/consistency.jsonl
TASKS="${*:-two_moons gaussian_mixture slcp bernoulli_glm}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PYTHONUNBUFFERED=1
bench() {
  python -W ignore -m sbi_diffusion.benchmark run --output "$OUT" --seeds 0 \
    --budgets 10000 --observations 1-5 --workers 1 --executor inline --no-report \
    --model-cache outputs/models "$@"
}
for task in $TASKS; do
  for training in "teacher=diffusion," ""; do
    for steps in 1 2 4; do
      bench --tasks "$task" --methods "consistency:${training}steps=$steps"
    done
  done
done
python benchmarks/consistency/summarize.py
