r"""Consistency-model posterior estimation: the trainer, for posterior samples in
one to four network evaluations.

:class:`ConsistencyNPE` trains a conditional consistency function
(:class:`~sbi_diffusion.consistency.model.ConsistencyModel`) either from
simulations alone (consistency training, the improved recipe of Song & Dhariwal
2023) or by distilling a trained diffusion estimator (Song et al. 2023), and
:class:`~sbi_diffusion.consistency.posterior.ConsistencyPosterior` samples it
with multistep consistency sampling (Schmitt et al. 2024, "Consistency Models
for Scalable and Fast Simulation-Based Inference"):

.. code-block:: python

    inference = ConsistencyNPE(prior)
    inference.append_simulations(theta, x).train(max_num_epochs=300)
    posterior = inference.build_posterior()
    samples = posterior.sample((10_000,), x=x_o, steps=2)  # 2 network evaluations

    # or distil a trained DiffusionNPE (its simulations are reused):
    inference = ConsistencyNPE(prior).distill(diffusion_npe, max_num_epochs=100)

Data handling, validation, EMA, learning-rate schedule and the training loop are
those of :class:`~sbi_diffusion.inference.trainer.VectorFieldInference`; only the
model and its loss differ.
"""

from __future__ import annotations

import inspect
from copy import deepcopy
from typing import Any

from torch import Tensor, nn
from torch.distributions import Distribution
from torch.distributions.transforms import Transform, identity_transform

from sbi_diffusion.consistency.model import (
    ConsistencyModel,
    check_consistency_schedule,
)
from sbi_diffusion.consistency.posterior import (
    CONSISTENCY_SAMPLER,
    ConsistencyPosterior,
    consistency_sampler_options,
)
from sbi_diffusion.consistency.teacher import DenoiserTeacher
from sbi_diffusion.inference.budget import total_steps
from sbi_diffusion.inference.posterior import DiffusionPosterior
from sbi_diffusion.inference.trainer import VectorFieldInference
from sbi_diffusion.inference.validation import validation_size
from sbi_diffusion.model import Denoiser
from sbi_diffusion.path.schedules import get_schedule
from sbi_diffusion.samplers.consistency import consistency_times

__all__ = ["ConsistencyNPE"]


def _train_option(train_kwargs: dict[str, Any], name: str) -> Any:
    """``train_kwargs[name]``, else the default of argument ``name`` of the core
    ``train()``."""
    if name in train_kwargs:
        return train_kwargs[name]
    return inspect.signature(VectorFieldInference.train).parameters[name].default


class ConsistencyNPE(VectorFieldInference):
    r"""Consistency-model posterior estimation (Schmitt et al. 2024, CMPE).

    Consistency training (:meth:`train`) follows the improved recipe of Song &
    Dhariwal 2023: the Karras grid on the EDM VE path, the exponential
    discretisation curriculum from ``initial_num_scales`` to
    ``final_num_scales``, discrete log-normal interval sampling
    (``p_mean=-1.1, p_std=2.0``), the pseudo-Huber loss weighted by
    ``1 / (s_{i+1} - s_i)`` and the student itself as the teacher (no EMA
    target). :meth:`distill` distils a trained diffusion estimator with the core
    Heun sampler as the ODE solver (Song et al. 2023). Sampling uses an EMA of
    the weights.

    Args:
        prior: prior over ``theta``; if None, an improper empirical prior.
        schedule: ``"edm"`` (the EDM VE path) or an ``EDMSchedule``.
        net: ``"mlp"``, ``"adaln_mlp"``, ``"unet"`` (parameter fields; needs
            ``net_kwargs={"shape": (C, H, W)}``) or an ``nn.Module`` with
            signature ``net(z, condition_embedding, time)``.
        net_kwargs: width/depth/dropout of a named net (default width 256,
            depth 4 at every budget: the one-step map is harder to learn than
            a denoiser, so the net is not sized down with the budget).
        embedding_net: network embedding ``x``; identity if None.
        ema_decay: decay of the weight EMA used for sampling.
        steps: default number of sampling steps (network evaluations).
        times: default intermediate sampling times (overrides ``steps``).
        schedule_kwargs: options of the named schedule (default
            ``sigma_max=10, p_mean=-1.1, p_std=2.0``: for z-scored parameters a
            smaller ``sigma_max`` than EDM's 80 puts far more of the training on
            the noise levels that one-step sampling starts from).
        sigma_data: ``sigma_d`` of the parameterisation (1: z-scored theta).
        theta_transform: as for
            :class:`~sbi_diffusion.inference.trainer.DiffusionNPE` (distillation
            takes the teacher's).
        device, logging_level, show_progress_bars, tracker, summary_writer: as in
            sbi.
    """

    default_schedule = "edm"
    default_sampler = CONSISTENCY_SAMPLER
    default_sampler_options: dict[str, Any] = {"steps": 2}
    sizes_net_by_budget = False
    default_schedule_kwargs: dict[str, float] = {
        "sigma_max": 10.0,
        "p_mean": -1.1,
        "p_std": 2.0,
    }

    def __init__(
        self,
        prior: Distribution | None = None,
        schedule: str | Any = None,
        net: str | nn.Module = "mlp",
        net_kwargs: dict | None = None,
        embedding_net: nn.Module | None = None,
        ema_decay: float = 0.999,
        steps: int = 2,
        times: list[float] | Tensor | None = None,
        schedule_kwargs: dict | None = None,
        sigma_data: float = 1.0,
        theta_transform: str | Transform | None = None,
        device: str = "cpu",
        logging_level: int | str = "WARNING",
        show_progress_bars: bool = True,
        tracker: Any = None,
        summary_writer: Any = None,
    ):
        schedule = self.default_schedule if schedule is None else schedule
        if isinstance(schedule, str):
            if schedule not in ("edm", "edm_ve"):
                check_consistency_schedule(get_schedule(schedule))
            defaults = self.default_schedule_kwargs
            schedule_kwargs = {**defaults, **(schedule_kwargs or {})}
        options = consistency_sampler_options(steps, times)
        super().__init__(
            prior=prior,
            schedule=schedule,
            parameterization="x0",
            weighting="uniform",
            net=net,
            net_kwargs=net_kwargs,
            embedding_net=embedding_net,
            condition_dropout=0.0,
            ema_decay=ema_decay,
            sampler=CONSISTENCY_SAMPLER,
            sampler_options=options,
            schedule_kwargs=schedule_kwargs,
            theta_transform=theta_transform,
            device=device,
            logging_level=logging_level,
            show_progress_bars=show_progress_bars,
            tracker=tracker,
            summary_writer=summary_writer,
        )
        check_consistency_schedule(self._schedule)
        consistency_times(self._schedule, None if times is not None else steps, times)
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}.")
        self._sigma_data = float(sigma_data)
        self._teacher: DenoiserTeacher | None = None
        self._loss_config: dict[str, Any] = {}

    # ------------------------------------------------------------- network

    def _build_denoiser(self, theta: Tensor, x: Tensor) -> ConsistencyModel:
        """Build the consistency model with the z-scoring and embedding of the
        core trainer; in distillation, take the teacher's ``theta`` z-scoring and
        ``theta_transform`` so that both work in the same standardised space."""
        model = ConsistencyModel.from_denoiser(
            super()._build_denoiser(theta, x), self._schedule, self._sigma_data
        )
        if self._teacher is not None:
            model.set_theta_standardization(
                self._teacher.theta_shift, self._teacher.theta_scale
            )
            model.set_theta_transform(
                getattr(self._teacher, "theta_transform", identity_transform)
            )
        self._configure(model)
        return model.to(self._device)

    def _configure(self, model: ConsistencyModel) -> None:
        for key, value in self._loss_config.items():
            setattr(model, key, value)
        model.teacher = self._teacher

    def _release_teacher(self) -> None:
        """Drop the teacher from every copy of the model once training ends."""
        for model in (self._neural_net, self._ema_model(), self._trained_estimator):
            if model is not None:
                model.teacher = None

    def _ema_model(self) -> ConsistencyModel | None:
        """The EMA copy of the model, None before training."""
        return None if self._ema is None else self._ema.model

    def _total_steps(self, max_num_epochs: int, train_kwargs: dict[str, Any]) -> int:
        """Optimiser steps the core loop runs: ``max_num_epochs`` epochs, bounded
        by its ``max_num_steps``
        (:func:`~sbi_diffusion.inference.budget.total_steps`); the batch size,
        validation fraction and step bound are ``train_kwargs``' or the core
        ``train()``'s defaults."""
        batch_size = _train_option(train_kwargs, "training_batch_size")
        fraction = _train_option(train_kwargs, "validation_fraction")
        max_num_steps = _train_option(train_kwargs, "max_num_steps")
        num = sum(t.shape[0] for t in self._theta_roundwise)
        num_train = num - validation_size(num, fraction)
        return total_steps(num_train, batch_size, max_num_epochs, max_num_steps)

    def _run_training(
        self,
        config: dict[str, Any],
        epochs: int,
        stop_after_epochs: int | None,
        train_kwargs: dict[str, Any],
    ) -> ConsistencyModel:
        """Set the loss configuration on the model(s) and run the core loop for
        ``epochs`` epochs (early stopping after ``stop_after_epochs``, default
        ``epochs``; the other arguments of the core ``train()`` in
        ``train_kwargs``)."""
        self._loss_config = config
        for model in (self._neural_net, self._ema_model()):
            if model is not None and not train_kwargs.get("retrain_from_scratch"):
                self._configure(model)
        try:
            model = super().train(
                max_num_epochs=epochs,
                stop_after_epochs=stop_after_epochs or epochs,
                **train_kwargs,
            )
        finally:
            self._release_teacher()
        model.teacher = None
        return model

    @staticmethod
    def _check_epochs(max_num_epochs: int | None, what: str) -> int:
        if max_num_epochs is None or int(max_num_epochs) < 1:
            raise ValueError(
                f"{what} needs max_num_epochs (a positive integer, e.g. 300): the "
                "discretisation curriculum and the learning-rate decay are defined "
                f"over the total number of steps; got {max_num_epochs!r}."
            )
        return int(max_num_epochs)

    # --------------------------------------------------------------- train

    def train(
        self,
        max_num_epochs: int | None = 300,
        stop_after_epochs: int | None = None,
        initial_num_scales: int = 10,
        final_num_scales: int = 1280,
        huber_constant: float | None = None,
        **kwargs,
    ) -> ConsistencyModel:
        r"""Consistency training from the appended simulations (Song & Dhariwal
        2023).

        Args:
            max_num_epochs: epochs; the curriculum
                ``N(k) = min(s_0 2^{floor(k/K')}, s_1) + 1`` and the cosine
                learning-rate decay run over them.
            stop_after_epochs: early stopping patience (default: no early
                stopping, since the curriculum changes the loss).
            initial_num_scales: ``s_0``.
            final_num_scales: ``s_1``.
            huber_constant: ``c`` of the pseudo-Huber loss (default
                ``0.00054 sqrt(d)``).
            **kwargs: further arguments of ``VectorFieldInference.train``
                (``training_batch_size``, ``learning_rate``,
                ``validation_fraction``, ``clip_max_norm``, ``warmup_steps``,
                ``seed``, ...). The validation loss is the consistency loss on
                the finest grid at fixed times and noise.

        Returns:
            The trained (EMA) :class:`~sbi_diffusion.consistency.ConsistencyModel`.
        """
        epochs = self._check_epochs(max_num_epochs, "Consistency training")
        if not 1 <= initial_num_scales <= final_num_scales:
            raise ValueError(
                "Need 1 <= initial_num_scales <= final_num_scales, got "
                f"{initial_num_scales} and {final_num_scales}."
            )
        if not self._theta_roundwise:
            raise ValueError(
                "No simulations: call append_simulations(theta, x) before train()."
            )
        self._teacher = None
        config = {
            "initial_num_scales": int(initial_num_scales),
            "final_num_scales": int(final_num_scales),
            "huber_constant": huber_constant,
            "total_steps": self._total_steps(epochs, kwargs),
        }
        return self._run_training(config, epochs, stop_after_epochs, kwargs)

    def distill(
        self,
        teacher: VectorFieldInference | DiffusionPosterior | Denoiser | Any,
        max_num_epochs: int | None = 100,
        num_scales: int = 18,
        stop_after_epochs: int | None = None,
        huber_constant: float | None = None,
        **kwargs,
    ) -> ConsistencyNPE:
        r"""Consistency distillation of a trained diffusion estimator (Song et al.
        2023, Algorithm 2).

        On the Karras grid with ``num_scales + 1`` points, ``z_{t_{i+1}} = theta
        + s_{i+1} eps`` is moved to ``t_i`` by one step of the core Heun sampler
        on the teacher's probability-flow ODE, and the student is trained to map
        both points to the same output.

        Args:
            teacher: a trained ``DiffusionNPE`` / ``FlowMatchingNPE``, its
                ``DiffusionPosterior``, its ``Denoiser``, or any object with
                ``schedule``, ``bind(x) -> DenoiseFn`` and the z-scoring buffers
                ``theta_shift``, ``theta_scale``. The teacher's simulations
                are used if none were appended here.
            max_num_epochs: epochs (the learning rate decays over them).
            num_scales: ``N - 1``, the number of grid intervals.
            stop_after_epochs, huber_constant, **kwargs: as in :meth:`train`.

        Returns:
            self, for chaining (the distilled model is used by
            ``build_posterior``).
        """
        epochs = self._check_epochs(max_num_epochs, "Consistency distillation")
        if int(num_scales) < 1:
            raise ValueError(f"num_scales must be >= 1, got {num_scales}.")
        model = self._teacher_model(teacher)
        if not self._theta_roundwise:
            if isinstance(teacher, VectorFieldInference) and teacher._theta_roundwise:
                theta, x, _ = teacher.get_simulations(0)
                self.append_simulations(theta, x)
            else:
                raise ValueError(
                    "No simulations to distil on: call append_simulations(theta, x) "
                    "first, or pass a trained DiffusionNPE (its simulations are used)."
                )
        if self._neural_net is not None and not kwargs.get("resume_training"):
            # a fresh student: it must share the teacher's standardised space
            kwargs.setdefault("retrain_from_scratch", True)
        self._teacher = model
        config = {
            "final_num_scales": int(num_scales),
            "huber_constant": huber_constant,
            "total_steps": 1,
        }
        self._run_training(config, epochs, stop_after_epochs, kwargs)
        self._teacher = None
        return self

    def _teacher_model(self, teacher: Any) -> DenoiserTeacher:
        """The teacher's denoiser, frozen, on this trainer's device."""
        if isinstance(teacher, ConsistencyNPE):
            raise ValueError(
                "The teacher must be a diffusion or flow-matching estimator, not a "
                "ConsistencyNPE."
            )
        if isinstance(teacher, VectorFieldInference):
            model = teacher._trained_estimator
            if model is None:
                raise ValueError(
                    "The teacher is not trained: call train() on it before distill()."
                )
        elif isinstance(teacher, DiffusionPosterior):
            model = teacher.estimator
        else:
            model = teacher
        if isinstance(model, ConsistencyModel):
            raise ValueError("A consistency model cannot be a distillation teacher.")
        required = ("schedule", "bind", "theta_shift", "theta_scale")
        missing = [name for name in required if not hasattr(model, name)]
        if missing:
            raise ValueError(
                f"The teacher {type(teacher).__name__} lacks {missing}. Pass a "
                "trained DiffusionNPE, its posterior or its Denoiser, or an object "
                "with schedule, bind(x) -> DenoiseFn, theta_shift and theta_scale."
            )
        if isinstance(model, nn.Module):
            model = deepcopy(model).to(self._device).eval()
            for p in model.parameters():
                p.requires_grad_(False)
        return model

    # ----------------------------------------------------------- posterior

    def build_posterior(
        self,
        estimator: ConsistencyModel | None = None,
        prior: Distribution | None = None,
        sampler: str | None = None,
        max_sampling_batch_size: int | None = None,
        steps: int | None = None,
        times: list[float] | Tensor | None = None,
        **sampler_options,
    ) -> ConsistencyPosterior:
        """Build the posterior of the trained (EMA) consistency model.

        Args:
            estimator: a trained consistency model; the last trained one if None.
            prior: the prior; the constructor's (or the empirical one) if None.
            sampler: must be None or ``"consistency"``.
            max_sampling_batch_size: samples drawn per batch (None: bounded
                by the parameter dimension).
            steps: default number of steps; the constructor's if None.
            times: default intermediate times (overrides ``steps``).

        Returns:
            A :class:`ConsistencyPosterior`.
        """
        if sampler not in (None, CONSISTENCY_SAMPLER) or sampler_options:
            raise ValueError(
                f"A consistency posterior takes steps= or times=, got sampler="
                f"{sampler!r} and options {sorted(sampler_options)}."
            )
        estimator = self._estimator_or_trained(
            estimator, "call train() or distill() before build_posterior()"
        )
        prior = self._prior_or_default(prior)
        if steps is None and times is None:
            steps = self._sampler_options.get("steps")
            times = self._sampler_options.get("times")
        self._posterior = ConsistencyPosterior(
            deepcopy(estimator),
            prior,
            steps=2 if steps is None else steps,
            times=times,
            max_sampling_batch_size=max_sampling_batch_size,
            device=self._device,
        )
        return self._posterior

    def _get_potential_function(self, prior, estimator):
        raise NotImplementedError(
            "A consistency model has no potential (log density); use DiffusionNPE."
        )
