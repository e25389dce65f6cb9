"""Named vector-field networks: :data:`NETS`, :func:`build_net` and
:func:`check_net_options`.

A network class may declare ``accepts_condition_shape = True``: it then gets
the shape of the embedded condition (the embedding net's output before
flattening) as ``condition_shape``, e.g. the U-Net, which takes an embedded
``x`` on the parameters' grid as input channels
(:class:`~sbi_diffusion.nets.unet.UNet`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from sbi_diffusion.nets.mlp import AdaLNMLP, ResidualMLP
from sbi_diffusion.nets.transformer import ConditionalTokenTransformer
from sbi_diffusion.nets.unet import UNet

__all__ = ["NETS", "build_net", "check_net_options", "has_trainable_parameters"]

NETS: dict[str, type[nn.Module]] = {
    "mlp": ResidualMLP,
    "adaln_mlp": AdaLNMLP,
    "unet": UNet,
    "transformer": ConditionalTokenTransformer,
}
"""The networks a trainer builds by name (``net="mlp"``, ...)."""


def _net_class(name: str) -> type[nn.Module]:
    if name not in NETS:
        raise ValueError(
            f"Unknown net {name!r}. Pass one of {sorted(NETS)} or an nn.Module with "
            "signature net(z, condition, time)."
        )
    return NETS[name]


def build_net(
    net: str | nn.Module,
    input_dim: int,
    condition_dim: int,
    condition_shape: Sequence[int] | None = None,
    **kwargs,
) -> nn.Module:
    """Build a network by name (a key of :data:`NETS`) or pass one through.

    A user-given module must accept ``(z, condition, time)`` with shapes
    ``(batch, input_dim)``, ``(batch, condition_dim)``, ``(batch,)`` and return
    ``(batch, input_dim)``.

    Args:
        net: a name or a module.
        input_dim: dimension of the (flattened) parameters.
        condition_dim: condition inputs of the network.
        condition_shape: shape of the embedded condition before flattening;
            passed on to networks that declare ``accepts_condition_shape``
            (a ``condition_shape`` in ``kwargs`` takes precedence).
        **kwargs: options of the named network.
    """
    if isinstance(net, nn.Module):
        return net
    cls = _net_class(net)
    if getattr(cls, "accepts_condition_shape", False) and condition_shape is not None:
        kwargs.setdefault("condition_shape", tuple(condition_shape))
    return cls(input_dim, condition_dim, **kwargs)


def check_net_options(net: str | nn.Module, net_kwargs: dict) -> None:
    """Check a network name and its options before the data are known, by
    building it with one condition input for parameters of the size its options
    describe (``input_dim_of(options)`` of the class, else 1). The check draws
    the same random numbers as the trainers always have, so seeded trainings
    are unchanged by it.

    Raises:
        ValueError: for an unknown name or invalid options.
    """
    if isinstance(net, nn.Module):
        return
    cls = _net_class(net)
    input_dim_of = getattr(cls, "input_dim_of", None)
    input_dim = 1 if input_dim_of is None else input_dim_of(net_kwargs)
    cls(input_dim, 1, **net_kwargs)


def has_trainable_parameters(net: nn.Module | None) -> bool:
    """Whether ``net`` is a module with a parameter that requires a gradient."""
    return net is not None and any(p.requires_grad for p in net.parameters())
