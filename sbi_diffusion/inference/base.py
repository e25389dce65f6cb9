"""The sbi side of this package's trainers: simulations in, posteriors out.

:class:`InferenceBase` is sbi's ``NeuralInference`` with the two ends that the
vector-field trainers share:

- ``append_simulations``: each round is checked
  (:func:`~sbi_diffusion.inference.simulations.checked_round`) and stored with
  its proposal, which must be the prior or a truncated prior
  (:mod:`~sbi_diffusion.inference.proposals`), so that every round trains with
  the first-round loss;
- ``build_posterior``: a posterior (``_posterior_class``) of the trained
  estimator, with the trainer's default sampler and options.

Subclasses build the estimator (``self._neural_net``, a model with
``loss(theta, x)``) and train it (setting ``self._trained_estimator``).
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import torch
from sbi.inference.trainers.base import NeuralInference
from sbi.utils.sbiutils import ImproperEmpirical
from torch import Tensor, nn
from torch.distributions import Distribution

from sbi_diffusion.inference.posterior import DiffusionPosterior
from sbi_diffusion.inference.proposals import proposal_kind
from sbi_diffusion.inference.simulations import checked_round
from sbi_diffusion.model import Denoiser
from sbi_diffusion.samplers import Solver, solver_call

__all__ = ["InferenceBase"]


class InferenceBase(NeuralInference):
    """sbi's ``NeuralInference`` storing rounds of simulations with their
    proposals, and building posteriors of the trained estimator.

    Takes the arguments of ``NeuralInference``.

    Attributes:
        _posterior_class: the posterior :meth:`build_posterior` builds.
        _sampler, _sampler_options: the posterior's default sampler and options
            (set by subclasses).
        _trained_estimator: the estimator of the last training (None before).
        _proposal_roundwise: per appended round, the proposal.
        _proposal_kinds: per appended round, ``"prior"`` or
            ``"truncated_prior"``.
    """

    _posterior_class: type[DiffusionPosterior] = DiffusionPosterior
    _sampler: str
    _sampler_options: dict[str, Any]

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._trained_estimator: nn.Module | None = None
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
    ) -> InferenceBase:
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
            data_device: where to keep the data (default: the training
                device). Training moves each batch to the training device, so
                ``data_device="cpu"`` keeps a large training set (e.g. fields)
                in host memory while the network trains on a GPU.
            proposal: the distribution ``theta`` was drawn from: None or the
                prior, or a truncated prior.

        Returns:
            self, for chaining.

        Raises:
            ValueError: for an unsupported proposal, shapes that do not match
                the prior or earlier rounds, or invalid values.
        """
        kind = proposal_kind(proposal, self._prior)
        theta, x = self._checked_round(theta, x, exclude_invalid_x)
        if self._prior is None and theta.dim() > 2:
            raise ValueError(
                f"theta has shape {tuple(theta.shape)}: without a prior, pass theta "
                "as (num_simulations, dim) vectors (a U-Net takes its layout from "
                "net_kwargs={'shape': ...}), or pass a prior over theta's shape."
            )
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

    def _checked_round(
        self, theta: Tensor, x: Tensor, exclude_invalid_x: bool
    ) -> tuple[Tensor, Tensor]:
        """A new round checked against the prior and the first round, without
        invalid simulations
        (:func:`~sbi_diffusion.inference.simulations.checked_round`)."""
        first_round = (
            (self._theta_roundwise[0], self._x_roundwise[0])
            if self._theta_roundwise
            else None
        )
        return checked_round(theta, x, self._prior, first_round, exclude_invalid_x)

    def _get_start_index(self, context) -> int:
        return 0

    def _get_losses(self, batch, loss_args=None) -> Tensor:
        theta, x = batch[0], batch[1]
        return self._neural_net.loss(theta, x)

    def _loss(self, theta: Tensor, x: Tensor, **kwargs) -> Tensor:
        return self._neural_net.loss(theta, x, **kwargs)

    def _get_potential_function(self, prior, estimator):
        posterior = self._posterior_class(estimator, prior, device=self._device)
        return posterior.potential_fn, posterior.theta_transform

    def build_posterior(
        self,
        estimator: Denoiser | None = None,
        prior: Distribution | None = None,
        sampler: str | Solver | None = None,
        max_sampling_batch_size: int | None = None,
        **sampler_options,
    ) -> DiffusionPosterior:
        """Build the posterior from the trained (EMA) denoiser.

        Args:
            estimator: a trained denoiser; the one from the last ``train()`` if None.
            prior: the prior; the constructor's (or the empirical one) if None.
            sampler: default sampler name, or a
                :class:`~sbi_diffusion.samplers.Solver` with its options; the
                trainer's default if None.
            max_sampling_batch_size: samples drawn per batch; if None, bounded
                by the parameter dimension
                (:func:`~sbi_diffusion.inference.batching.sampling_batch_size`).
            **sampler_options: default sampler options (e.g. ``steps=30``).

        Returns:
            A :class:`~sbi_diffusion.inference.posterior.DiffusionPosterior`.
        """
        estimator = self._estimator_or_trained(
            estimator, "call train() before build_posterior()"
        )
        self._posterior = self._posterior_class(
            deepcopy(estimator),
            self._prior_or_default(prior),
            **self._posterior_options(
                sampler, max_sampling_batch_size, sampler_options
            ),
        )
        return self._posterior

    def _estimator_or_trained(self, estimator: Any, how_to_train: str) -> Any:
        """``estimator``, or the one from the last training if None.

        Raises:
            ValueError: if both are None; the message asks to ``how_to_train``.
        """
        if estimator is not None:
            return estimator
        if self._trained_estimator is None:
            raise ValueError(
                f"No trained estimator: {how_to_train}, or pass estimator=."
            )
        return self._trained_estimator

    def _prior_or_default(self, prior: Distribution | None) -> Distribution:
        """``prior``, or the constructor's (or empirical) prior if None."""
        prior = self._prior if prior is None else prior
        if prior is None:
            raise ValueError("No prior: pass prior= to the constructor or here.")
        return prior

    def _posterior_options(
        self,
        sampler: str | None,
        max_sampling_batch_size: int | None,
        sampler_options: dict[str, Any],
    ) -> dict[str, Any]:
        """Keyword arguments of a posterior: the trainer's sampler and sampler
        options, updated by those given, and its device."""
        sampler, sampler_options = solver_call(sampler, sampler_options)
        options = dict(self._sampler_options)
        options.update(sampler_options)
        return {
            "sampler": self._sampler if sampler is None else sampler,
            "sampler_options": options,
            "max_sampling_batch_size": max_sampling_batch_size,
            "device": self._device,
        }
