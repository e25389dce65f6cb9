"""``Solver``: a sampler or ODE solver and its options as one value."""

from __future__ import annotations

import pickle

import pytest
import torch

from sbi_diffusion import DiffusionNPE
from sbi_diffusion.samplers import Solver, solver_call


@pytest.fixture(scope="module")
def posterior(linear_gaussian):
    torch.manual_seed(0)
    theta = linear_gaussian.prior.sample((300,))
    x = linear_gaussian.simulate(theta)
    inference = DiffusionNPE(linear_gaussian.prior, show_progress_bars=False)
    inference.append_simulations(theta, x).train(max_num_epochs=3, seed=0)
    return inference.build_posterior()


def test_solver_holds_name_and_options():
    solver = Solver("heun", steps=18, time_shift=0.5)
    assert solver.name == "heun"
    assert dict(solver.options) == {"steps": 18, "time_shift": 0.5}
    assert solver.as_dict() == {"name": "heun", "steps": 18, "time_shift": 0.5}
    assert repr(solver) == "Solver('heun', steps=18, time_shift=0.5)"
    assert solver.with_options(steps=30) == Solver("heun", steps=30, time_shift=0.5)
    assert pickle.loads(pickle.dumps(solver)) == solver
    with pytest.raises(TypeError):
        solver.options["steps"] = 3  # read-only


def test_solver_call():
    with pytest.raises(ValueError, match="name"):
        Solver("")
    assert solver_call(Solver("ddim", eta=1.0), {"steps": 5}) == (
        "ddim",
        {"eta": 1.0, "steps": 5},
    )
    assert solver_call("heun", {}) == ("heun", {})


def test_sample_with_a_solver_equals_keyword_options(posterior, linear_gaussian):
    x_o = linear_gaussian.simulate(linear_gaussian.prior_mean[None])
    loose = posterior.sample(
        (50,),
        x=x_o,
        sampler="ddim",
        steps=12,
        eta=1.0,
        generator=torch.Generator().manual_seed(3),
        show_progress_bars=False,
    )
    together = posterior.sample(
        (50,),
        x=x_o,
        sampler=Solver("ddim", steps=12, eta=1.0),
        generator=torch.Generator().manual_seed(3),
        show_progress_bars=False,
    )
    assert torch.equal(loose, together)


def test_log_prob_with_a_solver_equals_keyword_options(posterior, linear_gaussian):
    x_o = linear_gaussian.simulate(linear_gaussian.prior_mean[None])
    theta = linear_gaussian.prior.sample((20,))
    loose = posterior.log_prob(theta, x=x_o, solver="heun", steps=8)
    together = posterior.log_prob(theta, x=x_o, solver=Solver("heun", steps=8))
    assert torch.equal(loose, together)
    with pytest.raises(ValueError, match="eta"):
        posterior.log_prob(theta, x=x_o, solver=Solver("heun", eta=1.0))


def test_build_posterior_takes_a_solver(posterior):
    inference_posterior = type(posterior)(
        posterior.estimator, posterior.prior, sampler=Solver("heun", steps=7)
    )
    assert inference_posterior.sampler == "heun"
    assert inference_posterior.sampler_options == {"steps": 7}
