"""CPU time of composition against the rows per network call (``max_rows``).

Two measurements, one torch thread:

1. the default ``ResidualMLP`` (width 256, 4 blocks, 2-d ``theta`` and ``x``)
   on 100,000 rows evaluated in batches of 100,000, 20,000, 5000 and 1000
   rows: seconds per million rows;
2. GAUSS on the two_moons model of ``run_iid.py`` at 100 trials: seconds for
   the single-trial covariances and for ten composed calls on 1000 samples,
   with the default ``max_rows`` (``composition.default_max_rows``) and with
   the former 100,000 (the default is timed before and after).

Example:
    OMP_NUM_THREADS=1 python benchmarks/iid/time_max_rows.py
"""

from __future__ import annotations

import argparse
import time

import torch
from run_iid import SbibmIID

from sbi_diffusion.nets.mlp import ResidualMLP


def network_seconds_per_million_rows() -> None:
    net = ResidualMLP(2, 2, 256, 4).eval()
    z, c, t = torch.randn(100_000, 2), torch.randn(100_000, 2), torch.rand(100_000)
    for rows in (100_000, 20_000, 5_000, 1_000):
        with torch.no_grad():
            net(z[:rows], c[:rows], t[:rows])
            start = time.time()
            for _ in range(3):
                for i in range(0, 100_000, rows):
                    net(z[i : i + rows], c[i : i + rows], t[i : i + rows])
        per_million = (time.time() - start) / 3 * 10
        print(f"batches of {rows} rows: {per_million:.1f} s per million rows")


def gauss_seconds(model_cache: str) -> None:
    task = SbibmIID("two_moons")
    posterior = task.posterior(argparse.Namespace(model_cache=model_cache))
    x = task.observation(1, 100)
    for rows in (None, 100_000, None):
        options = {} if rows is None else {"max_rows": rows}
        torch.manual_seed(0)
        start = time.time()
        composed = posterior.iid_denoiser(x, "gauss", **options)
        setup = time.time() - start
        z = torch.randn(1000, 2)
        start = time.time()
        with torch.no_grad():
            for _ in range(10):
                composed(z, torch.full((1000,), 0.5))
        print(
            f"max_rows {rows or 'default'}: covariances {setup:.0f} s, ten "
            f"composed calls (1000 samples x 100 trials) {time.time() - start:.1f} s"
        )
        posterior._iid_cache = None


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-cache", default="outputs/models")
    args = parser.parse_args()
    torch.set_num_threads(1)
    network_seconds_per_million_rows()
    gauss_seconds(args.model_cache)
