"""Explicit baselines on the lambda-family of reverse processes:

    du = [F_t u - (1 + lambda^2)/2 G G^T score] dt + lambda G dw_bar,   score = -R_t^{-T} eps.

Euler-Maruyama (any ``lambda``; ``lambda = 1`` the reverse SDE, ``lambda = 0`` probability-flow
Euler) and Heun's method on the probability flow.
"""

from __future__ import annotations


from typing import Any

import torch
from torch import Tensor

from ..sdes.base import LinearSDE
from .base import Callback, CountingEps, SampleNoise, Sampler
from .grids import TimeGrid, UniformGrid
from .plan import Plan, drift_plan
from .._warn import warn_user


def warn_if_unstable(name: str, plan: Plan) -> None:
    """Warns when a step exceeds the explicit-Euler stability bound of the process's own drift,
    ``h * max|eig(F_t)| <= 2`` (a lower bound on the stiffness: the score term only adds to it). Stiff
    processes (BDM's heat-equation blur: ``|F_t|`` in the hundreds) make Euler-type steps blow up there,
    where gDDIM and the ancestral sampler, which take ``F_t`` exactly, do not."""
    rho, times = plan.drift_radius, plan.times
    if rho is None:  # not computed for large dense blocks
        return
    h = (times[:-1] - times[1:]).abs()
    worst = h * torch.maximum(rho[:-1], rho[1:])
    if worst.numel() and worst.max() > 2.0:
        k = int(worst.argmax())
        steps = int(torch.ceil((times[0] - times[-1]).abs() * rho.max() / 2.0))
        warn_user(
            f"{name}: step {k} (h={h[k].item():.3g} at t={times[k].item():.3g}) exceeds the explicit stability "
            f"bound 2/|F_t| = {2.0 / torch.maximum(rho[k], rho[k + 1]).item():.3g} of {type(plan.process).__name__}; "
            f"the samples may blow up. Use about {steps} or more uniform steps, or GDDIM (exact in F_t)",
            RuntimeWarning)


class EulerMaruyama(Sampler):
    """Euler-Maruyama on the lambda reverse SDE; NFE = ``nfe`` (``nfe - 1`` steps plus denoising).

    Args:
        nfe: total evaluations.
        lambda_: 1 is the reverse SDE of Song et al.; 0 the probability-flow ODE (Euler).
        grid: time grid (default uniform).
        t_min: last grid time.
        denoise: final step (see `Sampler`).
        t_start: first grid time (see `Sampler`; default ``T``).
        rho_start: start where the noise-to-signal ratio is this instead (see `Sampler`).
    """

    drift_only = True

    def __init__(self, nfe: int = 1000, lambda_: float = 1.0, grid: TimeGrid | None = None,
                 t_min: float = 1e-3, denoise: str = "euler", t_start: float | None = None,
                 rho_start: float | None = None) -> None:
        super().__init__(t_min, denoise, t_start, rho_start)
        self.set_nfe(nfe)
        if not lambda_ >= 0:
            raise ValueError(f"lambda_ must be >= 0, got {lambda_}")
        self.lambda_ = float(lambda_)
        self.grid = grid if grid is not None else UniformGrid()

    def run(self, process: LinearSDE, eps: CountingEps, noise: SampleNoise, u: Tensor,
            callback: Callback | None) -> tuple[Tensor, dict[str, Any]]:
        times = self.times(process)
        plan = drift_plan(process, times, self.lambda_)
        warn_if_unstable(type(self).__name__, plan)
        F, D, G = plan.ops(("F", "D", "G"), u)
        n = plan.n_steps
        for i in range(n):
            t, h = times[i].item(), (times[i] - times[i + 1]).item()
            e = eps(u, t, i)
            # Drift step backwards in time, then noise (none on the last step).
            u = u - h * (F[i] @ u + D[i] @ e)
            if self.lambda_ > 0 and i < n - 1:
                u = u + h**0.5 * (G[i] @ noise.randn(process.state_shape))
            if callback is not None:
                callback({"step": i, "t": t, "u": u, "eps": e})
        return u, {"times": times}


class ProbabilityFlowEuler(EulerMaruyama):
    """Euler's method on the probability-flow ODE (Euler-Maruyama with ``lambda = 0``)."""

    def __init__(self, nfe: int = 1000, grid: TimeGrid | None = None, t_min: float = 1e-3,
                 denoise: str = "euler", t_start: float | None = None, rho_start: float | None = None) -> None:
        super().__init__(nfe, 0.0, grid, t_min, denoise, t_start, rho_start)


class Heun(Sampler):
    """Heun's method (explicit trapezoid) on the probability-flow ODE: 2 evaluations per step.

    Args:
        nfe: total evaluations; ``nfe - denoise`` must be even (2 per step).
        grid: time grid (default uniform).
        t_min: last grid time.
        denoise: final step (see `Sampler`).
        t_start: first grid time (see `Sampler`; default ``T``).
        rho_start: start where the noise-to-signal ratio is this instead (see `Sampler`).
    """

    drift_only = True
    evals_per_step = 2

    def __init__(self, nfe: int = 100, grid: TimeGrid | None = None, t_min: float = 1e-3,
                 denoise: str = "euler", t_start: float | None = None, rho_start: float | None = None) -> None:
        super().__init__(t_min, denoise, t_start, rho_start)
        self.set_nfe(nfe)
        self.grid = grid if grid is not None else UniformGrid()

    def run(self, process: LinearSDE, eps: CountingEps, noise: SampleNoise, u: Tensor,
            callback: Callback | None) -> tuple[Tensor, dict[str, Any]]:
        times = self.times(process)
        plan = drift_plan(process, times, 0.0)
        warn_if_unstable("Heun", plan)
        F, D = plan.ops(("F", "D"), u)

        def drift(u: Tensor, k: int, step: int) -> Tensor:
            return F[k] @ u + D[k] @ eps(u, times[k].item(), step)

        for i in range(plan.n_steps):
            h = (times[i] - times[i + 1]).item()
            # Euler predictor, then trapezoidal corrector.
            d1 = drift(u, i, i)
            d2 = drift(u - h * d1, i + 1, i)
            u = u - 0.5 * h * (d1 + d2)
            if callback is not None:
                callback({"step": i, "t": times[i].item(), "u": u})
        return u, {"times": times}
