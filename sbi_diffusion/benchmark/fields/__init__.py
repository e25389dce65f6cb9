"""Gaussian-random-field problems with exact (or exactly simulable) answers.

- Problem (a), :class:`GaussianRandomFieldProblem`: infer an ``N x N`` field from a
  blurred, noisy image; its posterior is Gaussian and diagonal in Fourier space,
  and :func:`field_posterior_metrics` scores posterior samples against it.
- Problem (b), :class:`FieldParametersProblem`: infer the amplitude and spectral
  exponent of a field from one image of it; scored by :func:`nrmse`.
- Problem (c), emulation: the likelihood of problem (b), ``x | theta``, learned
  and sampled as an emulator of :meth:`FieldParametersProblem.simulate`
  (``benchmarks/fields/field_emulation.py``: a classifier test against
  simulated fields, and their power spectrum against the exact one).

Fields are flat vectors of ``N * N`` pixels (row-major); observations are images
``(n, 1, N, N)``. The Fourier conventions are in :mod:`.spectra`. These problems
are not sbibm tasks and are not part of the sbibm benchmark runner.
"""

from sbi_diffusion.benchmark.fields.distribution import StationaryGaussianField
from sbi_diffusion.benchmark.fields.field_parameters import (
    FieldParametersProblem,
    nrmse,
)
from sbi_diffusion.benchmark.fields.metrics import field_posterior_metrics
from sbi_diffusion.benchmark.fields.posterior_field import (
    GaussianFieldPosterior,
    GaussianRandomFieldProblem,
)

__all__ = [
    "FieldParametersProblem",
    "GaussianFieldPosterior",
    "GaussianRandomFieldProblem",
    "StationaryGaussianField",
    "field_posterior_metrics",
    "nrmse",
]
