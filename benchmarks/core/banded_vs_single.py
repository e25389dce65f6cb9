r"""One training, two estimators: the noise-band experts and the single best.

``train(noise_bands=K)`` returns the banded estimator (each band of noise levels
answered by the weights with the lowest validation loss on that band) and
leaves the trainer's EMA model at the weights with the lowest validation loss
over all levels, the estimator that ``noise_bands=1`` returns. Scoring both on
the same training separates the effect of the band mixing from that of the
longer training. Prints the epoch each band keeps and one C2ST per estimator
and observation (sbibm's reference, the benchmark's sampling seed).

Example::

    python benchmarks/core/banded_vs_single.py --task gaussian_mixture \
        --budget 1000 --observations 1 3
"""

from __future__ import annotations

import argparse

import torch
from sbibm.metrics import c2st

from sbi_diffusion.benchmark import methods as method_registry
from sbi_diffusion.benchmark.runner import sampling_seed, train_or_load
from sbi_diffusion.benchmark.tasks import load_task


def main(argv: list[str] | None = None) -> None:
    """Train once and score the banded and the single-best estimator."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--budget", type=int, required=True)
    parser.add_argument("--method", default="diffusion:noise_bands=4")
    parser.add_argument("--observations", type=int, nargs="+", default=[1])
    args = parser.parse_args(argv)

    task = load_task(args.task)
    spec = method_registry.parse(args.method)
    trained = train_or_load(args.task, task, spec, args.budget, 0, "cpu", None)
    inference = trained.inference
    selection = inference._stopping_rule.selection
    epochs = len(inference._summary["validation_loss"])
    print(f"{epochs} epochs; epoch kept per band: {selection.best_updates}")
    estimators = {
        "banded": inference._trained_estimator,
        "single best": inference._ema.model,
    }
    for name, estimator in estimators.items():
        posterior = method_registry.build_posterior(
            spec, inference, trained.routed, estimator
        )
        for num_observation in args.observations:
            reference = task.get_reference_posterior_samples(num_observation)
            torch.manual_seed(sampling_seed(0, num_observation))
            samples = posterior.sample(
                (10_000,),
                x=task.get_observation(num_observation),
                show_progress_bars=False,
            )
            score = float(c2st(reference[:10_000], samples))
            print(f"{name}, observation {num_observation}: C2ST {score:.3f}")


if __name__ == "__main__":
    main()
