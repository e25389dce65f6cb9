"""The model: the declared denoiser interface, the denoiser, and its sbi adapter.

* :mod:`~sbi_diffusion.model.interface`: the protocols :class:`DenoiseFn` and
  :class:`ConditionalDenoiser` that samplers, composition, guidance and
  posteriors type against.
* :mod:`~sbi_diffusion.model.denoiser`: :class:`Denoiser`, network + schedule +
  parameterisation, and its training loss.
* :mod:`~sbi_diffusion.model.ensemble`: :class:`DenoiserEnsemble`, the mean
  estimate of denoisers trained on the same simulations.
* :mod:`~sbi_diffusion.model.loss_draws`: :class:`LossDraws`, the times,
  noise and dropped conditions of one loss evaluation, fixed by the caller.
* :mod:`~sbi_diffusion.model.conditioned`: :class:`ConditionedDenoiser`, the
  denoiser with its condition fixed.
* :mod:`~sbi_diffusion.model.rows`: evaluating many (parameter, condition) pairs
  in memory-bounded pieces.
* :mod:`~sbi_diffusion.model.sbi_estimator`: the only module touching sbi's
  private estimator attributes.
"""

from sbi_diffusion.model.conditioned import ConditionedDenoiser
from sbi_diffusion.model.denoiser import Denoiser
from sbi_diffusion.model.ensemble import DenoiserEnsemble
from sbi_diffusion.model.interface import ConditionalDenoiser, DenoiseFn
from sbi_diffusion.model.loss_draws import LossDraws
from sbi_diffusion.model.rows import (
    CPU_NETWORK_ROWS,
    default_network_rows,
    denoise_rows_in_pieces,
    denoise_trials_flat,
    expand_trial_rows,
)
from sbi_diffusion.model.sbi_estimator import SbiVectorFieldEstimator

__all__ = [
    "CPU_NETWORK_ROWS",
    "ConditionalDenoiser",
    "ConditionedDenoiser",
    "DenoiseFn",
    "Denoiser",
    "DenoiserEnsemble",
    "LossDraws",
    "SbiVectorFieldEstimator",
    "default_network_rows",
    "denoise_rows_in_pieces",
    "denoise_trials_flat",
    "expand_trial_rows",
]
