"""Parsing and routing of method specs."""

import pytest

from sbi_diffusion.benchmark import methods
from sbi_diffusion.benchmark.tasks import load_task

pytest.importorskip("sbibm")


def test_parse_values() -> None:
    spec = methods.parse("npe:training_batch_size=64,learning_rate=1e-3,x_flag=true")
    assert spec.name == "npe"
    assert spec.options == {
        "training_batch_size": 64,
        "learning_rate": 1e-3,
        "x_flag": True,
    }
    assert methods.parse_value("heun") == "heun"
    assert methods.parse_value("none") is None
    assert methods.parse(spec.to_string()) == spec
    assert spec.label.startswith("npe[")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("magic", "Unknown method"),
        ("", "empty"),
        ("npe:batch", "malformed"),
        ("npe:a=1,a=2", "twice"),
    ],
)
def test_parse_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        methods.parse(spec)


def test_routing_sbi_baselines() -> None:
    routed = methods.route_options(
        methods.parse("nle:mcmc_method=slice_np,num_chains=4,training_batch_size=50")
    )
    assert routed.posterior == {"mcmc_method": "slice_np", "num_chains": 4}
    assert routed.train == {"training_batch_size": 50}
    routed = methods.route_options(methods.parse("flow_matching:time_shift=0.5"))
    assert routed.sample == {"time_shift": 0.5} and not routed.init
    routed = methods.route_options(methods.parse("npse:sde_type=vp,steps=50"))
    assert routed.init == {"sde_type": "vp"}
    assert routed.sample == {"steps": 50}


def test_unknown_and_reserved_options() -> None:
    with pytest.raises(ValueError, match="Unknown option 'foo'"):
        methods.route_options(methods.parse("npe:foo=1"))
    with pytest.raises(ValueError, match="set by the benchmark"):
        methods.route_options(methods.parse("npe:device=cuda"))


def test_routing_our_estimators() -> None:
    try:
        routed = methods.route_options(
            methods.parse(
                "diffusion:schedule=edm,sampler=heun,steps=30,max_num_epochs=3"
            )
        )
    except methods.MethodUnavailableError:
        pytest.skip("DiffusionNPE is not available")
    assert routed.sample == {"sampler": "heun", "steps": 30}
    assert routed.train == {"max_num_epochs": 3}
    assert routed.init == {"schedule": "edm"}
    routed = methods.route_options(
        methods.parse("diffusion:net_kwargs.hidden=32,net_kwargs.layers=2")
    )
    assert routed.init == {"net_kwargs": {"hidden": 32, "layers": 2}}


def test_missing_class_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = methods.MethodDefinition("ghost", "sbi_diffusion", "GhostNPE", "x")
    monkeypatch.setitem(methods.METHODS, "ghost", missing)
    with pytest.raises(ValueError, match="not available"):
        methods.route_options(methods.parse("ghost"))


def test_constructor_validation_runs_early() -> None:
    prior = load_task("two_moons").prior
    spec = methods.parse("diffusion:schedule=bogus")
    try:
        methods.route_options(spec)
    except methods.MethodUnavailableError:
        pytest.skip("DiffusionNPE is not available")
    with pytest.raises(ValueError, match="bogus"):
        methods.build_inference(spec, prior, "cpu")


def test_routing_an_ensemble_size() -> None:
    routed = methods.route_options(
        methods.parse("flow_matching:ensemble_size=3,max_num_steps=50,steps=8")
    )
    assert routed.ensemble_size == 3
    assert routed.train == {"max_num_steps": 50}
    assert routed.sample == {"steps": 8}
    assert methods.route_options(methods.parse("diffusion")).ensemble_size == 1
    for bad in ("0", "2.5", "true"):
        with pytest.raises(ValueError, match="must be a positive integer"):
            methods.route_options(methods.parse(f"diffusion:ensemble_size={bad}"))
    # only trainers with train_ensemble() take it
    with pytest.raises(ValueError, match="Unknown option 'ensemble_size'"):
        methods.route_options(methods.parse("consistency:ensemble_size=2"))


def test_routing_a_distillation_teacher() -> None:
    try:
        routed = methods.route_options(
            methods.parse(
                "consistency:teacher=diffusion,num_scales=10,max_num_epochs=2,steps=1"
            )
        )
    except methods.MethodUnavailableError:
        pytest.skip("ConsistencyNPE is not available")
    assert routed.teacher == methods.MethodSpec("diffusion")
    assert routed.train_method == "distill"
    # distill() takes num_scales, so it is a training option here
    assert routed.train == {"num_scales": 10, "max_num_epochs": 2}
    assert routed.sample == {"steps": 1}
    assert methods.route_options(methods.parse("consistency")).teacher is None
    with pytest.raises(ValueError, match="teacher='npe'.*diffusion, flow_matching"):
        methods.route_options(methods.parse("consistency:teacher=npe"))
    # a consistency-training option is not an option of distillation
    with pytest.raises(ValueError, match="Unknown option 'initial_num_scales'"):
        methods.route_options(
            methods.parse("consistency:teacher=diffusion,initial_num_scales=5")
        )
    with pytest.raises(ValueError, match="Unknown option 'teacher'"):
        methods.route_options(methods.parse("diffusion:teacher=diffusion"))


def test_joint_posterior_options_share_the_trained_model(tmp_path) -> None:
    from sbi_diffusion.benchmark import runner

    spec = methods.parse("joint:posterior_method=likelihood_mcmc,num_chains=4")
    try:
        routed = methods.route_options(spec)
    except methods.MethodUnavailableError:
        pytest.skip("JointDiffusion is not available")
    assert routed.posterior == {"posterior_method": "likelihood_mcmc", "num_chains": 4}
    assert routed.init == {} and routed.train == {}
    plain = runner.model_cache_path(
        tmp_path, "two_moons", methods.parse("joint"), 1000, 0, "cpu"
    )
    assert runner.model_cache_path(tmp_path, "two_moons", spec, 1000, 0, "cpu") == plain


@pytest.mark.parametrize(
    ("spec", "attribute", "call"),
    [
        # sbi NLE: likelihood_estimator.log_prob(x, condition=theta)
        ("nle", "likelihood_estimator", lambda f, x, th: f(x, condition=th)),
        # joint model, NLE-style: likelihood.log_prob(x, theta=theta)
        (
            "joint:posterior_method=likelihood_mcmc",
            "likelihood",
            lambda f, x, th: f(x, theta=th),
        ),
    ],
)
def test_likelihood_evaluations_are_counted(spec, attribute, call) -> None:
    import types

    import torch

    calls = []

    class Likelihood:
        def log_prob(self, x, *args, **kwargs):
            calls.append(x.shape[0])
            return torch.zeros(x.shape[0])

    likelihood = Likelihood()
    potential = types.SimpleNamespace(**{attribute: likelihood})
    posterior = types.SimpleNamespace(potential_fn=potential)
    parsed = methods.parse(spec)
    with methods.count_network_evaluations(parsed, None, posterior) as counter:
        for batch in (20, 5):
            call(likelihood.log_prob, torch.zeros(batch, 2), torch.zeros(batch, 3))
    assert counter["rows"] == 25.0
    assert calls == [20, 5]
    # the original method is restored afterwards
    call(likelihood.log_prob, torch.zeros(4, 2), torch.zeros(4, 3))
    assert counter["rows"] == 25.0 and calls[-1] == 4
