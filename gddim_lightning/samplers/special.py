"""Process-specific baselines: CLD's symmetric splitting sampler (SSCS) and the ancestral sampler of
DDPM/BDM (per-frequency Gaussian posterior)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..sdes.base import LinearSDE
from ..sdes.cld import CLD
from ..sdes.scalar import ScalarBlockSDE
from .base import Callback, CountingEps, SampleNoise, Sampler
from .grids import QuadraticGrid, TimeGrid, UniformGrid
from .plan import Plan, cached_plan
from ..sdes.operators import psd_sqrt


class SSCS(Sampler):
    """Symmetric Splitting CLD Sampler (Dockhorn et al., ICLR 2022, Sec. 3.3).

    The reverse SDE of CLD splits into an Ornstein-Uhlenbeck part
    ``A: dx = -M^{-1} v beta dt', dv = (x - Gamma M^{-1} v) beta dt' + sqrt(2 Gamma beta) dw``,
    solved exactly as a Gaussian, and a score part ``S: dv = 2 Gamma beta (score_v + M^{-1} v) dt'``
    (Euler). One step = A(h/2), S(h), A(h/2); one evaluation per step.

    Args:
        nfe: total evaluations (``nfe - 1`` steps plus denoising).
        grid: time grid (default quadratic, the CLD paper's "QS").
        t_min: last grid time.
        denoise: final step (see `Sampler`).
        score_time: where in the step the score part takes its time ``t`` and ``beta(t)``: ``"midpoint"``
            (default; second order in time) or ``"start"``, as the CLD paper's code does (the score is
            evaluated after the first half OU step but at the step's start time: the variant gDDIM was
            compared against).
        t_start: first grid time (see `Sampler`; default ``T``).
        rho_start: start where the noise-to-signal ratio is this instead (see `Sampler`).
    """

    drift_only = True

    def __init__(self, nfe: int = 100, grid: TimeGrid | None = None, t_min: float = 1e-3,
                 denoise: str = "euler", score_time: str = "midpoint", t_start: float | None = None,
                 rho_start: float | None = None) -> None:
        super().__init__(t_min, denoise, t_start, rho_start)
        self.set_nfe(nfe)
        self.grid = grid if grid is not None else QuadraticGrid()
        if score_time not in ("midpoint", "start"):
            raise ValueError(f"score_time must be 'midpoint' or 'start' (the CLD paper's code), got {score_time!r}")
        self.score_time = score_time

    @staticmethod
    def _ou(process: CLD, B: Tensor) -> tuple[Tensor, Tensor]:
        """Mean map ``expm(B F_A0)`` and noise factor of the A part over beta-integral ``B`` ``[N]``."""
        FA = torch.tensor([[0.0, -process.m_inv], [1.0, -process.Gamma * process.m_inv]], dtype=torch.float64)
        x, w = np.polynomial.legendre.leggauss(32)
        r = 0.5 * B.unsqueeze(-1) * (torch.from_numpy(x) + 1)  # [N, 32] nodes on [0, B]
        E = torch.linalg.matrix_exp(r[..., None, None] * FA)  # [N, 32, 2, 2]
        Q = (0.5 * B[:, None, None, None] * torch.from_numpy(w)[None, :, None, None]
             * (E @ process.GG0 @ E.transpose(-1, -2))).sum(1)
        return torch.linalg.matrix_exp(B[:, None, None] * FA), psd_sqrt(Q)

    def _plan(self, process: CLD, times: Tensor) -> Plan:
        def build() -> Plan:
            t, tp = times[:-1], times[1:]
            mid = 0.5 * (t + tp)
            h = t - tp
            E1, N1 = self._ou(process, process.B(t, mid))
            E2, N2 = self._ou(process, process.B(mid, tp))
            at = self._score_times(times)
            k = h * 2 * process.Gamma * process.beta(at)  # [N]
            Sy = torch.eye(2, dtype=torch.float64).repeat(len(h), 1, 1)
            Sy[:, 1, 1] += k * process.m_inv
            ev = torch.tensor([[0.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
            Se = -k[:, None, None] * (ev @ torch.linalg.inv(process.R(at)[:, 0]).transpose(-1, -2))
            N2[-1] = 0  # no noise in the very last half-step
            c = {k_: v.unsqueeze(1) for k_, v in dict(E1=E1, N1=N1, E2=E2, N2=N2, Sy=Sy, Se=Se).items()}
            return Plan(process, times, c)

        return cached_plan(process, ("sscs", tuple(times.tolist()), self.score_time), build)

    def _score_times(self, times: Tensor) -> Tensor:
        """The time at which each step evaluates the score ``[N]``."""
        return 0.5 * (times[:-1] + times[1:]) if self.score_time == "midpoint" else times[:-1]

    def run(self, process: LinearSDE, eps: CountingEps, noise: SampleNoise, u: Tensor,
            callback: Callback | None) -> tuple[Tensor, dict[str, Any]]:
        if not isinstance(process, CLD):
            raise ValueError(f"SSCS is the CLD paper's sampler and needs a CLD process, got {type(process).__name__}")
        times = self.times(process)
        plan = self._plan(process, times)
        E1, N1, Sy, Se, E2, N2 = plan.ops(("E1", "N1", "Sy", "Se", "E2", "N2"), u)
        score_times = self._score_times(times).tolist()

        def z() -> Tensor:
            return noise.randn(process.state_shape)

        for i in range(plan.n_steps):
            # Half step of the OU part, exact.
            u = E1[i] @ u + N1[i] @ z()
            # Full Euler step of the score part (score at the mid-point or the step's start time).
            e = eps(u, score_times[i], i)
            u = Sy[i] @ u + Se[i] @ e
            # Second OU half step (no noise on the very last one).
            u = E2[i] @ u
            if i < plan.n_steps - 1:
                u = u + N2[i] @ z()
            if callback is not None:
                callback({"step": i, "t": times[i + 1].item(), "u": u, "eps": e})
        return u, {"times": times}


class Ancestral(Sampler):
    """Ancestral sampling with the per-block Gaussian posterior ``q(u_t | u_s, u_0 = u0_hat)``: DDPM on
    VP, the BDM paper's sampler on BDM (per DCT frequency). Written independently of gDDIM; on these
    processes it coincides with stochastic gDDIM at ``lambda = 1`` (a tested identity).

    Args:
        nfe: total evaluations (``nfe - 1`` steps plus denoising).
        grid: time grid (default uniform, as in DDPM/BDM).
        t_min: last grid time.
        denoise: final step (see `Sampler`).
        t_start: first grid time (see `Sampler`; default ``T``).
        rho_start: start where the noise-to-signal ratio is this instead (see `Sampler`).
    """

    def __init__(self, nfe: int = 1000, grid: TimeGrid | None = None, t_min: float = 1e-3,
                 denoise: str = "tweedie", t_start: float | None = None, rho_start: float | None = None) -> None:
        super().__init__(t_min, denoise, t_start, rho_start)
        self.set_nfe(nfe)
        self.grid = grid if grid is not None else UniformGrid()

    def _plan(self, process: ScalarBlockSDE, times: Tensor) -> Plan:
        def build() -> Plan:
            s, t = times[:-1], times[1:]  # from s down to t
            logm_s, logm_t = process.log_mean_scale(s), process.log_mean_scale(t)  # [N, n]
            var_s, var_t = process.sigma2(s).unsqueeze(-1), process.sigma2(t).unsqueeze(-1)
            a = torch.exp(logm_s - logm_t)  # forward scale t -> s
            var_st = var_s - a**2 * var_t  # forward variance t -> s
            # posterior mean = a var_t/var_s u_s + m_t var_st/var_s u0_hat, u0_hat = (u_s - sigma_s eps)/m_s
            m_ratio = torch.exp(logm_t - logm_s)
            cy = a * var_t / var_s + m_ratio * var_st / var_s
            ce = -m_ratio * var_st / var_s.sqrt()
            std = (var_st * var_t / var_s).clamp_min(0).sqrt()
            std[-1] = 0
            return Plan(process, times, {k: v[..., None, None] for k, v in dict(cy=cy, ce=ce, std=std).items()})

        return cached_plan(process, ("ancestral", tuple(times.tolist())), build)

    def run(self, process: LinearSDE, eps: CountingEps, noise: SampleNoise, u: Tensor,
            callback: Callback | None) -> tuple[Tensor, dict[str, Any]]:
        if not isinstance(process, ScalarBlockSDE):
            raise ValueError("the ancestral sampler needs a scalar-block process (VPSDE or BDM), "
                             f"got {type(process).__name__}; use GDDIM(lambda_=1.0) for others")
        times = self.times(process)
        plan = self._plan(process, times)
        cy, ce, std = plan.ops(("cy", "ce", "std"), u)
        for i in range(plan.n_steps):
            e = eps(u, times[i].item(), i)
            # Posterior mean from the predicted clean signal, then posterior noise (none on the last step).
            u = cy[i] @ u + ce[i] @ e
            if i < plan.n_steps - 1:
                u = u + std[i] @ noise.randn(process.state_shape)
            if callback is not None:
                callback({"step": i, "t": times[i].item(), "u": u, "eps": e})
        return u, {"times": times}
