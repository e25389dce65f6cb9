#!/usr/bin/env bash
# Produces benchmarks/results/sbibm.jsonl, the committed benchmark results.
# Resumable: rerunning skips every row already in the file that was made under
# the method's current defaults (rows record a fingerprint of them; rows of
# older defaults are run again), and trained posteriors are kept in
# outputs/models, so an interrupted job samples again without retraining. One worker, one torch thread; add --workers N (and more cores) or
# --executor slurm to go faster. Pass task names to run only those tasks.
set -u
cd "$(dirname "$0")/.."
OUT=benchmarks/results/sbibm.jsonl
ALL="two_moons gaussian_mixture slcp sir lotka_volterra slcp_distractors bernoulli_glm gaussian_linear gaussian_linear_uniform bernoulli_glm_raw"
SMALL="two_moons slcp gaussian_mixture bernoulli_glm"
if [ $# -gt 0 ]; then
  ALL="$*"
  SMALL=$(for t in $SMALL; do case " $* " in *" $t "*) echo "$t";; esac; done)
fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
bench() {
  python -W ignore -m sbi_diffusion.benchmark run --output "$OUT" --observations 1-10 \
    --seeds 0 --workers 1 --no-report --model-cache outputs/models "$@"
}

# 1. All ten tasks at 10^4: sbi NPE (also validates the sir/lotka_volterra
#    simulators against the published NPE numbers) and our default estimators,
#    task by task.
for task in $ALL; do
  bench --tasks "$task" --budgets 10000 --methods npe diffusion flow_matching
done
# 2. Four tasks at 10^3 and 10^5, with sbi NLE as well.
for budget in 1000 100000; do
  for task in $SMALL; do
    bench --tasks "$task" --budgets "$budget" --methods npe diffusion flow_matching nle
  done
done
python -m sbi_diffusion.benchmark report "$OUT" --table benchmarks/results/sbibm.md --figure benchmarks/results/sbibm.png
