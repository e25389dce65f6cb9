r"""One diffusion model for the posterior, the likelihood and any conditional.

:class:`JointDiffusion` trains a masked joint denoiser over ``v = (theta, x)``
(a transformer with one token per variable, trained with random condition
masks; Gloeckler et al. 2024, "All-in-one simulation-based inference", the
Simformer; see :mod:`sbi_diffusion.joint`). From the one trained network:

- :meth:`JointDiffusion.build_posterior` gives ``p(theta | x)`` as a
  :class:`JointPosterior`, the core
  :class:`~sbi_diffusion.inference.posterior.DiffusionPosterior` (sample,
  sample_batched, log_prob, map, set_default_x, last_nfe, rejection outside the
  prior support) on a view of the joint model; ``posterior_method=
  "likelihood_mcmc"`` instead gives sbi's ``MCMCPosterior`` on the potential
  ``log p(x_o | theta) + log p(theta)`` of the learned likelihood (NLE-style);
- :meth:`JointDiffusion.build_likelihood` gives ``p(x | theta)``
  (:class:`JointLikelihood`: ``sample((n,), theta=...)``,
  ``log_prob(x, theta=...)`` through the probability-flow ODE);
- :meth:`JointDiffusion.build_conditional` gives any conditional
  ``p(v_L | v_O)`` (:class:`JointConditional`), sampled with the core samplers.

.. code-block:: python

    inference = JointDiffusion(prior)
    inference.append_simulations(theta, x).train()
    posterior = inference.build_posterior()
    likelihood = inference.build_likelihood()
    mask = torch.tensor([True, False, True, True])  # p(theta_2 | theta_1, x)
    conditional = inference.build_conditional(mask)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from copy import deepcopy
from typing import Any

import torch
from sbi.inference.posteriors import MCMCPosterior
from sbi.inference.potentials.base_potential import BasePotential
from sbi.utils.sbiutils import mcmc_transform
from torch import Tensor, nn
from torch.distributions import Distribution
from tqdm.auto import tqdm

from sbi_diffusion.density import ode_log_prob
from sbi_diffusion.guidance import (
    GuidanceContext,
    ScoreTransform,
    apply_guidance,
    check_sampler_accepts_guidance,
)
from sbi_diffusion.inference.posterior import DiffusionPosterior
from sbi_diffusion.inference.trainer import VectorFieldInference, as_simulation_batch
from sbi_diffusion.joint import (
    ConditionalView,
    JointDenoiser,
    MaskDistribution,
    MaskedJointModel,
    check_conditional_mask,
    check_edge_mask,
    join_flat,
)
from sbi_diffusion.model import ConditionedDenoiser
from sbi_diffusion.model.interface import DenoiseFn
from sbi_diffusion.nets.transformer import TokenTransformer
from sbi_diffusion.samplers import (
    get_sampler,
    network_evaluations_per_call,
    sample_from_noise,
    sampling_call_options,
)

__all__ = [
    "JointDiffusion",
    "JointPosterior",
    "JointConditional",
    "JointLikelihood",
    "JointLikelihoodPotential",
    "JointPosteriorProposal",
]

POSTERIOR_METHODS = ("diffusion", "likelihood_mcmc")
MCMC_INITS = ("posterior", "prior")


def _check_mcmc_init(mcmc_init: str) -> str:
    if mcmc_init not in MCMC_INITS:
        raise ValueError(
            f"Unknown mcmc_init {mcmc_init!r}; pass one of {list(MCMC_INITS)}."
        )
    return mcmc_init


def _nan_zscore(values: Tensor) -> tuple[Tensor, Tensor]:
    """Per-column mean and std ignoring NaN (std 1 for constant columns)."""
    finite = ~torch.isnan(values)
    count = finite.sum(0).clamp(min=1)
    mean = torch.nansum(values, 0) / count
    var = torch.nansum((values - mean) ** 2, 0) / (count - 1).clamp(min=1)
    std = torch.sqrt(var)
    std = torch.where((std < 1e-8) | (finite.sum(0) < 2), torch.ones_like(std), std)
    return mean, std


class JointPosterior(DiffusionPosterior):
    r"""Posterior ``p(theta | x)`` of a masked joint model.

    The core :class:`DiffusionPosterior` on the ``theta``-latent, ``x``-observed
    conditional of the joint model, so every method of the core posterior
    applies. NaN entries of ``x`` are missing data and are marginalised out
    (all-NaN ``x`` gives the prior learned by the model).

    Args:
        model: the (trained) masked joint model.
        prior: the prior; samples outside its support are rejected.
        sampler, sampler_options, max_sampling_batch_size, device: as in
            :class:`DiffusionPosterior`. Heun on the probability-flow ODE (18
            steps) by default; Euler-Maruyama on the reverse SDE
            (``sampler="euler_maruyama"``, ``steps=200``: 5.4 times the network
            evaluations) was level or more accurate on every sbibm cell
            measured (mean C2ST: bernoulli_glm at 10^3 simulations .699 to
            .670, slcp and two_moons at 10^4 .671 to .657 and .573 to .557;
            two_moons, gaussian_mixture and slcp at 10^3 within .004;
            ``benchmarks/joint/README.md``).
    """

    def __init__(
        self,
        model: MaskedJointModel,
        prior: Distribution,
        sampler: str = "heun",
        sampler_options: dict | None = None,
        max_sampling_batch_size: int = 10_000,
        device: str | torch.device = "cpu",
    ):
        view = ConditionalView(
            model,
            torch.arange(model.dim) >= model.theta_dim,
            input_shape=model.theta_shape,
            condition_shape=model.x_shape,
        )
        super().__init__(
            view,
            prior,
            sampler=sampler,
            sampler_options=sampler_options,
            max_sampling_batch_size=max_sampling_batch_size,
            device=device,
        )
        self.model = model

    def _check_x(self, x: Tensor, allow_batch: bool) -> Tensor:
        """As the core check, but NaN entries (missing data) are allowed."""
        x = torch.as_tensor(x, dtype=torch.float32)
        if torch.isinf(x).any():
            raise ValueError("x contains inf values; mark missing entries with NaN.")
        missing = torch.isnan(x)
        checked = super()._check_x(torch.where(missing, 0.0, x), allow_batch)
        return torch.where(
            missing.reshape(checked.shape).to(checked.device), math.nan, checked
        )

    def set_default_x(self, x: Tensor) -> JointPosterior:
        """Set the default observation; NaN entries are missing (marginalised)."""
        self._x = self._check_x(x, allow_batch=True)
        self._map = None
        return self


class JointConditional:
    r"""A conditional ``p(v_L | v_O)`` of a masked joint model.

    Args:
        model: the masked joint model.
        condition_mask: ``(D,)`` booleans over ``(theta, x)`` flattened, True for
            the observed (conditioned-on) variables; the others are sampled.
        sampler: default sampler (see ``sbi_diffusion.samplers.SAMPLERS``).
        sampler_options: default sampler options (e.g. ``{"steps": 18}``).
        max_sampling_batch_size: rows integrated at once.
        device: device of the computation.
        show_progress_bars: default for progress bars.

    Raises:
        ValueError: for a mask of the wrong shape or one with no latent variable.
    """

    def __init__(
        self,
        model: MaskedJointModel,
        condition_mask: Tensor | Sequence[bool],
        sampler: str = "heun",
        sampler_options: dict | None = None,
        max_sampling_batch_size: int = 10_000,
        device: str | torch.device = "cpu",
        show_progress_bars: bool = True,
    ):
        mask = check_conditional_mask(condition_mask, model.dim)
        get_sampler(sampler)
        self.model = model.eval()
        self.device = torch.device(device)
        self.view = ConditionalView(model, mask.to(model.shift.device))
        self.condition_mask = self.view.condition_mask
        self.latent_index = self.view.latent_index
        self.observed_index = self.view.observed_index
        self.sampler = sampler
        self.sampler_options = dict(sampler_options or {})
        self.max_sampling_batch_size = int(max_sampling_batch_size)
        self.show_progress_bars = show_progress_bars
        self.default_condition: Tensor | None = None
        self.last_nfe: float | None = None

    @property
    def num_latent(self) -> int:
        """Number of sampled variables."""
        return int(self.latent_index.numel())

    @property
    def num_observed(self) -> int:
        """Number of conditioned-on variables."""
        return int(self.observed_index.numel())

    # ------------------------------------------------------------- inputs

    def _observed_rows(self, condition: Tensor | None) -> Tensor:
        """Standardised joint rows ``(R, D)`` from the observed values.

        ``condition`` holds either the observed values only (``(num_observed,)``
        or ``(R, num_observed)``) or full joint vectors (``(D,)`` or ``(R, D)``,
        latent entries ignored). NaN marks a missing (marginalised) value.
        """
        if condition is None:
            condition = self.default_condition
        if condition is None:
            if self.num_observed == 0:
                condition = torch.zeros(self.model.dim)
            else:
                raise ValueError(
                    f"No condition: pass the {self.num_observed} observed values as "
                    "condition=... or call set_default_condition() first."
                )
        condition = torch.as_tensor(condition, dtype=torch.float32).to(self.device)
        if condition.dim() == 1:
            condition = condition[None]
        if condition.dim() != 2:
            raise ValueError(
                f"condition has shape {tuple(condition.shape)}; pass "
                f"({self.num_observed},) observed values, ({self.model.dim},) joint "
                "values, or a batch of either."
            )
        if torch.isinf(condition).any():
            raise ValueError("condition contains inf; mark missing values with NaN.")
        rows = condition.shape[0]
        if condition.shape[1] == self.model.dim:
            full = condition.clone()
        elif condition.shape[1] == self.num_observed:
            full = torch.zeros(rows, self.model.dim, device=self.device)
            full[:, self.observed_index] = condition
        else:
            raise ValueError(
                f"condition has {condition.shape[1]} values per row, but the mask "
                f"observes {self.num_observed} of {self.model.dim} variables. Pass "
                f"({self.num_observed},) observed values or ({self.model.dim},) joint "
                "values (theta then x)."
            )
        full[:, self.latent_index] = 0.0
        return self.model.to_z(full)

    def set_default_condition(self, condition: Tensor) -> JointConditional:
        """Set the observed values used when ``condition`` is not passed."""
        self._observed_rows(condition)
        self.default_condition = torch.as_tensor(condition, dtype=torch.float32)
        return self

    def denoiser(self, condition: Tensor | None = None) -> ConditionedDenoiser:
        """The ``DenoiseFn`` of the latent block (standardised space) for one set
        of observed values; with all observed values NaN it is the marginal of the
        latent block (the unconditional model of classifier-free guidance)."""
        return ConditionedDenoiser(self.view, self._observed_rows(condition))

    def guidance_context(self) -> GuidanceContext:
        """What score transforms need: the z-scoring of the latent block and the
        view of this conditional as an estimator (no prior)."""
        return GuidanceContext.from_estimator(self.view)

    def _latent_stats(self) -> tuple[Tensor, Tensor]:
        return self.model.shift[self.latent_index], self.model.scale[self.latent_index]

    # ------------------------------------------------------------ sampling

    def sample(
        self,
        sample_shape: torch.Size | tuple = (),
        condition: Tensor | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        show_progress_bars: bool | None = None,
        guidance: ScoreTransform | Sequence[ScoreTransform] | None = None,
        **sampler_options: Any,
    ) -> Tensor:
        r"""Draw ``v_L ~ p(v_L | v_O)`` with a core sampler.

        Args:
            sample_shape: shape of the samples per condition.
            condition: observed values (see :meth:`set_default_condition`); one
                row gives samples ``(*sample_shape, num_latent)``, ``R > 1`` rows
                give ``(*sample_shape, R, num_latent)``.
            sampler: sampler name; the default if None.
            steps: steps of a fixed-grid sampler.
            generator: random generator for reproducible samples.
            show_progress_bars: progress over batches (default: the constructor's).
            guidance: score transforms of :mod:`sbi_diffusion.guidance` (e.g.
                ``ClassifierFreeGuidance``, whose unconditional model is the
                marginal of the latent block, or ``ConstraintGuidance`` on the
                latent values), applied in order to the conditional's denoiser.
            **sampler_options: further sampler options.

        Returns:
            Samples in the original space of the latent variables.
        """
        observed = self._observed_rows(condition)
        sample_shape = torch.Size(sample_shape)
        num = int(math.prod(sample_shape))
        sampler = self.sampler if sampler is None else sampler
        sampler_fn = get_sampler(sampler)
        options = sampling_call_options(
            sampler, self.sampler, self.sampler_options, sampler_options, steps
        )
        if guidance is not None:
            check_sampler_accepts_guidance(sampler, sampler_fn)
            context = self.guidance_context()
        show = (
            self.show_progress_bars
            if show_progress_bars is None
            else bool(show_progress_bars)
        )
        rows = observed.repeat(num, 1)  # sample-major: row i * R + r has condition r
        out = torch.empty(rows.shape[0], self.num_latent, device=self.device)
        total_nfe = 0.0
        progress = tqdm(
            total=rows.shape[0], disable=not show, desc="Sampling", leave=False
        )
        for chunk in torch.arange(rows.shape[0]).split(self.max_sampling_batch_size):
            denoise: DenoiseFn = ConditionedDenoiser(self.view, rows[chunk])
            if guidance is not None:
                denoise = apply_guidance(denoise, guidance, context)
            result = sample_from_noise(
                sampler_fn,
                denoise,
                self.model.schedule,
                (chunk.numel(), self.num_latent),
                generator,
                self.device,
                show_progress_bars=False,
                **options,
            )
            out[chunk.to(self.device)] = result.samples
            evaluations = network_evaluations_per_call(denoise)
            total_nfe += result.nfe * evaluations * chunk.numel()
            progress.update(chunk.numel())
        progress.close()
        if guidance is not None:
            total_nfe += context.setup_evaluations  # moment fits of guidance
        self.last_nfe = total_nfe / max(1, rows.shape[0])
        shift, scale = self._latent_stats()
        values = shift + scale * out
        if observed.shape[0] > 1:
            return values.reshape(*sample_shape, observed.shape[0], self.num_latent)
        return values.reshape(*sample_shape, self.num_latent)

    # ------------------------------------------------------------- density

    def log_prob(
        self,
        values: Tensor,
        condition: Tensor | None = None,
        divergence: str = "exact",
        num_probes: int = 1,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        generator: torch.Generator | None = None,
        solver: str = "dopri5",
        steps: int = 32,
    ) -> Tensor:
        r"""``log p(v_L | v_O)`` through the probability-flow ODE.

        The density of the standardised model mapped back to the original space,
        ``log p(v_L) = log p_std((v_L - shift) / scale) - sum log scale``
        (see :func:`sbi_diffusion.density.ode_log_prob`).

        Args:
            values: latent values ``(B, num_latent)`` (or ``(num_latent,)``).
            condition: observed values, one row or ``B`` rows.
            divergence: ``"exact"`` or ``"hutchinson"``.
            num_probes: Hutchinson probes.
            rtol, atol: ODE solver tolerances.
            generator: random generator of the Hutchinson probes.
            solver: ``"dopri5"`` (adaptive, to ``rtol``/``atol``) or ``"heun"``
                (``steps`` fixed steps, ``2 * steps`` network evaluations).
            steps: Heun steps (``solver="heun"`` only).

        Returns:
            ``(B,)`` log densities.
        """
        values = torch.as_tensor(values, dtype=torch.float32).to(self.device)
        if values.dim() == 1:
            values = values[None]
        if values.dim() != 2 or values.shape[1] != self.num_latent:
            raise ValueError(
                f"values have shape {tuple(values.shape)}; pass (batch, "
                f"{self.num_latent}) values of the latent variables."
            )
        observed = self._observed_rows(condition)
        if observed.shape[0] not in (1, values.shape[0]):
            raise ValueError(
                f"condition has {observed.shape[0]} rows for {values.shape[0]} values; "
                "pass one condition or one per row."
            )
        shift, scale = self._latent_stats()
        z = (values - shift) / scale
        denoise = ConditionedDenoiser(self.view, observed)
        log_p = ode_log_prob(
            denoise,
            z,
            divergence=divergence,
            num_probes=num_probes,
            rtol=rtol,
            atol=atol,
            generator=generator,
            solver=solver,
            steps=steps,
        )
        return log_p - torch.log(scale).sum()


class JointLikelihood(JointConditional):
    r"""The likelihood ``p(x | theta)`` of a masked joint model (an emulator of
    the simulator).

    Args:
        model: the masked joint model.
        **kwargs: options of :class:`JointConditional`.
    """

    def __init__(self, model: MaskedJointModel, **kwargs: Any):
        mask = torch.arange(model.dim) < model.theta_dim
        super().__init__(model, mask, **kwargs)

    def _theta_rows(self, theta: Tensor | None) -> Tensor | None:
        if theta is None:
            return None
        theta = torch.as_tensor(theta, dtype=torch.float32)
        shape = tuple(self.model.theta_shape)
        if tuple(theta.shape) == shape:
            return theta.reshape(1, -1)
        if tuple(theta.shape[1:]) != shape:
            raise ValueError(
                f"theta has shape {tuple(theta.shape)}; pass {shape} or "
                f"(batch, *{shape})."
            )
        return theta.reshape(theta.shape[0], -1)

    def sample(
        self,
        sample_shape: torch.Size | tuple = (),
        theta: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Simulate ``x ~ p(x | theta)``: ``(*sample_shape, *x_shape)`` for one
        ``theta``, ``(*sample_shape, B, *x_shape)`` for ``B`` of them. Further
        options as in :meth:`JointConditional.sample`."""
        flat = super().sample(sample_shape, self._theta_rows(theta), **kwargs)
        return flat.reshape(*flat.shape[:-1], *self.model.x_shape)

    def log_prob(self, x: Tensor, theta: Tensor | None = None, **kwargs: Any) -> Tensor:
        """``log p(x | theta)`` for ``x`` ``(B, *x_shape)`` and one or ``B``
        parameter sets; options as in :meth:`JointConditional.log_prob`."""
        x = torch.as_tensor(x, dtype=torch.float32)
        if tuple(x.shape) == tuple(self.model.x_shape):
            x = x[None]
        if tuple(x.shape[1:]) != tuple(self.model.x_shape):
            raise ValueError(
                f"x has shape {tuple(x.shape)}; pass (batch, "
                f"*{tuple(self.model.x_shape)})."
            )
        return super().log_prob(
            x.reshape(x.shape[0], -1), self._theta_rows(theta), **kwargs
        )


class JointLikelihoodPotential(BasePotential):
    r"""Unnormalised posterior ``sum_i log p(x_i | theta) + log p(theta)`` with the
    learned likelihood, for sbi's MCMC samplers (the NLE recipe, Papamakarios et
    al. 2019, with the joint model's likelihood).

    The observations ``x_o`` ``(N, *x_shape)`` are i.i.d.; every
    ``(theta, x_i)`` pair goes through one batched probability-flow ODE. The
    density has no gradient (ODE solve), so use gradient-free samplers (slice
    sampling), not HMC/NUTS.

    Args:
        likelihood: the learned likelihood.
        prior: the prior.
        x_o: observations, or None (set later with ``set_x``).
        device: device.
        log_prob_options: options of :meth:`JointLikelihood.log_prob` (e.g.
            ``{"rtol": 1e-3, "atol": 1e-3}``).
    """

    def __init__(
        self,
        likelihood: JointLikelihood,
        prior: Distribution,
        x_o: Tensor | None = None,
        device: str | torch.device = "cpu",
        log_prob_options: Mapping[str, Any] | None = None,
    ):
        self.likelihood = likelihood
        self.log_prob_options = dict(log_prob_options or {})
        super().__init__(prior, x_o, device=device)

    def set_x(self, x_o: Tensor | None, x_is_iid: bool | None = True, **kwargs):
        """Set the (i.i.d.) observations."""
        super().set_x(x_o, x_is_iid=x_is_iid)

    def __call__(self, theta: Tensor, track_gradients: bool = True) -> Tensor:
        theta = torch.as_tensor(theta, dtype=torch.float32).to(self.device)
        theta = theta.reshape(-1, *self.likelihood.model.theta_shape)
        x_o = self.x_o.reshape(-1, *self.likelihood.model.x_shape)
        num_theta, num_x = theta.shape[0], x_o.shape[0]
        thetas = theta.repeat_interleave(num_x, dim=0)
        xs = x_o.repeat(num_theta, *([1] * (x_o.dim() - 1)))
        log_lik = self.likelihood.log_prob(xs, theta=thetas, **self.log_prob_options)
        log_lik = log_lik.reshape(num_theta, num_x).sum(1)
        return log_lik + self.prior.log_prob(theta)


class JointPosteriorProposal:
    r"""Starting points of MCMC chains drawn from the joint model's own posterior.

    sbi's ``MCMCPosterior`` starts its chains from its ``proposal``. With the
    prior as proposal and sbi's default ``init_strategy="resample"``, every
    chain costs 10,000 potential evaluations (sampling-importance-resampling
    from the prior); with a likelihood that solves a probability-flow ODE per
    evaluation that is about half of all the work of sampling a 2-parameter
    posterior. This proposal instead draws each starting point from the
    amortised posterior ``q(theta | x_o)`` of the same joint model (sampled with
    its default sampler, at the observation currently set in the potential),
    which lies where the likelihood-based posterior has its mass; the chains then
    target ``p(x_o | theta) p(theta)`` as before, and the warm-up removes what
    is left of the starting points' error.

    It stands in for the prior where sbi uses the proposal for something other
    than drawing: ``support``, ``mean`` and ``stddev`` (the MCMC transform) are
    the prior's. It has no tractable density, so ``init_strategy="sir"`` (which
    needs one) is refused; use ``"proposal"`` (the default with it) or
    ``"resample"``.

    Args:
        posterior: the joint model's diffusion posterior.
        potential: the MCMC potential whose ``x_o`` is the observation.
        prior: the prior.
    """

    def __init__(
        self,
        posterior: JointPosterior,
        potential: JointLikelihoodPotential,
        prior: Distribution,
    ):
        self.posterior = posterior
        self.potential = potential
        self.prior = prior

    def sample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        """Draw from ``q(theta | x_o)`` at the potential's observation(s)."""
        x_o = getattr(self.potential, "_x_o", None)
        if x_o is None:
            raise ValueError(
                "No observation set: sample the MCMC posterior with x=..., or call "
                "set_default_x first."
            )
        return self.posterior.sample(
            torch.Size(sample_shape), x=x_o, show_progress_bars=False
        )

    def log_prob(self, theta: Tensor) -> Tensor:
        """Not available: the proposal is a sampler without a cheap density."""
        raise ValueError(
            "The joint posterior proposal has no tractable density, so "
            "init_strategy='sir' cannot use it. Use init_strategy='proposal' or "
            "'resample', or build the posterior with mcmc_init='prior'."
        )

    @property
    def support(self) -> Any:
        """The prior's support."""
        return self.prior.support

    @property
    def mean(self) -> Tensor:
        """The prior's mean."""
        return self.prior.mean

    @property
    def stddev(self) -> Tensor:
        """The prior's standard deviation."""
        return self.prior.stddev

    def to(self, device: str | torch.device) -> JointPosteriorProposal:
        """Move the posterior and the prior (if it can move) to ``device``."""
        self.posterior.to(device)
        if hasattr(self.prior, "to"):
            self.prior.to(device)
        return self


class JointDiffusion(VectorFieldInference):
    r"""All-in-one diffusion model for simulation-based inference (the Simformer;
    Gloeckler et al. 2024).

    Trains one masked joint denoiser over ``(theta, x)``, with condition masks
    drawn from a mixture (joint, posterior, likelihood, random subsets; see
    :class:`~sbi_diffusion.joint.MaskDistribution`), optional attention (edge)
    masks from a dependency structure, and missing values (NaN in ``theta`` or
    ``x``) treated as latent variables excluded from the loss. Schedule,
    parameterisation, weighting, EMA, warm-up and early stopping are those of
    the core trainer (default: EDM noise levels on a VP path, F-prediction, EDM
    weighting, Heun sampling).

    Args:
        prior: prior over ``theta``.
        net: ``"transformer"`` (:class:`~sbi_diffusion.nets.transformer.
            TokenTransformer`) or an ``nn.Module`` with signature
            ``net(values, condition_mask, time, attention_mask)``.
        net_kwargs: options of the transformer (``width``, ``depth``,
            ``num_heads``, ``mlp_ratio``, ``dropout``).
        mask_weights: mixture weights of the training masks by kind (``joint``,
            ``posterior``, ``likelihood``, ``random``, ``custom``).
        random_observed_probs: observation probabilities of random masks.
        custom_masks: ``(k, D)`` extra training masks (kind ``custom``).
        edges: ``(D, D)`` dependency structure between the variables (theta
            then x, flattened); ``edges[i, j]`` True if ``i`` depends directly on
            ``j``. None: full attention.
        posterior_method: what :meth:`build_posterior` returns by default:
            ``"diffusion"`` (sample the posterior conditional) or
            ``"likelihood_mcmc"`` (MCMC on the learned likelihood).
        mcmc_method: sbi MCMC method for ``"likelihood_mcmc"``.
        mcmc_parameters: sbi MCMC settings (``num_chains``, ``thin``,
            ``warmup_steps``, ``init_strategy``, ...).
        mcmc_init: where the chains of ``"likelihood_mcmc"`` start:
            ``"posterior"`` (default: drawn from the joint model's own
            posterior, :class:`JointPosteriorProposal`, with
            ``init_strategy="proposal"``) or ``"prior"`` (sbi's default: the prior
            as proposal, ``init_strategy="resample"``, 10,000 likelihood
            evaluations per chain).
        schedule, parameterization, weighting, ema_decay, sampler,
        sampler_options, schedule_kwargs, device, logging_level,
        show_progress_bars, tracker, summary_writer: as in
            :class:`~sbi_diffusion.inference.trainer.VectorFieldInference`.
    """

    default_schedule = "edm_vp"
    default_parameterization = "F"
    default_weighting = "edm"
    default_sampler = "heun"
    default_sampler_options = {"steps": 18}
    _posterior_class = JointPosterior

    def __init__(
        self,
        prior: Distribution | None = None,
        net: str | nn.Module = "transformer",
        net_kwargs: dict | None = None,
        mask_weights: Mapping[str, float] | None = None,
        random_observed_probs: Sequence[float] = (0.3, 0.7),
        custom_masks: Tensor | None = None,
        edges: Tensor | None = None,
        posterior_method: str = "diffusion",
        mcmc_method: str = "slice_np_vectorized",
        mcmc_parameters: dict | None = None,
        mcmc_init: str = "posterior",
        schedule: str | Any = None,
        parameterization: str | Any = None,
        weighting: str | None = None,
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
            schedule=schedule,
            parameterization=parameterization,
            weighting=weighting,
            ema_decay=ema_decay,
            sampler=sampler,
            sampler_options=sampler_options,
            schedule_kwargs=schedule_kwargs,
            device=device,
            logging_level=logging_level,
            show_progress_bars=show_progress_bars,
            tracker=tracker,
            summary_writer=summary_writer,
        )
        if isinstance(net, str):
            if net != "transformer":
                raise ValueError(
                    f"Unknown net {net!r} for JointDiffusion. Pass 'transformer' or an "
                    "nn.Module with signature net(values, condition_mask, time, "
                    "attention_mask)."
                )
            TokenTransformer(2, **(net_kwargs or {}))  # validates the options
        elif not isinstance(net, nn.Module):
            raise ValueError(f"net must be 'transformer' or an nn.Module, got {net!r}.")
        self._net_spec = net
        self._net_kwargs = dict(net_kwargs or {})
        self._mask_weights = None if mask_weights is None else dict(mask_weights)
        self._random_observed_probs = tuple(random_observed_probs)
        MaskDistribution(
            1,
            1,
            self._mask_weights,
            self._random_observed_probs,
            None if custom_masks is None else torch.zeros(1, 2).bool(),
        )
        self._custom_masks = custom_masks
        self._edges = edges
        if posterior_method not in POSTERIOR_METHODS:
            raise ValueError(
                f"Unknown posterior_method {posterior_method!r}; pass one of "
                f"{list(POSTERIOR_METHODS)}."
            )
        self._posterior_method = posterior_method
        self._mcmc_method = mcmc_method
        self._mcmc_parameters = dict(mcmc_parameters or {})
        self._mcmc_init = _check_mcmc_init(mcmc_init)

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
    ) -> JointDiffusion:
        r"""Store parameters and simulations for training.

        NaN entries (of ``theta`` or ``x``) are missing values: they are kept and
        treated as latent variables excluded from the loss. Rows with inf are
        dropped with a warning (``exclude_invalid_x=False``: raise instead).

        Args:
            theta: ``(num_simulations, *theta_shape)``.
            x: ``(num_simulations, *x_shape)``.
            exclude_invalid_x, from_round, algorithm, data_device, proposal: as
                in :meth:`VectorFieldInference.append_simulations` (the prior or
                a truncated prior).

        Returns:
            self, for chaining.
        """
        theta, x = as_simulation_batch(theta, x)
        if torch.isinf(theta).any():
            raise ValueError(
                "theta contains inf values; remove those rows (NaN marks a missing "
                "value and is allowed)."
            )
        if theta.shape[0] == x.shape[0]:
            if torch.isnan(join_flat(theta, x)).all(dim=1).any():
                raise ValueError(
                    "Some simulations have every value of theta and x missing (NaN); "
                    "remove those rows."
                )
        theta_missing, x_missing = torch.isnan(theta), torch.isnan(x)
        start = len(self._theta_roundwise)
        super().append_simulations(
            torch.where(theta_missing, 0.0, theta),
            torch.where(x_missing, 0.0, x),
            exclude_invalid_x=exclude_invalid_x,
            from_round=from_round,
            algorithm=algorithm,
            data_device=data_device,
            proposal=proposal,
        )
        kept = (
            torch.isfinite(torch.where(x_missing, 0.0, x))
            .reshape(x.shape[0], -1)
            .all(dim=1)
        )
        if len(self._theta_roundwise) > start:
            device = self._theta_roundwise[-1].device
            self._theta_roundwise[-1] = theta[kept].to(device)
            self._x_roundwise[-1] = x[kept].to(device)
        return self

    # ------------------------------------------------------------- network

    def _build_denoiser(self, theta: Tensor, x: Tensor) -> JointDenoiser:
        theta_shape, x_shape = theta.shape[1:], x.shape[1:]
        values = join_flat(theta, x)
        shift, scale = _nan_zscore(values.cpu())
        dim = values.shape[1]
        theta_dim = int(theta_shape.numel())
        if isinstance(self._net_spec, nn.Module):
            net = deepcopy(self._net_spec)
        else:
            net = TokenTransformer(dim, **self._net_kwargs)
        mask_distribution = MaskDistribution(
            theta_dim,
            dim - theta_dim,
            self._mask_weights,
            self._random_observed_probs,
            self._custom_masks,
        )
        denoiser = JointDenoiser(
            net=net,
            schedule=self._schedule,
            parameterization=self._parameterization,
            theta_shape=theta_shape,
            x_shape=x_shape,
            weighting=self._weighting,
            shift=shift,
            scale=scale,
            mask_distribution=mask_distribution,
            edges=check_edge_mask(self._edges, dim),
        )
        return denoiser.to(self._device)

    def _model(self, estimator: MaskedJointModel | None) -> MaskedJointModel:
        return deepcopy(self._estimator_or_trained(estimator, "call train() first"))

    # ----------------------------------------------------------- posterior

    def build_posterior(
        self,
        estimator: MaskedJointModel | None = None,
        prior: Distribution | None = None,
        sampler: str | None = None,
        max_sampling_batch_size: int = 10_000,
        posterior_method: str | None = None,
        mcmc_method: str | None = None,
        mcmc_parameters: dict | None = None,
        log_prob_options: Mapping[str, Any] | None = None,
        mcmc_init: str | None = None,
        **sampler_options: Any,
    ) -> JointPosterior | MCMCPosterior:
        """Build ``p(theta | x)`` from the trained joint model.

        Args:
            estimator: a masked joint model; the trained one if None.
            prior: the prior; the constructor's if None.
            sampler: default sampler of the diffusion posterior.
            max_sampling_batch_size: rows sampled at once.
            posterior_method: ``"diffusion"`` (a :class:`JointPosterior`) or
                ``"likelihood_mcmc"`` (sbi's ``MCMCPosterior`` on
                :class:`JointLikelihoodPotential`); the constructor's if None.
            mcmc_method: sbi MCMC method (``"slice_np_vectorized"``, ...).
            mcmc_parameters: sbi MCMC settings (``num_chains``, ``thin``,
                ``warmup_steps``, ``init_strategy``, ...).
            log_prob_options: likelihood ODE options for the MCMC potential
                (default ``{"rtol": 1e-3, "atol": 1e-3}``).
            mcmc_init: ``"posterior"`` or ``"prior"`` (where the MCMC chains
                start; see the constructor); the constructor's if None.
            **sampler_options: default sampler options (e.g. ``steps=30``).
        """
        model = self._model(estimator)
        prior = self._prior_or_default(prior)
        method = (
            self._posterior_method if posterior_method is None else posterior_method
        )
        if method not in POSTERIOR_METHODS:
            raise ValueError(
                f"Unknown posterior_method {method!r}; pass one of "
                f"{list(POSTERIOR_METHODS)}."
            )
        diffusion_posterior = JointPosterior(
            model,
            prior,
            **self._posterior_options(
                sampler, max_sampling_batch_size, sampler_options
            ),
        )
        if method == "likelihood_mcmc":
            init = self._mcmc_init if mcmc_init is None else mcmc_init
            return self._mcmc_posterior(
                diffusion_posterior,
                prior,
                mcmc_method,
                mcmc_parameters,
                log_prob_options,
                _check_mcmc_init(init),
            )
        self._posterior = diffusion_posterior
        return self._posterior

    def _mcmc_posterior(
        self,
        diffusion_posterior: JointPosterior,
        prior: Distribution,
        mcmc_method: str | None,
        mcmc_parameters: dict | None,
        log_prob_options: Mapping[str, Any] | None,
        mcmc_init: str,
    ) -> MCMCPosterior:
        likelihood = JointLikelihood(
            diffusion_posterior.model, device=self._device, show_progress_bars=False
        )
        options = {"rtol": 1e-3, "atol": 1e-3}
        options.update(log_prob_options or {})
        potential = JointLikelihoodPotential(
            likelihood, prior, device=self._device, log_prob_options=options
        )
        parameters = dict(self._mcmc_parameters)
        parameters.update(mcmc_parameters or {})
        proposal: Any = prior
        if mcmc_init == "posterior":
            proposal = JointPosteriorProposal(diffusion_posterior, potential, prior)
            parameters.setdefault("init_strategy", "proposal")
            if parameters["init_strategy"] == "sir":
                proposal.log_prob(prior.sample((1,)))  # raises the clear error
        return MCMCPosterior(
            potential_fn=potential,
            proposal=proposal,
            theta_transform=mcmc_transform(prior, device=self._device),
            method=self._mcmc_method if mcmc_method is None else mcmc_method,
            device=self._device,
            **parameters,
        )

    def build_likelihood(
        self,
        estimator: MaskedJointModel | None = None,
        sampler: str | None = None,
        max_sampling_batch_size: int = 10_000,
        **sampler_options: Any,
    ) -> JointLikelihood:
        """Build the likelihood emulator ``p(x | theta)``.

        Args:
            estimator: a masked joint model; the trained one if None.
            sampler: default sampler.
            max_sampling_batch_size: rows sampled at once.
            **sampler_options: default sampler options.
        """
        return JointLikelihood(
            self._model(estimator),
            **self._conditional_options(
                sampler, max_sampling_batch_size, sampler_options
            ),
        )

    def build_conditional(
        self,
        condition_mask: Tensor | Sequence[bool],
        estimator: MaskedJointModel | None = None,
        sampler: str | None = None,
        max_sampling_batch_size: int = 10_000,
        **sampler_options: Any,
    ) -> JointConditional:
        """Build any conditional ``p(v_L | v_O)`` of ``v = (theta, x)``.

        Args:
            condition_mask: ``(D,)`` booleans over theta then x (flattened), True
                for the observed variables. All False gives the joint.
            estimator: a masked joint model; the trained one if None.
            sampler: default sampler.
            max_sampling_batch_size: rows sampled at once.
            **sampler_options: default sampler options.

        Raises:
            ValueError: for a mask of the wrong shape or one without a free
                variable.
        """
        return JointConditional(
            self._model(estimator),
            condition_mask,
            **self._conditional_options(
                sampler, max_sampling_batch_size, sampler_options
            ),
        )

    def _conditional_options(
        self, sampler: str | None, max_batch: int, sampler_options: dict
    ) -> dict[str, Any]:
        return {
            **self._posterior_options(sampler, max_batch, sampler_options),
            "show_progress_bars": self._show_progress_bars,
        }
