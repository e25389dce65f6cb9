"""The denoiser a vector-field trainer builds for its simulations.

:func:`build_denoiser` z-scores ``theta`` and ``x`` with the statistics of the
simulations, runs the embedding net once to learn the condition's size and
shape, builds the network (a named one from
:func:`~sbi_diffusion.nets.build_net`, or a copy of a given module) and wraps it
in a :class:`~sbi_diffusion.model.Denoiser`.

The network gets the embedded condition flat, ``(batch, e)`` (plus the null
flag with condition dropout); a named network that declares
``accepts_condition_shape`` (the U-Net) also gets its shape before flattening,
``embedding_net(x).shape[1:]``, as ``condition_shape``, so that an embedded
``x`` on the parameters' grid can enter as image channels.
"""

from __future__ import annotations

from copy import deepcopy

import torch
from torch import Tensor, nn
from torch.distributions.transforms import Transform, identity_transform

from sbi_diffusion.inference.simulations import zscore_statistics
from sbi_diffusion.model import Denoiser
from sbi_diffusion.model.theta_transform import transformed_theta
from sbi_diffusion.nets import build_net
from sbi_diffusion.nets.sizing import AUTO_SIZED_NETS, mlp_size
from sbi_diffusion.path.parameterizations import Parameterization
from sbi_diffusion.path.schedules import Schedule

__all__ = ["build_denoiser", "resolved_net_kwargs"]


def resolved_net_kwargs(
    net: str | nn.Module,
    net_kwargs: dict,
    sizes_net_by_budget: bool,
    num_simulations: int,
    theta_dim: int,
) -> dict:
    """The options of a named net: ``net_kwargs``, with ``width`` and ``depth``
    of the residual MLPs sized by the budget where not given
    (:func:`~sbi_diffusion.nets.sizing.mlp_size`) if ``sizes_net_by_budget``."""
    options = dict(net_kwargs)
    named = isinstance(net, str) and net in AUTO_SIZED_NETS
    if named and sizes_net_by_budget:
        for key, value in mlp_size(num_simulations, theta_dim).items():
            options.setdefault(key, value)
    return options


def build_denoiser(
    theta: Tensor,
    x: Tensor,
    net: str | nn.Module,
    net_kwargs: dict,
    embedding_net: nn.Module | None,
    condition_dropout: float,
    schedule: Schedule,
    parameterization: Parameterization,
    weighting: str,
    theta_transform: Transform = identity_transform,
) -> Denoiser:
    """A new denoiser for the simulations ``theta``, ``x``.

    Args:
        theta: parameters ``(num_simulations, *theta_shape)``.
        x: simulations ``(num_simulations, *x_shape)``.
        net: a name of :func:`~sbi_diffusion.nets.build_net` or a module
            (copied).
        net_kwargs: options of a named net.
        embedding_net: network embedding ``x`` (copied); identity if None.
        condition_dropout: probability of dropping the condition; above 0 the
            network takes one more condition input, the null-condition flag.
        schedule, parameterization, weighting: as for ``Denoiser``.
        theta_transform: the change of variables ``u = T(theta)`` the network
            learns in (:mod:`sbi_diffusion.model.theta_transform`); the
            z-scoring is that of ``u``.

    Raises:
        ValueError: if the embedding net fails on ``x``, or ``theta_transform``
            is not finite on ``theta``.
    """
    theta_shape, x_shape = theta.shape[1:], x.shape[1:]
    u = transformed_theta(theta_transform, theta)
    theta_mean, theta_std = zscore_statistics(u.reshape(u.shape[0], -1))
    x_mean, x_std = zscore_statistics(x)
    embedding_net = nn.Identity() if embedding_net is None else deepcopy(embedding_net)
    with torch.no_grad():
        try:
            embedded = embedding_net(x[:2].cpu())
        except Exception as error:  # noqa: BLE001
            raise ValueError(
                f"The embedding net failed on x of shape {tuple(x.shape[1:])}: {error}"
            ) from error
    condition_shape = embedded.shape[1:]
    condition_dim = int(condition_shape.numel())
    theta_dim = int(theta_shape.numel())
    # models with condition dropout take a null-condition flag (Denoiser)
    net_condition_dim = condition_dim + (1 if condition_dropout > 0 else 0)
    network = build_net(
        net, theta_dim, net_condition_dim, condition_shape=condition_shape, **net_kwargs
    )
    if isinstance(net, nn.Module):
        network = deepcopy(network)
    denoiser = Denoiser(
        net=network,
        schedule=schedule,
        parameterization=parameterization,
        input_shape=theta_shape,
        condition_shape=x_shape,
        embedding_net=embedding_net,
        weighting=weighting,
        theta_shift=theta_mean,
        theta_scale=theta_std,
        x_shift=x_mean,
        x_scale=x_std,
        condition_dropout=condition_dropout,
        condition_embedding_dim=condition_dim,
    )
    denoiser.set_theta_transform(theta_transform)
    return denoiser
