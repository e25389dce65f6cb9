r"""Masked joint denoisers: one diffusion model for every conditional.

Following the Simformer (Gloeckler et al. 2024, "All-in-one simulation-based
inference"), parameters ``theta`` and data ``x`` are stacked into one vector
``v = (theta, x)`` of ``D`` variables, and a *condition mask*
``m in {0, 1}^D`` says which variables are observed (``m_i = 1``: held fixed
at their clean value) and which are latent (``m_i = 0``: they diffuse along the
Gaussian path ``z_t = alpha(t) v + sigma(t) eps``). The network sees every
variable as a token and returns the denoised estimate of the latent block,

.. math::
    \hat v_{latent}(z_t, t \mid v_{obs})
    = c_{skip}(t) z_t + c_{out}(t) F\big(c_{in}(t) z_t,\, v_{obs},\, m,\,
    c_{noise}(t)\big),

so that one network gives ``E[v_latent | z_t, v_obs]`` for *any* split:
the posterior ``p(theta | x)`` (``m = (0, 1)``), the likelihood
``p(x | theta)`` (``m = (1, 0)``), the joint (``m = 0``), and conditionals such
as ``p(theta_2 | x, theta_1)``. Training draws ``m`` from a mixture
(:class:`MaskDistribution`) and minimises the denoising loss on latent entries
only (Simformer, Eq. 6).

Missing values (NaN) are latent variables whose clean value is unknown: in
training they enter the network at the largest noise level, ``t_max``, with a
pure-noise value (a token that carries no information about ``v``) and are
excluded from the loss; at inference an observed entry given as NaN is treated
the same way, which marginalises it out.

An optional *edge mask* (the dependency structure between variables) restricts
attention (Simformer, Sec. 3.3): variable ``i`` attends to ``j`` if either
depends directly on the other; observed variables do not attend to latent ones.

:class:`GaussianJointDenoiser` is the exact masked denoiser of a Gaussian joint
distribution, which tests every code path that uses a masked denoiser
independently of training.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from sbi_diffusion.model import ConditionedDenoiser
from sbi_diffusion.path.parameterizations import Parameterization, PathPoint
from sbi_diffusion.path.schedules import Schedule
from sbi_diffusion.path.vector_field import as_time
from sbi_diffusion.path.weightings import check_weighting, loss_weight

__all__ = [
    "MASK_KINDS",
    "MaskDistribution",
    "check_condition_mask",
    "check_conditional_mask",
    "check_edge_mask",
    "join_flat",
    "attention_mask",
    "MaskedJointModel",
    "JointDenoiser",
    "GaussianJointDenoiser",
    "JointConditionalDenoiser",
    "ConditionalView",
]

MASK_KINDS = ("joint", "posterior", "likelihood", "random", "custom")
"""Kinds of condition masks :class:`MaskDistribution` mixes."""


def check_condition_mask(
    mask: Tensor | Sequence[bool], dim: int, batch: int | None = None
) -> Tensor:
    """Validate a condition mask and return it as a boolean tensor.

    Args:
        mask: ``(dim,)`` or ``(batch, dim)`` booleans (or 0/1 numbers); True marks
            an observed (conditioned-on) variable, False a latent one.
        dim: number of variables ``D = dim(theta) + dim(x)``.
        batch: if given, a ``(dim,)`` mask is expanded to ``(batch, dim)`` and a
            two-dimensional mask must have ``batch`` rows.

    Raises:
        ValueError: for a wrong shape or values other than 0 and 1.
    """
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        if not torch.all((mask == 0) | (mask == 1)):
            raise ValueError(
                "A condition mask holds booleans (True: observed, False: latent); "
                "got values other than 0 and 1."
            )
        mask = mask.bool()
    if mask.dim() not in (1, 2) or mask.shape[-1] != dim:
        raise ValueError(
            f"The condition mask has shape {tuple(mask.shape)}, but the model has "
            f"{dim} variables (theta then x, flattened). Pass a boolean mask of "
            f"shape ({dim},) or (batch, {dim})."
        )
    if batch is not None:
        if mask.dim() == 1:
            mask = mask.expand(batch, dim)
        elif mask.shape[0] not in (1, batch):
            raise ValueError(
                f"The condition mask has {mask.shape[0]} rows for a batch of {batch}; "
                f"pass one mask of shape ({dim},) or one row per sample."
            )
        else:
            mask = mask.expand(batch, dim)
    return mask


def check_conditional_mask(mask: Tensor | Sequence[bool], dim: int) -> Tensor:
    """Validate the condition mask of one conditional ``p(v_L | v_O)``: a single
    ``(dim,)`` mask (see :func:`check_condition_mask`) with at least one latent
    variable.

    Raises:
        ValueError: for a wrong shape, a batch of masks, or a mask that observes
            every variable.
    """
    mask = check_condition_mask(mask, dim)
    if mask.dim() != 1:
        raise ValueError(
            f"A conditional needs one mask of shape ({dim},), got {tuple(mask.shape)}."
        )
    if bool(mask.all()):
        raise ValueError(
            "The condition mask observes every variable, so the conditional has "
            "no free variable to sample. Set at least one entry to False."
        )
    return mask


def join_flat(theta: Tensor, x: Tensor) -> Tensor:
    """Flatten ``theta`` ``(B, *theta_shape)`` and ``x`` ``(B, *x_shape)`` and
    stack them into joint vectors ``(B, D)``, theta first."""
    return torch.cat(
        [theta.reshape(theta.shape[0], -1), x.reshape(x.shape[0], -1)], dim=1
    )


def check_edge_mask(edges: Tensor | None, dim: int) -> Tensor | None:
    """Validate a dependency structure ``(dim, dim)``; ``edges[i, j]`` True means
    variable ``i`` depends directly on variable ``j`` (either direction suffices).

    Raises:
        ValueError: for a wrong shape or non-boolean values.
    """
    if edges is None:
        return None
    edges = torch.as_tensor(edges)
    if edges.dtype != torch.bool:
        if not torch.all((edges == 0) | (edges == 1)):
            raise ValueError("The edge mask must hold booleans (or 0/1 values).")
        edges = edges.bool()
    if tuple(edges.shape) != (dim, dim):
        raise ValueError(
            f"The edge mask has shape {tuple(edges.shape)}, but the model has {dim} "
            f"variables. Pass a boolean ({dim}, {dim}) matrix whose entry [i, j] "
            "says whether variable i depends directly on variable j (theta first, "
            "then x), or None for full attention."
        )
    return edges


def attention_mask(edges: Tensor | None, condition_mask: Tensor) -> Tensor | None:
    r"""Attention mask from a dependency structure and a condition mask.

    .. math::
        A_{ij} = \big(E_{ij} \lor E_{ji} \lor [i = j]\big)
        \land \lnot\big(m_i \land \lnot m_j\big),

    i.e. the undirected dependency graph with self-loops, where observed
    variables (``m_i = 1``) do not attend to latent ones: their value is fixed,
    so they need no information about the latent variables (Gloeckler et al.
    2024, Sec. 3.3).

    Args:
        edges: ``(D, D)`` dependency structure, or None (full attention).
        condition_mask: ``(batch, D)`` booleans, True for observed.

    Returns:
        ``(batch, D, D)`` booleans (True: may attend), or None without edges.
    """
    if edges is None:
        return None
    dim = edges.shape[0]
    eye = torch.eye(dim, dtype=torch.bool, device=edges.device)
    graph = (edges | edges.T | eye)[None]
    observed = condition_mask[:, :, None]
    latent_key = ~condition_mask[:, None, :]
    return graph & ~(observed & latent_key)


class MaskDistribution:
    r"""A mixture distribution over condition masks for training.

    Each row draws one kind with probability proportional to ``weights``:

    - ``joint``: everything latent, the joint ``p(theta, x)``;
    - ``posterior``: ``theta`` latent, ``x`` observed, ``p(theta | x)``;
    - ``likelihood``: ``theta`` observed, ``x`` latent, ``p(x | theta)``;
    - ``random``: each variable observed independently with probability ``p``,
      ``p`` drawn uniformly from ``random_observed_probs`` (the Simformer uses
      Bernoulli masks with ``p = 0.3`` and ``0.7``); at least one variable stays
      latent;
    - ``custom``: one of the user's ``custom_masks``, uniformly.

    Args:
        theta_dim: number of parameters.
        x_dim: number of data dimensions.
        weights: unnormalised mixture weights by kind; defaults to
            ``{"joint": 1, "posterior": 1, "likelihood": 1, "random": 2}``.
        random_observed_probs: observation probabilities of random masks.
        custom_masks: ``(k, D)`` masks for the ``custom`` kind.

    Raises:
        ValueError: for unknown kinds, negative or all-zero weights, or
            probabilities outside ``[0, 1)``.
    """

    default_weights: Mapping[str, float] = {
        "joint": 1.0,
        "posterior": 1.0,
        "likelihood": 1.0,
        "random": 2.0,
    }

    def __init__(
        self,
        theta_dim: int,
        x_dim: int,
        weights: Mapping[str, float] | None = None,
        random_observed_probs: Sequence[float] = (0.3, 0.7),
        custom_masks: Tensor | None = None,
    ):
        self.theta_dim, self.x_dim = int(theta_dim), int(x_dim)
        self.dim = self.theta_dim + self.x_dim
        weights = dict(self.default_weights if weights is None else weights)
        unknown = set(weights) - set(MASK_KINDS)
        if unknown:
            raise ValueError(
                f"Unknown mask kinds {sorted(unknown)}; pass weights for kinds among "
                f"{list(MASK_KINDS)}."
            )
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(
                f"Mask weights must be non-negative and not all zero, got {weights}."
            )
        if weights.get("custom", 0) > 0 and custom_masks is None:
            raise ValueError(
                "The 'custom' mask kind has a weight but no custom_masks were given; "
                f"pass custom_masks of shape (k, {self.dim})."
            )
        probs = [float(p) for p in random_observed_probs]
        if not probs or any(not 0.0 <= p < 1.0 for p in probs):
            raise ValueError(
                "random_observed_probs must be a non-empty list of probabilities in "
                f"[0, 1), got {random_observed_probs}."
            )
        self.kinds = [k for k in MASK_KINDS if weights.get(k, 0) > 0]
        self.weights = torch.tensor([float(weights[k]) for k in self.kinds])
        self.random_observed_probs = torch.tensor(probs)
        self.custom_masks = (
            None
            if custom_masks is None
            else check_condition_mask(custom_masks, self.dim).reshape(-1, self.dim)
        )
        if self.custom_masks is not None and self.custom_masks.all(dim=1).any():
            raise ValueError(
                "A custom mask observes every variable; each mask needs at least "
                "one latent (False) entry."
            )

    def fixed_mask(self, kind: str) -> Tensor:
        """The ``(D,)`` mask of ``joint``, ``posterior`` or ``likelihood``."""
        theta_part = kind == "likelihood"
        x_part = kind == "posterior"
        return torch.cat(
            [
                torch.full((self.theta_dim,), theta_part, dtype=torch.bool),
                torch.full((self.x_dim,), x_part, dtype=torch.bool),
            ]
        )

    def sample(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Draw ``batch`` masks, shape ``(batch, D)`` (True: observed)."""
        kind = torch.multinomial(
            self.weights, batch, replacement=True, generator=generator
        )
        masks = torch.zeros(batch, self.dim, dtype=torch.bool)
        for index, name in enumerate(self.kinds):
            rows = kind == index
            num = int(rows.sum())
            if num == 0:
                continue
            if name == "random":
                pick = torch.randint(
                    len(self.random_observed_probs), (num,), generator=generator
                )
                p = self.random_observed_probs[pick][:, None]
                drawn = torch.rand(num, self.dim, generator=generator) < p
                full = drawn.all(dim=1)
                if full.any():
                    free = torch.randint(
                        self.dim, (int(full.sum()),), generator=generator
                    )
                    drawn[full.nonzero()[:, 0], free] = False
                masks[rows] = drawn
            elif name == "custom":
                pick = torch.randint(
                    self.custom_masks.shape[0], (num,), generator=generator
                )
                masks[rows] = self.custom_masks[pick]
            else:
                masks[rows] = self.fixed_mask(name)
        return masks.to(device) if device is not None else masks

    def __repr__(self) -> str:
        weights = dict(zip(self.kinds, self.weights.tolist(), strict=True))
        return f"MaskDistribution(weights={weights})"


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
        times: Tensor | None = None,
        noise: Tensor | None = None,
        drop_condition: Tensor | None = None,
        condition_mask: Tensor | None = None,
        **kwargs,
    ) -> Tensor:
        r"""Per-sample masked denoising loss for raw ``theta`` and ``x``.

        .. math::
            \ell = \frac{w(t)}{w_{nat}(t)} \sum_{i:\, m_i = 0,\, v_i \neq NaN}
            \big(F_i - (v_i - c_{skip} z_i) / c_{out}\big)^2

        (Gloeckler et al. 2024, Eq. 6, with the weighting of
        :mod:`sbi_diffusion.path.weightings`). NaN entries of ``theta`` or ``x`` are
        missing: latent, at ``t_max`` with a pure-noise value, and not in the loss.

        When ``times`` is given (a fixed-time evaluation such as the trainer's
        validation loss) and ``condition_mask`` is not, the masks and any noise
        not passed come from a generator with a fixed seed, so repeated calls on
        the same data return the same value.

        Args:
            input: ``theta`` ``(B, *theta_shape)``.
            condition: ``x`` ``(B, *x_shape)``.
            times: training times ``(B,)``; drawn from the schedule if None.
            noise: ``eps`` ``(B, D)``, or ``(B, theta_dim)`` for the ``theta``
                columns only; standard normal where not given.
            drop_condition: ``(B,)`` booleans; these rows use the joint mask
                (everything latent), the unconditional model.
            condition_mask: ``(D,)`` or ``(B, D)`` masks; drawn from the mask
                distribution if None.

        Returns:
            Loss per sample, shape ``(B,)``.
        """
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


class JointConditionalDenoiser(nn.Module):
    r"""``DenoiseFn`` of one conditional ``p(v_L | v_O)`` over its latent block.

    Maps ``z`` ``(B, |L|)`` and ``t`` to ``x_hat_L`` by placing ``z`` at the
    latent positions of the joint vector, the observed values at the others, and
    calling :meth:`MaskedJointModel.denoise_masked`; samplers, densities and
    score transforms use it like any other denoiser.

    Args:
        model: the masked joint model.
        condition_mask: ``(D,)``, True where observed.
        observed: standardised joint values ``(1, D)`` or ``(B, D)`` matching the
            batch of ``z``; NaN at an observed position marginalises it out.

    Raises:
        ValueError: for a mask of the wrong shape, a mask with no latent variable,
            or observed values of the wrong shape.
    """

    def __init__(
        self,
        model: MaskedJointModel,
        condition_mask: Tensor | Sequence[bool],
        observed: Tensor,
    ):
        super().__init__()
        mask = check_conditional_mask(condition_mask, model.dim)
        mask = mask.to(model.shift.device)
        observed = torch.as_tensor(observed, dtype=torch.float32)
        if observed.dim() == 1:
            observed = observed[None]
        if observed.dim() != 2 or observed.shape[1] != model.dim:
            raise ValueError(
                f"observed values have shape {tuple(observed.shape)}; pass "
                f"(1, {model.dim}) or (batch, {model.dim}) standardised joint values."
            )
        self.model = model
        self.schedule = model.schedule
        self.condition_mask = mask
        self.latent_index = (~mask).nonzero()[:, 0]
        self.observed_index = mask.nonzero()[:, 0]
        order = torch.cat([self.latent_index, self.observed_index])
        self.inverse_order = torch.argsort(order)
        observed = observed.to(mask.device)
        self.missing = torch.isnan(observed) & mask
        self.observed_values = torch.nan_to_num(observed[:, self.observed_index])
        self.has_missing = bool(self.missing.any())

    @property
    def num_latent(self) -> int:
        """Number of latent (sampled) variables."""
        return int(self.latent_index.numel())

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        """``x_hat`` of the latent block for ``z`` ``(B, |L|)``."""
        batch = z.shape[0]
        t = as_time(t, z)
        observed = self.observed_values.to(z.dtype).expand(batch, -1)
        full = torch.cat([z, observed], dim=1)[:, self.inverse_order]
        mask = self.condition_mask.expand(batch, -1)
        missing = self.missing.expand(batch, -1) if self.has_missing else None
        x_hat = self.model.denoise_masked(full, t, mask, missing)
        return x_hat[:, self.latent_index]


class ConditionalView(nn.Module):
    r"""One conditional of a joint model seen as a conditional denoiser.

    Presents ``p(v_L | v_O)`` with the interface of the core
    :class:`~sbi_diffusion.model.Denoiser` (``schedule``, ``theta_dim``,
    ``input_shape``, ``condition_shape``, ``to_z``/``from_z``/``log_abs_det`` and
    the z-scoring ``_theta_shift``/``_theta_scale`` of the latent block,
    ``embed_condition``, ``null_condition``, ``denoise_embedded``, ``bind``), so
    the core posterior, its samplers and the score transforms of
    :mod:`sbi_diffusion.guidance` apply to any conditional. The "embedding" of
    the observed values is the standardised joint row ``(B, D)``; its
    unconditional counterpart (``null_condition``) has every observed value
    missing (NaN), i.e. the marginal ``p(v_L)`` of the latent block, which plays
    the role of the prior in classifier-free guidance.

    Args:
        model: the masked joint model.
        condition_mask: ``(D,)``, True where observed; at least one False.
        input_shape: event shape of the latent block (``(num_latent,)`` if None).
        condition_shape: event shape of the observed values (``(num_observed,)``
            if None).
    """

    def __init__(
        self,
        model: MaskedJointModel,
        condition_mask: Tensor | Sequence[bool],
        input_shape: torch.Size | Sequence[int] | None = None,
        condition_shape: torch.Size | Sequence[int] | None = None,
    ):
        super().__init__()
        mask = check_condition_mask(condition_mask, model.dim)
        if mask.dim() != 1 or bool(mask.all()):
            raise ValueError(
                f"A conditional needs one mask of shape ({model.dim},) with at least "
                f"one latent (False) entry, got {mask.tolist()}."
            )
        self.model = model
        self.schedule = model.schedule
        self.register_buffer("condition_mask", mask.clone(), persistent=False)
        self.register_buffer("latent_index", (~mask).nonzero()[:, 0], persistent=False)
        self.register_buffer("observed_index", mask.nonzero()[:, 0], persistent=False)
        self.theta_dim = int(self.latent_index.numel())
        num_observed = int(self.observed_index.numel())
        self.input_shape = torch.Size(
            (self.theta_dim,) if input_shape is None else input_shape
        )
        self.condition_shape = torch.Size(
            (num_observed,) if condition_shape is None else condition_shape
        )

    @property
    def _theta_shift(self) -> Tensor:
        return self.model.shift[self.latent_index].reshape(1, -1)

    @property
    def _theta_scale(self) -> Tensor:
        return self.model.scale[self.latent_index].reshape(1, -1)

    def to_z(self, theta: Tensor) -> Tensor:
        """Standardise latent values ``(*batch, *input_shape)``."""
        batch = theta.shape[: theta.dim() - len(self.input_shape)]
        flat = theta.reshape(*batch, self.theta_dim)
        return ((flat - self._theta_shift[0]) / self._theta_scale[0]).reshape(
            theta.shape
        )

    def from_z(self, z: Tensor) -> Tensor:
        """Latent values ``(B, num_latent)`` from standardised ``z``."""
        return self._theta_shift + self._theta_scale * z.reshape(z.shape[0], -1)

    def log_abs_det(self) -> Tensor:
        """``sum log scale`` of the latent block."""
        return torch.log(self._theta_scale).sum()

    def embed_condition(self, values: Tensor) -> Tensor:
        """Standardised joint rows ``(B, D)`` from observed values
        ``(B, *condition_shape)`` (NaN: missing)."""
        flat = values.reshape(values.shape[0], -1).to(self.model.shift)
        full = torch.zeros(flat.shape[0], self.model.dim, device=flat.device)
        full[:, self.observed_index] = flat
        return self.model.to_z(full)

    def null_condition(self, batch: int) -> Tensor:
        """Rows with every observed value missing: the latent block's marginal."""
        return torch.full(
            (batch, self.model.dim), math.nan, device=self.model.shift.device
        )

    def denoise_embedded(self, z: Tensor, embedding: Tensor, t: Tensor) -> Tensor:
        """``x_hat`` of the latent block given standardised joint rows."""
        if embedding.shape[0] != z.shape[0]:
            embedding = embedding.expand(z.shape[0], -1)
        return JointConditionalDenoiser(self.model, self.condition_mask, embedding)(
            z, t
        )

    def bind(self, values: Tensor | None) -> ConditionedDenoiser:
        """A ``DenoiseFn`` with the observed values fixed (None: the marginal)."""
        if values is None:
            return ConditionedDenoiser(self, self.null_condition(1))
        return ConditionedDenoiser(self, self.embed_condition(values))
