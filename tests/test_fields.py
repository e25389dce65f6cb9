"""Gaussian-random-field problems: FFT algebra against dense algebra, simulators,
and the metrics against the exact posterior."""

from __future__ import annotations

import math

import pytest
import torch
from sbi.utils.user_input_checks import process_prior
from torch.distributions import MultivariateNormal

from sbi_diffusion.benchmark.fields import (
    FieldParametersProblem,
    GaussianRandomFieldProblem,
    field_posterior_metrics,
    nrmse,
)
from sbi_diffusion.benchmark.fields.spectra import (
    color_noise,
    fourier,
    radial_average,
    real_fourier_coefficients,
    real_fourier_synthesis,
)

F64 = torch.float64


def dense_dft(N: int) -> torch.Tensor:
    """The unitary 2-D DFT as an explicit ``N^2 x N^2`` matrix (no torch.fft)."""
    idx = torch.arange(N, dtype=F64)
    ry, rx = torch.meshgrid(idx, idx, indexing="ij")
    r = torch.stack([ry.reshape(-1), rx.reshape(-1)])  # (2, N^2), row-major
    phase = -2 * math.pi * (r.T @ r) / N  # k and r run over the same grid
    return torch.polar(torch.full_like(phase, 1.0 / N), phase)


def dense_circulant(diagonal: torch.Tensor) -> torch.Tensor:
    """``F^H diag(d) F`` as a dense real matrix."""
    W = dense_dft(diagonal.shape[-1])
    matrix = W.conj().T @ torch.diag(diagonal.reshape(-1).to(torch.complex128)) @ W
    assert matrix.imag.abs().max() < 1e-12
    return matrix.real


@pytest.mark.parametrize("N", [5, 6])
def test_real_fourier_basis_is_orthonormal_and_inverted(N):
    basis = real_fourier_synthesis(torch.eye(N * N, dtype=F64), N)
    torch.testing.assert_close(basis @ basis.T, torch.eye(N * N, dtype=F64))
    fields = torch.randn(3, N * N, dtype=F64)
    coefficients = real_fourier_coefficients(fields, N)
    torch.testing.assert_close(coefficients, fields @ basis.T)
    torch.testing.assert_close(real_fourier_synthesis(coefficients, N), fields)


@pytest.mark.parametrize("N", [5, 6])
def test_prior_covariance_and_sampler_match_dense(N):
    problem = GaussianRandomFieldProblem(N)
    cov = dense_circulant(problem.spectrum)
    torch.testing.assert_close(cov, cov.T)
    torch.testing.assert_close(cov.diagonal(), torch.ones(N * N, dtype=F64))
    # the sampler is the linear map w -> M w with M M^T = C exactly
    M = color_noise(torch.eye(N * N, dtype=F64), problem.spectrum).T
    torch.testing.assert_close(M @ M.T, cov, rtol=0, atol=1e-10)
    torch.testing.assert_close(problem.prior.variance, torch.ones(N * N))


def test_prior_log_prob_matches_dense_multivariate_normal():
    N = 6
    problem = GaussianRandomFieldProblem(N, dtype=F64)
    dense = MultivariateNormal(
        torch.zeros(N * N, dtype=F64), dense_circulant(problem.spectrum)
    )
    theta = problem.prior.sample((4,), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        problem.prior.log_prob(theta), dense.log_prob(theta), rtol=0, atol=1e-8
    )
    torch.testing.assert_close(
        problem.prior.entropy(), dense.entropy(), rtol=0, atol=1e-8
    )


@pytest.mark.parametrize("N", [6, 8])
def test_posterior_matches_dense_gaussian_conditioning(N):
    problem = GaussianRandomFieldProblem(N, noise_sd=0.15)
    _, x_o = problem.observation(seed=3)
    prior_cov = dense_circulant(problem.spectrum)
    B = dense_circulant(problem.transfer)
    torch.testing.assert_close(B, B.T)
    x = x_o.reshape(-1).to(F64)
    # information form, Sigma_post = (Sigma^-1 + B^T B / s^2)^-1 ...
    precision = torch.linalg.inv(prior_cov) + B.T @ B / problem.noise_sd**2
    post_cov = torch.linalg.inv(precision)
    post_mean = post_cov @ B.T @ x / problem.noise_sd**2
    # ... equals the better-conditioned covariance form (Rasmussen & Williams
    # eqs. 2.22-2.24): Sigma - Sigma B^T (B Sigma B^T + s^2 I)^-1 B Sigma
    gain = (
        prior_cov
        @ B.T
        @ torch.linalg.inv(
            B @ prior_cov @ B.T + problem.noise_sd**2 * torch.eye(N * N, dtype=F64)
        )
    )
    torch.testing.assert_close(post_mean, gain @ x, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        post_cov, prior_cov - gain @ B @ prior_cov, atol=1e-6, rtol=0
    )
    post_cov, post_mean = prior_cov - gain @ B @ prior_cov, gain @ x

    posterior = problem.exact_posterior(x_o)
    torch.testing.assert_close(posterior.mean, post_mean, rtol=0, atol=1e-8)
    _, vectors, variances = posterior.eigen_directions(N * N)
    fft_cov = vectors.T @ torch.diag(variances) @ vectors
    torch.testing.assert_close(fft_cov, post_cov, rtol=0, atol=1e-8)
    sd = torch.full((N * N,), posterior.pixel_sd, dtype=F64)
    torch.testing.assert_close(post_cov.diagonal().sqrt(), sd, rtol=0, atol=1e-8)
    # the blur is the dense matrix too
    theta = problem.sample_prior(2).to(F64)
    torch.testing.assert_close(problem.blur(theta), theta @ B.T)
    # leading and trailing directions are eigenvectors of the dense covariance
    for leading in (True, False):
        _, v, var = posterior.eigen_directions(3, leading)
        torch.testing.assert_close(v @ post_cov, var[:, None] * v, atol=1e-8, rtol=0)
    assert variances[0] == variances.max() and variances[-1] == variances.min()


def test_field_simulator_shapes_seeds_and_noise():
    problem = GaussianRandomFieldProblem(16)
    theta = problem.sample_prior(50, generator=torch.Generator().manual_seed(0))
    assert theta.shape == (50, 256) and theta.dtype == torch.float32
    x1 = problem.simulate(theta, generator=torch.Generator().manual_seed(1))
    x2 = problem.simulate(theta, generator=torch.Generator().manual_seed(1))
    assert x1.shape == (50, 1, 16, 16) and x1.dtype == torch.float32
    torch.testing.assert_close(x1, x2)
    residual = x1.reshape(50, -1).to(F64) - problem.blur(theta)
    assert abs(residual.std().item() / problem.noise_sd - 1) < 0.03
    assert abs(theta.std().item() - 1) < 0.1  # unit prior pixel sd
    t1, o1 = problem.observation(seed=4)
    t2, o2 = problem.observation(seed=4)
    torch.testing.assert_close(o1, o2)
    assert t1.shape == (1, 256) and o1.shape == (1, 1, 16, 16)


def test_prior_is_usable_by_sbi():
    problem = GaussianRandomFieldProblem(8)
    prior, dim, _ = process_prior(problem.prior)
    assert dim == 64
    theta = prior.sample((5,))
    assert theta.shape == (5, 64) and theta.dtype == torch.float32
    assert prior.log_prob(theta).shape == (5,)


def test_default_problem_is_informative_but_not_trivial():
    posterior = GaussianRandomFieldProblem(32).exact_posterior(torch.zeros(1024))
    assert 0.3 < posterior.pixel_sd < 0.4  # prior pixel sd is 1


@pytest.fixture(scope="module")
def metric_setup():
    problem = GaussianRandomFieldProblem(16)
    _, x_o = problem.observation(seed=0)
    posterior = problem.exact_posterior(x_o)
    samples = posterior.sample(2000, generator=torch.Generator().manual_seed(1))
    return problem, x_o, posterior, samples


def test_metrics_of_exact_samples_are_near_ideal(metric_setup):
    problem, x_o, _, samples = metric_setup
    m = field_posterior_metrics(samples, problem, x_o)
    assert m["num_samples"] == 2000
    assert m["mean_error_rms"] < 2 * m["mean_error_rms_exact"]
    assert m["mean_error_max"] < 6 * m["mean_error_rms_exact"]
    assert abs(m["sd_ratio_mean"] - 1) < 2 * m["sd_ratio_mc_sd"]
    assert 1 - 5 * m["sd_ratio_mc_sd"] < m["sd_ratio_min"] <= m["sd_ratio_max"]
    assert m["sd_ratio_max"] < 1 + 5 * m["sd_ratio_mc_sd"]
    for key in ("leading_variance_ratio", "trailing_variance_ratio"):
        assert abs(m[key] - 1) < 4 * m["variance_ratio_mc_sd"], key
    assert m["spectrum_samples"].shape == m["spectrum_exact"].shape
    assert m["spectrum_wavenumbers"].shape == m["spectrum_exact"].shape
    assert m["spectrum_max_abs_log_ratio"] < 0.1
    assert abs(m["coverage_50"] - 0.5) < 0.02
    assert abs(m["coverage_90"] - 0.9) < 0.02


def test_metrics_flag_wrong_samples(metric_setup):
    problem, x_o, posterior, samples = metric_setup
    mean = posterior.mean.to(samples)
    sd = posterior.pixel_sd

    generator = torch.Generator().manual_seed(2)
    prior_samples = problem.sample_prior(2000, generator=generator)
    prior = field_posterior_metrics(prior_samples, problem, x_o)
    assert prior["mean_error_rms"] > 1 and prior["sd_ratio_mean"] > 1.5
    assert prior["leading_variance_ratio"] > 1.2

    shifted = field_posterior_metrics(samples + 0.5 * sd, problem, x_o)
    assert abs(shifted["mean_error_rms"] - 0.5) < 0.05
    assert shifted["coverage_50"] < 0.47 and shifted["coverage_90"] < 0.87

    wide = field_posterior_metrics(mean + 1.5 * (samples - mean), problem, x_o)
    assert abs(wide["sd_ratio_mean"] - 1.5) < 0.05
    assert wide["leading_variance_ratio"] > 2 and wide["trailing_variance_ratio"] > 2
    assert wide["coverage_50"] > 0.6 and wide["coverage_90"] > 0.96

    # drop the small scales: the trailing (high-k) directions lose their variance
    hat = fourier(samples - mean, problem.N)
    low_pass = (problem.transfer > 0.5).to(hat.real)
    smooth = mean + torch.fft.ifft2(hat * low_pass, norm="ortho").real.reshape(
        samples.shape
    ).to(samples)
    smooth_m = field_posterior_metrics(smooth, problem, x_o)
    assert smooth_m["trailing_variance_ratio"] < 0.1
    assert smooth_m["spectrum_max_abs_log_ratio"] > 1


def test_parameters_problem_prior_shapes_and_seeds():
    problem = FieldParametersProblem(16)
    theta = problem.prior.sample((500,))
    assert theta.shape == (500, 2)
    assert (theta >= problem.low).all() and (theta <= problem.high).all()
    assert problem.low.tolist() == [-1.0, 1.5] and problem.high.tolist() == [1.0, 4.5]
    x = problem.simulate(theta[:3], generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 16, 16) and x.dtype == torch.float32
    torch.testing.assert_close(
        x, problem.simulate(theta[:3], generator=torch.Generator().manual_seed(0))
    )
    t1, x1 = problem.test_set(4, seed=2)
    t2, x2 = problem.test_set(4, seed=2)
    torch.testing.assert_close(t1, t2)
    torch.testing.assert_close(x1, x2)
    assert x1.shape == (4, 1, 16, 16)


def test_parameters_problem_draws_the_spectrum_of_theta():
    problem = FieldParametersProblem(16, noise_sd=0.0)
    theta = torch.tensor([[0.5, 2.0], [-0.5, 4.0]]).repeat_interleave(200, 0)
    x = problem.simulate(theta, generator=torch.Generator().manual_seed(0))
    x = x.reshape(2, 200, -1).to(F64)
    pixel_sd = x.pow(2).mean(dim=(1, 2)).sqrt()
    torch.testing.assert_close(
        pixel_sd, torch.tensor([0.5, -0.5], dtype=F64).exp(), rtol=0.1, atol=0
    )
    power = radial_average((fourier(x, 16).abs() ** 2).mean(1))
    expected = radial_average(problem.spectrum(theta[[0, 200]]))
    assert ((power / expected).log().abs() < 0.3).all()


def test_nrmse():
    problem = FieldParametersProblem(8)
    theta, _ = problem.test_set(2000, seed=0)
    assert problem.nrmse(theta, theta).tolist() == [0.0, 0.0]
    guess = ((problem.low + problem.high) / 2).expand_as(theta)
    torch.testing.assert_close(
        problem.nrmse(guess, theta), torch.full((2,), 12**-0.5), atol=0.02, rtol=0
    )
    with pytest.raises(ValueError, match="shape"):
        nrmse(theta[:, :1], theta, problem.low, problem.high)


@pytest.mark.parametrize(
    "build",
    [
        lambda: GaussianRandomFieldProblem(1),
        lambda: GaussianRandomFieldProblem(2.5),
        lambda: GaussianRandomFieldProblem(8, noise_sd=0.0),
        lambda: GaussianRandomFieldProblem(8, noise_sd=-1.0),
        lambda: GaussianRandomFieldProblem(8, k0=0.0),
        lambda: GaussianRandomFieldProblem(8, blur_width=-1.0),
        lambda: FieldParametersProblem(1),
        lambda: FieldParametersProblem(8, noise_sd=-0.1),
    ],
)
def test_bad_problem_arguments_raise(build):
    with pytest.raises(ValueError):
        build()


def test_bad_inputs_raise():
    problem = GaussianRandomFieldProblem(8)
    x_o = problem.simulate(problem.sample_prior(1))
    samples = problem.exact_posterior(x_o).sample(10)
    with pytest.raises(ValueError, match="samples must have shape"):
        field_posterior_metrics(samples[:, :-1], problem, x_o)
    with pytest.raises(ValueError, match="samples must have shape"):
        field_posterior_metrics(samples[:1], problem, x_o)
    with pytest.raises(ValueError, match="x_o"):
        problem.exact_posterior(torch.zeros(2, 64))
    with pytest.raises(ValueError, match="theta"):
        problem.simulate(torch.zeros(3, 63))
    with pytest.raises(ValueError, match="theta"):
        FieldParametersProblem(8).simulate(torch.zeros(3, 3))
