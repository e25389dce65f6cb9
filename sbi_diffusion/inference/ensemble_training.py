r"""Training an ensemble of denoisers on one trainer's simulations.

``inference.train_ensemble(K)`` trains ``K`` denoisers of the trainer's options
on the same simulations, each from a new initialisation with its own seed
(so its data split, training noise and mini-batches differ as well), and keeps
their mean

.. math::
    \hat\theta(z_t, t \mid x) = \frac{1}{K} \sum_{k=1}^{K}
    \hat\theta_k(z_t, t \mid x)

(:class:`~sbi_diffusion.model.DenoiserEnsemble`; the deep ensemble of
Lakshminarayanan et al. 2017, "Simple and Scalable Predictive Uncertainty
Estimation using Deep Ensembles", applied to the regression target
``E[theta | z_t, x]``). The posterior built next samples and evaluates
densities with the mean, so each evaluation of it costs ``K`` network passes
(a posterior's ``last_nfe`` counts evaluations of the mean). What it buys,
and at what cost, is measured in ``benchmarks/ensembles/``.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

from sbi_diffusion.model.ensemble import DenoiserEnsemble

__all__ = ["EnsembleTraining"]


class EnsembleTraining:
    """Adds :meth:`train_ensemble` to a trainer whose ``train()`` returns a
    denoiser and accepts ``seed`` and ``retrain_from_scratch``."""

    def train_ensemble(
        self, size: int, seed: int | None = None, **train_kwargs: Any
    ) -> DenoiserEnsemble:
        r"""Train ``size`` denoisers on the stored simulations and keep their mean.

        Member ``k`` is trained by ``train(retrain_from_scratch=True,
        seed=seed + k, **train_kwargs)`` (a random seed each if ``seed`` is
        None), so it starts from a new network. ``build_posterior()`` then
        uses the ensemble, and ``resolved_training`` records its size and the
        steps each member trained (the other entries are the last member's).

        Args:
            size: number of members ``K`` (1 trains one denoiser, as ``train()``).
            seed: seed of member 0; member ``k`` uses ``seed + k``.
            **train_kwargs: options of ``train()`` for every member.

        Returns:
            The :class:`~sbi_diffusion.model.DenoiserEnsemble` of the members.

        Raises:
            ValueError: for ``size`` below 1, ``resume_training=True`` or
                ``retrain_from_scratch=False`` (each member starts anew).
        """
        if int(size) < 1:
            raise ValueError(f"An ensemble needs size >= 1, got {size}.")
        if train_kwargs.get("resume_training") or not train_kwargs.pop(
            "retrain_from_scratch", True
        ):
            raise ValueError(
                "train_ensemble() trains each member from a new network; "
                "resume_training=True and retrain_from_scratch=False are not "
                "supported."
            )
        members, steps = [], []
        for member in range(int(size)):
            member_seed = None if seed is None else int(seed) + member
            members.append(
                self.train(  # type: ignore[attr-defined]
                    retrain_from_scratch=True, seed=member_seed, **train_kwargs
                )
            )
            trained = self.resolved_training  # type: ignore[attr-defined]
            steps.append(trained["steps_trained"])
        ensemble = DenoiserEnsemble(members)
        self._trained_estimator = ensemble
        self._resolved_training = {
            **self._resolved_training,
            "ensemble_size": int(size),
            "steps_trained_by_member": steps,
            "seed": seed,
        }
        return deepcopy(ensemble)
