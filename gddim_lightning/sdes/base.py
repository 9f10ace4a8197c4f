"""The linear process abstraction: ``du = F_t u dt + G_t dw`` with block-diagonal ``F``, ``G G^T``.

Longer than 300 lines: `LinearSDE` is the one definition every process, sampler and oracle relies on
(the numeric defaults of every derived quantity); splitting it would scatter one contract.

A subclass gives three things, as float64 block tensors (see `BlockLayout`):

* `F(t)`: drift blocks, ``[*S, n, b, b]`` for times ``t`` of shape ``[*S]``;
* `GGT(t)`: diffusion blocks ``G_t G_t^T``, same shape;
* `Sigma0()`: the initial covariance ``[n, b, b]`` (positive definite for the numeric path).

Everything a sampler needs is then derived here by accurate float64 numerics (adaptive 8th-order
Dormand-Prince: one dense forward solve for ``Psi(t, 0)`` and ``R``, and transitions between two
times integrated pair by pair): the transition ``Psi(t, s)``, the marginal covariance
``Sigma_t``, the gDDIM factor ``R_t`` (``dR/dt = F R + 1/2 G G^T R^{-T}``), its Cholesky
alternative ``L_t``, and the stochastic transition ``Psi^`` of ``F + (1 + lambda^2)/2 G G^T
Sigma^{-1}``. VP, BDM and CLD override what has a closed form.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .layout import BlockLayout
from .operators import BlockOp, ProcessOperators, as_time, psd_sqrt
from .._warn import renamed
from .ode import DenseBlockODE, solve_block_ode, solve_pairwise_transitions


def finite_param(owner: str, name: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:
    """``value`` as a float, or a ValueError naming ``owner.name``: not a finite number, or outside
    ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{owner} {name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{owner} {name} must be finite, got {value!r}")
    below = low is not None and (v <= low if low_open else v < low)
    if below or (high is not None and v > high):
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ValueError(f"{owner} {name} must lie in {'(' if low_open else '['}{lo}, {hi}], got {value!r}")
    return v


def invert_decreasing(fn, targets: Tensor, lo: float, hi: float, iterations: int = 60) -> Tensor:
    """Times ``t`` in ``[lo, hi]`` with ``fn(t) = targets`` for a decreasing ``fn``, by bisection."""
    a = torch.full_like(targets, lo)
    b = torch.full_like(targets, hi)
    for _ in range(iterations):
        mid = 0.5 * (a + b)
        above = fn(mid) > targets
        a = torch.where(above, mid, a)
        b = torch.where(above, b, mid)
    return 0.5 * (a + b)


class LinearSDE:
    """Base class of linear diffusion processes ``du = F_t u dt + G_t dw`` on ``[0, T]``.

    Subclasses set ``self.layout`` (a `BlockLayout`) and ``self.T``, and implement `F`, `GGT`
    and `Sigma0`; every other method has a numeric default. A process is immutable after
    construction; numeric solutions and sampler plans are cached on it.

    Args:
        layout: the block structure.
        T: the terminal time.
    """

    #: relative / absolute tolerance of the float64 ODE solves
    rtol: float = 1e-11
    atol: float = 1e-13

    def __init__(self, layout: BlockLayout, T: float = 1.0) -> None:
        self.layout = layout
        self.T = finite_param(type(self).__name__, "T", T, 0.0, low_open=True)
        self._numeric: DenseBlockODE | None = None
        self.plan_cache: dict[tuple, Any] = {}
        #: the process's quantities as block operators (``process.ops.Psi(t, s) @ u``)
        self.ops = ProcessOperators(self)

    # ------------------------------------------------------------------ shape helpers
    @property
    def data_shape(self) -> tuple[int, ...]:
        return self.layout.data_shape

    @property
    def state_shape(self) -> tuple[int, ...]:
        return self.layout.state_shape

    @property
    def block_size(self) -> int:
        return self.layout.block_size

    @property
    def n_blocks(self) -> int:
        return self.layout.n_blocks

    def check_time(self, t: Tensor, name: str = "t") -> Tensor:
        t = as_time(t)
        if not torch.isfinite(t).all() or (t < 0).any() or (t > self.T * (1 + 1e-12)).any():
            raise ValueError(f"{name} must lie in [0, T={self.T}], got values in "
                             f"[{t.min().item():.6g}, {t.max().item():.6g}]")
        return t

    # ------------------------------------------------------------------ the definition
    def F(self, t: Tensor) -> Tensor:
        """Drift blocks ``F_t``: ``[*S, n, b, b]`` float64."""
        raise NotImplementedError

    def GGT(self, t: Tensor) -> Tensor:
        """Diffusion blocks ``G_t G_t^T``: ``[*S, n, b, b]`` float64."""
        raise NotImplementedError

    def Sigma0(self) -> Tensor:
        """Initial covariance ``Sigma_0``: ``[n, b, b]`` float64."""
        raise NotImplementedError

    # ------------------------------------------------------------------ derived quantities
    def psi(self, t: Tensor, s: Tensor) -> Tensor:
        """Transition matrix ``Psi(t, s)`` (``d/dt Psi = F_t Psi``, ``Psi(s, s) = I``)."""
        t, s = torch.broadcast_tensors(as_time(t), as_time(s))
        if not s.any():  # from time 0: the fundamental matrix of the joint forward solve
            return self._solution()(t)[0]
        return self._pairwise(lambda tau: self._coeffs_np(tau)[0], t, s)

    def Sigma(self, t: Tensor) -> Tensor:
        """Marginal covariance ``Sigma_t`` given the data point (``R_t R_t^T``)."""
        R = self.R(t)
        S = R @ R.transpose(-1, -2)
        return 0.5 * (S + S.transpose(-1, -2))

    def R(self, t: Tensor) -> Tensor:
        """gDDIM factor ``R_t``: ``dR/dt = F R + 1/2 G G^T R^{-T}``, ``R_0 R_0^T = Sigma_0``."""
        return self._solution()(as_time(t))[1]

    def L(self, t: Tensor) -> Tensor:
        """Cholesky factor ``L_t`` of ``Sigma_t`` (lower triangular)."""
        return torch.linalg.cholesky(self.Sigma(t))

    def K(self, t: Tensor, parameterization: str = "R", *, kind: str | None = None) -> Tensor:
        """The factor ``K_t`` of ``Sigma_t`` that eps is defined with, by name: ``"R"`` gives ``R_t``, ``"L"``
        gives ``L_t`` (``kind`` is the deprecated name of ``parameterization``)."""
        parameterization = renamed("LinearSDE.K", "parameterization", parameterization, "kind", kind, "R")
        if parameterization == "R":
            return self.R(t)
        if parameterization == "L":
            return self.L(t)
        raise ValueError(f"parameterization must be 'R' (gDDIM) or 'L' (Cholesky), got {parameterization!r}")

    def G(self, t: Tensor) -> Tensor:
        """A square root of ``G_t G_t^T`` (symmetric PSD square root), for noise injection."""
        return psd_sqrt(self.GGT(as_time(t)))

    def psi_hat(self, t: Tensor, s: Tensor, lambda_: float) -> Tensor:
        """Transition of ``F + (1 + lambda^2)/2 G G^T Sigma^{-1}`` from ``s`` to ``t`` (gDDIM eq. for
        the stochastic step). ``lambda_ = 0`` gives ``R_t R_s^{-1}``."""
        c = 0.5 * (1.0 + float(lambda_) ** 2)

        def A(tau: np.ndarray) -> np.ndarray:
            F, GG = self._coeffs_np(tau)
            return F + c * GG @ np.linalg.inv(self.Sigma(torch.from_numpy(tau)).numpy())

        return self._pairwise(A, as_time(t), as_time(s))

    def log_snr(self, t: Tensor) -> Tensor:
        """A scalar log signal-to-noise ratio (for log-SNR time grids): ``log(|Psi(t,0)|^2 / Sigma_t)``
        on the data coordinate, averaged over blocks."""
        t = as_time(t)
        i = self.layout.data_index
        col = self.psi(t, torch.zeros_like(t))[..., :, i]
        signal = (col**2).sum(-1).mean(-1)
        noise = torch.diagonal(self.Sigma(t), dim1=-2, dim2=-1).sum(-1).mean(-1) / self.block_size
        return torch.log(signal) - torch.log(noise)

    def noise_to_signal(self, t: Tensor) -> Tensor:
        """Noise-to-signal ratio ``rho_t = exp(-log_snr(t) / 2)`` (EDM's ``sigma``; increasing in t)."""
        return torch.exp(-0.5 * self.log_snr(t))

    def time_at_rho(self, rho: float) -> float:
        """The time where `noise_to_signal` equals ``rho``, by bisection; ``T`` when ``rho`` is beyond
        ``rho_T`` (EDM's and the official gDDIM code's start ``rho = 80``)."""
        if not (math.isfinite(rho) and rho > 0):
            raise ValueError(f"rho must be a positive finite noise-to-signal ratio, got {rho}")
        t_end = torch.tensor([self.T], dtype=torch.float64)
        if self.noise_to_signal(t_end).item() <= rho:
            return self.T
        target = torch.tensor([-math.log(rho)], dtype=torch.float64)
        t = invert_decreasing(lambda tt: -torch.log(self.noise_to_signal(tt)), target, 0.0, self.T)
        return float(t.item())

    # ------------------------------------------------------------------ data <-> state
    def perturb(self, x0: Tensor, t: Tensor, noise: Tensor, parameterization: str = "R", *,
                kind: str | None = None) -> Tensor:
        """``u_t = Psi(t, 0) lift(x0) + K_t z``.

        Args:
            x0: data ``[B, *data_shape]``.
            t: times ``[B]``.
            noise: ``z`` in state shape ``[B, *state_shape]`` (the initial-covariance noise, e.g. CLD's
                velocity, is part of ``K_t z``).
            parameterization: ``"R"`` or ``"L"`` (``kind``: its deprecated name).
        """
        t = self.check_time(t)
        self.layout.check_state(noise, "noise")
        K = self.ops.K(t, renamed("perturb", "parameterization", parameterization, "kind", kind, "R"))
        return self.ops.mean(t) @ self.layout.lift(x0) + K @ noise

    def prior_sample(self, z: Tensor, t: float | None = None) -> Tensor:
        """A draw from the prior ``N(0, Sigma_t)`` as ``R_t z`` for standard normal ``z`` (state shape), at
        ``t`` (default ``T``; a sampler's start time below ``T`` ignores the signal left there)."""
        self.layout.check_state(z, "z")
        return self.ops.R(self.T if t is None else float(t)) @ z

    def eps_to_score(self, eps: Tensor, t: Tensor, parameterization: str = "R", *, kind: str | None = None) -> Tensor:
        """``score = -K_t^{-T} eps`` (t of shape ``[B]`` or scalar; ``kind``: deprecated name of
        ``parameterization``)."""
        K = self.ops.K(t, renamed("eps_to_score", "parameterization", parameterization, "kind", kind, "R"))
        return -(K.inv().T @ eps)

    def score_to_eps(self, score: Tensor, t: Tensor, parameterization: str = "R", *, kind: str | None = None) -> Tensor:
        """``eps = -K_t^T score`` (``kind``: deprecated name of ``parameterization``)."""
        K = self.ops.K(t, renamed("score_to_eps", "parameterization", parameterization, "kind", kind, "R"))
        return -(K.T @ score)

    def eps_R_to_L(self, eps_R: Tensor, t: Tensor) -> Tensor:
        """Convert an ``R``-parameterised eps to the ``L`` one: ``eps_L = L^T R^{-T} eps_R``."""
        return self.ops.eps_change(t, "R", "L") @ eps_R

    def eps_L_to_R(self, eps_L: Tensor, t: Tensor) -> Tensor:
        """Inverse of `eps_R_to_L`: ``eps_R = R^T L^{-T} eps_L``."""
        return self.ops.eps_change(t, "L", "R") @ eps_L

    def apply_state(self, A: Tensor, u: Tensor) -> Tensor:
        """Applies raw block coefficients ``A`` (``[n, b, b]`` or ``[B, n, b, b]``, float64) to a state batch
        ``u [B, *state_shape]``, in ``u``'s dtype and device (``BlockOp(layout, A) @ u``)."""
        return BlockOp(self.layout, A) @ u

    # ------------------------------------------------------------------ numerics
    def _coeffs_np(self, t: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(F_t, G_t G_t^T)`` as numpy ``[*S, n, b, b]`` for times of shape ``[*S]`` (a float gives
        ``[n, b, b]``). The ODE right-hand sides call this; override it for speed."""
        tt = torch.as_tensor(t, dtype=torch.float64)
        return self.F(tt).numpy(), self.GGT(tt).numpy()

    def validate(self, n_times: int = 9) -> None:
        """Checks the definition at a few times in ``[0, T]``: ``F``, ``G G^T`` and ``Sigma_0`` finite and of
        block shape, ``G G^T`` symmetric positive semi-definite. Raises ValueError naming what is wrong."""
        name = type(self).__name__
        shape = (self.n_blocks, self.block_size, self.block_size)
        t = torch.linspace(0.0, self.T, n_times, dtype=torch.float64)
        for what, value in (("F(t)", self.F(t)), ("GGT(t)", self.GGT(t)), ("Sigma0()", self.Sigma0())):
            if tuple(value.shape[-3:]) != shape:
                raise ValueError(f"{name}.{what} has block shape {tuple(value.shape[-3:])}, expected {shape}")
            if not torch.isfinite(value).all():
                raise ValueError(f"{name}.{what} is NaN or inf somewhere in [0, T={self.T}]: check the process parameters")
        GG = self.GGT(t)
        scale = GG.abs().amax().clamp_min(1e-300)
        if (GG - GG.transpose(-1, -2)).abs().amax() > 1e-10 * scale:
            raise ValueError(f"{name}.GGT(t) must be symmetric (it is G_t G_t^T)")
        if torch.linalg.eigvalsh(GG).amin() < -1e-10 * scale:
            raise ValueError(f"{name}.GGT(t) must be positive semi-definite (it is G_t G_t^T); its smallest eigenvalue "
                             f"is {torch.linalg.eigvalsh(GG).amin().item():.3g}")

    def _R_rhs(self, t: float, R: np.ndarray) -> np.ndarray:
        F, GG = self._coeffs_np(t)
        return F @ R + 0.5 * GG @ np.linalg.inv(R).swapaxes(-1, -2)

    def _solution(self) -> DenseBlockODE:
        """Joint float64 solve of ``Phi' = F Phi`` (``Phi_0 = I``) and the R ODE on ``[0, T]``."""
        if self._numeric is None:
            self.validate()
            S0 = self.Sigma0()
            try:
                R0 = torch.linalg.cholesky(S0)
            except RuntimeError as err:
                raise ValueError(
                    f"{type(self).__name__}: Sigma0 must be positive definite for the numeric R_t "
                    "solve (add a small multiple of the identity, e.g. 1e-6 I, as CLD does)"
                ) from err
            eye = torch.eye(self.block_size, dtype=torch.float64).expand_as(S0)

            def rhs(t: float, Y: np.ndarray) -> np.ndarray:
                F, _ = self._coeffs_np(t)
                return np.stack([F @ Y[0], self._R_rhs(t, Y[1])])

            self._numeric = solve_block_ode(rhs, torch.stack([eye, R0]), 0.0, self.T, self.rtol, self.atol)
        return self._numeric

    def _pairwise(self, A_fn, t: Tensor, s: Tensor) -> Tensor:
        block = (self.n_blocks, self.block_size, self.block_size)
        # errors are controlled at the scale of the identity each pair starts from: an entry's error
        # times |u| is what reaches a sampler's state (tiny entries get no relative accuracy)
        return solve_pairwise_transitions(A_fn, t, s, block, self.rtol, self.atol)

    def describe(self) -> str:
        return f"{type(self).__name__}(data_shape={self.data_shape}, T={self.T})"

    def __repr__(self) -> str:
        return self.describe()  # a subclass's describe, not the base one bound at class creation
