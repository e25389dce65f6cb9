"""Training length and stopping: the final weights of a training to the step
bound against the weights with the lowest validation loss.

`DiffusionNPE.train()` keeps the (EMA) weights with the lowest validation loss
and returns them, also when early stopping is switched off. This script trains
to the step bound with early stopping off (`stop_after_epochs=100000`) and
returns the final EMA weights instead, by replacing the stopping rule's choice
of weights for this process only. The rows go to their own file (the method
spec alone cannot tell them from a training that returns the best weights) and
no model is cached.

Usage:
    python benchmarks/stopping/last_weights.py --tasks slcp --observations 1-5
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

from sbi_diffusion.benchmark.api import run_benchmark
from sbi_diffusion.benchmark.cli import _int_list
from sbi_diffusion.inference import stopping

HERE = Path(__file__).parent
OUTPUT = HERE.parent / "results" / "last_weights.jsonl"


def final_weights(self: stopping.PatienceStopping, model: nn.Module) -> nn.Module:
    """The stopping rule's estimator: the model as trained, not the best kept."""
    return model


def main() -> None:
    """Run the grid of the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["slcp"])
    parser.add_argument("--observations", type=_int_list, default=[1, 2, 3, 4, 5])
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--output", default=str(OUTPUT))
    args = parser.parse_args()
    stopping.PatienceStopping.estimator = final_weights  # type: ignore[method-assign]
    run_benchmark(
        tasks=args.tasks,
        num_simulations=[args.budget],
        methods=["diffusion:stop_after_epochs=100000"],
        observations=args.observations,
        output=args.output,
        executor="inline",
        torch_threads=1,
        model_cache=None,
    )


if __name__ == "__main__":
    main()
