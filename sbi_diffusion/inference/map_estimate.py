r"""Maximum a posteriori estimate by ascent along the learned score.

At a small noise level ``t`` the model's score approximates the gradient of the
log posterior (Tweedie's formula; Song et al. 2021):

.. math::
    \nabla_\theta \log p(\theta \mid x) \approx
    \frac{\alpha_t \hat\theta(\theta, t) - \theta}{\sigma_t^2},

so Adam steps along ``alpha_t theta_hat - theta`` from posterior samples climb
the posterior; of the end and starting points, the one with the highest
``log_prob`` is returned. For a
model trained in ``u = T(theta)`` (a ``theta_transform``) the ascent in
standardised space adds the gradient of ``log |det dT/dtheta|``, so that it
climbs ``p(theta | x)`` rather than ``p(u | x)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from sbi_diffusion.inference.posterior import DiffusionPosterior

__all__ = ["score_ascent_map"]


def score_ascent_map(
    posterior: DiffusionPosterior,
    x_o: Tensor,
    num_iter: int,
    num_to_optimize: int,
    learning_rate: float,
    init_method: str | Tensor,
    num_init_samples: int,
    show_progress_bars: bool,
) -> Tensor:
    """The MAP of ``posterior`` given one observation ``x_o`` ``(1, *x_shape)``;
    arguments as in :meth:`DiffusionPosterior.map
    <sbi_diffusion.inference.posterior.DiffusionPosterior.map>`."""
    if isinstance(init_method, Tensor):
        inits = init_method.to(posterior._device)
    elif init_method == "posterior":
        inits = posterior.sample((num_init_samples,), x=x_o, show_progress_bars=False)
    elif init_method == "prior":
        inits = posterior.prior.sample((num_init_samples,))
    else:
        raise ValueError("init_method must be 'posterior', 'prior' or a Tensor.")
    inits = inits.reshape(-1, *posterior.theta_shape)[:num_to_optimize]
    z = posterior.estimator.to_z(inits).reshape(inits.shape[0], -1).clone()
    schedule = posterior.estimator.schedule
    # time where sigma/alpha ~ 0.02: a smoothed log density, well conditioned
    grid = torch.linspace(schedule.t_max, schedule.t_min, 2001)
    level = (schedule.sigma(grid) / schedule.alpha(grid) - 0.02).abs()
    t_map = grid[int(torch.argmin(level))]
    denoise = posterior.denoiser_for(x_o)
    z = z.requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=learning_rate)
    estimator = posterior.estimator
    sigma2 = float(schedule.sigma(t_map.reshape(1))) ** 2
    for _ in tqdm(range(num_iter), disable=not show_progress_bars, desc="MAP"):
        with torch.no_grad():
            direction = denoise(z, t_map) - z * schedule.alpha(t_map)
        if estimator.transforms_theta:
            # the mode of p(theta) is not that of p(z): add sigma^2 times the
            # gradient of log |det dT/dtheta| at theta(z)
            with torch.enable_grad():
                point = z.detach().requires_grad_(True)
                theta = estimator.from_z(point).reshape(-1, *posterior.theta_shape)
                log_det = estimator.transform_log_abs_det(theta).sum()
                (grad,) = torch.autograd.grad(log_det, point)
            direction = direction + sigma2 * torch.nan_to_num(grad)
        optimizer.zero_grad()
        z.grad = -direction
        optimizer.step()
    # the starting points compete too: a noisy learned score can lead the ascent
    # away from the mode
    candidates = torch.cat(
        [inits, posterior.estimator.from_z(z.detach()).reshape(inits.shape)]
    )
    log_p = posterior.log_prob(candidates, x=x_o, rtol=1e-4, atol=1e-4)
    return candidates[int(torch.argmax(log_p))].unsqueeze(0)
