"""Time grids: decreasing float64 times ``t_0 = t_start > t_1 > ... > t_N = t_min``.

A grid is a small object called as ``grid(process, n_steps, t_min, t_start)``; ``t_start`` defaults
to the process's ``T`` and is chosen by the sampler (see `Sampler.start_time`). A grid never knows
about samplers. Every grid is validated by `check_grid`.
"""

from __future__ import annotations


import math

from collections.abc import Sequence

import torch
from torch import Tensor

from ..sdes.base import LinearSDE, invert_decreasing
from .._warn import warn_user


def check_grid(times: Tensor, T: float) -> Tensor:
    """Raise a clear error unless ``times`` is finite, strictly decreasing and inside ``(0, T]``."""
    if times.dim() != 1 or times.numel() < 2:
        raise ValueError(f"a time grid needs at least 2 times (1 step), got shape {tuple(times.shape)}")
    if not torch.isfinite(times).all():
        raise ValueError("the time grid contains NaN or inf")
    if not (times[1:] < times[:-1]).all():
        raise ValueError(f"time grid must be strictly decreasing from T to t_min, got {times.tolist()[:6]}...")
    if times[-1] <= 0 or times[0] > T * (1 + 1e-12):
        raise ValueError(
            f"time grid must lie in (0, T={T}]; got [{times[-1].item():.6g}, {times[0].item():.6g}] "
            "(t_min must be > 0: the final denoising step handles t_min -> 0)"
        )
    _warn_if_degenerate(times)
    return times


#: a grid whose largest step covers more than this fraction of its span has collapsed at one end
COLLAPSED_FRACTION = 0.9


def _warn_if_degenerate(times: Tensor) -> None:
    """Warn when the steps collapse at one end (a power grid with an extreme exponent): all but one step
    are then spent where nothing happens, and the samples come out of a single big step."""
    steps = times[:-1] - times[1:]
    span = float(times[0] - times[-1])
    if steps.numel() < 3 or span <= 0:
        return
    largest = float(steps.max())
    if largest > COLLAPSED_FRACTION * span:
        warn_user(f"the time grid has collapsed: one of its {steps.numel()} steps covers {100 * largest / span:.0f}% "
                      f"of [{float(times[-1]):.4g}, {float(times[0]):.4g}], so the others are nearly wasted; use a "
                      "grid that spreads its steps (the default quadratic grid, or a power between 1 and 3)")


class TimeGrid:
    """Base class of time grids."""

    def __call__(self, process: LinearSDE, n_steps: int, t_min: float, t_start: float | None = None) -> Tensor:
        if int(n_steps) < 1:
            raise ValueError(f"a time grid needs n_steps >= 1, got {n_steps}")
        if not 0 < t_min < process.T:
            raise ValueError(f"t_min must lie in (0, T={process.T}), got {t_min}")
        t_start = process.T if t_start is None else float(t_start)
        if not t_min < t_start <= process.T:
            raise ValueError(f"t_start must lie in (t_min={t_min}, T={process.T}], got {t_start}")
        times = self.times(process, int(n_steps), float(t_min), t_start)
        times[0], times[-1] = t_start, float(t_min)  # the ends exactly, whatever the formula's round-off
        return check_grid(times, process.T)

    def times(self, process: LinearSDE, n_steps: int, t_min: float, t_start: float) -> Tensor:
        """``n_steps + 1`` decreasing float64 times from ``t_start`` to ``t_min``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class UniformGrid(TimeGrid):
    """Equally spaced times."""

    def times(self, process: LinearSDE, n_steps: int, t_min: float, t_start: float) -> Tensor:
        return torch.linspace(t_start, t_min, n_steps + 1, dtype=torch.float64)


class PowerGrid(TimeGrid):
    """``t_i = linspace(t_start^{1/p}, t_min^{1/p})^p``; ``power=2`` is the quadratic grid of the gDDIM/CLD papers.

    Args:
        power: the exponent ``p`` (1 is uniform).
    """

    def __init__(self, power: float = 2.0) -> None:
        if not (math.isfinite(power) and power > 0):
            raise ValueError(f"power must be a finite positive number, got {power}")
        self.power = float(power)

    def times(self, process: LinearSDE, n_steps: int, t_min: float, t_start: float) -> Tensor:
        p = self.power
        return torch.linspace(t_start ** (1 / p), t_min ** (1 / p), n_steps + 1, dtype=torch.float64) ** p


class QuadraticGrid(PowerGrid):
    """The quadratic grid ``t_i = linspace(sqrt(t_start), sqrt(t_min))^2`` used by the paper's CLD results."""

    def __init__(self) -> None:
        super().__init__(2.0)


class LogSNRGrid(TimeGrid):
    """Times uniform in the process's log signal-to-noise ratio (`LinearSDE.log_snr`), found by bisection."""

    def times(self, process: LinearSDE, n_steps: int, t_min: float, t_start: float) -> Tensor:
        lo, hi = process.log_snr(torch.tensor([t_start, t_min], dtype=torch.float64)).tolist()
        targets = torch.linspace(lo, hi, n_steps + 1, dtype=torch.float64)
        return invert_decreasing(process.log_snr, targets, t_min, t_start)


class ExplicitGrid(TimeGrid):
    """A user-given grid; ``n_steps``, ``t_min`` and ``t_start`` must agree with it.

    Args:
        times: strictly decreasing times from the sampler's start time (default ``T``) to ``t_min``.
    """

    def __init__(self, times: Sequence[float]) -> None:
        self.times_list = [float(t) for t in times]

    def __call__(self, process: LinearSDE, n_steps: int | None = None, t_min: float | None = None,
                 t_start: float | None = None) -> Tensor:
        times = check_grid(torch.tensor(self.times_list, dtype=torch.float64), process.T)
        start = process.T if t_start is None else float(t_start)
        if abs(start - times[0].item()) > 1e-12 * max(1.0, start):
            raise ValueError(f"ExplicitGrid starts at {times[0].item():.6g} but the sampler starts at {start:.6g} "
                             "(its t_start, rho_start or T); make them agree")
        if n_steps is not None and n_steps != times.numel() - 1:
            raise ValueError(f"ExplicitGrid has {times.numel() - 1} steps but the sampler asks for {n_steps}; "
                             "set the sampler's nfe to the grid's steps plus its denoising evaluation")
        if t_min is not None and abs(t_min - times[-1].item()) > 1e-12 * max(1.0, t_min):
            raise ValueError(f"ExplicitGrid ends at {times[-1].item():.6g} but the sampler's t_min is {t_min}; "
                             "make them agree")
        return times

