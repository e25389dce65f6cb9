r"""Inverse kinematics of a planar robot arm, with reference samples of its
posterior and of four other conditionals.

The problem of Kruse et al. (2021), "Benchmarking invertible architectures on
inverse problems": an arm slides along a vertical rail and bends at three
joints. Its parameters are ``theta = (offset, a1, a2, a3)`` with the prior

.. math::
    \theta \sim \mathcal N\big(0, \operatorname{diag}(0.25^2, 0.5^2, 0.5^2,
    0.5^2)\big),

and segments of lengths ``l = (0.5, 0.5, 1.0)``. The angles are measured from
the horizontal, the direction perpendicular to the rail, and accumulate along
the arm: with ``phi_k = a_1 + ... + a_k``, the joints in the plane
``(horizontal, vertical)`` are

.. math::
    p_0 = (0, \text{offset}), \qquad
    p_k = p_{k-1} + l_k (\cos\phi_k, \sin\phi_k),

and the hand is ``p_3``. Following Kruse et al., the observation lists the
hand's *height* first and its *reach* (horizontal distance from the rail)
second,

.. math::
    x = \Big(\text{offset} + \sum_k l_k \sin\phi_k,\;
    \sum_k l_k \cos\phi_k\Big) + \varepsilon, \qquad
    \varepsilon \sim \mathcal N(0, 0.01^2 I_2),

where the small Gaussian noise makes the likelihood proper. The target is
``x_o = (0, 1.5)``: the hand at the height of the rail's origin, 1.5 from the
rail (the stretched arm reaches 2.0), so that the posterior over arm
configurations is a curved ridge with several modes.

Reference samples (:func:`reference_samples`) come from importance sampling
with a proposal that solves the tight constraints instead of hitting them by
chance. For a noisy reach ``r ~ N(x_reach, 0.01^2)`` (the likelihood, as a
proposal for the hand) and prior draws of ``a1, a2``, the last angle follows
from ``cos(phi_3) = (r - r_2) / l_3`` (``r_2`` the reach of the second joint;
one of the two signs of ``phi_3`` at random). By the change of variables
``|dr / da_3| = l_3 |sin phi_3|``, the likelihood cancels and the importance
weight is

.. math::
    w = \frac{2\, p(a_3)}{l_3 |\sin\phi_3|}.

The offset enters the height linearly, so it is integrated out exactly: a latent
offset contributes ``N(x_height; h, 0.25^2 + 0.01^2)`` to the weight (``h`` the
height of the hand without offset) and is then drawn from its Gaussian
conditional; a fixed offset contributes ``N(x_height; offset + h, 0.01^2)``.
Angles are wrapped to ``[-pi, pi)``; the prior mass outside (about ``3e-10``
per angle) is left out.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Independent, Normal

NAME = "inverse_kinematics"
"""The benchmark task name."""

SEGMENT_LENGTHS = (0.5, 0.5, 1.0)
"""Lengths of the arm's three segments, from the rail to the hand."""

PRIOR_STD = (0.25, 0.5, 0.5, 0.5)
"""Prior standard deviations of ``(offset, a1, a2, a3)`` (prior mean zero)."""

NOISE_STD = 0.01
"""Standard deviation of the Gaussian noise on each coordinate of ``x``."""

OBSERVATION = (0.0, 1.5)
"""The observed hand position ``x_o = (height, reach)``."""

NUM_OBSERVATIONS = 1
"""The task has one observation, :data:`OBSERVATION`, number 1."""

PARAMETER_LABELS = ("offset", "a1", "a2", "a3")
DATA_LABELS = ("height", "reach")


def prior() -> Independent:
    """The prior ``N(0, diag(0.25^2, 0.5^2, 0.5^2, 0.5^2))`` over
    ``(offset, a1, a2, a3)``."""
    return Independent(Normal(torch.zeros(4), torch.tensor(PRIOR_STD)), 1)


def joint_positions(theta: Tensor) -> Tensor:
    """Positions of the rail mount, the two joints and the hand.

    Args:
        theta: ``(n, 4)`` rows of ``(offset, a1, a2, a3)``.

    Returns:
        ``(n, 4, 2)``: ``p_0, ..., p_3`` as ``(horizontal, vertical)``
        coordinates, for drawing the arm.
    """
    phi = torch.cumsum(theta[:, 1:], dim=1)
    lengths = theta.new_tensor(SEGMENT_LENGTHS)
    steps = lengths[:, None] * torch.stack([torch.cos(phi), torch.sin(phi)], dim=-1)
    base = torch.stack([torch.zeros_like(theta[:, 0]), theta[:, 0]], dim=-1)[:, None]
    return torch.cat([base, base + torch.cumsum(steps, dim=1)], dim=1)


def forward_kinematics(theta: Tensor) -> Tensor:
    """The hand position without noise, ``(height, reach)``.

    Args:
        theta: ``(n, 4)`` rows of ``(offset, a1, a2, a3)``.

    Returns:
        ``(n, 2)``: the hand's height (offset plus ``sum_k l_k sin(phi_k)``)
        and reach (``sum_k l_k cos(phi_k)``).
    """
    hand = joint_positions(theta)[:, -1]
    return hand.flip(-1)


def simulator(theta: Tensor) -> Tensor:
    """The hand position with ``N(0, 0.01^2)`` noise on each coordinate.

    Args:
        theta: ``(n, 4)`` rows of ``(offset, a1, a2, a3)``.

    Returns:
        ``(n, 2)`` rows of ``(height, reach)``.
    """
    hand = forward_kinematics(theta)
    return hand + NOISE_STD * torch.randn_like(hand)


def elbow_up(theta: Tensor) -> Tensor:
    """The constraint "elbow up", ``sin(a2) >= 0``, as ``c(theta) = -sin(a2) <= 0``
    (the form :class:`~sbi_diffusion.guidance.ConstraintGuidance` takes)."""
    return -torch.sin(theta[:, 2])


@dataclass(frozen=True)
class Conditional:
    """One question asked of the arm: which data are observed, whether the
    offset is fixed, whether the elbow is constrained up.

    Attributes:
        name: Short name.
        observe_height: Whether the hand's height is observed.
        observe_reach: Whether the hand's reach is observed.
        fixed_offset: The offset's known value, or None for a latent offset.
        elbow_up: Restrict to ``sin(a2) >= 0``.
        angles_only: Whether the samples are ``(a1, a2, a3)`` (the offset is
            fixed, or marginalised out) instead of all four parameters.
    """

    name: str
    observe_height: bool = True
    observe_reach: bool = True
    fixed_offset: float | None = None
    elbow_up: bool = False
    angles_only: bool = False


CONDITIONALS: dict[str, Conditional] = {
    c.name: c
    for c in (
        Conditional("posterior"),
        Conditional("elbow_up", elbow_up=True),
        Conditional("height_only", observe_reach=False),
        Conditional("reach_only", observe_height=False),
        Conditional("offset_fixed", fixed_offset=0.0, angles_only=True),
        Conditional("angles", angles_only=True),
    )
}
"""The conditionals given :data:`OBSERVATION`: the posterior ``p(theta | x_o)``;
it restricted to ``sin(a2) >= 0``; the posteriors given only the height or only
the reach; ``p(a1, a2, a3 | offset = 0, x_o)``; and the posterior's angle
marginal ``p(a1, a2, a3 | x_o)``."""


@dataclass(frozen=True)
class ReferenceSamples:
    """Samples of a conditional with the importance sampler's diagnostics.

    Attributes:
        samples: ``(num_samples, 4)`` parameters, or ``(num_samples, 3)``
            angles for an ``angles_only`` conditional.
        effective_sample_size: Kish's ``(sum w)^2 / sum w^2`` of the weights.
        num_proposals: Proposals drawn.
    """

    samples: Tensor
    effective_sample_size: float
    num_proposals: int


def _normal_log_prob(value: Tensor, std: float) -> Tensor:
    return -0.5 * (value / std) ** 2 - math.log(std * math.sqrt(2 * math.pi))


def _wrap(angle: Tensor) -> Tensor:
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


def _noisy(value: float, num: int, generator: torch.Generator) -> Tensor:
    """``num`` draws of ``N(value, NOISE_STD^2)``: the likelihood as a proposal."""
    noise = torch.randn(num, generator=generator, dtype=torch.float64)
    return value + NOISE_STD * noise


def _solve_last_joint(
    angles: Tensor, reach: Tensor, generator: torch.Generator
) -> Tensor:
    """Set ``a3`` so that the hand's reach is ``reach``; returns the log weight
    ``log(2 p(a3) / (l3 |sin phi_3|))``, ``-inf`` where it cannot be reached."""
    l1, l2, l3 = SEGMENT_LENGTHS
    a1, a2 = angles[:, 0], angles[:, 1]
    cos_phi = (reach - l1 * torch.cos(a1) - l2 * torch.cos(a1 + a2)) / l3
    sign = torch.randint(0, 2, cos_phi.shape, generator=generator) * 2 - 1
    phi = sign * torch.arccos(cos_phi.clamp(-1, 1))
    angles[:, 2] = _wrap(phi - a1 - a2)
    log_w = math.log(2) + _normal_log_prob(angles[:, 2], PRIOR_STD[3])
    log_w = log_w - torch.log(l3 * torch.sin(phi).abs())
    return torch.where(cos_phi.abs() < 1, log_w, -math.inf)


def _solve_last_two_joints(
    angles: Tensor, height: Tensor, reach: Tensor, generator: torch.Generator
) -> Tensor:
    """Set ``a2, a3`` so that the hand is at ``(height, reach)`` (the offset is
    in ``height``: it is the height relative to the rail mount); returns the log
    weight ``log(2 p(a2) p(a3) / (l2 l3 |sin a3|))`` (``l2 l3 |sin a3|`` is the
    Jacobian of the two-joint arm), ``-inf`` where it cannot be reached."""
    l1, l2, l3 = SEGMENT_LENGTHS
    a1 = angles[:, 0]
    dx, dy = reach - l1 * torch.cos(a1), height - l1 * torch.sin(a1)
    cos_a3 = (dx**2 + dy**2 - l2**2 - l3**2) / (2 * l2 * l3)
    sign = torch.randint(0, 2, cos_a3.shape, generator=generator) * 2 - 1
    a3 = sign * torch.arccos(cos_a3.clamp(-1, 1))
    phi_2 = torch.atan2(dy, dx) - torch.atan2(
        l3 * torch.sin(a3), l2 + l3 * torch.cos(a3)
    )
    angles[:, 1], angles[:, 2] = _wrap(phi_2 - a1), a3
    log_w = math.log(2) + _normal_log_prob(angles[:, 1:], PRIOR_STD[2]).sum(1)
    log_w = log_w - torch.log(l2 * l3 * torch.sin(a3).abs())
    return torch.where(cos_a3.abs() < 1, log_w, -math.inf)


def _propose(
    conditional: Conditional,
    observation: Tensor,
    num: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw ``num`` angle triples; returns the angles, their log weights and the
    hand heights without offset."""
    angles = PRIOR_STD[1] * torch.randn(
        num, 3, generator=generator, dtype=torch.float64
    )
    log_w = torch.zeros(num, dtype=torch.float64)
    height_solved = False
    if conditional.observe_reach:
        reach = _noisy(float(observation[1]), num, generator)
        if conditional.observe_height and conditional.fixed_offset is not None:
            relative = float(observation[0]) - conditional.fixed_offset
            height = _noisy(relative, num, generator)
            log_w = _solve_last_two_joints(angles, height, reach, generator)
            height_solved = True
        else:
            log_w = _solve_last_joint(angles, reach, generator)
    lengths = torch.tensor(SEGMENT_LENGTHS, dtype=torch.float64)
    height = (lengths * torch.cumsum(angles, dim=1).sin()).sum(1)
    if conditional.observe_height and not height_solved:
        if conditional.fixed_offset is None:
            std = math.hypot(PRIOR_STD[0], NOISE_STD)
            log_w += _normal_log_prob(observation[0] - height, std)
        else:
            residual = observation[0] - conditional.fixed_offset - height
            log_w += _normal_log_prob(residual, NOISE_STD)
    if conditional.elbow_up:
        log_w = torch.where(torch.sin(angles[:, 1]) >= 0, log_w, -math.inf)
    return angles, log_w, height


def _offsets(
    conditional: Conditional,
    observation: Tensor,
    height: Tensor,
    generator: torch.Generator,
) -> Tensor:
    """The offset given the angles (through the height without offset): fixed,
    the Gaussian conditional given an observed height, or the prior."""
    noise = torch.randn(height.shape[0], generator=generator, dtype=torch.float64)
    if conditional.fixed_offset is not None:
        return torch.full_like(height, conditional.fixed_offset)
    if not conditional.observe_height:
        return PRIOR_STD[0] * noise
    precision = PRIOR_STD[0] ** -2 + NOISE_STD**-2
    mean = (observation[0] - height) * NOISE_STD**-2 / precision
    return mean + noise / math.sqrt(precision)


def reference_samples(
    conditional: str | Conditional,
    num_samples: int = 10_000,
    num_proposals: int = 10_000_000,
    observation: Tensor | None = None,
    seed: int = 0,
    min_effective_sample_size: float | None = None,
    chunk_size: int = 1_000_000,
) -> ReferenceSamples:
    """Samples of a conditional by sampling-importance-resampling.

    Draws ``num_proposals`` angle triples from the proposal described in the
    module docstring, in chunks, and resamples ``num_samples`` of them with
    probabilities proportional to their weights (multinomially, with
    replacement; with an effective sample size far above ``num_samples``
    repeats are rare). A latent offset is then drawn for each resampled row
    from its exact Gaussian conditional.

    Args:
        conditional: A name in :data:`CONDITIONALS`, or a :class:`Conditional`.
        num_samples: Samples to return.
        num_proposals: Proposals to draw.
        observation: ``(2,)`` observed ``(height, reach)``; default
            :data:`OBSERVATION`. A coordinate that is not observed is ignored.
        seed: Seed of the sampler's own generator.
        min_effective_sample_size: Raise if the weights' effective sample size
            is below it; default ``num_samples``.
        chunk_size: Proposals per chunk (bounds the memory).

    Returns:
        The samples and the effective sample size.

    Raises:
        ValueError: For an unknown conditional name.
        RuntimeError: If the effective sample size is below the minimum (draw
            more proposals).
    """
    if isinstance(conditional, str):
        if conditional not in CONDITIONALS:
            raise ValueError(
                f"Unknown conditional {conditional!r}; pass one of "
                f"{', '.join(CONDITIONALS)}."
            )
        conditional = CONDITIONALS[conditional]
    if observation is None:
        observation = torch.tensor(OBSERVATION)
    observation = observation.reshape(-1).to(torch.float64)
    generator = torch.Generator().manual_seed(seed)
    angles, log_w, height = [], [], []
    for start in range(0, num_proposals, chunk_size):
        chunk = _propose(
            conditional, observation, min(chunk_size, num_proposals - start), generator
        )
        for store, value in zip((angles, log_w, height), chunk, strict=True):
            store.append(value)
    log_w_all = torch.cat(log_w)
    weights = torch.exp(log_w_all - log_w_all.max())
    ess = float(weights.sum() ** 2 / (weights**2).sum())
    minimum = (
        num_samples
        if min_effective_sample_size is None
        else (min_effective_sample_size)
    )
    if ess < minimum:
        raise RuntimeError(
            f"The importance weights of {conditional.name!r} have an effective "
            f"sample size of {ess:.0f} from {num_proposals} proposals, below "
            f"{minimum:.0f}; draw more proposals."
        )
    index = torch.multinomial(
        weights, num_samples, replacement=True, generator=generator
    )
    chosen = torch.cat(angles)[index]
    offset = _offsets(conditional, observation, torch.cat(height)[index], generator)
    samples = (
        chosen if conditional.angles_only else torch.cat([offset[:, None], chosen], 1)
    )
    return ReferenceSamples(samples.float(), ess, num_proposals)


@functools.cache
def cached_reference_samples(conditional: str) -> ReferenceSamples:
    """:func:`reference_samples` of a conditional at the defaults, computed once
    per process (10,000 samples from 10^7 proposals, seed 0; a few seconds)."""
    return reference_samples(conditional)


class InverseKinematicsTask:
    """The arm as a benchmark task, with the interface of
    :class:`~sbi_diffusion.benchmark.tasks.BenchmarkTask`.

    One observation, number 1: :data:`OBSERVATION`. Its reference posterior
    samples are :func:`reference_samples` of ``"posterior"``.
    """

    name = NAME
    dim_parameters = 4
    dim_data = 2
    num_observations = NUM_OBSERVATIONS

    def __init__(self) -> None:
        self.prior = prior()
        self.simulator = simulator

    def sample_prior(self, num_samples: int) -> Tensor:
        """Draw ``(num_samples, 4)`` parameters from the prior."""
        return self.prior.sample((num_samples,))

    def simulate(self, theta: Tensor, batch_size: int = 10_000) -> Tensor:
        """Simulate ``(n, 2)`` hand positions (``batch_size`` is accepted for the
        common interface; the simulator is vectorised)."""
        return self.simulator(theta)

    def get_observation(self, num_observation: int) -> Tensor:
        """The observation ``(1, 2)``: ``(0, 1.5)`` for number 1."""
        check_observation(num_observation)
        return torch.tensor([OBSERVATION])

    def get_reference_posterior_samples(self, num_observation: int) -> Tensor:
        """10,000 reference samples of ``p(theta | x_o)``."""
        check_observation(num_observation)
        return cached_reference_samples("posterior").samples

    def get_true_parameters(self, num_observation: int) -> Tensor:
        """Not defined: :data:`OBSERVATION` is a target, not a simulation."""
        check_observation(num_observation)
        raise NotImplementedError(
            f"{NAME}'s observation is a target hand position, not simulated from "
            "known parameters."
        )


def check_observation(num_observation: int) -> None:
    """Raise a ValueError unless ``num_observation`` is 1, the task's only one."""
    if int(num_observation) != NUM_OBSERVATIONS:
        raise ValueError(
            f"Observation {num_observation} does not exist; {NAME} has one "
            f"observation, number 1 (x_o = {OBSERVATION})."
        )
