r"""The posterior density through the probability-flow ODE.

The probability-flow ODE ``dz/dt = v(z, t)`` of the trained denoiser carries
the posterior into ``p_{t_max}``; by the instantaneous change of variables
(Chen et al. 2018; Song et al. 2021, Eq. 39)

.. math::
    \log p(\theta \mid x) = \log p_{t_{max}}(z_{t_{max}})
    + \int_{t_{min}}^{t_{max}} \nabla_z \cdot v(z_t, t \mid x)\, dt
    - \sum_j \log s_j,

where ``z = (theta - shift) / s`` is the standardised parameter
(:func:`~sbi_diffusion.density.ode_log_prob`). :class:`ProbabilityFlowDensity`
gives a posterior ``log_prob`` for one observation or i.i.d. trials, and the
piecewise evaluation the joint model's conditionals share.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from sbi.utils.sbiutils import within_support
from torch import Tensor
from tqdm.auto import tqdm

from sbi_diffusion.density import (
    DEFAULT_FUSED_STEPS,
    ode_log_prob,
    ode_sample_log_prob,
    resolve_log_prob_solver,
)
from sbi_diffusion.model import ConditionedDenoiser
from sbi_diffusion.model.interface import DenoiseFn
from sbi_diffusion.samplers import Solver
from sbi_diffusion.samplers.noise import initial_noise

__all__ = ["ProbabilityFlowDensity"]


class ProbabilityFlowDensity:
    """Mixin of :class:`~sbi_diffusion.inference.posterior.DiffusionPosterior`:
    ``log_prob`` through the probability-flow ODE.

    Uses the posterior's ``estimator``, ``prior``, ``max_sampling_batch_size``,
    ``theta_shape``, ``_check_x``, ``_resolve_x``, ``denoiser_for``,
    ``iid_method``, ``iid_denoiser`` and ``_device``.
    """

    def log_prob(
        self,
        theta: Tensor,
        x: Tensor | None = None,
        track_gradients: bool = False,
        divergence: str = "auto",
        num_probes: int = 1,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        generator: torch.Generator | None = None,
        iid_method: str | None = None,
        iid_options: dict | None = None,
        solver: str | Solver = "auto",
        steps: int | None = None,
        probe_basis: Tensor | None = None,
    ) -> Tensor:
        r"""``log p(theta | x)`` through the probability-flow ODE.

        The density is that of the model on ``R^d`` mapped back from standardised
        space (``- sum log scale``, and ``+ log |det dT/dtheta|`` for a model
        trained with a ``theta_transform`` ``T``); it is ``-inf`` outside the
        prior support. It
        is not renormalised for the mass the model puts outside the support.

        For i.i.d. trials ``x`` ``(N, *x_shape)`` it is the density of the
        probability-flow ODE of the composed denoiser (``iid_method`` ``gauss``
        or ``factorized``: their drift is differentiable in ``z`` without
        differentiating a Jacobian); a normalised density of what the ODE
        samplers draw, not the exact ``N``-trial posterior.

        Args:
            theta: ``(batch, *theta_shape)`` or ``theta_shape``.
            x: one observation or ``N`` i.i.d. trials; the default x if None.
            track_gradients: keep the autograd graph (not supported by the ODE
                solve; the result is detached).
            divergence: ``"exact"`` (Jacobian trace), ``"hutchinson"``
                (unbiased estimate, one vector-Jacobian product per probe) or
                ``"auto"`` (default: exact up to
                :data:`~sbi_diffusion.density.EXACT_DIVERGENCE_MAX_DIM` = 32
                parameter dimensions, Hutchinson above, where the exact trace's
                one backward pass per dimension is too costly;
                :func:`~sbi_diffusion.density.resolve_divergence`). With
                Hutchinson, ``log_prob`` is random: pass ``generator`` for
                reproducible values.
            num_probes: probes of the Hutchinson estimator.
            rtol, atol: ODE solver tolerances.
            generator: random generator of the Hutchinson probes.
            iid_method, iid_options: composition for i.i.d. trials (as in
                :meth:`sample`).
            solver: ``"dopri5"`` (adaptive, to ``rtol``/``atol``), ``"heun"``
                (``steps`` fixed steps, ``2 * steps`` network evaluations) or
                ``"auto"`` (default; see
                :func:`~sbi_diffusion.density.resolve_log_prob_solver`); or a
                :class:`~sbi_diffusion.samplers.Solver` with the name and any of
                ``divergence``, ``num_probes``, ``rtol``, ``atol``, ``steps``,
                e.g. ``Solver("heun", steps=16)``, which override the keyword
                arguments.
            steps: Heun steps (default 32, or 16 when ``"auto"`` picks Heun).
            probe_basis: an orthogonal ``(dim, dim)`` basis of standardised
                parameter space to draw the Hutchinson probes in (e.g. the
                eigenvectors of the posterior covariance; lower variance,
                :func:`~sbi_diffusion.density.ode_log_prob`).

        The rows are integrated in pieces of ``max_sampling_batch_size``, so
        memory stays bounded for any batch.

        Returns:
            Log densities of shape ``(batch,)``.

        Raises:
            ValueError: for ``iid_method`` ``jac`` or ``factorized_bridge``, whose
                ODE density is not available (``jac`` would need second
                derivatives of the network; the bridge is not a probability-flow
                ODE of one distribution).
        """
        solver, ode_options = _density_settings(
            solver, divergence, num_probes, rtol, atol, steps, probe_basis
        )
        x = self._check_x(self._resolve_x(x), allow_batch=True)
        if x.shape[0] > 1:
            method = self.iid_method if iid_method is None else iid_method
            if method not in ("gauss", "factorized"):
                raise ValueError(
                    f"log_prob for i.i.d. trials is not available with "
                    f"iid_method={method!r}: 'jac' would need second derivatives "
                    "of the network and 'factorized_bridge' is not the ODE of one "
                    "distribution. Pass iid_method='gauss' or 'factorized'."
                )
            denoise = self.iid_denoiser(
                x, method, generator=generator, **(iid_options or {})
            )
        else:
            denoise = self.denoiser_for(x)
        theta = self._theta_rows(theta)
        return self._log_prob_of_rows(
            theta, lambda rows: denoise, solver, generator=generator, **ode_options
        )

    def log_prob_batched(
        self,
        theta: Tensor,
        x: Tensor,
        track_gradients: bool = False,
        generator: torch.Generator | None = None,
        **density_options: Any,
    ) -> Tensor:
        r"""``log p(theta_sb | x_b)`` for a batch of observations, each with its
        own parameters, in one batched probability-flow ODE solve (sbi's
        ``log_prob_batched``).

        Each ``x_b`` is one observation, not a set of i.i.d. trials; the
        density of each pair is that of :meth:`log_prob` (the same equation
        and options).

        Args:
            theta: ``(*sample_shape, B, *theta_shape)``.
            x: ``(B, *x_shape)``.
            track_gradients, generator: as in :meth:`log_prob`.
            **density_options: ``solver``, ``divergence``, ``num_probes``,
                ``rtol``, ``atol``, ``steps``, ``probe_basis``, as in
                :meth:`log_prob` (with its defaults).

        Returns:
            Log densities of shape ``(*sample_shape, B)``.

        Raises:
            ValueError: if ``theta``'s trailing dimensions are not ``(B,
                *theta_shape)`` for the ``B`` rows of ``x``.
        """
        solver, ode_options = _density_settings(
            **{**_log_prob_density_defaults(), **density_options}
        )
        x = self._check_x(torch.as_tensor(x), allow_batch=True)
        theta = torch.as_tensor(theta, dtype=torch.float32, device=self._device)
        num_x, event = x.shape[0], len(self.theta_shape)
        if (
            theta.dim() < event + 1
            or tuple(theta.shape[theta.dim() - event :]) != tuple(self.theta_shape)
            or theta.shape[theta.dim() - event - 1] != num_x
        ):
            raise ValueError(
                f"theta has shape {tuple(theta.shape)}; log_prob_batched expects "
                f"(*sample_shape, {num_x}, *{tuple(self.theta_shape)}) for the "
                f"{num_x} rows of x."
            )
        sample_shape = theta.shape[: theta.dim() - event - 1]
        with torch.no_grad():
            embeddings = self.estimator.embed_condition(x)
        # sample-major rows: row i * B + b has the condition x_b
        embeddings = embeddings.repeat(int(sample_shape.numel()), 1)

        def make_denoise(rows: Tensor) -> DenoiseFn:
            return ConditionedDenoiser(self.estimator, embeddings[rows])

        log_p = self._log_prob_of_rows(
            theta.reshape(-1, *self.theta_shape),
            make_denoise,
            solver,
            generator=generator,
            **ode_options,
        )
        return log_p.reshape(*sample_shape, num_x)

    def _theta_rows(self, theta: Tensor) -> Tensor:
        """``theta`` as ``(batch, *theta_shape)`` (one row for ``theta_shape``).

        Raises:
            ValueError: for any other shape.
        """
        theta = torch.as_tensor(theta, dtype=torch.float32, device=self._device)
        if tuple(theta.shape) == tuple(self.theta_shape):
            theta = theta.unsqueeze(0)
        if tuple(theta.shape[1:]) != tuple(self.theta_shape):
            raise ValueError(
                f"theta has shape {tuple(theta.shape)}; expected (batch, "
                f"*{tuple(self.theta_shape)})."
            )
        return theta

    def _log_prob_of_rows(
        self,
        theta: Tensor,
        make_denoise: Callable[[Tensor], DenoiseFn],
        solver: str,
        **ode_options: Any,
    ) -> Tensor:
        """``log p(theta)`` of the rows ``theta`` ``(batch, *theta_shape)`` in the
        original space, the rows ``rows`` integrated with ``make_denoise(rows)``
        (:meth:`standardized_log_prob`), plus the log-determinant of a
        ``theta_transform``; ``-inf`` outside the prior support."""
        z = self.estimator.to_z(theta).reshape(theta.shape[0], -1)
        # rows a change of variables cannot map (outside the support) get -inf;
        # a placeholder keeps them from stalling the batch's adaptive steps
        mapped = torch.isfinite(z).all(dim=1)
        z = torch.where(mapped[:, None], z, torch.zeros_like(z))
        log_p = self.standardized_log_prob(
            make_denoise, z, solver=solver, **ode_options
        )
        log_p = log_p + self.estimator.transform_log_abs_det(theta)
        inside = within_support(self.prior, theta).reshape(-1) & mapped
        inside = inside & torch.isfinite(log_p)
        return torch.where(inside, log_p, torch.full_like(log_p, -math.inf))

    def sample_with_log_prob(
        self,
        sample_shape: torch.Size | tuple = (),
        x: Tensor | None = None,
        steps: int = DEFAULT_FUSED_STEPS,
        divergence: str = "auto",
        num_probes: int = 1,
        generator: torch.Generator | None = None,
        probe_basis: Tensor | None = None,
        show_progress_bars: bool = False,
    ) -> tuple[Tensor, Tensor]:
        r"""Posterior samples and their ``log p(theta | x)`` in one pass.

        Each sample is drawn with DPM-Solver++(2M) on the probability-flow ODE,
        and its density is integrated along the same trajectory
        (:func:`~sbi_diffusion.density.ode_sample_log_prob`): ``steps + 1``
        network evaluations with the divergence per sample, where
        :meth:`sample` followed by :meth:`log_prob` costs about ``steps``
        evaluations plus ``32`` with the divergence on large batches. This is
        what a density threshold over many samples needs (sbi's
        ``get_density_thresholder`` draws 10^6;
        :func:`~sbi_diffusion.inference.density_thresholder.get_density_thresholder`
        uses this method). The densities are those of :meth:`log_prob`
        (original space, ``-inf`` outside the prior support), with the
        quadrature error of ``steps`` points instead of a second solve.
        Samples outside the prior support are redrawn, as in :meth:`sample`.

        Args:
            sample_shape: shape of the samples.
            x: one observation; the default x if None.
            steps: solver steps.
            divergence, num_probes, generator, probe_basis: as in
                :meth:`log_prob` (the generator also draws the initial noise).
            show_progress_bars: show a tqdm bar over the accepted samples.

        Returns:
            Samples ``(*sample_shape, *theta_shape)`` and log densities
            ``sample_shape``.

        Raises:
            ValueError: for several rows of ``x`` (i.i.d. trials) or a posterior
                with guidance, whose density this pass does not give.
        """
        if getattr(self, "guidance", None):
            raise ValueError(
                "sample_with_log_prob gives the density of the unguided posterior; "
                "this posterior has guidance. Use one without guidance."
            )
        x = self._check_x(self._resolve_x(x), allow_batch=False)
        denoise = self.denoiser_for(x)
        num = int(torch.Size(sample_shape).numel())
        theta_out = torch.empty(num, *self.theta_shape, device=self._device)
        log_p_out = torch.empty(num, device=self._device)
        filled, fruitless = 0, 0
        progress = tqdm(
            total=num,
            disable=not show_progress_bars,
            desc=f"Drawing {num} posterior samples with their densities",
            leave=False,
        )
        while filled < num:
            chunk = min(self.max_sampling_batch_size, num - filled)
            noise = initial_noise(
                self.estimator.schedule,
                (chunk, self.estimator.theta_dim),
                generator=generator,
            ).to(self._device)
            with torch.no_grad():
                z, log_p = ode_sample_log_prob(
                    denoise,
                    noise,
                    steps=steps,
                    divergence=divergence,
                    num_probes=num_probes,
                    generator=generator,
                    probe_basis=probe_basis,
                )
                theta = self.estimator.from_z(z).reshape(chunk, *self.theta_shape)
                log_p = (
                    log_p
                    - self.estimator.log_abs_det()
                    + self.estimator.transform_log_abs_det(theta)
                )
            ok = within_support(self.prior, theta).reshape(-1)
            ok &= torch.isfinite(log_p)
            ok &= torch.isfinite(theta.reshape(chunk, -1)).all(dim=1)
            kept = int(ok.sum())
            theta_out[filled : filled + kept] = theta[ok]
            log_p_out[filled : filled + kept] = log_p[ok]
            filled += kept
            progress.update(kept)
            fruitless = 0 if kept else fruitless + 1
            if fruitless >= 100:
                progress.close()
                raise RuntimeError(
                    f"100 batches in a row drew no sample inside the prior support "
                    f"({filled} of {num} drawn); the model may be undertrained or "
                    "x far from the training data."
                )
        progress.close()
        shape = torch.Size(sample_shape)
        return theta_out.reshape(*shape, *self.theta_shape), log_p_out.reshape(shape)

    def standardized_log_prob(
        self,
        make_denoise: Callable[[Tensor], DenoiseFn],
        z: Tensor,
        solver: str = "auto",
        steps: int | None = None,
        **ode_options: Any,
    ) -> Tensor:
        r"""``log p(theta)`` of standardised points ``z`` ``(batch, theta_dim)``
        through the probability-flow ODE, mapped back to the original space
        (``- sum log scale``), with no prior-support check.

        The rows are integrated in pieces of ``max_sampling_batch_size``; the
        piece of batch rows ``rows`` uses the denoiser ``make_denoise(rows)``, so
        each row may have its own condition (as in :meth:`_draw`).

        Args:
            make_denoise: the ``DenoiseFn`` of a piece of rows.
            z: standardised points.
            solver, steps: the ODE solver and its steps; ``"auto"`` as in
                :func:`~sbi_diffusion.density.resolve_log_prob_solver`.
            **ode_options: further options of
                :func:`~sbi_diffusion.density.ode_log_prob` (``divergence``,
                ``num_probes``, ``rtol``, ``atol``, ``generator``).

        Returns:
            Log densities of shape ``(batch,)``.
        """
        solver, steps = resolve_log_prob_solver(z.shape[0], solver, steps)
        size = self.max_sampling_batch_size
        rows = torch.arange(z.shape[0], device=z.device).split(size)
        log_p = torch.cat(
            [
                ode_log_prob(
                    make_denoise(piece_rows),
                    piece,
                    solver=solver,
                    steps=steps,
                    **ode_options,
                )
                for piece_rows, piece in zip(rows, z.split(size), strict=True)
            ]
        )
        return log_p - self.estimator.log_abs_det()


def _log_prob_density_defaults() -> dict[str, Any]:
    """:meth:`ProbabilityFlowDensity.log_prob`'s defaults of the density
    options (the arguments of :func:`_density_settings`)."""
    defaults = inspect.signature(ProbabilityFlowDensity.log_prob).parameters
    names = inspect.signature(_density_settings).parameters
    return {name: defaults[name].default for name in names}


def _density_settings(
    solver: str | Solver,
    divergence: str,
    num_probes: int,
    rtol: float,
    atol: float,
    steps: int | None,
    probe_basis: Tensor | None,
) -> tuple[str, dict[str, Any]]:
    """The solver name and the ODE options of a density call, updated by the
    options of a :class:`~sbi_diffusion.samplers.Solver`.

    Raises:
        ValueError: for a ``Solver`` with an option that is not one of these.
    """
    settings: dict[str, Any] = {
        "divergence": divergence,
        "num_probes": num_probes,
        "rtol": rtol,
        "atol": atol,
        "steps": steps,
        "probe_basis": probe_basis,
    }
    if isinstance(solver, Solver):
        unknown = set(solver.options) - set(settings)
        if unknown:
            raise ValueError(
                f"log_prob's solver takes the options {sorted(settings)}, "
                f"not {sorted(unknown)}."
            )
        settings.update(solver.options)
        solver = solver.name
    return solver, settings
