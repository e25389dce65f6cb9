"""CPU time of the network calls of i.i.d. composition.

Composing ``N`` trials evaluates the single-trial network on every pair of a
sample ``z_b`` and a trial ``x_i``: ``batch x N`` rows per step. Two things
decide the time on a CPU, measured here with one torch thread on the two_moons
model of ``run_iid.py`` (1000 samples, 100 trials, 100,000 rows):

1. rows per network call: pieces of a few thousand rows stay in cache
   (``denoiser.CPU_NETWORK_ROWS``);
2. broadcasting: the network gets ``z`` as ``(batch, 1, d)`` and the trials as
   ``(1, N, e)``, so its time and condition layers run ``N`` times, not
   ``batch x N`` times (``Denoiser.denoise_trials``). The same holds for the
   samples of each single-trial posterior that GAUSS draws for its
   covariances: ``z`` as ``(N, samples, d)``, the trials as ``(N, 1, e)``
   (``Denoiser.denoise_grouped``).

Printed: seconds per call of ``x_hat_i(z, t)`` for all pairs, flat rows in one
call (the composition before this change), flat rows in pieces, and broadcast
in pieces (the default now); the same for 1000 samples of each single-trial
posterior, flat and grouped; then ten calls of the composed GAUSS denoiser with
one network call and with the default pieces.

Example:
    OMP_NUM_THREADS=1 python benchmarks/iid/time_network_rows.py
"""

from __future__ import annotations

import argparse
import time

import torch
from run_iid import SbibmIID

from sbi_diffusion.model import (
    CPU_NETWORK_ROWS,
    denoise_rows_in_pieces,
    denoise_trials_flat,
)


def seconds(fn, repeats: int = 3) -> float:
    with torch.no_grad():
        fn()
        start = time.time()
        for _ in range(repeats):
            fn()
    return (time.time() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-cache", default="outputs/models")
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = SbibmIID("two_moons")
    posterior = task.posterior(
        argparse.Namespace(model_cache=args.model_cache, simulations=10_000)
    )
    estimator = posterior.estimator
    x = task.observation(1, 100)
    with torch.no_grad():
        embeddings = estimator.embed_condition(x)
    z, t = torch.randn(1000, 2), torch.full((1000,), 0.5)
    flat = estimator.denoise_embedded
    rows = {
        "flat, one call": lambda: denoise_trials_flat(flat, z, embeddings, t),
        **{
            f"flat, pieces of {n}": (
                lambda n=n: denoise_trials_flat(flat, z, embeddings, t, n)
            )
            for n in (16384, CPU_NETWORK_ROWS, 1024)
        },
        "broadcast, one call": lambda: estimator.denoise_trials(z, embeddings, t),
        **{
            f"broadcast, pieces of {n}": (
                lambda n=n: estimator.denoise_trials(z, embeddings, t, n)
            )
            for n in (16384, CPU_NETWORK_ROWS, 1024)
        },
    }
    print("x_hat of 1000 samples x 100 trials (100,000 rows), one thread:")
    for name, fn in rows.items():
        print(f"  {name:28s} {seconds(fn):6.2f} s")
    z_each = torch.randn(100, 1000, 2)
    rows_each = embeddings.repeat_interleave(1000, dim=0)
    n = CPU_NETWORK_ROWS
    single_trial = {
        f"flat, pieces of {n}": lambda: denoise_rows_in_pieces(
            flat, z_each.reshape(-1, 2), rows_each, torch.tensor(0.5), n
        ),
        f"grouped, pieces of {n}": lambda: estimator.denoise_grouped(
            z_each, embeddings, torch.tensor(0.5), n
        ),
    }
    print("x_hat of 1000 samples of each of 100 single-trial posteriors:")
    for name, fn in single_trial.items():
        print(f"  {name:28s} {seconds(fn):6.2f} s")
    for network_rows in (10**9, None):
        torch.manual_seed(0)
        start = time.time()
        composed = posterior.iid_denoiser(x, "gauss", network_rows=network_rows)
        setup = time.time() - start
        label = "one call" if network_rows else f"pieces of {CPU_NETWORK_ROWS}"
        run = seconds(lambda c=composed: c(z, t), repeats=10)
        print(
            f"GAUSS, network in {label}: single-trial covariances {setup:.1f} s, "
            f"one composed call {run:.2f} s"
        )
        posterior._iid_cache = None


if __name__ == "__main__":
    main()
