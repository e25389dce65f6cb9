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

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from sbi.inference.posteriors.base_posterior import NeuralPosterior
from sbi.inference.potentials.base_potential import BasePotential
from sbi.utils.sbiutils import within_support
from torch import Tensor
from torch.distributions import Distribution
from tqdm.auto import tqdm

from sbi_diffusion.composition import (
    IID_METHODS,
    IIDComposedDenoiser,
    diffused_prior,
    warn_if_bridge_without_noise,
)
from sbi_diffusion.denoiser import ConditionedDenoiser, Denoiser
from sbi_diffusion.density import ode_log_prob
from sbi_diffusion.guidance import (
    GuidanceContext,
    ScoreTransform,
    apply_guidance,
    check_sampler_accepts_guidance,
)
from sbi_diffusion.samplers import (
    get_sampler,
    network_evaluations_per_call,
    sample_from_noise,
    sampler_takes_option,
    sampling_call_options,
)
from sbi_diffusion.vector_field import DenoiseFn

__all__ = ["DiffusionPosterior", "DiffusionPotential"]


ADAPTIVE_LOG_PROB_ROWS = 10_000
"""Batches up to this many rows get the adaptive solver in ``log_prob``."""

LARGE_BATCH_HEUN_STEPS = 16
"""Heun steps of ``log_prob`` on larger batches (``solver="auto"``)."""


class DiffusionPotential(BasePotential):
    """Posterior log density (probability-flow ODE) as an sbi potential."""

    def __init__(self, posterior: DiffusionPosterior, prior, x_o=None, device="cpu"):
        super().__init__(prior, x_o, device=device)
        self._posterior = posterior

    def __call__(self, theta: Tensor, track_gradients: bool = True) -> Tensor:
        return self._posterior.log_prob(
            theta, x=self.x_o, track_gradients=track_gradients
        )

    def set_x(self, x_o, x_is_iid: bool | None = False, **kwargs):
        """Set the observation (extra options are accepted for sbi compatibility)."""
        super().set_x(x_o, x_is_iid=x_is_iid)


class DiffusionPosterior(NeuralPosterior):
    r"""Posterior ``p(theta | x)`` of a :class:`~sbi_diffusion.denoiser.Denoiser`.

    Args:
        estimator: the trained denoiser.
        prior: the prior; samples outside its support are rejected.
        sampler: default sampler name (see ``sbi_diffusion.samplers.SAMPLERS``).
        sampler_options: default sampler options (e.g. ``{"steps": 18}``).
        max_sampling_batch_size: rows integrated at once.
        device: device of the posterior.
    """

    def __init__(
        self,
        estimator: Denoiser,
        prior: Distribution,
        sampler: str = "heun",
        sampler_options: dict | None = None,
        max_sampling_batch_size: int = 10_000,
        device: str | torch.device | None = None,
    ):
        get_sampler(sampler)
        device = str(next(estimator.parameters()).device) if device is None else device
        potential = DiffusionPotential(self, prior, device=device)
        super().__init__(potential_fn=potential, device=device)
        self.estimator = estimator.eval()
        self.prior = prior
        self.sampler = sampler
        self.sampler_options = dict(sampler_options or {})
        self.max_sampling_batch_size = int(max_sampling_batch_size)
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
        self,
        sampler: str | None,
        steps: int | None,
        options: dict,
        iid: bool = False,
        iid_method: str | None = None,
    ) -> tuple[str, dict]:
        if sampler is None and iid:
            method = self.iid_method if iid_method is None else iid_method
            sampler, defaults = self.iid_sampler_for(method)
            get_sampler(sampler)
            return sampler, sampling_call_options(
                sampler, sampler, defaults, options, steps
            )
        if sampler is None:
            sampler = self.sampler
        get_sampler(sampler)
        return sampler, sampling_call_options(
            sampler, self.sampler, self.sampler_options, options, steps
        )

    def _iid_sampler_options(self, sampler: str, options: dict) -> dict:
        """``options`` with ``final_denoise`` set to :attr:`iid_final_denoise`
        where the call does not set it and the sampler takes it."""
        if "final_denoise" in options or not sampler_takes_option(
            get_sampler(sampler), "final_denoise"
        ):
            return options
        return {**options, "final_denoise": self.iid_final_denoise}

    # ---------------------------------------------------- guidance and i.i.d.

    #: sampler and options used for i.i.d. trials when none is given, per
    #: ``iid_method``. GAUSS takes Euler-Maruyama with 500 steps (as sbi's
    #: i.i.d. methods do): its Gaussian denoising posteriors are wrong for a
    #: non-Gaussian single-trial posterior, and the injected noise keeps those
    #: errors from accumulating along the path (two_moons, 10 trials: C2ST
    #: .72-.89 against .95-1.0 on ``dopri5``; ``benchmarks/iid``). The
    #: factorised score runs on the adaptive ``dopri5``; JAC pays a Jacobian
    #: per step and takes 30 Heun steps; the annealed bridge needs a
    #: stochastic sampler (Euler-Maruyama, 500 steps, as sbi's ``fnpe``).
    iid_samplers: dict[str, tuple[str, dict]] = {
        "gauss": ("euler_maruyama", {"steps": 500}),
        "factorized": ("dopri5", {}),
        "jac": ("heun", {"steps": 30}),
        "factorized_bridge": ("euler_maruyama", {"steps": 500}),
    }

    #: overrides of :attr:`iid_samplers` for models whose path ends in pure
    #: noise, ``alpha(t_max) = 0`` (flow matching's rectified flow): there the
    #: reverse SDE is stiff near ``t_max`` and GAUSS did better on ``dopri5``
    #: (gaussian_linear, 10 trials: .80/.76 against .86/.82 with 200
    #: Euler-Maruyama steps).
    iid_samplers_noise_end: dict[str, tuple[str, dict]] = {
        "gauss": ("dopri5", {}),
    }

    def iid_sampler_for(self, iid_method: str) -> tuple[str, dict]:
        """The default sampler and options of i.i.d. sampling with
        ``iid_method`` for this model (:attr:`iid_samplers`, with
        :attr:`iid_samplers_noise_end` on a path ending in pure noise)."""
        table = dict(self.iid_samplers)
        schedule = self.estimator.schedule
        t_max = torch.tensor([float(schedule.t_max)])
        if float(schedule.alpha(t_max)) <= 0.0:
            table.update(self.iid_samplers_noise_end)
        return table.get(iid_method, (self.sampler, {}))

    #: whether samplers end i.i.d. sampling with the denoising step
    #: ``theta = x_hat(z, t_min)``. Off by default: the composed denoiser at
    #: ``t_min`` adds up the ``N`` single-trial denoisers, so that last step adds
    #: their ``N`` estimation errors to every sample, while ``z_{t_min}`` carries
    #: only the noise ``sigma(t_min)`` (0.002 for the default EDM-VP schedule, 0
    #: for rectified flow). In the i.i.d. benchmark (``benchmarks/iid``) leaving
    #: it out lowered the C2ST of every composition method at 10 trials. A
    #: ``final_denoise=`` sampler option overrides it.
    iid_final_denoise = False

    def guidance_context(self, prior_score: str = "auto") -> GuidanceContext:
        """What score transforms need: z-scoring, estimator and prior."""
        return GuidanceContext.from_estimator(self.estimator, self.prior, prior_score)

    def with_guidance(
        self, *transforms: ScoreTransform | Sequence[ScoreTransform]
    ) -> DiffusionPosterior:
        """A copy of this posterior that applies ``transforms`` (after any it
        already has) in every ``sample`` call; chain calls to compose."""
        items: list[ScoreTransform] = []
        for item in transforms:
            items.extend(item if isinstance(item, Sequence) else [item])
        new = copy.copy(self)
        new.guidance = list(self.guidance) + items
        new.sampler_options = dict(self.sampler_options)
        return new

    def _guidance_list(self, guidance) -> list[ScoreTransform]:
        if guidance is None:
            return list(self.guidance)
        if isinstance(guidance, ScoreTransform):
            guidance = [guidance]
        return list(self.guidance) + list(guidance)

    def iid_denoiser(
        self,
        x: Tensor,
        iid_method: str | None = None,
        generator: torch.Generator | None = None,
        show_progress_bars: bool = False,
        **iid_options: Any,
    ) -> IIDComposedDenoiser:
        r"""The ``DenoiseFn`` of ``p(theta | x_1, ..., x_N)`` composed from the
        single-trial model (standardised space).

        Args:
            x: trials ``(N, *x_shape)``.
            iid_method: one of ``IID_METHODS`` (``factorized``,
                ``factorized_bridge``, ``gauss``, ``jac``); ``self.iid_method``
                (``gauss``) if None.
            generator: random generator of GAUSS's covariance estimate.
            show_progress_bars: show progress of that estimate.
            **iid_options: ``prior_score`` (``auto``, ``analytic``, ``network``,
                ``gaussian``) and the options of
                :class:`~sbi_diffusion.composition.IIDComposedDenoiser`.
        """
        method = self.iid_method if iid_method is None else iid_method
        if method not in IID_METHODS:
            raise ValueError(
                f"Unknown iid_method {method!r}. Pass one of {IID_METHODS}."
            )
        options = {**self.iid_options, **iid_options}
        prior_score = options.pop("prior_score", "auto")
        x = self._check_x(x, allow_batch=True)
        key = (method, prior_score, repr(sorted(options.items())))
        cached = getattr(self, "_iid_cache", None)
        if (
            cached is not None
            and cached[0] == key
            and cached[1].shape == x.shape
            and torch.equal(cached[1], x)
        ):
            return cached[2]
        prior = diffused_prior(self.estimator, self.prior, prior_score)
        denoise = IIDComposedDenoiser(
            self.estimator,
            x,
            prior,
            method=method,
            generator=generator,
            show_progress_bars=show_progress_bars,
            **options,
        )
        self._iid_cache = (key, x.clone(), denoise)
        return denoise

    def sample(
        self,
        sample_shape: torch.Size | tuple = (),
        x: Tensor | None = None,
        sampler: str | None = None,
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
                ``dpm++2m``, ``dopri5``, ``adaptive_sde``, ...); the default if
                None (for i.i.d. trials the one of ``iid_samplers`` for the
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
                ``corrector``, ...).

        Returns:
            Samples of shape ``(*sample_shape, *theta_shape)``. ``self.last_nfe``
            holds the network evaluations per sample (for i.i.d. trials: sampler
            steps times evaluations per step, all trials counted), including
            the one-time draws of moment fits (GAUSS's single-trial samples,
            guidance with ``covariance="gaussian"``) spread over the samples.
        """
        x = self._check_x(self._resolve_x(x), allow_batch=True)
        sample_shape = torch.Size(sample_shape)
        num = int(math.prod(sample_shape))
        iid = x.shape[0] > 1
        sampler, options = self._sampling_options(
            sampler, steps, sampler_options, iid=iid, iid_method=iid_method
        )
        transforms, context = self._guidance_for(sampler, guidance, composed=iid)
        if iid:
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

            def make_denoise(rows: Tensor) -> DenoiseFn:
                return denoise

        else:
            with torch.no_grad():
                embedding = self.estimator.embed_condition(x)
            make_denoise = self._guided_factory(
                embedding.expand(num, -1), transforms, context
            )
        samples = self._draw(
            make_denoise,
            num,
            sampler,
            options,
            generator,
            show_progress_bars,
            reject_outside_prior,
        )
        setup = context.setup_evaluations if context is not None else 0.0
        if iid:
            setup += composed.setup_evaluations
        self.last_nfe += setup / max(1, num)
        return samples.reshape(*sample_shape, *self.theta_shape)

    def _guidance_for(
        self,
        sampler: str,
        guidance: ScoreTransform | Sequence[ScoreTransform] | None,
        composed: bool = False,
    ) -> tuple[list[ScoreTransform], GuidanceContext | None]:
        """The score transforms of a sampling call (after those of
        :meth:`with_guidance`) and their context; checks that ``sampler`` takes
        a transformed denoiser where there are transforms or the denoiser is
        ``composed`` from i.i.d. trials."""
        transforms = self._guidance_list(guidance)
        if transforms or composed:
            check_sampler_accepts_guidance(sampler, get_sampler(sampler))
        context = self.guidance_context() if transforms else None
        return transforms, context

    def _guided_factory(
        self,
        embeddings: Tensor,
        transforms: list[ScoreTransform],
        context: GuidanceContext | None,
    ) -> Callable[[Tensor], DenoiseFn]:
        """``make_denoise`` of :meth:`_draw` for one sample per row of the
        condition ``embeddings``: the conditioned denoiser of the rows, transformed
        by ``transforms``."""

        def make_denoise(rows: Tensor) -> DenoiseFn:
            base = ConditionedDenoiser(self.estimator, embeddings[rows])
            return apply_guidance(base, transforms, context) if transforms else base

        return make_denoise

    def sample_batched(
        self,
        sample_shape: torch.Size | tuple,
        x: Tensor,
        sampler: str | None = None,
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
        sampler, options = self._sampling_options(sampler, steps, sampler_options)
        transforms, context = self._guidance_for(sampler, guidance)
        with torch.no_grad():
            embedding = self.estimator.embed_condition(x)
        rows = embedding.repeat(num, 1)  # sample-major: row i*B + b has x_b
        samples = self._draw(
            self._guided_factory(rows, transforms, context),
            rows.shape[0],
            sampler,
            options,
            generator,
            show_progress_bars,
            reject_outside_prior,
        )
        if context is not None:
            self.last_nfe += context.setup_evaluations / max(1, rows.shape[0])
        return samples.reshape(*sample_shape, x.shape[0], *self.theta_shape)

    # --------------------------------------------------------------- density

    def log_prob(
        self,
        theta: Tensor,
        x: Tensor | None = None,
        track_gradients: bool = False,
        divergence: str = "exact",
        num_probes: int = 1,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        generator: torch.Generator | None = None,
        iid_method: str | None = None,
        iid_options: dict | None = None,
        solver: str = "auto",
        steps: int | None = None,
    ) -> Tensor:
        r"""``log p(theta | x)`` through the probability-flow ODE.

        The density is that of the model on ``R^d`` mapped back from standardised
        space (``- sum log scale``); it is ``-inf`` outside the prior support. It
        is not renormalised for the mass the model puts outside the support.

        For i.i.d. trials ``x`` ``(N, *x_shape)`` it is the density of the
        probability-flow ODE of the composed denoiser (``iid_method`` ``gauss``
        or ``factorized``: their drift is differentiable in ``z`` without
        differentiating a Jacobian); a normalised density of what the ODE
        samplers draw, not the exact ``N``-trial posterior.

        Args:
            theta: ``(batch, *theta_shape)`` or ``theta_shape``.
            x: one observation or ``N`` i.i.d. trials; the default x if None.
            track_gradients: keep the autograd graph (not supported by the ODE
                solve; the result is detached).
            divergence: ``"exact"`` (Jacobian trace) or ``"hutchinson"``.
            num_probes: probes of the Hutchinson estimator.
            rtol, atol: ODE solver tolerances.
            generator: random generator of the Hutchinson probes.
            iid_method, iid_options: composition for i.i.d. trials (as in
                :meth:`sample`).
            solver: ``"dopri5"`` (adaptive, to ``rtol``/``atol``), ``"heun"``
                (``steps`` fixed steps, ``2 * steps`` network evaluations) or
                ``"auto"`` (default): ``"dopri5"`` for up to
                :data:`ADAPTIVE_LOG_PROB_ROWS` rows, ``"heun"`` with
                :data:`LARGE_BATCH_HEUN_STEPS` steps above, where the cost of
                many densities matters more than the last digits of each
                (sbi's ``get_density_thresholder`` evaluates 10^6 of them).
            steps: Heun steps (default 32, or 16 when ``"auto"`` picks Heun).

        The rows are integrated in pieces of ``max_sampling_batch_size``, so
        memory stays bounded for any batch.

        Returns:
            Log densities of shape ``(batch,)``.

        Raises:
            ValueError: for ``iid_method`` ``jac`` or ``factorized_bridge``, whose
                ODE density is not available (``jac`` would need second
                derivatives of the network; the bridge is not a probability-flow
                ODE of one distribution).
        """
        x = self._check_x(self._resolve_x(x), allow_batch=True)
        theta = torch.as_tensor(theta, dtype=torch.float32, device=self._device)
        if tuple(theta.shape) == tuple(self.theta_shape):
            theta = theta.unsqueeze(0)
        if tuple(theta.shape[1:]) != tuple(self.theta_shape):
            raise ValueError(
                f"theta has shape {tuple(theta.shape)}; expected (batch, "
                f"*{tuple(self.theta_shape)})."
            )
        z = self.estimator.to_z(theta).reshape(theta.shape[0], -1)
        if solver == "auto":
            large = z.shape[0] > ADAPTIVE_LOG_PROB_ROWS
            solver = "heun" if large else "dopri5"
            if steps is None and large:
                steps = LARGE_BATCH_HEUN_STEPS
        steps = 32 if steps is None else steps
        if x.shape[0] > 1:
            method = self.iid_method if iid_method is None else iid_method
            if method not in ("gauss", "factorized"):
                raise ValueError(
                    f"log_prob for i.i.d. trials is not available with "
                    f"iid_method={method!r}: 'jac' would need second derivatives "
                    "of the network and 'factorized_bridge' is not the ODE of one "
                    "distribution. Pass iid_method='gauss' or 'factorized'."
                )
            denoise = self.iid_denoiser(
                x, method, generator=generator, **(iid_options or {})
            )
        else:
            denoise = self.denoiser_for(x)
        log_p = self.standardized_log_prob(
            lambda rows: denoise,
            z,
            divergence=divergence,
            num_probes=num_probes,
            rtol=rtol,
            atol=atol,
            generator=generator,
            solver=solver,
            steps=steps,
        )
        inside = within_support(self.prior, theta).reshape(-1)
        return torch.where(inside, log_p, torch.full_like(log_p, -math.inf))

    def standardized_log_prob(
        self,
        make_denoise: Callable[[Tensor], DenoiseFn],
        z: Tensor,
        **ode_options: Any,
    ) -> Tensor:
        r"""``log p(theta)`` of standardised points ``z`` ``(batch, theta_dim)``
        through the probability-flow ODE, mapped back to the original space
        (``- sum log scale``), with no prior-support check.

        The rows are integrated in pieces of ``max_sampling_batch_size``; the
        piece of batch rows ``rows`` uses the denoiser ``make_denoise(rows)``, so
        each row may have its own condition (as in :meth:`_draw`).

        Args:
            make_denoise: the ``DenoiseFn`` of a piece of rows.
            z: standardised points.
            **ode_options: options of :func:`~sbi_diffusion.density.ode_log_prob`
                (``divergence``, ``num_probes``, ``rtol``, ``atol``,
                ``generator``, ``solver``, ``steps``).

        Returns:
            Log densities of shape ``(batch,)``.
        """
        size = self.max_sampling_batch_size
        rows = torch.arange(z.shape[0], device=z.device).split(size)
        log_p = torch.cat(
            [
                ode_log_prob(make_denoise(piece_rows), piece, **ode_options)
                for piece_rows, piece in zip(rows, z.split(size), strict=True)
            ]
        )
        return log_p - self.estimator.log_abs_det()

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
        if x is not None:
            raise ValueError(
                "Passing x to map() is deprecated in sbi; call set_default_x(x) first."
            )
        if self.default_x is None:
            raise ValueError("Set an observation with set_default_x(x_o) first.")
        if self._map is not None and not force_update:
            return self._map
        x_o = self._check_x(self.default_x, allow_batch=False)
        if isinstance(init_method, Tensor):
            inits = init_method.to(self._device)
        elif init_method == "posterior":
            inits = self.sample((num_init_samples,), x=x_o, show_progress_bars=False)
        elif init_method == "prior":
            inits = self.prior.sample((num_init_samples,))
        else:
            raise ValueError("init_method must be 'posterior', 'prior' or a Tensor.")
        inits = inits.reshape(-1, *self.theta_shape)[:num_to_optimize]
        z = self.estimator.to_z(inits).reshape(inits.shape[0], -1).clone()
        schedule = self.estimator.schedule
        # time where sigma/alpha ~ 0.02: a smoothed log density, well conditioned
        grid = torch.linspace(schedule.t_max, schedule.t_min, 2001)
        level = (schedule.sigma(grid) / schedule.alpha(grid) - 0.02).abs()
        t_map = grid[int(torch.argmin(level))]
        denoise = self.denoiser_for(x_o)
        z = z.requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=learning_rate)
        for _ in tqdm(range(num_iter), disable=not show_progress_bars, desc="MAP"):
            with torch.no_grad():
                direction = denoise(z, t_map) - z * schedule.alpha(t_map)
            optimizer.zero_grad()
            z.grad = -direction
            optimizer.step()
        candidates = self.estimator.from_z(z.detach()).reshape(-1, *self.theta_shape)
        log_p = self.log_prob(candidates, x=x_o, rtol=1e-4, atol=1e-4)
        self._map = candidates[int(torch.argmax(log_p))].unsqueeze(0)
        return self._map

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
