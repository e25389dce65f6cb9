r"""Sampling given i.i.d. trials: the composed denoiser and its default sampler.

Given ``N`` i.i.d. trials the posterior factorises as

.. math::
    p(\theta \mid x_1, \dots, x_N) \propto p(\theta)^{1 - N}
    \prod_{i=1}^N p(\theta \mid x_i),

and its diffused score is composed from the single-trial model
(:mod:`sbi_diffusion.composition`; Geffner et al. 2023, Linhart et al. 2024).
:class:`IIDTrials` gives a posterior the composed denoiser of a set of trials
and the sampler that suits each composition method.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sbi_diffusion.composition import (
    IID_METHODS,
    IIDComposedDenoiser,
    diffused_prior,
)
from sbi_diffusion.samplers import (
    Solver,
    get_sampler,
    sampler_takes_option,
    sampling_call_options,
    solver_call,
)

__all__ = ["IIDTrials"]


class IIDTrials:
    """Mixin of :class:`~sbi_diffusion.inference.posterior.DiffusionPosterior`:
    i.i.d. composition of its single-trial model.

    Uses the posterior's ``estimator``, ``prior``, ``sampler``, ``_check_x``,
    ``iid_method`` and ``iid_options``.
    """

    #: sampler and options used for i.i.d. trials when none is given, per
    #: ``iid_method``. GAUSS and the annealed bridge take Euler-Maruyama with
    #: 500 steps (as sbi's i.i.d. methods do): the injected noise keeps the
    #: errors of GAUSS's Gaussian denoising posteriors from accumulating along
    #: the path, and the bridge needs a stochastic sampler. The factorised score
    #: runs on the adaptive ``dopri5``; JAC pays a Jacobian per step and takes 30
    #: Heun steps. The evidence is in ``benchmarks/iid/README.md``.
    iid_samplers: dict[str, tuple[str, dict]] = {
        "gauss": ("euler_maruyama", {"steps": 500}),
        "factorized": ("dopri5", {}),
        "jac": ("heun", {"steps": 30}),
        "factorized_bridge": ("euler_maruyama", {"steps": 500}),
    }

    #: overrides of :attr:`iid_samplers` for models whose path ends in pure
    #: noise, ``alpha(t_max) = 0`` (flow matching's rectified flow): there the
    #: reverse SDE is stiff near ``t_max``, so GAUSS integrates the ODE.
    iid_samplers_noise_end: dict[str, tuple[str, dict]] = {
        "gauss": ("dopri5", {}),
    }

    def iid_sampler_for(self, iid_method: str) -> tuple[str, dict]:
        """The default sampler and options of i.i.d. sampling with
        ``iid_method`` for this model (:attr:`iid_samplers`, with
        :attr:`iid_samplers_noise_end` on a path ending in pure noise)."""
        table = dict(self.iid_samplers)
        schedule = self.estimator.schedule
        t_max = torch.tensor([float(schedule.t_max)])
        if float(schedule.alpha(t_max)) <= 0.0:
            table.update(self.iid_samplers_noise_end)
        return table.get(iid_method, (self.sampler, {}))

    #: whether samplers end i.i.d. sampling with the denoising step
    #: ``theta = x_hat(z, t_min)``. Off by default: the composed denoiser at
    #: ``t_min`` adds up the ``N`` single-trial denoisers, so that last step adds
    #: their ``N`` estimation errors to every sample, while ``z_{t_min}`` carries
    #: only the noise ``sigma(t_min)``. A ``final_denoise=`` sampler option
    #: overrides it.
    iid_final_denoise = False

    def _iid_sampling_options(
        self,
        sampler: str | Solver | None,
        steps: int | None,
        options: dict,
        iid_method: str | None,
    ) -> tuple[str, dict]:
        """The sampler name and options of one call for i.i.d. trials: a given
        sampler as for one observation, else the default of ``iid_method``
        (:meth:`iid_sampler_for`)."""
        name, options = solver_call(sampler, options)
        if name is not None:
            return self._sampling_options(name, steps, options)
        method = self.iid_method if iid_method is None else iid_method
        name, defaults = self.iid_sampler_for(method)
        get_sampler(name)
        return name, sampling_call_options(name, name, defaults, options, steps)

    def _iid_sampler_options(self, sampler: str, options: dict) -> dict:
        """``options`` with ``final_denoise`` set to :attr:`iid_final_denoise`
        where the call does not set it and the sampler takes it."""
        if "final_denoise" in options or not sampler_takes_option(
            get_sampler(sampler), "final_denoise"
        ):
            return options
        return {**options, "final_denoise": self.iid_final_denoise}

    def iid_denoiser(
        self,
        x: Tensor,
        iid_method: str | None = None,
        generator: torch.Generator | None = None,
        show_progress_bars: bool = False,
        **iid_options: Any,
    ) -> IIDComposedDenoiser:
        r"""The ``DenoiseFn`` of ``p(theta | x_1, ..., x_N)`` composed from the
        single-trial model (standardised space).

        Args:
            x: trials ``(N, *x_shape)``.
            iid_method: one of ``IID_METHODS`` (``factorized``,
                ``factorized_bridge``, ``gauss``, ``jac``); ``self.iid_method``
                (``gauss``) if None.
            generator: random generator of GAUSS's covariance estimate.
            show_progress_bars: show progress of that estimate.
            **iid_options: ``prior_score`` (``auto``, ``analytic``, ``network``,
                ``gaussian``), ``target_prior`` (a torch ``Distribution``: the
                prior of the composed posterior when the model was trained
                under a proposal, its ``prior``) and the options of
                :class:`~sbi_diffusion.composition.IIDComposedDenoiser`.
        """
        method = self.iid_method if iid_method is None else iid_method
        if method not in IID_METHODS:
            raise ValueError(
                f"Unknown iid_method {method!r}. Pass one of {IID_METHODS}."
            )
        options = {**self.iid_options, **iid_options}
        prior_score = options.pop("prior_score", "auto")
        target_prior = options.pop("target_prior", None)
        x = self._check_x(x, allow_batch=True)
        key = (method, prior_score, id(target_prior), repr(sorted(options.items())))
        cached = getattr(self, "_iid_cache", None)
        if (
            cached is not None
            and cached[0] == key
            and cached[1].shape == x.shape
            and torch.equal(cached[1], x)
        ):
            return cached[2]
        prior = diffused_prior(self.estimator, self.prior, prior_score)
        if target_prior is not None:
            options["target_prior"] = diffused_prior(
                self.estimator, target_prior, prior_score
            )
        denoise = IIDComposedDenoiser(
            self.estimator,
            x,
            prior,
            method=method,
            generator=generator,
            show_progress_bars=show_progress_bars,
            **options,
        )
        self._iid_cache = (key, x.clone(), denoise)
        return denoise
