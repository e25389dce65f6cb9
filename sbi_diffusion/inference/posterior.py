r"""The sbi posterior of a trained denoiser.

:class:`DiffusionPosterior` subclasses sbi's ``NeuralPosterior``: ``sample``,
``sample_batched``, ``log_prob`` (probability-flow ODE), ``map``,
``set_default_x``, and it can be pickled with ``torch.save``. Samples run any
registered sampler (:mod:`sbi_diffusion.samplers`) in standardised space and are
mapped back to ``theta``; samples outside the prior's support are rejected and
redrawn, as in sbi. ``x`` with several rows is a set of i.i.d. trials: the
posterior is composed from the single-trial model
(:mod:`sbi_diffusion.composition`); ``guidance=`` applies score transforms
(:mod:`sbi_diffusion.guidance`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from sbi.inference.posteriors.base_posterior import NeuralPosterior
from sbi.utils.sbiutils import within_support
from torch import Tensor
from torch.distributions import Distribution
from tqdm.auto import tqdm

from sbi_diffusion._deprecation import moved_names
from sbi_diffusion.composition import (
    warn_if_bridge_without_noise,
)
from sbi_diffusion.guidance import (
    ScoreTransform,
    apply_guidance,
)
from sbi_diffusion.inference.batching import sampling_batch_size
from sbi_diffusion.inference.guided_sampling import GuidedSampling
from sbi_diffusion.inference.iid_trials import IIDTrials
from sbi_diffusion.inference.log_density import ProbabilityFlowDensity
from sbi_diffusion.inference.map_estimate import score_ascent_map
from sbi_diffusion.inference.potential import DiffusionPotential
from sbi_diffusion.model import ConditionedDenoiser, Denoiser
from sbi_diffusion.model.interface import DenoiseFn
from sbi_diffusion.samplers import (
    Solver,
    get_sampler,
    network_evaluations_per_call,
    sample_from_noise,
    sampling_call_options,
    solver_call,
)

__all__ = ["DiffusionPosterior", "DiffusionPotential"]


class DiffusionPosterior(
    IIDTrials, GuidedSampling, ProbabilityFlowDensity, NeuralPosterior
):
    r"""Posterior ``p(theta | x)`` of a :class:`~sbi_diffusion.model.Denoiser`.

    Args:
        estimator: the trained denoiser.
        prior: the prior; samples outside its support are rejected.
        sampler: default sampler name (see ``sbi_diffusion.samplers.SAMPLERS``).
        sampler_options: default sampler options (e.g. ``{"steps": 18}``).
        max_sampling_batch_size: rows integrated at once; if None, as many as
            keep ``rows * theta_dim`` within ``2**21``, at most 10,000
            (:func:`~sbi_diffusion.inference.batching.sampling_batch_size`), so
            that the memory of sampling large fields stays bounded.
        device: device of the posterior.

    Attributes:
        last_nfe: network evaluations per sample of the last ``sample`` or
            ``sample_batched`` call: sampler steps times evaluations per step
            (guided denoisers count each network they call; for i.i.d. trials
            every trial counts), plus one-time setup evaluations (GAUSS's
            single-trial samples, Gaussian fits of guidance) spread over the
            samples; averaged over every draw, including those that rejection
            outside the prior support discarded.
        last_iid_info: for the last ``sample`` call with i.i.d. trials, the
            composition ``method``, the ``sampler``, the ``num_trials`` and the
            ``prior_score`` used; None before such a call.
    """

    def __init__(
        self,
        estimator: Denoiser,
        prior: Distribution,
        sampler: str | Solver = "heun",
        sampler_options: dict | None = None,
        max_sampling_batch_size: int | None = None,
        device: str | torch.device | None = None,
    ):
        if isinstance(sampler, Solver):
            sampler_options = {**sampler.options, **(sampler_options or {})}
            sampler = sampler.name
        get_sampler(sampler)
        device = str(next(estimator.parameters()).device) if device is None else device
        potential = DiffusionPotential(self, prior, device=device)
        super().__init__(potential_fn=potential, device=device)
        self.estimator = estimator.eval()
        self.prior = prior
        self.sampler = sampler
        self.sampler_options = dict(sampler_options or {})
        self.max_sampling_batch_size = sampling_batch_size(
            max_sampling_batch_size, estimator.theta_dim
        )
        self.last_nfe: float | None = None
        self.iid_method = "gauss"
        self.iid_options: dict = {}
        self.guidance: list[ScoreTransform] = []
        self.last_iid_info: dict | None = None
        self._purpose = (
            "It samples a diffusion / flow-matching model by integrating the "
            "reverse process and evaluates log_prob through the probability-flow ODE."
        )

    def __copy__(self) -> DiffusionPosterior:
        """A shallow copy with its own attribute dictionary (sbi's
        ``__getstate__``/``__setstate__`` would share one, so that setting an
        attribute on the copy, e.g. the guidance of :meth:`with_guidance`, would
        change the original)."""
        new = self.__class__.__new__(self.__class__)
        new.__dict__.update(self.__dict__)
        return new

    # --------------------------------------------------------------- inputs

    @property
    def theta_shape(self) -> torch.Size:
        return self.estimator.input_shape

    @property
    def x_shape(self) -> torch.Size:
        return self.estimator.condition_shape

    def _check_x(self, x: Tensor, allow_batch: bool) -> Tensor:
        """Return ``x`` as ``(batch, *x_shape)``, raising on a wrong shape."""
        x = torch.as_tensor(x, dtype=torch.float32)
        x_shape = tuple(self.x_shape)
        if tuple(x.shape) == x_shape:
            x = x.unsqueeze(0)
        if tuple(x.shape[1:]) != x_shape:
            raise ValueError(
                f"x has shape {tuple(x.shape)}, but the model was trained on "
                f"simulations of shape {x_shape}. Pass x of shape {x_shape}, or "
                f"(num_trials, *{x_shape}) for i.i.d. trials / (batch, *{x_shape}) "
                "for sample_batched."
            )
        if not torch.isfinite(x).all():
            raise ValueError("x contains NaN or inf values.")
        if not allow_batch and x.shape[0] != 1:
            raise ValueError(
                f"x has {x.shape[0]} rows; sample() takes one observation of shape "
                f"{x_shape}. For a batch of observations use sample_batched()."
            )
        return x.to(self._device)

    def _resolve_x(self, x: Tensor | None) -> Tensor:
        if x is None:
            if self.default_x is None:
                raise ValueError(
                    "No observation: pass x=... or call set_default_x(x_o) first."
                )
            return self.default_x
        return x

    def denoiser_for(self, x: Tensor | None) -> ConditionedDenoiser:
        """The ``DenoiseFn`` of ``p(theta | x)`` in standardised space
        (``x=None``: the unconditional model, if trained with condition dropout)."""
        with torch.no_grad():
            return self.estimator.bind(x)

    # -------------------------------------------------------------- sampling

    def _run_sampler(
        self,
        denoise: DenoiseFn,
        num: int,
        sampler: str,
        options: dict,
        generator: torch.Generator | None,
        show_progress_bars: bool,
    ) -> tuple[Tensor, float]:
        result = sample_from_noise(
            get_sampler(sampler),
            denoise,
            self.estimator.schedule,
            (num, self.estimator.theta_dim),
            generator,
            self._device,
            show_progress_bars=show_progress_bars,
            **options,
        )
        return result.samples, result.nfe

    def _draw(
        self,
        make_denoise: Callable[[Tensor], DenoiseFn],
        num: int,
        sampler: str,
        options: dict,
        generator: torch.Generator | None,
        show_progress_bars: bool,
        reject_outside_prior: bool,
    ) -> Tensor:
        """``num`` samples, row ``i`` drawn with the denoiser
        ``make_denoise(rows)`` of the batch ``rows`` holding ``i``; rejected rows
        are redrawn."""
        out = torch.empty(num, self.estimator.theta_dim, device=self._device)
        todo = torch.arange(num, device=self._device)
        total_evals, total_drawn, rounds = 0.0, 0, 0
        progress = tqdm(
            total=num,
            disable=not show_progress_bars,
            desc=f"Drawing {num} posterior samples",
            leave=False,
        )
        while todo.numel() > 0:
            rounds += 1
            accepted_rows, finite_in_round = [], 0
            for chunk in todo.split(self.max_sampling_batch_size):
                denoise = make_denoise(chunk)
                z, nfe = self._run_sampler(
                    denoise, chunk.numel(), sampler, options, generator, False
                )
                nfe = nfe * network_evaluations_per_call(denoise)
                theta = self.estimator.from_z(z).reshape(-1, *self.theta_shape)
                theta_flat = theta.reshape(chunk.numel(), -1)
                total_evals += nfe * chunk.numel()
                total_drawn += chunk.numel()
                ok = torch.isfinite(theta_flat).all(dim=1)
                finite_in_round += int(ok.sum())
                if reject_outside_prior:
                    ok = ok & within_support(self.prior, theta).reshape(-1)
                out[chunk[ok]] = theta_flat[ok]
                accepted_rows.append(chunk[ok])
                progress.update(int(ok.sum()))
            if finite_in_round == 0:
                progress.close()
                raise RuntimeError(
                    f"All {todo.numel()} samples of sampling round {rounds} are NaN "
                    f"or inf: the sampler ({sampler!r}) diverged, and redrawing "
                    "would not help. Try more steps or another sampler (e.g. "
                    "sampler='dopri5'), check that x lies within the training "
                    "data, or, for i.i.d. trials, try another iid_method."
                )
            accepted = torch.cat(accepted_rows)
            keep = ~torch.isin(todo, accepted)
            todo = todo[keep]
            acceptance = 1 - todo.numel() / max(1, keep.numel())
            if todo.numel() and rounds == 1 and acceptance < 0.01:
                warnings.warn(
                    f"Only {100 * acceptance:.2f}% of the samples lie inside the "
                    "prior support; sampling may be slow. The model may be "
                    "undertrained or x_o far from the training data.",
                    UserWarning,
                    stacklevel=3,
                )
            if todo.numel() and rounds >= 100:
                raise RuntimeError(
                    f"{todo.numel()} samples were still outside the prior support "
                    "after 100 rounds of rejection; pass reject_outside_prior=False "
                    "to keep them."
                )
        progress.close()
        self.last_nfe = total_evals / max(1, total_drawn)
        return out

    def _sampling_options(
        self, sampler: str | Solver | None, steps: int | None, options: dict
    ) -> tuple[str, dict]:
        """The sampler name and options of one call for one observation (the
        posterior's defaults where the call leaves them)."""
        sampler, options = solver_call(sampler, options)
        if sampler is None:
            sampler = self.sampler
        get_sampler(sampler)
        return sampler, sampling_call_options(
            sampler, self.sampler, self.sampler_options, options, steps
        )

    def sample(
        self,
        sample_shape: torch.Size | tuple = (),
        x: Tensor | None = None,
        sampler: str | Solver | None = None,
        steps: int | None = None,
        show_progress_bars: bool = True,
        reject_outside_prior: bool = True,
        generator: torch.Generator | None = None,
        guidance: ScoreTransform | Sequence[ScoreTransform] | None = None,
        iid_method: str | None = None,
        iid_options: dict | None = None,
        **sampler_options: Any,
    ) -> Tensor:
        r"""Draw samples from ``p(theta | x)``.

        Args:
            sample_shape: shape of the samples.
            x: one observation ``(*x_shape)`` or ``(1, *x_shape)``, or ``N``
                i.i.d. trials ``(N, *x_shape)`` (the posterior given all of them,
                composed from the single-trial model); the default x if None.
            sampler: sampler name (``heun``, ``euler``, ``euler_maruyama``, ``ddim``,
                ``dpm++2m``, ``dopri5``, ``adaptive_sde``, ...) or a
                :class:`~sbi_diffusion.samplers.Solver` with its options, e.g.
                ``Solver("euler_maruyama", steps=500)``; the default if None
                (for i.i.d. trials the one of ``iid_samplers`` for the
                ``iid_method``).
            steps: number of steps of a fixed-grid sampler.
            show_progress_bars: show progress.
            reject_outside_prior: reject and redraw samples outside the prior
                support.
            generator: random generator (for reproducible samples).
            guidance: a score transform or a list of them
                (:mod:`sbi_diffusion.guidance`), applied after those of
                :meth:`with_guidance`.
            iid_method: composition for i.i.d. trials (``gauss`` by default,
                ``jac``, ``factorized``, ``factorized_bridge``).
            iid_options: options of the composition (``prior_score``,
                ``covariance_samples``, ``max_rows``, ...; see
                :meth:`iid_denoiser`).
            **sampler_options: further sampler options (``eta``, ``rtol``,
                ``corrector``, ...), added to those of a ``Solver``.

        Returns:
            Samples of shape ``(*sample_shape, *theta_shape)``. ``self.last_nfe``
            holds the network evaluations per sample (for i.i.d. trials: sampler
            steps times evaluations per step, all trials counted), including
            the one-time draws of moment fits (GAUSS's single-trial samples,
            guidance with ``covariance="gaussian"``) spread over the samples.
        """
        x = self._check_x(self._resolve_x(x), allow_batch=True)
        sample_shape = torch.Size(sample_shape)
        if x.shape[0] <= 1:  # one observation: a batch of one
            samples = self.sample_batched(
                sample_shape,
                x,
                sampler,
                steps,
                show_progress_bars,
                reject_outside_prior,
                generator,
                guidance,
                **sampler_options,
            )
            return samples.reshape(*sample_shape, *self.theta_shape)
        num = int(math.prod(sample_shape))
        sampler, options = self._iid_sampling_options(
            sampler, steps, sampler_options, iid_method
        )
        transforms, context = self._guidance_for(sampler, guidance, composed=True)
        options = self._iid_sampler_options(sampler, options)
        composed = self.iid_denoiser(
            x,
            iid_method,
            generator=generator,
            show_progress_bars=show_progress_bars,
            **(iid_options or {}),
        )
        warn_if_bridge_without_noise(composed.method, sampler, options)
        denoise = apply_guidance(composed, transforms, context)
        self.last_iid_info = {
            "method": composed.method,
            "sampler": sampler,
            "num_trials": composed.num_trials,
            "prior_score": composed.prior.description,
        }
        samples = self._draw(
            lambda rows: denoise,
            num,
            sampler,
            options,
            generator,
            show_progress_bars,
            reject_outside_prior,
        )
        setup = context.setup_evaluations if context is not None else 0.0
        setup += composed.setup_evaluations
        self.last_nfe += setup / max(1, num)
        return samples.reshape(*sample_shape, *self.theta_shape)

    def sample_batched(
        self,
        sample_shape: torch.Size | tuple,
        x: Tensor,
        sampler: str | Solver | None = None,
        steps: int | None = None,
        show_progress_bars: bool = True,
        reject_outside_prior: bool = True,
        generator: torch.Generator | None = None,
        guidance: ScoreTransform | Sequence[ScoreTransform] | None = None,
        **sampler_options: Any,
    ) -> Tensor:
        """Draw samples for each of a batch of observations ``x`` ``(B, *x_shape)``
        (each row a separate observation; for i.i.d. trials use :meth:`sample`).

        Args:
            guidance: score transforms, as in :meth:`sample`.

        Returns:
            Samples of shape ``(*sample_shape, B, *theta_shape)``.
        """
        x = self._check_x(x, allow_batch=True)
        sample_shape = torch.Size(sample_shape)
        num = int(math.prod(sample_shape))
        with torch.no_grad():
            embedding = self.estimator.embed_condition(x)
        samples = self.sample_embedded(
            embedding.repeat(num, 1),  # sample-major: row i*B + b has x_b
            sampler,
            steps,
            show_progress_bars,
            reject_outside_prior,
            generator,
            guidance,
            **sampler_options,
        )
        return samples.reshape(*sample_shape, x.shape[0], *self.theta_shape)

    def sample_embedded(
        self,
        embeddings: Tensor,
        sampler: str | Solver | None = None,
        steps: int | None = None,
        show_progress_bars: bool = True,
        reject_outside_prior: bool = True,
        generator: torch.Generator | None = None,
        guidance: ScoreTransform | Sequence[ScoreTransform] | None = None,
        **sampler_options: Any,
    ) -> Tensor:
        """One sample for each row of already embedded conditions ``embeddings``
        ``(rows, e)`` (:meth:`~sbi_diffusion.model.Denoiser.embed_condition`),
        e.g. rows that share parts of their embedding computed once. Options as
        in :meth:`sample_batched`.

        Returns:
            Samples of shape ``(rows, *theta_shape)``.
        """
        sampler, options = self._sampling_options(sampler, steps, sampler_options)
        transforms, context = self._guidance_for(sampler, guidance)
        samples = self._draw(
            self._guided_factory(embeddings, transforms, context),
            embeddings.shape[0],
            sampler,
            options,
            generator,
            show_progress_bars,
            reject_outside_prior,
        )
        if context is not None:
            self.last_nfe += context.setup_evaluations / max(1, embeddings.shape[0])
        return samples.reshape(embeddings.shape[0], *self.theta_shape)

    # ------------------------------------------------------------------- MAP

    def map(
        self,
        x: Tensor | None = None,
        num_iter: int = 300,
        num_to_optimize: int = 100,
        learning_rate: float = 0.01,
        init_method: str | Tensor = "posterior",
        num_init_samples: int = 1000,
        save_best_every: int = 10,
        show_progress_bars: bool = False,
        force_update: bool = False,
    ) -> Tensor:
        r"""Maximum a posteriori estimate.

        Gradient ascent (Adam) along the model's score at a small noise level,
        ``grad log p(theta | x) ~ (x_hat(theta, t) - theta) / sigma_t^2``, from
        ``num_to_optimize`` posterior samples; the end point with the highest
        ``log_prob`` is returned. Uses the default x (``set_default_x``).
        """
        cached = self._cached_map(x, force_update)
        if cached is not None:
            return cached
        x_o = self._check_x(self.default_x, allow_batch=False)
        self._map = score_ascent_map(
            self,
            x_o,
            num_iter,
            num_to_optimize,
            learning_rate,
            init_method,
            num_init_samples,
            show_progress_bars,
        )
        return self._map

    def _cached_map(self, x: Tensor | None, force_update: bool) -> Tensor | None:
        """The estimate of an earlier :meth:`map` call, or None where one is to
        be computed (none yet, or ``force_update``).

        Args:
            x: the ``x`` passed to :meth:`map`; must be None.
            force_update: compute the estimate again.

        Raises:
            ValueError: if ``x`` is passed (deprecated in sbi: set the default x
                instead) or no default x is set.
        """
        if x is not None:
            raise ValueError(
                "Passing x to map() is deprecated in sbi; call set_default_x(x) first."
            )
        if self.default_x is None:
            raise ValueError("Set an observation with set_default_x(x_o) first.")
        return None if force_update else self._map

    # ---------------------------------------------------------------- device

    def to(self, device: str | torch.device) -> DiffusionPosterior:
        """Move the posterior (estimator and, where possible, prior) to ``device``."""
        self._device = torch.device(device) if isinstance(device, str) else device
        self.estimator.to(self._device)
        if hasattr(self.prior, "to"):
            self.prior.to(self._device)
        self.potential_fn.device = self._device
        if self._x is not None:
            self._x = self._x.to(self._device)
        return self


# Constants that moved to :mod:`sbi_diffusion.density`.
__getattr__ = moved_names(
    __name__,
    ("ADAPTIVE_LOG_PROB_ROWS", "LARGE_BATCH_HEUN_STEPS"),
    "sbi_diffusion.density",
)
