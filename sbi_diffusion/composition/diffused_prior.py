r"""The training prior as a denoiser on the model's Gaussian path.

Every composition and several guidance transforms need the diffused prior's
``x_hat(z, t) = E[theta_0 | z_t]`` (and its denoising precision
``Cov[theta_0 | z_t]^{-1}``) in the estimator's standardised space, with
``z_t = alpha theta_0 + sigma eps``. It is analytic for Gaussian priors
(``z_t ~ N(alpha m, alpha^2 S + sigma^2 I)``) and for box-uniform priors (a
product of truncated normals); otherwise it is the network's unconditional
estimate (trained with condition dropout; Ho & Salimans 2022) or that of a
moment-matched Gaussian approximation of the prior.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.distributions import (
    Distribution,
    Independent,
    MultivariateNormal,
    Normal,
    Uniform,
)
from torch.distributions.transforms import identity_transform

from sbi_diffusion.composition.linalg import eye_like, symmetrize
from sbi_diffusion.composition.path import (
    ALPHA_FLOOR,
    alpha_floor_time,
    alpha_sigma,
    signal_to_noise,
)
from sbi_diffusion.model.theta_transform import is_identity, pushforward
from sbi_diffusion.path.schedules import Schedule
from sbi_diffusion.path.vector_field import as_time

__all__ = [
    "PRIOR_SCORES",
    "DiffusedPrior",
    "GaussianDiffusedPrior",
    "BoxDiffusedPrior",
    "NetworkDiffusedPrior",
    "diffused_prior",
]

PRIOR_SCORES = ("auto", "analytic", "network", "gaussian")
"""The choices of ``prior_score`` in :func:`diffused_prior`."""


class DiffusedPrior:
    r"""The prior as a denoiser: ``x_hat(z, t) = E[theta_0 | z_t]`` in standardised
    space, where ``z_t = alpha theta_0 + sigma eps`` and ``theta_0`` follows the
    standardised prior.

    Attributes:
        schedule: the Gaussian path of the model.
        description: which prior score is used (for reports and warnings).
        evaluations_per_call: network evaluations per call (0 if analytic).
        mean, cov: mean ``(d,)`` and covariance ``(d, d)`` of the standardised
            prior (exact or estimated), for Gaussian approximations.
        bounds: ``(low, high)``, each ``(d,)``, of a bounded support (standardised),
            or None.
    """

    schedule: Schedule
    description: str = "prior"
    evaluations_per_call: int = 0
    mean: Tensor
    cov: Tensor
    bounds: tuple[Tensor, Tensor] | None = None

    def __call__(self, z: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def precision(self, z: Tensor, t: Tensor) -> Tensor | None:
        """Exact denoising precision ``Cov[theta_0 | z_t]^{-1}`` ``(batch, d, d)``,
        or None when it is not known in closed form."""
        return None

    def gaussian_precision(self, z: Tensor, t: Tensor) -> Tensor:
        r"""Denoising precision of the moment-matched Gaussian prior,
        ``cov^{-1} + alpha^2 / sigma^2 I`` (Linhart et al. 2024, GAUSS)."""
        t = as_time(t, z)
        inv = torch.linalg.inv(self.cov.double()).to(z)
        snr = signal_to_noise(self.schedule, t)[:, None, None]
        return inv + snr * eye_like(z.shape[1], z)

    def score0(self, z: Tensor) -> Tensor:
        """Score ``grad log p(theta_z)`` of the undiffused standardised prior."""
        raise NotImplementedError


class GaussianDiffusedPrior(DiffusedPrior):
    r"""A Gaussian prior ``N(m, S)`` (standardised space), diffused exactly:

    .. math::
        z_t \sim N(\alpha m, \alpha^2 S + \sigma^2 I), \quad
        \hat x = m + \alpha S (\alpha^2 S + \sigma^2 I)^{-1} (z - \alpha m), \quad
        \mathrm{Cov}[\theta_0 \mid z_t]^{-1} = S^{-1} + \frac{\alpha^2}{\sigma^2} I.

    Args:
        schedule: the path.
        mean: ``(d,)``.
        cov: ``(d, d)``.
        description: what this prior is (analytic or an approximation).
    """

    def __init__(
        self,
        schedule: Schedule,
        mean: Tensor,
        cov: Tensor,
        description: str = "analytic Gaussian prior",
    ):
        self.schedule = schedule
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        self.cov = symmetrize(torch.as_tensor(cov, dtype=torch.float32))
        self._cov64 = self.cov.double()
        self._inv64 = torch.linalg.inv(self._cov64)
        self.description = description

    def __call__(self, z: Tensor, t: Tensor) -> Tensor:
        t = as_time(t, z).double()
        alpha, sigma = alpha_sigma(self.schedule, t)
        alpha, sigma = alpha[:, None, None], sigma[:, None, None]
        cov, mean = self._cov64.to(z.device), self.mean.double().to(z.device)
        marginal = alpha**2 * cov + sigma**2 * eye_like(z.shape[1], cov)
        resid = (z.double() - alpha[:, :, 0] * mean)[:, :, None]
        gain = alpha * cov @ torch.linalg.solve(marginal, resid)
        return (mean + gain[:, :, 0]).to(z.dtype)

    def precision(self, z: Tensor, t: Tensor) -> Tensor:
        return self.gaussian_precision(z, t)

    def gaussian_precision(self, z: Tensor, t: Tensor) -> Tensor:
        t = as_time(t, z)
        snr = signal_to_noise(self.schedule, t).double()[:, None, None]
        inv = self._inv64.to(z.device)
        return (inv + snr * eye_like(z.shape[1], inv)).to(z.dtype)

    def score0(self, z: Tensor) -> Tensor:
        inv = self._inv64.to(z.device)
        return -((z.double() - self.mean.double().to(z.device)) @ inv).to(z.dtype)


def _log_diff_ndtr(lo: Tensor, hi: Tensor) -> Tensor:
    """``log(Phi(hi) - Phi(lo))`` for ``lo < hi``, accurate in both tails."""
    flip = (lo + hi) > 0
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    log_b = torch.special.log_ndtr(b)
    log_a = torch.special.log_ndtr(a)
    return log_b + torch.log1p(-torch.exp(torch.clamp(log_a - log_b, max=-1e-12)))


class BoxDiffusedPrior(DiffusedPrior):
    r"""A box-uniform prior on ``[low, high]`` (standardised space), diffused
    exactly. Per coordinate, ``theta_0 | z_t`` is ``N(z / alpha, sigma^2 /
    alpha^2)`` truncated to ``[low, high]``; with ``a = (alpha low - z) / sigma``,
    ``b = (alpha high - z) / sigma``, ``Z = Phi(b) - Phi(a)``:

    .. math::
        \hat x = \frac{z}{\alpha} + \frac{\sigma}{\alpha}
        \frac{\phi(a) - \phi(b)}{Z}, \qquad
        \mathrm{Var} = \frac{\sigma^2}{\alpha^2}\left[1
        + \frac{a\phi(a) - b\phi(b)}{Z}
        - \left(\frac{\phi(a) - \phi(b)}{Z}\right)^2\right]

    (the moments of the truncated normal; Johnson, Kotz & Balakrishnan 1994).
    Where ``alpha`` vanishes the mean is the centre of the box.
    """

    def __init__(self, schedule: Schedule, low: Tensor, high: Tensor):
        self.schedule = schedule
        self.low = torch.as_tensor(low, dtype=torch.float32).reshape(-1)
        self.high = torch.as_tensor(high, dtype=torch.float32).reshape(-1)
        self.mean = 0.5 * (self.low + self.high)
        self.cov = torch.diag((self.high - self.low) ** 2 / 12.0)
        self.bounds = (self.low, self.high)
        self.description = "analytic box-uniform prior"

    def _moments(self, z: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        t = as_time(t, z).double()
        alpha, sigma = alpha_sigma(self.schedule, t)
        alpha, sigma = alpha[:, None], torch.clamp(sigma[:, None], min=1e-12)
        zz = z.double()
        low, high = self.low.double().to(z.device), self.high.double().to(z.device)
        a = (alpha * low - zz) / sigma
        b = (alpha * high - zz) / sigma
        log_z = _log_diff_ndtr(a, b)
        log_phi_a = -0.5 * a**2 - 0.5 * math.log(2 * math.pi)
        log_phi_b = -0.5 * b**2 - 0.5 * math.log(2 * math.pi)
        pa, pb = torch.exp(log_phi_a - log_z), torch.exp(log_phi_b - log_z)
        ratio = pa - pb
        safe_alpha = torch.clamp(alpha, min=ALPHA_FLOOR)
        s = sigma / safe_alpha
        mean = zz / safe_alpha + s * ratio
        var = s**2 * (1.0 + a * pa - b * pb - ratio**2)
        width2 = (high - low) ** 2
        var = torch.clamp(var, min=1e-10 * width2, max=width2 / 12.0)
        small = alpha < ALPHA_FLOOR
        mean = torch.where(small, 0.5 * (low + high), mean)
        mean = torch.minimum(torch.maximum(mean, low), high)
        var = torch.where(small, width2 / 12.0, var)
        return mean.to(z.dtype), var.to(z.dtype)

    def __call__(self, z: Tensor, t: Tensor) -> Tensor:
        return self._moments(z, t)[0]

    def precision(self, z: Tensor, t: Tensor) -> Tensor:
        return torch.diag_embed(1.0 / self._moments(z, t)[1])

    def score0(self, z: Tensor) -> Tensor:
        return torch.zeros_like(z)


class NetworkDiffusedPrior(DiffusedPrior):
    """The network's unconditional estimate ``x_hat(z, t | null)``, learned with
    condition dropout (Ho & Salimans 2022). ``mean``/``cov`` are the moments of the
    prior (used where a precision is needed).

    Args:
        estimator: the denoiser; uses its ``schedule``, ``null_condition(batch)``
            and ``denoise_embedded(z, embedding, t)``.
        mean: ``(d,)`` mean of the standardised prior.
        cov: ``(d, d)`` covariance of the standardised prior.

    Raises:
        ValueError: if the model was trained without condition dropout.
    """

    evaluations_per_call = 1

    def __init__(self, estimator: Any, mean: Tensor, cov: Tensor):
        self.estimator = estimator
        self.schedule = estimator.schedule
        self._null = estimator.null_condition(1)  # raises without dropout
        self._t_alpha = alpha_floor_time(self.schedule)
        self.mean, self.cov = mean.reshape(-1), cov
        self.description = "network's unconditional score (condition dropout)"

    def __call__(self, z: Tensor, t: Tensor) -> Tensor:
        t = torch.clamp(as_time(t, z), max=self._t_alpha)
        return self.estimator.denoise_embedded(z, self._null, t)

    def score0(self, z: Tensor) -> Tensor:
        t = torch.full((z.shape[0],), float(self.schedule.t_min), device=z.device)
        t = torch.clamp(t, min=1e-4)
        x_hat = self(z, t)
        alpha, sigma = alpha_sigma(self.schedule, t)
        return (alpha[:, None] * x_hat - z) / sigma[:, None] ** 2


def _unwrap_prior(prior: Any) -> Any:
    """The torch ``Distribution`` inside sbi's prior wrappers (their ``prior`` or
    ``custom_prior``), or ``prior`` itself."""
    for name in ("prior", "custom_prior"):
        inner = getattr(prior, name, None)
        if isinstance(inner, Distribution):
            return inner
    return prior


def _standardisation(estimator: Any) -> tuple[Tensor, Tensor]:
    """Shift and scale ``(d,)`` of ``theta = shift + scale z``."""
    # on the CPU, like the prior; the diffused priors move to z's device per call
    shift = estimator.theta_shift.reshape(-1).detach().cpu()
    scale = estimator.theta_scale.reshape(-1).detach().cpu()
    d = int(estimator.theta_dim)
    return shift.expand(d).clone(), scale.expand(d).clone()


def _prior_moments(prior: Any, d: int, num_samples: int) -> tuple[Tensor, Tensor]:
    """Mean and covariance of ``prior`` (exact where available, else sampled)."""
    if isinstance(prior, MultivariateNormal):
        return prior.mean.reshape(-1), prior.covariance_matrix
    try:
        mean, var = prior.mean.reshape(-1), prior.variance.reshape(-1)
        if mean.numel() == d and torch.isfinite(var).all():
            return mean, torch.diag(var)
    except (NotImplementedError, AttributeError):
        pass
    samples = prior.sample((num_samples,)).reshape(num_samples, -1)
    return samples.mean(0), torch.cov(samples.T).reshape(d, d)


def diffused_prior(
    estimator: Any,
    prior: Any,
    prior_score: str = "auto",
    num_moment_samples: int = 10_000,
) -> DiffusedPrior:
    """The prior of ``estimator``'s standardised space as a :class:`DiffusedPrior`.

    Args:
        estimator: the denoiser (its ``schedule``, ``theta_dim`` and the
            z-scoring ``theta_shift``/``theta_scale``; for ``"auto"`` its
            ``condition_dropout``, taken as 0 where it has none, e.g. a joint
            model's conditional view; for ``"network"`` see
            :class:`NetworkDiffusedPrior`).
        prior: the training prior (a torch ``Distribution``).
        prior_score: ``"analytic"`` (Gaussian: ``MultivariateNormal`` or
            independent ``Normal``; box: ``BoxUniform`` / independent ``Uniform``),
            ``"network"`` (the unconditional score of a model trained with
            condition dropout), ``"gaussian"`` (a moment-matched Gaussian
            approximation of the prior) or ``"auto"`` (analytic if possible, else
            network if trained with condition dropout, else gaussian).
        num_moment_samples: prior samples for moments that are not analytic.

    Raises:
        ValueError: for an unknown ``prior_score`` or ``"analytic"`` with a prior
            that has no closed form here.
    """
    if prior_score not in PRIOR_SCORES:
        raise ValueError(
            f"Unknown prior_score {prior_score!r}. Pass one of {PRIOR_SCORES}."
        )
    schedule = estimator.schedule
    d = int(estimator.theta_dim)
    shift, scale = _standardisation(estimator)
    base = _unwrap_prior(prior)
    transform = getattr(estimator, "theta_transform", identity_transform)
    analytic: DiffusedPrior | None = None
    if base is not None and not is_identity(transform):
        # the prior of u = T(theta): no closed form here; moments are sampled
        base = pushforward(base, transform)
    elif isinstance(base, MultivariateNormal):
        mean, cov = base.mean.reshape(-1).cpu(), base.covariance_matrix.cpu()
        analytic = GaussianDiffusedPrior(
            schedule, (mean - shift) / scale, cov / (scale[:, None] * scale[None, :])
        )
    elif isinstance(base, Independent) and isinstance(base.base_dist, Normal):
        mean = base.base_dist.loc.reshape(-1).cpu().expand(d)
        var = base.base_dist.scale.reshape(-1).cpu().expand(d) ** 2
        analytic = GaussianDiffusedPrior(
            schedule, (mean - shift) / scale, torch.diag(var / scale**2)
        )
    elif isinstance(base, Independent) and isinstance(base.base_dist, Uniform):
        low = base.base_dist.low.reshape(-1).cpu().expand(d)
        high = base.base_dist.high.reshape(-1).cpu().expand(d)
        analytic = BoxDiffusedPrior(
            schedule, (low - shift) / scale, (high - shift) / scale
        )
    if prior_score == "analytic" and analytic is None:
        raise ValueError(
            f"No analytic diffused score for a prior of type {type(base).__name__}: "
            "analytic scores exist for Gaussian and box-uniform priors (of a "
            "model trained without a theta_transform). Pass "
            "prior_score='network' (needs condition dropout in training) or "
            "'gaussian' (moment-matched Gaussian approximation)."
        )
    if prior_score in ("auto", "analytic") and analytic is not None:
        return analytic
    if prior is None:
        raise ValueError("A prior is needed for the prior score; pass prior=.")
    mean, cov = (v.cpu() for v in _prior_moments(base, d, num_moment_samples))
    mean_z = (mean.reshape(-1).float() - shift) / scale
    cov_z = cov.float() / (scale[:, None] * scale[None, :])
    if prior_score == "network" or (
        prior_score == "auto" and getattr(estimator, "condition_dropout", 0) > 0
    ):
        return NetworkDiffusedPrior(estimator, mean_z, cov_z)
    return GaussianDiffusedPrior(
        schedule, mean_z, cov_z, description="moment-matched Gaussian approximation"
    )
