r"""Multistep consistency sampling (Song et al. 2023, "Consistency Models",
Algorithm 1), registered as the sampler ``"consistency"``.

A consistency function ``f(z, t)`` has the interface of a ``DenoiseFn`` (it maps
``z_t`` to an estimate of the data), so it is sampled as

.. math::
    \hat\theta \leftarrow f(z_{t_{max}}, t_{max}), \qquad
    z \leftarrow \alpha(t_k) \hat\theta
    + \sqrt{\sigma(t_k)^2 - \alpha(t_k)^2 s_{min}^2}\; \epsilon, \quad
    \hat\theta \leftarrow f(z, t_k),

for decreasing intermediate times ``t_1 > ... > t_{k-1}``; ``s_min`` is the
noise level of ``t_min``, which ``f``'s output already carries. ``steps`` steps
cost exactly ``steps`` network evaluations per sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sbi_diffusion.model.interface import DenoiseFn
from sbi_diffusion.path.schedules import Schedule
from sbi_diffusion.samplers.base import (
    CountingDenoiser,
    SamplerResult,
    gaussian_like,
    register_sampler,
)

__all__ = ["consistency_times", "multistep_consistency"]


def consistency_times(
    schedule: Schedule,
    steps: int | None = None,
    times: Sequence[float] | Tensor | None = None,
) -> Tensor:
    """The intermediate times ``t_1 > ... > t_{steps-1}`` of multistep sampling.

    Without ``times``, the interior points of the schedule's sampling grid with
    ``steps`` steps (for the EDM schedule the Karras ``rho``-grid).

    Args:
        schedule: the path.
        steps: number of steps (network evaluations), at least 1.
        times: explicit intermediate times, strictly decreasing, inside
            ``(t_min, t_max)``; then ``steps`` may be omitted or must equal
            ``len(times) + 1``.

    Returns:
        The intermediate times, shape ``(steps - 1,)``.

    Raises:
        ValueError: for a bad ``steps`` or ``times``.
    """
    if times is not None:
        times = torch.as_tensor(times, dtype=torch.float32).reshape(-1)
        if steps is not None and int(steps) != times.numel() + 1:
            raise ValueError(
                f"steps={steps} does not match {times.numel()} intermediate times "
                f"(which give {times.numel() + 1} steps). Pass only times=..., or "
                "only steps=..."
            )
        t_min, t_max = float(schedule.t_min), float(schedule.t_max)
        if times.numel() and (
            not bool(((times > t_min) & (times < t_max)).all())
            or not bool((times[1:] < times[:-1]).all())
        ):
            raise ValueError(
                f"Intermediate times must be strictly decreasing and inside "
                f"({t_min}, {t_max}), got {times.tolist()}."
            )
        return times
    if steps is None or isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(
            f"steps must be a positive integer (network evaluations per sample), "
            f"got {steps!r}."
        )
    return schedule.sampling_grid(int(steps))[1:-1]


@register_sampler("consistency")
def multistep_consistency(
    denoise: DenoiseFn,
    noise: Tensor,
    steps: int | None = 1,
    generator: torch.Generator | None = None,
    show_progress_bars: bool = False,
    times: Sequence[float] | Tensor | None = None,
    **options,
) -> SamplerResult:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1).

    Args:
        denoise: the consistency function ``(z, t) -> f(z, t)`` with a
            ``schedule``.
        noise: ``z_{t_max}``, shape ``(batch, dim)``.
        steps: network evaluations per sample (1: one-step generation).
        generator: random generator of the re-noising.
        show_progress_bars: show a progress bar over the steps.
        times: explicit intermediate times (see :func:`consistency_times`).

    Returns:
        Samples and ``nfe = steps``.

    Raises:
        ValueError: for unknown options or a bad ``steps`` / ``times``.
    """
    if options:
        raise ValueError(
            f"Unknown options {sorted(options)} for the consistency sampler; it "
            "takes steps=... or times=... (intermediate times)."
        )
    if times is not None and steps == 1:
        steps = None  # the default step count yields to explicit times
    schedule = denoise.schedule
    intermediate = consistency_times(schedule, steps, times).to(noise.device)
    counter = CountingDenoiser(denoise, noise.shape[0])
    t_max = torch.tensor(float(schedule.t_max), device=noise.device)
    t_min = torch.tensor(float(schedule.t_min), device=noise.device)
    s_min = schedule.sigma(t_min) / schedule.alpha(t_min)
    theta = counter(noise, t_max)
    for t in tqdm(
        intermediate,
        disable=not show_progress_bars,
        desc="Consistency sampling",
        leave=False,
    ):
        alpha, sigma = schedule.alpha(t), schedule.sigma(t)
        scale = torch.sqrt(torch.clamp(sigma**2 - alpha**2 * s_min**2, min=0.0))
        z = alpha * theta + scale * gaussian_like(theta, generator)
        theta = counter(z, t)
    return SamplerResult(theta, counter.nfe)
