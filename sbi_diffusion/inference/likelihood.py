r"""Neural likelihood estimation with a diffusion model: an emulator of the
simulator.

:class:`DiffusionNLE` learns the likelihood ``q(x | theta)`` with the same
denoising trainer and networks as the posterior estimators, the roles of the
two variables swapped: ``x`` is noised and denoised, ``theta`` is the
condition. With ``net="unet"`` and ``net_kwargs={"shape": (C, H, W)}`` the
simulations are fields or images, and the trained model emulates the
simulator (``likelihood.sample((n,), theta=...)``). The learned likelihood
gives, as in sbi's NLE (Papamakarios et al. 2019, "Sequential neural
likelihood"), a posterior through MCMC or importance sampling on

.. math::
    \log \tilde p(\theta \mid x_1, \dots, x_N)
    = \sum_{i=1}^{N} \log q(x_i \mid \theta) + \log p(\theta),

with ``log q`` through the probability-flow ODE
(:meth:`~sbi_diffusion.inference.log_density.ProbabilityFlowDensity.
log_prob_batched`). Any proposal of the simulated ``theta`` is valid: the
likelihood does not depend on where ``theta`` was drawn.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from sbi.inference.posteriors import ImportanceSamplingPosterior, MCMCPosterior
from sbi.inference.posteriors.base_posterior import NeuralPosterior
from sbi.utils.sbiutils import mcmc_transform
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from sbi_diffusion.inference.likelihood_potential import (
    DEFAULT_LOG_PROB_OPTIONS,
    LikelihoodPotential,
)
from sbi_diffusion.inference.posterior import DiffusionPosterior
from sbi_diffusion.inference.simulations import checked_round
from sbi_diffusion.inference.trainer import (
    DiffusionNPE,
    FlowMatchingNPE,
    VectorFieldInference,
)
from sbi_diffusion.samplers import Solver

__all__ = ["DiffusionLikelihood", "DiffusionNLE", "FlowMatchingNLE"]

POSTERIOR_SAMPLERS = ("mcmc", "importance")
"""How :meth:`DiffusionNLE.build_posterior` samples the posterior."""


class DiffusionLikelihood:
    r"""A learned likelihood ``q(x | theta)``: an emulator of the simulator
    with a density.

    It wraps the trained conditional model of ``x`` given ``theta`` (a
    :class:`~sbi_diffusion.inference.posterior.DiffusionPosterior` whose
    "parameters" are ``x`` and whose condition is ``theta``), and can be saved
    with ``torch.save``.

    Args:
        conditional: the conditional model of the flattened ``x`` given
            ``theta``.
        x_shape: shape of one simulation (the model's rows are ``x``
            flattened; a U-Net reshapes them to its ``shape`` inside).
    """

    def __init__(self, conditional: DiffusionPosterior, x_shape: torch.Size | tuple):
        self.conditional = conditional
        self._x_shape = torch.Size(x_shape)

    @property
    def theta_shape(self) -> torch.Size:
        """Shape of one parameter set."""
        return torch.Size(self.conditional.x_shape)

    @property
    def x_shape(self) -> torch.Size:
        """Shape of one simulation."""
        return self._x_shape

    def _theta_rows(self, theta: Tensor) -> tuple[Tensor, bool]:
        """``theta`` as ``(B, *theta_shape)``, and whether one set was given.

        Raises:
            ValueError: for any other shape than ``theta_shape`` or ``(B,
                *theta_shape)``.
        """
        theta = torch.as_tensor(theta, dtype=torch.float32)
        shape = tuple(self.theta_shape)
        if tuple(theta.shape) == shape:
            return theta.unsqueeze(0), True
        if theta.dim() != len(shape) + 1 or tuple(theta.shape[1:]) != shape:
            raise ValueError(
                f"theta has shape {tuple(theta.shape)}; pass {shape} or "
                f"(batch, *{shape})."
            )
        return theta, False

    def sample(
        self,
        sample_shape: torch.Size | tuple = (),
        theta: Tensor | None = None,
        sampler: str | Solver | None = None,
        show_progress_bars: bool = False,
        generator: torch.Generator | None = None,
        **sampler_options: Any,
    ) -> Tensor:
        """Emulate the simulator: ``x ~ q(x | theta)``.

        Args:
            sample_shape: simulations per parameter set.
            theta: one parameter set ``theta_shape`` or ``B`` of them.
            sampler, sampler_options: the sampler and its options (the
                estimator's default if None), as in
                :meth:`~sbi_diffusion.inference.posterior.DiffusionPosterior.sample`.
            show_progress_bars: show a progress bar.
            generator: random generator of the initial noise.

        Returns:
            ``(*sample_shape, *x_shape)`` for one parameter set,
            ``(*sample_shape, B, *x_shape)`` for ``B``.

        Raises:
            ValueError: without ``theta``, or for a ``theta`` of the wrong shape.
        """
        if theta is None:
            raise ValueError("Pass theta=...: the parameters to simulate at.")
        rows, single = self._theta_rows(theta)
        samples = self.conditional.sample_batched(
            sample_shape,
            x=rows,
            sampler=sampler,
            show_progress_bars=show_progress_bars,
            reject_outside_prior=False,
            generator=generator,
            **sampler_options,
        )
        samples = samples.reshape(*samples.shape[:-1], *self.x_shape)
        return samples.squeeze(len(torch.Size(sample_shape))) if single else samples

    def log_prob(self, x: Tensor, theta: Tensor, **log_prob_options: Any) -> Tensor:
        r"""``log q(x_b | theta_b)`` through the probability-flow ODE.

        Above 32 dimensions of ``x`` (fields) the divergence is Hutchinson's
        unbiased estimate by default, so the value is random; pass
        ``generator`` for reproducible values, or ``divergence="exact"`` (one
        backward pass per dimension of ``x``).

        Args:
            x: ``(B, *x_shape)`` or ``x_shape``.
            theta: one parameter set (shared by every row of ``x``) or ``B``.
            **log_prob_options: as in
                :meth:`~sbi_diffusion.inference.log_density.ProbabilityFlowDensity.log_prob`
                (``solver``, ``steps``, ``divergence``, ``rtol``, ``atol``,
                ``generator``, ...).

        Returns:
            Log densities ``(B,)``.

        Raises:
            ValueError: for shapes that do not match the model or each other.
        """
        x = torch.as_tensor(x, dtype=torch.float32)
        if tuple(x.shape) == tuple(self.x_shape):
            x = x.unsqueeze(0)
        if x.dim() != len(self.x_shape) + 1 or x.shape[1:] != self.x_shape:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; pass {tuple(self.x_shape)} or "
                f"(batch, *{tuple(self.x_shape)})."
            )
        rows, single = self._theta_rows(theta)
        if single:
            rows = rows.expand(x.shape[0], *self.theta_shape)
        if rows.shape[0] != x.shape[0]:
            raise ValueError(
                f"x has {x.shape[0]} rows but theta has {rows.shape[0]}: pass one "
                "parameter set, or one per row of x."
            )
        flat = x.reshape(1, x.shape[0], -1)
        return self.conditional.log_prob_batched(flat, rows, **log_prob_options)[0]

    def to(self, device: str | torch.device) -> DiffusionLikelihood:
        """Move the model to ``device``."""
        self.conditional.to(device)
        return self


class DiffusionNLE:
    r"""Neural likelihood estimation with a score-based diffusion model of
    ``x | theta`` (Papamakarios et al. 2019 for NLE; the denoiser as in
    :class:`~sbi_diffusion.inference.trainer.DiffusionNPE`, Karras et al.
    2022).

    The interface of sbi's ``NLE``::

        inference = DiffusionNLE(prior, net="unet", net_kwargs={"shape": (1, 32, 32)})
        inference.append_simulations(theta, x).train()
        likelihood = inference.build_likelihood()
        fields = likelihood.sample((100,), theta=theta_o)  # emulate the simulator
        posterior = inference.build_posterior()  # MCMC on sum_i log q(x_i | theta)
        samples = posterior.sample((1000,), x=x_o)

    The trainer is the posterior estimator's, with the target ``x`` and the
    condition ``theta`` (which enters the network as a vector, like the time):
    ``net``, ``net_kwargs`` (``shape`` is that of ``x`` for the U-Net),
    ``schedule``, ``parameterization``, ``weighting``, ``ema_decay``,
    ``sampler`` and the rest of the keyword arguments of
    :class:`~sbi_diffusion.inference.trainer.VectorFieldInference` mean the
    same, with ``x`` in place of ``theta``; ``embedding_net`` embeds
    ``theta``. ``train()`` takes the same arguments and standardises ``x``
    and ``theta`` from the training data.

    Args:
        prior: prior over ``theta``; needed for the posterior, and its draws
            check the shape of ``theta``.
        device: training and sampling device.
        show_progress_bars: show training and sampling progress.
        **estimator_kwargs: options of the conditional model (see above).

    Raises:
        ValueError: for ``theta_transform="support"``: the support is that of
            the prior over ``theta``, and ``x`` has no prior (pass a
            ``torch.distributions.Transform`` of ``x`` instead).
    """

    _conditional_class: type[VectorFieldInference] = DiffusionNPE

    def __init__(
        self,
        prior: Distribution | None = None,
        device: str = "cpu",
        show_progress_bars: bool = True,
        **estimator_kwargs: Any,
    ):
        if estimator_kwargs.get("theta_transform") == "support":
            raise ValueError(
                "theta_transform='support' maps a prior's support, and x has no "
                "prior: pass a torch.distributions.Transform of x, or None."
            )
        self._prior = prior
        self._device = device
        self._show_progress_bars = show_progress_bars
        self._estimator_kwargs = estimator_kwargs
        self._conditional: VectorFieldInference | None = None
        self._first_round: tuple[Tensor, Tensor] | None = None
        self._proposal_roundwise: list[Any] = []

    def _conditional_for(self, x: Tensor) -> VectorFieldInference:
        """The trainer of the conditional model of ``x`` given ``theta``, built
        at the first round (``x`` flattened). Its "prior" over ``x`` is a
        standard normal on ``R^d``, of which only the support (everywhere) and the shape
        are used: the conditional model never draws from it or weights by it.
        """
        if self._conditional is None:
            dim = int(x.shape[1:].numel())
            x_support = Independent(Normal(torch.zeros(dim), torch.ones(dim)), 1)
            self._conditional = self._conditional_class(
                prior=x_support,
                device=self._device,
                show_progress_bars=self._show_progress_bars,
                **self._estimator_kwargs,
            )
        return self._conditional

    def _trained_conditional(self) -> VectorFieldInference:
        """The trainer of the conditional model, once simulations are appended.

        Raises:
            ValueError: before ``append_simulations``.
        """
        if self._conditional is None:
            raise ValueError("No simulations: call append_simulations() first.")
        return self._conditional

    def append_simulations(
        self,
        theta: Tensor,
        x: Tensor,
        exclude_invalid_x: bool = True,
        from_round: int = 0,
        data_device: str | None = None,
        proposal: Any = None,
    ) -> DiffusionNLE:
        """Store parameters and simulations for training.

        Simulations with NaN or inf entries are excluded with a warning (set
        ``exclude_invalid_x=False`` to raise instead). Rounds from any
        proposal train together without a correction: the likelihood does not
        depend on the distribution of ``theta``.

        Args:
            theta: parameters ``(num_simulations, *theta_shape)``.
            x: simulations ``(num_simulations, *x_shape)``.
            exclude_invalid_x: drop (True) or reject (False) invalid simulations.
            from_round: round index, as in sbi.
            data_device: where to keep the data (default: the training device).
            proposal: the distribution ``theta`` was drawn from (recorded only).

        Returns:
            self, for chaining.

        Raises:
            ValueError: for shapes that do not match each other, the prior or
                earlier rounds, and invalid values.
        """
        theta, x = checked_round(
            theta, x, self._prior, self._first_round, exclude_invalid_x
        )
        if self._first_round is None:
            self._first_round = (theta[:1].cpu(), x[:1].cpu())
        flat_x = x.reshape(x.shape[0], -1)
        self._conditional_for(flat_x).append_simulations(
            flat_x, theta, from_round=from_round, data_device=data_device
        )
        self._proposal_roundwise.append(proposal)
        return self

    def train(self, **train_kwargs: Any) -> nn.Module:
        """Train the conditional model of ``x`` given ``theta``; the arguments
        of :meth:`~sbi_diffusion.inference.trainer.VectorFieldInference.train`.

        Returns:
            The trained (EMA) denoiser.
        """
        return self._trained_conditional().train(**train_kwargs)

    @property
    def resolved_training(self) -> dict[str, Any]:
        """The options the last training resolved (network, schedule, steps)."""
        return self._trained_conditional().resolved_training

    @property
    def summary(self) -> dict[str, Any]:
        """sbi's training summary (losses per epoch, best validation loss)."""
        return self._trained_conditional().summary

    def build_likelihood(
        self,
        estimator: nn.Module | None = None,
        sampler: str | Solver | None = None,
        max_sampling_batch_size: int | None = None,
        **sampler_options: Any,
    ) -> DiffusionLikelihood:
        """The learned likelihood, an emulator of the simulator.

        Args:
            estimator: a trained denoiser; the one from the last ``train()`` if
                None.
            sampler, sampler_options: its default sampler and options.
            max_sampling_batch_size: simulations drawn per batch (bounded by
                the dimension of ``x`` if None).

        Returns:
            A :class:`DiffusionLikelihood`.
        """
        conditional = self._trained_conditional().build_posterior(
            estimator,
            sampler=sampler,
            max_sampling_batch_size=max_sampling_batch_size,
            **sampler_options,
        )
        return DiffusionLikelihood(conditional, self._first_round[1].shape[1:])

    def build_posterior(
        self,
        estimator: nn.Module | None = None,
        prior: Distribution | None = None,
        sample_with: str = "mcmc",
        mcmc_method: str = "slice_np_vectorized",
        mcmc_parameters: Mapping[str, Any] | None = None,
        importance_sampling_parameters: Mapping[str, Any] | None = None,
        log_prob_options: Mapping[str, Any] | None = None,
    ) -> NeuralPosterior:
        r"""sbi's posterior on the learned likelihood:
        ``log p~(theta | x_1..x_N) = sum_i log q(x_i | theta) + log p(theta)``
        (:class:`~sbi_diffusion.inference.likelihood_potential.LikelihoodPotential`).

        Every evaluation of the potential solves the probability-flow ODE of
        the likelihood for each pair ``(theta, x_i)``, in one batch; the
        density has no gradient, so gradient-free MCMC (sbi's slice samplers)
        or importance sampling from the prior apply.

        Args:
            estimator: a trained denoiser; the one from the last ``train()`` if
                None.
            prior: the prior; the constructor's if None.
            sample_with: ``"mcmc"`` (sbi's ``MCMCPosterior``) or
                ``"importance"`` (sbi's ``ImportanceSamplingPosterior`` with the
                prior as proposal).
            mcmc_method: sbi's MCMC method.
            mcmc_parameters: further arguments of ``MCMCPosterior``
                (``num_chains``, ``thin``, ``warmup_steps``, ``init_strategy``).
            importance_sampling_parameters: further arguments of
                ``ImportanceSamplingPosterior`` (``oversampling_factor``, ...).
            log_prob_options: density options of the likelihood, over
                :data:`~sbi_diffusion.inference.likelihood_potential.DEFAULT_LOG_PROB_OPTIONS`.

        Returns:
            sbi's ``MCMCPosterior`` or ``ImportanceSamplingPosterior``.

        Raises:
            ValueError: without a prior, or for an unknown ``sample_with``.
        """
        if sample_with not in POSTERIOR_SAMPLERS:
            raise ValueError(
                f"Unknown sample_with {sample_with!r}; pass one of "
                f"{list(POSTERIOR_SAMPLERS)}."
            )
        prior = self._prior if prior is None else prior
        if prior is None:
            raise ValueError(
                "The posterior needs a prior: pass prior= to the constructor or here."
            )
        options = {**DEFAULT_LOG_PROB_OPTIONS, **(log_prob_options or {})}
        potential = LikelihoodPotential(
            self.build_likelihood(estimator),
            prior,
            device=self._device,
            log_prob_options=options,
        )
        transform = mcmc_transform(prior, device=self._device)
        if sample_with == "importance":
            return ImportanceSamplingPosterior(
                potential_fn=potential,
                proposal=prior,
                theta_transform=transform,
                device=self._device,
                **dict(importance_sampling_parameters or {}),
            )
        return MCMCPosterior(
            potential_fn=potential,
            proposal=prior,
            theta_transform=transform,
            method=mcmc_method,
            device=self._device,
            **dict(mcmc_parameters or {}),
        )


class FlowMatchingNLE(DiffusionNLE):
    """Neural likelihood estimation with a flow-matching model of ``x | theta``
    (Lipman et al. 2023); the interface and options of :class:`DiffusionNLE`,
    the defaults of :class:`~sbi_diffusion.inference.trainer.FlowMatchingNPE`."""

    _conditional_class = FlowMatchingNPE
