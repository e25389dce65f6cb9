r"""The ``N``-trial posterior composed from a single-trial denoiser.

The composed denoiser weighs every factor ``k`` (the ``N`` single-trial
posteriors with ``w_k = 1`` and the diffused prior with ``w_prior = 1 - N``) by
its denoising precision ``P_k = Cov_k[theta_0 | z_t]^{-1}``:

.. math::
    \Lambda = \sum_k w_k P_k, \qquad
    \hat x(z, t) = \Lambda^{-1} \sum_k w_k P_k \hat x_k(z, t)

(Geffner et al. 2023, "Compositional Score Modeling for Simulation-Based
Inference"; Linhart et al. 2024, "Diffusion posterior sampling for
simulation-based inference in tall data settings", Eq. 12). The methods
(``IID_METHODS``) are described in :mod:`sbi_diffusion.composition`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from sbi_diffusion.composition.diffused_prior import DiffusedPrior
from sbi_diffusion.composition.linalg import (
    clamp_eigenvalues,
    eye_like,
    inverse_clamped,
)
from sbi_diffusion.composition.moments import (
    at_least_prior_precision,
    denoiser_jacobian,
    estimate_trial_moments,
    precision_from_jacobian,
    unbiased_precision_factor,
)
from sbi_diffusion.composition.path import (
    ALPHA_FLOOR,
    alpha_floor_time,
    alpha_sigma,
    signal_to_noise,
)
from sbi_diffusion.model import (
    default_network_rows,
    denoise_trials_flat,
    expand_trial_rows,
)
from sbi_diffusion.path.vector_field import as_time

__all__ = [
    "IID_METHODS",
    "PRIOR_PRECISIONS",
    "DEFAULT_PRIOR_PRECISION",
    "IIDComposedDenoiser",
]

IID_METHODS = ("factorized", "factorized_bridge", "gauss", "jac")
PRIOR_PRECISIONS = ("gaussian", "exact")
DEFAULT_PRIOR_PRECISION = {"gauss": "gaussian", "jac": "exact"}
"""``P_prior`` of each method that weighs the prior by a precision, unless
``prior_precision`` is given (see :class:`IIDComposedDenoiser`)."""


def _checked_prior_precision(method: str, prior_precision: str | None) -> str:
    """``prior_precision``, or the default of ``method`` if None.

    Raises:
        ValueError: for a ``method`` not in ``IID_METHODS`` or a
            ``prior_precision`` not in ``PRIOR_PRECISIONS``.
    """
    if method not in IID_METHODS:
        raise ValueError(f"Unknown iid_method {method!r}. Pass one of {IID_METHODS}.")
    if prior_precision is None:
        prior_precision = DEFAULT_PRIOR_PRECISION.get(method, "gaussian")
    if prior_precision not in PRIOR_PRECISIONS:
        raise ValueError(
            f"Unknown prior_precision {prior_precision!r}. Pass one of "
            f"{PRIOR_PRECISIONS}."
        )
    return prior_precision


class _LinearBridgeWeight:
    """``lambda(t) = (t_max - t) / (t_max - t_min)`` (a class, not a lambda, so
    that a composed denoiser can be pickled with its posterior)."""

    def __init__(self, t_min: float, t_max: float):
        self.t_min, self.t_max = t_min, t_max

    def __call__(self, t: Tensor) -> Tensor:
        return (self.t_max - t) / max(self.t_max - self.t_min, 1e-12)


class IIDComposedDenoiser:
    r"""The ``N``-trial posterior ``p(theta | x_1, ..., x_N)`` as a ``DenoiseFn``.

    See :mod:`sbi_diffusion.composition` for the methods and their equations.
    The composed
    denoiser works in the estimator's standardised space, so every sampler of
    :mod:`sbi_diffusion.samplers` takes it.

    Args:
        estimator: the single-trial denoiser; needs ``schedule``, ``theta_dim``,
            ``embed_condition(x)`` and ``denoise_embedded(z, embedding, t)``;
            where it has ``denoise_trials(z, embeddings, t, max_rows)`` (as
            :class:`~sbi_diffusion.model.Denoiser` does) the trials are
            evaluated through it, else as flat rows
            (:func:`~sbi_diffusion.model.denoise_trials_flat`).
        x: the trials ``(N, *x_shape)``.
        prior: the diffused prior
            (:func:`~sbi_diffusion.composition.diffused_prior`).
        method: one of ``IID_METHODS``.
        trial_covariances: ``(N, d, d)`` or ``(d, d)`` single-trial posterior
            covariances in standardised space for ``gauss``, taken as exact;
            estimated with :func:`estimate_trial_moments` if None, and then
            inverted without bias (:func:`unbiased_precision_factor`).
        covariance_samples, covariance_sampler, covariance_steps: options of that
            estimate (``covariance_samples`` must exceed ``d + 2``).
        max_rows: largest number of rows ``batch x trials`` held at once
            (trials are mini-batched).
        network_rows: rows per network call within those; None:
            :func:`~sbi_diffusion.model.default_network_rows` of the device of
            ``x`` (pieces of 4096 rows on a CPU, one call on an accelerator).
        bridge_weight: ``lambda(t)`` of ``factorized_bridge``.
        trial_means: ``(N, d)`` single-trial posterior means (standardised) for
            the Gaussian surrogate of ``gauss`` (each trial's denoiser is blended
            with it where the noise is wide, see :meth:`_blend_surrogate`);
            estimated with the covariances.
        prior_precision: for ``gauss`` and ``jac``, the prior's denoising
            precision ``P_prior``: ``"gaussian"`` (that of the moment-matched
            Gaussian prior; see :meth:`_gauss`) or ``"exact"`` (the analytic
            prior's own, where it has one; else the Gaussian one). None: the
            method's default (``DEFAULT_PRIOR_PRECISION``: ``"gaussian"`` for
            ``gauss``, whose trial precisions are Gaussian too, ``"exact"`` for
            ``jac``).
        generator: random generator (covariance estimate).
        show_progress_bars: progress of the covariance estimate.
        trial_batch_size: ``B``; if given and below ``N``, every call uses a
            random subset of ``B`` trials (groups) and rescales their sum by
            ``N / B``, an unbiased estimate of the sum over all ``N``
            (Arruda et al. 2025, mini-batched compositional score matching):
            ``sum_i f_i ~ (N / B) sum_{i in S} f_i``. The subsets are drawn from
            a generator seeded by :meth:`reseed_trial_batches` (by default from
            the global torch RNG when the denoiser is built).
        damping: ``d(t)`` scaling the composition's correction to the prior,
            ``x_hat = x_hat_prior + d(t) (x_hat_comp - x_hat_prior)``
            (:class:`~sbi_diffusion.composition.damping.SNRDamping`); None for
            none.
        noise_floor: for ``gauss``: ``kappa``; below the noise level
            ``sigma / alpha = kappa * s`` (``s`` the median over trials of the
            root mean variance of their posteriors) each trial's estimate comes
            from the network at that level, through a Gaussian of the trial's
            covariance (:meth:`_floored`). None: the network at every level.
        target_prior: the prior of the composed posterior where the trials'
            posteriors were learned under another, ``prior`` (a proposal
            ``q``): ``p(theta | x_1..N) ∝ p(theta) prod_i q(theta | x_i) /
            q(theta)``, the ``1 - N`` prior terms becoming ``-N`` of ``q`` and
            one of ``p``. None: ``prior``.

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
        prior_precision: str | None = None,
        generator: torch.Generator | None = None,
        show_progress_bars: bool = False,
        trial_batch_size: int | None = None,
        damping: Callable[[Tensor], Tensor] | None = None,
        noise_floor: float | None = None,
        target_prior: DiffusedPrior | None = None,
    ):
        prior_precision = _checked_prior_precision(method, prior_precision)
        if target_prior is not None and method == "factorized_bridge":
            raise ValueError(
                "target_prior needs iid_method 'factorized', 'gauss' or 'jac'; "
                "'factorized_bridge' anneals one prior's score."
            )
        if noise_floor is not None and (method != "gauss" or not noise_floor > 0):
            raise ValueError(
                f"noise_floor={noise_floor!r} with iid_method={method!r}: a noise "
                "floor is a positive multiple of the trials' posterior standard "
                "deviation and applies to iid_method='gauss' only."
            )
        self.estimator = estimator
        self.schedule = estimator.schedule
        self.prior_precision = prior_precision
        self.prior = prior
        self.target_prior = target_prior
        self.method = method
        self.max_rows = int(max_rows)
        self.d = int(estimator.theta_dim)
        with torch.no_grad():
            self.embeddings = estimator.embed_condition(x).detach()
        if network_rows is None:
            network_rows = default_network_rows(self.embeddings.device)
        self.network_rows = network_rows
        self.num_trials = self.embeddings.shape[0]
        if trial_batch_size is not None and int(trial_batch_size) < 1:
            raise ValueError(
                f"trial_batch_size must be at least 1, got {trial_batch_size}."
            )
        self.trial_batch_size = (
            None
            if trial_batch_size is None or int(trial_batch_size) >= self.num_trials
            else int(trial_batch_size)
        )
        self.damping = damping
        self._active = torch.arange(self.num_trials, device=self.embeddings.device)
        self._sum_scale = 1.0
        self._batch_generator = torch.Generator(device="cpu")
        if self.trial_batch_size is not None:  # leaves the global RNG alone else
            self.reseed_trial_batches(int(torch.randint(0, 2**62, (1,))))
        t_min, t_max = float(self.schedule.t_min), float(self.schedule.t_max)
        self.bridge_weight = bridge_weight or _LinearBridgeWeight(t_min, t_max)
        self.trial_precisions: Tensor | None = None
        self.setup_evaluations = 0.0
        self._surrogate: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
        self._floor: tuple[float, float, float] | None = None
        self._t_alpha = alpha_floor_time(self.schedule)
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
            self.trial_precisions = inverse_clamped(cov, 1e-8)
            self._precision_sum = self.trial_precisions.sum(0)
            vals, vecs = torch.linalg.eigh(cov.double())
            vals, vecs = torch.clamp(vals, min=1e-10).float(), vecs.float()
            self._trial_eigen = (vals, vecs)
            if trial_means is not None:
                means = torch.as_tensor(trial_means, dtype=torch.float32)
                means = means.to(cov.device).reshape(self.num_trials, self.d)
                self._surrogate = (means, vals, vecs, vals.mean(-1))
            if noise_floor is not None:
                trial_std = float(vals.mean(-1).median()) ** 0.5
                self._floor = self._floor_level(noise_floor * trial_std)
        prior_variances = torch.linalg.eigvalsh(prior.cov.double())
        self._prior_max_variance = float(prior_variances.max())
        # single-trial posteriors at most 1000 times more precise than the prior
        self._min_variance = 1e-3 * float(prior_variances.min())
        used = self.trial_batch_size or self.num_trials
        evals = used * (1 + (self.d if method == "jac" else 0))
        self.evaluations_per_call = evals + prior.evaluations_per_call

    # ------------------------------------------------------------- helpers

    def _floor_level(self, ratio: float) -> tuple[float, float, float]:
        """The time ``t_f`` with ``sigma / alpha = ratio`` (within the path),
        ``alpha(t_f)`` and the ratio there squared, ``r_f^2``."""
        t = self.schedule.time_at_half_log_snr(torch.tensor([-math.log(ratio)]))
        t = torch.clamp(t, max=self._t_alpha).float()
        alpha, sigma = alpha_sigma(self.schedule, t)
        return float(t), float(alpha), float((sigma / alpha) ** 2)

    def reseed_trial_batches(self, seed: int) -> None:
        """Restart the random trial subsets of ``trial_batch_size`` from
        ``seed`` (so that a sampling call can be reproduced)."""
        self._batch_generator.manual_seed(int(seed))

    def _draw_trial_batch(self) -> None:
        """Choose the trials of this call: all of them, or a random subset of
        ``trial_batch_size`` with the sum's scale ``N / B``."""
        if self.trial_batch_size is None:
            return
        perm = torch.randperm(self.num_trials, generator=self._batch_generator)
        self._active = perm[: self.trial_batch_size].to(self.embeddings.device)
        self._sum_scale = self.num_trials / self.trial_batch_size

    def _trial_chunks(self, batch: int):
        per = max(1, self.max_rows // max(batch, 1))
        return self._active.split(per)

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
        self._draw_trial_batch()
        if self.method == "factorized_bridge":
            # an annealed bridge of densities, not a posterior mean: not clamped
            return self._damped(self._bridge(z, t), z, t)
        if self.method == "factorized":
            x_hat = self._factorized(z, t)
        elif self.method == "gauss":
            x_hat = self._gauss(z, t)
        else:
            x_hat = self._jac(z, t)
        return self._inside_support(self._damped(x_hat, z, t))

    def _damped(self, x_hat: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """``x_hat_prior + d(t) (x_hat - x_hat_prior)`` with the ``damping``
        (:mod:`sbi_diffusion.composition.damping`); ``x_hat`` without one."""
        if self.damping is None:
            return x_hat
        d = torch.as_tensor(self.damping(t)).to(x_hat).reshape(-1, 1)
        prior = self.composed_prior(z, t)
        return prior + d * (x_hat - prior)

    def _inside_support(self, x_hat: Tensor) -> Tensor:
        r"""Project ``x_hat`` onto the box of a bounded prior.

        The ``N``-trial posterior lives inside the prior's support, so its
        denoiser ``E[theta_0 | z_t]`` lies in the support's convex hull; for a
        box prior ``low <= x_hat <= high`` holds exactly and the composed
        estimate is clamped to it. The composition weighs ``N`` single-trial
        estimates against ``N - 1`` prior ones; where the trials' posteriors
        are far from Gaussian these nearly cancel, their errors do not, and the
        composed estimate can leave the box and diverge (measured in
        ``benchmarks/iid/README.md``, "Evidence behind defaults").
        """
        if self.composed_prior.bounds is None:
            return x_hat
        low, high = (b.to(x_hat) for b in self.composed_prior.bounds)
        return torch.minimum(torch.maximum(x_hat, low), high)

    def _sum_trials(self, z: Tensor, t: Tensor) -> Tensor:
        """``sum_i x_hat_i`` over all trials (or ``N / B`` times that over this
        call's subset)."""
        total = torch.zeros_like(z)
        for chunk in self._trial_chunks(z.shape[0]):
            total = total + self.trial_denoise(z, t, chunk).sum(1)
        return self._sum_scale * total

    @property
    def composed_prior(self) -> DiffusedPrior:
        """The prior of the composed posterior."""
        return self.prior if self.target_prior is None else self.target_prior

    def _prior_terms(self) -> list[tuple[int, DiffusedPrior]]:
        """``(weight, prior)`` of the composition's prior terms: ``1 - N``
        times ``prior``, or ``-N`` times it and once the ``target_prior``."""
        if self.target_prior is None:
            return [(1 - self.num_trials, self.prior)]
        return [(-self.num_trials, self.prior), (1, self.target_prior)]

    def _factorized(self, z: Tensor, t: Tensor) -> Tensor:
        terms = [w * prior(z, t) for w, prior in self._prior_terms()]
        return self._sum_trials(z, t) + sum(terms)

    def _bridge(self, z: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = alpha_sigma(self.schedule, t)
        alpha, sigma = alpha[:, None], sigma[:, None]
        n = self.num_trials
        score = (alpha * self._sum_trials(z, t) - n * z) / sigma**2
        weight = torch.as_tensor(self.bridge_weight(t)).to(z)
        weight = weight.reshape(-1, 1) if weight.dim() else weight
        score = score + (1 - n) * weight * self.prior.score0(z)
        alpha_safe = torch.clamp(alpha, min=ALPHA_FLOOR)
        return (z + sigma**2 * score) / alpha_safe

    def _prior_precision(self, z: Tensor, t: Tensor, prior=None) -> Tensor:
        """``P_0`` of ``prior`` (default: :attr:`prior`) as ``prior_precision``
        selects (exact where available)."""
        prior = self.prior if prior is None else prior
        if self.prior_precision == "gaussian":
            return prior.gaussian_precision(z, t)
        exact = prior.precision(z, t)
        return exact if exact is not None else prior.gaussian_precision(z, t)

    def _with_prior_terms(self, z, t, numerator, lam) -> Tensor:
        """The composed estimate from the trials' ``sum_i P_i x_hat_i`` and
        ``sum_i P_i`` and the weighted prior terms ``w P_0 x_hat_0``, ``w P_0``."""
        for w, prior in self._prior_terms():
            p_prec = self._prior_precision(z, t, prior)
            numerator = numerator + w * (p_prec @ prior(z, t)[:, :, None])[:, :, 0]
            lam = lam + w * p_prec
        return self._finish(z, t, numerator, lam)

    def _finish(self, z, t, numerator, lam) -> Tensor:
        # the N-trial posterior is at least as precise as the widest prior
        # direction: Lambda >= 1 / v_max + alpha^2 / sigma^2
        snr = signal_to_noise(self.schedule, t).double()
        vals, vecs, _ = clamp_eigenvalues(lam, snr + 1.0 / self._prior_max_variance)
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
        alpha, sigma = alpha_sigma(self.schedule, t)
        a, s2 = alpha[:, None, None], (sigma**2)[:, None, None]
        resid = z[:, None, :] - a * means[None]
        coords = torch.einsum("nde,bnd->bne", vecs, resid)
        gain = a * vals[None] / (a**2 * vals[None] + s2)
        x_gauss = means[None] + torch.einsum("nde,bne->bnd", vecs, gain * coords)
        lam = s2 / (s2 + a**2 * mean_var[None, :, None])
        return (1 - lam) * x_hat + lam * x_gauss

    def _floor_inputs(
        self, z: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Network inputs: ``(alpha_f z / alpha, t_f)`` for the rows below the
        noise floor, ``(z, t)`` for the others; and the rows below it (None
        without a floor or where no row is below)."""
        if self._floor is None:
            return z, t, None
        t_f, alpha_f, ratio2_f = self._floor
        alpha, sigma = alpha_sigma(self.schedule, t)
        alpha = torch.clamp(alpha, min=ALPHA_FLOOR)  # finite where not below
        below = (sigma / alpha) ** 2 < ratio2_f
        if not bool(below.any()):
            return z, t, None
        z_floor = (alpha_f / alpha)[:, None] * z
        return (
            torch.where(below[:, None], z_floor, z),
            torch.where(below, torch.full_like(t, t_f), t),
            below,
        )

    def _floored(
        self, z: Tensor, t: Tensor, chunk: Tensor, x_floor: Tensor, below: Tensor
    ) -> Tensor:
        r"""Each trial's estimate below the noise floor ``r_f = sigma_f /
        alpha_f``, from the network at the floor.

        With ``u = z / alpha`` and ``r = sigma / alpha``, trial ``i`` is taken
        to be Gaussian with its covariance ``Sigma_i = V diag(v) V^T`` and the
        mean ``m_i(u)`` that reproduces the network at the floor,
        ``m_i = u + (Sigma_i + r_f^2 I)(\hat x_i(alpha_f u, t_f) - u) / r_f^2``
        (exact for a Gaussian trial posterior, whatever ``u``); its estimate is
        then

        .. math::
            \hat x_i(z, t) = u + V \operatorname{diag}\Big(
            \frac{(v + r_f^2)\, r^2}{(v + r^2)\, r_f^2}\Big) V^T
            \big(\hat x_i(alpha_f u, t_f) - u\big),

        equal to the network at ``r = r_f`` and tending to ``u`` as ``r -> 0``.
        The composition weighs the trials by ``alpha^2 / sigma^2`` there, so the
        network's own errors, of order ``sigma`` at low noise, would add up over
        the ``N`` trials to many times the width of the ``N``-trial posterior
        (measured in ``benchmarks/hierarchical/README.md``); the floored
        estimates keep the trials' errors at their size at the floor.
        """
        vals, vecs = (v[chunk] for v in self._trial_eigen)
        _, _, ratio2_f = self._floor
        alpha, sigma = alpha_sigma(self.schedule, t)
        alpha = torch.clamp(alpha, min=ALPHA_FLOOR)
        u = z / alpha[:, None]
        ratio2 = ((sigma / alpha) ** 2)[:, None, None]
        gain = (vals[None] + ratio2_f) * ratio2 / ((vals[None] + ratio2) * ratio2_f)
        coords = torch.einsum("nde,bnd->bne", vecs, x_floor - u[:, None])
        floored = u[:, None] + torch.einsum("nde,bne->bnd", vecs, gain * coords)
        return torch.where(below[:, None, None], floored, x_floor)

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
        composed mean is pulled off the edge (measured in
        ``benchmarks/iid/README.md``, "Evidence behind defaults").
        """
        snr = signal_to_noise(self.schedule, t)
        eye = eye_like(self.d, z)
        numerator = torch.zeros_like(z)
        z_net, t_net, below = self._floor_inputs(z, t)
        for chunk in self._trial_chunks(z.shape[0]):
            x_hat = self.trial_denoise(z_net, t_net, chunk)
            if below is not None:
                x_hat = self._floored(z, t, chunk, x_hat, below)
            if self._surrogate is not None:
                x_hat = self._blend_surrogate(z, t, chunk, x_hat)
            prec = self.trial_precisions[chunk]
            numerator = numerator + torch.einsum("nde,bne->bd", prec, x_hat)
            numerator = numerator + snr[:, None] * x_hat.sum(1)
        numerator = self._sum_scale * numerator
        precision_sum = (
            self._precision_sum
            if self.trial_batch_size is None
            else self._sum_scale * self.trial_precisions[self._active].sum(0)
        )
        lam = precision_sum + self.num_trials * snr[:, None, None] * eye
        return self._with_prior_terms(z, t, numerator, lam)

    def _jac(self, z: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = alpha_sigma(self.schedule, t)
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
        numerator, lam = self._sum_scale * numerator, self._sum_scale * lam
        # the prior's precision is analytic, or that of its moments (as in GAUSS):
        # a learned unconditional Jacobian is too noisy for the (1 - N) weight
        return self._with_prior_terms(z, t, numerator, lam)
