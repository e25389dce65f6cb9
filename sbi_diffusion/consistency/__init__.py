r"""Consistency models: the consistency function, its losses and curricula, its
trainer (:class:`ConsistencyNPE`) and its posterior (:class:`ConsistencyPosterior`).

- :mod:`~sbi_diffusion.consistency.model`: the parameterisation and the model
  with its loss;
- :mod:`~sbi_diffusion.consistency.curriculum`: the discretisation curriculum,
  the interval sampling and the pseudo-Huber distance of the improved recipe;
- :mod:`~sbi_diffusion.consistency.teacher`: what a distillation teacher is, and
  its ODE seen on the consistency model's path;
- :mod:`~sbi_diffusion.consistency.trainer`: :class:`ConsistencyNPE`;
- :mod:`~sbi_diffusion.consistency.posterior`: :class:`ConsistencyPosterior`.

A consistency model learns the map ``f(z_t, t)`` from any point of a
probability-flow ODE trajectory to the trajectory's end at ``t_min``
(Song et al. 2023, "Consistency Models"). On the EDM variance-exploding path
``z_t = x + s(t) eps`` (:class:`~sbi_diffusion.path.schedules.EDMSchedule`) it is
parameterised as

.. math::
    f(z, t) = c_{skip}(s) z + c_{out}(s) F(c_{in}(s) z, e(x), c_{noise}(s)),
    \qquad
    c_{skip} = \frac{\sigma_d^2}{(s - s_{min})^2 + \sigma_d^2}, \quad
    c_{out} = \frac{\sigma_d (s - s_{min})}{\sqrt{\sigma_d^2 + s^2}},

with ``s = s(t)`` the EDM noise level, so the boundary condition
``f(z, t_min) = z`` holds by construction (Song et al. 2023, Eq. 7 with the
EDM scalings). Since ``f`` has the interface of a
:class:`~sbi_diffusion.path.vector_field.DenoiseFn`, the model is a
:class:`~sbi_diffusion.model.Denoiser` whose parameterisation is
:class:`ConsistencyParameterization` and whose loss is one of

- **consistency training** (CT) from simulations alone, in the improved recipe
  of Song & Dhariwal 2023 ("Improved Techniques for Training Consistency
  Models"): the Karras grid ``s_1 < ... < s_N``, the exponential discretisation
  curriculum :func:`improved_num_scales`, discrete log-normal sampling of the
  grid interval (:func:`lognormal_interval_probabilities`), the pseudo-Huber
  distance :func:`pseudo_huber`, the weight ``1 / (s_{i+1} - s_i)`` and the
  student itself (with a stopped gradient, no EMA) as the teacher:

  .. math::
      \mathcal L_{CT} = \frac{1}{s_{i+1} - s_i}\,
      d\big(f_\phi(\theta + s_{i+1}\epsilon, t_{i+1}),\,
      \mathrm{sg}[f_\phi(\theta + s_i \epsilon, t_i)]\big);

- **consistency distillation** (CD) from a trained diffusion model (Song et al.
  2023, Algorithm 2): the point ``z_{t_i}`` is one step of the core Heun
  sampler (:func:`sbi_diffusion.samplers.ode.heun_step`) of the teacher's
  probability-flow ODE from ``z_{t_{i+1}} = \theta + s_{i+1} \epsilon``,

  .. math::
      \mathcal L_{CD} = \frac{1}{s_{i+1} - s_i}\,
      d\big(f_\phi(z_{t_{i+1}}, t_{i+1}),\,
      \mathrm{sg}[f_\phi(\hat z^{\,Heun}_{t_i}, t_i)]\big).

The distillation teacher may live on any Gaussian path: the probability-flow
ODE in the scaled variable ``z / alpha`` and noise level ``sigma / alpha`` is the
same for all of them (Karras et al. 2022), see :class:`ScaledTeacher`.

Schmitt et al. 2024 ("Consistency Models for Scalable and Fast Simulation-Based
Inference", CMPE) apply consistency models to posterior estimation.
"""

from sbi_diffusion.consistency.curriculum import (
    default_huber_constant,
    improved_num_scales,
    lognormal_interval_probabilities,
    pseudo_huber,
)
from sbi_diffusion.consistency.model import (
    ConsistencyModel,
    ConsistencyParameterization,
    check_consistency_schedule,
)
from sbi_diffusion.consistency.posterior import ConsistencyPosterior
from sbi_diffusion.consistency.teacher import (
    DenoiserTeacher,
    ScaledTeacher,
    time_for_scaled_sigma,
)
from sbi_diffusion.consistency.trainer import ConsistencyNPE

__all__ = [
    "ConsistencyNPE",
    "ConsistencyPosterior",
    "ConsistencyParameterization",
    "ConsistencyModel",
    "ScaledTeacher",
    "DenoiserTeacher",
    "check_consistency_schedule",
    "improved_num_scales",
    "lognormal_interval_probabilities",
    "pseudo_huber",
    "default_huber_constant",
    "time_for_scaled_sigma",
]
