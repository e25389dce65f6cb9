r"""Damping of a composed score's correction at high noise.

A composition of ``N`` factors adds ``N`` network errors to the prior's score
(:mod:`sbi_diffusion.composition.iid`). Arruda et al. 2025 ("Compositional
amortized inference for large-scale hierarchical Bayesian models") damp the
composed score where these errors matter most, at high noise, and let the
undamped composition act near the data. Here the composition's *correction*
to the prior, in denoiser (equivalently score) form, is scaled by ``d(t)``:

.. math::
    \hat x_d(z, t) = \hat x_{prior}(z, t)
    + d(t) \big[\hat x_{comp}(z, t) - \hat x_{prior}(z, t)\big],
    \qquad
    s_d = s_{prior} + d(t) \big[s_{comp} - s_{prior}\big],

(the two are the same since ``s = (alpha x_hat - z) / sigma^2`` is affine in
``x_hat``), with the signal-to-noise schedule

.. math::
    d(t) = \frac{\mathrm{SNR}(t)}{\mathrm{SNR}(t) + \mathrm{SNR}_0},
    \qquad \mathrm{SNR}(t) = \alpha_t^2 / \sigma_t^2,

which goes from ``~0`` at pure noise to ``~1`` once ``SNR(t) >> SNR_0``. The
damped path is not that of the ``N``-factor posterior at high noise, so the
sampler must move the samples there at low noise: with a stochastic sampler the
injected noise lets it (a Langevin-like correction), with the probability-flow
ODE the end point is biased when ``SNR_0`` is large. ``SNR_0 = 0`` is no damping.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sbi_diffusion.composition.path import signal_to_noise
from sbi_diffusion.path.schedules import Schedule

__all__ = ["SNRDamping"]


@dataclass(frozen=True)
class SNRDamping:
    r"""``d(t) = SNR(t) / (SNR(t) + SNR_0)`` on the path ``schedule``.

    Args:
        schedule: the model's Gaussian path.
        snr0: ``SNR_0 >= 0``, the signal-to-noise ratio at which ``d = 1/2``.
    """

    schedule: Schedule
    snr0: float

    def __post_init__(self) -> None:
        if not self.snr0 >= 0.0:
            raise ValueError(f"damping snr0 must be >= 0, got {self.snr0}.")

    def __call__(self, t: Tensor) -> Tensor:
        """``d(t)`` per row of ``t`` ``(batch,)``."""
        if self.snr0 == 0.0:
            return torch.ones_like(t)
        snr = signal_to_noise(self.schedule, t)
        return snr / (snr + self.snr0)
