"""The coefficient engine: every per-step coefficient, computed once in float64 and cached.

A `Plan` holds float64 block tensors ``[N, ..., n, b, b]`` for a (process, grid, method) and hands
them out as `BlockOp` tables converted to a model's dtype/device (``plan.get("psi", ...)[i] @ u``). Plans are cached
on the process (``process.plan_cache``), keyed by everything they depend on.

Deterministic gDDIM with the paper's multistep order ``q`` (``order = q + 1`` eps nodes: the functions
below count nodes), from ``t = t_i`` to ``t' = t_{i+1}``:

    u' = Psi(t', t) u + sum_j C_ij eps_{i-j},
    C_ij = int_t^{t'} 1/2 Psi(t', tau) G G^T K_tau^{-T} l_j(tau) dtau

with ``l_j`` the Lagrange basis through ``t_i, t_{i-1}, ...``. For ``K = R`` the integrand is
``d/dtau [Psi(t', tau) R_tau] l_j(tau)``; integrating by parts leaves the smooth integrand
``Psi(t', tau) R_tau l_j'(tau)`` and makes one node (``q = 0``) exactly ``R_{t'} - Psi(t', t) R_t``. The
remaining integrals use Gauss-Legendre quadrature per step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..sdes.base import LinearSDE
from ..sdes.operators import BlockOp

#: bound on the elements of one quadrature chunk (memory control for many blocks)
_CHUNK_ELEMS = 4_000_000


class Plan:
    """Float64 per-step coefficients plus converted copies for the model's dtype/device.

    Attributes:
        times: the grid ``[N + 1]`` (float64).
        coeffs: name -> float64 tensor ``[N, ..., n, b, b]``.
    """

    def __init__(self, process: LinearSDE, times: Tensor, coeffs: dict[str, Tensor]) -> None:
        self.process = process
        self.times = times
        self.coeffs = coeffs
        self.drift_radius: Tensor | None = None  # set by `drift_plan`
        self._converted: dict[tuple, Tensor] = {}

    @property
    def n_steps(self) -> int:
        return self.times.numel() - 1

    def get(self, name: str, dtype: torch.dtype, device: torch.device | str) -> BlockOp:
        """Coefficient ``name`` in ``dtype`` on ``device``: a table of block operators (index the step)."""
        key = (name, dtype, str(device))
        if key not in self._converted:
            src = self.coeffs[name]
            # checked on the float64 CPU source (no device sync): an overflow is named, not turned into inf
            big = src.abs().max().item() if src.numel() else 0.0
            if not math.isfinite(big):
                raise FloatingPointError(f"plan coefficient {name!r} contains NaN or inf even in float64 "
                                         f"(grid {self.times.tolist()[:4]}...); this is a bug, please report it")
            if big > torch.finfo(dtype).max:
                raise ValueError(
                    f"plan coefficient {name!r} reaches {big:.3g}, beyond the range of {dtype}: the time grid is "
                    "too ill-conditioned for this sampler (nearly coincident times, gaps many orders of magnitude "
                    "apart, under a multistep order of 3 or 4); use a lower order, a better-spaced grid or float64"
                )
            self._converted[key] = BlockOp(self.process.layout, src.to(dtype=dtype, device=device))
        return self._converted[key]

    def ops(self, names: Sequence[str], like: Tensor) -> tuple[BlockOp, ...]:
        """The coefficients ``names`` as block-operator tables in ``like``'s dtype and device."""
        return tuple(self.get(name, like.dtype, like.device) for name in names)


def _key(kind: str, times: Tensor, *extra) -> tuple:
    return (kind, tuple(times.tolist()), *extra)


def cached_plan(process: LinearSDE, key: tuple, build) -> Plan:
    plan = process.plan_cache.get(key)
    if plan is None:
        plan = build()
        process.plan_cache[key] = plan
    return plan


def step_orders(n_steps: int, order: int) -> list[int]:
    """Warm-up: step ``i`` uses ``min(i + 1, order)`` nodes (no extra evaluations)."""
    return [min(i + 1, order) for i in range(n_steps)]


def _lagrange(x: Tensor, tau: Tensor) -> tuple[Tensor, Tensor]:
    """Lagrange basis through nodes ``x [G, q]`` at ``tau [G, m]``: values and derivatives ``[G, m, q]``."""
    q = x.shape[1]
    diff = tau.unsqueeze(-1) - x.unsqueeze(1)  # [G, m, q]: tau - x_k
    l = torch.ones(*tau.shape, q, dtype=tau.dtype)
    dl = torch.zeros_like(l)
    for j in range(q):
        for k in range(q):
            if k == j:
                continue
            den = (x[:, j] - x[:, k]).unsqueeze(-1)
            l[..., j] *= diff[..., k] / den
            term = 1.0 / den.expand_as(tau).clone()
            for m in range(q):
                if m not in (j, k):
                    term *= diff[..., m] / (x[:, j] - x[:, m]).unsqueeze(-1)
            dl[..., j] += term
    return l, dl


def _gauss_legendre(a: Tensor, b: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """Nodes and weights ``[G, m]`` on the intervals ``[a_g, b_g]``."""
    x, w = np.polynomial.legendre.leggauss(m)
    x = torch.from_numpy(x)
    w = torch.from_numpy(w)
    half = (0.5 * (b - a)).unsqueeze(-1)
    return half * x + (0.5 * (a + b)).unsqueeze(-1), half * w


def _step_chunks(idx: list[int], per_step: int) -> list[list[int]]:
    size = max(1, _CHUNK_ELEMS // max(per_step, 1))
    return [idx[k : k + size] for k in range(0, len(idx), size)]


def multistep_coefficients(process: LinearSDE, times: Tensor, order: int, parameterization: str, quad: int) -> Tensor:
    """``C_ij`` for every step as ``[N, order, n, b, b]`` (zeros beyond a warm-up step's order)."""
    N = times.numel() - 1
    n, b = process.n_blocks, process.block_size
    C = torch.zeros(N, order, n, b, b, dtype=torch.float64)
    orders = step_orders(N, order)
    for q in sorted(set(orders)):
        steps = [i for i in range(N) if orders[i] == q]
        for chunk in _step_chunks(steps, quad * n * b * b * (2 + q)):
            i = torch.tensor(chunk)
            t, tp = times[i], times[i + 1]
            nodes = torch.stack([times[i - j] for j in range(q)], -1)  # [G, q]
            tau, w = _gauss_legendre(tp, t, quad)  # [G, m]
            l, dl = _lagrange(nodes, tau)
            ops = process.ops
            Psi = ops.Psi(tp.unsqueeze(-1), tau)  # [G, m] operators (t broadcast: no repeated work)
            if parameterization == "R":
                # C_ij = R_{t'} l_j(t') - delta_j0 Psi(t', t) R_t + int_{t'}^{t} Psi(t', tau) R_tau l_j'(tau)
                integrand = (Psi @ ops.R(tau)).data
                Cq = torch.einsum("gm,gmj,gmnab->gjnab", w, dl, integrand)
                l_end, _ = _lagrange(nodes, tp.unsqueeze(-1))
                Cq += l_end[:, 0, :, None, None, None] * process.R(tp).unsqueeze(1)
                Cq[:, 0] -= (ops.Psi(tp, t) @ ops.R(t)).data
            elif parameterization == "L":
                # C_ij = -int_{t'}^{t} 1/2 Psi(t', tau) G G^T L_tau^{-T} l_j(tau)
                integrand = 0.5 * (Psi @ ops.score_drift(tau, "L")).data
                Cq = -torch.einsum("gm,gmj,gmnab->gjnab", w, l, integrand)
            else:
                raise ValueError(f"parameterization must be 'R' or 'L', got {parameterization!r}")
            C[i, :q] = Cq
    return C


def deterministic_plan(process: LinearSDE, times: Tensor, order: int, parameterization: str = "R",
                       quad: int = 16) -> Plan:
    """Plan of deterministic multistep gDDIM: ``psi [N]``, ``C [N, order]`` (and for ``K = L``, the
    conversion ``R_to_L = L_t^T R_t^{-T}`` at every grid time, so an R-trained network can drive it)."""

    def build() -> Plan:
        t, tp = times[:-1], times[1:]
        coeffs = {"psi": process.psi(tp, t), "C": multistep_coefficients(process, times, order, parameterization, quad)}
        if parameterization == "L":
            coeffs["R_to_L"] = process.ops.eps_change(t, "R", "L").data
        return Plan(process, times, coeffs)

    return cached_plan(process, _key("deterministic", times, order, parameterization, quad), build)


def stochastic_plan(process: LinearSDE, times: Tensor, lambda_: float) -> Plan:
    """Plan of stochastic gDDIM (order 1): exact Gaussian step of the frozen-eps lambda-SDE.

    ``u' = Psi u + (Psi^ - Psi) R_t eps + P^{1/2} z`` with ``P = Sigma_{t'} - Psi^ Sigma_t Psi^^T``;
    the last step adds no noise.
    """

    def build() -> Plan:
        t, tp = times[:-1], times[1:]
        ops = process.ops
        Psi = ops.Psi(tp, t)
        Psi_hat = BlockOp(process.layout, process.psi_hat(tp, t, lambda_))
        P = ops.Sigma(tp) - Psi_hat @ ops.Sigma(t) @ Psi_hat.T
        noise = P.sqrt().data
        noise[-1] = 0
        coeffs = {"psi": Psi.data, "eps": ((Psi_hat - Psi) @ ops.R(t)).data, "noise": noise, "P": P.data}
        return Plan(process, times, coeffs)

    return cached_plan(process, _key("stochastic", times, float(lambda_)), build)


def _spectral_radius(F: Tensor) -> Tensor | None:
    """``max |eig(F_t)|`` over the blocks at each grid time ``[N + 1]``; None for blocks larger than
    32x32 (eigenvalues at every grid time would cost more than sampling)."""
    if F.shape[-1] > 32:
        return None
    return torch.linalg.eigvals(F).abs().reshape(F.shape[0], -1).amax(dim=1)


def drift_plan(process: LinearSDE, times: Tensor, lambda_: float) -> Plan:
    """Grid values for explicit solvers of the lambda-family (Euler-Maruyama, Euler, Heun):

    drift(u, eps) = F u + (1 + lambda^2)/2 G G^T R^{-T} eps  (``score = -R^{-T} eps``),
    diffusion = lambda G, all evaluated at every grid time ``[N + 1]``. The plan also carries
    ``drift_radius``, the spectral radius of ``F`` at each grid time (None for large blocks), computed
    once for the explicit solvers' stability check."""

    def build() -> Plan:
        c = 0.5 * (1 + float(lambda_) ** 2)
        coeffs = {
            "F": process.F(times),
            "D": c * process.ops.score_drift(times).data,
            "G": float(lambda_) * process.G(times),
        }
        plan = Plan(process, times, coeffs)
        plan.drift_radius = _spectral_radius(coeffs["F"])
        return plan

    return cached_plan(process, _key("drift", times, float(lambda_)), build)
