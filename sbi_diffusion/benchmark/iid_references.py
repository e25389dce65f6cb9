r"""Reference posteriors for many i.i.d. trials on sbibm tasks with tractable
likelihoods.

sbibm ships reference posteriors for one observation only. For ``N`` i.i.d.
trials ``x_1, ..., x_N`` of one parameter the posterior is

.. math::
    p(\theta \mid x_{1:N}) \propto p(\theta) \prod_{i=1}^N p(x_i \mid \theta),

and this module samples it for ``two_moons`` (on a refined grid, exact up to
the grid resolution) and ``slcp`` (slice sampling, using the likelihood's
symmetry). Trials are made by :func:`iid_observation`: the first trial is
sbibm's observation, the others are fresh simulations at its true parameter, so
that with one trial the reference is sbibm's own.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "IID_REFERENCE_TASKS",
    "iid_observation",
    "iid_reference_posterior",
    "slcp_log_likelihood",
    "two_moons_log_likelihood",
]

IID_REFERENCE_TASKS = ("two_moons", "slcp")
"""Tasks whose i.i.d. reference posterior this module can sample."""

# two_moons: x = p + (-|w|, z), p = (r cos a + 0.25, r sin a), a ~ U(-pi/2, pi/2),
# r ~ N(0.1, 0.01^2), w = (theta_1 + theta_2) / sqrt 2,
# z = (theta_2 - theta_1) / sqrt 2.
_R_LOC, _R_SCALE, _OFFSET = 0.1, 0.01, 0.25
_SQRT2 = math.sqrt(2.0)


def iid_observation(task: Any, num_observation: int, num_trials: int) -> Tensor:
    """``num_trials`` i.i.d. trials at the true parameter of an sbibm observation.

    The first trial is sbibm's observation itself; the others are simulated with a
    seed fixed by the observation number, so the same call gives the same trials.

    Args:
        task: A task from :func:`sbi_diffusion.benchmark.tasks.load_task`.
        num_observation: sbibm observation number (1-10).
        num_trials: ``N``, the number of trials.

    Returns:
        Trials of shape ``(num_trials, dim_data)``.
    """
    if num_trials < 1:
        raise ValueError(f"num_trials must be at least 1, got {num_trials}.")
    first = task.get_observation(num_observation).reshape(1, -1)
    if num_trials == 1:
        return first
    theta_o = task.get_true_parameters(num_observation).reshape(1, -1)
    state = torch.get_rng_state()
    try:
        torch.manual_seed(10_000 + num_observation)
        more = task.simulate(theta_o.expand(num_trials - 1, -1))
    finally:
        torch.set_rng_state(state)
    return torch.cat([first, more.reshape(num_trials - 1, -1)])


def two_moons_log_likelihood(theta: Tensor, x: Tensor) -> Tensor:
    r"""Summed log-likelihood of i.i.d. trials of sbibm's ``two_moons``.

    With ``p = x - (-|w|, z)`` and ``(u, v) = (p_1 - 0.25, p_2)`` in polar
    coordinates ``(r, a)``, ``p(x | theta) = N(r; 0.1, 0.01^2) / (pi r)`` for
    ``u > 0`` (``a`` uniform on ``(-pi/2, pi/2)``) and zero otherwise.

    Args:
        theta: Parameters, shape ``(..., 2)``.
        x: Trials, shape ``(N, 2)``.

    Returns:
        ``sum_i log p(x_i | theta)``, shape ``theta.shape[:-1]``.
    """
    w = (theta[..., 0] + theta[..., 1]) / _SQRT2
    z = (theta[..., 1] - theta[..., 0]) / _SQRT2
    return _two_moons_folded_log_likelihood(w.abs(), z, x)


def _two_moons_folded_log_likelihood(a: Tensor, z: Tensor, x: Tensor) -> Tensor:
    """The two_moons likelihood as a function of ``a = |w|`` and ``z``."""
    u = x[:, 0] + a[..., None] - _OFFSET
    v = x[:, 1] - z[..., None]
    r = torch.sqrt(u**2 + v**2)
    log_normal = -0.5 * ((r - _R_LOC) / _R_SCALE) ** 2 - math.log(
        math.sqrt(2 * math.pi) * _R_SCALE
    )
    log_p = log_normal - math.log(math.pi) - torch.log(r)
    log_p = torch.where(u > 0, log_p, torch.full_like(log_p, -math.inf))
    return log_p.sum(-1)


def _two_moons_reference(
    x: Tensor, num_samples: int, generator: torch.Generator
) -> Tensor:
    """Sample the two_moons posterior on a grid in ``(a, z) = (|w|, z)``, refined
    twice around its mass; the sign of ``w`` is a fair coin (the likelihood
    depends on ``|w|`` and the prior box is symmetric under ``w -> -w``)."""
    x = x.double()
    a_lim, z_lim = (0.0, _SQRT2), (-_SQRT2, _SQRT2)
    size = 400
    for _ in range(3):
        a_edges = torch.linspace(*a_lim, size + 1, dtype=torch.float64)
        z_edges = torch.linspace(*z_lim, size + 1, dtype=torch.float64)
        a_mid = 0.5 * (a_edges[1:] + a_edges[:-1])
        z_mid = 0.5 * (z_edges[1:] + z_edges[:-1])
        a, z = torch.meshgrid(a_mid, z_mid, indexing="ij")
        log_p = torch.cat(
            [_two_moons_folded_log_likelihood(a[i], z[i], x)[None] for i in range(size)]
        )
        inside = ((a - z).abs() <= _SQRT2) & ((a + z).abs() <= _SQRT2)
        log_p = torch.where(inside, log_p, torch.full_like(log_p, -math.inf))
        if not torch.isfinite(log_p).any():
            raise ValueError("The trials have zero likelihood everywhere on the prior.")
        keep = log_p > log_p.max() - 40.0
        rows = keep.any(1).nonzero().flatten()
        cols = keep.any(0).nonzero().flatten()
        da, dz = a_edges[1] - a_edges[0], z_edges[1] - z_edges[0]
        new_a = (
            max(a_lim[0], float(a_edges[rows.min()] - 2 * da)),
            min(a_lim[1], float(a_edges[rows.max() + 1] + 2 * da)),
        )
        new_z = (
            max(z_lim[0], float(z_edges[cols.min()] - 2 * dz)),
            min(z_lim[1], float(z_edges[cols.max() + 1] + 2 * dz)),
        )
        if new_a == a_lim and new_z == z_lim:
            break
        a_lim, z_lim = new_a, new_z
    weights = torch.exp(log_p - log_p.max()).flatten()
    samples = []
    count = 0
    while count < num_samples:
        cells = torch.multinomial(weights, 2 * num_samples, True, generator=generator)
        jitter = torch.rand(2 * num_samples, 2, generator=generator, dtype=x.dtype)
        a = a_edges[cells // size] + jitter[:, 0] * (a_edges[1] - a_edges[0])
        z = z_edges[cells % size] + jitter[:, 1] * (z_edges[1] - z_edges[0])
        sign = torch.randint(0, 2, (2 * num_samples,), generator=generator) * 2 - 1
        w = sign * a
        theta = torch.stack([(w - z) / _SQRT2, (w + z) / _SQRT2], dim=-1)
        theta = theta[(theta.abs() <= 1.0).all(-1)]
        samples.append(theta)
        count += len(theta)
    return torch.cat(samples)[:num_samples].float()


def slcp_log_likelihood(theta: Tensor, x: Tensor) -> Tensor:
    r"""Summed log-likelihood of i.i.d. trials of sbibm's ``slcp``.

    Each trial holds four draws from ``N(m, S)`` with ``m = (theta_1, theta_2)``,
    standard deviations ``s_1 = theta_3^2``, ``s_2 = theta_4^2``, correlation
    ``rho = tanh(theta_5)``, and ``1e-6`` added to the variances, as in sbibm.

    Args:
        theta: Parameters, shape ``(..., 5)``.
        x: Trials, shape ``(N, 8)``.

    Returns:
        ``sum_i log p(x_i | theta)``, shape ``theta.shape[:-1]``.
    """
    points = x.reshape(-1, 2).to(theta.dtype)  # 4N draws
    s1, s2 = theta[..., 2] ** 2, theta[..., 3] ** 2
    rho = torch.tanh(theta[..., 4])
    var1, var2 = s1**2 + 1e-6, s2**2 + 1e-6
    cov = rho * s1 * s2
    det = var1 * var2 - cov**2
    d1 = points[:, 0] - theta[..., 0, None]
    d2 = points[:, 1] - theta[..., 1, None]
    quad = (var2[..., None] * d1**2 - 2 * cov[..., None] * d1 * d2) + var1[
        ..., None
    ] * d2**2
    quad = quad / det[..., None]
    n = points.shape[0]
    return -0.5 * quad.sum(-1) - 0.5 * n * torch.log(det) - n * math.log(2 * math.pi)


def _slcp_reference(
    x: Tensor, num_samples: int, generator: torch.Generator, num_chains: int = 20
) -> Tensor:
    """Slice-sample the slcp posterior over ``(theta_1, theta_2, |theta_3|,
    |theta_4|, theta_5)`` (the likelihood depends on ``theta_3`` and ``theta_4``
    through their squares and the prior box is symmetric), then give ``theta_3``
    and ``theta_4`` independent fair-coin signs. Chains start at the moment
    estimates of the pooled draws, with a warm-up half as long as the run."""
    from sbi.samplers.mcmc.slice_numpy import SliceSamplerVectorized

    x = x.double()
    points = x.reshape(-1, 2)
    mean = points.mean(0)
    std = points.std(0).clamp_min(1e-3)
    corr = torch.corrcoef(points.T)[0, 1].clamp(-0.99, 0.99)
    start = torch.stack([mean[0], mean[1], std[0].sqrt(), std[1].sqrt(), corr.atanh()])
    low = torch.tensor([-2.9, -2.9, 0.01, 0.01, -2.9], dtype=start.dtype)
    start = torch.minimum(torch.maximum(start, low), torch.full_like(start, 2.9))

    def log_prob(params: np.ndarray) -> np.ndarray:
        theta = torch.as_tensor(params, dtype=torch.float64)
        inside = (theta[:, [0, 1, 4]].abs() <= 3).all(-1) & (
            (theta[:, [2, 3]] >= 0) & (theta[:, [2, 3]] <= 3)
        ).all(-1)
        value = slcp_log_likelihood(theta, x)
        value = torch.where(inside, value, torch.full_like(value, -math.inf))
        return value.numpy()

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    init = start + 0.01 * torch.randn(num_chains, 5, generator=generator).double()
    init[:, 2:4] = init[:, 2:4].abs()
    per_chain = math.ceil(num_samples / num_chains)
    sampler = SliceSamplerVectorized(
        log_prob_fn=log_prob,
        init_params=init.numpy(),
        num_chains=num_chains,
        thin=2,
        verbose=False,
    )
    sampler.rng = np.random.RandomState(seed)
    burn_in = per_chain // 2 + 50  # after thinning
    chains = sampler.run(sampler.thin * (burn_in + per_chain))
    chains = torch.as_tensor(chains)[:, burn_in:]
    samples = chains.reshape(-1, 5)[:num_samples].clone()
    signs = torch.randint(0, 2, (len(samples), 2), generator=generator) * 2 - 1
    samples[:, 2:4] *= signs
    return samples.float()


def iid_reference_posterior(
    task_name: str, x: Tensor, num_samples: int, seed: int = 0
) -> Tensor:
    """Samples of the posterior given i.i.d. trials, under the task's prior.

    Args:
        task_name: ``"two_moons"`` or ``"slcp"``.
        x: Trials, shape ``(N, dim_data)``.
        num_samples: Number of samples.
        seed: Seed of the sampling.

    Returns:
        Samples, shape ``(num_samples, dim_parameters)``.

    Raises:
        ValueError: For another task or trials of the wrong size.
    """
    dims = {"two_moons": 2, "slcp": 8}
    if task_name not in dims:
        raise ValueError(
            f"No i.i.d. reference posterior for {task_name!r}; available: "
            f"{', '.join(IID_REFERENCE_TASKS)}."
        )
    if x.ndim != 2 or x.shape[1] != dims[task_name]:
        raise ValueError(
            f"Trials of {task_name} must have shape (N, {dims[task_name]}), got "
            f"{tuple(x.shape)}."
        )
    generator = torch.Generator().manual_seed(seed)
    if task_name == "two_moons":
        return _two_moons_reference(x, num_samples, generator)
    return _slcp_reference(x, num_samples, generator)
