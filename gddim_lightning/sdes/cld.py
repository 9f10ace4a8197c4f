"""Critically-damped Langevin diffusion (Dockhorn, Vahdat & Kreis, ICLR 2022).

State ``u = (x, v)``; per data element one 2x2 block shared by all elements:

    F_t = beta(t) [[0, M^{-1}], [-1, -Gamma M^{-1}]],   G_t G_t^T = beta(t) [[0, 0], [0, 2 Gamma]].

Both are ``beta(t)`` times a constant matrix, so with ``B(t, s) = int_s^t beta`` everything is a
function of ``B``: ``Psi(t, s) = expm(B F0)`` (closed form at critical damping) and
``Sigma_t = Psi(t,0) Sigma_0 Psi(t,0)^T + Q(B(t, 0))`` with ``Q`` in closed form through regularised
incomplete gamma functions (critical damping; otherwise ``Sigma = R R^T`` from the float64 solve). ``R_t`` has no closed form: it is integrated in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .base import LinearSDE, as_time, finite_param
from .layout import BlockLayout


class CLD(LinearSDE):
    """Critically-damped Langevin diffusion on ``(x, v)``; the state has twice the data's first axis.

    Args:
        data_shape: shape of one data sample (images: ``[C, H, W]``, the state has ``2C`` channels).
        beta: ``beta(0)``; ``beta(t) = beta + beta_slope * t`` (paper: constant 4).
        beta_slope: linear growth of ``beta(t)``.
        m_inv: ``M^{-1}``, inverse mass (paper: 4).
        gamma: initial velocity variance factor, ``v_0 ~ N(0, gamma M)`` (paper: 0.04).
        eps_num: added to both diagonal entries of ``Sigma_0`` so it is positive definite (gDDIM: 1e-6).
        Gamma: friction; ``None`` means critical damping ``Gamma = 2 sqrt(M)``.
        T: terminal time.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        beta: float = 4.0,
        beta_slope: float = 0.0,
        m_inv: float = 4.0,
        gamma: float = 0.04,
        eps_num: float = 1e-6,
        Gamma: float | None = None,
        T: float = 1.0,
    ) -> None:
        beta = finite_param("CLD", "beta", beta, 0.0, low_open=True)
        beta_slope = finite_param("CLD", "beta_slope", beta_slope)
        m_inv = finite_param("CLD", "m_inv", m_inv, 0.0, low_open=True)
        gamma = finite_param("CLD", "gamma", gamma, 0.0)
        eps_num = finite_param("CLD", "eps_num", eps_num, 0.0)
        if Gamma is not None:
            Gamma = finite_param("CLD", "Gamma", Gamma, 0.0, low_open=True)
        if beta + beta_slope * finite_param("CLD", "T", T, 0.0, low_open=True) <= 0:
            raise ValueError(f"beta(t) = beta + beta_slope t must stay positive; got beta={beta}, slope={beta_slope}")
        super().__init__(BlockLayout(data_shape, 2, "shared", data_index=0), T)
        self.beta0 = float(beta)
        self.beta_slope = float(beta_slope)
        self.m_inv = float(m_inv)
        self.M = 1.0 / self.m_inv
        self.gamma = float(gamma)
        self.eps_num = float(eps_num)
        self.Gamma = 2.0 * math.sqrt(self.M) if Gamma is None else float(Gamma)
        if self.Gamma <= 0:
            raise ValueError(f"Gamma must be positive, got {Gamma}")
        self.critical = abs(self.Gamma**2 - 4 * self.M) <= 1e-12 * max(1.0, 4 * self.M)
        self.F0 = torch.tensor([[0.0, self.m_inv], [-1.0, -self.Gamma * self.m_inv]], dtype=torch.float64)
        self.GG0 = torch.tensor([[0.0, 0.0], [0.0, 2 * self.Gamma]], dtype=torch.float64)
        self._F0_np, self._GG0_np = self.F0.numpy()[None], self.GG0.numpy()[None]

    def beta(self, t: Tensor) -> Tensor:
        return self.beta0 + self.beta_slope * as_time(t)

    def B(self, t: Tensor, s: Tensor) -> Tensor:
        """``int_s^t beta``."""
        t, s = as_time(t), as_time(s)
        return self.beta0 * (t - s) + 0.5 * self.beta_slope * (t**2 - s**2)

    def F(self, t: Tensor) -> Tensor:
        return self.beta(t)[..., None, None, None] * self.F0.expand(1, 2, 2)

    def GGT(self, t: Tensor) -> Tensor:
        return self.beta(t)[..., None, None, None] * self.GG0.expand(1, 2, 2)

    def _coeffs_np(self, t: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        beta = (self.beta0 + self.beta_slope * np.asarray(t, dtype=np.float64))[..., None, None, None]
        return beta * self._F0_np, beta * self._GG0_np

    def Sigma0(self) -> Tensor:
        return torch.diag(torch.tensor([self.eps_num, self.gamma * self.M + self.eps_num],
                                       dtype=torch.float64)).unsqueeze(0)

    def _expF0(self, B: Tensor) -> Tensor:
        """``expm(B F0)`` as ``[*S, 2, 2]``."""
        if not self.critical:
            return torch.linalg.matrix_exp(B[..., None, None] * self.F0)
        a = self.Gamma * self.m_inv
        e = torch.exp(-0.5 * a * B)
        row0 = torch.stack([1 + 0.5 * a * B, self.m_inv * B], -1)
        row1 = torch.stack([-B, 1 - 0.5 * a * B], -1)
        return e[..., None, None] * torch.stack([row0, row1], -2)

    def psi(self, t: Tensor, s: Tensor) -> Tensor:
        return self._expF0(self.B(t, s)).unsqueeze(-3)

    def _Q(self, B: Tensor) -> Tensor:
        """``int_0^B expm(r F0) GG0 expm(r F0)^T dr`` as ``[*S, 2, 2]`` (critical damping)."""
        a = self.Gamma * self.m_inv
        x = a * B

        def J(k: int) -> Tensor:  # int_0^B r^k e^{-a r} dr = k!/a^{k+1} P(k+1, a B)
            return math.factorial(k) / a ** (k + 1) * torch.special.gammainc(torch.full_like(x, k + 1.0), x)

        J0, J1, J2 = J(0), J(1), J(2)
        c = 2 * self.Gamma
        qxx = c * self.m_inv**2 * J2
        qxv = c * self.m_inv * (J1 - 0.5 * a * J2)
        qvv = c * (J0 - a * J1 + 0.25 * a**2 * J2)
        return torch.stack([torch.stack([qxx, qxv], -1), torch.stack([qxv, qvv], -1)], -2)

    def Sigma(self, t: Tensor) -> Tensor:
        if not self.critical:  # no closed form used: R R^T from the float64 R solve
            return super().Sigma(t)
        t = as_time(t)
        B = self.B(t, torch.zeros_like(t))
        P = self._expF0(B)
        d = torch.diagonal(self.Sigma0()[0])  # Sigma0 is diagonal: P diag(d) P^T elementwise (no tiny bmm)
        S = (P[..., :, None, :] * P[..., None, :, :] * d).sum(-1) + self._Q(B)
        return S.unsqueeze(-3)

    def describe(self) -> str:
        return (f"CLD(data_shape={self.data_shape}, beta={self.beta0}, beta_slope={self.beta_slope}, "
                f"m_inv={self.m_inv}, gamma={self.gamma}, eps_num={self.eps_num}, Gamma={self.Gamma:.6g}, T={self.T})")
