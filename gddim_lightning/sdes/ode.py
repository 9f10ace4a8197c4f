"""Float64 block ODE solves with dense output (scipy's DOP853, 8th order)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor


#: bounds on one float64 solve: right-hand-side evaluations and wall-clock seconds (a stiff or broken
#: process fails with a message instead of running for hours)
MAX_RHS_EVALS = 2_000_000
MAX_SECONDS = 300.0


def bounded(f: Callable[[float, np.ndarray], np.ndarray], what: str) -> Callable[[float, np.ndarray], np.ndarray]:
    """``f`` that raises once it returns NaN/inf, or past `MAX_RHS_EVALS` calls or `MAX_SECONDS`."""
    start, calls = time.monotonic(), [0]

    def g(t: float, y: np.ndarray) -> np.ndarray:
        calls[0] += 1
        out = f(t, y)
        if not np.all(np.isfinite(out)):
            raise FloatingPointError(f"{what}: the right-hand side is NaN or inf at t={float(np.max(t)):.6g}; check the "
                                     "process's F(t) and GGT(t) (a NaN/inf parameter, or a singular covariance)")
        if calls[0] > MAX_RHS_EVALS or time.monotonic() - start > MAX_SECONDS:
            raise RuntimeError(f"{what} did not finish within {MAX_RHS_EVALS} evaluations / {MAX_SECONDS:.0f} s "
                               f"(at t={float(np.max(t)):.6g}): the process is too stiff or ill-defined there")
        return out

    return g


class DenseBlockODE:
    """A dense solution ``Y(t)`` of a block ODE, evaluable at any times inside the solved span.

    Calling it with times of shape ``[*S]`` returns ``[k, *S, n, b, b]`` float64 where ``k`` is the
    number of stacked block matrices in the state.
    """

    def __init__(self, sol, shape: tuple[int, ...], t0: float, t1: float, nfev: int) -> None:
        self._sol = sol
        self.shape = shape
        self.span = (min(t0, t1), max(t0, t1))
        self.nfev = nfev

    def __call__(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        flat = t.reshape(-1).numpy()
        lo, hi = self.span
        tol = 1e-12 * max(1.0, hi)
        if flat.size and (flat.min() < lo - tol or flat.max() > hi + tol):
            raise ValueError(f"time {flat.min():.6g}..{flat.max():.6g} outside the solved span [{lo:.6g}, {hi:.6g}]")
        vals = self._sol(np.clip(flat, lo, hi))  # [dim, N]
        out = torch.from_numpy(np.ascontiguousarray(vals.T)).reshape(*t.shape, *self.shape)
        # move the stacked-matrix axis first
        return out.movedim(t.dim(), 0)


def solve_block_ode(
    rhs: Callable[[float, np.ndarray], np.ndarray],
    Y0: Tensor,
    t0: float,
    t1: float,
    rtol: float,
    atol: float,
) -> DenseBlockODE:
    """Solve ``dY/dt = rhs(t, Y)`` for a stack of block matrices ``Y0: [k, n, b, b]`` from t0 to t1."""
    shape = tuple(Y0.shape)

    def f(t: float, y: np.ndarray) -> np.ndarray:
        return rhs(t, y.reshape(shape)).reshape(-1)

    res = solve_ivp(bounded(f, "the float64 solve of Psi and R"), (t0, t1), Y0.reshape(-1).double().numpy(),
                    method="DOP853", dense_output=True, rtol=rtol, atol=atol)
    if not res.success:
        raise RuntimeError(f"float64 ODE solve failed on [{t0}, {t1}]: {res.message}")
    return DenseBlockODE(res.sol, shape, t0, t1, res.nfev)


def solve_pairwise_transitions(
    A_fn: Callable[[np.ndarray], np.ndarray],
    t: Tensor,
    s: Tensor,
    block: tuple[int, int, int],
    rtol: float,
    atol: float,
) -> Tensor:
    """Transition matrices of ``dY/dtau = A(tau) Y`` from ``s`` to ``t`` for every pair, float64.

    All distinct pairs are integrated together in normalised time ``x in [0, 1]``
    (``tau = s + x (t - s)``), each from the identity: no product ``Phi(t) Phi(s)^{-1}`` of one global
    solution, which loses all accuracy when the transition decays or is badly conditioned.

    Args:
        A_fn: ``tau [P] -> A [P, n, b, b]`` (numpy, vectorised over times).
        t: end times (float64, broadcastable with ``s``).
        s: start times.
        block: ``(n, b, b)``.
    """
    t, s = torch.broadcast_tensors(torch.as_tensor(t, dtype=torch.float64), torch.as_tensor(s, dtype=torch.float64))
    shape = t.shape
    pairs, inverse = torch.unique(torch.stack([t.reshape(-1), s.reshape(-1)], -1), dim=0, return_inverse=True)
    P = pairs.shape[0]
    t1, s0 = pairs[:, 0].numpy(), pairs[:, 1].numpy()
    h = t1 - s0
    eye = np.broadcast_to(np.eye(block[-1]), (P, *block)).copy()

    def f(x: float, y: np.ndarray) -> np.ndarray:
        A = A_fn(s0 + x * h)
        return (h[:, None, None, None] * (A @ y.reshape(P, *block))).reshape(-1)

    res = solve_ivp(bounded(f, "the float64 transition solve"), (0.0, 1.0), eye.reshape(-1), method="DOP853",
                    rtol=rtol, atol=atol, t_eval=[1.0])
    if not res.success:
        raise RuntimeError(f"float64 transition solve failed: {res.message}")
    out = torch.from_numpy(res.y[:, -1].reshape(P, *block).copy())
    return out[inverse.reshape(-1)].reshape(*shape, *block)
