"""Write the tutorial notebooks from the cells below (run: python make_notebooks.py).

Keeping the cells in a script keeps the notebooks reviewable in diffs; the tests
execute the written notebooks.
"""

from pathlib import Path
from textwrap import dedent

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

QUICKSTART = [
    new_markdown_cell(
        "# Quickstart: a diffusion posterior for two moons\n\n"
        "`DiffusionNPE` is a drop-in replacement for `sbi.inference.NPE`: "
        "simulate, `append_simulations`, `train`, `build_posterior`, then sample "
        "and evaluate densities. This notebook trains on the sbibm *two moons* "
        "task, compares the samples to the reference posterior with C2ST, plots "
        "them, evaluates `log_prob` through the probability-flow ODE and runs a "
        "quick simulation-based calibration (SBC) check.\n\n"
        "Set the environment variable `SBI_DIFFUSION_TUTORIAL_SIMULATIONS` "
        "to change the simulation budget (the tests run it with 1,000). The "
        "cells assert what they show, so a broken claim fails the tests."
    ),
    new_code_cell(
        "import os\n"
        "import time\n\n"
        "import matplotlib.pyplot as plt\n"
        "import sbibm\n"
        "import torch\n"
        "from sbi.analysis import pairplot\n"
        "from sbi.diagnostics import check_sbc, run_sbc\n"
        "from sbibm.metrics import c2st\n\n"
        "from sbi_diffusion import DiffusionNPE\n\n"
        "torch.manual_seed(0)\n"
        "num_simulations = int(os.environ.get("
        "'SBI_DIFFUSION_TUTORIAL_SIMULATIONS', 10_000))"
    ),
    new_markdown_cell(
        "## Simulate\n\nThe prior is uniform on $[-1, 1]^2$; the simulator "
        "returns a noisy point on one of two crescent moons."
    ),
    new_code_cell(
        "task = sbibm.get_task('two_moons')\n"
        "prior = task.get_prior_dist()\n"
        "simulator = task.get_simulator()\n"
        "theta = prior.sample((num_simulations,))\n"
        "x = simulator(theta)\n"
        "theta.shape, x.shape"
    ),
    new_markdown_cell(
        "## Train\n\nThe defaults: EDM noise levels on a variance-preserving path, "
        "F-prediction with EDM preconditioning and weighting, an EMA of the "
        "weights, early stopping on a fixed-time validation loss. The network "
        "and the number of optimiser steps grow with the number of simulations "
        "(`inference.resolved_training` says what they were)."
    ),
    new_code_cell(
        "inference = DiffusionNPE(prior, show_progress_bars=False)\n"
        "start = time.time()\n"
        "inference.append_simulations(theta, x).train(seed=0)\n"
        "print(f'trained in {time.time() - start:.0f} s')\n"
        "print(inference.resolved_training)\n"
        "posterior = inference.build_posterior()\n"
        "posterior"
    ),
    new_markdown_cell(
        "## Sample and compare with the reference posterior\n\n"
        "C2ST is the accuracy of a classifier telling our samples from reference "
        "samples: 0.5 is perfect, 1.0 total failure."
    ),
    new_code_cell(
        "x_o = task.get_observation(1)\n"
        "reference = task.get_reference_posterior_samples(1)\n"
        "start = time.time()\n"
        "samples = posterior.sample((10_000,), x=x_o, show_progress_bars=False)\n"
        "print(f'10,000 samples in {time.time() - start:.2f} s, '\n"
        "      f'{posterior.last_nfe:.0f} network evaluations per sample')\n"
        "score = float(c2st(reference, samples)[0])\n"
        "print('C2ST:', round(score, 3))\n"
        "# measured: about .53 at 10^4 simulations and .66 at 10^3\n"
        "assert score < (0.6 if num_simulations >= 10_000 else 0.8), score"
    ),
    new_code_cell(
        "fig, axes = pairplot([samples[:2000], reference[:2000]], "
        "limits=[[-1, 1], [-1, 1]], figsize=(5, 5),\n"
        "                     labels=[r'$\\theta_1$', r'$\\theta_2$'])\n"
        "fig.legend(handles=[plt.Line2D([], [], color='C0', label='DiffusionNPE'),\n"
        "                    plt.Line2D([], [], color='C1', label='reference')],\n"
        "           loc='upper right', frameon=False)\n"
        "plt.show()"
    ),
    new_markdown_cell(
        "## Other samplers\n\nAny registered sampler can be chosen at sampling "
        "time; `last_nfe` reports its cost."
    ),
    new_code_cell(
        "for sampler, steps in [('heun', 10), ('dpm++2m', 20), "
        "('euler_maruyama', 200)]:\n"
        "    s = posterior.sample((2000,), x=x_o, sampler=sampler, steps=steps,\n"
        "                         show_progress_bars=False)\n"
        "    print(sampler, steps, 'NFE', posterior.last_nfe)"
    ),
    new_markdown_cell(
        "## Log densities\n\n`log_prob` integrates the probability-flow ODE with "
        "the exact divergence (or Hutchinson's estimate for many parameters)."
    ),
    new_code_cell("log_p = posterior.log_prob(samples[:100], x=x_o)\nlog_p[:5]"),
    new_markdown_cell(
        "## Simulation-based calibration\n\n"
        "For each of many `(theta, x)` pairs from the prior and simulator, SBC "
        "ranks the true `theta` among posterior samples given `x`. A calibrated "
        "posterior makes these ranks uniform, per parameter. `ks_pvals` are the "
        "p-values of a Kolmogorov-Smirnov test of that uniformity, one per "
        "parameter: a small p-value (say below 0.05) is evidence of "
        "miscalibration (too narrow, too wide or shifted); a large one means "
        "this check found none. With 100 tests the check is rough; use a few "
        "hundred for a real one."
    ),
    new_code_cell(
        "thetas = prior.sample((100,))\n"
        "xs = simulator(thetas)\n"
        "ranks, dap = run_sbc(thetas, xs, posterior, num_posterior_samples=100,\n"
        "                     show_progress_bar=False)\n"
        "checks = check_sbc(ranks, thetas, dap, num_posterior_samples=100)\n"
        "ks_pvals = checks['ks_pvals']\n"
        "print('KS p-values per parameter:', ks_pvals)\n"
        "assert (ks_pvals > 1e-3).all(), ks_pvals"
    ),
]


def _md(text: str, budget_note: bool = False):
    note = BUDGET_NOTE if budget_note else ""
    return new_markdown_cell(dedent(text).strip() + note)


def _code(*parts: str):
    """A code cell of ``parts``, each dedented, two blank lines apart."""
    return new_code_cell("\n\n\n".join(dedent(part).strip() for part in parts))


MOMENT_HELPERS = r"""
def fmt(v):
    return "(" + ", ".join(f"{float(a):+.3f}" for a in v) + ")"


def compare(name, samples, mean, cov):
    # prints the sample moments next to the exact ones; returns the errors: of
    # the means in exact standard deviations, of the standard deviations relative
    std = cov.diagonal().sqrt()
    mean_error = float(((samples.mean(0) - mean) / std).abs().max())
    std_error = float((samples.std(0) / std - 1).abs().max())
    print(
        f"{name:26s} mean {fmt(samples.mean(0))} vs {fmt(mean)}   "
        f"std {fmt(samples.std(0))} vs {fmt(std)}   "
        f"errors {mean_error:.2f} sd, {std_error:.0%}"
    )
    return mean_error, std_error


def within(errors, bounds):
    # errors and bounds: (of the means in sd, of the standard deviations relative)
    return errors[0] < bounds[0] and errors[1] < bounds[1]
"""


BUDGET_NOTE = """

Set the environment variable `SBI_DIFFUSION_TUTORIAL_SIMULATIONS` to change
the simulation budget (the tests run it small, with fewer samples; the
numbers are then rougher)."""


def _setup_code(imports: str, default_budget: str, small_epochs: int | None, rest: str):
    """The first code cell: imports, the simulation budget, then ``rest``.

    Args:
        imports: The import lines.
        default_budget: The number of simulations of a full run.
        small_epochs: The cap on training epochs at a small budget (below 5,000
            simulations), as ``max_num_epochs``; None defines no cap.
        rest: The code after the budget.
    """
    lines = [
        "torch.manual_seed(0)",
        "budget = os.environ.get("
        f'"SBI_DIFFUSION_TUTORIAL_SIMULATIONS", {default_budget})',
        "num_simulations = int(budget)",
        "small = num_simulations < 5000",
        f"max_num_epochs = {small_epochs} if small else None",
        "num_samples = 1000 if small else 5000",
    ]
    if small_epochs is None:
        del lines[4]
    budget = "\n".join(lines)
    parts = (dedent(imports).strip(), budget.strip(), dedent(rest).strip())
    return new_code_cell("\n\n".join(p for p in parts if p))


IID_AND_GUIDANCE = [
    _md(
        r"""
        # I.i.d. trials and guidance without retraining

        A diffusion posterior learns the score $\nabla_\theta \log p_t(\theta \mid x)$
        at every noise level $t$. Scores of products are sums of scores, so one
        model trained on single simulations can be reused at sampling time:

        * **i.i.d. trials**: the posterior given $N$ independent observations
          $x_1, \dots, x_N$ is composed from the single-trial model, without
          training on sets of trials;
        * **guidance**: a new prior, a constraint on $\theta$, a tempered
          likelihood or classifier-free guidance change the score while sampling.

        We use a linear-Gaussian problem where every target has a closed form, so
        each result is printed next to the exact answer.
        """,
        budget_note=True,
    ),
    _code(
        r"""
        import os
        import time

        import matplotlib.pyplot as plt
        import torch
        from matplotlib.patches import Ellipse
        from torch.distributions import MultivariateNormal, Normal

        from sbi_diffusion import (
            ClassifierFreeGuidance,
            ConstraintGuidance,
            DiffusionNPE,
            LikelihoodTemperature,
            PriorSwap,
        )

        torch.manual_seed(0)
        budget = os.environ.get("SBI_DIFFUSION_TUTORIAL_SIMULATIONS", 5000)
        num_simulations = int(budget)
        small = num_simulations < 5000
        num_samples = 100 if small else 500  # per i.i.d. posterior (the costly part)
        num_guided = 500 if small else 2000  # per single-trial guided posterior
        """
    ),
    _md(
        r"""
        ## A problem with a closed-form posterior

        $$\theta \sim \mathcal N(\mu_0, \Sigma_0), \quad \mu_0 = 0, \; \Sigma_0 = I_2,
        \qquad x_i \mid \theta \sim \mathcal N(\theta, s^2 I_2), \quad s = 0.5.$$

        For $N$ i.i.d. trials, and with the likelihood raised to a power $\gamma$
        ($\gamma = 1$ is the ordinary posterior; other values appear in the guidance
        section), the posterior is $\mathcal N(\mu_N, \Lambda_N^{-1})$ with

        $$\Lambda_N = \Sigma_0^{-1} + \gamma N s^{-2} I, \qquad
        \mu_N = \Lambda_N^{-1}\Big(\Sigma_0^{-1}\mu_0
        + \gamma s^{-2} \sum_{i=1}^N x_i\Big).$$

        Every trial adds $s^{-2} = 4$ to the precision: the posterior standard
        deviation is $1/\sqrt{5}$ for one trial and $1/\sqrt{41}$ for ten.
        `analytic_posterior` below computes $\mu_N$ and $\Lambda_N^{-1}$, and
        `compare` prints sample moments next to them, with two errors: the
        largest error of a mean in exact standard deviations ("sd") and the
        largest relative error of a standard deviation. The cells assert bounds
        on these errors, so a broken claim fails the tests; the bounds are
        looser at the small test budget (fewer simulations and samples).
        """
    ),
    _code(
        r"""
        dim, noise_std = 2, 0.5
        prior = MultivariateNormal(torch.zeros(dim), torch.eye(dim))


        def simulator(theta):
            return theta + noise_std * torch.randn_like(theta)


        def analytic_posterior(x, prior_mean=None, prior_cov=None, power=1.0):
            # x: (N, 2) trials; returns the mean and covariance of the posterior
            prior_mean = torch.zeros(dim) if prior_mean is None else prior_mean
            prior_cov = torch.eye(dim) if prior_cov is None else prior_cov
            prior_precision = torch.linalg.inv(prior_cov)
            likelihood_precision = torch.eye(dim) / noise_std**2
            precision = prior_precision + power * x.shape[0] * likelihood_precision
            cov = torch.linalg.inv(precision)
            mean = cov @ (
                prior_precision @ prior_mean + power * likelihood_precision @ x.sum(0)
            )
            return mean, cov
        """,
        MOMENT_HELPERS,
    ),
    _md(
        r"""
        ## Train on single trials

        Training is ordinary NPE training on pairs $(\theta, x)$, one trial each.
        `condition_dropout=0.1` replaces the condition by a learned "no
        observation" token in 10% of the training examples, so the same network
        also learns the unconditional (prior) score; classifier-free guidance below
        needs it. The i.i.d. methods and the other transforms use the analytic
        score of this Gaussian prior.
        """
    ),
    _code(
        r"""
        theta = prior.sample((num_simulations,))
        x = simulator(theta)
        inference = DiffusionNPE(prior, condition_dropout=0.1, show_progress_bars=False)
        start = time.time()
        inference.append_simulations(theta, x).train()
        print(f"{num_simulations} simulations, trained in {time.time() - start:.0f} s")
        posterior = inference.build_posterior()
        """
    ),
    _md(
        r"""
        ## The posterior of $N$ i.i.d. trials

        Bayes' rule factorises over the trials,

        $$p(\theta \mid x_{1:N}) \propto p(\theta)^{1-N}
        \prod_{i=1}^N p(\theta \mid x_i),$$

        but the diffused (noisy) posterior does not. `sbi_diffusion` combines the
        single-trial denoisers $\hat\theta_i(\theta_t, t) = E[\theta_0 \mid
        \theta_t, x_i]$ and the prior's $\hat\theta_{\text{prior}}$, weighted by
        their denoising precisions $P_i = \mathrm{Cov}[\theta_0 \mid \theta_t,
        x_i]^{-1}$ (Linhart et al. 2024):

        $$\Lambda = \sum_{i=1}^N P_i + (1 - N) P_{\text{prior}}, \qquad
        \hat\theta = \Lambda^{-1}\Big(\sum_{i=1}^N P_i \hat\theta_i
        + (1 - N) P_{\text{prior}} \hat\theta_{\text{prior}}\Big),$$

        exact when all factors are Gaussian, as here. Pass the trials as the rows
        of `x`: `posterior.sample((n,), x=x_trials)` with `x_trials` of shape
        `(N, 2)`. The default method, `gauss`, estimates each $P_i$ from the
        covariance of samples of $p(\theta \mid x_i)$ drawn once; its default
        sampler is Euler-Maruyama with 500 steps, whose noise keeps the errors
        of the Gaussian approximation from piling up on non-Gaussian posteriors
        (on near-Gaussian ones like this, `sampler="dopri5"`, the adaptive ODE
        solver, is often closer).
        `posterior.last_nfe` counts network evaluations per sample, all trials
        included, and `posterior.last_iid_info` records the composition used.

        Look for: ten trials shrink the posterior (the analytic standard
        deviation by $\sqrt{41/5} = 2.9$), and the sample means and standard
        deviations come close to the analytic ones. Asserted: the sample
        standard deviations shrink by more than 2, and for one and for ten
        trials the means are within 0.3 sd and the standard deviations within
        10% of the analytic ones (0.6 sd and 25% at the test budget, with 100
        samples). The full run gives 0.09 sd and 8% for one trial, 0.19 sd and
        3% for ten.
        """
    ),
    _code(
        r"""
        num_trials = 10
        theta_true = torch.tensor([0.2, -1.0])
        torch.manual_seed(1)  # the same trials whatever the training consumed
        x_trials = simulator(theta_true.expand(num_trials, dim))  # one trial per row

        one_trial = posterior.sample(
            (num_samples,), x=x_trials[:1], show_progress_bars=False
        )
        iid_bounds = (0.6, 0.25) if small else (0.3, 0.1)  # (sd, relative)
        errors = compare("1 trial", one_trial, *analytic_posterior(x_trials[:1]))
        assert within(errors, iid_bounds), errors

        start = time.time()
        iid_samples = posterior.sample(
            (num_samples,), x=x_trials, show_progress_bars=False
        )
        reference = analytic_posterior(x_trials)
        gauss_errors = compare(f"{num_trials} trials, gauss", iid_samples, *reference)
        gauss_nfe = posterior.last_nfe
        print(f"{time.time() - start:.1f} s, {gauss_nfe:.0f} NFE per sample")
        print(posterior.last_iid_info)
        print("sample covariance:\n", torch.cov(iid_samples.T))
        print("analytic covariance:\n", reference[1])
        assert within(gauss_errors, iid_bounds), gauss_errors
        shrinkage = one_trial.std(0) / iid_samples.std(0)
        print("standard deviations shrink by", fmt(shrinkage))
        assert (shrinkage > 2).all(), shrinkage
        """
    ),
    _md(
        r"""
        ### Other composition methods

        * `iid_method="jac"` takes $P_i$ from the Jacobian of the network, by
          Tweedie's second-order formula $\mathrm{Cov}[\theta_0 \mid \theta_t] =
          (\sigma_t^2 / \alpha_t)\, \partial\hat\theta / \partial\theta_t$: nothing
          is sampled in advance, but every step costs one backward pass per
          parameter dimension and trial. Here with 30 Heun steps.
        * `iid_method="factorized_bridge"` (Geffner et al. 2023) adds the trials'
          scores and an annealed, undiffused prior score,
          $s = \sum_i s_i + (1 - N)\,\lambda(t)\,\nabla \log p(\theta_t)$ with
          $\lambda$ falling from 1 to 0. It is meant for stochastic samplers (here
          200 Euler-Maruyama steps).

        `iid_method="factorized"` (the plain sum of diffused scores) also exists.
        Compare the cost (NFE per sample) and how close the standard deviations
        come to the analytic ones. Asserted: both cost fewer network evaluations
        per sample than `gauss` here, both come out further from the analytic
        standard deviations than `gauss` (too narrow, in the full run by 18%
        for `jac` and 29% for `factorized_bridge`, against 3% for `gauss`), and
        their means are within 0.4 sd and their standard deviations within 40%
        (1 sd and 50% at the test budget).
        """
    ),
    _code(
        r"""
        methods = {
            "jac, heun 30": dict(iid_method="jac", sampler="heun", steps=30),
            "factorized_bridge, EM 200": dict(
                iid_method="factorized_bridge", sampler="euler_maruyama", steps=200
            ),
        }
        loose_bounds = (1.0, 0.5) if small else (0.4, 0.4)
        for name, options in methods.items():
            start = time.time()
            samples = posterior.sample(
                (num_samples,), x=x_trials, show_progress_bars=False, **options
            )
            errors = compare(name, samples, *analytic_posterior(x_trials))
            print(f"{'':26s} {time.time() - start:.1f} s, {posterior.last_nfe:.0f} NFE "
                  f"per sample, {posterior.last_iid_info['method']}")
            assert within(errors, loose_bounds), errors
            assert errors[1] > gauss_errors[1], (errors, gauss_errors)
            assert posterior.last_nfe < gauss_nfe, (posterior.last_nfe, gauss_nfe)
        """
    ),
    _md(
        r"""
        ### No final denoising step for i.i.d. trials

        For one observation the samplers end with a denoising step,
        $\theta = \hat\theta(\theta_{t_{\min}}, t_{\min})$. For i.i.d. trials they
        stop at $\theta_{t_{\min}}$ instead: the composed $\hat\theta$ at $t_{\min}$
        adds up the $N$ single-trial denoisers and therefore their $N$ estimation
        errors, while $\theta_{t_{\min}}$ differs from a clean sample only by noise
        of scale $\sigma(t_{\min})$ (0.002 on the default schedule). The attribute
        `posterior.iid_final_denoise` (False) sets this; the sampler option
        `final_denoise=True` overrides it for one call. On this easy problem the
        two agree closely; in the i.i.d. benchmark (`benchmarks/iid`) leaving the
        step out improved every composition method at ten trials. (GAUSS's
        per-trial covariances are cached, so this call only samples.) Asserted:
        both meet the bounds of the ten-trial cell above (the full run gives
        0.22 sd and 6% with the step, 0.19 sd and 3% without).
        """
    ),
    _code(
        r"""
        print("posterior.iid_final_denoise =", posterior.iid_final_denoise)
        assert posterior.iid_final_denoise is False
        with_step = posterior.sample(
            (num_samples,), x=x_trials, final_denoise=True, show_progress_bars=False
        )
        reference = analytic_posterior(x_trials)
        errors = compare("gauss, final denoise", with_step, *reference)
        compare("gauss, default", iid_samples, *reference)
        assert within(errors, iid_bounds), errors
        """
    ),
    _md(
        r"""
        One trial against ten: the samples, the analytic 2-standard-deviation
        ellipses (dashed), the trials $x_i$ and the true parameter.
        """
    ),
    _code(
        r"""
        def ellipse(ax, mean, cov, color):
            vals, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
            angle = torch.rad2deg(torch.atan2(vecs[1, -1], vecs[0, -1]))
            width, height = 4 * vals.flip(0).sqrt()  # 2 std on each side
            ax.add_patch(Ellipse(mean.tolist(), float(width), float(height),
                                 angle=float(angle), fill=False, ls="--", color=color))


        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(*one_trial.T, s=4, alpha=0.4, color="C0", label="1 trial")
        ax.scatter(*iid_samples.T, s=4, alpha=0.4, color="C1",
                   label=f"{num_trials} trials")
        ellipse(ax, *analytic_posterior(x_trials[:1]), "C0")
        ellipse(ax, *analytic_posterior(x_trials), "C1")
        ax.scatter(*x_trials.T, marker="x", color="gray", label="trials $x_i$")
        ax.scatter(*theta_true, marker="*", s=200, color="k", label=r"true $\theta$")
        ax.set(xlabel=r"$\theta_1$", ylabel=r"$\theta_2$", aspect="equal")
        ax.legend(loc="lower left", fontsize=8)
        plt.show()
        """
    ),
    _md(
        r"""
        ## Guidance: a new target at sampling time

        A score transform turns the trained denoiser into a new one; every
        score-based sampler takes the result, and nothing is retrained. Pass
        `guidance=` (one transform, or a list applied in order) to `sample`, or
        call `posterior.with_guidance(...)` for a copy of the posterior that
        applies the transforms in every call.

        `PriorSwap` *tilts* the posterior to
        $p(\theta \mid x)\, r(\theta)$. With a Gaussian approximation
        $\mathcal N(\hat\theta, C)$ of the denoising posterior and a second-order
        expansion of $\log r$ at $\hat\theta$ (gradient $g$, Hessian $-R$) the new
        denoiser is

        $$\hat\theta_{\text{new}} = \hat\theta + (C^{-1} + R)^{-1} g,$$

        exact when both factors are Gaussian. At small noise this adds
        $\nabla \log r$ to the score; at large noise the correction fades with
        $C$. We guide the posterior of the first trial alone, $x_o = x_1$.

        ### (a) A new prior

        Train under one prior, sample under another: $r = p_{\text{new}} /
        p_{\text{train}}$. The new prior is $\mathcal N((1, 1), 0.25\, I)$; its
        analytic posterior is the formula above with $\mu_0, \Sigma_0$ replaced.
        `PriorSwap` takes $C$ from a Gaussian fitted to samples of the unswapped
        posterior, $C = (P + \alpha_t^2/\sigma_t^2\, I)^{-1}$ with $P$ the
        samples' precision (drawn once per `sample` call; exact for Gaussian
        posteriors). `covariance="jacobian"` takes it from the network's Jacobian
        instead (one backward pass per dimension), which follows a non-Gaussian
        posterior locally but is only as good as the network's derivatives: on
        small models it overshoots. Look for: the swapped samples leave the
        posterior under the training prior for the new analytic one (the figure
        shows both, with their analytic 2-standard-deviation ellipses).
        Asserted, here and for the other single-trial targets below: means
        within 0.2 sd and standard deviations within 10% of the analytic ones
        (0.5 sd and 20% at the test budget), and the swapped mean nearer the
        new posterior's mean than the old one's. The full run gives 0.04 sd
        and under 1% without guidance, 0.07 sd and 7% with the new prior.
        """
    ),
    _code(
        r"""
        x_o = x_trials[:1]
        plain = posterior.sample((num_guided,), x=x_o, show_progress_bars=False)
        print(f"plain: {posterior.last_nfe:.0f} NFE per sample")
        guided_bounds = (0.5, 0.2) if small else (0.2, 0.1)  # (sd, relative)
        errors = compare("training prior", plain, *analytic_posterior(x_o))
        assert within(errors, guided_bounds), errors

        new_prior = MultivariateNormal(torch.tensor([1.0, 1.0]), 0.25 * torch.eye(dim))
        swap = PriorSwap(new_prior)
        swapped = posterior.sample(
            (num_guided,), x=x_o, guidance=swap, show_progress_bars=False
        )
        print(f"prior swap: {posterior.last_nfe:.0f} NFE per sample")
        new_reference = analytic_posterior(
            x_o, new_prior.mean, new_prior.covariance_matrix
        )
        errors = compare("new prior", swapped, *new_reference)
        assert within(errors, guided_bounds), errors
        to_new = (swapped.mean(0) - new_reference[0]).norm()
        to_old = (swapped.mean(0) - analytic_posterior(x_o)[0]).norm()
        assert to_new < to_old, (to_new, to_old)

        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(*plain.T, s=3, alpha=0.3, color="C0", label="training prior")
        ax.scatter(*swapped.T, s=3, alpha=0.3, color="C2", label="new prior")
        ellipse(ax, *analytic_posterior(x_o), "C0")
        ellipse(ax, *new_reference, "C2")
        ax.scatter(*new_prior.mean, marker="+", s=100, color="C2",
                   label="new prior mean")
        ax.scatter(*x_o[0], marker="x", color="gray", label="$x_o$")
        ax.set(xlabel=r"$\theta_1$", ylabel=r"$\theta_2$", aspect="equal")
        ax.legend(loc="lower right", fontsize=8)
        plt.show()
        """
    ),
    _md(
        r"""
        ### (b) A constraint

        `ConstraintGuidance(c)` steers samples into
        $\{\theta : c(\theta) \le 0\}$: it multiplies the denoising posterior
        $\mathcal N(\hat\theta, C)$ by the soft indicator
        $r(\theta) = 1 - w + w\,\Phi(-c(\theta) / \tau)$ (defaults: strength
        $w = 1$, $\tau = 10^{-3}$), with $c$ linearised at $\hat\theta$, and
        matches the mean (the probit update of expectation propagation). For a
        linear constraint and a Gaussian posterior this is the truncated
        posterior. We ask for $\theta_1 \ge 0$, i.e. $c(\theta) = -\theta_1$; any
        differentiable torch function works, and `interval_constraint` and
        `linear_constraint` in `sbi_diffusion.guidance` build the common ones.

        Two references for the truncated posterior: rejection of the unguided
        samples (exact for the model, and practical while the set keeps a fair
        share of the posterior), and, since this posterior has independent
        components, the analytic truncated mean of $\theta_1$,
        $m + s\,\varphi(a) / (1 - \Phi(a))$ with $a = -m/s$ ($m$, $s$ its
        posterior mean and standard deviation). The default `covariance=
        "isotropic"` uses the denoising covariance of a unit-variance prior,
        wider than this posterior's, so samples land somewhat too far inside;
        `covariance="gaussian"` takes $C$ from a Gaussian fitted to samples of
        the posterior, as `PriorSwap` does (exact for Gaussians). Look for: the
        fraction of guided samples inside the set, and how close their
        $\theta_1$ mean comes to the truncated posterior's with each
        covariance. Asserted: with either covariance at least 99% of the
        guided samples are inside (full run: 1.000 and 0.999); with `"gaussian"` the
        $\theta_1$ mean is within 0.05 of the analytic truncated mean (full
        run: 0.004), with `"isotropic"` above it and further away (full run:
        +0.10); the rejection samples' mean is within 0.04 of it (0.1 at the
        test budget, where a few hundred unguided samples leave under a
        hundred; full run: 0.001); the guided $\theta_2$ mean, which the
        constraint leaves alone, is within 0.1 of the analytic one (full run:
        0.04).
        """
    ),
    _code(
        r"""
        constraint = ConstraintGuidance(lambda theta: -theta[:, 0])
        constrained = posterior.sample(
            (num_guided,), x=x_o, guidance=constraint, show_progress_bars=False
        )
        exact_cov = ConstraintGuidance(
            lambda theta: -theta[:, 0], covariance="gaussian"
        )
        constrained_fit = posterior.sample(
            (num_guided,), x=x_o, guidance=exact_cov, show_progress_bars=False
        )
        inside = constraint.satisfied(constrained).float().mean()
        inside_fit = constraint.satisfied(constrained_fit).float().mean()
        print("fraction with theta_1 >= 0: plain",
              f"{constraint.satisfied(plain).float().mean():.3f}, guided",
              f"{inside:.3f} (gaussian {inside_fit:.3f})")
        assert inside >= 0.99 and inside_fit >= 0.99, (inside, inside_fit)

        accepted = plain[constraint.satisfied(plain)]  # rejection sampling
        mean, cov = analytic_posterior(x_o)
        m, s = mean[0], cov[0, 0].sqrt()
        standard = Normal(0.0, 1.0)
        a = -m / s
        truncated_mean = m + s * standard.log_prob(a).exp() / (1 - standard.cdf(a))
        print(f"theta_1 mean:   guided {constrained[:, 0].mean():+.3f} (gaussian "
              f"{constrained_fit[:, 0].mean():+.3f}), rejection "
              f"{accepted[:, 0].mean():+.3f}, analytic {truncated_mean:+.3f}")
        print(f"theta_1 median: guided {constrained[:, 0].median():+.3f}, rejection "
              f"{accepted[:, 0].median():+.3f}")
        print(f"theta_2 mean:   guided {constrained[:, 1].mean():+.3f}, rejection "
              f"{accepted[:, 1].mean():+.3f}, analytic {mean[1]:+.3f}")
        fit_error = abs(constrained_fit[:, 0].mean() - truncated_mean)
        isotropic_error = constrained[:, 0].mean() - truncated_mean
        rejection_error = abs(accepted[:, 0].mean() - truncated_mean)
        assert fit_error < 0.05, fit_error
        assert isotropic_error > fit_error, (isotropic_error, fit_error)
        assert rejection_error < (0.1 if small else 0.04), rejection_error
        assert abs(constrained[:, 1].mean() - mean[1]) < 0.1
        """
    ),
    _md(
        r"""
        ### (c) A tempered likelihood

        $$p_\gamma(\theta \mid x) \propto p(\theta)\, p(x \mid \theta)^\gamma
        = p(\theta)^{1-\gamma}\, p(\theta \mid x)^\gamma:$$

        $\gamma < 1$ trusts the likelihood less and widens the posterior (as in
        power or generalised-Bayes posteriors), $\gamma > 1$ narrows it.
        `LikelihoodTemperature(gamma)` combines the conditional and the prior
        denoisers with the precisions of their Gaussian fits, as the `gauss`
        composition does (exact for Gaussian factors; `precision="jacobian"`
        takes them from the network's Jacobian, as `jac` does). The analytic
        reference is the formula above with $\gamma$. Look for: standard
        deviations above the $\gamma = 1$ ones for $\gamma = 0.5$ and below for
        $\gamma = 2$, and how close they come to the analytic values.
        Asserted: both, with the bounds of the prior swap (the full run gives
        0.07 sd and 1% for $\gamma = 0.5$, 0.05 sd and 3% for $\gamma = 2$).
        """
    ),
    _code(
        r"""
        for gamma in [0.5, 2.0]:
            samples = posterior.sample(
                (num_guided,), x=x_o, guidance=LikelihoodTemperature(gamma),
                show_progress_bars=False,
            )
            reference = analytic_posterior(x_o, power=gamma)
            errors = compare(f"temperature {gamma}", samples, *reference)
            assert within(errors, guided_bounds), errors
            untempered_std = analytic_posterior(x_o)[1].diagonal().sqrt()
            wider = (samples.std(0) > untempered_std).all()
            narrower = (samples.std(0) < untempered_std).all()
            assert wider if gamma < 1 else narrower, samples.std(0)
        """
    ),
    _md(
        r"""
        ### (d) Classifier-free guidance

        $$\hat\theta_w = \hat\theta_\varnothing + w\,(\hat\theta_x -
        \hat\theta_\varnothing)$$

        mixes the conditional and the unconditional predictions of the same
        network (Ho & Salimans 2022), which exists thanks to `condition_dropout`;
        each step costs two evaluations. $w = 1$ is the posterior and $w = 0$ the
        prior. Other scales give the diffused version of $p(\theta)\,p(x \mid
        \theta)^w$ only approximately: the scores are mixed with equal weights,
        not with the precisions of `LikelihoodTemperature`. It acts on the
        conditional denoiser of one observation; for i.i.d. trials use
        `LikelihoodTemperature`. Look for: exact agreement at $w = 0$ and $w = 1$
        (up to the model's error), and at $w = 2$ a posterior narrower than at
        $w = 1$ but not necessarily matching the tempered one. Asserted: the
        bounds of the prior swap at $w = 0$ and $w = 1$ (the full run gives
        0.02 sd and 1% at $w = 0$, 0.07 sd and 1% at $w = 1$), and smaller
        standard deviations at $w = 2$ than at $w = 1$.
        """
    ),
    _code(
        r"""
        cfg_std = {}
        for w in [0.0, 1.0, 2.0]:
            samples = posterior.sample(
                (num_guided,), x=x_o, guidance=ClassifierFreeGuidance(w),
                show_progress_bars=False,
            )
            errors = compare(f"cfg w={w}", samples, *analytic_posterior(x_o, power=w))
            if w <= 1:  # w = 2 only approximates the tempered posterior
                assert within(errors, guided_bounds), errors
            cfg_std[w] = samples.std(0)
        assert (cfg_std[2.0] < cfg_std[1.0]).all(), cfg_std
        """
    ),
    _md(
        r"""
        ### Combining transforms

        A list passed as `guidance=` is applied in order.
        `posterior.with_guidance(...)` returns a posterior that applies its
        transforms in every `sample` call (calls can be chained), and `guidance=`
        adds to them. Here the new prior and the constraint together. Transforms
        other than classifier-free guidance also apply to i.i.d. trials (pass
        `x=x_trials`), at the cost of the composed denoiser times that of the
        transform. Asserted: at least 99% of the samples inside the constraint
        (full run: 1.000).
        """
    ),
    _code(
        r"""
        swapped_posterior = posterior.with_guidance(PriorSwap(new_prior))
        both = swapped_posterior.sample(
            (num_guided,), x=x_o, guidance=constraint, show_progress_bars=False
        )
        inside = constraint.satisfied(both).float().mean()
        print(f"new prior + constraint: fraction with theta_1 >= 0 {inside:.3f}, "
              f"mean {fmt(both.mean(0))}")
        assert inside >= 0.99, inside
        """
    ),
    _md(
        r"""
        ## Summary

        * Train on single trials; pass `N` trials as the rows of `x` to get the
          `N`-trial posterior (`iid_method` = `gauss`, `jac`, `factorized`,
          `factorized_bridge`). `posterior.last_nfe` and `posterior.last_iid_info`
          report the cost and the method.
        * `guidance=` / `with_guidance` apply `PriorSwap`, `ConstraintGuidance`,
          `LikelihoodTemperature` and `ClassifierFreeGuidance` (the last needs
          `condition_dropout > 0` in training) without retraining.
        * All of these rest on approximations of the noisy posterior that are
          exact for Gaussians: on other problems check them, e.g. with
          simulation-based calibration as in the quickstart.
        """
    ),
]


JOINT_MODEL = [
    _md(
        r"""
        # One model for the posterior, the likelihood and every conditional

        `JointDiffusion` learns the joint distribution of parameters and data,
        $p(\theta, x)$, with one diffusion model in the style of the Simformer
        (Gloeckler et al. 2024, "All-in-one simulation-based inference"). Every
        scalar variable is a token of a transformer, and training draws a random
        *condition mask* for every example: which variables are observed (clean)
        and which are latent (noised). The same network then gives

        * the posterior $p(\theta \mid x)$ (`build_posterior`),
        * the likelihood $p(x \mid \theta)$, an emulator of the simulator
          (`build_likelihood`: `sample` and `log_prob`),
        * any other conditional, such as $p(\theta_2 \mid \theta_1, x)$
          (`build_conditional`),

        and it trains on simulations with missing values and infers from
        observations with missing entries.

        We use a linear-Gaussian problem where every one of these conditionals has
        a closed form, so each result is printed next to the exact answer.
        """,
        budget_note=True,
    ),
    _setup_code(
        r"""
        import os
        import time

        import matplotlib.pyplot as plt
        import numpy as np
        import torch
        from sbi.analysis import pairplot
        from sbi.utils.metrics import c2st
        from torch.distributions import MultivariateNormal

        from sbi_diffusion import ConstraintGuidance, JointDiffusion
        """,
        "5000",
        200,
        "",
    ),
    _md(
        r"""
        ## A problem where every conditional is known

        Two parameters and three data dimensions,

        $$\theta \sim \mathcal N(0, I_2), \qquad
        x \mid \theta \sim \mathcal N(A\theta, s^2 I_3), \qquad
        A = \begin{pmatrix} 1 & 0 \\ 0 & 1 \\ 1 & -1 \end{pmatrix}, \; s = 0.3.$$

        The joint vector $v = (\theta_1, \theta_2, x_1, x_2, x_3)$ is Gaussian with
        mean zero and covariance

        $$\Sigma = \begin{pmatrix} I & A^\top \\ A & A A^\top + s^2 I
        \end{pmatrix},$$

        so any conditional of latent variables $L$ given observed ones $O$ is
        Gaussian:

        $$v_L \mid v_O \sim \mathcal N\big(\Sigma_{LO}\Sigma_{OO}^{-1} v_O,\;
        \Sigma_{LL} - \Sigma_{LO}\Sigma_{OO}^{-1}\Sigma_{OL}\big).$$

        `analytic_conditional(mask, values)` computes it; `mask` marks the
        observed variables, in the order $\theta$ then $x$, as `JointDiffusion`
        does. `compare` prints sample moments next to the exact ones, with two
        errors: the largest error of a mean in exact standard deviations ("sd")
        and the largest relative error of a standard deviation. The cells
        assert bounds on these errors, so a broken claim fails the tests: for
        every conditional, means within 0.2 sd and standard deviations within
        10% (0.35 sd and 20% at the small test budget).
        """
    ),
    _code(
        r"""
        theta_dim, noise_std = 2, 0.3
        matrix = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
        prior = MultivariateNormal(torch.zeros(theta_dim), torch.eye(theta_dim))


        def simulator(theta):
            noise = noise_std * torch.randn(theta.shape[0], matrix.shape[0])
            return theta @ matrix.T + noise


        joint_cov = torch.cat(
            [
                torch.cat([torch.eye(theta_dim), matrix.T], 1),
                torch.cat([matrix, matrix @ matrix.T + noise_std**2 * torch.eye(3)], 1),
            ]
        )


        def analytic_conditional(observed, values):
            # observed: (5,) booleans over (theta, x); values: the observed entries
            latent = ~observed
            gain = joint_cov[latent][:, observed] @ torch.linalg.inv(
                joint_cov[observed][:, observed]
            )
            mean = gain @ values
            cov = joint_cov[latent][:, latent] - gain @ joint_cov[observed][:, latent]
            return mean, cov
        """,
        MOMENT_HELPERS,
    ),
    _md(
        r"""
        ## Train, with missing values

        `append_simulations(theta, x)` as for any sbi trainer. Entries that are
        NaN are *missing*: they are kept, treated as latent variables and left out
        of the loss. Here $x_3$ is missing in a fifth of the simulations (say a
        sensor that sometimes fails).

        Five variables need only a small transformer (`width=32, depth=2`); the
        default (`width=64, depth=4`) is meant for sbibm-sized problems. Training
        draws each example's condition mask from a mixture of the joint (nothing
        observed), the posterior ($x$ observed), the likelihood ($\theta$
        observed) and random subsets (`mask_weights` sets the mixture).
        """
    ),
    _code(
        r"""
        theta = prior.sample((num_simulations,))
        x = simulator(theta)
        x[torch.rand(num_simulations) < 0.2, 2] = float("nan")
        bounds = (0.35, 0.2) if small else (0.2, 0.1)  # for every conditional

        inference = JointDiffusion(
            prior, net_kwargs={"width": 32, "depth": 2}, show_progress_bars=False
        )
        start = time.time()
        inference.append_simulations(theta, x).train(
            max_num_epochs=max_num_epochs, training_batch_size=128, learning_rate=3e-3
        )
        print(f"{num_simulations} simulations, trained in {time.time() - start:.0f} s")
        """
    ),
    _md(
        r"""
        ## The posterior $p(\theta \mid x)$

        `build_posterior()` gives the same posterior object as `DiffusionNPE`
        (sample, `log_prob`, `map`, guidance, i.i.d. trials), sampled from the
        joint model with $x$ observed. C2ST against exact samples: 0.5 is
        perfect. Asserted: C2ST below 0.55 (0.6 at the test budget, with 1,000
        samples) and the moment bounds; the full run gives a C2ST of 0.50,
        0.07 sd and 1%.
        """
    ),
    _code(
        r"""
        theta_o = torch.tensor([0.5, -0.8])
        torch.manual_seed(1)
        x_o = simulator(theta_o[None])[0]
        posterior = inference.build_posterior()

        start = time.time()
        samples = posterior.sample((num_samples,), x=x_o, show_progress_bars=False)
        print(f"{num_samples} samples in {time.time() - start:.1f} s, "
              f"{posterior.last_nfe:.0f} network evaluations per sample")
        observe_x = torch.tensor([False, False, True, True, True])
        mean, cov = analytic_conditional(observe_x, x_o)
        errors = compare("p(theta | x)", samples, mean, cov)
        assert within(errors, bounds), errors
        exact = MultivariateNormal(mean, cov).sample((num_samples,))
        accuracy = float(c2st(samples, exact))
        print("C2ST against exact samples:", round(accuracy, 3))
        assert accuracy < (0.6 if small else 0.55), accuracy
        """
    ),
    _code(
        r"""
        fig, axes = pairplot(
            [samples, exact],
            labels=[r"$\theta_1$", r"$\theta_2$"],
            figsize=(5, 5),
            diag="kde",
            upper="contour",
        )
        plt.legend(["JointDiffusion", "exact"], loc="upper left", bbox_to_anchor=(1, 1))
        plt.show()
        """
    ),
    _md(
        r"""
        ## The likelihood $p(x \mid \theta)$: an emulator of the simulator

        `build_likelihood()` samples synthetic data for given parameters and
        evaluates $\log p(x \mid \theta)$ through the probability-flow ODE (the
        instantaneous change of variables; Song et al. 2021). `log_prob` accepts
        `solver="heun", steps=...` for a cheaper fixed-step solve. Asserted: the
        moment bounds for the synthetic data (the full run: 0.07 sd and 5%),
        and the ODE log-density within 0.2 of the exact Gaussian one at two
        points (0.3 at the test budget; the full run: within 0.10).
        """
    ),
    _code(
        r"""
        likelihood = inference.build_likelihood()
        simulated = likelihood.sample((num_samples,), theta=theta_o)
        observe_theta = ~observe_x
        mean, cov = analytic_conditional(observe_theta, theta_o)
        errors = compare("p(x | theta)", simulated, mean, cov)
        assert within(errors, bounds), errors

        points = torch.stack([mean, mean + torch.tensor([0.3, 0.0, -0.3])])
        start = time.time()
        log_p = likelihood.log_prob(points, theta=theta_o)
        exact_log_p = MultivariateNormal(mean, cov).log_prob(points)
        print(f"log p(x | theta): {fmt(log_p)} vs exact {fmt(exact_log_p)} "
              f"({time.time() - start:.1f} s)")
        log_p_error = (log_p - exact_log_p).abs().max()
        assert log_p_error < (0.3 if small else 0.2), log_p_error
        """
    ),
    _md(
        r"""
        ## Any conditional

        `build_conditional(mask)` takes the condition mask over
        $(\theta_1, \theta_2, x_1, x_2, x_3)$, True for observed. Two examples:

        * $p(\theta_2 \mid \theta_1, x)$: one parameter known (fixed by another
          experiment, say), the other inferred;
        * $p(\theta, x_3 \mid x_1, x_2)$: the posterior when $x_3$ was *not
          measured*, which also predicts the missing $x_3$. A model trained for
          the posterior alone would need $x_3$; here it is just another latent
          variable. (`posterior.sample(x=...)` does the same when $x$ holds a NaN.)

        Asserted: the moment bounds for all three (the full run gives at most
        0.09 sd and 6%).
        """
    ),
    _code(
        r"""
        mask = torch.tensor([True, False, True, True, True])
        condition = torch.cat([theta_o[:1], x_o])
        conditional = inference.build_conditional(mask)
        drawn = conditional.sample((num_samples,), condition=condition)
        exact = analytic_conditional(mask, condition)
        errors = compare("p(theta_2 | theta_1, x)", drawn, *exact)
        assert within(errors, bounds), errors

        mask = torch.tensor([False, False, True, True, False])
        conditional = inference.build_conditional(mask)
        drawn = conditional.sample((num_samples,), condition=x_o[:2])
        exact = analytic_conditional(mask, x_o[:2])
        errors = compare("p(theta, x_3 | x_1, x_2)", drawn, *exact)
        assert within(errors, bounds), errors

        x_missing = x_o.clone()
        x_missing[2] = float("nan")
        drawn = posterior.sample((num_samples,), x=x_missing, show_progress_bars=False)
        mean, cov = analytic_conditional(mask, x_o[:2])
        errors = compare("posterior, x_3 = NaN", drawn, mean[:2], cov[:2, :2])
        assert within(errors, bounds), errors
        """
    ),
    _md(
        r"""
        ## Guidance on any conditional

        The score transforms of the guidance tutorial apply to every conditional of
        the joint model. Here a constraint $\theta_1 \ge 0.7$, written as
        $c(\theta) = 0.7 - \theta_1 \le 0$, on the posterior. Asserted: at
        least 99% of the guided samples inside (the full run: 99.9%; without
        guidance about 40% of the posterior lies there).
        """
    ),
    _code(
        r"""
        constraint = ConstraintGuidance(lambda theta: 0.7 - theta[:, 0])
        guided = posterior.sample(
            (num_samples,), x=x_o, guidance=constraint, show_progress_bars=False
        )
        inside = constraint.satisfied(guided).float().mean()
        print(f"fraction with theta_1 >= 0.7: {inside:.3f}, mean {fmt(guided.mean(0))}")
        assert inside >= 0.99, inside
        """
    ),
    _md(
        r"""
        ## The learned likelihood in sbi's MCMC (NLE-style)

        `build_posterior(posterior_method="likelihood_mcmc")` returns sbi's
        `MCMCPosterior` on the potential $\log p(x_o \mid \theta) + \log
        p(\theta)$ with the joint model's likelihood, as NLE does with its flow.
        Every potential evaluation solves the probability-flow ODE, so it is far
        slower than sampling the posterior directly; `log_prob_options` picks the
        cheaper fixed-step solver. The chains start at draws of the model's own
        posterior (`mcmc_init="posterior"`, the default; `"prior"` is sbi's
        resampling from the prior, which costs 10,000 likelihood evaluations per
        chain), so a short warm-up suffices. Asserted: means within 0.2 sd and
        standard deviations within 20% of the exact posterior's (the full run
        draws 1,000 samples from 10 short chains, seeded: 0.02 sd and 12%; two
        earlier unseeded runs gave 0.05 sd and 7%, 0.06 sd and 14%; the
        standard deviations come out wide,
        which is what an 8-step Heun log-density and ten 10-step warm-ups
        allow). sbi's slice sampler draws from numpy's global generator, so
        the cell seeds numpy as well as torch: unseeded, the test budget's
        former 50 draws gave a mean error of 0.07 sd in one run and 0.44 sd in
        another. At the test budget (1,000 simulations, 200 draws from 10
        chains of 20 steps) the seeded run gives 0.07 sd and 17%; a standard
        deviation from so few correlated draws of a lightly trained model is
        itself uncertain by tens of percent, so the bounds there are 0.35 sd
        and 45%.
        """
    ),
    _code(
        r"""
        mcmc_posterior = inference.build_posterior(
            posterior_method="likelihood_mcmc",
            mcmc_parameters={"num_chains": 10, "warmup_steps": 10, "thin": 1},
            log_prob_options={"solver": "heun", "steps": 8},
        )
        num_mcmc = 200 if small else 1000
        # sbi's slice sampler draws from numpy's global generator
        np.random.seed(0)
        torch.manual_seed(0)
        start = time.time()
        mcmc_samples = mcmc_posterior.sample(
            (num_mcmc,), x=x_o, show_progress_bars=False
        )
        print(f"{num_mcmc} MCMC samples in {time.time() - start:.0f} s")
        exact = analytic_conditional(observe_x, x_o)
        errors = compare("likelihood + MCMC", mcmc_samples, *exact)
        mcmc_bounds = (0.35, 0.45) if small else (0.2, 0.2)
        assert within(errors, mcmc_bounds), errors
        """
    ),
    _md(
        r"""
        ## Summary

        * One training gives `build_posterior()`, `build_likelihood()` and
          `build_conditional(mask)`; NaN marks missing values in training data
          and in observations.
        * Guidance (constraints, classifier-free, prior swap) applies to any
          conditional.
        * `posterior_method="likelihood_mcmc"` uses the learned likelihood the way
          NLE does.
        * The transformer over all variables costs more per network evaluation
          than the MLPs of `DiffusionNPE`; on sbibm it is most useful where one
          model must answer several questions
          (`benchmarks/joint/README.md` has its accuracy against NPE and NLE).
        """
    ),
]


DESIGN_CHOICES = [
    _md(
        r"""
        # Design choices: paths, parameterisations, samplers and one-step models

        A diffusion posterior is several choices, each selectable by name:

        * the **noise schedule** (the path $\theta_t = \alpha_t \theta_0 +
          \sigma_t \epsilon$): `"edm_vp"` (default), `"vp"`, `"cosine"`, `"edm"` /
          `"edm_ve"`, `"rectified_flow"`;
        * the **parameterisation** (what the network predicts): `"F"` (EDM
          preconditioning, default), `"noise"`, `"data"`, `"velocity"`, `"score"`;
        * the **loss weighting** over noise levels: `"edm"`, `"natural"`,
          `"uniform"`, `"sigmoid"`, `"likelihood"`;
        * the **sampler**: probability-flow ODE (`"heun"`, `"euler"`, `"dpm++2m"`,
          adaptive `"dopri5"`) or reverse SDE (`"euler_maruyama"`, `"ddim"`,
          adaptive `"adaptive_sde"`), chosen at sampling time;
        * and **consistency models** (`ConsistencyNPE`), trained or distilled from
          a diffusion model, for one- to few-step sampling.

        This notebook trains a few configurations on sbibm's two moons and compares
        them with C2ST against the reference posterior (0.5 is perfect) and by
        their cost in network evaluations (NFE) per sample. The cells assert C2ST
        bounds and the claims of the text, so a broken claim fails the tests;
        the bounds are looser at the small test budget (1,000 simulations, 1,000
        samples) than at the full one (10,000 simulations, 5,000 samples).
        """,
        budget_note=True,
    ),
    _setup_code(
        r"""
        import os
        import time

        import sbibm
        import torch
        from sbi.utils.metrics import c2st

        from sbi_diffusion import ConsistencyNPE, DiffusionNPE, FlowMatchingNPE
        """,
        "10_000",
        None,
        r"""
        task = sbibm.get_task("two_moons")
        prior = task.get_prior_dist()
        theta = prior.sample((num_simulations,))
        x = task.get_simulator()(theta)
        x_o = task.get_observation(1)
        reference = task.get_reference_posterior_samples(1)[:num_samples]


        def score(posterior, **sample_options):
            # returns the C2ST against the reference, the NFE per sample and a line
            start = time.time()
            samples = posterior.sample(
                (num_samples,), x=x_o, show_progress_bars=False, **sample_options
            )
            seconds = time.time() - start
            accuracy = float(c2st(samples, reference))
            nfe = posterior.last_nfe
            line = f"C2ST {accuracy:.3f}  NFE {nfe:5.0f}  {seconds:5.1f} s"
            return accuracy, nfe, line


        # C2ST bounds: for the default model and sampler, and for every other
        # diffusion configuration and sampler
        default_bound = 0.7 if small else 0.6
        any_bound = 0.85 if small else 0.75
        """,
    ),
    _md(
        r"""
        ## Paths and parameterisations

        Three trainings on the same simulations:

        * the default `DiffusionNPE`: EDM's noise levels on a variance-preserving
          path, F-prediction with EDM's preconditioning and loss weighting
          (Karras et al. 2022);
        * DDPM's recipe: the linear VP schedule with noise prediction and the
          plain noise-prediction loss (Ho et al. 2020), `weighting="natural"`
          (the loss of the parameterisation's own target);
        * `FlowMatchingNPE`: the rectified-flow path $\theta_t = (1 - t)\theta_0 +
          t \epsilon$ with velocity prediction (Lipman et al. 2023; Liu et al.
          2023).

        Each is sampled with its own default sampler (DPM-Solver++(2M), 20
        steps, for all three). Asserted: C2ST below 0.6 for the default and
        below 0.75 for the others (0.7 and 0.85 at the test budget); the full
        run gives 0.535, 0.619 and 0.679.
        """
    ),
    _code(
        r"""
        trainers = {
            "DiffusionNPE (default)": DiffusionNPE(prior, show_progress_bars=False),
            "DDPM: vp + noise": DiffusionNPE(
                prior,
                schedule="vp",
                parameterization="noise",
                weighting="natural",
                show_progress_bars=False,
            ),
            "FlowMatchingNPE": FlowMatchingNPE(prior, show_progress_bars=False),
        }
        posteriors = {}
        for name, trainer in trainers.items():
            start = time.time()
            trainer.append_simulations(theta, x).train()
            trained = time.time() - start
            posteriors[name] = trainer.build_posterior()
            accuracy, nfe, line = score(posteriors[name])
            print(f"{name:24s} trained {trained:4.0f} s  {line}")
            bound = default_bound if name == "DiffusionNPE (default)" else any_bound
            assert accuracy < bound, (name, accuracy)
        """
    ),
    _md(
        r"""
        ## Samplers, chosen at sampling time

        One trained model, several samplers. `DiffusionNPE` samples with
        DPM-Solver++(2M) (Lu et al. 2022), 20 steps, by default. Deterministic
        ODE solvers are cheap and smooth; stochastic SDE samplers inject noise
        that can correct the network's errors on the way (they were more
        accurate on harder sbibm posteriors, at more evaluations); the adaptive
        solvers pick their own steps from a tolerance. Asserted: C2ST below 0.6
        for the default sampler and below 0.75 for every other (0.7 and 0.85 at
        the test budget; the full run gives 0.542 for the default, 0.712 for
        DPM-Solver++(2M) with 10 steps and 0.530 to 0.564 for the others), and
        each fixed-step ODE solver costs fewer evaluations than each SDE
        sampler.
        """
    ),
    _code(
        r"""
        default = posteriors["DiffusionNPE (default)"]
        samplers = {
            "dpm++2m, 20 steps (default)": {},
            "dpm++2m, 10 steps": {"sampler": "dpm++2m", "steps": 10},
            "heun, 18 steps": {"sampler": "heun", "steps": 18},
            "dopri5 (adaptive ODE)": {"sampler": "dopri5"},
            "euler_maruyama, 200 steps": {"sampler": "euler_maruyama", "steps": 200},
            "adaptive_sde": {"sampler": "adaptive_sde"},
        }
        sampler_accuracy, sampler_nfe = {}, {}
        for name, options in samplers.items():
            accuracy, nfe, line = score(default, **options)
            print(f"{name:28s} {line}")
            assert accuracy < (default_bound if not options else any_bound), accuracy
            sampler_accuracy[name], sampler_nfe[name] = accuracy, nfe
        ode = ["dpm++2m, 20 steps (default)", "dpm++2m, 10 steps", "heun, 18 steps"]
        sde = ["euler_maruyama, 200 steps", "adaptive_sde"]
        assert max(sampler_nfe[n] for n in ode) < min(sampler_nfe[n] for n in sde)
        """
    ),
    _md(
        r"""
        ## Densities through the probability-flow ODE

        `log_prob` integrates the divergence of the ODE's drift (the instantaneous
        change of variables): adaptive by default (`rtol`, `atol`), or
        `solver="heun", steps=...` for a fixed cost. The posterior density of two
        moons is highest on the reference samples' crescents and far lower away
        from them. Asserted: the log-density at three reference samples exceeds
        the one at $(0.9, -0.9)$, off the crescents, by more than 10 (the full
        run: by 25), and the fixed-step values are within 0.3 of the adaptive
        ones (full run: 0.11).
        """
    ),
    _code(
        r"""
        points = torch.cat([reference[:3], torch.tensor([[0.9, -0.9]])])
        start = time.time()
        adaptive = default.log_prob(points, x=x_o)
        seconds = time.time() - start
        print(f"dopri5:        {adaptive.numpy().round(2)}  ({seconds:.1f} s)")
        start = time.time()
        fixed = default.log_prob(points, x=x_o, solver="heun", steps=16)
        seconds = time.time() - start
        print(f"heun 16 steps: {fixed.numpy().round(2)}  ({seconds:.1f} s)")
        assert adaptive[:3].min() > adaptive[3] + 10, adaptive
        assert (fixed - adaptive).abs().max() < 0.3, fixed - adaptive
        """
    ),
    _md(
        r"""
        ## One- and few-step sampling: consistency distillation

        A consistency model $f(\theta_t, t) \approx \theta_0$ maps any point of
        the teacher's ODE trajectory to its end (Song et al. 2023), so one network
        evaluation gives a sample, and a few steps (re-noise, map again) can
        refine it. `ConsistencyNPE` samples with 2 steps by default; more steps
        are not always better (`benchmarks/consistency/README.md`).
        `ConsistencyNPE.distill(teacher)` trains it from a trained diffusion model
        on the same simulations; `ConsistencyNPE.train()` trains one from scratch
        (consistency training; Schmitt et al. 2024 for SBI). Asserted: $k$ steps
        cost $k$ network evaluations per sample; C2ST stays below 0.8 (0.95 at
        the test budget, where 1.0 would mean nothing was learned) but above
        the teacher's: the full run gives 0.738, 0.596 and 0.724 for 1, 2 and
        4 steps, against 0.542 for the teacher.
        """
    ),
    _code(
        r"""
        student = ConsistencyNPE(prior, show_progress_bars=False)
        start = time.time()
        student.distill(trainers["DiffusionNPE (default)"], max_num_epochs=100)
        print(f"distilled in {time.time() - start:.0f} s")
        consistency_posterior = student.build_posterior()
        teacher_accuracy = sampler_accuracy["dpm++2m, 20 steps (default)"]
        for steps in (1, 2, 4):
            accuracy, nfe, line = score(consistency_posterior, steps=steps)
            print(f"consistency, {steps} step(s)   {line}")
            assert round(nfe) == steps, nfe
            assert teacher_accuracy < accuracy < (0.95 if small else 0.8), accuracy
        """
    ),
    _md(
        r"""
        ## Summary

        * Schedules, parameterisations and weightings are constructor arguments;
          samplers and their steps are arguments of `sample`, so one training can
          be sampled in several ways.
        * Deterministic samplers are the cheap default; stochastic ones often pay
          off when the network is accurate; adaptive ones set their own cost.
        * Consistency models trade some accuracy for one- to four-evaluation
          sampling.
        * `benchmarks/README.md` compares these choices on the sbibm tasks at
          10^3-10^5 simulations.
        """
    ),
]


INVERSE_KINEMATICS = [
    _md(
        r"""
        # A robot arm's inverse kinematics: every conditional from one model

        The opening example of diffusion models for simulation-based inference:
        a planar robot arm (Kruse et al. 2021, "Benchmarking invertible
        architectures on inverse problems") slides along a vertical rail and
        bends at three joints. Where can it be so that its hand is at a given
        point? The answer is not one configuration but a curved, multi-modal
        ridge of them: a posterior. One `JointDiffusion` model (Simformer-style,
        Gloeckler et al. 2024) trained once on simulations answers every question
        asked of it here:

        * the posterior $p(\theta \mid x_o)$;
        * the posterior with the elbow constrained up, by guidance, without
          retraining;
        * the posterior when only the hand's height or only its reach was
          measured (the other coordinate missing, NaN);
        * the posterior with the rail offset known, $p(a_1, a_2, a_3 \mid
          \text{offset} = 0, x_o)$;
        * the posterior's marginal over the angles, $p(a_1, a_2, a_3 \mid x_o)$.

        The full posterior is also solved with `DiffusionNPE`,
        `FlowMatchingNPE`, `ConsistencyNPE` and sbi's `NPE`. Every panel is
        compared with reference samples by C2ST (0.5: indistinguishable), and
        the cells assert what they show.
        """,
        budget_note=True,
    ),
    _setup_code(
        r"""
        import os
        import time

        import matplotlib.pyplot as plt
        import torch
        from sbi.inference import NPE
        from sbi.utils.metrics import c2st

        from sbi_diffusion import (
            ConsistencyNPE,
            ConstraintGuidance,
            DiffusionNPE,
            FlowMatchingNPE,
            JointDiffusion,
        )
        from sbi_diffusion.benchmark import inverse_kinematics as ik
        """,
        "10_000",
        None,
        "",
    ),
    _md(
        r"""
        ## The arm

        Parameters $\theta = (\text{offset}, a_1, a_2, a_3)$ with prior
        $\mathcal N(0, \operatorname{diag}(0.25^2, 0.5^2, 0.5^2, 0.5^2))$;
        segments of lengths $l = (0.5, 0.5, 1.0)$. The arm is mounted on the
        rail at $(0, \text{offset})$ in the plane (horizontal, vertical); the
        angles are measured from the horizontal and accumulate along the arm,
        $\phi_k = a_1 + \dots + a_k$, so the joints are
        $p_k = p_{k-1} + l_k(\cos\phi_k, \sin\phi_k)$ and the hand is $p_3$.
        As in Kruse et al., the data list the hand's height first and its reach
        second, with a little Gaussian noise that makes the likelihood proper:

        $$x = \Big(\text{offset} + \sum_k l_k \sin\phi_k,\;
        \sum_k l_k \cos\phi_k\Big) + \mathcal N(0, 0.01^2 I).$$

        The observation is $x_o = (0, 1.5)$: the hand level with the rail's
        origin, 1.5 away from it (the straight arm reaches 2.0).

        **Reference samples** (`ik.reference_samples`): importance sampling
        with $10^7$ proposals that solve the tight constraints instead of
        hitting them by chance: a noisy reach is drawn from the likelihood and
        the last angle solved for it (the weight is the prior over the Jacobian
        of that change of variables), the offset, which enters the height
        linearly, is integrated out exactly, and 10,000 samples are resampled.
        Asserted: an effective sample size of at least $10^4$ for every
        conditional, and the reference hands at $x_o$ within the noise.
        """
    ),
    _code(
        r"""
        x_o = torch.tensor(ik.OBSERVATION)
        start = time.time()
        references = {
            name: ik.cached_reference_samples(name) for name in ik.CONDITIONALS
        }
        print(f"reference samples in {time.time() - start:.0f} s")
        for name, reference in references.items():
            ess = reference.effective_sample_size
            print(f"{name:13s} effective sample size {ess:11,.0f} of "
                  f"{reference.num_proposals:,} proposals")
            assert ess >= 10_000, (name, ess)
        hands = ik.forward_kinematics(references["posterior"].samples)
        print("reference hands: mean", hands.mean(0), "sd", hands.std(0))
        assert (hands.mean(0) - x_o).abs().max() < 0.005
        assert (hands.std(0) < 0.015).all()
        """
    ),
    _code(
        r"""
        def draw_arms(ax, theta, title, target=ik.OBSERVATION, color="C0"):
            # the arms of up to 300 parameter rows, the rail and the target; rows
            # of three angles are drawn with the offset 0
            if theta.shape[1] == 3:
                theta = torch.cat([torch.zeros(len(theta), 1), theta], dim=1)
            points = ik.joint_positions(theta[:300]).numpy()
            ax.axvline(0, color="0.8", lw=4, zorder=0)
            ax.plot(points[..., 0].T, points[..., 1].T, color=color, alpha=0.06)
            height, reach = target
            if height is not None and reach is not None:
                ax.plot(reach, height, "x", color="red", ms=10, mew=2.5)
            elif reach is not None:
                ax.axvline(reach, color="red", ls="--", lw=1.5)
            else:
                ax.axhline(height, color="red", ls="--", lw=1.5)
            ax.set(xlim=(-0.3, 2.2), ylim=(-1.5, 1.5), aspect="equal")
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])


        fig, axes = plt.subplots(1, 2, figsize=(7, 3.5))
        draw_arms(axes[0], ik.prior().sample((300,)), "prior", color="0.4")
        draw_arms(axes[1], references["posterior"].samples, "reference posterior",
                  color="C1")
        plt.show()
        """
    ),
    _md(
        r"""
        ## One joint model

        `JointDiffusion` learns $p(\theta, x)$ over the six variables with a
        transformer (its default size, `width=64, depth=4`), drawing a random
        condition mask for every example, so that any subset can be observed at
        sampling time.
        """
    ),
    _code(
        r"""
        theta = ik.prior().sample((num_simulations,))
        x = ik.simulator(theta)
        joint = JointDiffusion(
            ik.prior(), net_kwargs={"width": 64, "depth": 4}, show_progress_bars=False
        )
        start = time.time()
        joint.append_simulations(theta, x).train(seed=0)
        print(f"{num_simulations} simulations, trained in {time.time() - start:.0f} s")
        """
    ),
    _md(
        r"""
        ## Every conditional from the one model

        * **posterior**: `joint.build_posterior().sample(x=x_o)`;
        * **elbow up**: the same with `guidance=ConstraintGuidance(c)` for
          $c(\theta) = -\sin a_2 \le 0$ (`ik.elbow_up`); the reference is the
          posterior restricted to $\sin a_2 \ge 0$;
        * **height only / reach only**: the other coordinate of $x_o$ is NaN,
          which the joint model marginalises out;
        * **offset fixed**: `joint.build_conditional(mask)` with the offset and
          $x$ observed, conditioned on $(0, 0, 1.5)$;
        * **angles**: the posterior samples without their offset column.

        Asserted for every panel: C2ST against the reference below a bound
        measured for the budget, with a margin. The issue's goal, at most 0.6
        for every panel at $10^4$ simulations, is met for four of six panels
        by a wider transformer trained longer (width 128, 36,000 steps, about
        two hours on two CPU cores): 0.59 (posterior), 0.76 (elbow up), 0.50
        (height only), 0.51 (reach only), 0.65 (offset fixed) and 0.55
        (angles), in `benchmarks/inverse_kinematics/README.md`. The size used
        here trains in minutes and scores lower. Also asserted: at least
        99% of the guided samples with the elbow up, and the offset-fixed
        samples' mean hand within 0.1 of $x_o$.
        """
    ),
    _code(
        r"""
        posterior = joint.build_posterior()
        x_height_only = torch.tensor([ik.OBSERVATION[0], float("nan")])
        x_reach_only = torch.tensor([float("nan"), ik.OBSERVATION[1]])
        offset_and_x = torch.tensor([True, False, False, False, True, True])
        offset_conditional = joint.build_conditional(offset_and_x)
        options = {"show_progress_bars": False}

        start = time.time()
        full = posterior.sample((num_samples,), x=x_o, **options)
        samples = {
            "posterior": full,
            "elbow_up": posterior.sample(
                (num_samples,), x=x_o, guidance=ConstraintGuidance(ik.elbow_up),
                **options,
            ),
            "height_only": posterior.sample((num_samples,), x=x_height_only, **options),
            "reach_only": posterior.sample((num_samples,), x=x_reach_only, **options),
            "offset_fixed": offset_conditional.sample(
                (num_samples,), condition=torch.tensor([0.0, *ik.OBSERVATION])
            ),
            "angles": full[:, 1:],
        }
        print(f"sampled every conditional in {time.time() - start:.0f} s")

        # (test budget, full run): measured + a margin
        # (benchmarks/inverse_kinematics/README.md); the goal of 0.6 at 10^4
        # simulations is not met by this model size; the bounds were measured
        # before missing data were sampled (now far better); at the test budget
        # another draw of the simulations reached 0.75 (posterior), 0.83 (elbow
        # up) and 0.70 (angles), hence the wider bounds there
        bounds = {
            "posterior": (0.85, 0.75),
            "elbow_up": (0.90, 0.87),
            "height_only": (0.90, 0.95),
            "reach_only": (0.95, 1.0),
            "offset_fixed": (0.94, 0.87),
            "angles": (0.82, 0.73),
        }
        joint_scores = {}
        for name, drawn in samples.items():
            reference = references[name].samples[:num_samples]
            joint_scores[name] = float(c2st(drawn, reference))
            print(f"{name:13s} C2ST {joint_scores[name]:.3f}")
            assert joint_scores[name] <= bounds[name][not small], (name, joint_scores)

        elbow_up = (ik.elbow_up(samples["elbow_up"]) <= 0).float().mean()
        print(f"elbow up in {elbow_up:.1%} of the guided samples, "
              f"{(ik.elbow_up(full) <= 0).float().mean():.1%} without guidance")
        assert elbow_up >= 0.99, elbow_up
        with_offset = torch.cat(
            [torch.zeros(num_samples, 1), samples["offset_fixed"]], dim=1
        )
        hand_error = (ik.forward_kinematics(with_offset).mean(0) - x_o).abs().max()
        print(f"offset fixed: mean hand {hand_error:.3f} from x_o")
        assert hand_error < 0.1, hand_error
        """
    ),
    _md(
        r"""
        ## The posterior by the other estimators

        `DiffusionNPE`, `FlowMatchingNPE`, a `ConsistencyNPE` distilled from the
        `DiffusionNPE` (2 steps) and sbi's `NPE` (a masked autoregressive flow),
        on the same simulations, scored on the full posterior. Asserted: C2ST
        below the budget's bound for each.
        """
    ),
    _code(
        r"""
        prior = ik.prior()
        estimators = {
            "DiffusionNPE": DiffusionNPE(prior, show_progress_bars=False),
            "FlowMatchingNPE": FlowMatchingNPE(prior, show_progress_bars=False),
            "ConsistencyNPE": ConsistencyNPE(prior, show_progress_bars=False),
            "sbi NPE": NPE(prior, show_progress_bars=False),
        }
        method_samples, method_scores = {}, {}
        for name, estimator in estimators.items():
            start = time.time()
            if name == "ConsistencyNPE":
                estimator.distill(estimators["DiffusionNPE"], max_num_epochs=100)
            else:
                estimator.append_simulations(theta, x).train()
            trained = time.time() - start
            drawn = estimator.build_posterior().sample(
                (num_samples,), x=x_o, show_progress_bars=False
            )
            method_samples[name] = drawn
            reference = references["posterior"].samples[:num_samples]
            method_scores[name] = float(c2st(drawn, reference))
            print(f"{name:16s} trained in {trained:4.0f} s, "
                  f"C2ST {method_scores[name]:.3f}")
        # measured at 10^4 + a margin; at the test budget only "not a total
        # failure"; sbi's NPE fails on this posterior (C2ST .986 at 10^4 in the
        # runner), so its bound is vacuous
        bounds = {"DiffusionNPE": 0.72, "FlowMatchingNPE": 0.74,
                  "ConsistencyNPE": 0.82, "sbi NPE": 1.0}
        for name, accuracy in method_scores.items():
            bound = max(bounds[name], 0.99) if small else bounds[name]
            assert accuracy <= bound, (name, accuracy)
        """
    ),
    _md(
        r"""
        ## Sampled arms

        300 draws of each conditional, semi-transparent, with the target (a
        cross, or a dashed line where only one coordinate is observed) and the
        C2ST against the reference in the title. The offset-fixed and angle
        panels draw the arms with the offset 0.
        """
    ),
    _code(
        r"""
        titles = {
            "posterior": "posterior",
            "elbow_up": "elbow up (guidance)",
            "height_only": "height only (reach NaN)",
            "reach_only": "reach only (height NaN)",
            "offset_fixed": "offset = 0 (conditional)",
            "angles": "angle marginal",
        }
        targets = {
            "height_only": (ik.OBSERVATION[0], None),
            "reach_only": (None, ik.OBSERVATION[1]),
        }
        fig, axes = plt.subplots(2, 6, figsize=(15, 5.6))
        for ax, (name, drawn) in zip(axes[0], samples.items()):
            title = f"Joint: {titles[name]}\nC2ST {joint_scores[name]:.2f}"
            draw_arms(ax, drawn, title, targets.get(name, ik.OBSERVATION))
        for ax, (name, drawn) in zip(axes[1], method_samples.items()):
            title = f"{name}: posterior\nC2ST {method_scores[name]:.2f}"
            draw_arms(ax, drawn, title, color="C2")
        draw_arms(axes[1, 4], references["posterior"].samples, "reference posterior",
                  color="C1")
        draw_arms(axes[1, 5], references["elbow_up"].samples, "reference: elbow up",
                  color="C1")
        plt.tight_layout()
        plt.show()
        """
    ),
    _md(
        r"""
        ## Summary

        * One `JointDiffusion` training answers the posterior, a constrained
          posterior (guidance), posteriors with a missing measurement (NaN), a
          conditional with a known parameter (`build_conditional`) and a
          marginal, each checked against importance-sampling references.
        * The posterior-only estimators need one training per question; on the
          full posterior they are compared in the second row.
        * `sbi-diffusion-bench run --tasks inverse_kinematics --observations 1`
          scores any runner method on this posterior;
          `benchmarks/inverse_kinematics/README.md` has the results.
        """
    ),
]


FIELDS = [
    _md(
        r"""
        # A posterior over a field: the U-Net denoiser

        Diffusion models earn their place when the parameters are many and
        structured: an image, a spatial field, a time series. Here $\theta$ is
        an $N \times N$ Gaussian random field and $x$ a blurred, noisy image of
        it. `DiffusionNPE(prior, net="unet", net_kwargs={"shape": (1, N, N)})`
        learns the posterior with a U-Net; $\theta$ stays a flat vector to sbi,
        so priors, `pairplot`, SBC and save/load work unchanged, and the image
        $x$ enters the U-Net as an extra input channel on the parameter grid.

        The exact posterior is Gaussian and diagonal in Fourier space
        (`sbi_diffusion.benchmark.fields`), so every sample is scored against
        it: the error of the posterior mean in units of the exact posterior
        standard deviation, the ratio of the per-pixel standard deviations, the
        power spectrum of the samples, and per-pixel coverage. sbi's `NPE`
        (a masked autoregressive flow on the flattened image) is trained on the
        same simulations beside it. The cells assert what they show.
        """,
        budget_note=True,
    ),
    _setup_code(
        r"""
        import os
        import time

        import matplotlib.pyplot as plt
        import torch
        from sbi.inference import NPE

        from sbi_diffusion import DiffusionNPE
        from sbi_diffusion.benchmark.fields import (
            GaussianRandomFieldProblem,
            field_posterior_metrics,
        )
        """,
        "5_000",
        None,
        r"""
        size = 8 if small else 16  # the field is size x size
        max_num_steps = 400 if small else 3000
        """,
    ),
    _md(
        r"""
        ## The problem

        The prior has the power spectrum $P(k) \propto (k^2 + k_0^2)^{-3/2}$
        (a smooth field, pixel variance 1); the observation blurs the field
        with a Gaussian of 1.5 pixels and adds white noise of sd 0.2. Fields
        are flat vectors of $N^2$ pixels; observations are images
        $(1, N, N)$.
        """
    ),
    _code(
        r"""
        problem = GaussianRandomFieldProblem(size)
        prior = problem.prior
        theta = problem.sample_prior(num_simulations)
        x = problem.simulate(theta)
        theta_o, x_o = problem.observation(seed=1)
        exact = problem.exact_posterior(x_o)
        print(f"theta {tuple(theta.shape)}, x {tuple(x.shape)}")
        print(f"pixel sd: prior 1.00, exact posterior {exact.pixel_sd:.3f}")
        assert exact.pixel_sd < 0.7  # the data inform the field
        """
    ),
    _md(
        r"""
        ## Train the U-Net

        Two levels of 16 and 32 channels and no attention keep a CPU run
        short; the package's default U-Net (32 and 64 channels, attention at
        the lowest resolution) costs several times more per step.
        """
    ),
    _code(
        r"""
        net_kwargs = {
            "shape": (1, size, size),
            "channels": (16, 32),
            "attention": False,
        }
        inference = DiffusionNPE(
            prior, net="unet", net_kwargs=net_kwargs, show_progress_bars=False
        )
        start = time.time()
        inference.append_simulations(theta, x).train(
            seed=0, training_batch_size=128, max_num_steps=max_num_steps
        )
        print(f"trained in {time.time() - start:.0f} s:", inference.resolved_training)
        posterior = inference.build_posterior()

        start = time.time()
        samples = posterior.sample((1000,), x=x_o[0], show_progress_bars=False)
        print(f"1,000 posterior fields in {time.time() - start:.1f} s")
        ours = field_posterior_metrics(samples, problem, x_o)
        """
    ),
    _md(
        r"""
        ## sbi's NPE on the same simulations

        A masked autoregressive flow over the $N^2$ pixels, conditioned on the
        flattened image.
        """
    ),
    _code(
        r"""
        npe = NPE(prior, show_progress_bars=False)
        start = time.time()
        npe.append_simulations(theta, x.reshape(num_simulations, -1)).train()
        print(f"NPE trained in {time.time() - start:.0f} s")
        npe_samples = npe.build_posterior().sample(
            (1000,), x=x_o.reshape(1, -1), show_progress_bars=False
        )
        theirs = field_posterior_metrics(npe_samples, problem, x_o)
        """
    ),
    _md(
        r"""
        ## Scores against the exact posterior

        With 1,000 exact samples the mean error would be about 0.03 (in
        posterior sd), the sd ratio $1 \pm 0.02$, and the coverage nominal.
        Asserted: the U-Net's posterior mean within a bound of the exact one
        (measured at this budget, with a margin), its standard deviations
        within a factor, and 90% intervals that cover at least 75%.
        """
    ),
    _code(
        r"""
        keys = ["mean_error_rms", "sd_ratio_mean", "sd_ratio_min", "sd_ratio_max",
                "trailing_variance_ratio", "coverage_50", "coverage_90"]
        print(f"{'score':24s} {'U-Net':>8s} {'sbi NPE':>8s}")
        for key in keys:
            print(f"{key:24s} {float(ours[key]):8.3f} {float(theirs[key]):8.3f}")
        assert ours["mean_error_rms"] < (0.6 if small else 0.4), ours["mean_error_rms"]
        assert 0.6 < ours["sd_ratio_mean"] < 1.5, ours["sd_ratio_mean"]
        assert ours["coverage_90"] > 0.75, ours["coverage_90"]
        """
    ),
    _md(
        r"""
        ## The fields

        The true field, its observation, the exact posterior mean and the two
        estimators' posterior means, then one posterior draw of each. Below,
        the radially averaged power spectrum of the draws against the exact one:
        too little power at high wavenumbers means over-smoothed draws.
        """
    ),
    _code(
        r"""
        def image(v):
            return v.reshape(size, size).numpy()


        panels = {
            "true field": theta_o[0],
            "observation": x_o[0, 0],
            "exact mean": exact.mean,
            "U-Net mean": samples.mean(0),
            "NPE mean": npe_samples.mean(0),
            "exact draw": exact.sample(1)[0],
            "U-Net draw": samples[0],
            "NPE draw": npe_samples[0],
        }
        fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.4))
        for ax, (title, field) in zip(axes, panels.items()):
            ax.imshow(image(field.float()), cmap="RdBu_r", vmin=-2.5, vmax=2.5)
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        plt.show()

        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        k = ours["spectrum_wavenumbers"]
        ax.loglog(k[1:], ours["spectrum_exact"][1:], "k-", label="exact")
        ax.loglog(k[1:], ours["spectrum_samples"][1:], "C0o-", label="U-Net")
        ax.loglog(k[1:], theirs["spectrum_samples"][1:], "C2s--", label="sbi NPE")
        ax.set(xlabel="wavenumber (cycles per box)", ylabel="power")
        ax.legend()
        plt.show()
        """
    ),
    _md(
        r"""
        ## Summary

        * `net="unet"` with `net_kwargs={"shape": (C, H, W)}` gives
          `DiffusionNPE`, `FlowMatchingNPE` and `ConsistencyNPE` a U-Net; an
          image `x` on the parameter grid enters as channels.
        * In more than 32 dimensions `log_prob` estimates the divergence with
          Hutchinson's estimator by default; sampling runs in memory-bounded
          batches.
        * `benchmarks/fields/` has the benchmark at larger grids, with sbi's
          NPE (MAF, NSF), NPSE and FMPE, training and sampling times.
        """
    ),
]


HIERARCHICAL = [
    _md(
        r"""
        # Hierarchical models: many groups from single-group simulations

        Scientists often fit one model to many groups (subjects, cells, sites).
        The groups share global parameters $g$ and each group $j$ has local
        parameters $l_j$ of its own. `HierarchicalNPE` is trained on
        simulations of **single groups** only; at inference it composes the
        per-group scores of $g$ over any number $G$ of observed groups,

        $$p(g \mid x_1, \dots, x_G) \propto p(g)^{1 - G} \prod_{j=1}^G p(g \mid x_j),$$

        (Geffner et al. 2023; Arruda et al. 2025), and draws each group's
        $l_j$ from a second model $p(l_j \mid g, x_j)$. The same trained
        estimator serves $G = 1$ and $G = 50$.

        The model here is Gaussian, so both posteriors have a closed form:
        $g \sim N(0, 1.5^2 I_2)$, $l_j \mid g \sim N(g, 0.5^2 I_2)$ and five
        trials per group $x_{jk} \mid l_j \sim N(l_j, 0.5^2 I_2)$. The cells
        assert what they show.
        """,
        budget_note=True,
    ),
    _setup_code(
        r"""
        import os

        import matplotlib.pyplot as plt
        import torch
        from sbi.utils.metrics import c2st
        from torch.distributions import Independent, Normal

        from sbi_diffusion import HierarchicalNPE
        """,
        "20_000",
        None,
        r"""
        max_num_steps = 600 if small else 3000
        dim, trials, s_g, s_l, s_x = 2, 5, 1.5, 0.5, 0.5
        """,
    ),
    _md(
        r"""
        ## The model and its exact posteriors

        `local_prior(g)` returns a torch distribution over $l$, batched over the
        rows of $g$. With $\bar x_j$ the mean of group $j$'s $n_j$ trials and
        $v_j = s_l^2 + s_x^2 / n_j$, the global posterior is
        $N\big(\sum_j \bar x_j / v_j \,/\, P,\ 1/P\big)$ with
        $P = 1/s_g^2 + \sum_j 1/v_j$, and the local one
        $N\big((g/s_l^2 + n_j \bar x_j / s_x^2)/Q_j,\ 1/Q_j\big)$ with
        $Q_j = 1/s_l^2 + n_j/s_x^2$. Groups with fewer trials are padded with
        rows of NaN.
        """
    ),
    _code(
        r"""
        global_prior = Independent(Normal(torch.zeros(dim), s_g), 1)


        def local_prior(g):
            return Independent(Normal(g, s_l), 1)


        def simulate_groups(g):
            # one group per row of g: local parameters (n, dim), trials (n, trials, dim)
            local = local_prior(g).sample()
            return local, local[:, None, :] + s_x * torch.randn(len(g), trials, dim)


        def exact_global(x):
            n = (~torch.isnan(x).all(-1)).sum(-1).float()
            xbar = torch.nansum(x, -2) / n[:, None]
            v = s_l**2 + s_x**2 / n
            precision = 1 / s_g**2 + (1 / v).sum()
            return (xbar / v[:, None]).sum(0) / precision, 1 / precision


        def exact_local_mean(g, x):
            # mean of p(l_j | g, x_j) for every row of g and group j: (S, G, dim)
            n = (~torch.isnan(x).all(-1)).sum(-1).float()
            xbar = torch.nansum(x, -2) / n[:, None]
            q = 1 / s_l**2 + n / s_x**2
            mean = g[:, None, :] / s_l**2 + (n[:, None] * xbar)[None] / s_x**2
            return mean / q[None, :, None], 1 / q


        g = global_prior.sample((num_simulations,))
        local, x = simulate_groups(g)
        print("training data:", tuple(g.shape), tuple(local.shape), tuple(x.shape))
        """
    ),
    _md(
        r"""
        ## Training on single groups

        Two diffusion models are trained: $p(g \mid x_j)$ and
        $p(l_j \mid g, x_j)$. The trials of a group go through a
        permutation-invariant set network (mean pooling, NaN rows masked).
        """
    ),
    _code(
        r"""
        inference = HierarchicalNPE(global_prior, local_prior, show_progress_bars=False)
        inference.append_simulations(g, local, x)
        inference.train(max_num_steps=max_num_steps, seed=0)
        posterior = inference.build_posterior()
        """
    ),
    _md(
        r"""
        ## Ten groups: the global posterior

        We simulate ten groups from one true $g$ and compare the composed
        posterior with the exact one: the error of the mean in posterior
        standard deviations, the ratio of standard deviations, and a C2ST
        against exact samples (0.5: indistinguishable).
        """
    ),
    _code(
        r"""
        def global_check(x_groups, num):
            mean, var = exact_global(x_groups)
            samples = posterior.sample((num,), x=x_groups)
            exact = mean + var**0.5 * torch.randn(num, dim)
            mean_error = ((samples.mean(0) - mean) / var**0.5).abs().max()
            std_ratio = samples.std(0) / var**0.5
            score = float(c2st(samples, exact))
            print(
                f"G = {len(x_groups)}: mean error {mean_error:.2f} sd, std ratio "
                f"{std_ratio[0]:.2f} {std_ratio[1]:.2f}, C2ST {score:.3f}"
            )
            return samples, float(mean_error), std_ratio, score


        torch.manual_seed(1)
        true_g = torch.tensor([0.8, -0.5])
        _, x_10 = simulate_groups(true_g.expand(10, dim))
        samples_10, error_10, ratio_10, c2st_10 = global_check(x_10, num_samples)
        # a small test budget trains too briefly for the full run's bounds
        bounds = (0.6, 0.5) if not small else (0.99, 8.0)
        assert c2st_10 < bounds[0] and error_10 < bounds[1], (c2st_10, error_10)
        """
    ),
    _md(
        r"""
        ## The local parameters, given the global ones

        `sample_joint` draws $g$ and then every group's $l_j$ given each $g$
        sample, all groups and samples in one batched call. Given the same
        $g$ samples, the exact local means are known; the error is in local
        posterior standard deviations.
        """
    ),
    _code(
        r"""
        g_joint, l_joint = posterior.sample_joint((500,), x=x_10)
        print("global", tuple(g_joint.shape), "local", tuple(l_joint.shape))
        local_mean, local_var = exact_local_mean(g_joint, x_10)
        local_error = (l_joint.mean(0) - local_mean.mean(0)) / local_var[:, None] ** 0.5
        print(f"local means: mean abs error {local_error.abs().mean():.2f} local sd")
        assert local_error.abs().mean() < (0.3 if not small else 1.0)
        """
    ),
    _md(
        r"""
        ## Fifty groups with different numbers of trials

        The same estimator, no retraining: 50 groups, some with only two or
        three trials (padded with NaN rows). The posterior of $g$ is now about
        $\sqrt{5}$ times narrower than with ten groups, and the learned
        per-group scores' errors add up over the groups: the composed
        posterior's error grows with $G$ (`benchmarks/hierarchical/README.md`
        measures it at $G$ = 10, 100 and 1,000). Where the noise is narrower
        than half a single group's posterior, each group's estimate comes from
        the network at that floor (`build_posterior(noise_floor=0.5)`, the
        default), because there the composition would add up $G$ network
        errors that do not shrink with the posterior's width. Here the error
        is shown and bounded loosely.
        """
    ),
    _code(
        r"""
        torch.manual_seed(2)
        _, x_50 = simulate_groups(true_g.expand(50, dim))
        x_50[:20, 3:] = float("nan")  # 20 groups with 3 trials
        x_50[20:30, 2:] = float("nan")  # 10 groups with 2 trials
        samples_50, error_50, ratio_50, c2st_50 = global_check(x_50, num_samples)
        assert c2st_50 < (0.75 if not small else 1.0), c2st_50
        ratio_bounds = (0.5, 1.5) if not small else (0.05, 20.0)
        assert ((ratio_50 > ratio_bounds[0]) & (ratio_50 < ratio_bounds[1])).all()
        """
    ),
    _code(
        r"""
        fig, axes = plt.subplots(1, 2, figsize=(9, 4))
        for ax, x_groups, samples, title in [
            (axes[0], x_10, samples_10, "10 groups"),
            (axes[1], x_50, samples_50, "50 groups"),
        ]:
            mean, var = exact_global(x_groups)
            exact = mean + var**0.5 * torch.randn(len(samples), dim)
            ax.scatter(*exact.T, s=2, alpha=0.3, label="exact")
            ax.scatter(*samples.T, s=2, alpha=0.3, label="HierarchicalNPE")
            ax.scatter(*true_g, marker="x", color="k", label="true g")
            ax.set_title(title)
            ax.set_xlabel("$g_1$")
            ax.set_ylabel("$g_2$")
        axes[0].legend(markerscale=5)
        plt.tight_layout()
        """
    ),
    _md(
        r"""
        ## Summary

        * `HierarchicalNPE(global_prior, local_prior)` trains on one simulated
          group per row and composes any number of groups at inference.
        * `posterior.sample((n,), x=x_groups)` gives the global parameters;
          `sample_joint` adds every group's local parameters.
        * Groups of different sizes are padded with NaN rows.
        * The composed posterior is accurate for tens of groups; its error grows
          with $G$ (the per-group errors add up; a longer training shrinks it).
          `build_posterior(group_batch_size=B)` uses mini-batches of groups and
          `damping=` damps the composed prior correction; their measured effect
          is in `benchmarks/hierarchical/README.md`.
        """
    ),
]


NOTEBOOKS = [
    ("00_inverse_kinematics.ipynb", INVERSE_KINEMATICS),
    ("01_quickstart.ipynb", QUICKSTART),
    ("02_iid_trials_and_guidance.ipynb", IID_AND_GUIDANCE),
    ("03_joint_model.ipynb", JOINT_MODEL),
    ("04_design_choices.ipynb", DESIGN_CHOICES),
    ("05_fields.ipynb", FIELDS),
    ("06_hierarchical.ipynb", HIERARCHICAL),
]
"""Each notebook's file name and cells."""


FULL_RUNS: dict[str, tuple[int, float | None]] = {
    "00_inverse_kinematics.ipynb": (10_000, None),
    "01_quickstart.ipynb": (10_000, 1.4),
    "02_iid_trials_and_guidance.ipynb": (5_000, 1.2),
    "03_joint_model.ipynb": (5_000, 3.2),
    "04_design_choices.ipynb": (10_000, 7.3),
    "05_fields.ipynb": (5_000, None),
    "06_hierarchical.ipynb": (20_000, 11.1),
}
"""Each notebook's default budget and the minutes a run at it took on two idle
CPU cores (``python make_notebooks.py --execute``, which prints them); None
where no full run is stored yet."""

UNSTORED_RUN_PARTS: dict[str, str] = {
    "00_inverse_kinematics.ipynb": (
        "about 13 minutes to train the `JointDiffusion`, 1-3 minutes for each "
        "other estimator"
    ),
    "05_fields.ipynb": (
        "about 0.5 s per U-Net training step on a 16 x 16 field (3,000 steps), "
        "about 6 minutes for sbi's NPE"
    ),
}
"""What the parts of a notebook without a stored full run cost."""

SHARED_MACHINE_RUNS = {"06_hierarchical.ipynb"}
"""Notebooks whose stored full run shared the two cores with two other jobs, so
that its time is an upper bound."""


def run_time_note(name: str) -> str:
    """The sentence at the top of notebook ``name`` on how long a full run takes."""
    simulations, minutes = FULL_RUNS[name]
    if minutes is None:
        return (
            f"\n\n*Run time:* a full run ({simulations:,} simulations) has not been "
            "stored yet; the stored notebook has no outputs. Its parts, measured "
            f"separately on two CPU cores: {UNSTORED_RUN_PARTS[name]}."
        )
    cores = (
        "two CPU cores shared with two other jobs (an upper bound)"
        if name in SHARED_MACHINE_RUNS
        else "two idle CPU cores"
    )
    return (
        f"\n\n*Run time:* a full run ({simulations:,} simulations) took about "
        f"{minutes:.1f} minutes on {cores}; the stored outputs are from such a run."
    )


def keep_stored_outputs(notebook: nbformat.NotebookNode, path: Path) -> None:
    """Copy the outputs of the notebook stored at ``path`` into ``notebook`` when
    its code cells are unchanged, so that editing the text keeps the outputs."""
    if not path.exists():
        return
    stored = nbformat.read(path, as_version=4)
    stored_code = [cell for cell in stored.cells if cell.cell_type == "code"]
    new_code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    if [c.source for c in stored_code] != [c.source for c in new_code]:
        return
    for old, new in zip(stored_code, new_code, strict=True):
        new.outputs = old.outputs
        new.execution_count = old.execution_count


def execute(path: Path, simulations: int | None) -> float:
    """Run the notebook at ``path`` and store its outputs in it; returns the
    seconds it took.

    Args:
        path: The notebook.
        simulations: The simulation budget; None runs the notebook's default.
    """
    import os
    import time

    from nbclient import NotebookClient

    if simulations is None:
        os.environ.pop("SBI_DIFFUSION_TUTORIAL_SIMULATIONS", None)
    else:
        os.environ["SBI_DIFFUSION_TUTORIAL_SIMULATIONS"] = str(simulations)
    os.environ.setdefault("MPLBACKEND", "Agg")
    # the kernel imports the sbi_diffusion of this checkout, not an installed one
    root = str(path.resolve().parents[1])
    python_path = os.environ.get("PYTHONPATH")
    paths = [root] + ([python_path] if python_path else [])
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(
        notebook,
        timeout=None,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    nbformat.write(notebook, path)
    return time.perf_counter() - start


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--execute",
        nargs="?",
        type=int,
        const=0,
        metavar="SIMULATIONS",
        help="also run each notebook and store its outputs: with this budget, or "
        "without a value at the notebook's default budget (a full run)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="PREFIX",
        help="write (and run) only the notebooks whose file names start with one "
        "of these, e.g. --only 02 04",
    )
    args = parser.parse_args()
    here = Path(__file__).parent
    for name, cells in NOTEBOOKS:
        if args.only and not name.startswith(tuple(args.only)):
            continue
        notebook = new_notebook(cells=cells)
        notebook.cells[0].source += run_time_note(name)
        for number, cell in enumerate(notebook.cells):
            cell["id"] = f"cell-{number:02d}"  # stable ids: reviewable diffs
        notebook.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        keep_stored_outputs(notebook, here / name)
        nbformat.write(notebook, here / name)
        if args.execute is not None:
            budget = args.execute or None
            seconds = execute(here / name, budget)
            print(
                f"{name}: ran in {seconds:.0f} s ({seconds / 60:.1f} min) with "
                f"{budget or FULL_RUNS[name][0]} simulations"
            )


if __name__ == "__main__":
    main()
