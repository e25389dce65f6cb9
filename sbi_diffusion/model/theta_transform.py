r"""Learning in an unbounded parameter space.

A diffusion model's Gaussian path puts mass on all of :math:`\mathbb{R}^d`, so a
model of a posterior on a bounded or positive support spends capacity on its
edges and leaks samples outside, which rejection then discards. With a bijection
:math:`T` from the prior's support onto :math:`\mathbb{R}^d` (log for a
positive support, logit for a box; :func:`torch.distributions.biject_to`), the
network learns the density of :math:`u = T(\theta)` instead, and the posterior
reports samples :math:`\theta = T^{-1}(u)` and densities in the original space
by the change of variables

.. math::
    \log p(\theta \mid x) = \log p_u(T(\theta) \mid x)
        + \log \left| \det \frac{\partial T(\theta)}{\partial \theta} \right|.

This is the transform sbi applies before MCMC (``mcmc_transform``), and the one
the adapters of Arruda et al. (2025, "Diffusion models in simulation-based
inference: a tutorial review") apply for every sbibm task.
"""

from __future__ import annotations

from typing import Any

import torch
from sbi.utils.sbiutils import mcmc_transform
from torch import Tensor
from torch.distributions import Distribution, TransformedDistribution
from torch.distributions.transforms import (
    ComposeTransform,
    Transform,
    identity_transform,
)

__all__ = [
    "THETA_TRANSFORMS",
    "check_theta_transform",
    "is_identity",
    "log_abs_det_jacobian",
    "pushforward",
    "resolve_theta_transform",
    "transformed_theta",
]

#: names ``theta_transform=`` accepts besides a ``Transform``
THETA_TRANSFORMS = (None, "none", "support")


def check_theta_transform(theta_transform: Any) -> None:
    """Raise a ValueError for a ``theta_transform`` that is neither a name of
    :data:`THETA_TRANSFORMS` nor a ``torch.distributions.Transform``."""
    if isinstance(theta_transform, Transform) or theta_transform in THETA_TRANSFORMS:
        return
    raise ValueError(
        f"Unknown theta_transform {theta_transform!r}. Pass None (learn theta "
        "as it is), 'support' (learn T(theta) for the bijection T from the "
        "prior's support onto R^d: log for a positive support, logit for a box) "
        "or a torch.distributions.Transform from theta to an unbounded space."
    )


def resolve_theta_transform(
    theta_transform: str | Transform | None, prior: Distribution | None
) -> Transform:
    """The transform ``theta -> u`` that ``theta_transform`` names.

    Args:
        theta_transform: None or ``"none"`` (identity), ``"support"`` (sbi's
            ``mcmc_transform(prior)``: the inverse of ``biject_to(prior.support)``
            for a bounded or positive support, an affine z-scoring by the
            prior's mean and standard deviation for a real one) or a
            ``Transform`` (used as given).
        prior: the prior, needed for ``"support"``.

    Raises:
        ValueError: for an unknown name, or ``"support"`` without a prior.
    """
    check_theta_transform(theta_transform)
    if isinstance(theta_transform, Transform):
        return theta_transform
    if theta_transform in (None, "none"):
        return identity_transform
    if prior is None:
        raise ValueError(
            "theta_transform='support' needs the prior's support: pass prior= to "
            "the trainer."
        )
    return mcmc_transform(prior)


def is_identity(transform: Transform) -> bool:
    """Whether ``transform`` is the identity (no change of variables)."""
    return isinstance(transform, ComposeTransform) and not transform.parts


def transformed_theta(transform: Transform, theta: Tensor) -> Tensor:
    """``u = T(theta)``; raises a ValueError naming the rows that ``T`` maps to
    NaN or inf (parameters outside the prior's support; torch's box transforms
    clamp to the interior and stay finite)."""
    if is_identity(transform):
        return theta
    u = transform(theta)
    finite = torch.isfinite(u.reshape(u.shape[0], -1)).all(dim=1)
    if not finite.all():
        rows = torch.nonzero(~finite).reshape(-1)[:5].tolist()
        raise ValueError(
            f"{int((~finite).sum())} parameter rows (e.g. rows {rows}) lie "
            "outside the prior's support, where the theta_transform is not "
            "finite. Simulate from the prior, or train with theta_transform=None."
        )
    return u


def log_abs_det_jacobian(transform: Transform, theta: Tensor) -> Tensor:
    r"""``log |det dT/dtheta|`` per row of ``theta`` ``(batch, *event)``,
    summed over the event dimensions: ``(batch,)``."""
    if is_identity(transform):
        return torch.zeros(theta.shape[0], dtype=theta.dtype, device=theta.device)
    value = transform.log_abs_det_jacobian(theta, transform(theta))
    return value.reshape(theta.shape[0], -1).sum(dim=1)


def pushforward(prior: Distribution, transform: Transform) -> Distribution:
    """The distribution of ``T(theta)`` for ``theta ~ prior`` (``prior`` itself
    for the identity)."""
    if is_identity(transform):
        return prior
    return TransformedDistribution(prior, [transform])
