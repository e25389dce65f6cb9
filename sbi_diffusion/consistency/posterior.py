r"""The posterior of a trained consistency model.

:class:`ConsistencyPosterior` samples with multistep consistency sampling
(Song et al. 2023, Algorithm 1; Schmitt et al. 2024, "Consistency Models for
Scalable and Fast Simulation-Based Inference"): one to a few network
evaluations per sample. A consistency model defines no tractable density, so
there is no ``log_prob``; ``map`` uses a kernel density estimate.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution
from tqdm.auto import tqdm

from sbi_diffusion.consistency.model import ConsistencyModel
from sbi_diffusion.inference.posterior import DiffusionPosterior
from sbi_diffusion.samplers import Solver, solver_call
from sbi_diffusion.samplers import consistency as _consistency_sampler  # noqa: F401

__all__ = ["CONSISTENCY_SAMPLER", "ConsistencyPosterior", "consistency_sampler_options"]

CONSISTENCY_SAMPLER = "consistency"
"""The sampler of a consistency model (:mod:`sbi_diffusion.samplers.consistency`)."""


def consistency_sampler_options(
    steps: int, times: list[float] | Tensor | None
) -> dict[str, Any]:
    """The options of the consistency sampler: the intermediate ``times`` where
    given (they override ``steps``), else the number of ``steps``.

    Args:
        steps: number of steps (network evaluations per sample).
        times: decreasing intermediate times, or None.

    Returns:
        ``{"times": times}`` or ``{"steps": steps}``.
    """
    if times is not None:
        return {"times": times}
    return {"steps": steps}


class ConsistencyPosterior(DiffusionPosterior):
    r"""Posterior ``p(theta | x)`` of a trained consistency model.

    ``sample`` and ``sample_batched`` run multistep consistency sampling
    (``steps`` network evaluations per sample, or explicit intermediate
    ``times``); samples outside the prior support are rejected and redrawn, and
    ``last_nfe`` reports the network evaluations per accepted sample. A
    consistency model defines no tractable density, so :meth:`log_prob` raises;
    :meth:`map` uses a kernel density estimate of the samples.

    Args:
        estimator: the trained :class:`~sbi_diffusion.consistency.ConsistencyModel`.
        prior: the prior; samples outside its support are rejected.
        steps: default number of steps (network evaluations per sample).
        times: default intermediate times (overrides ``steps``).
        max_sampling_batch_size: rows sampled at once (None: bounded by the
            parameter dimension, as in :class:`DiffusionPosterior`).
        device: device of the posterior.
    """

    def __init__(
        self,
        estimator: ConsistencyModel,
        prior: Distribution,
        steps: int = 2,
        times: list[float] | Tensor | None = None,
        max_sampling_batch_size: int | None = None,
        device: str | torch.device | None = None,
    ):
        if not isinstance(estimator, ConsistencyModel):
            raise ValueError(
                f"ConsistencyPosterior needs a ConsistencyModel, got "
                f"{type(estimator).__name__}. For a diffusion or flow-matching "
                "estimator use DiffusionPosterior."
            )
        super().__init__(
            estimator,
            prior,
            sampler=CONSISTENCY_SAMPLER,
            sampler_options=consistency_sampler_options(steps, times),
            max_sampling_batch_size=max_sampling_batch_size,
            device=device,
        )
        self._purpose = (
            "It samples a consistency model with one or a few network evaluations "
            "per sample (multistep consistency sampling); it has no log_prob."
        )

    def _iid_sampling_options(self, *args: Any, **kwargs: Any) -> tuple[str, dict]:
        """Not available: raises, whatever the arguments."""
        raise ValueError(
            "A consistency model cannot compose i.i.d. trials: composition "
            "needs a score, which f(z, t) does not give. Pass one observation "
            "(use sample_batched for several separate observations), or use "
            "DiffusionNPE for i.i.d. trials."
        )

    def _sampling_options(
        self, sampler: str | Solver | None, steps: int | None, options: dict
    ) -> tuple[str, dict]:
        """The consistency sampler and its options (``steps`` or ``times``)."""
        sampler, options = solver_call(sampler, options)
        if sampler is not None and sampler != CONSISTENCY_SAMPLER:
            raise ValueError(
                f"A consistency model is sampled with the 'consistency' sampler, "
                f"not {sampler!r}: f(z, t) is not a denoiser, so ODE/SDE samplers "
                "do not apply. Pass steps=k or times=[...] instead, or train a "
                "DiffusionNPE for the other samplers."
            )
        unknown = set(options) - {"times"}
        if unknown:
            raise ValueError(
                f"Unknown sampling options {sorted(unknown)} for a consistency "
                "model; it takes steps=k (network evaluations) or times=[...] "
                "(decreasing intermediate times)."
            )
        merged = dict(self.sampler_options)
        if steps is not None or "times" in options:
            merged.pop("steps", None)
            merged.pop("times", None)
        if steps is not None:
            merged["steps"] = steps
        if options.get("times") is not None:
            merged["times"] = options["times"]
        return CONSISTENCY_SAMPLER, merged

    def log_prob(self, theta: Tensor, x: Tensor | None = None, **kwargs) -> Tensor:
        """Not available: raises ``NotImplementedError``.

        A consistency model maps noise to samples in one or a few jumps and
        defines no tractable density.
        """
        raise NotImplementedError(
            "log_prob is not available for a consistency model: it maps noise to "
            "samples without a tractable density. Train a DiffusionNPE or "
            "FlowMatchingNPE (log_prob through the probability-flow ODE), or sbi's "
            "NPE, to evaluate posterior densities."
        )

    def map(
        self,
        x: Tensor | None = None,
        num_iter: int = 100,
        num_to_optimize: int = 100,
        num_init_samples: int = 10_000,
        bandwidth: float | None = None,
        show_progress_bars: bool = False,
        force_update: bool = False,
        **kwargs,
    ) -> Tensor:
        r"""Maximum a posteriori estimate from a kernel density estimate.

        Draws ``num_init_samples`` posterior samples (cheap for a consistency
        model), runs mean-shift (Comaniciu & Meer 2002) from the
        ``num_to_optimize`` samples of highest Gaussian-kernel density,

        .. math::
            \theta \leftarrow \frac{\sum_j K_h(\theta - \theta_j)\, \theta_j}
            {\sum_j K_h(\theta - \theta_j)},

        in standardised space, and returns the end point of highest density.
        The bandwidth defaults to Scott's rule ``h = n^{-1/(d+4)}``. Uses the
        default x (``set_default_x``).
        """
        unknown = set(kwargs) - {"learning_rate", "init_method", "save_best_every"}
        if unknown:
            raise ValueError(
                f"Unknown map() arguments {sorted(unknown)}; see "
                "ConsistencyPosterior.map."
            )
        cached = self._cached_map(x, force_update)
        if cached is not None:
            return cached
        samples = self.sample(
            (num_init_samples,), x=self.default_x, show_progress_bars=False
        )
        points = self.estimator.to_z(samples.reshape(-1, *self.theta_shape))
        points = points.reshape(num_init_samples, -1)
        dim = points.shape[1]
        h = num_init_samples ** (-1.0 / (dim + 4)) if bandwidth is None else bandwidth
        if h <= 0:
            raise ValueError(f"bandwidth must be positive, got {h}.")

        def log_kde(query: Tensor) -> Tensor:
            return torch.logsumexp(-(torch.cdist(query, points) ** 2) / (2 * h**2), 1)

        start = torch.topk(log_kde(points), min(num_to_optimize, len(points))).indices
        current = points[start].clone()
        for _ in tqdm(range(num_iter), disable=not show_progress_bars, desc="MAP"):
            weights = torch.softmax(
                -(torch.cdist(current, points) ** 2) / (2 * h**2), dim=1
            )
            current = weights @ points
        best = current[int(torch.argmax(log_kde(current)))]
        self._map = self.estimator.from_z(best.reshape(1, *self.theta_shape))
        return self._map
