"""The sbi trainer base of this package: rounds of simulations from the prior or
a truncated prior.

:class:`SimulationRounds` is sbi's ``NeuralInference`` with the
``append_simulations`` of the vector-field trainers: each round is checked
(:func:`~sbi_diffusion.inference.simulations.checked_round`) and stored with
its proposal, which must be the prior or a truncated prior
(:mod:`~sbi_diffusion.inference.proposals`), so that every round trains with
the first-round loss.
"""

from __future__ import annotations

from typing import Any

import torch
from sbi.inference.trainers.base import NeuralInference
from sbi.utils.sbiutils import ImproperEmpirical
from torch import Tensor

from sbi_diffusion.inference.proposals import proposal_kind
from sbi_diffusion.inference.simulations import checked_round

__all__ = ["SimulationRounds"]


class SimulationRounds(NeuralInference):
    """sbi's ``NeuralInference`` storing rounds of simulations with their
    proposals.

    Takes the arguments of ``NeuralInference``. Subclasses build
    ``self._neural_net``, a model with ``loss(theta, x)``.

    Attributes:
        _proposal_roundwise: per appended round, the proposal.
        _proposal_kinds: per appended round, ``"prior"`` or
            ``"truncated_prior"``.
    """

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._proposal_roundwise: list[Any] = []
        self._proposal_kinds: list[str] = []

    def append_simulations(
        self,
        theta: Tensor,
        x: Tensor,
        exclude_invalid_x: bool = True,
        from_round: int = 0,
        algorithm: str | None = None,
        data_device: str | None = None,
        proposal: Any = None,
    ) -> SimulationRounds:
        r"""Store parameters and simulations for training.

        Simulations with NaN or inf entries are excluded with a warning (set
        ``exclude_invalid_x=False`` to raise instead).

        Sequential rounds: pass the proposal ``theta`` was drawn from. The prior
        (or None) and a truncated prior (sbi's ``RestrictedPrior``) are
        accepted, and every round trains together with the first-round loss
        (:mod:`~sbi_diffusion.inference.proposals` says why that needs no
        correction); any other proposal raises.

        Args:
            theta: parameters ``(num_simulations, *theta_shape)``.
            x: simulations ``(num_simulations, *x_shape)``.
            exclude_invalid_x: drop (True) or reject (False) invalid simulations.
            from_round: round index, as in sbi.
            algorithm: unused, for sbi compatibility.
            data_device: where to keep the data (default: the training device).
            proposal: the distribution ``theta`` was drawn from: None or the
                prior, or a truncated prior.

        Returns:
            self, for chaining.

        Raises:
            ValueError: for an unsupported proposal, shapes that do not match
                the prior or earlier rounds, or invalid values.
        """
        kind = proposal_kind(proposal, self._prior)
        first_round = (
            (self._theta_roundwise[0], self._x_roundwise[0])
            if self._theta_roundwise
            else None
        )
        theta, x = checked_round(theta, x, self._prior, first_round, exclude_invalid_x)
        device = self._device if data_device is None else data_device
        self._theta_roundwise.append(theta.to(device))
        self._x_roundwise.append(x.to(device))
        self._prior_masks.append(torch.ones(theta.shape[0], 1, dtype=torch.bool))
        self._data_round_index.append(int(from_round))
        self._proposal_roundwise.append(proposal)
        self._proposal_kinds.append(kind)
        if self._prior is None or isinstance(self._prior, ImproperEmpirical):
            self._prior = ImproperEmpirical(
                torch.cat(self._theta_roundwise).cpu(),
                torch.ones(sum(t.shape[0] for t in self._theta_roundwise)),
            )
        return self

    def _get_start_index(self, context) -> int:
        return 0

    def _get_losses(self, batch, loss_args=None) -> Tensor:
        theta, x = batch[0], batch[1]
        return self._neural_net.loss(theta, x)

    def _loss(self, theta: Tensor, x: Tensor, **kwargs) -> Tensor:
        return self._neural_net.loss(theta, x, **kwargs)
