"""The sampler that ``factorized_bridge`` needs.

The bridge composition anneals the undiffused prior score in time (Geffner et
al. 2023, Sec. 3.2), so its scores are not those of one diffusion process and
only a stochastic sampler mixes towards its target.
"""

from __future__ import annotations

import warnings

from sbi_diffusion.samplers import get_sampler, runs_deterministically

__all__ = ["warn_if_bridge_without_noise"]


def warn_if_bridge_without_noise(method: str, sampler: str, options: dict) -> None:
    """Warn when ``factorized_bridge`` runs on a sampler that injects no noise.

    The bridge anneals the undiffused prior score in time (Geffner et al. 2023,
    Sec. 3.2): its scores are not those of one diffusion process, so only a
    stochastic sampler (or a Langevin corrector) mixes towards the target; the
    probability-flow ODE of these scores is biased (measured in
    ``benchmarks/iid/README.md``, "Evidence behind defaults").
    """
    if method != "factorized_bridge":
        return
    if runs_deterministically(get_sampler(sampler), options):
        warnings.warn(
            f"iid_method='factorized_bridge' anneals the prior score in time and "
            f"needs a stochastic sampler; with the deterministic sampler "
            f"{sampler!r} the samples are biased. Pass sampler='euler_maruyama' "
            "(e.g. steps=500), sampler='adaptive_sde', or corrector='langevin'.",
            UserWarning,
            stacklevel=3,
        )
