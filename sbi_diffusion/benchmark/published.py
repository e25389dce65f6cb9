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


# Mean C2ST at 10^3 / 10^4 / 10^5, as printed in the sources.
_SBIBM_PAPER = """
task                    | NPE            | NLE            | SNPE           | SNLE
gaussian_linear         | .69 .55 .51    | .65 .55 .51    | .65 .54 .51    | .63 .55 .52
gaussian_linear_uniform | .70 .55 .51    | .72 .55 .51    | .63 .53 .51    | .66 .55 .51
gaussian_mixture        | .72 .62 .55    | .74 .72 .69    | .67 .55 .54    | .71 .69 .65
two_moons               | .73 .61 .54    | .77 .71 .67    | .64 .55 .53    | .66 .57 .58
slcp                    | .98 .90 .83    | .95 .77 .70    | .97 .84 .67    | .92 .71 .58
slcp_distractors        | .98 .97 .86    | .99 .96 .91    | .98 .93 .78    | .99 .95 .88
bernoulli_glm           | .86 .68 .56    | .74 .60 .54    | .85 .61 .52    | .63 .55 .52
bernoulli_glm_raw       | .90 .76 .61    | .87 .94 .95    | .91 .66 .61    | .99 .97 .99
sir                     | .82 .68 .58    | .76 .75 .73    | .64 .56 .57    | .75 .74 .65
lotka_volterra          | 1.00 1.00 .98  | .99 .96 .95    | .99 .95 .93    | .91 .74 .70
"""
_SIMFORMER_PAPER = """
task                    | Simformer
two_moons               | .61 .53 .51
gaussian_mixture        | .57 .52 .50
gaussian_linear         | .54 .51 .50
slcp                    | .83 .65 .57
"""


def _parse(table: str) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Method name to task to C2ST triple, from a ``|``-separated table."""
    header, *lines = [line for line in table.strip().splitlines()]
    methods = [name.strip() for name in header.split("|")[1:]]
    out: dict[str, dict[str, tuple[float, float, float]]] = {m: {} for m in methods}
    for line in lines:
        task, *cells = [cell.strip() for cell in line.split("|")]
        for method, cell in zip(methods, cells, strict=True):
            low, mid, high = (float(value) for value in cell.split())
            out[method][task] = (low, mid, high)
    return out


_SBIBM = _parse(_SBIBM_PAPER)
SBIBM_NPE = PublishedMethod("NPE (sbibm paper)", False, _SBIBM["NPE"])
SBIBM_NLE = PublishedMethod("NLE (sbibm paper)", False, _SBIBM["NLE"])
SBIBM_SNPE = PublishedMethod("SNPE (sbibm paper)", True, _SBIBM["SNPE"])
SBIBM_SNLE = PublishedMethod("SNLE (sbibm paper)", True, _SBIBM["SNLE"])
SIMFORMER = PublishedMethod(
    "Simformer (paper)", False, _parse(_SIMFORMER_PAPER)["Simformer"]
)

PUBLISHED: tuple[PublishedMethod, ...] = (
    SBIBM_NPE,
    SBIBM_NLE,
    SIMFORMER,
    SBIBM_SNPE,
    SBIBM_SNLE,
)
"""Every published method, single-round ones first."""
