"""Published C2ST numbers on the sbibm tasks, to set beside measured rows.

Two sources, each a mean C2ST over observations 1-10 at 10^3, 10^4 and 10^5
simulations (``None`` where the source has no number):

- Lueckmann et al. 2021, "Benchmarking simulation-based inference" (AISTATS),
  the sbibm paper: NPE, NLE and their sequential forms SNPE and SNLE (10 rounds).
  gaussian_mixture is the sbibm 1.1 rerun of that task.
- Gloeckler et al. 2024, "All-in-one simulation-based inference" (ICML), the
  Simformer, read off the paper's figures (to about +-0.005), on the four tasks
  it reports.
"""

from __future__ import annotations

from dataclasses import dataclass

BUDGETS: tuple[int, int, int] = (1_000, 10_000, 100_000)


@dataclass(frozen=True)
class PublishedMethod:
    """One published method's mean C2ST per task.

    Attributes:
        label: Column label, e.g. ``"NLE (sbibm paper)"``.
        sequential: Whether the method spends its budget over several rounds
            for one observation (not amortised, so not a like-for-like
            competitor of a single round).
        c2st: Task name to the C2ST at 10^3, 10^4 and 10^5 simulations.
    """

    label: str
    sequential: bool
    c2st: dict[str, tuple[float | None, float | None, float | None]]

    def at(self, task: str, num_simulations: int) -> float | None:
        """The published C2ST of ``task`` at ``num_simulations``, if any."""
        if num_simulations not in BUDGETS or task not in self.c2st:
            return None
        return self.c2st[task][BUDGETS.index(num_simulations)]


SBIBM_NPE = PublishedMethod(
    "NPE (sbibm paper)",
    False,
    {
        "gaussian_linear": (0.69, 0.55, 0.51),
        "gaussian_linear_uniform": (0.70, 0.55, 0.51),
        "gaussian_mixture": (0.72, 0.62, 0.55),
        "two_moons": (0.73, 0.61, 0.54),
        "slcp": (0.98, 0.90, 0.83),
        "slcp_distractors": (0.98, 0.97, 0.86),
        "bernoulli_glm": (0.86, 0.68, 0.56),
        "bernoulli_glm_raw": (0.90, 0.76, 0.61),
        "sir": (0.82, 0.68, 0.58),
        "lotka_volterra": (1.00, 1.00, 0.98),
    },
)
SBIBM_NLE = PublishedMethod(
    "NLE (sbibm paper)",
    False,
    {
        "gaussian_linear": (0.65, 0.55, 0.51),
        "gaussian_linear_uniform": (0.72, 0.55, 0.51),
        "gaussian_mixture": (0.74, 0.72, 0.69),
        "two_moons": (0.77, 0.71, 0.67),
        "slcp": (0.95, 0.77, 0.70),
        "slcp_distractors": (0.99, 0.96, 0.91),
        "bernoulli_glm": (0.74, 0.60, 0.54),
        "bernoulli_glm_raw": (0.87, 0.94, 0.95),
        "sir": (0.76, 0.75, 0.73),
        "lotka_volterra": (0.99, 0.96, 0.95),
    },
)
SBIBM_SNPE = PublishedMethod(
    "SNPE (sbibm paper)",
    True,
    {
        "gaussian_linear": (0.65, 0.54, 0.51),
        "gaussian_linear_uniform": (0.63, 0.53, 0.51),
        "gaussian_mixture": (0.67, 0.55, 0.54),
        "two_moons": (0.64, 0.55, 0.53),
        "slcp": (0.97, 0.84, 0.67),
        "slcp_distractors": (0.98, 0.93, 0.78),
        "bernoulli_glm": (0.85, 0.61, 0.52),
        "bernoulli_glm_raw": (0.91, 0.66, 0.61),
        "sir": (0.64, 0.56, 0.57),
        "lotka_volterra": (0.99, 0.95, 0.93),
    },
)
SBIBM_SNLE = PublishedMethod(
    "SNLE (sbibm paper)",
    True,
    {
        "gaussian_linear": (0.63, 0.55, 0.52),
        "gaussian_linear_uniform": (0.66, 0.55, 0.51),
        "gaussian_mixture": (0.71, 0.69, 0.65),
        "two_moons": (0.66, 0.57, 0.58),
        "slcp": (0.92, 0.71, 0.58),
        "slcp_distractors": (0.99, 0.95, 0.88),
        "bernoulli_glm": (0.63, 0.55, 0.52),
        "bernoulli_glm_raw": (0.99, 0.97, 0.99),
        "sir": (0.75, 0.74, 0.65),
        "lotka_volterra": (0.91, 0.74, 0.70),
    },
)
SIMFORMER = PublishedMethod(
    "Simformer (paper)",
    False,
    {
        "two_moons": (0.61, 0.53, 0.51),
        "gaussian_mixture": (0.57, 0.52, 0.50),
        "gaussian_linear": (0.54, 0.51, 0.50),
        "slcp": (0.83, 0.65, 0.57),
    },
)

PUBLISHED: tuple[PublishedMethod, ...] = (
    SBIBM_NPE,
    SBIBM_NLE,
    SIMFORMER,
    SBIBM_SNPE,
    SBIBM_SNLE,
)
"""Every published method, single-round ones first."""
