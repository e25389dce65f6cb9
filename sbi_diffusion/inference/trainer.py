r"""sbi trainers for diffusion and flow-matching posterior estimation.

:class:`DiffusionNPE` and :class:`FlowMatchingNPE` subclass sbi's
``NeuralInference`` so that ``append_simulations``, ``train`` and
``build_posterior`` behave as for ``sbi.inference.NPE``:

.. code-block:: python

    inference = DiffusionNPE(prior)
    inference.append_simulations(theta, x).train()
    posterior = inference.build_posterior()
    samples = posterior.sample((10_000,), x=x_o)

Training minimises the weighted denoising loss of
:meth:`sbi_diffusion.model.Denoiser.loss` with Adam, a learning-rate
warm-up (and cosine decay when ``max_num_epochs`` is given), gradient clipping,
an exponential moving average (EMA) of the weights used for sampling, and early
stopping on a validation loss evaluated at fixed times and noise.
"""

from __future__ import annotations

import inspect
import logging
import math
import numbers
import time
import warnings
from copy import deepcopy
from typing import Any

import torch
from sbi.inference.trainers.base import NeuralInference
from sbi.utils.sbiutils import ImproperEmpirical
from torch import Tensor, nn
from torch.distributions import Distribution
from tqdm.auto import tqdm

from sbi_diffusion.inference.posterior import DiffusionPosterior
from sbi_diffusion.inference.proposals import proposal_kind
from sbi_diffusion.model import Denoiser
from sbi_diffusion.nets import build_net
from sbi_diffusion.nets.noise_bands import NoiseBandSelection
from sbi_diffusion.nets.sizing import AUTO_SIZED_NETS, mlp_size
from sbi_diffusion.path.parameterizations import get_parameterization
from sbi_diffusion.path.schedules import get_schedule
from sbi_diffusion.path.weightings import check_weighting
from sbi_diffusion.samplers import get_sampler
from sbi_diffusion.training import (
    ExponentialMovingAverage,
    TrainingDivergedError,
    ValidationSet,
    learning_rate_factor,
    make_optimizer,
)

__all__ = ["VectorFieldInference", "DiffusionNPE", "FlowMatchingNPE"]

logger = logging.getLogger(__name__)


def _zscore_statistics(values: Tensor) -> tuple[Tensor, Tensor]:
    """Per-element mean and standard deviation (constant entries get std 1)."""
    mean = values.mean(dim=0, keepdim=True)
    std = values.std(dim=0, keepdim=True)
    std = torch.where(std < 1e-8, torch.ones_like(std), std)
    return mean, std


def as_simulation_batch(theta: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """``theta`` and ``x`` as float32 tensors, each with a batch dimension.

    Raises:
        ValueError: if either has fewer than two dimensions.
    """
    theta = torch.as_tensor(theta, dtype=torch.float32)
    x = torch.as_tensor(x, dtype=torch.float32)
    if theta.dim() < 2 or x.dim() < 2:
        raise ValueError(
            "theta and x need a batch dimension: got theta of shape "
            f"{tuple(theta.shape)} and x of shape {tuple(x.shape)}. Pass tensors "
            "of shape (num_simulations, dim)."
        )
    return theta, x


def validation_size(num_simulations: int, validation_fraction: float) -> int:
    """Simulations held out for validation: ``max(1, floor(f n))``."""
    return max(1, int(validation_fraction * num_simulations))


def steps_per_epoch(num_train: int, training_batch_size: int) -> int:
    """Optimiser steps of one epoch: ``max(1, floor(n_train / b))`` batches of
    ``b = min(training_batch_size, n_train)``."""
    return max(1, num_train // min(training_batch_size, num_train))


def patience_steps(
    stop_after_epochs: int, stop_after_steps: int, epoch_steps: int
) -> int:
    """Optimiser steps without a better validation loss before training stops.

    The larger of ``stop_after_epochs`` epochs (``stop_after_epochs *
    epoch_steps``) and ``stop_after_steps``. With few simulations an epoch is a
    handful of steps, and a patience counted in epochs alone would stop a
    diffusion model long before it has converged.
    """
    return max(int(stop_after_epochs) * epoch_steps, int(stop_after_steps))


VALIDATION_INTERVAL = 20
"""Default of ``train(validation_interval=...)``: optimiser steps between
validations, at least."""

AUTO_STEPS_PER_ROOT_SIMULATION = 130
"""``c`` of the ``"auto"`` step bound ``c sqrt(n_train)``."""

MIN_AUTO_STEPS = 1000
"""Floor of the ``"auto"`` step bound."""


def auto_max_num_steps(num_train: int) -> int:
    r"""The ``"auto"`` bound on optimiser steps for ``num_train`` training
    simulations:

    .. math::
        S_{max} = \max(10^3,\; \lceil 130 \sqrt{n_{train}} \rceil),

    3,900 steps at 10^3 simulations (900 for training), 12,333 at 10^4 and
    39,000 at 10^5. The number of passes over the data, ``S_max b / n_train``,
    falls as ``1 / sqrt(n_train)``: a small training set needs many passes
    (each sees new noise levels), a large one fewer. The learning rate decays
    over these steps (cosine), so the bound is also the length of the schedule
    when early stopping does not end training first.
    """
    steps = math.ceil(AUTO_STEPS_PER_ROOT_SIMULATION * math.sqrt(num_train))
    return max(MIN_AUTO_STEPS, steps)


def resolve_max_num_steps(
    max_num_steps: int | str | None, num_train: int
) -> int | None:
    """The bound on optimiser steps that ``train()`` uses.

    ``"auto"`` is :func:`auto_max_num_steps`, an integer is used as given, None
    means no bound (early stopping only).

    Raises:
        ValueError: for anything else, or an integer below 1.
    """
    if max_num_steps is None:
        return None
    if max_num_steps == "auto":
        return auto_max_num_steps(num_train)
    if isinstance(max_num_steps, bool) or not isinstance(
        max_num_steps, numbers.Integral
    ):
        raise ValueError(
            "max_num_steps must be a positive integer, 'auto' or None; got "
            f"{max_num_steps!r}."
        )
    if max_num_steps < 1:
        raise ValueError(f"max_num_steps must be at least 1, got {max_num_steps}.")
    return int(max_num_steps)


class VectorFieldInference(NeuralInference):
    """Shared trainer of denoising (diffusion / flow-matching) posterior estimators.

    Args:
        prior: prior over ``theta`` (any distribution sbi accepts); if None, an
            improper empirical prior is built from ``theta`` as in sbi.
        schedule: name of the path (see ``sbi_diffusion.path.schedules.SCHEDULES``) or
            a ``Schedule``.
        parameterization: what the network predicts (``eps``, ``x0``,
            ``velocity``, ``F``, ``score``) or a ``Parameterization``.
        weighting: loss weighting (``natural``, ``uniform``, ``edm``,
            ``sigmoid``, ``likelihood``).
        net: ``"mlp"`` (residual MLP), ``"adaln_mlp"`` or an ``nn.Module`` with
            signature ``net(z, condition_embedding, time)``.
        net_kwargs: width/depth/dropout of a named net. The residual MLPs'
            ``width`` and ``depth`` default to a size that grows with the
            number of simulations (:func:`~sbi_diffusion.nets.sizing.mlp_size`:
            width 128 and 2 blocks at 10^3, 128 and 3 at 10^4, 256 and 4 from
            10^5).
        embedding_net: network embedding ``x`` (e.g. from
            ``sbi.neural_nets.embedding_nets``); identity if None.
        condition_dropout: probability of dropping the condition in training
            (gives an unconditional score for guidance and composition). The
            dropped condition is a learned embedding marked by an extra input
            (1, against 0 for an observation), so a user ``nn.Module`` net then
            takes ``embedding_dim + 1`` condition inputs.
        ema_decay: decay of the weight EMA used for sampling (0: none).
        sampler: default sampler of the posterior.
        sampler_options: default options of the sampler (e.g. ``{"steps": 30}``).
        schedule_kwargs: options of a named schedule.
        device: training and sampling device.
        logging_level: as in sbi.
        show_progress_bars: show training and sampling progress.
        tracker: sbi tracker for training metrics.
    """

    default_schedule = "edm_vp"
    default_parameterization = "F"
    default_weighting = "edm"
    default_sampler = "heun"
    default_sampler_options: dict[str, Any] = {"steps": 18}
    _posterior_class: type[DiffusionPosterior] = DiffusionPosterior
    #: whether the residual MLPs' width and depth default to
    #: :func:`~sbi_diffusion.nets.sizing.mlp_size` (else to the nets' defaults)
    sizes_net_by_budget: bool = True

    def __init__(
        self,
        prior: Distribution | None = None,
        schedule: str | Any = None,
        parameterization: str | Any = None,
        weighting: str | None = None,
        net: str | nn.Module = "mlp",
        net_kwargs: dict | None = None,
        embedding_net: nn.Module | None = None,
        condition_dropout: float = 0.0,
        ema_decay: float = 0.999,
        sampler: str | None = None,
        sampler_options: dict | None = None,
        schedule_kwargs: dict | None = None,
        device: str = "cpu",
        logging_level: int | str = "WARNING",
        show_progress_bars: bool = True,
        tracker: Any = None,
        summary_writer: Any = None,
    ):
        super().__init__(
            prior=prior,
            device=device,
            logging_level=logging_level,
            summary_writer=summary_writer,
            tracker=tracker,
            show_progress_bars=show_progress_bars,
        )
        schedule = self.default_schedule if schedule is None else schedule
        self._schedule = get_schedule(schedule, **(schedule_kwargs or {}))
        self._parameterization = get_parameterization(
            self.default_parameterization
            if parameterization is None
            else parameterization
        )
        self._weighting = check_weighting(
            self.default_weighting if weighting is None else weighting
        )
        if isinstance(net, str):
            build_net(net, 1, 1, **(net_kwargs or {}))  # validates name and kwargs
        self._net_spec = net
        self._net_kwargs = dict(net_kwargs or {})
        self._embedding_net = embedding_net
        if not 0.0 <= condition_dropout < 1.0:
            raise ValueError(
                f"condition_dropout must be in [0, 1), got {condition_dropout}."
            )
        self._condition_dropout = condition_dropout
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}.")
        self._ema_decay = ema_decay
        self._sampler = self.default_sampler if sampler is None else sampler
        get_sampler(self._sampler)  # validates the name
        self._sampler_options = dict(
            self.default_sampler_options if sampler_options is None else sampler_options
        )
        self._ema: ExponentialMovingAverage | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._num_steps_done = 0
        #: per appended round: the proposal, and "prior" or "truncated_prior"
        self._proposal_roundwise: list[Any] = []
        self._proposal_kinds: list[str] = []

    # ----------------------------------------------------------------- data

    def append_simulations(
        self,
        theta: Tensor,
        x: Tensor,
        exclude_invalid_x: bool = True,
        from_round: int = 0,
        algorithm: str | None = None,
        data_device: str | None = None,
        proposal: Any = None,
    ) -> VectorFieldInference:
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
        theta, x = as_simulation_batch(theta, x)
        if theta.shape[0] != x.shape[0]:
            raise ValueError(
                f"theta has {theta.shape[0]} rows but x has {x.shape[0]}: pass one "
                "simulation per parameter set."
            )
        if not torch.isfinite(theta).all():
            raise ValueError("theta contains NaN or inf values; remove those rows.")
        self._check_theta_matches_prior(theta)
        if self._theta_roundwise:
            prev_theta, prev_x = self._theta_roundwise[0], self._x_roundwise[0]
            if (
                theta.shape[1:] != prev_theta.shape[1:]
                or x.shape[1:] != prev_x.shape[1:]
            ):
                raise ValueError(
                    f"New simulations have theta shape {tuple(theta.shape[1:])} and x "
                    f"shape {tuple(x.shape[1:])}, but earlier ones have "
                    f"{tuple(prev_theta.shape[1:])} and {tuple(prev_x.shape[1:])}."
                )
        flat = x.reshape(x.shape[0], -1)
        valid = torch.isfinite(flat).all(dim=1)
        num_invalid = int((~valid).sum())
        if num_invalid:
            if not exclude_invalid_x:
                raise ValueError(
                    f"Found {num_invalid} simulations with NaN or inf values. Pass "
                    "exclude_invalid_x=True to drop them, or replace them."
                )
            if num_invalid == x.shape[0]:
                raise ValueError("All simulations contain NaN or inf values.")
            warnings.warn(
                f"Found {num_invalid} simulations with NaN or inf values; they are "
                "excluded from training. This biases the posterior if invalid "
                "simulations depend on theta.",
                UserWarning,
                stacklevel=2,
            )
            theta, x = theta[valid], x[valid]
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

    def _check_theta_matches_prior(self, theta: Tensor) -> None:
        """Raise if a row of ``theta`` has another shape than a prior draw.

        Raises:
            ValueError: naming both shapes, when the prior is a proper one.
        """
        if self._prior is None or isinstance(self._prior, ImproperEmpirical):
            return
        with torch.no_grad():
            prior_shape = tuple(self._prior.sample((1,)).shape[1:])
        if tuple(theta.shape[1:]) != prior_shape:
            raise ValueError(
                f"theta has rows of shape {tuple(theta.shape[1:])}, but the prior "
                f"draws parameters of shape {prior_shape}. Pass theta of shape "
                f"(num_simulations, {', '.join(map(str, prior_shape))})."
            )

    # ------------------------------------------------------------- network

    def _build_denoiser(self, theta: Tensor, x: Tensor) -> Denoiser:
        theta_shape, x_shape = theta.shape[1:], x.shape[1:]
        theta_mean, theta_std = _zscore_statistics(theta.reshape(theta.shape[0], -1))
        x_mean, x_std = _zscore_statistics(x)
        embedding_net = (
            nn.Identity()
            if self._embedding_net is None
            else deepcopy(self._embedding_net)
        )
        with torch.no_grad():
            try:
                embedded = embedding_net(x[:2].cpu()).reshape(2, -1)
            except Exception as error:  # noqa: BLE001
                raise ValueError(
                    f"The embedding net failed on x of shape {tuple(x.shape[1:])}: "
                    f"{error}"
                ) from error
        condition_dim = embedded.shape[-1]
        theta_dim = int(theta_shape.numel())
        # models with condition dropout take a null-condition flag (Denoiser)
        net_condition_dim = condition_dim + (1 if self._condition_dropout > 0 else 0)
        net = build_net(
            self._net_spec,
            theta_dim,
            net_condition_dim,
            **self._resolved_net_kwargs(theta.shape[0], theta_dim),
        )
        if isinstance(self._net_spec, nn.Module):
            net = deepcopy(net)
        denoiser = Denoiser(
            net=net,
            schedule=self._schedule,
            parameterization=self._parameterization,
            input_shape=theta_shape,
            condition_shape=x_shape,
            embedding_net=embedding_net,
            weighting=self._weighting,
            theta_shift=theta_mean,
            theta_scale=theta_std,
            x_shift=x_mean,
            x_scale=x_std,
            condition_dropout=self._condition_dropout,
            condition_embedding_dim=condition_dim,
        )
        return denoiser.to(self._device)

    def _resolved_net_kwargs(self, num_simulations: int, theta_dim: int) -> dict:
        """The options of a named net: those given, with ``width`` and ``depth``
        of the residual MLPs sized by the budget where not given
        (:func:`~sbi_diffusion.nets.sizing.mlp_size`)."""
        options = dict(self._net_kwargs)
        named = isinstance(self._net_spec, str) and self._net_spec in AUTO_SIZED_NETS
        if named and self.sizes_net_by_budget:
            for key, value in mlp_size(num_simulations, theta_dim).items():
                options.setdefault(key, value)
        return options

    def _initialize_neural_network(self, retrain_from_scratch: bool, start_idx: int):
        theta, x, _ = self.get_simulations(start_idx)
        if self._neural_net is None or retrain_from_scratch:
            self._neural_net = self._build_denoiser(theta, x)
            self._ema = None
            self._optimizer = None
            self._num_steps_done = 0

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

    # --------------------------------------------------------------- train

    def train(
        self,
        training_batch_size: int = 256,
        learning_rate: float = 1e-3,
        validation_fraction: float = 0.1,
        stop_after_epochs: int = 30,
        stop_after_steps: int | str = "auto",
        max_num_epochs: int | None = None,
        max_num_steps: int | str | None = "auto",
        clip_max_norm: float | None = 1.0,
        warmup_steps: int = 200,
        final_learning_rate_factor: float = 0.05,
        weight_decay: float = 0.0,
        ema_decay: float | None = None,
        num_validation_noise: int = 4,
        validation_interval: int = VALIDATION_INTERVAL,
        noise_bands: int = 1,
        resume_training: bool = False,
        retrain_from_scratch: bool = False,
        discard_prior_samples: bool = False,
        show_train_summary: bool = False,
        seed: int | None = None,
        **kwargs,
    ) -> Denoiser:
        r"""Train the denoiser; returns the EMA estimator used for sampling.

        One call runs :meth:`_train_epoch` until a bound or the stopping rule
        ends it. The validation loss (:class:`ValidationSet`) is computed on the
        EMA weights at the end of the first epoch that completes at least
        ``validation_interval`` optimiser steps since the last one, and the
        weights with the lowest validation loss are returned.

        Args:
            training_batch_size: batch size.
            learning_rate: peak learning rate of AdamW.
            validation_fraction: fraction of simulations held out.
            stop_after_epochs: stop when the validation loss has not improved for
                this many epochs ...
            stop_after_steps: ... and for at least this many optimiser steps
                (:func:`patience_steps`); ``"auto"`` (default) is a quarter of
                the ``"auto"`` step bound (:func:`auto_max_num_steps`).
            max_num_epochs: upper bound on epochs.
            max_num_steps: upper bound on optimiser steps: ``"auto"`` (default)
                scales with the training set (:func:`auto_max_num_steps`), an
                integer is used as given, None means no bound. The learning rate
                decays (cosine) over the smaller of this and ``max_num_epochs``;
                training also stops early when the validation loss stalls.
            clip_max_norm: gradient-norm clipping (None: off).
            warmup_steps: linear learning-rate warm-up steps.
            final_learning_rate_factor: learning rate at the end of the cosine
                decay, relative to ``learning_rate``.
            weight_decay: AdamW weight decay.
            ema_decay: override the constructor's EMA decay.
            num_validation_noise: fixed (time, noise) draws per validation sample;
                the validation loss uses fixed times (quantiles of the training
                time distribution) and fixed noise, so it is not noise itself.
            validation_interval: optimiser steps between validations, at least
                (validation happens at the end of an epoch).
            noise_bands: number of noise bands with their own early stopping
                (:class:`~sbi_diffusion.nets.noise_bands.NoiseBandSelection`).
                With 1 (default) the weights with the lowest validation loss are
                kept. With ``K > 1`` the validation set is split into ``K`` bands
                of noise levels, the weights with the lowest loss on each band
                are kept, and the returned estimator uses each band's weights for
                its noise levels; training stops when no band has improved for
                the patience.
            resume_training: continue from the current network and optimiser.
            retrain_from_scratch: re-initialise the network.
            discard_prior_samples: unsupported (single-round method); must be
                False.
            show_train_summary: print a summary when training ends.
            seed: seed of the data split, training noise and validation noise.

        Returns:
            The trained (EMA) :class:`~sbi_diffusion.model.Denoiser`.

        Raises:
            TrainingDivergedError: if the loss becomes NaN or infinite.
        """
        self._check_train_arguments(
            kwargs,
            discard_prior_samples,
            stop_after_epochs,
            stop_after_steps,
            training_batch_size,
            learning_rate,
            validation_fraction,
            validation_interval,
        )
        generator = torch.Generator(device="cpu")
        generator.manual_seed(
            int(torch.randint(0, 2**31 - 1, (1,))) if seed is None else seed
        )
        theta, x, _ = self.get_simulations(0)
        num = theta.shape[0]
        num_val = validation_size(num, validation_fraction)
        if num - num_val < 2:
            raise ValueError(
                f"Only {num} simulations: too few to train. Append more simulations."
            )

        fresh_split = getattr(self, "train_indices", None) is None
        if not resume_training or self._neural_net is None or fresh_split:
            permutation = torch.randperm(num, generator=generator)
            self.train_indices = permutation[num_val:]
            self.val_indices = permutation[:num_val]
            self._initialize_neural_network(retrain_from_scratch, 0)
            self._best_val_loss = float("inf")
            self._steps_since_last_improvement = 0
            self._epoch = 0
            # a new call (a new round, say) runs its own warm-up and decay
            self._schedule_start = self._num_steps_done
        net = self._neural_net
        device = self._device
        train_theta = theta[self.train_indices].to(device)
        train_x = x[self.train_indices].to(device)

        decay = self._ema_decay if ema_decay is None else ema_decay
        if self._ema is None:
            self._ema = ExponentialMovingAverage(net, decay)
        self._ema.decay = decay
        if self._optimizer is None:
            self._optimizer = make_optimizer(
                list(net.parameters()), learning_rate, weight_decay
            )

        validation = ValidationSet.build(
            theta[self.val_indices],
            x[self.val_indices],
            self._schedule,
            num_validation_noise,
            device,
        )
        self._validation_set = validation
        selection = getattr(self, "_band_selection", None)
        if (
            not resume_training
            or selection is None
            or selection.num_bands != (noise_bands)
        ):
            selection = NoiseBandSelection(net, validation.times, noise_bands)
        self._band_selection = selection

        num_train = train_theta.shape[0]
        batch_size = min(training_batch_size, num_train)
        epoch_steps = steps_per_epoch(num_train, training_batch_size)
        auto_steps = auto_max_num_steps(num_train)
        if stop_after_steps == "auto":
            stop_after_steps = auto_steps // 4
        patience = patience_steps(stop_after_epochs, stop_after_steps, epoch_steps)
        max_epochs = 2**31 - 1 if max_num_epochs is None else int(max_num_epochs)
        step_bound = resolve_max_num_steps(max_num_steps, num_train)
        bounds = [b for b in (step_bound,) if b is not None]
        if max_num_epochs is not None:
            bounds.append(max_epochs * epoch_steps)
        total_steps = min(bounds) if bounds else None
        if total_steps is not None:
            max_epochs = min(max_epochs, -(-total_steps // epoch_steps))
        best_state = deepcopy(self._ema.model.state_dict())

        progress = tqdm(
            total=None if total_steps is None else max_epochs,
            disable=not self._show_progress_bars,
            desc="Training",
            leave=False,
        )
        epochs_this_call = 0
        steps_since_validation = 0
        train_losses: list[float] = []
        stopped_early = False
        start = time.time()
        while epochs_this_call < max_epochs:
            order = torch.randperm(num_train, generator=generator).to(device)
            try:
                train_losses.append(
                    self._train_epoch(
                        train_theta,
                        train_x,
                        order,
                        batch_size,
                        epoch_steps,
                        learning_rate,
                        warmup_steps,
                        total_steps,
                        final_learning_rate_factor,
                        clip_max_norm,
                    )
                )
            except TrainingDivergedError:
                progress.close()
                raise
            self._epoch += 1
            epochs_this_call += 1
            steps_since_validation += epoch_steps
            progress.update(1)
            last_epoch = epochs_this_call == max_epochs
            if steps_since_validation < validation_interval and not last_epoch:
                continue
            val_rows = validation.losses(self._ema.model)
            val_loss = val_rows.mean().item()
            self._val_loss = val_loss
            improved = val_loss < self._best_val_loss
            if improved:
                self._best_val_loss = val_loss
                best_state = deepcopy(self._ema.model.state_dict())
            if selection.num_bands > 1:
                improved = selection.update(val_rows, self._ema.model) or improved
            if improved:
                self._steps_since_last_improvement = 0
            else:
                self._steps_since_last_improvement += steps_since_validation
            train_loss = sum(train_losses) / len(train_losses)
            self._record_validation(train_loss, val_loss, time.time() - start)
            progress.set_postfix(val_loss=f"{val_loss:.4f}")
            train_losses, steps_since_validation, start = [], 0, time.time()
            if self._steps_since_last_improvement >= patience:
                stopped_early = not last_epoch
                break
        progress.close()
        self._resolved_training = {
            "net": self._net_spec
            if isinstance(self._net_spec, str)
            else type(self._net_spec).__name__,
            "net_kwargs": self._resolved_net_kwargs(num, int(theta[0].numel())),
            "max_num_steps": total_steps,
            "patience_steps": patience,
            "steps_trained": self._num_steps_done,
            "epochs_trained": self._epoch,
        }
        self._ema.model.load_state_dict(best_state)
        self._summary["epochs_trained"].append(self._epoch)
        self._summary["best_validation_loss"].append(self._best_val_loss)
        self._tracker.flush()
        self._report_end_of_training(stopped_early, patience, show_train_summary)
        if selection.num_bands > 1:
            self._trained_estimator = selection.build(self._ema.model)
        else:
            self._trained_estimator = self._ema.model
        return deepcopy(self._trained_estimator)

    @property
    def resolved_training(self) -> dict[str, Any]:
        """What the last ``train()`` resolved its defaults to: the network
        (``net``, ``net_kwargs``), the step bound (``max_num_steps``, None for
        none), the patience in steps, and the steps and epochs trained. Empty
        before training."""
        return dict(getattr(self, "_resolved_training", {}))

    @classmethod
    def training_recipe(cls) -> dict[str, Any]:
        """The defaults that decide what a training with no options builds: the
        constructor's and ``train()``'s default arguments, the class defaults and
        the budget rules (:func:`auto_max_num_steps`,
        :func:`~sbi_diffusion.nets.sizing.mlp_size`). A model cache keys its
        files on it, so a changed default never reuses a model trained under the
        old one."""

        def defaults(func: Any) -> dict[str, str]:
            return {
                name: repr(p.default)
                for name, p in inspect.signature(func).parameters.items()
                if p.default is not inspect.Parameter.empty
            }

        return {
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "init": defaults(cls.__init__),
            "train": defaults(cls.train),
            "schedule": repr(cls.default_schedule),
            "parameterization": repr(cls.default_parameterization),
            "weighting": repr(cls.default_weighting),
            "sizes_net_by_budget": cls.sizes_net_by_budget,
            "sizing": [mlp_size(10**k, 2) for k in range(2, 7)],
            "steps": [auto_max_num_steps(10**k) for k in range(2, 7)],
        }

    def _check_train_arguments(
        self,
        kwargs: dict[str, Any],
        discard_prior_samples: bool,
        stop_after_epochs: int,
        stop_after_steps: int | str,
        training_batch_size: int,
        learning_rate: float,
        validation_fraction: float,
        validation_interval: int,
    ) -> None:
        """Raise a ValueError naming the first invalid argument of ``train()``."""
        unknown = set(kwargs) - {
            "calibration_kernel",
            "exclude_invalid_x",
            "dataloader_kwargs",
            "force_first_round_loss",
        }
        if unknown:
            raise ValueError(
                f"Unknown train() arguments {sorted(unknown)}. See "
                f"{type(self).__name__}.train for the accepted ones."
            )
        if discard_prior_samples:
            raise ValueError("discard_prior_samples is not supported: single round.")
        if not self._theta_roundwise:
            raise ValueError(
                "No simulations: call append_simulations(theta, x) before train()."
            )
        steps_ok = stop_after_steps == "auto" or (
            isinstance(stop_after_steps, numbers.Integral) and stop_after_steps >= 0
        )
        if stop_after_epochs < 1 or not steps_ok:
            raise ValueError(
                "stop_after_epochs must be positive and stop_after_steps "
                f"non-negative or 'auto', got {stop_after_epochs} and "
                f"{stop_after_steps!r}."
            )
        if training_batch_size < 1 or learning_rate <= 0:
            raise ValueError("training_batch_size and learning_rate must be positive.")
        if not 0.0 < validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must be in (0, 1), got {validation_fraction}."
            )
        if validation_interval < 1:
            raise ValueError(
                f"validation_interval must be at least 1, got {validation_interval}."
            )

    def _train_epoch(
        self,
        train_theta: Tensor,
        train_x: Tensor,
        order: Tensor,
        batch_size: int,
        epoch_steps: int,
        learning_rate: float,
        warmup_steps: int,
        total_steps: int | None,
        final_learning_rate_factor: float,
        clip_max_norm: float | None,
    ) -> float:
        """One pass over the training set in the order ``order``; returns the
        mean training loss. Each step sets the scheduled learning rate
        (:func:`~sbi_diffusion.training.learning_rate_factor`), takes an AdamW
        step on the denoising loss and moves the EMA.

        Raises:
            TrainingDivergedError: if the loss becomes NaN or infinite.
        """
        net = self._neural_net
        net.train()
        parameters = list(net.parameters())
        losses = []
        for b in range(epoch_steps):
            idx = order[b * batch_size : (b + 1) * batch_size]
            factor = learning_rate_factor(
                self._num_steps_done - getattr(self, "_schedule_start", 0),
                warmup_steps,
                total_steps,
                final_learning_rate_factor,
            )
            for group in self._optimizer.param_groups:
                group["lr"] = learning_rate * factor
            self._optimizer.zero_grad(set_to_none=True)
            loss = net.loss(train_theta[idx], train_x[idx]).mean()
            loss.backward()
            if clip_max_norm is not None:
                torch.nn.utils.clip_grad_norm_(parameters, clip_max_norm, foreach=True)
            self._optimizer.step()
            self._ema.update(net)
            self._num_steps_done += 1
            losses.append(loss.detach())
        epoch_loss = torch.stack(losses).mean().item()
        if not math.isfinite(epoch_loss):
            raise TrainingDivergedError(
                f"The training loss became {epoch_loss} by step "
                f"{self._num_steps_done}. Lower the learning_rate, use "
                "clip_max_norm, or check theta and x for extreme values."
            )
        return epoch_loss

    def _record_validation(
        self, train_loss: float, val_loss: float, duration: float
    ) -> None:
        """Append one validation to the summary and the tracker."""
        self._summary["training_loss"].append(train_loss)
        self._summary["validation_loss"].append(val_loss)
        self._summary["epoch_durations_sec"].append(duration)
        self._tracker.log_metric("validation_loss", val_loss, step=self._epoch)
        self._tracker.log_metric("training_loss", train_loss, step=self._epoch)

    def _report_end_of_training(
        self, stopped_early: bool, patience: int, show_summary: bool
    ) -> None:
        """Say how training ended: the epochs and steps run, the best validation
        loss and, after early stopping, why it stopped. Always logged; printed
        with ``show_summary``, and after early stopping when progress bars are
        on (the bar then ends before its total)."""
        message = (
            f"{type(self).__name__}: trained {self._epoch} epochs "
            f"({self._num_steps_done} steps), best validation loss "
            f"{self._best_val_loss:.4f}"
        )
        if stopped_early:
            message += f"; stopped early: no improvement in the last {patience} steps"
        logger.info(message)
        if show_summary:
            print(message + ".")
        elif stopped_early and self._show_progress_bars:
            tqdm.write(message + ".")

    # ----------------------------------------------------------- posterior

    def build_posterior(
        self,
        estimator: Denoiser | None = None,
        prior: Distribution | None = None,
        sampler: str | None = None,
        max_sampling_batch_size: int = 10_000,
        **sampler_options,
    ) -> DiffusionPosterior:
        """Build the posterior from the trained (EMA) denoiser.

        Args:
            estimator: a trained denoiser; the one from the last ``train()`` if None.
            prior: the prior; the constructor's (or the empirical one) if None.
            sampler: default sampler name; the trainer's default if None.
            max_sampling_batch_size: samples drawn per batch.
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
        if getattr(self, "_trained_estimator", None) is None:
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
        max_sampling_batch_size: int,
        sampler_options: dict[str, Any],
    ) -> dict[str, Any]:
        """Keyword arguments of a posterior: the trainer's sampler and sampler
        options, updated by those given, and its device."""
        options = dict(self._sampler_options)
        options.update(sampler_options)
        return {
            "sampler": self._sampler if sampler is None else sampler,
            "sampler_options": options,
            "max_sampling_batch_size": max_sampling_batch_size,
            "device": self._device,
        }


class DiffusionNPE(VectorFieldInference):
    """Score-based diffusion posterior estimation.

    Defaults follow the best configuration of Arruda et al. 2025 ("Diffusion
    models in simulation-based inference"): the EDM noise levels on a
    variance-preserving path, F-prediction with EDM preconditioning and EDM loss
    weighting (Karras et al. 2022), an EMA of the weights. Sampled by default with
    DPM-Solver++(2M), 20 steps (21 network evaluations), chosen by benchmark: on
    sbibm two_moons at 10^4 (observations 1-3) it gave a lower mean C2ST (0.533)
    than EDM's Heun sampler with 18 steps (0.547, 37 evaluations); see
    ``benchmarks/core``.
    """

    default_schedule = "edm_vp"
    default_parameterization = "F"
    default_weighting = "edm"
    default_sampler = "dpm++2m"
    default_sampler_options = {"steps": 20}


class FlowMatchingNPE(VectorFieldInference):
    """Flow-matching posterior estimation (Lipman et al. 2023; Wildberger et al.
    2023, FMPE): the rectified-flow path with a velocity network trained on the
    conditional flow-matching loss. Sampled by default with DPM-Solver++(2M), 20
    steps (20 network evaluations), chosen by benchmark: on sbibm two_moons,
    gaussian_mixture and slcp at 10^4 (observations 1-5) its mean C2ST (0.610,
    0.598, 0.873) equals Heun's with 18 steps (0.615, 0.596, 0.874) at 57% of the
    network evaluations (20 against 35); see ``benchmarks/core``.
    """

    default_schedule = "rectified_flow"
    default_parameterization = "velocity"
    default_weighting = "natural"
    default_sampler = "dpm++2m"
    default_sampler_options = {"steps": 20}
