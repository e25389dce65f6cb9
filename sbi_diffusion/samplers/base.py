r"""Sampler registry, network-evaluation counting and the fixed-grid driver.

A sampler integrates the reverse process from ``t_max`` (noise) to ``t_min``
(data). Every sampler is a function

.. code-block:: python

    sampler(denoise: DenoiseFn, noise: Tensor, *, steps, generator,
            show_progress_bars, **options) -> SamplerResult

registered by name with :func:`register_sampler`. Fixed-grid samplers are
written as one *step* ``z_{t_i} -> z_{t_{i+1}}`` and share :func:`run_fixed_grid`,
which draws the time grid from the schedule, runs an optional Langevin
corrector after every predictor step, and finally returns ``x_hat(z, t_min)``
(the last, noise-free Euler step of Karras et al. 2022) where
``sigma(t_min) > 0``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sbi_diffusion.model.interface import DenoiseFn
from sbi_diffusion.path.schedules import shift_times
from sbi_diffusion.path.vector_field import as_time
from sbi_diffusion.samplers.langevin import langevin_correct
from sbi_diffusion.samplers.noise import gaussian_like, initial_noise

__all__ = [
    "SamplerResult",
    "CountingDenoiser",
    "register_sampler",
    "get_sampler",
    "SAMPLERS",
    "FixedGridStep",
    "run_fixed_grid",
    "fixed_grid_sampler",
    "initial_noise",
    "sample_from_noise",
    "sampling_call_options",
    "network_evaluations_per_call",
    "schedule_value",
    "final_denoising",
    "gaussian_like",
]


@dataclass
class SamplerResult:
    """Samples (standardised space) and network evaluations per sample (NFE)."""

    samples: Tensor
    nfe: float


class CountingDenoiser:
    """Wraps a ``DenoiseFn`` and counts network evaluations per sample.

    A call on ``m`` rows of a batch of ``n`` samples counts ``m / n``
    evaluations, so adaptive samplers that evaluate only unfinished rows report
    their mean NFE per sample.

    Args:
        denoise: the wrapped ``(z, t) -> x_hat``.
        batch_size: number of samples ``n``.
        counter: the counter to add evaluations to (this one if None); used by
            :meth:`restricted_to`.
    """

    def __init__(
        self,
        denoise: DenoiseFn,
        batch_size: int,
        counter: CountingDenoiser | None = None,
    ):
        self.denoise = denoise
        self.schedule = denoise.schedule
        self.batch_size = max(int(batch_size), 1)
        self.nfe = 0.0
        self._counter = self if counter is None else counter

    def __call__(self, z: Tensor, t: Tensor) -> Tensor:
        self._counter.nfe += z.shape[0] / self._counter.batch_size
        return self.denoise(z, as_time(t, z))

    def restricted_to(self, rows: Tensor) -> CountingDenoiser:
        """The same denoiser on the batch rows ``rows`` only, counting here.

        Needed where the denoiser holds per-row state (one condition per row, as
        in ``sample_batched``); a denoiser without a ``restricted_to`` method is
        taken to act on rows independently.
        """
        restrict = getattr(self.denoise, "restricted_to", None)
        inner = self.denoise if restrict is None else restrict(rows)
        return CountingDenoiser(inner, self.batch_size, counter=self._counter)


def network_evaluations_per_call(denoise: DenoiseFn) -> float:
    """Network evaluations of one call of ``denoise``: its
    ``evaluations_per_call`` (guided or composed denoisers), else 1."""
    return float(getattr(denoise, "evaluations_per_call", 1))


SAMPLERS: dict[str, Callable[..., SamplerResult]] = {}


def register_sampler(name: str, deterministic: bool = False):
    """Decorator registering a sampler function under ``name``.

    Args:
        name: the name ``get_sampler`` takes.
        deterministic: the sampler integrates the probability-flow ODE (no noise
            is injected unless an option such as ``eta > 0`` or a ``corrector``
            adds it); see :func:`runs_deterministically`.
    """

    def decorator(fn: Callable[..., SamplerResult]) -> Callable[..., SamplerResult]:
        SAMPLERS[name] = fn
        fn.sampler_name = name
        fn.deterministic = deterministic
        return fn

    return decorator


def runs_deterministically(
    sampler: Callable[..., SamplerResult], options: dict
) -> bool:
    """Whether a call of ``sampler`` with ``options`` injects no noise: an ODE
    sampler (registered ``deterministic``) without a Langevin ``corrector`` and
    without ``eta > 0`` (DDIM)."""
    if not getattr(sampler, "deterministic", False):
        return False
    return options.get("corrector") is None and not float(options.get("eta", 0.0)) > 0


def get_sampler(name: str) -> Callable[..., SamplerResult]:
    """Return the sampler registered as ``name``.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in SAMPLERS:
        raise ValueError(f"Unknown sampler {name!r}. Pass one of {sorted(SAMPLERS)}.")
    return SAMPLERS[name]


def sample_from_noise(
    sampler: Callable[..., SamplerResult],
    denoise: DenoiseFn,
    schedule,
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: str | torch.device,
    **options,
) -> SamplerResult:
    r"""Run ``sampler`` on ``denoise`` from fresh initial noise
    ``z_{t_max} ~ N(0, (alpha(t_max)^2 + sigma(t_max)^2) I)`` of ``shape``
    (:func:`initial_noise`), without gradients.

    With a ``generator`` the noise is drawn on the CPU and moved to ``device``, so
    the samples do not depend on the device; without one it is drawn on
    ``device``. ``options`` go to the sampler.

    Raises:
        ValueError: if the sampler does not take one of the ``options`` (e.g.
            ``time_shift`` for the adaptive ``dopri5``).
    """
    noise = initial_noise(
        schedule,
        shape,
        generator=generator,
        device="cpu" if generator is not None else device,
    ).to(device)
    with torch.no_grad():
        try:
            return sampler(denoise, noise, generator=generator, **options)
        except TypeError as err:
            if "unexpected keyword argument" not in str(err):
                raise
            name = getattr(sampler, "sampler_name", getattr(sampler, "__name__", ""))
            raise ValueError(
                f"The sampler {name!r} does not take this option ({err}). Options "
                f"given: {sorted(options)}; see the sampler's docstring in "
                "sbi_diffusion.samplers for the ones it takes."
            ) from err


def sampling_call_options(
    sampler: str,
    default_sampler: str,
    default_options: dict,
    options: dict,
    steps: int | None,
) -> dict:
    """Options of one sampling call: the default options where ``sampler`` is the
    default sampler (none otherwise), updated by ``options`` and ``steps``."""
    merged = dict(default_options) if sampler == default_sampler else {}
    merged.update(options)
    if steps is not None:
        merged["steps"] = steps
    return merged


def sampler_takes_option(sampler: Callable[..., SamplerResult], name: str) -> bool:
    """Whether ``sampler`` takes the keyword option ``name``: it names it, or it
    passes ``**options`` on to :func:`run_fixed_grid` (every registered
    fixed-grid sampler), which names it."""
    parameters = inspect.signature(sampler).parameters
    if name in parameters:
        return True
    passes_on = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    return passes_on and name in inspect.signature(run_fixed_grid).parameters


def schedule_value(
    fn: Callable[[Tensor], Tensor],
    t: Tensor | float,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """A schedule function (``alpha``, ``sigma``, ...) at the single time ``t``,
    as a 0-d tensor; ``t`` is converted to ``dtype`` first where given."""
    return fn(torch.as_tensor(t, dtype=dtype).reshape(1))[0]


def final_denoising(counter: CountingDenoiser, z: Tensor, t_end: Tensor) -> Tensor:
    r"""``x_hat(z, t_end)`` where ``sigma(t_end) > 0``, else ``z``: the last,
    noise-free Euler step to ``sigma = 0`` (Karras et al. 2022, Algorithm 1)."""
    if float(schedule_value(counter.schedule.sigma, t_end)) > 0:
        return counter(z, t_end)
    return z


# A fixed-grid step: (denoise, z, t_cur, t_next, state, generator) -> z_next.
# ``state`` is a dict the step may use to carry history (multistep methods).
FixedGridStep = Callable[
    [CountingDenoiser, Tensor, Tensor, Tensor, dict, "torch.Generator | None"], Tensor
]


def run_fixed_grid(
    step: FixedGridStep,
    denoise: DenoiseFn,
    noise: Tensor,
    steps: int,
    generator: torch.Generator | None = None,
    show_progress_bars: bool = False,
    time_grid: Tensor | None = None,
    corrector: str | None = None,
    corrector_steps: int = 1,
    corrector_snr: float = 0.1,
    final_denoise: bool = True,
    description: str = "Sampling",
    spacing: str = "schedule",
    time_shift: float | None = None,
) -> SamplerResult:
    """Run ``step`` along a decreasing time grid.

    Args:
        step: the predictor step.
        denoise: ``(z, t) -> x_hat``.
        noise: initial ``z_{t_max}``, shape ``(batch, dim)``.
        steps: number of steps (ignored if ``time_grid`` is given).
        generator: random generator for stochastic steps.
        show_progress_bars: show a tqdm bar over the steps.
        time_grid: explicit decreasing grid of times (``steps + 1`` values).
        corrector: ``None`` or ``"langevin"`` (Song et al. 2021, predictor-corrector).
        corrector_steps: Langevin steps after each predictor step.
        corrector_snr: signal-to-noise ratio ``r`` of the Langevin step size.
        final_denoise: return ``x_hat(z, t_min)`` at the end when ``sigma > 0``.
        description: label of the progress bar.
        spacing: time grid when ``time_grid`` is None: ``"schedule"`` (the
            schedule's default grid, e.g. Karras' rho-grid for EDM) or
            ``"logsnr"`` (uniform in log-SNR; the schedule's grid where the
            log-SNR is infinite at an end).
        time_shift: maps every time of the grid by :func:`shift_times` with
            this ``s`` (None: no shift). ``s < 1`` puts more steps near the
            data end, where the paths of flow matching bend most.
    """
    if steps is None or int(steps) < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}.")
    if corrector not in (None, "langevin"):
        raise ValueError(f"Unknown corrector {corrector!r}. Pass None or 'langevin'.")
    counter = CountingDenoiser(denoise, noise.shape[0])
    schedule = denoise.schedule
    if spacing not in ("schedule", "logsnr"):
        raise ValueError(f"spacing must be 'schedule' or 'logsnr', got {spacing!r}.")
    if time_grid is not None:
        grid = torch.as_tensor(time_grid, device=noise.device, dtype=noise.dtype)
    else:
        grid = None
        if spacing == "logsnr":
            grid = schedule.log_snr_grid(int(steps), device=noise.device)
        if grid is None:
            grid = schedule.sampling_grid(int(steps), device=noise.device)
    if time_shift is not None:
        grid = shift_times(grid, time_shift)
    z = noise
    state: dict = {}
    for i in tqdm(
        range(len(grid) - 1),
        disable=not show_progress_bars,
        desc=description,
        leave=False,
    ):
        t_cur, t_next = grid[i], grid[i + 1]
        z = step(counter, z, t_cur, t_next, state, generator)
        if corrector is not None and float(schedule.sigma(t_next)) > 0:
            z = langevin_correct(
                counter, z, t_next, corrector_steps, corrector_snr, generator
            )
    if final_denoise:
        z = final_denoising(counter, z, grid[-1])
    return SamplerResult(z, counter.nfe)


def fixed_grid_sampler(
    step: FixedGridStep, default_steps: int, doc: str, **default_options
) -> Callable[..., SamplerResult]:
    """A sampler ``(denoise, noise, steps, generator, show_progress_bars,
    **options)`` that runs ``step`` on a fixed grid (:func:`run_fixed_grid`),
    with ``default_steps`` steps and ``default_options`` unless the call sets
    them; ``doc`` is its docstring. Register it with :func:`register_sampler`."""

    def sampler(
        denoise: DenoiseFn,
        noise: Tensor,
        steps: int = default_steps,
        generator: torch.Generator | None = None,
        show_progress_bars: bool = False,
        **options,
    ) -> SamplerResult:
        return run_fixed_grid(
            step,
            denoise,
            noise,
            steps,
            generator,
            show_progress_bars,
            **{**default_options, **options},
        )

    sampler.__doc__ = doc
    sampler.__name__ = sampler.__qualname__ = step.__name__.removesuffix("_step")
    return sampler
