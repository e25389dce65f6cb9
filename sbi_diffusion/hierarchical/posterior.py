r"""The posterior of a hierarchical model, composed over its groups.

For global parameters ``g``, local parameters ``l_j`` and groups ``x_j``
(``j = 1..G``) with ``l_j | g ~ p(l | g)`` and ``x_j | l_j, g ~ p(x | l_j, g)``,

.. math::
    p(g \mid x_{1:G}) \propto p(g)^{1 - G} \prod_{j=1}^{G} p(g \mid x_j),
    \qquad
    p(l_{1:G} \mid g, x_{1:G}) = \prod_{j=1}^{G} p(l_j \mid g, x_j),

since the groups are independent given ``g`` (Geffner et al. 2023,
"Compositional score modeling for simulation-based inference"; Arruda et al.
2025, "Compositional amortized inference for large-scale hierarchical Bayesian
models"). :class:`HierarchicalPosterior` samples ``g`` from the composition of
the single-group posterior ``p(g | x_j)`` over the groups
(:class:`~sbi_diffusion.composition.IIDComposedDenoiser`, with mini-batches of
groups and a damping of the composed correction) and then every ``l_j`` from the
local posterior ``p(l_j | g, x_j)`` given each global sample.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from sbi_diffusion.composition import IID_METHODS, SNRDamping
from sbi_diffusion.guidance import PriorSwap
from sbi_diffusion.hierarchical.blocks import GroupBlocks
from sbi_diffusion.hierarchical.groups import GroupLayout
from sbi_diffusion.inference.posterior import DiffusionPosterior
from sbi_diffusion.samplers import Solver

__all__ = [
    "HierarchicalPosterior",
    "FULL_BATCH_SAMPLER",
    "MINI_BATCH_SAMPLER",
    "DEFAULT_NOISE_FLOOR",
]

#: default sampler of the composition over all groups, and over mini-batches of
#: groups (``benchmarks/hierarchical/README.md``)
FULL_BATCH_SAMPLER = Solver("dopri5")
MINI_BATCH_SAMPLER = Solver("euler_maruyama", steps=200)
#: ``noise_floor`` of the GAUSS composition (``benchmarks/hierarchical/README.md``)
DEFAULT_NOISE_FLOOR = 0.5


class HierarchicalPosterior:
    r"""Samples of ``p(g | x_{1:G})`` and ``p(g, l_{1:G} | x_{1:G})``.

    Args:
        global_posterior: posterior of the global parameters given one group,
            ``p(g | x_j)``, of the global model.
        local_posterior: posterior of one group's local parameters given the
            global parameters and that group, ``p(l_j | g, x_j)``.
        layout: the shape of a group and its encoding.
        blocks: for a global model of blocks of ``k`` groups
            (:mod:`~sbi_diffusion.hierarchical.blocks`), their layout: the ``G``
            groups are then split into ``ceil(G / k)`` blocks, which are
            composed as the groups are otherwise (and ``group_batch_size``
            counts blocks). None: the global model takes one group.
        composition: ``"gauss"`` (default; GAUSS, precision-weighted, Linhart et
            al. 2024, exact for Gaussian denoising posteriors) or
            ``"factorized"`` (the sum of diffused scores, Geffner et al. 2023,
            Eq. 7), or another of ``IID_METHODS``.
        group_batch_size: ``B``: groups used per sampler step when ``G > B``,
            their sum rescaled by ``G / B`` (Arruda et al. 2025); None: all.
        damping: ``SNR_0`` of the damping ``d(t) = SNR / (SNR + SNR_0)`` of the
            composed correction
            (:class:`~sbi_diffusion.composition.SNRDamping`); 0: none.
        noise_floor: for ``gauss``: below the noise level of ``noise_floor``
            times the single-group posteriors' standard deviation, each group's
            estimate comes from the network at that level through a Gaussian of
            the group's covariance
            (:class:`~sbi_diffusion.composition.IIDComposedDenoiser`); the
            composition adds up ``G`` network errors of order ``sigma`` there,
            which made the composed posterior too narrow (std ratio .7 at
            ``G = 100``; ``benchmarks/hierarchical/README.md``). None: the
            network at every noise level. ``"auto"``: :data:`DEFAULT_NOISE_FLOOR`
            for ``gauss``, else None.
        max_rows: most ``(sample, group)`` pairs evaluated at once, by the
            composition (groups are chunked) and by the local model.
        sampler: sampler of the composed global posterior (a name or a
            :class:`~sbi_diffusion.samplers.Solver`). None: the adaptive
            ``dopri5`` (Dormand-Prince step control on the probability-flow ODE,
            whose composed field is stiff: its largest rate grows with ``G``)
            over all groups; with ``group_batch_size`` the field is random (a
            new subset per evaluation), which defeats an embedded error
            estimate, so then Euler-Maruyama with 200 steps
            (:data:`MINI_BATCH_SAMPLER`).
        composition_options: further options of
            :class:`~sbi_diffusion.composition.IIDComposedDenoiser` (e.g.
            ``covariance_samples``).
        target_prior: the prior of ``g`` when the global model was trained on a
            proposal ``q`` (its posterior's prior): the blocks are composed as
            ``p(g) prod_b q(g | x_b) / q(g)``, and a single block is reweighted
            by ``p(g) / q(g)``
            (:class:`~sbi_diffusion.guidance.PriorSwap`). None: the model's
            prior.
    """

    def __init__(
        self,
        global_posterior: DiffusionPosterior,
        local_posterior: DiffusionPosterior,
        layout: GroupLayout,
        blocks: GroupBlocks | None = None,
        composition: str = "gauss",
        group_batch_size: int | None = None,
        damping: float = 0.0,
        noise_floor: float | str | None = "auto",
        max_rows: int = 100_000,
        sampler: str | Solver | None = None,
        composition_options: dict | None = None,
        target_prior: Distribution | None = None,
    ):
        if composition not in IID_METHODS:
            raise ValueError(
                f"Unknown composition {composition!r}. Pass one of {IID_METHODS}."
            )
        self.global_posterior = global_posterior
        self.local_posterior = local_posterior
        self.layout = layout
        self.blocks = blocks
        self.composition = composition
        self.group_batch_size = group_batch_size
        self.damping = SNRDamping(global_posterior.estimator.schedule, float(damping))
        if noise_floor == "auto":
            noise_floor = DEFAULT_NOISE_FLOOR if composition == "gauss" else None
        elif noise_floor is not None and composition != "gauss":
            raise ValueError(
                f"noise_floor={noise_floor!r} needs composition='gauss' (the "
                f"groups' covariances); got composition={composition!r}."
            )
        self.noise_floor = noise_floor
        self.max_rows = int(max_rows)
        if sampler is None:
            sampler = (
                FULL_BATCH_SAMPLER if group_batch_size is None else MINI_BATCH_SAMPLER
            )
        self.sampler = sampler
        self.composition_options = dict(composition_options or {})
        self.target_prior = target_prior
        self.setup_seed = 0
        self.last_info: dict[str, Any] | None = None

    # -------------------------------------------------------------- global

    def _composition_options(self) -> dict[str, Any]:
        target = {}
        if self.target_prior is not None:
            target["target_prior"] = self.target_prior
        return {
            "max_rows": self.max_rows,
            "trial_batch_size": self.group_batch_size,
            "damping": self.damping if self.damping.snr0 > 0 else None,
            "noise_floor": self.noise_floor,
            **target,
            **self.composition_options,
        }

    def sample(
        self,
        sample_shape: torch.Size | tuple,
        x: Tensor,
        generator: torch.Generator | None = None,
        show_progress_bars: bool = False,
        **sampler_options: Any,
    ) -> Tensor:
        r"""Samples of the global parameters ``p(g | x_1, ..., x_G)``.

        Args:
            sample_shape: shape of the samples.
            x: the groups ``(G, *group_shape)``; groups of trials may be padded
                with all-NaN rows.
            generator: random generator (noise, GAUSS's moments and the
                mini-batches of groups); the global torch RNG if None.
            show_progress_bars: show progress.
            **sampler_options: ``sampler`` (overrides the posterior's) and the
                sampler's options (``steps``, ``rtol``, ...).

        Returns:
            ``(*sample_shape, d_global)``.
        """
        encoded = self.layout.check_groups(x)
        conditions = encoded if self.blocks is None else self.blocks.partition(encoded)
        gp = self.global_posterior
        options: dict[str, Any] = {}
        if conditions.shape[0] > 1:
            # the composition's set-up (GAUSS's single-group samples) draws from
            # its own seeded generator, so a call is reproducible whether or not
            # the composition of these groups is cached
            composed = gp.iid_denoiser(
                conditions,
                self.composition,
                generator=torch.Generator().manual_seed(self.setup_seed),
                show_progress_bars=show_progress_bars,
                **self._composition_options(),
            )
            seed = torch.randint(0, 2**62, (1,), generator=generator)
            composed.reseed_trial_batches(int(seed))
            options = {
                "iid_method": self.composition,
                "iid_options": self._composition_options(),
            }
        elif self.target_prior is not None:
            options = {"guidance": PriorSwap(self.target_prior)}
        samples = gp.sample(
            sample_shape,
            x=conditions,
            sampler=sampler_options.pop("sampler", self.sampler),
            generator=generator,
            show_progress_bars=show_progress_bars,
            **options,
            **sampler_options,
        )
        self.last_info = {
            "num_groups": int(encoded.shape[0]),
            "groups_per_block": 1 if self.blocks is None else self.blocks.size,
            "num_blocks": int(conditions.shape[0]),
            "composition": self.composition,
            "group_batch_size": self.group_batch_size,
            "damping_snr0": self.damping.snr0,
            "noise_floor": self.noise_floor,
            "nfe": gp.last_nfe,
            **((gp.last_iid_info or {}) if conditions.shape[0] > 1 else {}),
        }
        return samples

    # --------------------------------------------------------------- local

    def sample_local(
        self,
        global_theta: Tensor,
        x: Tensor,
        generator: torch.Generator | None = None,
        show_progress_bars: bool = False,
        **sampler_options: Any,
    ) -> Tensor:
        r"""One draw of every group's local parameters ``l_j ~ p(l_j | g_s, x_j)``
        for each global sample ``g_s``.

        All ``S * G`` rows (row ``s * G + j``) are sampled in one batched call
        when they fit ``max_rows``, else in pieces of whole global samples; each
        group is embedded once.

        Args:
            global_theta: ``(S, d_global)``.
            x: the groups ``(G, *group_shape)``.

        Returns:
            ``(S, G, d_local)``.
        """
        encoded = self.layout.check_groups(x)
        lp = self.local_posterior
        net = lp.estimator.embedding_net
        device = next(lp.estimator.parameters()).device
        g = torch.as_tensor(global_theta, dtype=torch.float32).to(device)
        g = g.reshape(-1, net.global_dim)
        num_groups = encoded.shape[0]
        with torch.no_grad():
            groups = net.group_net(encoded.to(device)).reshape(num_groups, -1)
        per = max(1, self.max_rows // num_groups)
        pieces = []
        for g_piece in g.split(per):
            rows = net.combine(
                g_piece.repeat_interleave(num_groups, 0),
                groups.repeat(g_piece.shape[0], 1),
            )
            if getattr(lp.estimator, "null_flag", False):
                rows = torch.cat([rows, rows.new_zeros(rows.shape[0], 1)], -1)
            local = lp.sample_embedded(
                rows,
                generator=generator,
                show_progress_bars=show_progress_bars,
                reject_outside_prior=False,
                **sampler_options,
            )
            pieces.append(local.reshape(g_piece.shape[0], num_groups, -1))
        return torch.cat(pieces)

    def sample_joint(
        self,
        sample_shape: torch.Size | tuple,
        x: Tensor,
        generator: torch.Generator | None = None,
        show_progress_bars: bool = False,
        **sampler_options: Any,
    ) -> tuple[Tensor, Tensor]:
        r"""Samples of ``p(g, l_1, ..., l_G | x_1, ..., x_G)``: ``g`` from
        :meth:`sample`, then the local parameters given each ``g``
        (:meth:`sample_local`).

        Returns:
            ``g`` ``(*sample_shape, d_global)`` and ``l``
            ``(*sample_shape, G, d_local)``.
        """
        g = self.sample(
            sample_shape, x, generator, show_progress_bars, **sampler_options
        )
        num = int(math.prod(torch.Size(sample_shape)))
        local = self.sample_local(g.reshape(num, -1), x, generator, show_progress_bars)
        return g, local.reshape(*torch.Size(sample_shape), *local.shape[1:])
