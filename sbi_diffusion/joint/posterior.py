r"""The posterior, the likelihood and any conditional of a masked joint model.

Every conditional ``p(v_L | v_O)`` of a masked joint model (Gloeckler et al.
2024, "All-in-one simulation-based inference") is sampled and evaluated by the
core :class:`~sbi_diffusion.inference.posterior.DiffusionPosterior`, on the
:class:`~sbi_diffusion.joint.conditional.ConditionalView` that presents the
conditional as an ordinary conditional denoiser (``theta``: the latent block,
``x``: the observed values):

- :class:`JointPosterior`: ``p(theta | x)``, with the prior;
- :class:`JointConditional`: any conditional, given observed values or full
  joint vectors, one or several rows;
- :class:`JointLikelihood`: ``p(x | theta)``, an emulator of the simulator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from sbi.utils.sbiutils import within_support
from torch import Tensor
from torch.distributions import Distribution

from sbi_diffusion.guidance import GuidanceContext, ScoreTransform
from sbi_diffusion.inference.posterior import DiffusionPosterior
from sbi_diffusion.joint.conditional import ConditionalView, as_rows
from sbi_diffusion.joint.model import MaskedJointModel
from sbi_diffusion.model import ConditionedDenoiser

__all__ = [
    "ConditionalPosterior",
    "JointPosterior",
    "JointConditional",
    "JointLikelihood",
]


class ConditionalPosterior(DiffusionPosterior):
    r"""The core posterior of one conditional ``p(v_L | v_O)`` of a joint model.

    A :class:`DiffusionPosterior` whose estimator is a :class:`ConditionalView`:
    its ``theta`` is the latent block, its ``x`` the observed values. NaN entries
    of ``x`` are missing values and are marginalised out. With ``prior=None``
    nothing bounds the latent block: sample with ``reject_outside_prior=False``
    and evaluate densities with :meth:`standardized_log_prob`.
    """

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

    def set_default_x(self, x: Tensor) -> ConditionalPosterior:
        """Set the default observation; NaN entries are missing (marginalised)."""
        self._x = self._check_x(x, allow_batch=True)
        self._map = None
        return self

    def sample(
        self, sample_shape: torch.Size | tuple = (), x: Tensor | None = None, **kwargs
    ) -> Tensor:
        r"""Draw samples of the latent block given ``x``, as
        :meth:`DiffusionPosterior.sample`.

        A missing (NaN) entry of one observation ``x`` is marginalised by
        sampling it: the missing entries join the latent block, the conditional
        ``p(v_L, v_M | v_{O \setminus M})`` of the same joint model is sampled,
        and the draws of ``v_M`` are dropped, which leaves samples of
        ``p(v_L | v_{O \setminus M})``. This is exact for an exact joint model,
        whatever data it was trained on; the network's noise-token input for
        missing values (:meth:`MaskedJointModel.denoise_masked`), which
        :meth:`log_prob` uses, is reliable only for a model trained with
        missing values. Score transforms (``guidance``) then see the widened
        latent block in the order of the joint vector.
        """
        x = self._check_x(self._resolve_x(x), allow_batch=True)
        missing = torch.isnan(x)
        if x.shape[0] > 1 or not bool(missing.any()):
            return super().sample(sample_shape, x=x, **kwargs)
        missing = missing[0].reshape(-1)
        view = self.estimator
        observed_index = view.observed_index.to(missing.device)
        widened_mask = view.condition_mask.clone()
        widened_mask[observed_index[missing]] = False
        widened_view = ConditionalView(view.model, widened_mask.cpu())
        kept = torch.isin(widened_view.latent_index, view.latent_index)
        prior = (
            None if self.prior is None else _SupportOfColumns(self.prior, kept, self)
        )
        widened = ConditionalPosterior(
            widened_view,
            prior,
            sampler=self.sampler,
            sampler_options=self.sampler_options,
            max_sampling_batch_size=self.max_sampling_batch_size,
            device=self._device,
        )
        widened.guidance = list(self.guidance)
        draws = widened.sample(
            sample_shape, x=x[0].reshape(-1)[~missing.to(x.device)], **kwargs
        )
        self.last_nfe = widened.last_nfe
        samples = draws.reshape(-1, widened_view.theta_dim)[:, kept.to(draws.device)]
        return samples.reshape(*torch.Size(sample_shape), *self.theta_shape)


class _SupportOfColumns:
    """The support of ``prior`` on some columns of a widened latent block, for
    the rejection of :meth:`ConditionalPosterior.sample` (the other columns,
    marginalised data, are unbounded)."""

    def __init__(
        self, prior: Distribution, columns: Tensor, posterior: DiffusionPosterior
    ):
        self.prior, self.columns = prior, columns
        self.theta_shape = posterior.theta_shape

    @property
    def support(self) -> _SupportOfColumns:
        return self

    def check(self, samples: Tensor) -> Tensor:
        """Whether each row's kept columns lie in the prior's support."""
        rows = samples.reshape(-1, self.columns.numel())[:, self.columns]
        return within_support(self.prior, rows.reshape(-1, *self.theta_shape))


class JointPosterior(ConditionalPosterior):
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
            (``sampler="euler_maruyama"``, ``steps=200``) is the stochastic
            alternative (``benchmarks/joint/README.md`` compares them).
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


class JointConditional:
    r"""A conditional ``p(v_L | v_O)`` of a masked joint model.

    Samples and densities come from the core posterior (:attr:`posterior`, a
    :class:`ConditionalPosterior` without a prior) on the
    :class:`ConditionalView` of the conditional; this class reads the
    condition: the observed values or full joint vectors, one row or several,
    or a default condition.

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
        self.view = ConditionalView(model, condition_mask)
        self.model = model.eval()
        self.device = torch.device(device)
        self.condition_mask = self.view.condition_mask
        self.latent_index = self.view.latent_index
        self.observed_index = self.view.observed_index
        self.posterior = ConditionalPosterior(
            self.view,
            None,
            sampler=sampler,
            sampler_options=sampler_options,
            max_sampling_batch_size=max_sampling_batch_size,
            device=device,
        )
        self.show_progress_bars = show_progress_bars
        self.default_condition: Tensor | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a pickle; one written before the conditional sampled through
        :attr:`posterior` holds the sampler defaults instead, from which the
        posterior is rebuilt."""
        if "posterior" not in state:
            state = dict(state)
            state["posterior"] = ConditionalPosterior(
                state["view"],
                None,
                sampler=state.pop("sampler"),
                sampler_options=state.pop("sampler_options"),
                max_sampling_batch_size=state.pop("max_sampling_batch_size"),
                device=state["device"],
            )
            state["posterior"].last_nfe = state.pop("last_nfe", None)
        self.__dict__.update(state)

    @property
    def sampler(self) -> str:
        """Default sampler."""
        return self.posterior.sampler

    @property
    def sampler_options(self) -> dict:
        """Default sampler options."""
        return self.posterior.sampler_options

    @property
    def max_sampling_batch_size(self) -> int:
        """Rows integrated at once."""
        return self.posterior.max_sampling_batch_size

    @property
    def last_nfe(self) -> float | None:
        """Network evaluations per sample of the last :meth:`sample` call."""
        return self.posterior.last_nfe

    @property
    def num_latent(self) -> int:
        """Number of sampled variables."""
        return int(self.latent_index.numel())

    @property
    def num_observed(self) -> int:
        """Number of conditioned-on variables."""
        return int(self.observed_index.numel())

    # ------------------------------------------------------------- inputs

    def _observed_values(self, condition: Tensor | None) -> Tensor:
        """Observed values ``(R, num_observed)`` of the condition.

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
        if condition.shape[1] == self.model.dim:
            return condition[:, self.observed_index]
        if condition.shape[1] != self.num_observed:
            raise ValueError(
                f"condition has {condition.shape[1]} values per row, but the mask "
                f"observes {self.num_observed} of {self.model.dim} variables. Pass "
                f"({self.num_observed},) observed values or ({self.model.dim},) joint "
                "values (theta then x)."
            )
        return condition

    def set_default_condition(self, condition: Tensor) -> JointConditional:
        """Set the observed values used when ``condition`` is not passed."""
        self._observed_values(condition)
        self.default_condition = torch.as_tensor(condition, dtype=torch.float32)
        return self

    def denoiser(self, condition: Tensor | None = None) -> ConditionedDenoiser:
        """The ``DenoiseFn`` of the latent block (standardised space) for one set
        of observed values; with all observed values NaN it is the marginal of the
        latent block (the unconditional model of classifier-free guidance)."""
        return self.posterior.denoiser_for(self._observed_values(condition))

    def guidance_context(self) -> GuidanceContext:
        """What score transforms need: the z-scoring of the latent block and the
        view of this conditional as an estimator (no prior)."""
        return self.posterior.guidance_context()

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

        Runs :meth:`DiffusionPosterior.sample_batched` of :attr:`posterior`
        (without prior rejection) on the rows of observed values.

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
        observed = self._observed_values(condition)
        show = (
            self.show_progress_bars
            if show_progress_bars is None
            else bool(show_progress_bars)
        )
        samples = self.posterior.sample_batched(
            sample_shape,
            observed,
            sampler=sampler,
            steps=steps,
            show_progress_bars=show,
            reject_outside_prior=False,
            generator=generator,
            guidance=guidance,
            **sampler_options,
        )
        if observed.shape[0] > 1:
            return samples
        return samples.reshape(*torch.Size(sample_shape), self.num_latent)

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
        values = as_rows(
            values,
            self.num_latent,
            "values",
            f"(batch, {self.num_latent}) values of the latent variables",
        ).to(self.device)
        observed = self._observed_values(condition)
        if observed.shape[0] not in (1, values.shape[0]):
            raise ValueError(
                f"condition has {observed.shape[0]} rows for {values.shape[0]} values; "
                "pass one condition or one per row."
            )
        denoise = ConditionedDenoiser(self.view, self.view.embed_condition(observed))
        return self.posterior.standardized_log_prob(
            denoise.restricted_to,
            self.view.to_z(values),
            divergence=divergence,
            num_probes=num_probes,
            rtol=rtol,
            atol=atol,
            generator=generator,
            solver=solver,
            steps=steps,
        )


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

    @property
    def theta_shape(self) -> torch.Size:
        """Shape of one parameter set."""
        return torch.Size(self.model.theta_shape)

    @property
    def x_shape(self) -> torch.Size:
        """Shape of one observation."""
        return torch.Size(self.model.x_shape)

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
