r"""The posterior's log density as an sbi potential.

sbi's MCMC, importance sampling and ``get_density_thresholder`` evaluate a
``BasePotential``: here ``log p(theta | x_o)`` through the probability-flow ODE
(:meth:`DiffusionPosterior.log_prob
<sbi_diffusion.inference.posterior.DiffusionPosterior.log_prob>`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sbi.inference.potentials.base_potential import BasePotential
from torch import Tensor

if TYPE_CHECKING:
    from sbi_diffusion.inference.posterior import DiffusionPosterior

__all__ = ["DiffusionPotential"]


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
