r"""The sbi posterior of a trained denoiser.

:class:`DiffusionPosterior` subclasses sbi's ``NeuralPosterior``: ``sample``,
``sample_batched``, ``log_prob`` (probability-flow ODE), ``map``,
``set_default_x``, and it can be pickled with ``torch.save``. Samples run any
registered sampler (:mod:`sbi_diffusion.samplers`) in standardised space and are
mapped back to ``theta``; samples outside the prior's support are rejected and
redrawn, as in sbi.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from sbi.inference.posteriors.base_posterior import NeuralPosterior
from sbi.inference.potentials.base_potential import BasePotential
from sbi.utils.sbiutils import within_support
from torch import Tensor
from torch.distributions import Distribution
from tqdm.auto import tqdm

from sbi_diffusion.denoiser import ConditionedDenoiser, Denoiser
from sbi_diffusion.density import ode_log_prob
from sbi_diffusion.samplers import get_sampler, initial_noise

__all__ = ["DiffusionPosterior", "DiffusionPotential"]


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


class DiffusionPosterior(NeuralPosterior):
    r"""Posterior ``p(theta | x)`` of a :class:`~sbi_diffusion.denoiser.Denoiser`.

    Args:
        estimator: the trained denoiser.
        prior: the prior; samples outside its support are rejected.
        sampler: default sampler name (see ``sbi_diffusion.samplers.SAMPLERS``).
        sampler_options: default sampler options (e.g. ``{"steps": 18}``).
        max_sampling_batch_size: rows integrated at once.
        device: device of the posterior.
    """

    def __init__(
        self,
        estimator: Denoiser,
        prior: Distribution,
        sampler: str = "heun",
        sampler_options: dict | None = None,
        max_sampling_batch_size: int = 10_000,
        device: str | torch.device | None = None,
    ):
        get_sampler(sampler)
        device = str(next(estimator.parameters()).device) if device is None else device
        potential = DiffusionPotential(self, prior, device=device)
        super().__init__(potential_fn=potential, device=device)
        self.estimator = estimator.eval()
        self.prior = prior
        self.sampler = sampler
        self.sampler_options = dict(sampler_options or {})
        self.max_sampling_batch_size = int(max_sampling_batch_size)
        self.last_nfe: float | None = None
        self._purpose = (
            "It samples a diffusion / flow-matching model by integrating the "
            "reverse process and evaluates log_prob through the probability-flow ODE."
        )

    # --------------------------------------------------------------- inputs

    @property
    def theta_shape(self) -> torch.Size:
        return self.estimator.input_shape

    @property
    def x_shape(self) -> torch.Size:
        return self.estimator.condition_shape

    def _check_x(self, x: Tensor, allow_batch: bool) -> Tensor:
        """Return ``x`` as ``(batch, *x_shape)``, raising on a wrong shape."""
        x = torch.as_tensor(x, dtype=torch.float32)
        x_shape = tuple(self.x_shape)
        if tuple(x.shape) == x_shape:
            x = x.unsqueeze(0)
        if tuple(x.shape[1:]) != x_shape:
            raise ValueError(
                f"x has shape {tuple(x.shape)}, but the model was trained on "
                f"simulations of shape {x_shape}. Pass x of shape {x_shape} or "
                f"(batch, *{x_shape})."
            )
        if not torch.isfinite(x).all():
            raise ValueError("x contains NaN or inf values.")
        if not allow_batch and x.shape[0] != 1:
            raise ValueError(
                f"x has {x.shape[0]} rows; sample() takes one observation of shape "
                f"{x_shape}. For a batch of observations use sample_batched()."
            )
        return x.to(self._device)

    def _resolve_x(self, x: Tensor | None) -> Tensor:
        if x is None:
            if self.default_x is None:
                raise ValueError(
                    "No observation: pass x=... or call set_default_x(x_o) first."
                )
            return self.default_x
        return x

    def denoiser_for(self, x: Tensor | None) -> ConditionedDenoiser:
        """The ``DenoiseFn`` of ``p(theta | x)`` in standardised space
        (``x=None``: the unconditional model, if trained with condition dropout)."""
        with torch.no_grad():
            return self.estimator.bind(x)

    # -------------------------------------------------------------- sampling

    def _run_sampler(
        self,
        denoise: ConditionedDenoiser,
        num: int,
        sampler: str,
        options: dict,
        generator: torch.Generator | None,
        show_progress_bars: bool,
    ) -> tuple[Tensor, float]:
        sampler_fn = get_sampler(sampler)
        noise = initial_noise(
            self.estimator.schedule,
            (num, self.estimator.theta_dim),
            generator=generator,
            device="cpu" if generator is not None else self._device,
        ).to(self._device)
        with torch.no_grad():
            result = sampler_fn(
                denoise,
                noise,
                generator=generator,
                show_progress_bars=show_progress_bars,
                **options,
            )
        return result.samples, result.nfe

    def _draw(
        self,
        embeddings: Tensor,
        sampler: str,
        options: dict,
        generator: torch.Generator | None,
        show_progress_bars: bool,
        reject_outside_prior: bool,
    ) -> Tensor:
        """One sample per row of ``embeddings``; rejected rows are redrawn."""
        num = embeddings.shape[0]
        out = torch.empty(num, self.estimator.theta_dim, device=self._device)
        todo = torch.arange(num, device=self._device)
        total_evals, total_drawn, rounds = 0.0, 0, 0
        progress = tqdm(
            total=num,
            disable=not show_progress_bars,
            desc=f"Drawing {num} posterior samples",
            leave=False,
        )
        while todo.numel() > 0:
            rounds += 1
            accepted_rows = []
            for chunk in todo.split(self.max_sampling_batch_size):
                denoise = ConditionedDenoiser(self.estimator, embeddings[chunk])
                z, nfe = self._run_sampler(
                    denoise, chunk.numel(), sampler, options, generator, False
                )
                theta = self.estimator.from_z(z).reshape(-1, *self.theta_shape)
                theta_flat = theta.reshape(chunk.numel(), -1)
                total_evals += nfe * chunk.numel()
                total_drawn += chunk.numel()
                ok = torch.isfinite(theta_flat).all(dim=1)
                if reject_outside_prior:
                    ok = ok & within_support(self.prior, theta).reshape(-1)
                out[chunk[ok]] = theta_flat[ok]
                accepted_rows.append(chunk[ok])
                progress.update(int(ok.sum()))
            accepted = torch.cat(accepted_rows)
            keep = ~torch.isin(todo, accepted)
            todo = todo[keep]
            acceptance = 1 - todo.numel() / max(1, keep.numel())
            if todo.numel() and rounds == 1 and acceptance < 0.01:
                warnings.warn(
                    f"Only {100 * acceptance:.2f}% of the samples lie inside the "
                    "prior support; sampling may be slow. The model may be "
                    "undertrained or x_o far from the training data.",
                    UserWarning,
                    stacklevel=3,
                )
            if todo.numel() and rounds >= 100:
                raise RuntimeError(
                    f"{todo.numel()} samples were still outside the prior support "
                    "after 100 rounds of rejection; pass reject_outside_prior=False "
                    "to keep them."
                )
        progress.close()
        self.last_nfe = total_evals / max(1, total_drawn)
        return out

    def _sampling_options(
        self, sampler: str | None, steps: int | None, options: dict
    ) -> tuple[str, dict]:
        sampler = self.sampler if sampler is None else sampler
        get_sampler(sampler)
        merged = dict(self.sampler_options) if sampler == self.sampler else {}
        merged.update(options)
        if steps is not None:
            merged["steps"] = steps
        return sampler, merged

    def sample(
        self,
        sample_shape: torch.Size | tuple = torch.Size(),
        x: Tensor | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        show_progress_bars: bool = True,
        reject_outside_prior: bool = True,
        generator: torch.Generator | None = None,
        **sampler_options: Any,
    ) -> Tensor:
        r"""Draw samples from ``p(theta | x)``.

        Args:
            sample_shape: shape of the samples.
            x: one observation ``(*x_shape)`` or ``(1, *x_shape)``; the default x
                if None.
            sampler: sampler name (``heun``, ``euler``, ``euler_maruyama``, ``ddim``,
                ``dpm++2m``, ``dopri5``, ``adaptive_sde``, ...); the default if None.
            steps: number of steps of a fixed-grid sampler.
            show_progress_bars: show progress.
            reject_outside_prior: reject and redraw samples outside the prior
                support.
            generator: random generator (for reproducible samples).
            **sampler_options: further sampler options (``eta``, ``rtol``,
                ``corrector``, ...).

        Returns:
            Samples of shape ``(*sample_shape, *theta_shape)``. ``self.last_nfe``
            holds the network evaluations per sample.
        """
        x = self._check_x(self._resolve_x(x), allow_batch=False)
        sample_shape = torch.Size(sample_shape)
        num = int(math.prod(sample_shape))
        sampler, options = self._sampling_options(sampler, steps, sampler_options)
        with torch.no_grad():
            embedding = self.estimator.embed_condition(x)
        samples = self._draw(
            embedding.expand(num, -1),
            sampler,
            options,
            generator,
            show_progress_bars,
            reject_outside_prior,
        )
        return samples.reshape(*sample_shape, *self.theta_shape)

    def sample_batched(
        self,
        sample_shape: torch.Size | tuple,
        x: Tensor,
        sampler: str | None = None,
        steps: int | None = None,
        show_progress_bars: bool = True,
        reject_outside_prior: bool = True,
        generator: torch.Generator | None = None,
        **sampler_options: Any,
    ) -> Tensor:
        """Draw samples for each of a batch of observations ``x`` ``(B, *x_shape)``.

        Returns:
            Samples of shape ``(*sample_shape, B, *theta_shape)``.
        """
        x = self._check_x(x, allow_batch=True)
        sample_shape = torch.Size(sample_shape)
        num = int(math.prod(sample_shape))
        sampler, options = self._sampling_options(sampler, steps, sampler_options)
        with torch.no_grad():
            embedding = self.estimator.embed_condition(x)
        batch = x.shape[0]
        rows = embedding.repeat(num, 1)  # sample-major: row i*B + b has x_b
        samples = self._draw(
            rows, sampler, options, generator, show_progress_bars, reject_outside_prior
        )
        return samples.reshape(*sample_shape, batch, *self.theta_shape)

    # --------------------------------------------------------------- density

    def log_prob(
        self,
        theta: Tensor,
        x: Tensor | None = None,
        track_gradients: bool = False,
        divergence: str = "exact",
        num_probes: int = 1,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        r"""``log p(theta | x)`` through the probability-flow ODE.

        The density is that of the model on ``R^d`` mapped back from standardised
        space (``- sum log scale``); it is ``-inf`` outside the prior support. It
        is not renormalised for the mass the model puts outside the support.

        Args:
            theta: ``(batch, *theta_shape)`` or ``theta_shape``.
            x: one observation; the default x if None.
            track_gradients: keep the autograd graph (not supported by the ODE
                solve; the result is detached).
            divergence: ``"exact"`` (Jacobian trace) or ``"hutchinson"``.
            num_probes: probes of the Hutchinson estimator.
            rtol, atol: ODE solver tolerances.
            generator: random generator of the Hutchinson probes.

        Returns:
            Log densities of shape ``(batch,)``.
        """
        x = self._check_x(self._resolve_x(x), allow_batch=False)
        theta = torch.as_tensor(theta, dtype=torch.float32, device=self._device)
        if tuple(theta.shape) == tuple(self.theta_shape):
            theta = theta.unsqueeze(0)
        if tuple(theta.shape[1:]) != tuple(self.theta_shape):
            raise ValueError(
                f"theta has shape {tuple(theta.shape)}; expected (batch, "
                f"*{tuple(self.theta_shape)})."
            )
        z = self.estimator.to_z(theta).reshape(theta.shape[0], -1)
        denoise = self.denoiser_for(x)
        log_p = ode_log_prob(
            denoise, z, divergence=divergence, num_probes=num_probes,
            rtol=rtol, atol=atol, generator=generator,
        )
        log_p = log_p - self.estimator.log_abs_det()
        inside = within_support(self.prior, theta).reshape(-1)
        return torch.where(inside, log_p, torch.full_like(log_p, -math.inf))

    # ------------------------------------------------------------------- MAP

    def map(
        self,
        x: Tensor | None = None,
        num_iter: int = 300,
        num_to_optimize: int = 100,
        learning_rate: float = 0.01,
        init_method: str | Tensor = "posterior",
        num_init_samples: int = 1000,
        save_best_every: int = 10,
        show_progress_bars: bool = False,
        force_update: bool = False,
    ) -> Tensor:
        r"""Maximum a posteriori estimate.

        Gradient ascent (Adam) along the model's score at a small noise level,
        ``grad log p(theta | x) ~ (x_hat(theta, t) - theta) / sigma_t^2``, from
        ``num_to_optimize`` posterior samples; the end point with the highest
        ``log_prob`` is returned. Uses the default x (``set_default_x``).
        """
        if x is not None:
            raise ValueError(
                "Passing x to map() is deprecated in sbi; call set_default_x(x) first."
            )
        if self.default_x is None:
            raise ValueError("Set an observation with set_default_x(x_o) first.")
        if self._map is not None and not force_update:
            return self._map
        x_o = self._check_x(self.default_x, allow_batch=False)
        if isinstance(init_method, Tensor):
            inits = init_method.to(self._device)
        elif init_method == "posterior":
            inits = self.sample((num_init_samples,), x=x_o, show_progress_bars=False)
        elif init_method == "prior":
            inits = self.prior.sample((num_init_samples,))
        else:
            raise ValueError("init_method must be 'posterior', 'prior' or a Tensor.")
        inits = inits.reshape(-1, *self.theta_shape)[:num_to_optimize]
        z = self.estimator.to_z(inits).reshape(inits.shape[0], -1).clone()
        schedule = self.estimator.schedule
        # time where sigma/alpha ~ 0.02: a smoothed log density, well conditioned
        grid = torch.linspace(schedule.t_max, schedule.t_min, 2001)
        level = (schedule.sigma(grid) / schedule.alpha(grid) - 0.02).abs()
        t_map = grid[int(torch.argmin(level))]
        denoise = self.denoiser_for(x_o)
        z = z.requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=learning_rate)
        for _ in tqdm(range(num_iter), disable=not show_progress_bars, desc="MAP"):
            with torch.no_grad():
                direction = denoise(z, t_map) - z * schedule.alpha(t_map)
            optimizer.zero_grad()
            z.grad = -direction
            optimizer.step()
        candidates = self.estimator.from_z(z.detach()).reshape(-1, *self.theta_shape)
        log_p = self.log_prob(candidates, x=x_o, rtol=1e-4, atol=1e-4)
        self._map = candidates[int(torch.argmax(log_p))].unsqueeze(0)
        return self._map

    # ---------------------------------------------------------------- device

    def to(self, device: str | torch.device) -> DiffusionPosterior:
        """Move the posterior (estimator and, where possible, prior) to ``device``."""
        self._device = torch.device(device) if isinstance(device, str) else device
        self.estimator.to(self._device)
        if hasattr(self.prior, "to"):
            self.prior.to(self._device)
        self.potential_fn.device = self._device
        if self._x is not None:
            self._x = self._x.to(self._device)
        return self
