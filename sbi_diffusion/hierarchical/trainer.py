r"""Training of a hierarchical model on single-group simulations.

:class:`HierarchicalNPE` trains two diffusion models
(:class:`~sbi_diffusion.inference.DiffusionNPE`) on the same simulations, one
group per row ``(g, l, x)`` with ``g ~ p(g)``, ``l ~ p(l | g)``,
``x ~ p(x | g, l)``:

- the global model, ``p(g | x)``: parameters ``g``, condition the group ``x``
  (embedded by :class:`~sbi_diffusion.hierarchical.embedding.MaskedSetEmbedding`
  for groups of trials);
- the local model, ``p(l | g, x)``: parameters ``l``, condition
  ``concat(g, embedded x)``
  (:class:`~sbi_diffusion.hierarchical.embedding.GlobalsAndGroup`).

At inference the global model's posteriors are composed over the ``G`` observed
groups (:class:`~sbi_diffusion.hierarchical.posterior.HierarchicalPosterior`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from sbi_diffusion.hierarchical.embedding import (
    GlobalsAndGroup,
    MaskedSetEmbedding,
    Standardize,
    group_statistics,
)
from sbi_diffusion.hierarchical.groups import GroupLayout
from sbi_diffusion.hierarchical.posterior import HierarchicalPosterior
from sbi_diffusion.inference import DiffusionNPE
from sbi_diffusion.model import Denoiser

__all__ = ["HierarchicalNPE", "check_local_prior"]


class _GroupDiffusionNPE(DiffusionNPE):
    """:class:`DiffusionNPE` whose denoiser takes ``x`` as it is: the group
    embeddings standardise their input themselves (see
    :mod:`~sbi_diffusion.hierarchical.embedding`)."""

    def _build_denoiser(self, theta: Tensor, x: Tensor) -> Denoiser:
        denoiser = super()._build_denoiser(theta, x)
        with torch.no_grad():
            denoiser.x_shift.zero_()
            denoiser.x_scale.fill_(1.0)
        return denoiser


def check_local_prior(local_prior: Any, global_prior: Distribution) -> int:
    """The size ``d_local`` of the local parameters drawn by ``local_prior`` at
    two draws of ``global_prior``.

    Raises:
        ValueError: if ``local_prior`` is not callable, does not return a torch
            ``Distribution``, or does not draw one ``(d_local,)`` row per row of
            its global parameters.
    """
    if not callable(local_prior):
        raise ValueError(
            "local_prior must be a function of the global parameters that returns "
            f"a torch Distribution, got {type(local_prior).__name__}."
        )
    g = global_prior.sample((2,))
    dist = local_prior(g)
    if not isinstance(dist, Distribution):
        raise ValueError(
            "local_prior(global_theta) must return a torch Distribution over the "
            f"local parameters (batched over rows of global_theta); it returned "
            f"{type(dist).__name__}."
        )
    draw = dist.sample()
    if draw.dim() != 2 or draw.shape[0] != 2:
        raise ValueError(
            "local_prior(global_theta) must draw one row of local parameters per "
            f"row of global_theta: for 2 rows it drew shape {tuple(draw.shape)}."
        )
    return int(draw.shape[1])


class HierarchicalNPE:
    r"""Compositional neural posterior estimation for hierarchical models.

    Global parameters ``g`` are shared by all groups, local parameters ``l_j``
    belong to group ``j``. Trained on simulations of single groups, the model
    samples ``p(g | x_1, ..., x_G)`` for any number of groups ``G`` by composing
    the single-group posteriors' scores,

    .. math::
        \nabla \log p_t(g \mid x_{1:G}) \approx (1 - G) \nabla \log p_t(g)
        + \sum_{j=1}^{G} \nabla \log p_t(g \mid x_j)

    (Geffner et al. 2023; with GAUSS's precision weighting by default, Linhart
    et al. 2024), mini-batched over groups and damped at high noise (Arruda et
    al. 2025), and then ``l_j ~ p(l_j | g, x_j)``.

    .. code-block:: python

        inference = HierarchicalNPE(global_prior, local_prior)
        inference.append_simulations(global_theta, local_theta, x).train()
        posterior = inference.build_posterior()
        g = posterior.sample((1000,), x=x_groups)
        g, l = posterior.sample_joint((1000,), x=x_groups)

    Args:
        global_prior: prior of ``g`` ``(d_global,)``.
        local_prior: ``local_prior(global_theta)`` returns a torch
            ``Distribution`` of ``l`` given ``g``, batched over the rows of
            ``global_theta`` ``(n, d_global)``.
        global_options, local_options: constructor options of the
            :class:`~sbi_diffusion.inference.DiffusionNPE` of each model (e.g.
            ``net_kwargs``, ``sampler``); ``embedding_net`` replaces the group
            embedding of that model.
        embedding_kwargs: options of the trials' set embedding (``hidden``,
            ``output_dim``).
        device: training and sampling device.
        show_progress_bars: show training progress.
    """

    def __init__(
        self,
        global_prior: Distribution,
        local_prior: Any,
        global_options: dict | None = None,
        local_options: dict | None = None,
        embedding_kwargs: dict | None = None,
        device: str = "cpu",
        show_progress_bars: bool = False,
    ):
        self.global_prior = global_prior
        self.local_prior = local_prior
        self.local_dim = check_local_prior(local_prior, global_prior)
        self.global_dim = int(global_prior.sample((1,)).reshape(1, -1).shape[1])
        self.global_options = dict(global_options or {})
        self.local_options = dict(local_options or {})
        self.embedding_kwargs = dict(embedding_kwargs or {})
        self.device = device
        self.show_progress_bars = show_progress_bars
        self.layout: GroupLayout | None = None
        self._rounds: list[tuple[Tensor, Tensor, Tensor]] = []
        self.global_inference: DiffusionNPE | None = None
        self.local_inference: DiffusionNPE | None = None

    # ---------------------------------------------------------- simulations

    def append_simulations(
        self,
        global_theta: Tensor,
        local_theta: Tensor,
        x: Tensor,
        exclude_invalid_x: bool = True,
    ) -> HierarchicalNPE:
        """Store simulations of single groups, one per row.

        Args:
            global_theta: ``(n, d_global)``.
            local_theta: ``(n, d_local)``.
            x: ``(n, d_x)`` (a vector per group) or ``(n, T, d_x)`` (up to ``T``
                trials per group; pad groups with fewer trials with all-NaN
                rows).
            exclude_invalid_x: drop (with a warning) groups with NaN or inf
                values outside padding rows, or raise.

        Returns:
            self, for chaining.

        Raises:
            ValueError: for row counts that differ, shapes that do not match the
                priors or earlier simulations, non-finite parameters, or invalid
                groups that are not excluded (or all of them).
        """
        g = torch.as_tensor(global_theta, dtype=torch.float32)
        loc = torch.as_tensor(local_theta, dtype=torch.float32)
        x = torch.as_tensor(x, dtype=torch.float32)
        if not g.shape[0] == loc.shape[0] == x.shape[0]:
            raise ValueError(
                f"global_theta, local_theta and x have {g.shape[0]}, "
                f"{loc.shape[0]} and {x.shape[0]} rows; pass one simulated group "
                "per row of each."
            )
        for name, value, dim in (
            ("global_theta", g, self.global_dim),
            ("local_theta", loc, self.local_dim),
        ):
            if value.dim() != 2 or value.shape[1] != dim:
                raise ValueError(
                    f"{name} has shape {tuple(value.shape)}; its prior draws "
                    f"{dim} parameters: pass ({value.shape[0]}, {dim})."
                )
            if not torch.isfinite(value).all():
                raise ValueError(f"{name} contains NaN or inf values.")
        layout = GroupLayout.of(x)
        if self.layout is not None and layout != self.layout:
            raise ValueError(
                f"x has groups of shape {layout.group_shape}, but earlier "
                f"simulations have {self.layout.group_shape}."
            )
        valid = layout.valid(x)
        if not valid.all():
            num_invalid = int((~valid).sum())
            if not exclude_invalid_x or not valid.any():
                raise ValueError(
                    f"{num_invalid} of {x.shape[0]} groups contain NaN or inf "
                    "values outside padding rows (trial rows that are all NaN) "
                    "or hold no trial. Pass exclude_invalid_x=True to drop them."
                )
            warnings.warn(
                f"Found {num_invalid} groups with NaN or inf values; they are "
                "excluded from training. This biases the posterior if invalid "
                "simulations depend on the parameters.",
                UserWarning,
                stacklevel=2,
            )
        self.layout = layout
        self._rounds.append((g[valid], loc[valid], x[valid]))
        return self

    def _simulations(self) -> tuple[Tensor, Tensor, Tensor]:
        if not self._rounds:
            raise ValueError("No simulations: call append_simulations() first.")
        return tuple(torch.cat(parts) for parts in zip(*self._rounds, strict=True))

    # ----------------------------------------------------------------- nets

    def _group_net(self, x: Tensor) -> nn.Module:
        """A new embedding of one encoded group, standardising it with the
        statistics of ``x``."""
        shift, scale = group_statistics(x, self.layout.has_trials)
        if self.layout.has_trials:
            return MaskedSetEmbedding(
                self.layout.trial_dim, shift, scale, **self.embedding_kwargs
            )
        return Standardize(shift, scale)

    def _trainer(self, prior: Distribution | None, options: dict) -> DiffusionNPE:
        options = {"show_progress_bars": self.show_progress_bars, **options}
        return _GroupDiffusionNPE(prior, device=self.device, **options)

    # ---------------------------------------------------------------- train

    def train(
        self,
        global_kwargs: dict | None = None,
        local_kwargs: dict | None = None,
        **kwargs: Any,
    ) -> HierarchicalNPE:
        """Train the global model ``p(g | x)`` and the local model
        ``p(l | g, x)`` on the stored simulations.

        Args:
            global_kwargs, local_kwargs: options of each model's
                :meth:`~sbi_diffusion.inference.DiffusionNPE.train`, added to
                ``kwargs``.
            **kwargs: options of both trainings (e.g. ``max_num_steps``,
                ``training_batch_size``, ``seed``).

        Returns:
            self, for chaining.
        """
        g, loc, x = self._simulations()
        encoded = self.layout.encode(x)
        global_options = dict(self.global_options)
        global_options.setdefault("embedding_net", self._group_net(x))
        self.global_inference = self._trainer(self.global_prior, global_options)
        self.global_inference.append_simulations(g, encoded)
        self.global_inference.train(**{**kwargs, **(global_kwargs or {})})

        local_options = dict(self.local_options)
        group_net = local_options.pop("embedding_net", None) or self._group_net(x)
        g_shift, g_scale = group_statistics(g, has_trials=False)
        local_options["embedding_net"] = GlobalsAndGroup(
            self.global_dim, self.layout.encoded_shape, group_net, g_shift, g_scale
        )
        self.local_inference = self._trainer(None, local_options)
        self.local_inference.append_simulations(
            loc, torch.cat([g, encoded.reshape(encoded.shape[0], -1)], -1)
        )
        self.local_inference.train(**{**kwargs, **(local_kwargs or {})})
        return self

    # ------------------------------------------------------------ posterior

    def build_posterior(self, **options: Any) -> HierarchicalPosterior:
        """The :class:`~sbi_diffusion.hierarchical.posterior.HierarchicalPosterior`
        of the trained models.

        Args:
            **options: its options (``composition``, ``group_batch_size``,
                ``damping``, ``max_rows``, ``sampler``,
                ``composition_options``).

        Raises:
            ValueError: before training.
        """
        if self.global_inference is None or self.local_inference is None:
            raise ValueError("call train() before build_posterior().")
        return HierarchicalPosterior(
            self.global_inference.build_posterior(),
            self.local_inference.build_posterior(),
            self.layout,
            **options,
        )
