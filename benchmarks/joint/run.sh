#!/usr/bin/env bash
# Joint (Simformer-style) diffusion model on the sbibm protocol: its posterior against
# DiffusionNPE, sbi NPE and sbi NLE, and its likelihood used through MCMC
# (joint:posterior_method=likelihood_mcmc) against NLE. c2st from
# sbibm.metrics.c2st with 10,000 samples per observation.
#
# Resumable: rows already in the results file are skipped, so rerun the same command
# after an interruption. One worker, one torch thread (add --workers/--device cuda
# where there is more hardware).
#
#   bash benchmarks/joint/run.sh            # the full grid of the issue
#   bash benchmarks/joint/run.sh smoke      # two_moons, 10^3, observations 1-2
set -u
cd "$(dirname "$0")/../.."
OUT=benchmarks/joint/results.jsonl
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PYTHONUNBUFFERED=1
bench() {
  python -W ignore -m sbi_diffusion.benchmark run --output "$OUT" --seeds 0 \
    --workers 1 --threads 1 --no-report "$@"
}
POSTERIORS="joint diffusion npe nle"
LIKELIHOOD_MCMC="joint:posterior_method=likelihood_mcmc"

if [ "${1:-full}" = "smoke" ]; then
  for method in $POSTERIORS $LIKELIHOOD_MCMC; do
    bench --tasks two_moons --budgets 1000 --observations 1-2 --methods "$method"
  done
else
  for budget in 1000 10000; do
    for task in two_moons gaussian_mixture slcp bernoulli_glm; do
      for method in $POSTERIORS $LIKELIHOOD_MCMC; do
        bench --tasks "$task" --budgets "$budget" --observations 1-5 --methods "$method"
      done
    done
  done
fi
python benchmarks/joint/summarize.py "$OUT" > benchmarks/joint/results.md
