r"""Stochastic samplers: Euler-Maruyama on the reverse SDE and DDIM.

The forward SDE of a Gaussian path ``z_t = alpha(t) x + sigma(t) eps`` is
``dz = f(t) z dt + g(t) dW`` (see :meth:`Schedule.sde_coefficients`); its time
reversal (Anderson 1982; Song et al. 2021, Eq. 6) is

.. math::
    dz = \left[f(t) z - g(t)^2 \nabla_z \log p_t(z)\right] dt + g(t)\, d\bar W,

integrated from ``t_max`` down to ``t_min``, with the score
``(alpha x_hat - z) / sigma^2`` from the denoiser.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from sbi_diffusion.model.interface import DenoiseFn
from sbi_diffusion.samplers.base import (
    CountingDenoiser,
    SamplerResult,
    fixed_grid_sampler,
    gaussian_like,
    register_sampler,
    run_fixed_grid,
    schedule_value,
)

__all__ = [
    "euler_maruyama",
    "euler_maruyama_step",
    "ddim",
    "ddim_step",
    "ancestral_step",
]


def _ddim_update(
    z: Tensor,
    x_hat: Tensor,
    alpha_t: Tensor,
    sigma_t: Tensor,
    alpha_s: Tensor,
    sigma_s: Tensor,
    eta: float,
    generator: torch.Generator | None,
) -> Tensor:
    r"""``z_s = alpha_s x_hat + sqrt(sigma_s^2 - c^2) eps_hat + c xi`` for ``s < t``.

    ``c^2 = eta^2 sigma_s^2 (1 - r^2)`` with ``r = alpha_t sigma_s / (alpha_s
    sigma_t)``, which stays finite when ``alpha_t = 0`` (``r = 0``) and when
    ``sigma_s = 0`` (``c = 0``, ``z_s = alpha_s x_hat``).
    """
    eps_hat = (z - alpha_t * x_hat) / sigma_t
    ratio = alpha_t * sigma_s / (alpha_s * sigma_t)
    c2 = torch.clamp(eta**2 * sigma_s**2 * (1.0 - ratio**2), min=0.0)
    z_next = alpha_s * x_hat + torch.sqrt(torch.clamp(sigma_s**2 - c2, min=0.0)) * (
        eps_hat
    )
    if eta > 0 and float(c2) > 0:
        z_next = z_next + torch.sqrt(c2) * gaussian_like(z, generator)
    return z_next


def ddim_step(
    denoise: CountingDenoiser,
    z: Tensor,
    t_cur: Tensor,
    t_next: Tensor,
    state: dict,
    generator: torch.Generator | None,
    eta: float = 0.0,
) -> Tensor:
    r"""One DDIM step from ``t = t_cur`` to ``s = t_next < t`` (Song, Meng & Ermon
    2021, "Denoising Diffusion Implicit Models", Eq. 12, in ``alpha, sigma``
    form):

    .. math::
        z_s = \alpha_s \hat x + \sqrt{\sigma_s^2 - c^2}\, \hat\epsilon + c\, \xi,
        \qquad
        c^2 = \eta^2 \frac{\sigma_s^2}{\sigma_t^2}
        \left(\sigma_t^2 - \frac{\alpha_t^2}{\alpha_s^2} \sigma_s^2\right),

    with ``x_hat = x_hat(z_t, t)`` and ``eps_hat = (z_t - alpha_t x_hat) /
    sigma_t``. ``c^2`` is ``eta^2`` times the variance of the forward posterior
    ``q(z_s | z_t, x)``: ``eta = 0`` is the deterministic DDIM step (the
    first-order DPM-Solver step, Lu et al. 2022), ``eta = 1`` is ancestral
    sampling from ``q(z_s | z_t, x = x_hat)`` (Ho et al. 2020).
    """
    schedule = denoise.schedule
    alpha_t = schedule_value(schedule.alpha, t_cur)
    sigma_t = schedule_value(schedule.sigma, t_cur)
    alpha_s = schedule_value(schedule.alpha, t_next)
    sigma_s = schedule_value(schedule.sigma, t_next)
    x_hat = denoise(z, t_cur)
    return _ddim_update(
        z, x_hat, alpha_t, sigma_t, alpha_s, sigma_s, float(eta), generator
    )


def ancestral_step(
    denoise: CountingDenoiser,
    z: Tensor,
    t_cur: Tensor,
    t_next: Tensor,
    state: dict,
    generator: torch.Generator | None,
) -> Tensor:
    r"""Sample ``z_s ~ q(z_s | z_t, x = x_hat(z_t, t))``: :func:`ddim_step` with
    ``eta = 1``."""
    return ddim_step(denoise, z, t_cur, t_next, state, generator, eta=1.0)


def euler_maruyama_step(
    denoise: CountingDenoiser,
    z: Tensor,
    t_cur: Tensor,
    t_next: Tensor,
    state: dict,
    generator: torch.Generator | None,
) -> Tensor:
    r"""One Euler-Maruyama step of the reverse SDE from ``t`` to ``t - h``:

    .. math::
        z_{t-h} = z_t - h \left[f(t) z_t - g(t)^2 \nabla_z \log p_t(z_t)\right]
        + g(t) \sqrt{h}\, \xi, \qquad \xi \sim N(0, I)

    (Song et al. 2021, Eq. 6; Kloeden & Platen 1992). Two end points need care:

    * where ``alpha(t) = 0`` (``t = 1`` of rectified flow) ``f`` and ``g`` are
      infinite. ``z_t`` then carries no information about ``x`` and the exact
      reverse transition is the marginal ``p_{t-h}``; it is approximated by the
      ancestral step ``z_{t-h} = alpha x_hat + sigma xi`` (:func:`ancestral_step`).
    * where ``sigma(t - h) = 0`` (``t_min = 0`` of rectified flow) the step is
      the noise-free ``z_{t-h} = alpha(t - h) x_hat(z_t, t)``, the limit of the
      ancestral step.
    """
    schedule = denoise.schedule
    if float(schedule_value(schedule.alpha, t_cur)) <= 0 or (
        float(schedule_value(schedule.sigma, t_next)) <= 0
    ):
        return ancestral_step(denoise, z, t_cur, t_next, state, generator)
    f, g = (v[0] for v in schedule.sde_coefficients(torch.as_tensor(t_cur).reshape(1)))
    alpha = schedule_value(schedule.alpha, t_cur)
    sigma = schedule_value(schedule.sigma, t_cur)
    h = t_cur - t_next
    score = (alpha * denoise(z, t_cur) - z) / sigma**2
    drift = f * z - g**2 * score
    return z - h * drift + g * torch.sqrt(h) * gaussian_like(z, generator)


euler_maruyama = register_sampler("euler_maruyama")(
    fixed_grid_sampler(
        euler_maruyama_step,
        500,
        """Euler-Maruyama on the reverse SDE (see :func:`euler_maruyama_step`).

    ``steps`` network evaluations plus one for the final denoising where
    ``sigma(t_min) > 0``. The default of 500 steps follows sbi's score
    estimators. ``options`` go to :func:`run_fixed_grid` (``corrector``,
    ``time_grid``, ...).
    """,
        description="Euler-Maruyama",
    )
)


@register_sampler("ddim", deterministic=True)
def ddim(
    denoise: DenoiseFn,
    noise: Tensor,
    steps: int = 50,
    generator: torch.Generator | None = None,
    show_progress_bars: bool = False,
    eta: float = 0.0,
    **options,
) -> SamplerResult:
    """DDIM (Song, Meng & Ermon 2021) with stochasticity ``eta`` in ``[0, 1]``.

    ``eta = 0`` is deterministic (a first-order solver of the probability-flow
    ODE), ``eta = 1`` is ancestral sampling. ``steps`` network evaluations plus
    one for the final denoising where ``sigma(t_min) > 0``; see
    :func:`ddim_step`.

    Raises:
        ValueError: if ``eta`` is outside ``[0, 1]``.
    """
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"DDIM needs eta in [0, 1], got {eta!r}.")
    return run_fixed_grid(
        partial(ddim_step, eta=float(eta)),
        denoise,
        noise,
        steps,
        generator,
        show_progress_bars,
        description="DDIM",
        **options,
    )
