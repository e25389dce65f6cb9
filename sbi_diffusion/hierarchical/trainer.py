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
from copy import deepcopy
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from sbi_diffusion.hierarchical.blocks import GroupBlocks, random_subsets
from sbi_diffusion.hierarchical.embedding import (
    GlobalsAndGroup,
    GroupSetEmbedding,
    MaskedSetEmbedding,
    Standardize,
    group_statistics,
)
from sbi_diffusion.hierarchical.groups import GroupLayout
from sbi_diffusion.hierarchical.posterior import HierarchicalPosterior
from sbi_diffusion.inference import DiffusionNPE
from sbi_diffusion.model import Denoiser, DenoiserEnsemble

__all__ = ["HierarchicalNPE", "check_local_prior"]

#: training blocks on which a new block embedding's standardisation is set
STANDARDIZATION_ROWS = 2000


class _GroupDiffusionNPE(DiffusionNPE):
    """:class:`DiffusionNPE` whose denoiser takes ``x`` as it is: the group
    embeddings standardise their input themselves (see
    :mod:`~sbi_diffusion.hierarchical.embedding`).

    Its set embeddings train with EDM's noise distribution, on which the
    hierarchical benchmarks were measured (``benchmarks/hierarchical``), not
    with :class:`DiffusionNPE`'s wider one for learned embeddings."""

    learned_embedding_schedule_kwargs: dict[str, float] = {}

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

    Where simulating several groups that share ``g`` is possible, pass data
    sets of ``k`` groups, ``local_theta`` ``(n, k, d_local)`` and ``x``
    ``(n, k, *group_shape)``: the global model then learns ``p(g | x_{1:k})``
    and is composed over ``ceil(G / k)`` blocks of groups
    (:mod:`~sbi_diffusion.hierarchical.blocks`), which divides the
    composition's amplification of the network's error by about ``sqrt(k)``,
    at the price of ``k`` times fewer training values of ``g`` for the same
    number of simulated groups (``benchmarks/hierarchical/README.md``).

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
        global_proposal: the distribution the simulations' ``global_theta`` were
            drawn from, if not ``global_prior`` (e.g. a wider one, so that the
            global model also learns the prior's tails). The global model learns
            ``q(g | x)`` under it, and the posterior composes
            ``p(g) prod_b q(g | x_b) / q(g)``: exact for the composition, which
            divides by the training prior once per block anyway.
    """

    #: ``k`` of simulations of ``k`` groups per row; None: one group per row
    groups_per_simulation: int | None = None

    def __init__(
        self,
        global_prior: Distribution,
        local_prior: Any,
        global_options: dict | None = None,
        local_options: dict | None = None,
        embedding_kwargs: dict | None = None,
        device: str = "cpu",
        show_progress_bars: bool = False,
        global_proposal: Distribution | None = None,
    ):
        self.global_prior = global_prior
        self.global_proposal = global_proposal
        self.local_prior = local_prior
        self.local_dim = check_local_prior(local_prior, global_prior)
        self.global_dim = int(global_prior.sample((1,)).reshape(1, -1).shape[1])
        self.global_options = dict(global_options or {})
        self.local_options = dict(local_options or {})
        self.embedding_kwargs = dict(embedding_kwargs or {})
        self.device = device
        self.show_progress_bars = show_progress_bars
        self.layout: GroupLayout | None = None
        self._rounds: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        self.global_inference: DiffusionNPE | None = None
        self.global_members: list[DiffusionNPE] = []
        self.local_inference: DiffusionNPE | None = None

    # ---------------------------------------------------------- simulations

    def append_simulations(
        self,
        global_theta: Tensor,
        local_theta: Tensor,
        x: Tensor,
        exclude_invalid_x: bool = True,
    ) -> HierarchicalNPE:
        """Store simulations: one group per row, or one data set of ``k`` groups
        that share their global parameters per row.

        With ``local_theta`` of shape ``(n, d_local)`` each row is one group,
        and the global model learns ``p(g | x_j)``. With ``(n, k, d_local)``
        each row is a data set of ``k`` groups, and the global model learns
        ``p(g | x_1, ..., x_k)`` (:mod:`~sbi_diffusion.hierarchical.blocks`:
        its composition over ``G`` groups multiplies the network's error by
        ``sqrt(G / k)`` instead of ``sqrt(G)``); the local model is trained on
        every group.

        Args:
            global_theta: ``(n, d_global)``.
            local_theta: ``(n, d_local)``, or ``(n, k, d_local)``.
            x: ``(n, *group_shape)``, or ``(n, k, *group_shape)``, with
                ``group_shape`` ``(d_x,)`` (a vector per group) or ``(T, d_x)``
                (up to ``T`` trials per group; pad groups with fewer trials with
                all-NaN rows).
            exclude_invalid_x: drop (with a warning) groups with NaN or inf
                values outside padding rows (from a data set of ``k`` groups,
                only the group, whose ``local_theta`` may then be NaN), or raise.

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
                "(or data set of groups) per row of each."
            )
        if g.dim() != 2 or g.shape[1] != self.global_dim:
            raise ValueError(
                f"global_theta has shape {tuple(g.shape)}; its prior draws "
                f"{self.global_dim} parameters: pass ({g.shape[0]}, "
                f"{self.global_dim})."
            )
        if loc.dim() not in (2, 3) or loc.shape[-1] != self.local_dim:
            raise ValueError(
                f"local_theta has shape {tuple(loc.shape)}; its prior draws "
                f"{self.local_dim} parameters: pass ({loc.shape[0]}, "
                f"{self.local_dim}) for one group per row, or ({loc.shape[0]}, k, "
                f"{self.local_dim}) for k groups per row."
            )
        groups_per_row = None if loc.dim() == 2 else int(loc.shape[1])
        if self._rounds and groups_per_row != self.groups_per_simulation:
            raise ValueError(
                f"local_theta has shape {tuple(loc.shape)}, but earlier "
                "simulations have "
                + (
                    "one group per row"
                    if self.groups_per_simulation is None
                    else f"{self.groups_per_simulation} groups per row"
                )
                + "; pass every round in the same form."
            )
        if groups_per_row is None:
            loc, x = loc[:, None], x[:, None]
        elif x.dim() < 3 or x.shape[1] != groups_per_row:
            raise ValueError(
                f"x has shape {tuple(x.shape)}, but local_theta holds "
                f"{groups_per_row} groups per row: pass x of shape "
                f"({x.shape[0]}, {groups_per_row}, *group_shape)."
            )
        n, k = loc.shape[:2]
        layout = GroupLayout.of(x.reshape(n * k, *x.shape[2:]))
        if self.layout is not None and layout != self.layout:
            raise ValueError(
                f"x has groups of shape {layout.group_shape}, but earlier "
                f"simulations have {self.layout.group_shape}."
            )
        present = layout.valid(x.reshape(n * k, *x.shape[2:])).reshape(n, k)
        if not torch.isfinite(g).all():
            raise ValueError("global_theta contains NaN or inf values.")
        if not torch.isfinite(loc[present]).all():
            raise ValueError(
                "local_theta contains NaN or inf values (of groups that are kept)."
            )
        if not present.all():
            num_invalid = int((~present).sum())
            if not exclude_invalid_x or not present.any():
                raise ValueError(
                    f"{num_invalid} of {n * k} groups contain NaN or inf "
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
        self.groups_per_simulation = groups_per_row
        rows = present.any(1)
        self._rounds.append((g[rows], loc[rows], x[rows], present[rows]))
        return self

    def _simulations(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
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

    def _global_options(self, groups: Tensor, global_x: Tensor) -> dict:
        """The global model's constructor options, with a new group embedding
        (or a copy of the one passed in ``global_options``)."""
        options = dict(self.global_options)
        if "embedding_net" in options:
            options["embedding_net"] = deepcopy(options["embedding_net"])
        elif self.groups_per_simulation is None:
            options["embedding_net"] = self._group_net(groups)
        else:
            net = GroupSetEmbedding(
                self._group_net(groups),
                self.layout.encoded_shape,
                **self.embedding_kwargs,
            )
            net.standardize_on(global_x[:STANDARDIZATION_ROWS])
            options["embedding_net"] = net
        return options

    def _trainer(self, prior: Distribution | None, options: dict) -> DiffusionNPE:
        options = {"show_progress_bars": self.show_progress_bars, **options}
        return _GroupDiffusionNPE(prior, device=self.device, **options)

    # ---------------------------------------------------------------- train

    def train(
        self,
        global_kwargs: dict | None = None,
        local_kwargs: dict | None = None,
        global_ensemble_size: int = 1,
        **kwargs: Any,
    ) -> HierarchicalNPE:
        """Train the global model ``p(g | x)`` (``x`` one group, or a block of
        up to ``k`` groups) and the local model ``p(l | g, x)`` on the stored
        simulations.

        Args:
            global_kwargs, local_kwargs: options of each model's
                :meth:`~sbi_diffusion.inference.DiffusionNPE.train`, added to
                ``kwargs``.
            global_ensemble_size: ``K``: train ``K`` global models on the same
                simulations with the seeds ``seed, ..., seed + K - 1`` and
                compose their mean estimate
                (:class:`~sbi_diffusion.model.DenoiserEnsemble`). The
                composition over ``G`` groups adds up the single-group model's
                errors that the groups share; averaging ``K`` trainings shrinks
                the part that comes from training noise, at ``K`` times the
                global model's training and sampling cost
                (``benchmarks/hierarchical/README.md``).
            **kwargs: options of both trainings (e.g. ``max_num_steps``,
                ``training_batch_size``, ``seed``).

        Returns:
            self, for chaining.

        Raises:
            ValueError: for ``global_ensemble_size`` < 1.
        """
        if int(global_ensemble_size) < 1:
            raise ValueError(
                f"global_ensemble_size must be at least 1, got {global_ensemble_size}."
            )
        g, loc, x, present = self._simulations()
        groups = x[present]
        encoded = self.layout.encode(groups)
        seed = int(kwargs.get("seed", 0) or 0)
        if self.groups_per_simulation is None:
            global_theta, global_x = g, encoded
        else:
            blocks = self.blocks
            subsets = random_subsets(present, torch.Generator().manual_seed(seed))
            smaller = subsets.sum(1) < present.sum(1)
            global_theta = torch.cat([g, g[smaller]])
            global_x = torch.cat(
                [blocks.encode(x, present), blocks.encode(x[smaller], subsets[smaller])]
            )
        self.global_members = []
        for member in range(int(global_ensemble_size)):
            inference = self._trainer(
                self.global_prior
                if self.global_proposal is None
                else self.global_proposal,
                self._global_options(groups, global_x),
            )
            inference.append_simulations(global_theta, global_x)
            member_kwargs = {**kwargs, **(global_kwargs or {})}
            if member > 0:
                member_kwargs["seed"] = int(member_kwargs.get("seed", 0) or 0) + member
            inference.train(**member_kwargs)
            self.global_members.append(inference)
        self.global_inference = self.global_members[0]

        local_options = dict(self.local_options)
        group_net = local_options.pop("embedding_net", None) or self._group_net(groups)
        g_groups = g[:, None].expand(-1, present.shape[1], -1)[present]
        g_shift, g_scale = group_statistics(g_groups, has_trials=False)
        local_options["embedding_net"] = GlobalsAndGroup(
            self.global_dim, self.layout.encoded_shape, group_net, g_shift, g_scale
        )
        self.local_inference = self._trainer(None, local_options)
        self.local_inference.append_simulations(
            loc[present],
            torch.cat([g_groups, encoded.reshape(encoded.shape[0], -1)], -1),
        )
        self.local_inference.train(**{**kwargs, **(local_kwargs or {})})
        return self

    @property
    def blocks(self) -> GroupBlocks | None:
        """The blocks of groups the global model takes; None for a global model
        of single groups."""
        if self.groups_per_simulation is None:
            return None
        return GroupBlocks(self.layout, self.groups_per_simulation)

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
        estimator = None
        if len(self.global_members) > 1:
            estimator = DenoiserEnsemble(
                [m._estimator_or_trained(None, "train()") for m in self.global_members]
            )
        return HierarchicalPosterior(
            self.global_inference.build_posterior(estimator=estimator),
            self.local_inference.build_posterior(),
            self.layout,
            blocks=self.blocks,
            target_prior=None if self.global_proposal is None else self.global_prior,
            **options,
        )
