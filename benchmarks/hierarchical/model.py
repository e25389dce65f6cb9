r"""A hierarchical Gaussian model with an exact posterior.

``g ~ N(0, s_g^2 I)``, ``l_j | g ~ N(g, s_l^2 I)``, ``x_jk | l_j ~ N(l_j, s_x^2 I)``
for ``k = 1..T``. With ``xbar_j`` the mean of group ``j``'s ``n_j`` trials,
``xbar_j | g ~ N(g, v_j I)``, ``v_j = s_l^2 + s_x^2 / n_j``, so per coordinate

.. math::
    p(g \mid x_{1:G}) = N\Big(\frac{\sum_j xbar_j / v_j}{P}, \frac{1}{P}\Big),
    \quad P = \frac{1}{s_g^2} + \sum_j \frac{1}{v_j},

    p(l_j \mid g, x_j) = N\Big(\frac{g / s_l^2 + n_j xbar_j / s_x^2}{Q_j},
    \frac{1}{Q_j}\Big), \quad Q_j = \frac{1}{s_l^2} + \frac{n_j}{s_x^2}.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal


@dataclass
class HierarchicalGaussian:
    dim: int = 2
    trials: int = 5
    s_g: float = 1.5
    s_l: float = 0.5
    s_x: float = 0.5

    @property
    def global_prior(self) -> Distribution:
        return Independent(Normal(torch.zeros(self.dim), self.s_g), 1)

    def local_prior(self, g: Tensor) -> Distribution:
        return Independent(Normal(g, self.s_l), 1)

    def simulate_groups(self, g: Tensor) -> tuple[Tensor, Tensor]:
        """One group per row of ``g``: ``l`` ``(n, d)`` and ``x`` ``(n, T, d)``."""
        loc = self.local_prior(g).sample()
        x = loc[:, None, :] + self.s_x * torch.randn(g.shape[0], self.trials, self.dim)
        return loc, x

    def simulate(self, n: int) -> tuple[Tensor, Tensor, Tensor]:
        g = self.global_prior.sample((n,))
        loc, x = self.simulate_groups(g)
        return g, loc, x

    def proposal(self, scale: float) -> Distribution:
        """``N(0, (scale s_g)^2 I)``: the global prior widened ``scale`` times."""
        return Independent(Normal(torch.zeros(self.dim), scale * self.s_g), 1)

    def simulate_datasets(
        self, n: int, k: int, proposal_scale: float = 1.0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``n`` data sets of ``k`` groups that share ``g``: ``g`` ``(n, d)``
        (from :meth:`proposal`), ``l`` ``(n, k, d)`` and ``x`` ``(n, k, T, d)``."""
        g = self.proposal(proposal_scale).sample((n,))
        loc, x = self.simulate_groups(g.repeat_interleave(k, 0))
        return g, loc.reshape(n, k, self.dim), x.reshape(n, k, self.trials, self.dim)

    def observe(self, num_groups: int, g: Tensor | None = None):
        """A true ``g`` and ``num_groups`` groups simulated from it."""
        g = self.global_prior.sample() if g is None else g
        loc, x = self.simulate_groups(g.expand(num_groups, self.dim))
        return g, loc, x

    def global_posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``(d,)`` and variance (scalar) of ``p(g | x_{1:G})``."""
        n = (~torch.isnan(x).all(-1)).sum(-1).float()  # trials per group
        xbar = torch.nansum(x, -2) / n[:, None]
        v = self.s_l**2 + self.s_x**2 / n
        precision = 1 / self.s_g**2 + (1 / v).sum()
        mean = (xbar / v[:, None]).sum(0) / precision
        return mean, 1 / precision

    def local_posterior(self, g: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``(S, G, d)`` and variance ``(G,)`` of ``p(l_j | g_s, x_j)``."""
        n = (~torch.isnan(x).all(-1)).sum(-1).float()
        xbar = torch.nansum(x, -2) / n[:, None]
        q = 1 / self.s_l**2 + n / self.s_x**2
        mean = g[:, None, :] / self.s_l**2 + (n[:, None] * xbar)[None] / self.s_x**2
        return mean / q[None, :, None], 1 / q


def small_estimator(model: HierarchicalGaussian, device: str = "cpu"):
    """An untrained ``HierarchicalNPE`` of ``model`` with small networks (width
    64, depth 2; set embedding width 32), for tests and quick runs."""
    from sbi_diffusion import HierarchicalNPE

    small = {"net_kwargs": {"width": 64, "depth": 2}}
    return HierarchicalNPE(
        model.global_prior,
        model.local_prior,
        global_options=small,
        local_options=small,
        embedding_kwargs={"hidden": 32},
        device=device,
    )


def train_on_groups(
    model: HierarchicalGaussian,
    num_simulations: int,
    max_num_steps: int,
    seed: int,
    groups_per_simulation: int = 1,
    proposal_scale: float = 1.0,
    global_options: dict | None = None,
):
    """A ``HierarchicalNPE`` trained on ``num_simulations`` simulated groups (the
    global RNG seeded with ``seed`` first), and the seconds it took: single
    groups for ``groups_per_simulation=1``, else ``num_simulations // k`` data
    sets of ``k`` groups that share ``g``; with ``proposal_scale`` != 1 their
    ``g`` come from :meth:`HierarchicalGaussian.proposal` (data sets only).
    ``global_options`` are constructor options of the global model."""
    from sbi_diffusion import HierarchicalNPE

    torch.manual_seed(seed)
    start = time.time()
    if groups_per_simulation == 1:
        g, loc, x = model.simulate(num_simulations)
    else:
        g, loc, x = model.simulate_datasets(
            num_simulations // groups_per_simulation,
            groups_per_simulation,
            proposal_scale,
        )
    proposal = None if proposal_scale == 1.0 else model.proposal(proposal_scale)
    inference = HierarchicalNPE(
        model.global_prior,
        model.local_prior,
        global_proposal=proposal,
        global_options=global_options,
    )
    inference.append_simulations(g, loc, x)
    inference.train(max_num_steps=max_num_steps, seed=seed)
    return inference, time.time() - start
