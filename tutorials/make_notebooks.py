"""Write the tutorial notebooks from the cells below (run: python make_notebooks.py).

Keeping the cells in a script keeps the notebooks reviewable in diffs; the tests
execute the written notebooks.
"""

from pathlib import Path

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
        "Set the environment variable `SBI_DIFFUSION_TUTORIAL_SIMULATIONS` to "
        "change the simulation budget (the tests run it small)."
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
        "'SBI_DIFFUSION_TUTORIAL_SIMULATIONS', 10_000))\n"
        "max_num_epochs = None if num_simulations >= 5000 else 30"
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
        "weights, early stopping on a fixed-time validation loss."
    ),
    new_code_cell(
        "inference = DiffusionNPE(prior, show_progress_bars=False)\n"
        "start = time.time()\n"
        "inference.append_simulations(theta, x).train(max_num_epochs=max_num_epochs)\n"
        "print(f'trained in {time.time() - start:.0f} s')\n"
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
        "print('C2ST:', float(c2st(reference, samples)))"
    ),
    new_code_cell(
        "fig, axes = pairplot([samples, reference[:2000]], "
        "limits=[[-1, 1], [-1, 1]], figsize=(5, 5))\n"
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
        "## Simulation-based calibration\n\nRanks of true parameters among "
        "posterior samples should be uniform (a quick check with few tests)."
    ),
    new_code_cell(
        "thetas = prior.sample((20,))\n"
        "xs = simulator(thetas)\n"
        "ranks, dap = run_sbc(thetas, xs, posterior, num_posterior_samples=100,\n"
        "                     show_progress_bar=False)\n"
        "check_sbc(ranks, thetas, dap, num_posterior_samples=100)['ks_pvals']"
    ),
]


def main() -> None:
    here = Path(__file__).parent
    notebook = new_notebook(cells=QUICKSTART)
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(notebook, here / "01_quickstart.ipynb")


if __name__ == "__main__":
    main()
