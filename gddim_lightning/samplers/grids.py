"""Time grids: decreasing float64 times ``t_0 = T > t_1 > ... > t_N = t_min``.

A grid is a small object called as ``grid(process, n_steps, t_min)``; it never knows about
samplers. Every grid is validated by `check_grid`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..sdes.base import LinearSDE


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
    return times


class TimeGrid:
    """Base class of time grids."""

    def __call__(self, process: LinearSDE, n_steps: int, t_min: float) -> Tensor:
        if int(n_steps) < 1:
            raise ValueError(f"a time grid needs n_steps >= 1, got {n_steps}")
        if not 0 < t_min < process.T:
            raise ValueError(f"t_min must lie in (0, T={process.T}), got {t_min}")
        return check_grid(self.times(process, int(n_steps), float(t_min)), process.T)

    def times(self, process: LinearSDE, n_steps: int, t_min: float) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class UniformGrid(TimeGrid):
    """Equally spaced times."""

    def times(self, process: LinearSDE, n_steps: int, t_min: float) -> Tensor:
        return torch.linspace(process.T, t_min, n_steps + 1, dtype=torch.float64)


class PowerGrid(TimeGrid):
    """``t_i = linspace(T^{1/p}, t_min^{1/p})^p``; ``power=2`` is the quadratic grid of the gDDIM/CLD papers.

    Args:
        power: the exponent ``p`` (1 is uniform).
    """

    def __init__(self, power: float = 2.0) -> None:
        if power <= 0:
            raise ValueError(f"power must be positive, got {power}")
        self.power = float(power)

    def times(self, process: LinearSDE, n_steps: int, t_min: float) -> Tensor:
        p = self.power
        return torch.linspace(process.T ** (1 / p), t_min ** (1 / p), n_steps + 1, dtype=torch.float64) ** p


class QuadraticGrid(PowerGrid):
    """The quadratic grid ``t_i = linspace(sqrt(T), sqrt(t_min))^2`` used by the paper's CLD results."""

    def __init__(self) -> None:
        super().__init__(2.0)


class LogSNRGrid(TimeGrid):
    """Times uniform in the process's log signal-to-noise ratio (`LinearSDE.log_snr`), found by bisection."""

    def times(self, process: LinearSDE, n_steps: int, t_min: float) -> Tensor:
        lo, hi = process.log_snr(torch.tensor([process.T, t_min], dtype=torch.float64)).tolist()
        targets = torch.linspace(lo, hi, n_steps + 1, dtype=torch.float64)
        a = torch.full_like(targets, t_min)
        b = torch.full_like(targets, process.T)
        for _ in range(60):  # log-SNR decreases in t
            mid = 0.5 * (a + b)
            above = process.log_snr(mid) > targets
            a = torch.where(above, mid, a)
            b = torch.where(above, b, mid)
        out = 0.5 * (a + b)
        out[0], out[-1] = process.T, t_min
        return out


class ExplicitGrid(TimeGrid):
    """A user-given grid; ``n_steps`` and ``t_min`` must agree with it.

    Args:
        times: strictly decreasing times from ``T`` to ``t_min``.
    """

    def __init__(self, times: Sequence[float]) -> None:
        self.times_list = [float(t) for t in times]

    def __call__(self, process: LinearSDE, n_steps: int | None = None, t_min: float | None = None) -> Tensor:
        times = check_grid(torch.tensor(self.times_list, dtype=torch.float64), process.T)
        if n_steps is not None and n_steps != times.numel() - 1:
            raise ValueError(f"ExplicitGrid has {times.numel() - 1} steps but the sampler asks for {n_steps}; "
                             "set the sampler's nfe to the grid's steps plus its denoising evaluation")
        if t_min is not None and abs(t_min - times[-1].item()) > 1e-12 * max(1.0, t_min):
            raise ValueError(f"ExplicitGrid ends at {times[-1].item():.6g} but the sampler's t_min is {t_min}; "
                             "make them agree")
        return times


GRIDS = {"uniform": UniformGrid, "quadratic": QuadraticGrid, "logsnr": LogSNRGrid}
