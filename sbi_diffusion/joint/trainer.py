r"""The trainer of the joint model: one network for every conditional.

:class:`JointDiffusion` trains a masked joint denoiser over ``v = (theta, x)``
(a transformer with one token per variable, trained with random condition
masks; Gloeckler et al. 2024, "All-in-one simulation-based inference", the
Simformer; see :mod:`sbi_diffusion.joint`). From the one trained network:

- :meth:`JointDiffusion.build_posterior` gives ``p(theta | x)`` as a
  :class:`~sbi_diffusion.joint.posterior.JointPosterior`, the core
  :class:`~sbi_diffusion.inference.posterior.DiffusionPosterior` (sample,
  sample_batched, log_prob, map, set_default_x, last_nfe, rejection outside the
  prior support) on a view of the joint model; ``posterior_method=
  "likelihood_mcmc"`` instead gives sbi's ``MCMCPosterior`` on the potential
  ``log p(x_o | theta) + log p(theta)`` of the learned likelihood (NLE-style;
  :mod:`sbi_diffusion.joint.likelihood_mcmc`);
- :meth:`JointDiffusion.build_likelihood` gives ``p(x | theta)``
  (:class:`~sbi_diffusion.joint.posterior.JointLikelihood`:
  ``sample((n,), theta=...)``, ``log_prob(x, theta=...)`` through the
  probability-flow ODE);
- :meth:`JointDiffusion.build_conditional` gives any conditional
  ``p(v_L | v_O)`` (:class:`~sbi_diffusion.joint.posterior.JointConditional`),
  sampled with the core samplers.

.. code-block:: python

    inference = JointDiffusion(prior)
    inference.append_simulations(theta, x).train()
    posterior = inference.build_posterior()
    likelihood = inference.build_likelihood()
    mask = torch.tensor([True, False, True, True])  # p(theta_2 | theta_1, x)
    conditional = inference.build_conditional(mask)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from copy import deepcopy
from typing import Any

import torch
from sbi.inference.posteriors import MCMCPosterior
from torch import Tensor, nn
from torch.distributions import Distribution

from sbi_diffusion.inference.simulations import as_simulation_batch, finite_rows
from sbi_diffusion.inference.trainer import VectorFieldInference
from sbi_diffusion.joint.likelihood_mcmc import (
    check_mcmc_init,
    likelihood_mcmc_posterior,
)
from sbi_diffusion.joint.masks import MaskDistribution, check_edge_mask, join_flat
from sbi_diffusion.joint.model import JointDenoiser, MaskedJointModel
from sbi_diffusion.joint.posterior import (
    JointConditional,
    JointLikelihood,
    JointPosterior,
)
from sbi_diffusion.nets.transformer import TokenTransformer

__all__ = ["JointDiffusion", "POSTERIOR_METHODS"]

POSTERIOR_METHODS = ("diffusion", "likelihood_mcmc")
"""What :meth:`JointDiffusion.build_posterior` can return."""


def _nan_zscore(values: Tensor) -> tuple[Tensor, Tensor]:
    """Per-column mean and std ignoring NaN (std 1 for constant columns)."""
    finite = ~torch.isnan(values)
    count = finite.sum(0).clamp(min=1)
    mean = torch.nansum(values, 0) / count
    var = torch.nansum((values - mean) ** 2, 0) / (count - 1).clamp(min=1)
    std = torch.sqrt(var)
    std = torch.where((std < 1e-8) | (finite.sum(0) < 2), torch.ones_like(std), std)
    return mean, std


class JointDiffusion(VectorFieldInference):
    r"""All-in-one diffusion model for simulation-based inference (the Simformer;
    Gloeckler et al. 2024).

    Trains one masked joint denoiser over ``(theta, x)``, with condition masks
    drawn from a mixture (joint, posterior, likelihood, random subsets; see
    :class:`~sbi_diffusion.joint.MaskDistribution`), optional attention (edge)
    masks from a dependency structure, and missing values (NaN in ``theta`` or
    ``x``) treated as latent variables excluded from the loss
    (``append_simulations`` keeps those rows, and drops rows with inf in ``x``
    with a warning). Schedule,
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
        self._mcmc_init = check_mcmc_init(mcmc_init)

    # ----------------------------------------------------------------- data

    def _checked_round(
        self, theta: Tensor, x: Tensor, exclude_invalid_x: bool
    ) -> tuple[Tensor, Tensor]:
        """A new round for :meth:`append_simulations`, checked as in
        :meth:`VectorFieldInference.append_simulations`, except that NaN entries
        (of ``theta`` or ``x``) are missing values: they are kept and treated as
        latent variables excluded from the loss. Rows with inf in ``x`` are
        dropped with a warning (``exclude_invalid_x=False``: raise instead).

        Raises:
            ValueError: for inf in ``theta``, rows with every value missing, and
                what the checks of the other estimators raise.
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
        filled_x = torch.where(torch.isnan(x), 0.0, x)
        super()._checked_round(
            torch.where(torch.isnan(theta), 0.0, theta), filled_x, exclude_invalid_x
        )
        kept = finite_rows(filled_x)
        return theta[kept], x[kept]

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
                check_mcmc_init(init),
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
        parameters = dict(self._mcmc_parameters)
        parameters.update(mcmc_parameters or {})
        return likelihood_mcmc_posterior(
            diffusion_posterior,
            prior,
            self._mcmc_method if mcmc_method is None else mcmc_method,
            parameters,
            log_prob_options,
            mcmc_init,
            self._device,
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
