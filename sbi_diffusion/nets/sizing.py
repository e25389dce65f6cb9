r"""Network size from the simulation budget: a small problem gets a small net.

A denoiser trained on ``n`` simulations sees each of them at many noise levels,
but it cannot learn more than the data hold. A large network on a small budget
is slow (each optimiser step costs what its width and depth cost) and overfits
the low noise levels early. :func:`mlp_size` grows the residual MLP with the
budget, one residual block per decade of simulations:

.. math::
    k = \mathrm{clip}(\mathrm{round}(\log_{10} n) - 3,\; 0,\; 2), \qquad
    \text{width} = \max(128 \cdot 2^{\max(0, k - 1)},\; w_d), \qquad
    \text{depth} = 2 + k,

so 10^3 simulations get width 128 and 2 residual blocks, 10^4 width 128 and 3,
10^5 and more width 256 and 4 (the size used for every budget before). The
floor ``w_d = min(512, 2^{ceil(log2(4 d))})`` keeps the width at least four
times the parameter dimension ``d``. Width 64 at 10^3 was tried and is too
narrow for gaussian_mixture's sharp mixture component
(``benchmarks/training_speed/README.md``).
"""

from __future__ import annotations

import math

__all__ = ["mlp_size", "AUTO_SIZED_NETS"]

AUTO_SIZED_NETS = frozenset({"mlp", "adaln_mlp"})
"""Named networks whose ``width`` and ``depth`` default to :func:`mlp_size`."""


def mlp_size(num_simulations: int, theta_dim: int) -> dict[str, int]:
    """Width and depth of the residual MLP for ``num_simulations`` simulations of
    ``theta_dim`` parameters (the module docstring gives the rule).

    Raises:
        ValueError: if either argument is below 1.
    """
    if num_simulations < 1 or theta_dim < 1:
        raise ValueError(
            "num_simulations and theta_dim must be positive, got "
            f"{num_simulations} and {theta_dim}."
        )
    decades = min(2, max(0, round(math.log10(num_simulations)) - 3))
    dimension_floor = min(512, 2 ** math.ceil(math.log2(4 * theta_dim)))
    width = 128 * 2 ** max(0, decades - 1)
    return {"width": max(width, dimension_floor), "depth": 2 + decades}
