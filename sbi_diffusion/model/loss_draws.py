r"""The random draws of one evaluation of a denoising loss.

A denoising loss is an expectation over the training time, the noise and, with
classifier-free guidance, the dropping of the condition (Ho & Salimans 2022):

.. math::
    L(\phi) = E_{t \sim p(t),\, \epsilon \sim N(0, I),\, d \sim
    \mathrm{Bernoulli}(p_{drop})}\, \ell_\phi(\theta, x; t, \epsilon, d),

estimated per sample with one draw of each. A model's ``loss(theta, x,
draws)`` draws what :class:`LossDraws` leaves as None and uses what it fixes,
so a fixed ``LossDraws`` gives a deterministic loss: the trainer's validation
loss at fixed times and noise
(:class:`~sbi_diffusion.inference.validation.ValidationSet`), and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["LossDraws"]


@dataclass(frozen=True)
class LossDraws:
    """The draws of one loss evaluation that the caller fixes; None draws anew.

    Attributes:
        times: training times ``(batch,)``; drawn from the schedule's training
            distribution if None.
        noise: ``eps`` ``(batch, *input_shape)`` or flattened ``(batch, dim)``;
            standard normal if None.
        drop_condition: booleans ``(batch,)``, the rows that use the null
            (unconditional) condition; drawn with the model's condition-dropout
            probability during training if None.
    """

    times: Tensor | None = None
    noise: Tensor | None = None
    drop_condition: Tensor | None = None
