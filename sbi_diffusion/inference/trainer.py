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
stopping on a validation loss evaluated at fixed times and noise. The parts of
``train()`` live in :mod:`~sbi_diffusion.inference.budget` (how long),
:mod:`~sbi_diffusion.inference.validation`, :mod:`~sbi_diffusion.inference.stopping`
and :mod:`~sbi_diffusion.inference.training_loop`.
"""

from __future__ import annotations

import logging
from copy import deepcopy
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from torch.distributions.transforms import Transform
from tqdm.auto import tqdm

from sbi_diffusion.inference.base import InferenceBase
from sbi_diffusion.inference.budget import (  # noqa: F401  (importable from here)
    AUTO_STEPS_PER_ROOT_SIMULATION,
    DEFAULT_MAX_NUM_STEPS,
    MIN_AUTO_STEPS,
    VALIDATION_INTERVAL,
    TrainingBudget,
    auto_max_num_steps,
    check_train_arguments,
    patience_steps,
    resolve_max_num_steps,
    steps_per_epoch,
    training_recipe,
)
from sbi_diffusion.inference.denoiser_builder import (
    build_denoiser,
    resolved_net_kwargs,
)
from sbi_diffusion.inference.ensemble_training import EnsembleTraining
from sbi_diffusion.inference.optimization import (
    ExponentialMovingAverage,
    make_optimizer,
)
from sbi_diffusion.inference.posterior import DiffusionPosterior
from sbi_diffusion.inference.simulations import (  # noqa: F401  (importable here)
    as_simulation_batch,
)
from sbi_diffusion.inference.stopping import StoppingRule, stopping_rule_for_call
from sbi_diffusion.inference.training_loop import (
    LearningRateSchedule,
    OptimizerStep,
    TrainingLoop,
    TrainingProgress,
    end_of_training_message,
)
from sbi_diffusion.inference.validation import (
    ValidationSet,
    split_indices,
    validation_size,
)
from sbi_diffusion.model import Denoiser
from sbi_diffusion.model.theta_transform import (
    check_theta_transform,
    resolve_theta_transform,
)
from sbi_diffusion.nets.registry import check_net_options, has_trainable_parameters
from sbi_diffusion.path.parameterizations import get_parameterization
from sbi_diffusion.path.schedules import get_schedule
from sbi_diffusion.path.weightings import check_weighting
from sbi_diffusion.samplers import get_sampler

__all__ = ["VectorFieldInference", "DiffusionNPE", "FlowMatchingNPE"]


logger = logging.getLogger(__name__)


class VectorFieldInference(InferenceBase):
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
        net: ``"mlp"`` (residual MLP), ``"adaln_mlp"``, ``"unet"`` (for
            parameters that are fields, :class:`~sbi_diffusion.nets.UNet`; needs
            ``net_kwargs={"shape": (C, H, W)}``) or an ``nn.Module`` with
            signature ``net(z, condition_embedding, time)``.
        net_kwargs: options of a named net (width/depth/dropout of the MLPs;
            shape/channels/blocks_per_level/attention of the U-Net). The
            residual MLPs' ``width`` and ``depth`` default to a size that grows
            with the number of simulations
            (:func:`~sbi_diffusion.nets.sizing.mlp_size`: width 128 and 2
            blocks at 10^3, 128 and 3 at 10^4, 256 and 4 from 10^5); the U-Net
            is not sized by the budget.
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
        theta_transform: learn in an unbounded space
            (:mod:`sbi_diffusion.model.theta_transform`): None (``theta`` as it
            is), ``"support"`` (``u = T(theta)`` for the bijection ``T`` from
            the prior's support onto ``R^d``: log for a positive support, logit
            for a box, as sbi's ``mcmc_transform``) or a
            ``torch.distributions.Transform`` from ``theta`` to ``u``. The
            posterior still samples ``theta`` and evaluates ``log p(theta | x)``
            with the log-determinant of ``T``.
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
    _posterior_class = DiffusionPosterior
    #: whether the residual MLPs' width and depth default to
    #: :func:`~sbi_diffusion.nets.sizing.mlp_size` (else to the nets' defaults)
    sizes_net_by_budget: bool = True
    #: options of the default schedule used when ``embedding_net`` has trainable
    #: parameters (those in ``schedule_kwargs`` take precedence)
    learned_embedding_schedule_kwargs: dict[str, float] = {}

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
        theta_transform: str | Transform | None = None,
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
        schedule_kwargs = dict(schedule_kwargs or {})
        if schedule == self.default_schedule and has_trainable_parameters(
            embedding_net
        ):
            defaults = self.learned_embedding_schedule_kwargs
            schedule_kwargs = {**defaults, **schedule_kwargs}
        self._schedule = get_schedule(schedule, **schedule_kwargs)
        self._parameterization = get_parameterization(
            self.default_parameterization
            if parameterization is None
            else parameterization
        )
        self._weighting = check_weighting(
            self.default_weighting if weighting is None else weighting
        )
        check_net_options(net, dict(net_kwargs or {}))
        self._net_spec = net
        self._net_kwargs = dict(net_kwargs or {})
        self._embedding_net = embedding_net
        if not 0.0 <= condition_dropout < 1.0:
            raise ValueError(
                f"condition_dropout must be in [0, 1), got {condition_dropout}."
            )
        self._condition_dropout = condition_dropout
        check_theta_transform(theta_transform)
        self._theta_transform_spec = theta_transform
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
        self._progress = TrainingProgress()
        self._stopping_rule: StoppingRule | None = None
        self._resolved_training: dict[str, Any] = {}
        self.train_indices: Tensor | None = None
        self.val_indices: Tensor | None = None

    # ------------------------------------------------------------- network

    def _build_denoiser(self, theta: Tensor, x: Tensor) -> Denoiser:
        """A new denoiser of this trainer's options for ``theta`` and ``x``
        (:func:`~sbi_diffusion.inference.denoiser_builder.build_denoiser`)."""
        theta_dim = int(theta.shape[1:].numel())
        denoiser = build_denoiser(
            theta,
            x,
            net=self._net_spec,
            net_kwargs=self._resolved_net_kwargs(theta.shape[0], theta_dim),
            embedding_net=self._embedding_net,
            condition_dropout=self._condition_dropout,
            schedule=self._schedule,
            parameterization=self._parameterization,
            weighting=self._weighting,
            theta_transform=resolve_theta_transform(
                self._theta_transform_spec, self._prior
            ),
        )
        return denoiser.to(self._device)

    def _resolved_net_kwargs(self, num_simulations: int, theta_dim: int) -> dict:
        """The options of a named net: those given, with ``width`` and ``depth``
        of the residual MLPs sized by the budget where not given
        (:func:`~sbi_diffusion.nets.sizing.mlp_size`)."""
        return resolved_net_kwargs(
            self._net_spec,
            self._net_kwargs,
            self.sizes_net_by_budget,
            num_simulations,
            theta_dim,
        )

    def _initialize_neural_network(self, retrain_from_scratch: bool, start_idx: int):
        theta, x, _ = self.get_simulations(start_idx)
        if self._neural_net is None or retrain_from_scratch:
            self._neural_net = self._build_denoiser(theta, x)
            self._ema = None
            self._optimizer = None
            self._progress.steps_done = 0

    # --------------------------------------------------------------- train

    def train(
        self,
        training_batch_size: int = 256,
        learning_rate: float = 1e-3,
        validation_fraction: float = 0.1,
        stop_after_epochs: int = 30,
        stop_after_steps: int | str = "auto",
        max_num_epochs: int | None = None,
        max_num_steps: int | str | None = DEFAULT_MAX_NUM_STEPS,
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

        One call runs the
        :class:`~sbi_diffusion.inference.training_loop.TrainingLoop` until a
        bound or the stopping rule ends it. The validation loss
        (:class:`~sbi_diffusion.inference.validation.ValidationSet`) is computed
        on the EMA weights at the end of the first epoch that completes at least
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
                (:class:`~sbi_diffusion.inference.stopping.NoiseBandStopping`).
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
        check_train_arguments(
            type(self).__name__,
            bool(self._theta_roundwise),
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
        restarted = self._split_simulations(
            num, validation_fraction, generator, resume_training, retrain_from_scratch
        )
        net = self._neural_net
        device = self._device
        # the simulations stay where append_simulations keeps them (its
        # data_device, by default the training device); batches move to device
        train_theta = theta[self.train_indices.to(theta.device)]
        train_x = x[self.train_indices.to(x.device)]
        self._prepare_optimizer(
            self._ema_decay if ema_decay is None else ema_decay,
            learning_rate,
            weight_decay,
        )
        validation = ValidationSet.build(
            theta[self.val_indices.to(theta.device)],
            x[self.val_indices.to(x.device)],
            self._schedule,
            num_validation_noise,
        )
        rule = stopping_rule_for_call(
            self._stopping_rule,
            noise_bands,
            self._neural_net,
            validation.times,
            resume_training=resume_training,
            restarted=restarted,
        )
        self._stopping_rule = rule
        budget = TrainingBudget.resolve(
            train_theta.shape[0],
            training_batch_size,
            stop_after_epochs,
            stop_after_steps,
            max_num_epochs,
            max_num_steps,
        )
        rule.begin(self._ema.model, budget.patience)
        schedule = LearningRateSchedule(
            learning_rate,
            warmup_steps,
            budget.total_steps,
            final_learning_rate_factor,
            self._progress.schedule_start,
        )
        loop = TrainingLoop(
            step=OptimizerStep(
                net, self._optimizer, self._ema, schedule, clip_max_norm
            ),
            theta=train_theta,
            x=train_x,
            validation=validation,
            rule=rule,
            budget=budget,
            validation_interval=validation_interval,
            progress=self._progress,
            record=self._record_validation,
            device=device,
        )
        stopped_early = loop.run(generator, self._show_progress_bars)
        self._resolved_training = {
            "net": self._net_spec
            if isinstance(self._net_spec, str)
            else type(self._net_spec).__name__,
            "net_kwargs": self._resolved_net_kwargs(num, int(theta[0].numel())),
            "theta_transform": self._theta_transform_spec
            if self._theta_transform_spec is None
            or isinstance(self._theta_transform_spec, str)
            else " ".join(repr(self._theta_transform_spec).split()),
            "schedule": repr(self._schedule),
            "max_num_steps": budget.total_steps,
            "patience_steps": budget.patience,
            "steps_trained": self._progress.steps_done,
            "epochs_trained": self._progress.epochs,
            "seed": seed,
        }
        self._trained_estimator = rule.estimator(self._ema.model)
        self._best_val_loss = rule.best_loss
        self._summary["epochs_trained"].append(self._progress.epochs)
        self._summary["best_validation_loss"].append(rule.best_loss)
        self._tracker.flush()
        self._report_end_of_training(stopped_early, budget.patience, show_train_summary)
        return deepcopy(self._trained_estimator)

    def _split_simulations(
        self,
        num: int,
        validation_fraction: float,
        generator: torch.Generator,
        resume_training: bool,
        retrain_from_scratch: bool,
    ) -> bool:
        """Hold out the validation simulations (a permutation drawn from
        ``generator``) and build the network if there is none, unless a resumed
        call goes on with the split and network it has. Returns True if training
        restarted.

        Raises:
            ValueError: if fewer than two simulations would remain for training.
        """
        num_val = validation_size(num, validation_fraction)
        if num - num_val < 2:
            raise ValueError(
                f"Only {num} simulations: too few to train. Append more simulations."
            )
        resumed = resume_training and self._neural_net is not None
        if resumed and self.train_indices is not None:
            return False
        self.train_indices, self.val_indices = split_indices(num, num_val, generator)
        self._initialize_neural_network(retrain_from_scratch, 0)
        self._progress.restart()
        return True

    def _prepare_optimizer(
        self, ema_decay: float, learning_rate: float, weight_decay: float
    ) -> None:
        """Create the weight EMA and the optimiser where there are none, and set
        the EMA's decay."""
        if self._ema is None:
            self._ema = ExponentialMovingAverage(self._neural_net, ema_decay)
        self._ema.decay = ema_decay
        if self._optimizer is None:
            self._optimizer = make_optimizer(
                list(self._neural_net.parameters()), learning_rate, weight_decay
            )

    @property
    def resolved_training(self) -> dict[str, Any]:
        """What the last ``train()`` resolved its defaults to: the network
        (``net``, ``net_kwargs``), the ``theta_transform``, the step bound
        (``max_num_steps``, None for none), the patience in steps, and the steps
        and epochs trained. Empty before training."""
        return dict(self._resolved_training)

    @classmethod
    def training_recipe(cls) -> dict[str, Any]:
        """The defaults that decide what a training with no options builds
        (:func:`~sbi_diffusion.inference.budget.training_recipe`). A model cache
        keys its files on it, so a changed default never reuses a model trained
        under the old one."""
        return training_recipe(cls)

    def _record_validation(
        self, train_loss: float, val_loss: float, duration: float
    ) -> None:
        """Append one validation to the summary and the tracker."""
        self._val_loss = val_loss
        self._best_val_loss = self._stopping_rule.best_loss
        self._summary["training_loss"].append(train_loss)
        self._summary["validation_loss"].append(val_loss)
        self._summary["epoch_durations_sec"].append(duration)
        epoch = self._progress.epochs
        self._tracker.log_metric("validation_loss", val_loss, step=epoch)
        self._tracker.log_metric("training_loss", train_loss, step=epoch)

    def _report_end_of_training(
        self, stopped_early: bool, patience: int, show_summary: bool
    ) -> None:
        """Say how training ended: the epochs and steps run, the best validation
        loss and, after early stopping, why it stopped. Always logged; printed
        with ``show_summary``, and after early stopping when progress bars are
        on (the bar then ends before its total)."""
        message = end_of_training_message(
            type(self).__name__,
            self._progress,
            self._best_val_loss,
            patience if stopped_early else None,
        )
        logger.info(message)
        if show_summary:
            print(message + ".")
        elif stopped_early and self._show_progress_bars:
            tqdm.write(message + ".")


class DiffusionNPE(EnsembleTraining, VectorFieldInference):
    """Score-based diffusion posterior estimation.

    Defaults follow the best configuration of Arruda et al. 2025 ("Diffusion
    models in simulation-based inference"): the EDM noise levels on a
    variance-preserving path, F-prediction with EDM preconditioning and EDM loss
    weighting (Karras et al. 2022), an EMA of the weights. Sampled by default with
    DPM-Solver++(2M) (Lu et al. 2022), 20 steps (21 network evaluations), chosen
    by benchmark against EDM's Heun sampler (``benchmarks/training_speed``,
    "Evidence behind defaults").

    Training draws the noise level ``s = sigma / alpha`` as ``log s ~ N(P_mean,
    P_std^2)`` with EDM's ``(-1.2, 1.2)``, which puts 16% of the training above
    ``s = 1``. With an ``embedding_net`` that has trainable parameters (images,
    sets, time series) the default is ``(0.5, 1.5)`` instead, 63% above
    ``s = 1``: the embedding learns only through the part of the denoiser that
    depends on ``x``, and that part dominates at high noise, where
    ``x_hat(z_t, t | x) -> E[theta | x]``. Pass ``schedule_kwargs={"p_mean":
    ..., "p_std": ...}`` to choose. Evidence: ``benchmarks/fields/README.md``,
    problem (b); without an embedding, higher levels trade the low-noise
    accuracy that sharp sbibm posteriors need (``benchmarks/README.md``, "The
    training noise levels on bernoulli_glm").
    """

    default_schedule = "edm_vp"
    default_parameterization = "F"
    default_weighting = "edm"
    default_sampler = "dpm++2m"
    default_sampler_options = {"steps": 20}
    learned_embedding_schedule_kwargs = {"p_mean": 0.5, "p_std": 1.5}


class FlowMatchingNPE(EnsembleTraining, VectorFieldInference):
    """Flow-matching posterior estimation (Lipman et al. 2023; Wildberger et al.
    2023, FMPE): the rectified-flow path with a velocity network trained on the
    conditional flow-matching loss. Sampled by default with DPM-Solver++(2M)
    (Lu et al. 2022), 20 steps (20 network evaluations), chosen by benchmark
    against Heun's sampler (``benchmarks/training_speed``, "Evidence behind
    defaults").
    """

    default_schedule = "rectified_flow"
    default_parameterization = "velocity"
    default_weighting = "natural"
    default_sampler = "dpm++2m"
    default_sampler_options = {"steps": 20}
