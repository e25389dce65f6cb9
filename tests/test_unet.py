"""The U-Net denoiser (``net="unet"``) for parameters that are fields, and the
costs that scale with them: Hutchinson divergence, bounded sampling batches,
training data kept on its own device."""

from __future__ import annotations

import io

import pytest
import torch
from sbi.neural_nets.embedding_nets import CNNEmbedding
from sbi.utils import BoxUniform
from torch.distributions import MultivariateNormal

from sbi_diffusion import ConsistencyNPE, DiffusionNPE, FlowMatchingNPE
from sbi_diffusion import density as density_module
from sbi_diffusion.density import EXACT_DIVERGENCE_MAX_DIM, resolve_divergence
from sbi_diffusion.inference.batching import sampling_batch_size
from sbi_diffusion.inference.denoiser_builder import build_denoiser
from sbi_diffusion.inference.posterior import DiffusionPosterior
from sbi_diffusion.nets import UNet, build_net
from sbi_diffusion.path.gaussian import linear_gaussian_posterior
from sbi_diffusion.path.parameterizations import get_parameterization
from sbi_diffusion.path.schedules import get_schedule

GRID = 8
DIM = GRID * GRID
NOISE = 0.5
SMALL_UNET = {"shape": (1, GRID, GRID), "channels": (16, 32)}
TINY_TRAIN = dict(max_num_epochs=1, training_batch_size=32, seed=0)


def _randomize_output(net: UNet) -> UNet:
    """The net with random weights where they start at zero (the last
    convolution of each block, the attention's projection, the output)."""
    with torch.no_grad():
        for parameter in net.parameters():
            if not parameter.any():
                parameter.normal_(std=0.1)
    return net


# ----------------------------------------------------------------- network


@pytest.mark.parametrize(
    "shape, channels",
    [
        ((1, 8, 8), (16, 32)),
        ((2, 7, 9), (8, 16, 16)),  # odd sizes, three levels
        ((3, 13), (8, 16)),  # 1-D signal of odd length
        ((1, 5), (8,)),  # one level: no down-sampling
    ],
)
@pytest.mark.parametrize("attention", [True, False])
def test_unet_maps_flat_fields_to_flat_fields(shape, channels, attention):
    torch.manual_seed(0)
    dim = int(torch.Size(shape).numel())
    net = UNet(dim, 3, shape=shape, channels=channels, attention=attention)
    z, condition, time = torch.randn(4, dim), torch.randn(4, 3), torch.rand(4)
    assert torch.equal(net(z, condition, time), torch.zeros(4, dim))  # zero init
    assert (net.attention is not None) == attention
    _randomize_output(net)
    z.requires_grad_(True)
    out = net(z, condition, time)
    assert out.shape == (4, dim) and torch.isfinite(out).all()
    out.sum().backward()
    assert z.grad.abs().sum() > 0
    # one condition row and one time broadcast over the batch
    same = net(z, condition[:1].expand(4, -1), time[:1].expand(4))
    assert torch.allclose(net(z, condition[:1], time[:1]), same)


def test_unet_rows_are_independent():
    """Row b of the output depends on row b of the inputs only (GroupNorm
    normalises within a row), so sampling in batches changes nothing."""
    torch.manual_seed(0)
    net = _randomize_output(UNet(DIM, 4, shape=(1, GRID, GRID)))
    z, condition, time = torch.randn(6, DIM), torch.randn(6, 4), torch.rand(6)
    full = net(z, condition, time)
    assert torch.allclose(full[:2], net(z[:2], condition[:2], time[:2]), atol=1e-5)


@pytest.mark.parametrize("attention", [False, True])
def test_circular_padding_makes_the_unet_shift_equivariant(attention):
    """With ``padding_mode="circular"`` and two levels, shifting the field and
    the image condition circularly by 2 points shifts the output by 2 points;
    with zero padding it does not (the edges differ)."""
    torch.manual_seed(0)

    def shift(v: torch.Tensor) -> torch.Tensor:
        return v.reshape(-1, GRID, GRID).roll((2, -2), (1, 2)).reshape(-1, DIM)

    z, condition, time = torch.randn(3, DIM), torch.randn(3, DIM), torch.rand(3)
    for padding_mode, equivariant in (("circular", True), ("zeros", False)):
        net = _randomize_output(
            UNet(
                DIM,
                DIM,
                shape=(1, GRID, GRID),
                channels=(8, 16),
                attention=attention,
                num_heads=2,
                condition_shape=(1, GRID, GRID),
                padding_mode=padding_mode,
            )
        )
        with torch.no_grad():
            shifted = net(shift(z), shift(condition), time)
            expected = shift(net(z, condition, time))
        assert torch.allclose(shifted, expected, atol=1e-5) == equivariant


@pytest.mark.parametrize("grad", [False, True])
def test_cpu_pieces_and_channels_last_give_the_one_call_result(monkeypatch, grad):
    """On a CPU the batch goes through the network in pieces of ``cpu_rows``
    rows and, without gradients on a large enough 2-D grid, channels-last:
    the output (and its gradient) equals one call in the default layout."""
    from sbi_diffusion.nets import unet as unet_module

    torch.manual_seed(0)
    net = _randomize_output(UNet(DIM, DIM, shape=(1, GRID, GRID), channels=(8,)))
    z, condition = torch.randn(7, DIM, requires_grad=grad), torch.randn(1, DIM)
    time = torch.tensor(0.3)
    with torch.set_grad_enabled(grad):
        reference = net._forward(z, condition.expand(7, -1), time.expand(7))
        monkeypatch.setattr(unet_module, "CPU_ACTIVATION_FLOATS", 8 * DIM * 3)
        monkeypatch.setattr(unet_module, "CPU_CHANNELS_LAST_POINTS", DIM)
        assert net.cpu_rows == 3
        pieces = net(z, condition, time)
    assert torch.allclose(pieces, reference, atol=1e-5)
    if grad:
        (g_pieces,) = torch.autograd.grad(pieces.square().sum(), z)
        (g_reference,) = torch.autograd.grad(reference.square().sum(), z)
        assert torch.allclose(g_pieces, g_reference, atol=1e-4)


@pytest.mark.parametrize(
    "condition_dim, condition_shape, condition_as, channels, flags",
    [
        (5, (5,), "auto", 0, 0),  # summary vector
        (DIM, (DIM,), "auto", 0, 0),  # flat: no layout, so a vector
        (DIM, (1, GRID, GRID), "auto", 1, 0),  # image on the grid
        (DIM, (GRID, GRID), "auto", 1, 0),  # image without channel axis
        (2 * DIM + 1, (2, GRID, GRID), "auto", 2, 1),  # + null flag
        (2 * DIM, (2 * DIM,), "channels", 2, 0),  # flat, asserted on grid
        (DIM, (1, GRID, GRID), "vector", 0, 0),  # image, forced to a vector
        (DIM, (1, 4, 16), "auto", 0, 0),  # image of another size
        (0, None, "auto", 0, 0),  # unconditional
    ],
)
def test_condition_enters_as_channels_or_vector(
    condition_dim, condition_shape, condition_as, channels, flags
):
    torch.manual_seed(0)
    net = UNet(
        DIM,
        condition_dim,
        shape=(1, GRID, GRID),
        condition_shape=condition_shape,
        condition_as=condition_as,
    )
    assert net.condition_channels == channels
    assert net.input_conv.in_channels == 1 + channels
    vector_inputs = flags if channels else condition_dim
    if vector_inputs:
        assert net.condition_embedding[0].in_features == vector_inputs
    else:
        assert net.condition_embedding is None
    _randomize_output(net)
    z, condition, time = (
        torch.randn(3, DIM),
        torch.randn(3, condition_dim),
        torch.rand(3),
    )
    out = net(z, condition, time)
    assert out.shape == (3, DIM)
    if condition_dim:  # the output depends on the condition
        assert not torch.allclose(out, net(z, condition + 1.0, time))


def test_image_condition_on_the_grid_is_read_pixel_by_pixel():
    """Changing one pixel of an image condition changes the output near that
    pixel most: the condition meets theta on the grid (far pixels change only
    through the group-norm statistics)."""
    torch.manual_seed(0)
    net = UNet(
        DIM,
        DIM,
        shape=(1, GRID, GRID),
        channels=(8,),
        attention=False,
        condition_shape=(1, GRID, GRID),
    )
    _randomize_output(net)
    z, condition, time = torch.randn(1, DIM), torch.randn(1, DIM), torch.rand(1)
    changed = condition.clone()
    changed[0, 0] += 5.0  # pixel (0, 0)
    delta = (net(z, changed, time) - net(z, condition, time)).abs().reshape(8, 8)
    assert delta[:2, :2].mean() > 2 * delta[5:, 5:].mean()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "needs the shape"),
        ({"shape": (1, 8, 7)}, "must equal the parameter dimension"),
        ({"shape": (64,)}, r"\(C, L\)"),
        ({"shape": (1, 8, 8), "channels": ()}, "channels"),
        ({"shape": (1, 8, 8), "channels": (16, 30)}, "num_heads"),
        ({"shape": (1, 8, 8), "condition_as": "pixels"}, "condition_as"),
        ({"shape": (1, 8, 8), "padding_mode": "periodic"}, "padding_mode"),
    ],
)
def test_bad_unet_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_net("unet", DIM, 0, **kwargs)


def test_channels_that_do_not_fit_the_grid_raise():
    with pytest.raises(ValueError, match="k \\* 64"):
        UNet(DIM, 10, shape=(1, 8, 8), condition_as="channels")
    with pytest.raises(ValueError, match="condition inputs"):
        UNet(DIM, 10, shape=(1, 8, 8), condition_shape=(1, 8, 8))


def test_trainer_checks_the_shape_early():
    prior = MultivariateNormal(torch.zeros(DIM), torch.eye(DIM))
    with pytest.raises(ValueError, match="needs the shape"):
        DiffusionNPE(prior, net="unet")
    inference = DiffusionNPE(
        prior, net="unet", net_kwargs={"shape": (1, 4, 4)}, show_progress_bars=False
    )
    theta = prior.sample((20,))
    with pytest.raises(ValueError, match="16 elements.*dimension 64"):
        inference.append_simulations(theta, theta).train(**TINY_TRAIN)


def test_without_a_prior_fields_are_flat_vectors():
    """With no prior, the empirical prior of sbi needs vectors: a field passed
    as an image raises and says what to pass; the flat field trains."""
    fields = torch.randn(40, 1, 4, 4)
    x = fields.reshape(40, -1)[:, :3]
    inference = DiffusionNPE(
        net="unet", net_kwargs={"shape": (1, 4, 4)}, show_progress_bars=False
    )
    with pytest.raises(ValueError, match="without a prior.*num_simulations, dim"):
        inference.append_simulations(fields, x)
    inference.append_simulations(fields.reshape(40, -1), x).train(**TINY_TRAIN)
    samples = inference.build_posterior().sample((3,), x=x[0], show_progress_bars=False)
    assert samples.shape == (3, 16)


# ---------------------------------------------------------- conditioning


def _field_prior() -> MultivariateNormal:
    """A smooth Gaussian random field on the 8x8 grid (squared-exponential
    covariance, length scale 1.5, plus a nugget)."""
    axis = torch.arange(GRID, dtype=torch.float64)
    points = torch.cartesian_prod(axis, axis)
    squared = ((points[:, None] - points[None]) ** 2).sum(-1)
    cov = torch.exp(-squared / (2 * 1.5**2)) + 0.05 * torch.eye(DIM)
    return MultivariateNormal(torch.zeros(DIM), cov.float())


def _observe(theta: torch.Tensor) -> torch.Tensor:
    """The field plus white noise, as an image ``(n, 1, 8, 8)``."""
    x = theta + NOISE * torch.randn_like(theta)
    return x.reshape(-1, 1, GRID, GRID)


def _conditions(kind: str, theta: torch.Tensor):
    """Simulations and the embedding net of each conditioning path."""
    if kind == "vector":
        return theta[:, :5] + 0.1 * torch.randn(theta.shape[0], 5), None
    if kind == "image_on_grid":
        return _observe(theta), None
    # an image of another size (12x12) through sbi's CNN embedding
    image = torch.nn.functional.interpolate(
        _observe(theta), size=(12, 12), mode="bilinear"
    )
    return image, CNNEmbedding(input_shape=(12, 12), output_dim=16)


@pytest.mark.parametrize(
    "kind, dropout, channels",
    [
        ("vector", 0.0, 0),
        ("image_on_grid", 0.0, 1),
        ("image_on_grid", 0.2, 1),
        ("cnn_embedding", 0.0, 0),
        ("cnn_embedding", 0.2, 0),
    ],
)
def test_conditioning_paths_train_and_sample(kind, dropout, channels):
    torch.manual_seed(0)
    prior = _field_prior()
    theta = prior.sample((64,))
    x, embedding_net = _conditions(kind, theta)
    inference = DiffusionNPE(
        prior,
        net="unet",
        net_kwargs=SMALL_UNET,
        embedding_net=embedding_net,
        condition_dropout=dropout,
        show_progress_bars=False,
    )
    estimator = inference.append_simulations(theta, x).train(**TINY_TRAIN)
    assert estimator.net.condition_channels == channels
    flags = 1 if dropout > 0 else 0
    assert estimator.net.condition_dim == estimator.net.condition_size + flags
    assert "width" not in inference.resolved_training["net_kwargs"]  # not sized
    posterior = inference.build_posterior()
    samples = posterior.sample((7,), x=x[0], show_progress_bars=False)
    assert samples.shape == (7, DIM) and torch.isfinite(samples).all()
    batched = posterior.sample_batched((3,), x=x[:2], show_progress_bars=False)
    assert batched.shape == (3, 2, DIM)
    if dropout > 0:  # the null condition (learned embedding, flag 1) runs
        denoise = posterior.estimator.bind(None)
        out = denoise(torch.randn(3, DIM), torch.full((3,), 0.5))
        assert out.shape == (3, DIM) and torch.isfinite(out).all()


def test_one_dimensional_signal_with_signal_observation():
    """A 1-D field ``(1, 16)`` observed as a signal ``(n, 16)``: the observation
    lies on the grid and enters as a channel."""
    torch.manual_seed(0)
    prior = MultivariateNormal(torch.zeros(16), torch.eye(16))
    theta = prior.sample((64,))
    x = theta + 0.3 * torch.randn_like(theta)
    inference = FlowMatchingNPE(
        prior,
        net="unet",
        net_kwargs={"shape": (1, 16), "channels": (8, 16)},
        show_progress_bars=False,
    )
    estimator = inference.append_simulations(theta, x).train(**TINY_TRAIN)
    assert estimator.net.condition_channels == 1
    posterior = inference.build_posterior()
    samples = posterior.sample((5,), x=x[0], show_progress_bars=False)
    assert samples.shape == (5, 16)
    log_p = posterior.log_prob(samples, x=x[0], solver="heun", steps=2)
    assert torch.isfinite(log_p).all()


def test_consistency_npe_with_a_unet():
    torch.manual_seed(0)
    prior = _field_prior()
    theta = prior.sample((64,))
    inference = ConsistencyNPE(
        prior, net="unet", net_kwargs=SMALL_UNET, show_progress_bars=False
    )
    inference.append_simulations(theta, _observe(theta)).train(**TINY_TRAIN)
    posterior = inference.build_posterior()
    samples = posterior.sample((5,), x=_observe(theta[:1]), show_progress_bars=False)
    assert samples.shape == (5, DIM) and torch.isfinite(samples).all()


# ------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def field_problem():
    """A DiffusionNPE with a U-Net trained briefly on the Gaussian field
    observed with white noise, and the exact posterior of one observation."""
    torch.manual_seed(0)
    prior = _field_prior()
    theta = prior.sample((1000,))
    x = _observe(theta)
    theta_o = prior.sample((1,))
    x_o = _observe(theta_o)
    eye = torch.eye(DIM, dtype=torch.float64)
    mean, cov = linear_gaussian_posterior(
        torch.zeros(DIM, dtype=torch.float64),
        prior.covariance_matrix.double(),
        eye,
        NOISE**2 * eye,
        x_o.reshape(1, DIM).double(),
    )
    inference = DiffusionNPE(
        prior, net="unet", net_kwargs=SMALL_UNET, show_progress_bars=False
    )
    inference.append_simulations(theta, x).train(
        max_num_epochs=10,
        training_batch_size=128,
        learning_rate=2e-3,
        warmup_steps=20,
        seed=0,
    )
    posterior = inference.build_posterior()
    return posterior, x_o, mean.reshape(DIM).float(), cov.float()


def test_field_posterior_is_close_to_the_exact_one(field_problem):
    posterior, x_o, mean, cov = field_problem
    generator = torch.Generator().manual_seed(0)
    samples = posterior.sample(
        (500,), x=x_o, generator=generator, show_progress_bars=False
    )
    assert samples.shape == (500, DIM)
    error = (samples.mean(0) - mean).norm()
    prior_error = mean.norm()  # the prior mean is 0
    assert error < 0.35 * prior_error, (error, prior_error)
    std_ratio = (samples.std(0) / cov.diagonal().sqrt()).mean()
    assert 0.5 < std_ratio < 2.0, std_ratio


def test_field_posterior_save_and_load(field_problem):
    posterior, x_o, _, _ = field_problem
    buffer = io.BytesIO()
    torch.save(posterior, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    a = posterior.sample(
        (10,),
        x=x_o,
        generator=torch.Generator().manual_seed(3),
        show_progress_bars=False,
    )
    b = loaded.sample(
        (10,),
        x=x_o,
        generator=torch.Generator().manual_seed(3),
        show_progress_bars=False,
    )
    assert torch.equal(a, b)


def test_log_prob_uses_hutchinson_above_the_threshold(field_problem, monkeypatch):
    posterior, x_o, _, _ = field_problem
    assert DIM > EXACT_DIVERGENCE_MAX_DIM
    calls = {"exact": 0, "hutchinson": 0}
    exact, hutchinson = (
        density_module._divergence_exact,
        density_module._divergence_hutchinson,
    )

    def spy_exact(*args):
        calls["exact"] += 1
        return exact(*args)

    def spy_hutchinson(*args):
        calls["hutchinson"] += 1
        return hutchinson(*args)

    monkeypatch.setattr(density_module, "_divergence_exact", spy_exact)
    monkeypatch.setattr(density_module, "_divergence_hutchinson", spy_hutchinson)
    theta = posterior.sample((3,), x=x_o, show_progress_bars=False)
    options = dict(x=x_o, solver="heun", steps=2)
    first = posterior.log_prob(
        theta, generator=torch.Generator().manual_seed(0), **options
    )
    assert calls == {"exact": 0, "hutchinson": 4}  # 2 Heun steps, 2 evaluations
    second = posterior.log_prob(
        theta, generator=torch.Generator().manual_seed(1), **options
    )
    assert torch.isfinite(first).all() and not torch.allclose(first, second)
    forced = posterior.log_prob(theta, divergence="exact", **options)
    assert calls["exact"] == 4 and torch.isfinite(forced).all()


def test_divergence_threshold():
    assert resolve_divergence("auto", EXACT_DIVERGENCE_MAX_DIM) == "exact"
    assert resolve_divergence("auto", EXACT_DIVERGENCE_MAX_DIM + 1) == "hutchinson"
    assert resolve_divergence("exact", 4096) == "exact"
    with pytest.raises(ValueError, match="divergence"):
        resolve_divergence("trace", 4)


# ------------------------------------------------------------ batching


def test_sampling_batches_are_bounded_by_the_dimension():
    assert sampling_batch_size(None, 2) == 10_000  # low dimensions as before
    assert sampling_batch_size(None, 64 * 64) == 512
    assert sampling_batch_size(None, 32 * 32) == 2048
    assert sampling_batch_size(100, 64 * 64) == 100  # given: used as is
    with pytest.raises(ValueError, match=">= 1"):
        sampling_batch_size(0, 4)


def test_a_large_field_is_sampled_in_bounded_batches():
    """1000 samples of a 64x64 field: no network call sees more than 512 rows."""
    torch.manual_seed(0)
    dim = 64 * 64
    theta, x = torch.randn(8, dim), torch.randn(8, 3)
    denoiser = build_denoiser(
        theta,
        x,
        net="mlp",
        net_kwargs={"width": 8, "depth": 1},
        embedding_net=None,
        condition_dropout=0.0,
        schedule=get_schedule("edm_vp"),
        parameterization=get_parameterization("F"),
        weighting="edm",
    )
    rows = []
    denoiser.net.register_forward_hook(lambda m, args, out: rows.append(len(out)))
    prior = BoxUniform(-1e3 * torch.ones(dim), 1e3 * torch.ones(dim))
    posterior = DiffusionPosterior(denoiser, prior, sampler="euler")
    samples = posterior.sample((1000,), x=x[0], steps=1, show_progress_bars=False)
    assert samples.shape == (1000, dim)
    assert max(rows) == 512 and sum(rows) % 1000 == 0


# ------------------------------------------------------------------ GPU


@pytest.mark.gpu
def test_unet_trains_on_cuda_with_the_data_on_the_cpu():
    torch.manual_seed(0)
    prior = MultivariateNormal(torch.zeros(DIM), torch.eye(DIM))
    theta = prior.sample((256,))
    x = _observe(theta)
    cuda_prior = MultivariateNormal(
        torch.zeros(DIM, device="cuda"), torch.eye(DIM, device="cuda")
    )
    inference = DiffusionNPE(
        cuda_prior,
        net="unet",
        net_kwargs=SMALL_UNET,
        device="cuda",
        show_progress_bars=False,
    )
    inference.append_simulations(theta, x, data_device="cpu")
    estimator = inference.train(**TINY_TRAIN)
    assert next(estimator.parameters()).device.type == "cuda"
    assert inference._theta_roundwise[0].device.type == "cpu"
    posterior = inference.build_posterior()
    samples = posterior.sample((100,), x=x[0], show_progress_bars=False)
    assert samples.device.type == "cuda" and torch.isfinite(samples).all()
    log_p = posterior.log_prob(samples[:4], x=x[0], solver="heun", steps=4)
    assert log_p.device.type == "cuda" and torch.isfinite(log_p).all()
