r"""Posteriors for many i.i.d. trials composed from a single-trial score model.

For ``N`` i.i.d. observations ``x_1, ..., x_N`` Bayes' rule gives

.. math::
    p(\theta \mid x_{1:N}) \propto p(\theta)^{1 - N}
    \prod_{i=1}^N p(\theta \mid x_i),

so a model of the single-trial posterior ``p(theta | x)`` and the prior define
the ``N``-trial posterior without retraining (Geffner et al. 2023,
"Compositional Score Modeling for Simulation-Based Inference"). The diffused
(noisy) ``N``-trial posterior does not factorise like this, and the methods here
differ in how they correct for it. All of them work on denoisers: every factor
``k`` (the ``N`` single-trial posteriors and the prior, with weights
``w_k = 1`` and ``w_prior = 1 - N``) gives ``x_hat_k(z, t) = E_k[theta_0 | z_t]``
in standardised space, and with denoising precisions
``P_k = Cov_k[theta_0 | z_t]^{-1}`` the composed estimate is

.. math::
    \Lambda = \sum_k w_k P_k, \qquad
    \hat x(z, t) = \Lambda^{-1} \sum_k w_k P_k \hat x_k(z, t).

Because ``sum_k w_k = 1`` the corresponding score is
``Lambda^{-1} sum_k w_k P_k s_k`` (Tweedie: ``s_k = (alpha x_hat_k - z) /
sigma^2``), the GAUSS/JAC score of Linhart et al. 2024 ("Diffusion posterior
sampling for simulation-based inference in tall data settings", Eq. 12). It is
exact whenever the denoising posteriors ``p_k(theta_0 | z_t)`` are Gaussian,
e.g. for a Gaussian prior and a linear-Gaussian simulator. Methods
(``IID_METHODS``):

``factorized``
    ``P_k = I``: ``x_hat = sum_i x_hat_i + (1 - N) x_hat_prior``, the sum of
    diffused scores (Geffner et al. 2023, Eq. 7, with the diffused prior score).
``factorized_bridge``
    Geffner et al. 2023, Sec. 3.2: the diffused prior score replaced by the
    undiffused one, annealed in time (a bridge of densities),
    ``s = sum_i s_i + (1 - N) lambda(t) grad log p(z)``,
    ``lambda(t) = (t_max - t) / (t_max - t_min)``; meant for stochastic samplers
    with a Langevin corrector (annealed Langevin dynamics).
``gauss``
    GAUSS (Linhart et al. 2024): ``P_i = Sigma_i^{-1} + alpha^2 / sigma^2 I``
    with ``Sigma_i`` the covariance of samples of each single-trial posterior
    (drawn once from the model; its inverse debiased,
    :func:`unbiased_precision_factor`, and at least the prior's precision,
    :func:`at_least_prior_precision`) and ``P_prior = S^{-1} + alpha^2 / sigma^2
    I`` that of the prior's moment-matched Gaussian ``N(m, S)``, the same
    approximation as the trials' (``prior_precision="gaussian"``, GAUSS's
    default; ``"exact"`` takes the exact denoising precision of an analytic
    prior).
``jac``
    JAC (Linhart et al. 2024): ``Cov_k[theta_0 | z_t] = (sigma^2 / alpha)
    d x_hat_k / dz`` (Tweedie's second-order formula) from the Jacobian of the
    network, computed per trial (mini-batched over trials), its eigenvalues
    bounded by those of a target no wider than the prior
    (:func:`precision_from_jacobian`); ``P_prior`` is the analytic prior's exact
    denoising precision by default (``prior_precision="exact"``), since the
    Jacobian precisions change with ``z`` as it does.

The prior's diffused score (:func:`diffused_prior`) is analytic for Gaussian
priors (``N(alpha m, alpha^2 S + sigma^2 I)`` in standardised space) and for
box-uniform priors (a product of truncated normals); otherwise it is the
network's unconditional score (trained with condition dropout) or a
moment-matched Gaussian approximation of the prior.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.distributions import (
    Distribution,
    Independent,
    MultivariateNormal,
    Normal,
    Uniform,
)
from tqdm.auto import tqdm

from sbi_diffusion.model import (
    ConditionedDenoiser,
    default_network_rows,
    denoise_trials_flat,
    expand_trial_rows,
)
from sbi_diffusion.path.schedules import Schedule
from sbi_diffusion.path.vector_field import as_time, score_from_x_hat

__all__ = [
    "IID_METHODS",
    "PRIOR_PRECISIONS",
    "DEFAULT_PRIOR_PRECISION",
    "PRIOR_SCORES",
    "DiffusedPrior",
    "GaussianDiffusedPrior",
    "BoxDiffusedPrior",
    "NetworkDiffusedPrior",
    "diffused_prior",
    "IIDComposedDenoiser",
    "TrialMoments",
    "estimate_trial_moments",
    "sample_on_fixed_grid",
    "unbiased_precision_factor",
    "at_least_prior_precision",
    "denoiser_jacobian",
    "precision_from_jacobian",
    "iid_score",
]

IID_METHODS = ("factorized", "factorized_bridge", "gauss", "jac")
PRIOR_PRECISIONS = ("gaussian", "exact")
DEFAULT_PRIOR_PRECISION = {"gauss": "gaussian", "jac": "exact"}
"""``P_prior`` of each method that weighs the prior by a precision, unless
``prior_precision`` is given (see :class:`IIDComposedDenoiser`)."""
PRIOR_SCORES = ("auto", "analytic", "network", "gaussian")

_ALPHA_FLOOR = 1e-4


def _alpha_floor_time(schedule: Schedule) -> float:
    """Largest time with ``alpha(t) >= 1e-4`` (where a network may be evaluated)."""
    grid = torch.linspace(float(schedule.t_min), float(schedule.t_max), 100_001)
    ok = grid[schedule.alpha(grid) >= _ALPHA_FLOOR]
    return float(ok.max()) if ok.numel() else float(grid[0])


def _alpha_sigma(schedule: Schedule, t: Tensor) -> tuple[Tensor, Tensor]:
    return schedule.alpha(t), schedule.sigma(t)


def _snr(schedule: Schedule, t: Tensor) -> Tensor:
    """``alpha^2 / sigma^2`` per row (``sigma`` floored to stay finite)."""
    alpha, sigma = _alpha_sigma(schedule, t)
    return alpha**2 / torch.clamp(sigma**2, min=1e-12)


def _eye_like(d: int, ref: Tensor) -> Tensor:
    return torch.eye(d, dtype=ref.dtype, device=ref.device)


def _sym(m: Tensor) -> Tensor:
    return 0.5 * (m + m.transpose(-1, -2))


def _symmetric_eigh(m: Tensor) -> tuple[Tensor, Tensor]:
    """Eigen-decomposition of the symmetric part of ``m`` in float64.

    Non-finite entries (a network evaluated where it is unreliable) are set to
    zero, so that direction counts as uninformative downstream; where LAPACK
    fails to converge on an ill-conditioned matrix, the matrices are scaled to
    unit norm and retried with a jitter of ``1e-10``.
    """
    m = _sym(m).double()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    try:
        return torch.linalg.eigh(m)
    except RuntimeError:  # torch.linalg.LinAlgError is a RuntimeError
        scale = m.abs().amax(dim=(-1, -2), keepdim=True).clamp_min(1e-300)
        eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
        vals, vecs = torch.linalg.eigh(m / scale + 1e-10 * eye)
        return vals * scale[..., 0], vecs


def _clamp_eigen(m: Tensor, low: Tensor | float, high: Tensor | float | None = None):
    """Symmetrise ``m`` and clamp its eigenvalues to ``[low, high]`` (float64)."""
    dtype = m.dtype
    vals, vecs = _symmetric_eigh(m)
    low = torch.as_tensor(low, dtype=torch.float64, device=m.device)
    if low.dim() > 0:
        low = low.reshape(low.shape + (1,) * (vals.dim() - low.dim()))
    vals = torch.maximum(vals, low)
    if high is not None:
        high = torch.as_tensor(high, dtype=torch.float64, device=m.device)
        if high.dim() > 0:
            high = high.reshape(high.shape + (1,) * (vals.dim() - high.dim()))
        vals = torch.minimum(vals, high)
    return vals, vecs, dtype


def _inverse_clamped(m: Tensor, low, high=None) -> Tensor:
    """``m^{-1}`` after symmetrising and clamping the eigenvalues of ``m``."""
    vals, vecs, dtype = _clamp_eigen(m, low, high)
    return ((vecs / vals[..., None, :]) @ vecs.transpose(-1, -2)).to(dtype)


# ----------------------------------------------------------------- the prior


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
        snr = _snr(self.schedule, t)[:, None, None]
        return inv + snr * _eye_like(z.shape[1], z)

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
        self.cov = _sym(torch.as_tensor(cov, dtype=torch.float32))
        self._cov64 = self.cov.double()
        self._inv64 = torch.linalg.inv(self._cov64)
        self.description = description

    def __call__(self, z: Tensor, t: Tensor) -> Tensor:
        t = as_time(t, z).double()
        alpha, sigma = _alpha_sigma(self.schedule, t)
        alpha, sigma = alpha[:, None, None], sigma[:, None, None]
        cov, mean = self._cov64.to(z.device), self.mean.double().to(z.device)
        marginal = alpha**2 * cov + sigma**2 * _eye_like(z.shape[1], cov)
        resid = (z.double() - alpha[:, :, 0] * mean)[:, :, None]
        gain = alpha * cov @ torch.linalg.solve(marginal, resid)
        return (mean + gain[:, :, 0]).to(z.dtype)

    def precision(self, z: Tensor, t: Tensor) -> Tensor:
        return self.gaussian_precision(z, t)

    def gaussian_precision(self, z: Tensor, t: Tensor) -> Tensor:
        t = as_time(t, z)
        snr = _snr(self.schedule, t).double()[:, None, None]
        inv = self._inv64.to(z.device)
        return (inv + snr * _eye_like(z.shape[1], inv)).to(z.dtype)

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
        alpha, sigma = _alpha_sigma(self.schedule, t)
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
        safe_alpha = torch.clamp(alpha, min=_ALPHA_FLOOR)
        s = sigma / safe_alpha
        mean = zz / safe_alpha + s * ratio
        var = s**2 * (1.0 + a * pa - b * pb - ratio**2)
        width2 = (high - low) ** 2
        var = torch.clamp(var, min=1e-10 * width2, max=width2 / 12.0)
        small = alpha < _ALPHA_FLOOR
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

    Raises:
        ValueError: if the model was trained without condition dropout.
    """

    evaluations_per_call = 1

    def __init__(self, estimator: Any, mean: Tensor, cov: Tensor):
        self.estimator = estimator
        self.schedule = estimator.schedule
        self._null = estimator.null_condition(1)  # raises without dropout
        self._t_alpha = _alpha_floor_time(self.schedule)
        self.mean, self.cov = mean.reshape(-1), cov
        self.description = "network's unconditional score (condition dropout)"

    def __call__(self, z: Tensor, t: Tensor) -> Tensor:
        t = torch.clamp(as_time(t, z), max=self._t_alpha)
        return self.estimator.denoise_embedded(z, self._null, t)

    def score0(self, z: Tensor) -> Tensor:
        t = torch.full((z.shape[0],), float(self.schedule.t_min), device=z.device)
        t = torch.clamp(t, min=1e-4)
        x_hat = self(z, t)
        alpha, sigma = _alpha_sigma(self.schedule, t)
        return (alpha[:, None] * x_hat - z) / sigma[:, None] ** 2


def _unwrap_prior(prior: Any) -> Any:
    for name in ("prior", "custom_prior"):
        inner = getattr(prior, name, None)
        if isinstance(inner, Distribution):
            return inner
    return prior


def _standardisation(estimator: Any) -> tuple[Tensor, Tensor]:
    # on the CPU, like the prior; the diffused priors move to z's device per call
    shift = estimator._theta_shift.reshape(-1).detach().cpu()
    scale = estimator._theta_scale.reshape(-1).detach().cpu()
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
            z-scoring ``_theta_shift``/``_theta_scale``).
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
    analytic: DiffusedPrior | None = None
    if isinstance(base, MultivariateNormal):
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
            "analytic scores exist for Gaussian and box-uniform priors. Pass "
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


# ---------------------------------------------------------- Jacobians (JAC)


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
    alpha = torch.clamp(alpha, min=_ALPHA_FLOOR)
    ratio = (sigma**2 / alpha)[:, None, None]
    high = (sigma**2 / alpha**2).double()
    if max_variance is not None:
        high = 1.0 / (1.0 / float(max_variance) + 1.0 / high)
    low = 1.0 / (1.0 / float(min_variance) + alpha.double() ** 2 / sigma.double() ** 2)
    low = torch.minimum(low, 0.5 * high)
    vals, vecs = _symmetric_eigh(ratio * jacobian)
    high_, low_ = high[:, None], low[:, None]
    # a non-positive eigenvalue is an error of the learned Jacobian: treat that
    # direction as uninformative (the widest allowed), not as exact
    vals = torch.where(vals > 0, vals, high_.expand_as(vals))
    vals = torch.minimum(torch.maximum(vals, low_), high_)
    inv = (vecs / vals[..., None, :]) @ vecs.transpose(-1, -2)
    return inv.to(jacobian.dtype)


# -------------------------------------------------------------- GAUSS moments


def sample_on_fixed_grid(
    denoise: Any,
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
    from sbi_diffusion.samplers import get_sampler, sample_from_noise

    schedule = denoise.schedule
    grid = schedule.sampling_grid(int(steps), device=device)
    grid = torch.clamp(grid, max=_alpha_floor_time(schedule))
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
    evaluations = result.nfe * float(getattr(denoise, "evaluations_per_call", 1))
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
        estimator: the denoiser.
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
    cov = _sym(cov) + 1e-6 * _eye_like(d, cov)
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
    prior_precision = torch.linalg.inv(_sym(prior_cov).double())
    precisions = _inverse_clamped(covariances.double(), 1e-12)
    vals, vecs, _ = _clamp_eigen(precisions - prior_precision, 0.0)
    likelihood = (vecs * vals[..., None, :]) @ vecs.transpose(-1, -2)
    return torch.linalg.inv(_sym(prior_precision + likelihood)).float()


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
    ratio of single-trial to composed precision: with 200 samples in 10
    dimensions the uncorrected bias (+6%) widened the 100-trial posterior by 25%.

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


# ------------------------------------------------------------- composition


class IIDComposedDenoiser:
    r"""The ``N``-trial posterior ``p(theta | x_1, ..., x_N)`` as a ``DenoiseFn``.

    See the module docstring for the methods and their equations. The composed
    denoiser works in the estimator's standardised space, so every sampler of
    :mod:`sbi_diffusion.samplers` takes it.

    Args:
        estimator: the single-trial denoiser; needs ``schedule``, ``theta_dim``,
            ``embed_condition(x)`` and ``denoise_embedded(z, embedding, t)``.
        x: the trials ``(N, *x_shape)``.
        prior: the diffused prior (:func:`diffused_prior`).
        method: one of ``IID_METHODS``.
        trial_covariances: ``(N, d, d)`` or ``(d, d)`` single-trial posterior
            covariances in standardised space for ``gauss``, taken as exact;
            estimated with :func:`estimate_trial_moments` if None, and then
            inverted without bias (:func:`unbiased_precision`).
        covariance_samples, covariance_sampler, covariance_steps: options of that
            estimate (``covariance_samples`` must exceed ``d + 2``).
        max_rows: largest number of rows ``batch x trials`` held at once
            (trials are mini-batched).
        network_rows: rows per network call within those; None:
            :func:`~sbi_diffusion.model.default_network_rows` of the device of
            ``x`` (pieces of 4096 rows on a CPU, one call on an accelerator).
        bridge_weight: ``lambda(t)`` of ``factorized_bridge``.
        trial_means: ``(N, d)`` single-trial posterior means (standardised) for
            the Gaussian surrogate of ``gauss``; estimated with the covariances.
        gaussian_high_noise: for ``gauss``, blend each trial's denoiser with its
            Gaussian surrogate where the noise is wide (see
            :meth:`_blend_surrogate`).
        prior_precision: for ``gauss`` and ``jac``, the prior's denoising
            precision ``P_prior``: ``"gaussian"`` (that of the moment-matched
            Gaussian prior; see :meth:`_gauss`) or ``"exact"`` (the analytic
            prior's own, where it has one; else the Gaussian one). None: the
            method's default (``DEFAULT_PRIOR_PRECISION``: ``"gaussian"`` for
            ``gauss``, whose trial precisions are Gaussian too, ``"exact"`` for
            ``jac``).
        generator: random generator (covariance estimate).
        show_progress_bars: progress of the covariance estimate.

    Attributes:
        evaluations_per_call: network evaluations per call (for NFE reports).
        setup_evaluations: network evaluations spent before sampling (the
            single-trial samples of ``gauss``), in total.
    """

    def __init__(
        self,
        estimator: Any,
        x: Tensor,
        prior: DiffusedPrior,
        method: str = "gauss",
        trial_covariances: Tensor | None = None,
        covariance_samples: int = 1000,
        covariance_sampler: str = "heun",
        covariance_steps: int = 30,
        max_rows: int = 100_000,
        network_rows: int | None = None,
        bridge_weight: Callable[[Tensor], Tensor] | None = None,
        trial_means: Tensor | None = None,
        gaussian_high_noise: bool = True,
        prior_precision: str | None = None,
        generator: torch.Generator | None = None,
        show_progress_bars: bool = False,
    ):
        if method not in IID_METHODS:
            raise ValueError(
                f"Unknown iid_method {method!r}. Pass one of {IID_METHODS}."
            )
        if prior_precision is None:
            prior_precision = DEFAULT_PRIOR_PRECISION.get(method, "gaussian")
        if prior_precision not in PRIOR_PRECISIONS:
            raise ValueError(
                f"Unknown prior_precision {prior_precision!r}. Pass one of "
                f"{PRIOR_PRECISIONS}."
            )
        self.estimator = estimator
        self.schedule = estimator.schedule
        self.prior_precision = prior_precision
        self.prior = prior
        self.method = method
        self.max_rows = int(max_rows)
        self.d = int(estimator.theta_dim)
        with torch.no_grad():
            self.embeddings = estimator.embed_condition(x).detach()
        if network_rows is None:
            network_rows = default_network_rows(self.embeddings.device)
        self.network_rows = network_rows
        self.num_trials = self.embeddings.shape[0]
        t_min, t_max = float(self.schedule.t_min), float(self.schedule.t_max)
        self.bridge_weight = bridge_weight or (
            lambda t: (t_max - t) / max(t_max - t_min, 1e-12)
        )
        self.trial_precisions: Tensor | None = None
        self.setup_evaluations = 0.0
        self._surrogate: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
        if method == "gauss":
            precision_factor = 1.0
            if trial_covariances is None:
                precision_factor = unbiased_precision_factor(covariance_samples, self.d)
                moments = estimate_trial_moments(
                    estimator,
                    self.embeddings,
                    num_samples=covariance_samples,
                    sampler=covariance_sampler,
                    steps=covariance_steps,
                    generator=generator,
                    max_rows=max_rows,
                    network_rows=network_rows,
                    show_progress_bars=show_progress_bars,
                )
                trial_covariances = moments.covariances
                trial_means = moments.means if trial_means is None else trial_means
                self.setup_evaluations = moments.evaluations
            cov = torch.as_tensor(trial_covariances, dtype=torch.float32)
            cov = cov.to(self.embeddings.device)
            if cov.shape == (self.d, self.d):
                cov = cov.expand(self.num_trials, self.d, self.d)
            if cov.shape != (self.num_trials, self.d, self.d):
                raise ValueError(
                    f"trial_covariances has shape {tuple(cov.shape)}; pass "
                    f"({self.num_trials}, {self.d}, {self.d}) or ({self.d}, {self.d})."
                )
            # the surrogate below uses the same (inflated, at most prior-wide)
            # covariance, so that at high noise each trial enters with the
            # precision used here
            cov = cov / precision_factor
            cov = at_least_prior_precision(cov, prior.cov.to(cov.device))
            self.trial_precisions = _inverse_clamped(cov, 1e-8)
            self._precision_sum = self.trial_precisions.sum(0)
            if gaussian_high_noise and trial_means is not None:
                means = torch.as_tensor(trial_means, dtype=torch.float32)
                means = means.to(cov.device).reshape(self.num_trials, self.d)
                vals, vecs = torch.linalg.eigh(cov.double())
                vals = torch.clamp(vals, min=1e-10)
                vals = vals.float()
                self._surrogate = (means, vals, vecs.float(), vals.mean(-1))
        self._t_alpha = _alpha_floor_time(self.schedule)
        prior_variances = torch.linalg.eigvalsh(prior.cov.double())
        self._prior_max_variance = float(prior_variances.max())
        # single-trial posteriors at most 1000 times more precise than the prior
        self._min_variance = 1e-3 * float(prior_variances.min())
        evals = self.num_trials * (1 + (self.d if method == "jac" else 0))
        self.evaluations_per_call = evals + prior.evaluations_per_call

    # ------------------------------------------------------------- helpers

    def _trial_chunks(self, batch: int):
        per = max(1, self.max_rows // max(batch, 1))
        return torch.arange(self.num_trials, device=self.embeddings.device).split(per)

    def trial_denoise(self, z: Tensor, t: Tensor, chunk: Tensor) -> Tensor:
        """``x_hat_i(z, t)`` for the trials in ``chunk``: ``(batch, n, d)``.

        The network is evaluated at ``min(t, t_alpha)``, where ``alpha(t_alpha)
        = 1e-4``: at ``alpha = 0`` (the end of the rectified-flow path) its noise
        input is infinite, and ``z`` carries no information there anyway.
        """
        t = torch.clamp(t, max=self._t_alpha)
        embeddings = self.embeddings[chunk]
        if hasattr(self.estimator, "denoise_trials"):
            return self.estimator.denoise_trials(z, embeddings, t, self.network_rows)
        return denoise_trials_flat(
            self.estimator.denoise_embedded, z, embeddings, t, self.network_rows
        )

    # ---------------------------------------------------------------- call

    def __call__(self, z: Tensor, t: Tensor) -> Tensor:
        t = as_time(t, z)
        if self.method == "factorized_bridge":
            # an annealed bridge of densities, not a posterior mean: not clamped
            return self._bridge(z, t)
        if self.method == "factorized":
            x_hat = self._factorized(z, t)
        elif self.method == "gauss":
            x_hat = self._gauss(z, t)
        else:
            x_hat = self._jac(z, t)
        return self._inside_support(x_hat)

    def _inside_support(self, x_hat: Tensor) -> Tensor:
        r"""Project ``x_hat`` onto the box of a bounded prior.

        The ``N``-trial posterior lives inside the prior's support, so its
        denoiser ``E[theta_0 | z_t]`` lies in the support's convex hull; for a
        box prior ``low <= x_hat <= high`` holds exactly and the composed
        estimate is clamped to it. The composition weighs ``N`` single-trial
        estimates against ``N - 1`` prior ones; where the trials' posteriors
        are far from Gaussian these nearly cancel, their errors do not, and the
        composed estimate can leave the box and diverge (on two_moons at 100
        trials ``x_hat`` reached ``1e9`` around ``t = 0.35`` and every sample
        was NaN).
        """
        if self.prior.bounds is None:
            return x_hat
        low, high = (b.to(x_hat) for b in self.prior.bounds)
        return torch.minimum(torch.maximum(x_hat, low), high)

    def _sum_trials(self, z: Tensor, t: Tensor) -> Tensor:
        total = torch.zeros_like(z)
        for chunk in self._trial_chunks(z.shape[0]):
            total = total + self.trial_denoise(z, t, chunk).sum(1)
        return total

    def _factorized(self, z: Tensor, t: Tensor) -> Tensor:
        return self._sum_trials(z, t) + (1 - self.num_trials) * self.prior(z, t)

    def _bridge(self, z: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = _alpha_sigma(self.schedule, t)
        alpha, sigma = alpha[:, None], sigma[:, None]
        n = self.num_trials
        score = (alpha * self._sum_trials(z, t) - n * z) / sigma**2
        weight = torch.as_tensor(self.bridge_weight(t)).to(z)
        weight = weight.reshape(-1, 1) if weight.dim() else weight
        score = score + (1 - n) * weight * self.prior.score0(z)
        alpha_safe = torch.clamp(alpha, min=_ALPHA_FLOOR)
        return (z + sigma**2 * score) / alpha_safe

    def _prior_precision(self, z: Tensor, t: Tensor) -> Tensor:
        """``P_prior`` as ``prior_precision`` selects (exact where available)."""
        if self.prior_precision == "gaussian":
            return self.prior.gaussian_precision(z, t)
        exact = self.prior.precision(z, t)
        return exact if exact is not None else self.prior.gaussian_precision(z, t)

    def _finish(self, z, t, numerator, lam) -> Tensor:
        # the N-trial posterior is at least as precise as the widest prior
        # direction: Lambda >= 1 / v_max + alpha^2 / sigma^2
        snr = _snr(self.schedule, t).double()
        vals, vecs, _ = _clamp_eigen(lam, snr + 1.0 / self._prior_max_variance)
        rhs = (vecs.transpose(-1, -2) @ numerator.double()[:, :, None]) / vals[
            ..., None
        ]
        return (vecs @ rhs)[:, :, 0].to(z.dtype)

    def _blend_surrogate(
        self, z: Tensor, t: Tensor, chunk: Tensor, x_hat: Tensor
    ) -> Tensor:
        r"""Blend the network's ``x_hat_i`` with that of the Gaussian surrogate
        ``N(m_i, Sigma_i)`` of the single-trial posterior (its sample moments):

        .. math::
            \hat x_i \leftarrow (1 - \lambda_i) \hat x_i
            + \lambda_i \hat x_i^{G}, \qquad
            \lambda_i = \frac{\sigma^2}{\sigma^2 + \alpha^2 \bar v_i},

        with ``v_i`` the mean variance of ``Sigma_i``. Where the noise is wider
        than the single-trial posterior the denoiser is nearly the posterior mean
        plus a linear term, which the surrogate gives exactly, while a network
        trained with little weight there is often off; the composition adds up
        ``N`` such errors. Where the noise is narrow the network is used.
        """
        means, vals, vecs, mean_var = (v[chunk] for v in self._surrogate)
        alpha, sigma = _alpha_sigma(self.schedule, t)
        a, s2 = alpha[:, None, None], (sigma**2)[:, None, None]
        resid = z[:, None, :] - a * means[None]
        coords = torch.einsum("nde,bnd->bne", vecs, resid)
        gain = a * vals[None] / (a**2 * vals[None] + s2)
        x_gauss = means[None] + torch.einsum("nde,bne->bnd", vecs, gain * coords)
        lam = s2 / (s2 + a**2 * mean_var[None, :, None])
        return (1 - lam) * x_hat + lam * x_gauss

    def _gauss(self, z: Tensor, t: Tensor) -> Tensor:
        r"""GAUSS (Linhart et al. 2024, Eq. 12):

        .. math::
            \hat x = \Lambda^{-1}\Big[\sum_i P_i \hat x_i
            + (1 - N) P_0 \hat x_0\Big], \qquad
            \Lambda = \sum_i P_i + (1 - N) P_0,

        with ``P_i = Sigma_i^{-1} + alpha^2 / sigma^2 I``. The trials' ``P_i`` are
        those of Gaussian approximations of their posteriors and do not depend on
        ``z``; by default (``prior_precision="gaussian"``) the prior's ``P_0`` is
        that of its moment-matched Gaussian too. The exact ``P_0`` of a box prior
        grows near the box's edge (there ``theta_0 | z_t`` is a one-sided
        truncated normal, up to ``1 / (1 - 2 / pi)`` times more precise), while the
        trials' stay fixed: where the ``N``-trial posterior lies at the edge,
        ``(N - 1) P_0`` then outweighs ``sum_i P_i``, ``Lambda`` is clamped, and the
        composed mean is pulled off the edge (two_moons, 10 trials, observation 5:
        C2ST .93 with the exact ``P_0``, .81 with the Gaussian one).
        """
        snr = _snr(self.schedule, t)
        eye = _eye_like(self.d, z)
        numerator = torch.zeros_like(z)
        for chunk in self._trial_chunks(z.shape[0]):
            x_hat = self.trial_denoise(z, t, chunk)
            if self._surrogate is not None:
                x_hat = self._blend_surrogate(z, t, chunk, x_hat)
            prec = self.trial_precisions[chunk]
            numerator = numerator + torch.einsum("nde,bne->bd", prec, x_hat)
            numerator = numerator + snr[:, None] * x_hat.sum(1)
        lam = self._precision_sum + self.num_trials * snr[:, None, None] * eye
        p_prec = self._prior_precision(z, t)
        w = 1 - self.num_trials
        numerator = numerator + w * (p_prec @ self.prior(z, t)[:, :, None])[:, :, 0]
        return self._finish(z, t, numerator, lam + w * p_prec)

    def _jac(self, z: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = _alpha_sigma(self.schedule, t)
        numerator = torch.zeros_like(z)
        lam = torch.zeros(z.shape[0], self.d, self.d, dtype=z.dtype, device=z.device)
        for chunk in self._trial_chunks(z.shape[0] * (self.d + 1)):
            n = chunk.numel()
            zz, ee, tt = expand_trial_rows(
                z, self.embeddings[chunk], torch.clamp(t, max=self._t_alpha)
            )

            def fn(zi, ti, ee=ee):
                return self.estimator.denoise_embedded(zi, ee, ti)

            x_hat, jac = denoiser_jacobian(fn, zz, tt)
            prec = precision_from_jacobian(
                jac,
                alpha.repeat_interleave(n),
                sigma.repeat_interleave(n),
                min_variance=self._min_variance,
                max_variance=self._prior_max_variance,
            )
            x_hat = x_hat.reshape(z.shape[0], n, self.d)
            prec = prec.reshape(z.shape[0], n, self.d, self.d)
            numerator = numerator + torch.einsum("bnde,bne->bd", prec, x_hat)
            lam = lam + prec.sum(1)
        # the prior's precision is analytic, or that of its moments (as in GAUSS):
        # a learned unconditional Jacobian is too noisy for the (1 - N) weight
        p_prec = self._prior_precision(z, t)
        p_x_hat = self.prior(z, t)
        w = 1 - self.num_trials
        numerator = numerator + w * (p_prec @ p_x_hat[:, :, None])[:, :, 0]
        return self._finish(z, t, numerator, lam + w * p_prec)


def iid_score(denoise: IIDComposedDenoiser, z: Tensor, t: Tensor) -> Tensor:
    """The composed score ``(alpha x_hat - z) / sigma^2`` (for inspection)."""
    return score_from_x_hat(denoise.schedule, z, t, denoise(z, t))


def warn_if_bridge_without_noise(method: str, sampler: str, options: dict) -> None:
    """Warn when ``factorized_bridge`` runs on a sampler that injects no noise.

    The bridge anneals the undiffused prior score in time (Geffner et al. 2023,
    Sec. 3.2): its scores are not those of one diffusion process, so only a
    stochastic sampler (or a Langevin corrector) mixes towards the target; the
    probability-flow ODE of these scores is biased (on two_moons with 10 trials
    ``dopri5`` gave a C2ST of 1.0, Euler-Maruyama with 500 steps 0.87).
    """
    if method != "factorized_bridge":
        return
    from sbi_diffusion.samplers import get_sampler, runs_deterministically

    if runs_deterministically(get_sampler(sampler), options):
        warnings.warn(
            f"iid_method='factorized_bridge' anneals the prior score in time and "
            f"needs a stochastic sampler; with the deterministic sampler "
            f"{sampler!r} the samples are biased. Pass sampler='euler_maruyama' "
            "(e.g. steps=500), sampler='adaptive_sde', or corrector='langevin'.",
            UserWarning,
            stacklevel=3,
        )
