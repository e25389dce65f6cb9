r"""Gaussian forward paths (noise schedules).

Every schedule defines the marginal of the forward (noising) process

.. math::
    z_t = \alpha(t)\, x + \sigma(t)\, \epsilon, \qquad \epsilon \sim N(0, I),

for ``t`` in ``[0, 1]``, where ``t = 0`` is data and ``t = 1`` is noise. From
``alpha`` and ``sigma`` follow the log signal-to-noise ratio
``lambda(t) = log(alpha^2 / sigma^2)``, the drift ``f(t) = alpha'/alpha`` and
diffusion ``g(t)^2 = d sigma^2/dt - 2 f(t) sigma^2`` of the equivalent SDE
(Song et al. 2021, "Score-Based Generative Modeling through SDEs"), the
distribution of training times, and the default time grid of the samplers.

Example:
    >>> schedule = get_schedule("edm_vp")
    >>> t = schedule.sampling_grid(10)
    >>> alpha, sigma = schedule.alpha(t), schedule.sigma(t)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

__all__ = [
    "Schedule",
    "VPLinearSchedule",
    "CosineSchedule",
    "EDMSchedule",
    "EDMVPSchedule",
    "RectifiedFlowSchedule",
    "SCHEDULES",
    "get_schedule",
    "shift_times",
]


class Schedule(ABC):
    r"""A Gaussian path ``z_t = alpha(t) x + sigma(t) eps`` on ``t in [0, 1]``.

    Subclasses implement :meth:`alpha` and :meth:`sigma`; derivatives are
    computed by forward-mode automatic differentiation so every schedule is
    written once.

    Attributes:
        t_min: smallest time used by samplers (the end of sampling).
        t_max: largest time (the start of sampling).
        name: registry name of the schedule.
    """

    name: str = "schedule"
    t_min: float = 1e-3
    t_max: float = 1.0

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale ``alpha(t)``."""

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """Noise scale ``sigma(t)``."""

    def log_snr(self, t: Tensor) -> Tensor:
        r"""Log signal-to-noise ratio ``lambda(t) = log(alpha(t)^2 / sigma(t)^2)``."""
        return 2.0 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def scaled_sigma(self, t: Tensor) -> Tensor:
        r"""Noise level of the scaled variable ``z/alpha``: ``sigma(t) / alpha(t)``.

        This is EDM's ``sigma`` (Karras et al. 2022); the probability-flow ODE of
        every Gaussian path is the same ODE in ``(z / alpha, sigma / alpha)``.
        """
        return self.sigma(t) / self.alpha(t)

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Return ``alpha(t), sigma(t), alpha'(t), sigma'(t)``.

        The built-in schedules give closed forms (:meth:`closed_form_derivatives`):
        a few elementwise operations, which matters where every network
        evaluation is cheap (training steps, sampling on a GPU). Other schedules
        fall back to forward-mode automatic differentiation (``torch.func.jvp``
        with a unit tangent) of their elementwise ``alpha`` and ``sigma``, which
        is exact and needs only those two written. Both need no autograd graph
        and compose with ``torch.func`` transforms (``vmap``, ``jacrev``) applied
        to a denoiser, as sbi's Jacobian-based i.i.d. methods do.
        """
        closed_form = self.closed_form_derivatives(t)
        if closed_form is not None:
            return closed_form
        t = t.detach().clone()  # also materialises expanded (stride-0) times
        unit = torch.ones_like(t)
        alpha, d_alpha = torch.func.jvp(self.alpha, (t,), (unit,))
        sigma, d_sigma = torch.func.jvp(self.sigma, (t,), (unit,))
        return alpha, sigma, d_alpha, d_sigma

    def closed_form_derivatives(
        self, t: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """``alpha, sigma, alpha', sigma'`` in closed form, or ``None`` (the
        default) to take the derivatives by forward-mode AD."""
        return None

    def sde_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        r"""Drift and diffusion of the forward SDE ``dz = f(t) z dt + g(t) dW``.

        .. math::
            f(t) = \frac{\alpha'(t)}{\alpha(t)}, \qquad
            g(t)^2 = \frac{d\sigma^2}{dt} - 2 f(t) \sigma(t)^2

        (Kingma et al. 2021, "Variational Diffusion Models", Appendix).

        Returns:
            ``(f(t), g(t))``.
        """
        alpha, sigma, d_alpha, d_sigma = self.derivatives(t)
        f = d_alpha / alpha
        g2 = 2.0 * sigma * d_sigma - 2.0 * f * sigma**2
        return f, torch.sqrt(torch.clamp(g2, min=0.0))

    def ode_variable(self, t: Tensor) -> Tensor:
        """Monotone time variable ``u(t)`` in which fixed-step ODE solvers step.

        ``t`` itself by default; the variance-exploding EDM path steps in its noise
        level ``sigma`` (Karras et al. 2022), in which the probability-flow ODE is
        smooth.
        """
        return t

    def sample_training_times(
        self, num: int, generator: torch.Generator | None = None, device=None
    ) -> Tensor:
        """Draw ``num`` training times; uniform on ``[t_min, t_max]`` by default."""
        u = torch.rand(num, generator=generator, device=device)
        return self.t_min + (self.t_max - self.t_min) * u

    def validation_times(self, num: int, device=None) -> Tensor:
        """Fixed, deterministic times for a validation loss that is not noise.

        The quantiles of the training-time distribution at ``(i + 0.5) / num``.
        """
        u = (torch.arange(num, device=device, dtype=torch.float32) + 0.5) / num
        return self._training_time_quantile(u)

    def _training_time_quantile(self, u: Tensor) -> Tensor:
        """Quantile function of the training-time distribution (uniform here)."""
        return self.t_min + (self.t_max - self.t_min) * u

    def sampling_grid(self, steps: int, device=None) -> Tensor:
        """Decreasing grid of ``steps + 1`` times from ``t_max`` to ``t_min``."""
        return torch.linspace(self.t_max, self.t_min, steps + 1, device=device)

    def log_snr_grid(self, steps: int, device=None) -> Tensor | None:
        r"""Decreasing grid of ``steps + 1`` times from ``t_max`` to ``t_min``,
        uniform in the half log-SNR ``log(alpha / sigma)``.

        The spacing recommended for DPM-Solver (Lu et al. 2022a, Sec. 3.4), whose
        local error depends on the steps in ``log(alpha / sigma)``; it is
        decreasing in ``t`` for every schedule and is inverted by bisection in
        float64.

        Returns:
            The grid, or None where the log-SNR is infinite at an end point
            (``alpha(t_max) = 0`` or ``sigma(t_min) = 0``, as for rectified flow).
        """
        ends = self.half_log_snr(
            torch.tensor([self.t_max, self.t_min], dtype=torch.float64)
        )
        if not bool(torch.isfinite(ends).all()):
            return None
        target = torch.linspace(
            float(ends[0]), float(ends[1]), steps + 1, dtype=torch.float64
        )
        grid = self.time_at_half_log_snr(target)
        grid[0], grid[-1] = self.t_max, self.t_min
        return grid.to(dtype=torch.float32, device=device)

    def half_log_snr(self, t: Tensor) -> Tensor:
        """``log(alpha(t) / sigma(t))``, decreasing in ``t``."""
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    def time_at_half_log_snr(self, target: Tensor) -> Tensor:
        """The times (float64) in ``[t_min, t_max]`` at which
        ``log(alpha / sigma)`` equals ``target``, by bisection (a target beyond
        the path's range gives the nearer end)."""
        target = torch.as_tensor(target, dtype=torch.float64)
        lo = torch.full_like(target, float(self.t_min))
        hi = torch.full_like(target, float(self.t_max))
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            above = self.half_log_snr(mid) > target  # mid has too little noise
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def prior_std(self) -> float:
        r"""Standard deviation of ``z_{t_max}`` for standardised data.

        ``sqrt(alpha(t_max)^2 + sigma(t_max)^2)``; samplers start from
        ``N(0, prior_std^2 I)``.
        """
        t = torch.tensor([self.t_max])
        return float(torch.sqrt(self.alpha(t) ** 2 + self.sigma(t) ** 2))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(t_min={self.t_min}, t_max={self.t_max})"


class VPLinearSchedule(Schedule):
    r"""Variance-preserving path with a linear ``beta(t)`` (Ho et al. 2020;
    Song et al. 2021).

    .. math::
        \alpha(t) = \exp\left(-\tfrac12 \int_0^t \beta(s) ds\right)
        = \exp\left(-\tfrac12 (\beta_{min} t
        + \tfrac12 (\beta_{max} - \beta_{min}) t^2)\right), \quad
        \sigma(t) = \sqrt{1 - \alpha(t)^2}.

    Args:
        beta_min: ``beta(0)``.
        beta_max: ``beta(1)``.
        t_min: end of sampling.
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min=1e-3):
        if not 0 <= beta_min < beta_max:
            raise ValueError(
                f"VP schedule needs 0 <= beta_min < beta_max, got {beta_min}, "
                f"{beta_max}."
            )
        self.beta_min, self.beta_max, self.t_min = beta_min, beta_max, t_min

    def _integral_beta(self, t: Tensor) -> Tensor:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(-0.5 * self._integral_beta(t))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(-self._integral_beta(t)))

    def closed_form_derivatives(self, t: Tensor):
        r"""``alpha' = -beta(t) alpha / 2`` and
        ``sigma' = beta(t) alpha^2 / (2 sigma)``, with
        ``beta(t) = beta_min + (beta_max - beta_min) t``."""
        integral = self._integral_beta(t)
        alpha, sigma = torch.exp(-0.5 * integral), torch.sqrt(-torch.expm1(-integral))
        beta = self.beta_min + (self.beta_max - self.beta_min) * t
        return alpha, sigma, -0.5 * beta * alpha, 0.5 * beta * alpha**2 / sigma


class CosineSchedule(Schedule):
    r"""Cosine path with a shifted log-SNR (Nichol & Dhariwal 2021;
    Hoogeboom et al. 2023, "simple diffusion").

    .. math::
        \lambda(t) = -2 \log \tan\left(\frac{\pi t}{2}\right) + 2 \log s, \quad
        \alpha(t)^2 = \mathrm{sigmoid}(\lambda(t)), \quad
        \sigma(t)^2 = \mathrm{sigmoid}(-\lambda(t)).

    A shift ``s < 1`` moves the path towards more noise. ``t`` is clipped to
    ``[t_min, t_max]`` so that ``lambda`` stays finite.

    Args:
        shift: the log-SNR shift ``s``.
        t_min: smallest time.
        t_max: largest time.
    """

    name = "cosine"

    def __init__(self, shift: float = 1.0, t_min: float = 1e-3, t_max: float = 0.999):
        if shift <= 0:
            raise ValueError(f"cosine schedule shift must be positive, got {shift}.")
        self.shift, self.t_min, self.t_max = shift, t_min, t_max

    def log_snr(self, t: Tensor) -> Tensor:
        t = torch.clamp(t, 1e-6, 1 - 1e-6)
        return -2.0 * torch.log(torch.tan(0.5 * math.pi * t)) + 2.0 * math.log(
            self.shift
        )

    def alpha(self, t: Tensor) -> Tensor:
        return torch.sqrt(torch.sigmoid(self.log_snr(t)))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(torch.sigmoid(-self.log_snr(t)))

    def closed_form_derivatives(self, t: Tensor):
        r"""With ``lambda'(t) = -2 pi / sin(pi t)`` (zero where ``t`` is clipped):
        ``alpha' = alpha sigma^2 lambda' / 2`` and
        ``sigma' = -sigma alpha^2 lambda' / 2``."""
        log_snr = self.log_snr(t)
        alpha, sigma = (
            torch.sqrt(torch.sigmoid(log_snr)),
            torch.sqrt(torch.sigmoid(-log_snr)),
        )
        inside = (t > 1e-6) & (t < 1 - 1e-6)
        d_log_snr = torch.where(
            inside, -2.0 * math.pi / torch.sin(math.pi * t), torch.zeros_like(t)
        )
        return (
            alpha,
            sigma,
            0.5 * alpha * sigma**2 * d_log_snr,
            -0.5 * sigma * alpha**2 * d_log_snr,
        )


class EDMSchedule(Schedule):
    r"""EDM path in its variance-exploding form (Karras et al. 2022).

    ``alpha(t) = 1`` and ``sigma(t)`` interpolates the Karras ``rho``-grid,

    .. math::
        \sigma(t) = \left(\sigma_{min}^{1/\rho}
        + t\,(\sigma_{max}^{1/\rho} - \sigma_{min}^{1/\rho})\right)^\rho,

    so a uniform grid in ``t`` is the EDM sampling grid. Training draws
    ``log sigma ~ N(P_mean, P_std^2)`` (EDM Table 1), mapped to ``t``.

    Args:
        sigma_min: smallest noise level.
        sigma_max: largest noise level.
        rho: grid curvature (7 in EDM).
        p_mean: mean of the log-normal training noise distribution.
        p_std: standard deviation of the log-normal training distribution.
    """

    name = "edm"

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        p_mean: float = -1.2,
        p_std: float = 1.2,
    ):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(
                f"EDM needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}."
            )
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho
        self.p_mean, self.p_std = p_mean, p_std
        self.t_min, self.t_max = 0.0, 1.0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sigma_min={self.sigma_min}, "
            f"sigma_max={self.sigma_max}, rho={self.rho}, p_mean={self.p_mean}, "
            f"p_std={self.p_std})"
        )

    def edm_sigma(self, t: Tensor) -> Tensor:
        """The EDM noise level ``sigma(t)`` of the rho-grid."""
        inv_rho = 1.0 / self.rho
        lo, hi = self.sigma_min**inv_rho, self.sigma_max**inv_rho
        return (lo + t * (hi - lo)) ** self.rho

    def t_from_edm_sigma(self, edm_sigma: Tensor) -> Tensor:
        """Inverse of :meth:`edm_sigma`."""
        inv_rho = 1.0 / self.rho
        lo, hi = self.sigma_min**inv_rho, self.sigma_max**inv_rho
        return (edm_sigma**inv_rho - lo) / (hi - lo)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return self.edm_sigma(t)

    def _edm_sigma_and_rate(self, t: Tensor) -> tuple[Tensor, Tensor]:
        r"""``s(t)`` and ``s'(t) = rho (hi - lo) (lo + t (hi - lo))^{rho - 1}``."""
        inv_rho = 1.0 / self.rho
        lo, hi = self.sigma_min**inv_rho, self.sigma_max**inv_rho
        base = lo + t * (hi - lo)
        return base**self.rho, self.rho * (hi - lo) * base ** (self.rho - 1.0)

    def closed_form_derivatives(self, t: Tensor):
        """``alpha = 1``, ``alpha' = 0``, ``sigma = s(t)``, ``sigma' = s'(t)``."""
        s, rate = self._edm_sigma_and_rate(t)
        return torch.ones_like(t), s, torch.zeros_like(t), rate

    def ode_variable(self, t: Tensor) -> Tensor:
        """EDM steps in ``sigma`` (Karras et al. 2022, Algorithm 1)."""
        return self.edm_sigma(t)

    def _training_time_quantile(self, u: Tensor) -> Tensor:
        normal = torch.distributions.Normal(0.0, 1.0)
        u = torch.clamp(u, 1e-6, 1 - 1e-6)
        log_sigma = self.p_mean + self.p_std * normal.icdf(u)
        return torch.clamp(self.t_from_edm_sigma(torch.exp(log_sigma)), 0.0, 1.0)

    def sample_training_times(
        self, num: int, generator: torch.Generator | None = None, device=None
    ) -> Tensor:
        log_sigma = self.p_mean + self.p_std * torch.randn(
            num, generator=generator, device=device
        )
        return torch.clamp(self.t_from_edm_sigma(torch.exp(log_sigma)), 0.0, 1.0)


class EDMVPSchedule(EDMSchedule):
    r"""The EDM noise levels on a variance-preserving path.

    With the EDM level ``s(t)`` of :class:`EDMSchedule`,

    .. math::
        \alpha(t) = (1 + s(t)^2)^{-1/2}, \qquad
        \sigma(t) = s(t)\,(1 + s(t)^2)^{-1/2},

    so ``sigma / alpha = s(t)`` and the probability-flow ODE is that of EDM while
    ``z_t`` keeps unit variance (the "EDM, VP" configuration of Arruda et al.
    2025).
    """

    name = "edm_vp"

    def alpha(self, t: Tensor) -> Tensor:
        return torch.rsqrt(1.0 + self.edm_sigma(t) ** 2)

    def sigma(self, t: Tensor) -> Tensor:
        s = self.edm_sigma(t)
        return s * torch.rsqrt(1.0 + s**2)

    def closed_form_derivatives(self, t: Tensor):
        r"""``alpha' = -s s' alpha^3`` and ``sigma' = s' alpha^3``."""
        s, rate = self._edm_sigma_and_rate(t)
        alpha = torch.rsqrt(1.0 + s**2)
        alpha_cubed_rate = rate * alpha**3
        return alpha, s * alpha, -s * alpha_cubed_rate, alpha_cubed_rate

    def ode_variable(self, t: Tensor) -> Tensor:
        """Steps in ``t`` (on the VP form the drift in ``t`` is well scaled)."""
        return t


def shift_times(grid: Tensor, shift: float) -> Tensor:
    r"""Shift a grid of times in ``[0, 1]``:

    .. math::
        t \mapsto \frac{s\, t}{1 + (s - 1)\, t},

    the time shift of Esser et al. 2024 ("Scaling rectified flow transformers
    for high-resolution image synthesis"). It fixes ``0`` and ``1`` and
    is increasing, so a decreasing grid stays decreasing; ``s < 1`` moves the
    inner times towards ``t = 0`` (data), ``s > 1`` towards the noise.

    Raises:
        ValueError: if ``shift`` is not a positive number or a time lies
            outside ``[0, 1]``.
    """
    if isinstance(shift, bool) or not isinstance(shift, int | float) or shift <= 0:
        raise ValueError(f"The time shift must be a positive number, got {shift!r}.")
    if bool((grid < 0).any()) or bool((grid > 1).any()):
        raise ValueError(
            "A time shift needs sampling times in [0, 1]; this grid spans "
            f"[{float(grid.min()):.4g}, {float(grid.max()):.4g}]."
        )
    return shift * grid / (1 + (shift - 1) * grid)


class RectifiedFlowSchedule(Schedule):
    r"""The straight path of rectified flow / flow matching (Liu et al. 2023;
    Lipman et al. 2023).

    .. math::
        \alpha(t) = 1 - t, \qquad \sigma(t) = t.

    Training times are uniform or logit-normal (Esser et al. 2024) when
    ``logit_normal_std > 0``; the sampling grid can be shifted with
    ``grid_shift`` (:func:`shift_times`: ``s > 1`` towards the noise, ``s < 1``
    towards the data).

    Args:
        t_min: end of sampling (0 is allowed: the ODE is regular at data).
        t_max: start of sampling (1 is pure noise).
        logit_normal_std: spread of logit-normal training times (0: uniform).
        grid_shift: shift of the default sampling grid (1: uniform grid).
    """

    name = "rectified_flow"

    def __init__(
        self,
        t_min: float = 0.0,
        t_max: float = 1.0,
        logit_normal_std: float = 0.0,
        grid_shift: float = 1.0,
    ):
        self.t_min, self.t_max = t_min, t_max
        self.logit_normal_std, self.grid_shift = logit_normal_std, grid_shift
        self._eps = 1e-5

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - t

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def closed_form_derivatives(self, t: Tensor):
        """``alpha' = -1``, ``sigma' = 1``."""
        ones = torch.ones_like(t)
        return 1.0 - t, t.clone(), -ones, ones

    def _training_time_quantile(self, u: Tensor) -> Tensor:
        if self.logit_normal_std > 0:
            u = torch.clamp(u, 1e-6, 1 - 1e-6)
            normal = torch.distributions.Normal(0.0, self.logit_normal_std)
            u = torch.sigmoid(normal.icdf(u))
        lo, hi = max(self.t_min, self._eps), min(self.t_max, 1 - self._eps)
        return lo + (hi - lo) * u

    def sample_training_times(
        self, num: int, generator: torch.Generator | None = None, device=None
    ) -> Tensor:
        u = torch.rand(num, generator=generator, device=device)
        return self._training_time_quantile(u)

    def sampling_grid(self, steps: int, device=None) -> Tensor:
        t = torch.linspace(self.t_max, self.t_min, steps + 1, device=device)
        return shift_times(t, self.grid_shift)


SCHEDULES: dict[str, type[Schedule]] = {
    "vp": VPLinearSchedule,
    "cosine": CosineSchedule,
    "edm": EDMSchedule,
    "edm_ve": EDMSchedule,
    "edm_vp": EDMVPSchedule,
    "rectified_flow": RectifiedFlowSchedule,
}


def get_schedule(schedule: str | Schedule, **kwargs) -> Schedule:
    """Return a schedule instance from a name (see ``SCHEDULES``) or pass one through.

    Raises:
        ValueError: for an unknown name.
    """
    if isinstance(schedule, Schedule):
        if kwargs:
            raise ValueError("schedule options are only accepted with a schedule name.")
        return schedule
    if schedule not in SCHEDULES:
        raise ValueError(
            f"Unknown schedule {schedule!r}. Pass one of {sorted(SCHEDULES)} or a "
            "Schedule instance."
        )
    return SCHEDULES[schedule](**kwargs)
