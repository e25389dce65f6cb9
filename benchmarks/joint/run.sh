#!/usr/bin/env bash
# Joint (Simformer-style) diffusion model on the sbibm protocol: its posterior, and
# its likelihood used through MCMC (joint:posterior_method=likelihood_mcmc), against
# DiffusionNPE, sbi NPE and sbi NLE. c2st from sbibm.metrics.c2st with 10,000
# samples per observation.
#
# The joint rows go to benchmarks/joint/results.jsonl. The DiffusionNPE, NPE and
# NLE rows they are compared with are the grid rows of
# benchmarks/results/sbibm.jsonl (same protocol, same observations; run them with
# benchmarks/run_published.sh); summarize.py puts both side by side.
#
# Resumable: rows already in the results file are skipped and trained models are
# kept in outputs/models. One worker, one torch thread (add --workers/--device
# cuda where there is more hardware).
#
#   bash benchmarks/joint/run.sh                # the full grid
#   bash benchmarks/joint/run.sh smoke          # two_moons, 10^3, observations 1-2
#   bash benchmarks/joint/run.sh TASK BUDGET [METHOD ...]
#                                               # one cell, e.g. slcp 10000 joint
#
# Both methods share one trained joint model (model cache); the MCMC one solves
# the probability-flow ODE for every likelihood evaluation and is far slower.
set -u
cd "$(dirname "$0")/../.."
OUT=benchmarks/joint/results.jsonl
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PYTHONUNBUFFERED=1
bench() {
  python -W ignore -m sbi_diffusion.benchmark run --output "$OUT" --seeds 0 \
    --workers 1 --threads 1 --executor inline --no-report \
    --model-cache outputs/models --observations 1-5 "$@"
}
METHODS="joint joint:posterior_method=likelihood_mcmc"

if [ "${1:-}" = smoke ]; then
  bench --tasks two_moons --budgets 1000 --methods joint --observations 1-2
elif [ $# -ge 2 ]; then
  task=$1 budget=$2
  shift 2
  for method in ${*:-$METHODS}; do
    bench --tasks "$task" --budgets "$budget" --methods "$method"
  done
else
  for method in $METHODS; do
    for budget in 1000 10000; do
      for task in two_moons gaussian_mixture slcp bernoulli_glm; do
        bench --tasks "$task" --budgets "$budget" --methods "$method"
      done
    done
  done
fi
python benchmarks/joint/summarize.py
