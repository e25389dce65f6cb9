r"""The Gaussian path between data and noise, and what the network predicts.

Every model in the package is built on one path (Song et al. 2021; Karras et al.
2022; Lipman et al. 2023)

.. math::
    z_t = \alpha(t)\, \theta + \sigma(t)\, \epsilon, \qquad
    \epsilon \sim N(0, I), \quad t \in [0, 1],

from data at ``t = 0`` to noise at ``t = 1``.

* :mod:`~sbi_diffusion.path.schedules`: ``alpha(t)``, ``sigma(t)``, their
  derivatives, the training-time distribution and the sampling grid (VP,
  cosine, EDM VP/VE, rectified flow).
* :mod:`~sbi_diffusion.path.parameterizations`: what the network predicts
  (noise, velocity, data, EDM's F, score) and how the denoised estimate
  follows from it.
* :mod:`~sbi_diffusion.path.weightings`: the loss weight over noise levels.
* :mod:`~sbi_diffusion.path.vector_field`: score, noise and probability-flow
  drift from the denoised estimate (Tweedie's formula).
* :mod:`~sbi_diffusion.path.gaussian`: closed forms for Gaussian targets, the
  exact references of the tests.
"""
