r"""The masked joint model: its interface, the network-based and the Gaussian one.

A :class:`MaskedJointModel` gives, for any condition mask ``m``, the denoised
estimate of the latent block of ``v = (theta, x)`` (Gloeckler et al. 2024,
"All-in-one simulation-based inference"),

.. math::
    \hat v_{latent}(z_t, t \mid v_{obs})
    = c_{skip}(t) z_t + c_{out}(t) F\big(c_{in}(t) z_t,\, v_{obs},\, m,\,
    c_{noise}(t)\big);

:class:`JointDenoiser` computes ``F`` with a token network and trains it with
the masked denoising loss (Simformer, Eq. 6); :class:`GaussianJointDenoiser`
is the exact masked denoiser of a Gaussian joint distribution, which tests every
code path that uses a masked denoiser independently of training.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sbi_diffusion.joint.conditional import JointConditionalDenoiser
from sbi_diffusion.joint.masks import (
    MaskDistribution,
    attention_mask,
    check_condition_mask,
    check_edge_mask,
    join_flat,
)
from sbi_diffusion.model.loss_draws import LossDraws
from sbi_diffusion.path.parameterizations import Parameterization, PathPoint
from sbi_diffusion.path.schedules import Schedule
from sbi_diffusion.path.vector_field import as_time
from sbi_diffusion.path.weightings import check_weighting, loss_weight

__all__ = ["MaskedJointModel", "JointDenoiser", "GaussianJointDenoiser"]


class MaskedJointModel(nn.Module, ABC):
    r"""Interface of a masked denoiser over the joint vector ``v = (theta, x)``.

    Holds the schedule, the shapes of ``theta`` and ``x`` and the z-scoring
    ``v_std = (v - shift) / scale`` of every variable; subclasses implement
    :meth:`denoise_masked` in standardised space.

    Args:
        schedule: the Gaussian path.
        theta_shape: event shape of ``theta``.
        x_shape: event shape of ``x``.
        shift, scale: ``(D,)`` z-scoring of the joint vector (0 and 1 if None).
    """

    def __init__(
        self,
        schedule: Schedule,
        theta_shape: torch.Size | Sequence[int],
        x_shape: torch.Size | Sequence[int],
        shift: Tensor | None = None,
        scale: Tensor | None = None,
    ):
        super().__init__()
        self.schedule = schedule
        self.theta_shape = torch.Size(theta_shape)
        self.x_shape = torch.Size(x_shape)
        self.theta_dim = int(self.theta_shape.numel())
        self.x_dim = int(self.x_shape.numel())
        self.dim = self.theta_dim + self.x_dim
        shift = torch.zeros(self.dim) if shift is None else torch.as_tensor(shift)
        scale = torch.ones(self.dim) if scale is None else torch.as_tensor(scale)
        if shift.numel() != self.dim or scale.numel() != self.dim:
            raise ValueError(
                f"shift and scale need {self.dim} entries (theta then x), got "
                f"{shift.numel()} and {scale.numel()}."
            )
        self.register_buffer("shift", shift.reshape(self.dim).float().clone())
        self.register_buffer("scale", scale.reshape(self.dim).float().clone())

    # ----------------------------------------------------------- variables

    def join(self, theta: Tensor, x: Tensor) -> Tensor:
        """Stack raw ``theta`` ``(B, *theta_shape)`` and ``x`` ``(B, *x_shape)``
        into ``(B, D)``."""
        return join_flat(theta, x)

    def to_z(self, values: Tensor) -> Tensor:
        """Standardise joint values ``(B, D)``: ``(v - shift) / scale``."""
        return (values - self.shift) / self.scale

    def from_z(self, z: Tensor) -> Tensor:
        """Inverse of :meth:`to_z`."""
        return self.shift + self.scale * z

    def variable_slice(self, which: str) -> slice:
        """The columns of ``"theta"`` or ``"x"`` in the joint vector."""
        if which == "theta":
            return slice(0, self.theta_dim)
        if which == "x":
            return slice(self.theta_dim, self.dim)
        raise ValueError(f"Pass 'theta' or 'x', got {which!r}.")

    # ------------------------------------------------------------ denoising

    @abstractmethod
    def denoise_masked(
        self,
        z: Tensor,
        t: Tensor,
        condition_mask: Tensor,
        missing: Tensor | None = None,
    ) -> Tensor:
        r"""Denoised estimate of the joint vector (standardised space).

        Args:
            z: ``(B, D)``; latent entries are noisy ``z_t``, observed entries are
                the clean values.
            t: time ``(B,)`` or scalar.
            condition_mask: ``(B, D)``, True where observed.
            missing: ``(B, D)``, True where a variable is marginalised out (its
                entry of ``z`` is ignored), or None.

        Returns:
            ``(B, D)``: ``E[v_i | z_t, v_obs]`` for latent entries; observed
            (and missing) entries are returned unchanged.
        """

    def conditional(
        self, condition_mask: Tensor | Sequence[bool], observed: Tensor
    ) -> JointConditionalDenoiser:
        """The ``DenoiseFn`` of one conditional over its latent variables.

        Args:
            condition_mask: ``(D,)``, True where observed.
            observed: standardised joint values ``(1, D)`` or ``(B, D)``; only the
                observed entries are used, NaN there marginalises a variable.
        """
        return JointConditionalDenoiser(self, condition_mask, observed)


def _path_point(schedule: Schedule, t: Tensor) -> PathPoint:
    return PathPoint(*schedule.derivatives(t))


def _variable_path_point(schedule: Schedule, t: Tensor, dim: int) -> PathPoint:
    """The path point at times ``t`` ``(B, 1)`` for each of ``dim`` variables,
    ``(B, dim)``."""
    p = _path_point(schedule, t)
    return PathPoint(
        *(v.expand(t.shape[0], dim) for v in (p.alpha, p.sigma, p.d_alpha, p.d_sigma))
    )


def _select(mask: Tensor, a: PathPoint, b: PathPoint) -> PathPoint:
    """Elementwise ``a`` where ``mask`` else ``b``."""
    return PathPoint(
        *(
            torch.where(mask, u, v)
            for u, v in zip(
                (a.alpha, a.sigma, a.d_alpha, a.d_sigma),
                (b.alpha, b.sigma, b.d_alpha, b.d_sigma),
                strict=True,
            )
        )
    )


class JointDenoiser(MaskedJointModel):
    r"""Network-based masked denoiser (the Simformer's score model).

    The network ``net(values, condition_mask, c_noise, attention_mask)`` acts on
    tokens: ``values`` ``(B, D)`` holds ``c_in(t) z_t`` for latent variables and
    the clean standardised value for observed ones; ``c_noise`` ``(B, D)`` is the
    per-variable time input ``log(sigma/alpha) / 4`` (``t_max`` for missing
    variables). Its output ``F`` gives ``x_hat = c_skip z + c_out F`` on latent
    variables (see :mod:`sbi_diffusion.path.parameterizations`).

    Args:
        net: the token network (e.g.
            :class:`~sbi_diffusion.nets.transformer.TokenTransformer`).
        schedule: the Gaussian path.
        parameterization: what the network predicts.
        theta_shape, x_shape: event shapes.
        weighting: loss weighting (see :mod:`sbi_diffusion.path.weightings`).
        shift, scale: ``(D,)`` z-scoring of ``(theta, x)``.
        mask_distribution: training distribution of condition masks; the default
            :class:`MaskDistribution` if None.
        edges: ``(D, D)`` dependency structure restricting attention, or None.
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: Schedule,
        parameterization: Parameterization,
        theta_shape: torch.Size | Sequence[int],
        x_shape: torch.Size | Sequence[int],
        weighting: str = "edm",
        shift: Tensor | None = None,
        scale: Tensor | None = None,
        mask_distribution: MaskDistribution | None = None,
        edges: Tensor | None = None,
    ):
        super().__init__(schedule, theta_shape, x_shape, shift, scale)
        self.net = net
        self.parameterization = parameterization
        self.weighting = check_weighting(weighting)
        self.mask_distribution = (
            MaskDistribution(self.theta_dim, self.x_dim)
            if mask_distribution is None
            else mask_distribution
        )
        if self.mask_distribution.dim != self.dim:
            raise ValueError(
                f"The mask distribution covers {self.mask_distribution.dim} "
                f"variables, the model {self.dim}."
            )
        edges = check_edge_mask(edges, self.dim)
        self.register_buffer("edges", edges)

    def _network_output(
        self, z: Tensor, t: Tensor, condition_mask: Tensor, missing: Tensor | None
    ) -> tuple[Tensor, PathPoint]:
        """Network output ``F`` and the per-variable path point ``(B, D)``."""
        batch = z.shape[0]
        p = _variable_path_point(self.schedule, t.reshape(batch, 1), self.dim)
        if missing is not None and bool(missing.any()):
            t_max = torch.full_like(t.reshape(batch, 1), float(self.schedule.t_max))
            p_max = _variable_path_point(self.schedule, t_max, self.dim)
            p = _select(missing, p_max, p)
            z = torch.where(missing, torch.zeros_like(z), z)
        c_in = self.parameterization.input_scale(p)
        ratio = torch.clamp(p.sigma / p.alpha, min=1e-10, max=1e10)
        c_noise = 0.25 * torch.log(ratio)
        values = torch.where(condition_mask, z, c_in * z)
        attention = attention_mask(self.edges, condition_mask)
        return self.net(values, condition_mask, c_noise, attention), p

    def denoise_masked(
        self,
        z: Tensor,
        t: Tensor,
        condition_mask: Tensor,
        missing: Tensor | None = None,
    ) -> Tensor:
        t = as_time(t, z)
        if missing is not None:
            condition_mask = condition_mask & ~missing
        out, p = self._network_output(z, t, condition_mask, missing)
        x_hat = self.parameterization.denoise(out, z, p)
        keep = condition_mask if missing is None else condition_mask | missing
        return torch.where(keep, z, x_hat)

    def loss(
        self,
        input: Tensor,
        condition: Tensor,
        draws: LossDraws | None = None,
        condition_mask: Tensor | None = None,
    ) -> Tensor:
        r"""Per-sample masked denoising loss for raw ``theta`` and ``x``.

        .. math::
            \ell = \frac{w(t)}{w_{nat}(t)} \sum_{i:\, m_i = 0,\, v_i \neq NaN}
            \big(F_i - (v_i - c_{skip} z_i) / c_{out}\big)^2

        (Gloeckler et al. 2024, Eq. 6, with the weighting of
        :mod:`sbi_diffusion.path.weightings`). NaN entries of ``theta`` or ``x`` are
        missing: latent, at ``t_max`` with a pure-noise value, and not in the loss.

        When ``draws.times`` is given (a fixed-time evaluation such as the
        trainer's validation loss) and ``condition_mask`` is not, the masks and
        any noise not passed come from a generator with a fixed seed, so repeated
        calls on the same data return the same value.

        Args:
            input: ``theta`` ``(B, *theta_shape)``.
            condition: ``x`` ``(B, *x_shape)``.
            draws: fixed draws (:class:`~sbi_diffusion.model.loss_draws.
                LossDraws`), each drawn where None: ``times`` ``(B,)``;
                ``noise`` ``(B, D)``, or ``(B, theta_dim)`` for the ``theta``
                columns only; ``drop_condition`` ``(B,)``, rows that use the
                joint mask (everything latent), the unconditional model.
            condition_mask: ``(D,)`` or ``(B, D)`` masks; drawn from the mask
                distribution if None.

        Returns:
            Loss per sample, shape ``(B,)``.
        """
        draws = LossDraws() if draws is None else draws
        times, noise, drop_condition = draws.times, draws.noise, draws.drop_condition
        batch = input.shape[0]
        device = input.device
        values = self.to_z(self.join(input, condition))
        missing = torch.isnan(values)
        generator = None
        if times is not None and condition_mask is None:
            generator = torch.Generator(device="cpu").manual_seed(0)
        if condition_mask is None:
            condition_mask = self.mask_distribution.sample(batch, generator, device)
        else:
            condition_mask = check_condition_mask(condition_mask, self.dim, batch)
            condition_mask = condition_mask.to(device)
        if drop_condition is not None:
            condition_mask = condition_mask & ~drop_condition.to(device)[:, None]
        condition_mask = condition_mask & ~missing
        if times is None:
            times = self.schedule.sample_training_times(batch, device=device)
        noise = self._full_noise(noise, batch, generator, device)
        clean = torch.where(missing, torch.zeros_like(values), values)
        p = _path_point(self.schedule, times.reshape(batch, 1))
        noisy = p.alpha * clean + p.sigma * noise
        pure_noise = self.schedule.prior_std() * noise
        z = torch.where(condition_mask, clean, torch.where(missing, pure_noise, noisy))
        out, _ = self._network_output(z, times, condition_mask, missing)
        target = self.parameterization.target(clean, z, p)
        in_loss = ~(condition_mask | missing)
        weight = loss_weight(self.weighting, self.parameterization, p)[:, 0]
        return weight * (((out - target) ** 2) * in_loss).sum(dim=-1)

    def _full_noise(
        self,
        noise: Tensor | None,
        batch: int,
        generator: torch.Generator | None,
        device: torch.device,
    ) -> Tensor:
        def draw(cols: int) -> Tensor:
            return torch.randn(batch, cols, generator=generator).to(device)

        if noise is None:
            return draw(self.dim)
        noise = noise.reshape(batch, -1)
        if noise.shape[1] == self.dim:
            return noise
        if noise.shape[1] == self.theta_dim:
            return torch.cat([noise, draw(self.x_dim)], dim=1)
        raise ValueError(
            f"noise has {noise.shape[1]} columns per sample; pass {self.dim} (theta "
            f"and x) or {self.theta_dim} (theta only)."
        )


class GaussianJointDenoiser(MaskedJointModel):
    r"""Exact masked denoiser of a Gaussian joint ``v ~ N(mu, Sigma)``.

    For observed indices ``O`` and latent ``L`` the conditional is Gaussian,

    .. math::
        \mu_c = \mu_L + \Sigma_{LO}\Sigma_{OO}^{-1}(v_O - \mu_O), \qquad
        \Sigma_c = \Sigma_{LL} - \Sigma_{LO}\Sigma_{OO}^{-1}\Sigma_{OL},

    and its denoiser is that of :class:`~sbi_diffusion.path.gaussian.GaussianDenoiser`,
    ``x_hat = mu_c + alpha Sigma_c (alpha^2 Sigma_c + sigma^2 I)^{-1}
    (z_L - alpha mu_c)``. Missing variables are simply left out of ``O``
    (Gaussian marginalisation). Works in standardised space: ``mean`` and ``cov``
    are given in raw space and mapped with ``shift`` and ``scale``.

    Args:
        schedule: the Gaussian path.
        mean: ``(D,)`` mean of ``(theta, x)``.
        cov: ``(D, D)`` covariance.
        theta_shape, x_shape: event shapes.
        shift, scale: z-scoring (0 and 1 if None).
    """

    def __init__(
        self,
        schedule: Schedule,
        mean: Tensor,
        cov: Tensor,
        theta_shape: torch.Size | Sequence[int],
        x_shape: torch.Size | Sequence[int],
        shift: Tensor | None = None,
        scale: Tensor | None = None,
    ):
        super().__init__(schedule, theta_shape, x_shape, shift, scale)
        f64 = torch.float64
        mean = torch.as_tensor(mean, dtype=f64).reshape(self.dim)
        cov = torch.as_tensor(cov, dtype=f64)
        if tuple(cov.shape) != (self.dim, self.dim):
            raise ValueError(
                f"cov has shape {tuple(cov.shape)}; pass ({self.dim}, {self.dim})."
            )
        shift64, scale64 = self.shift.to(f64), self.scale.to(f64)
        self.register_buffer("mean", (mean - shift64) / scale64)
        self.register_buffer("cov", cov / torch.outer(scale64, scale64))

    def denoise_masked(
        self,
        z: Tensor,
        t: Tensor,
        condition_mask: Tensor,
        missing: Tensor | None = None,
    ) -> Tensor:
        t = as_time(t, z).to(torch.float64)
        out = z.clone()
        observed_mask = condition_mask
        if missing is not None:
            observed_mask = condition_mask & ~missing
        keys = torch.cat([condition_mask, observed_mask], dim=1)
        patterns, inverse = torch.unique(keys, dim=0, return_inverse=True)
        for k in range(patterns.shape[0]):
            rows = (inverse == k).nonzero()[:, 0]
            cond = patterns[k, : self.dim]
            obs = patterns[k, self.dim :]
            latent = (~cond).nonzero()[:, 0]
            if latent.numel() == 0:
                continue
            out[rows[:, None], latent[None, :]] = self._denoise_block(
                z[rows].double(), t[rows], latent, obs.nonzero()[:, 0]
            ).to(z.dtype)
        return out

    def _denoise_block(
        self, z: Tensor, t: Tensor, latent: Tensor, observed: Tensor
    ) -> Tensor:
        mean, cov = self.mean, self.cov
        mean_c = mean[latent].expand(z.shape[0], -1)
        cov_c = cov[latent][:, latent]
        if observed.numel():
            s_lo = cov[latent][:, observed]
            gain = s_lo @ torch.linalg.inv(cov[observed][:, observed])
            mean_c = mean_c + (z[:, observed] - mean[observed]) @ gain.T
            cov_c = cov_c - gain @ s_lo.T
        times, index = torch.unique(t, return_inverse=True)  # samplers share t
        alpha = self.schedule.alpha(times)[:, None, None]
        sigma = self.schedule.sigma(times)[:, None, None]
        eye = torch.eye(latent.numel(), dtype=torch.float64, device=z.device)
        kalman = alpha * cov_c @ torch.linalg.inv(alpha**2 * cov_c + sigma**2 * eye)
        resid = z[:, latent] - alpha[index, :, 0] * mean_c
        return mean_c + (kalman[index] @ resid[:, :, None])[:, :, 0]
