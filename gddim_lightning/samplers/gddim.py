"""gDDIM: the exponential-integrator sampler for any linear process (Zhang, Tao & Chen, ICLR 2023).

Deterministic (``lambda_ = 0``), from ``t`` to ``t'`` with eps frozen in the ``R`` sense:

    u_{t'} = Psi(t', t) (u_t - R_t eps) + R_{t'} eps

(exact for a point mass; DDIM on VP), generalised to the paper's multistep order ``q``: eps on a step
is the degree-``q`` Lagrange polynomial through the current and the ``q`` previous evaluations
(``q + 1`` nodes; ``q = 0`` is the one-node step above). Stochastic (``lambda_ > 0``): the exact Gaussian transition of the
lambda-SDE with the score of the point mass eps points to. ``parameterization="L"`` builds the same sampler with the
Cholesky factor (the paper's ablation; it fails at low NFE on CLD).
"""

from __future__ import annotations


from typing import Any

from torch import Tensor

from ..sdes.base import LinearSDE
from .base import Callback, CountingEps, SampleNoise, Sampler, check_int
from .grids import QuadraticGrid, TimeGrid
from .plan import deterministic_plan, stochastic_plan
from .._warn import renamed, warn_user


class GDDIM(Sampler):
    """Generalised DDIM sampler.

    NFE = ``nfe`` exactly: ``nfe - 1`` grid steps (one evaluation each) plus the denoising step
    (``nfe`` steps with ``denoise="none"``).

    Args:
        nfe: total number of network evaluations.
        q: the paper's multistep order, 0-3: the degree of the polynomial through the current and the
            ``q`` previous eps evaluations (``q + 1`` nodes). ``q = 2`` is the paper's CLD setting.
        lambda_: stochasticity ``lambda >= 0``; 0 is deterministic. Needs ``q=0`` when > 0.
        parameterization: the factor ``K_t`` of ``Sigma_t`` the steps are built with: ``"R"`` (gDDIM, the
            default) or ``"L"`` (Cholesky, the paper's ablation). The network's eps is always ``R``'s;
            an ``L`` sampler converts it.
        grid: time grid (default: quadratic, as the paper's CLD results).
        t_min: last grid time.
        denoise: ``"tweedie"``, ``"euler"`` or ``"none"`` (see `Sampler`).
        quad: Gauss-Legendre nodes per step for the multistep coefficients.
        t_start: first grid time (see `Sampler`; default ``T``).
        rho_start: start where the noise-to-signal ratio is this instead (see `Sampler`).
        order: deprecated: the number of eps nodes, ``q + 1``. Use ``q``.
        K: deprecated name of ``parameterization``.
    """

    def __init__(
        self,
        nfe: int = 20,
        q: int | None = None,
        lambda_: float = 0.0,
        parameterization: str | None = None,
        grid: TimeGrid | None = None,
        t_min: float = 1e-3,
        denoise: str = "tweedie",
        quad: int = 16,
        t_start: float | None = None,
        rho_start: float | None = None,
        order: int | None = None,
        K: str | None = None,
    ) -> None:
        super().__init__(t_min, denoise, t_start, rho_start)
        self.q = _resolve_q(q, order)
        self.set_nfe(nfe)
        if not lambda_ >= 0:
            raise ValueError(f"lambda_ must be >= 0, got {lambda_}")
        if lambda_ > 0 and self.q != 0:
            raise ValueError(f"stochastic gDDIM (lambda_={lambda_}) is single-step only; set q=0 or lambda_=0")
        parameterization = renamed("GDDIM", "parameterization", parameterization, "K", K, None) or "R"
        if parameterization not in ("R", "L"):
            raise ValueError(f"parameterization must be 'R' (gDDIM) or 'L' (Cholesky), got {parameterization!r}")
        if lambda_ > 0 and parameterization != "R":
            raise ValueError("stochastic gDDIM is defined with parameterization='R'")
        self.lambda_ = float(lambda_)
        self.parameterization = parameterization
        self.grid = grid if grid is not None else QuadraticGrid()
        self.quad = check_int("quad", quad, 1)

    @property
    def n_nodes(self) -> int:
        """Eps evaluations each multistep update combines: ``q + 1``."""
        return self.q + 1

    @property
    def drift_only(self) -> bool:  # type: ignore[override]
        # Lower-triangular L: G G^T L^{-T} has no x column, so the x part of eps_L never enters.
        # R is not triangular, and the stochastic step uses the full score through Psi-hat.
        return self.parameterization == "L" and self.lambda_ == 0

    def check(self, process: LinearSDE) -> None:
        super().check(process)
        self.times(process)  # an explicit grid that does not fit the NFE fails here

    def run(self, process: LinearSDE, eps: CountingEps, noise: SampleNoise, u: Tensor,
            callback: Callback | None) -> tuple[Tensor, dict[str, Any]]:
        times = self.times(process)
        if self.lambda_ > 0:
            return self._run_stochastic(process, eps, noise, u, times, callback)
        plan = deterministic_plan(process, times, self.n_nodes, self.parameterization, self.quad)
        Psi, C = plan.ops(("psi", "C"), u)
        to_L = plan.get("R_to_L", u.dtype, u.device) if self.parameterization == "L" else None
        history: list[Tensor] = []  # eps at t_i, t_{i-1}, ... (in the sampler's parameterization)
        for i in range(plan.n_steps):
            t = times[i].item()
            e = eps(u, t, i)
            history = [e if to_L is None else to_L[i] @ e] + history[: self.q]
            # Move the mean, then add the interpolated eps terms.
            u = Psi[i] @ u + sum(C[i, j] @ e_j for j, e_j in enumerate(history))
            if callback is not None:
                callback({"step": i, "t": t, "u": u, "eps": e})
        return u, {"times": times}

    def _run_stochastic(self, process, eps, noise, u, times, callback):
        plan = stochastic_plan(process, times, self.lambda_)
        Psi, Ce, Cz = plan.ops(("psi", "eps", "noise"), u)
        for i in range(plan.n_steps):
            t = times[i].item()
            e = eps(u, t, i)
            # Exact Gaussian step: mean from the frozen-eps point mass, then fresh noise (none on the last step).
            u = Psi[i] @ u + Ce[i] @ e
            if i < plan.n_steps - 1:
                u = u + Cz[i] @ noise.randn(process.state_shape)
            if callback is not None:
                callback({"step": i, "t": t, "u": u, "eps": e})
        return u, {"times": times}


def _resolve_q(q: int | None, order: int | None) -> int:
    """The paper's ``q`` from ``q`` or the deprecated node count ``order`` (``q = order - 1``)."""
    if order is not None:
        order = check_int("order", order, 1)
        if order > 4:
            raise ValueError(f"order (the number of eps nodes, deprecated) must be 1-4, got {order}; use q = order - 1")
        if q is not None and q != order - 1:
            raise ValueError(f"q={q} and the deprecated order={order} disagree (q = order - 1); give q only")
        warn_user(f"GDDIM(order={order}) is deprecated: order counted eps nodes, off by one from the paper's q. "
                      f"Use q={order - 1} (the same sampler).", FutureWarning)
        return order - 1
    q = 1 if q is None else check_int("q", q, 0)
    if q > 3:
        raise ValueError(f"q (the multistep order: polynomial degree, nodes - 1) must be 0, 1, 2 or 3, got {q}")
    return q
