r"""Denoising covariances of single-trial posteriors, for GAUSS and JAC.

Both methods of Linhart et al. 2024 ("Diffusion posterior sampling for
simulation-based inference in tall data settings") weigh each factor by its
denoising precision ``P = Cov[theta_0 | z_t]^{-1}``:

- JAC takes it from Tweedie's second-order formula, ``Cov[theta_0 | z_t] =
  (sigma^2 / alpha) d x_hat / dz`` (:func:`denoiser_jacobian`,
  :func:`precision_from_jacobian`);
- GAUSS from a Gaussian fitted to samples of each single-trial posterior,
  ``P = Sigma^{-1} + alpha^2 / sigma^2 I`` (:func:`estimate_trial_moments`,
  :func:`unbiased_precision_factor`, :func:`at_least_prior_precision`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sbi_diffusion.composition.linalg import (
    clamp_eigenvalues,
    eye_like,
    inverse_clamped,
    symmetric_eigh,
    symmetrize,
)
from sbi_diffusion.composition.path import ALPHA_FLOOR, alpha_floor_time
from sbi_diffusion.model import ConditionedDenoiser
from sbi_diffusion.model.interface import DenoiseFn
from sbi_diffusion.samplers import (
    get_sampler,
    network_evaluations_per_call,
    sample_from_noise,
)

__all__ = [
    "denoiser_jacobian",
    "precision_from_jacobian",
    "sample_on_fixed_grid",
    "TrialMoments",
    "estimate_trial_moments",
    "at_least_prior_precision",
    "unbiased_precision_factor",
]


def denoiser_jacobian(
    denoise: Callable[[Tensor, Tensor], Tensor], z: Tensor, t: Tensor
) -> tuple[Tensor, Tensor]:
    r"""``x_hat(z, t)`` and its Jacobian ``d x_hat / dz`` ``(batch, d, d)``.

    One reverse-mode pass per dimension (rows are independent, so the gradient of
    the batch sum gives every row's Jacobian row).

    Raises:
        ValueError: if ``x_hat`` is not differentiable with respect to ``z``.
    """
    with torch.enable_grad():
        zz = z.detach().requires_grad_(True)
        x_hat = denoise(zz, t)
        if not x_hat.requires_grad:
            raise ValueError(
                "The denoiser's output is not differentiable with respect to its "
                "input, so its Jacobian (needed by iid_method='jac' and "
                "covariance='jacobian') is not available. Use iid_method='gauss' "
                "(or covariance='isotropic'), or a model built from torch "
                "operations."
            )
        rows = []
        for j in range(z.shape[1]):
            (grad,) = torch.autograd.grad(
                x_hat[:, j].sum(), zz, retain_graph=j < z.shape[1] - 1
            )
            rows.append(grad)
    return x_hat.detach(), torch.stack(rows, dim=1)


def precision_from_jacobian(
    jacobian: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    min_variance: float = 1e-6,
    max_variance: float | None = None,
) -> Tensor:
    r"""Denoising precision from Tweedie's second-order formula.

    ``Cov[theta_0 | z_t] = (sigma^2 / alpha) d x_hat / dz`` (Linhart et al. 2024;
    Efron 2011); the matrix is symmetrised and its eigenvalues clamped to
    ``[(1 / v_min + alpha^2 / sigma^2)^{-1}, (1 / v_max + alpha^2 /
    sigma^2)^{-1}]``, the denoising covariances of targets with variances in
    ``[v_min, v_max]`` (``v_min = min_variance``; ``v_max = max_variance``, e.g.
    the prior's largest variance: a posterior no wider than the prior; without
    it the bound is ``sigma^2 / alpha^2``, the likelihood term alone), before
    inversion. Non-positive eigenvalues are set to the upper bound. The clamping
    keeps a learned Jacobian (inaccurate at high and at low noise) from giving
    precisions that make the composed precision indefinite.

    Args:
        jacobian: ``(batch, d, d)``.
        alpha, sigma: ``(batch,)``.
        min_variance: smallest variance ``v_min`` of the target.
        max_variance: largest variance ``v_max`` of the target (None: no bound).
    """
    alpha = torch.clamp(alpha, min=ALPHA_FLOOR)
    ratio = (sigma**2 / alpha)[:, None, None]
    high = (sigma**2 / alpha**2).double()
    if max_variance is not None:
        high = 1.0 / (1.0 / float(max_variance) + 1.0 / high)
    low = 1.0 / (1.0 / float(min_variance) + alpha.double() ** 2 / sigma.double() ** 2)
    low = torch.minimum(low, 0.5 * high)
    vals, vecs = symmetric_eigh(ratio * jacobian)
    high_, low_ = high[:, None], low[:, None]
    # a non-positive eigenvalue is an error of the learned Jacobian: treat that
    # direction as uninformative (the widest allowed), not as exact
    vals = torch.where(vals > 0, vals, high_.expand_as(vals))
    vals = torch.minimum(torch.maximum(vals, low_), high_)
    inv = (vecs / vals[..., None, :]) @ vecs.transpose(-1, -2)
    return inv.to(jacobian.dtype)


def sample_on_fixed_grid(
    denoise: DenoiseFn,
    shape: tuple[int, int],
    sampler: str = "heun",
    steps: int = 30,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, float]:
    """Samples ``shape`` of the target of a ``DenoiseFn`` with a fixed-grid
    sampler whose grid starts where ``alpha >= 1e-4`` (at ``alpha = 0``, the end
    of the rectified-flow path, a network's noise input is infinite), and the
    network evaluations per sample.

    Used to fit the moments of a posterior once (GAUSS, Gaussian denoising
    covariances of guidance); the moments need a few dozen steps, not the
    accuracy of the final sampler.
    """
    schedule = denoise.schedule
    grid = schedule.sampling_grid(int(steps), device=device)
    grid = torch.clamp(grid, max=alpha_floor_time(schedule))
    result = sample_from_noise(
        get_sampler(sampler),
        denoise,
        schedule,
        shape,
        generator,
        device,
        steps=steps,
        time_grid=grid,
    )
    evaluations = result.nfe * network_evaluations_per_call(denoise)
    return result.samples, evaluations


class TrialMoments(NamedTuple):
    """Moments of samples of each single-trial posterior (standardised space).

    Attributes:
        covariances: ``(N, d, d)``.
        means: ``(N, d)``.
        evaluations: network evaluations spent drawing the samples (in total).
    """

    covariances: Tensor
    means: Tensor
    evaluations: float


def estimate_trial_moments(
    estimator: Any,
    embeddings: Tensor,
    num_samples: int = 1000,
    sampler: str = "heun",
    steps: int = 30,
    generator: torch.Generator | None = None,
    max_rows: int = 100_000,
    network_rows: int | None = None,
    show_progress_bars: bool = False,
) -> TrialMoments:
    """Covariances and means of samples from each single-trial posterior
    ``p(theta | x_i)`` (standardised space), for GAUSS (Linhart et al. 2024).

    Args:
        estimator: the denoiser; uses its ``theta_dim``, ``schedule`` and
            ``denoise_embedded`` (through
            :class:`~sbi_diffusion.model.ConditionedDenoiser`).
        embeddings: embedded observations ``(N, e)``.
        num_samples: samples per trial.
        sampler, steps: the fixed-grid sampler that draws them (its grid starts
            where ``alpha >= 1e-4``).
        generator: random generator.
        max_rows: rows integrated at once (trials are chunked).
        network_rows: rows per network call within those (all at once if None;
            :func:`~sbi_diffusion.model.default_network_rows` is the
            composition's default).
        show_progress_bars: show progress over chunks of trials.
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2, got {num_samples}.")
    n_trials, d = embeddings.shape[0], int(estimator.theta_dim)
    per_chunk = max(1, max_rows // num_samples)
    covs, means, evaluations = [], [], 0.0
    chunks = torch.arange(n_trials).split(per_chunk)
    for chunk in tqdm(
        chunks,
        disable=not show_progress_bars,
        desc="GAUSS: single-trial covariances",
        leave=False,
    ):
        rows = chunk.numel() * num_samples
        s, per_sample = sample_on_fixed_grid(
            ConditionedDenoiser(
                estimator, embeddings[chunk], network_rows, num_samples
            ),
            (rows, d),
            sampler=sampler,
            steps=steps,
            generator=generator,
            device=embeddings.device,
        )
        evaluations += per_sample * rows
        s = s.reshape(chunk.numel(), num_samples, d)
        means.append(s.mean(1))
        s = s - s.mean(1, keepdim=True)
        covs.append(s.transpose(1, 2) @ s / (num_samples - 1))
    cov = torch.cat(covs)
    cov = symmetrize(cov) + 1e-6 * eye_like(d, cov)
    return TrialMoments(cov, torch.cat(means), evaluations)


def at_least_prior_precision(covariances: Tensor, prior_cov: Tensor) -> Tensor:
    r"""Single-trial posterior covariances whose precisions are at least the
    prior's.

    GAUSS treats each trial's likelihood as the Gaussian factor
    ``p(theta | x_i) / p(theta)``, whose precision ``Sigma_i^{-1} - Sigma_0^{-1}``
    (``Sigma_0`` the prior covariance) must be positive semi-definite. A
    posterior that is not Gaussian can be wider than the prior along some
    direction (two_moons: two modes near the ends of the prior along
    ``theta_1 + theta_2``), and then the composed precision
    ``sum_i Sigma_i^{-1} - (N - 1) Sigma_0^{-1}`` is indefinite for large ``N``
    and the composed denoiser diverges. The likelihood precisions are therefore
    projected onto the positive semi-definite cone:

    .. math::
        \Sigma_i \leftarrow \big(\Sigma_0^{-1}
        + [\Sigma_i^{-1} - \Sigma_0^{-1}]_+\big)^{-1},

    with ``[A]_+`` the matrix with the negative eigenvalues of ``A`` set to 0.
    Covariances already no wider than the prior are unchanged.

    Args:
        covariances: ``(N, d, d)`` single-trial posterior covariances.
        prior_cov: ``(d, d)`` prior covariance (same space).

    Returns:
        ``(N, d, d)`` covariances, float32.
    """
    prior_precision = torch.linalg.inv(symmetrize(prior_cov).double())
    precisions = inverse_clamped(covariances.double(), 1e-12)
    vals, vecs, _ = clamp_eigenvalues(precisions - prior_precision, 0.0)
    likelihood = (vecs * vals[..., None, :]) @ vecs.transpose(-1, -2)
    return torch.linalg.inv(symmetrize(prior_precision + likelihood)).float()


def unbiased_precision_factor(num_samples: int, dim: int) -> float:
    r"""Factor that makes the inverse of a sample covariance an unbiased
    precision estimate.

    For ``n`` Gaussian samples in ``d`` dimensions the sample covariance ``S``
    (divided by ``n - 1``) has ``E[S^{-1}] = (n - 1) / (n - d - 2) Sigma^{-1}``
    (the mean of an inverse Wishart; Anderson 2003, Sec. 7.2; Hartlap et al.
    2007), so

    .. math::
        \hat P = \frac{n - d - 2}{n - 1} S^{-1}

    is unbiased. GAUSS sums ``N`` such precisions and subtracts ``N - 1`` prior
    precisions, which multiplies a common relative bias by about ``N``-fold the
    ratio of single-trial to composed precision (measurements in
    ``benchmarks/iid/README.md``, "Evidence behind defaults").

    Raises:
        ValueError: if ``num_samples <= dim + 2`` (no unbiased estimate exists).
    """
    if num_samples <= dim + 2:
        raise ValueError(
            f"GAUSS estimates each single-trial covariance from covariance_samples "
            f"= {num_samples} samples, which must exceed theta's dimension + 2 = "
            f"{dim + 2}; pass more covariance_samples (e.g. {max(200, 5 * dim)})."
        )
    return (num_samples - dim - 2) / (num_samples - 1)
