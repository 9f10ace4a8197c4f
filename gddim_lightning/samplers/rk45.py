"""Adaptive RK45 (Dormand-Prince, scipy) on the probability-flow ODE, reporting the NFE it used."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from ..sdes.base import LinearSDE
from .base import Callback, CountingEps, SampleNoise, Sampler


class RK45(Sampler):
    """Probability flow ``du/dt = F u + 1/2 G G^T R^{-T} eps`` solved by scipy's adaptive RK45 over
    the whole batch (as in the CLD and score-SDE papers); the NFE is what the solver used.

    Args:
        rtol: relative tolerance (CLD paper: 1e-5).
        atol: absolute tolerance (CLD paper: 1e-5).
        t_min: end time.
        denoise: final step (see `Sampler`).
        t_start: first grid time (see `Sampler`; default ``T``).
        rho_start: start where the noise-to-signal ratio is this instead (see `Sampler`).
    """

    drift_only = True

    def __init__(self, rtol: float = 1e-5, atol: float = 1e-5, t_min: float = 1e-3, denoise: str = "euler",
                 t_start: float | None = None, rho_start: float | None = None) -> None:
        super().__init__(t_min, denoise, t_start, rho_start)
        if not (rtol > 0 and atol > 0):
            raise ValueError(f"rtol and atol must be positive, got {rtol}, {atol}")
        self.rtol = float(rtol)
        self.atol = float(atol)

    def run(self, process: LinearSDE, eps: CountingEps, noise: SampleNoise, u: Tensor,
            callback: Callback | None) -> tuple[Tensor, dict[str, Any]]:
        shape, dtype, device = u.shape, u.dtype, u.device
        ops = process.ops

        def f(t: float, x: np.ndarray) -> np.ndarray:
            uu = torch.from_numpy(x).reshape(shape).to(device=device, dtype=dtype)
            d = ops.F(t) @ uu + (0.5 * ops.score_drift(t)) @ eps(uu, t, "rk45")
            return d.to("cpu", torch.float64).reshape(-1).numpy()

        res = solve_ivp(f, (self.start_time(process), self.t_min), u.detach().to("cpu", torch.float64).reshape(-1).numpy(),
                        method="RK45", rtol=self.rtol, atol=self.atol)
        if not res.success:
            raise RuntimeError(f"RK45 failed: {res.message}")
        out = torch.from_numpy(res.y[:, -1].copy()).reshape(shape).to(device=device, dtype=dtype)
        if callback is not None:
            callback({"step": len(res.t) - 1, "t": self.t_min, "u": out})
        return out, {"steps": len(res.t) - 1, "solver_nfev": int(res.nfev)}
