r"""The validation set of the vector-field trainers.

Training holds out ``max(1, floor(f n))`` of the ``n`` simulations
(:func:`validation_size`) and scores the model on them at fixed times and noise
(:class:`ValidationSet`), so that the validation loss depends on the weights
alone and early stopping compares like with like. The rows stay where the
simulations are kept (``data_device`` of ``append_simulations``) and are scored
in pieces of bounded size (:func:`~sbi_diffusion.inference.batching.rows_per_call`)
on the model's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sbi_diffusion.inference.batching import rows_per_call
from sbi_diffusion.model.loss_draws import LossDraws

__all__ = ["ValidationSet", "split_indices", "validation_size"]


def validation_size(num_simulations: int, validation_fraction: float) -> int:
    """Simulations held out for validation: ``max(1, floor(f n))``."""
    return max(1, int(validation_fraction * num_simulations))


def split_indices(
    num_simulations: int, num_validation: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Training and validation indices: the last ``n - num_validation`` and the
    first ``num_validation`` entries of a permutation drawn from ``generator``."""
    permutation = torch.randperm(num_simulations, generator=generator)
    return permutation[num_validation:], permutation[:num_validation]


@dataclass
class ValidationSet:
    r"""Held-out simulations with fixed times and noise, so that the validation
    loss of a model is a deterministic function of its weights.

    Each of the ``n`` held-out pairs is repeated ``reps`` times; row ``i`` is
    noised at the fixed time ``t_i`` (quantiles of the training time
    distribution, ``Schedule.validation_times``, in a fixed random order) with
    the fixed noise ``eps_i``, and the loss is the training loss of those rows,
    ``w(t_i) || x_hat(alpha_i theta_i + sigma_i eps_i, t_i | x_i) - theta_i ||^2``
    (no condition dropout).

    Attributes:
        theta: ``(reps * n, *theta_shape)`` parameters.
        x: ``(reps * n, *x_shape)`` simulations.
        times: ``(reps * n,)`` fixed times.
        noise: ``(reps * n, dim)`` fixed standard normal noise.
    """

    theta: Tensor
    x: Tensor
    times: Tensor
    noise: Tensor

    @classmethod
    def build(
        cls,
        theta: Tensor,
        x: Tensor,
        schedule,
        reps: int,
        device: torch.device | str | None = None,
        seed: int = 12345,
    ) -> ValidationSet:
        """The validation rows of ``theta`` and ``x`` (``reps`` noise draws each,
        at least 1), drawn with their own generator seeded by ``seed``; the
        times are ``schedule.validation_times``. The rows are kept on
        ``device`` (the device of ``theta`` if None)."""
        device = theta.device if device is None else device
        generator = torch.Generator(device="cpu").manual_seed(seed)
        reps = max(1, int(reps))
        theta = theta.repeat(reps, *([1] * (theta.dim() - 1)))
        x = x.repeat(reps, *([1] * (x.dim() - 1)))
        times = schedule.validation_times(theta.shape[0])
        times = times[torch.randperm(times.shape[0], generator=generator)]
        noise = torch.randn(
            theta.reshape(theta.shape[0], -1).shape, generator=generator
        )
        return cls(theta.to(device), x.to(device), times.to(device), noise.to(device))

    @torch.no_grad()
    def losses(self, model: nn.Module) -> Tensor:
        """Per-row validation losses of ``model`` (a denoiser with ``loss(theta,
        x, draws)``, :class:`~sbi_diffusion.model.LossDraws`), on the model's
        device; rows are moved there and scored in pieces of
        :func:`~sbi_diffusion.inference.batching.rows_per_call` rows."""
        device = next(model.parameters()).device
        size = rows_per_call(self.noise.shape[1])
        losses = []
        for start in range(0, self.theta.shape[0], size):
            rows = slice(start, start + size)
            theta = self.theta[rows].to(device)
            drop = torch.zeros(theta.shape[0], dtype=torch.bool, device=device)
            losses.append(
                model.loss(
                    theta,
                    self.x[rows].to(device),
                    LossDraws(
                        times=self.times[rows].to(device),
                        noise=self.noise[rows].to(device),
                        drop_condition=drop,
                    ),
                )
            )
        return torch.cat(losses)
