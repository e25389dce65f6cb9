"""``net="transformer"``: the token transformer as the posterior network."""

from __future__ import annotations

import io

import pytest
import torch
from sbi.utils.metrics import c2st
from torch.distributions import MultivariateNormal

from sbi_diffusion import DiffusionNPE, FlowMatchingNPE
from sbi_diffusion.nets import NETS, ConditionalTokenTransformer, build_net

NUM_SIMULATIONS = 2000
NET_KWARGS = dict(width=32, depth=2, num_heads=2)
TRAIN_KWARGS = dict(max_num_epochs=40, training_batch_size=128, seed=0)


def test_registered_and_shapes():
    assert NETS["transformer"] is ConditionalTokenTransformer
    net = build_net("transformer", 3, 5, **NET_KWARGS)
    z, condition = torch.randn(7, 3), torch.randn(7, 5)
    out = net(z, condition, torch.rand(7))
    assert out.shape == (7, 3)
    # one time for all rows, and no condition at all
    assert net(z, condition, torch.rand(1)).shape == (7, 3)
    unconditional = build_net("transformer", 3, 0, **NET_KWARGS)
    assert unconditional(z, torch.zeros(7, 0), torch.rand(7)).shape == (7, 3)


def test_every_output_sees_every_input():
    """Attention mixes tokens: each parameter's output depends on every other
    parameter and on every condition entry (once the zero-initialised gates
    are moved away from zero)."""
    torch.manual_seed(0)
    net = ConditionalTokenTransformer(3, 4, **NET_KWARGS)
    for parameter in net.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    z = torch.randn(1, 3, requires_grad=True)
    condition = torch.randn(1, 4, requires_grad=True)
    for row in range(3):
        grad_z, grad_c = torch.autograd.grad(
            net(z, condition, torch.rand(1))[0, row], (z, condition)
        )
        assert (grad_z.abs() > 0).all() and (grad_c.abs() > 0).all()


def test_rows_are_independent():
    torch.manual_seed(0)
    net = ConditionalTokenTransformer(2, 3, **NET_KWARGS)
    for parameter in net.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    z, condition, time = torch.randn(5, 2), torch.randn(5, 3), torch.rand(5)
    together = net(z, condition, time)
    alone = torch.cat(
        [net(z[i : i + 1], condition[i : i + 1], time[i : i + 1]) for i in range(5)]
    )
    assert torch.allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(width=30, num_heads=4), "divisible"),
        (dict(depth=0), "positive"),
    ],
)
def test_bad_options_raise(kwargs, match):
    prior = MultivariateNormal(torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match=match):
        DiffusionNPE(prior, net="transformer", net_kwargs=kwargs)


@pytest.mark.parametrize("cls", [DiffusionNPE, FlowMatchingNPE])
def test_posterior_against_the_analytic_one(cls, linear_gaussian):
    """Trained on the linear-Gaussian problem, the transformer's posterior is
    close to the exact one, and survives save/load."""
    torch.manual_seed(0)
    theta = linear_gaussian.prior.sample((NUM_SIMULATIONS,))
    x = linear_gaussian.simulate(theta)
    inference = cls(
        linear_gaussian.prior,
        net="transformer",
        net_kwargs=NET_KWARGS,
        show_progress_bars=False,
    )
    inference.append_simulations(theta, x).train(**TRAIN_KWARGS)
    assert inference.resolved_training["net_kwargs"] == NET_KWARGS
    posterior = inference.build_posterior()
    x_o = linear_gaussian.simulate(linear_gaussian.prior.sample((1,)))
    mean, cov = linear_gaussian.posterior(x_o)
    reference = MultivariateNormal(mean.float(), cov.float()).sample((2000,))
    assert float(c2st(_draw(posterior, 2000, x_o), reference)) < 0.62
    buffer = io.BytesIO()
    torch.save(posterior, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(_draw(loaded, 50, x_o), _draw(posterior, 50, x_o))


def _draw(posterior, num: int, x_o: torch.Tensor) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return posterior.sample(
        (num,), x=x_o, show_progress_bars=False, generator=generator
    )
