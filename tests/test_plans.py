"""Tests of the coefficient engine ``gddim_lightning.samplers.plan`` against independent quadrature.

The multistep coefficients are recomputed here from their *definition*,
``C_ij = int_t^{t'} 1/2 Psi(t', tau) G G^T K_tau^{-T} l_j(tau) dtau``, with scipy's adaptive quadrature and
independently computed ``Psi``, ``G G^T`` and ``K`` (analytic for VP; for CLD ``expm`` of ``B F0`` and an
own float64 solve of the R ODE), instead of the package's integration by parts + Gauss-Legendre.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.integrate import quad_vec, solve_ivp

from gddim_lightning.samplers import (
    GDDIM,
    QuadraticGrid,
    SampleNoise,
    UniformGrid,
    deterministic_plan,
    drift_plan,
    stochastic_plan,
)
from gddim_lightning.oracles import PointMass
from gddim_lightning.sdes import BDM, CLD, VPSDE
from helpers import F64, tt


def processes():
    return {
        "vp": VPSDE((2,)),
        "vp_cosine": VPSDE((2,), schedule="cosine_gddim"),
        "cld": CLD((2,)),
        "cld_noncritical": CLD((2,), Gamma=0.5, beta_slope=2.0),
        "bdm": BDM((2, 3, 4)),
    }


PROCESS_NAMES = ["vp", "vp_cosine", "cld", "cld_noncritical", "bdm"]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-300)


# --------------------------------------------------------------------------- independent integrands
class VPRef:
    """VP linear schedule, everything analytic (numpy)."""

    bmin, bmax = 0.1, 20.0

    def beta(self, t):
        return self.bmin + t * (self.bmax - self.bmin)

    def loga(self, t):
        return -0.25 * t**2 * (self.bmax - self.bmin) - 0.5 * t * self.bmin

    def integrand(self, tp, tau, kind):  # 1/2 Psi(t', tau) G G^T K_tau^{-T}, K = sigma for both kinds
        sig = math.sqrt(-math.expm1(2 * self.loga(tau)))
        return np.array([[[0.5 * math.exp(self.loga(tp) - self.loga(tau)) * self.beta(tau) / sig]]])


class CLDRef:
    """Default CLD (beta = 4, M^{-1} = 4, Gamma = 1), all in numpy: Psi(t', tau) = expm(B F0) by Cayley-Hamilton
    (F0 has the double eigenvalue -2, so expm(B F0) = e^{-2B} (I + B (F0 + 2 I))), G G^T analytic, and R_t,
    Sigma_t (hence L_t) from an own DOP853 solve of the R and Lyapunov ODEs."""

    def __init__(self):
        self.F0 = np.array([[0.0, 4.0], [-1.0, -4.0]])
        self.GG0 = np.array([[0.0, 0.0], [0.0, 2.0]])
        S0 = np.diag([1e-6, 0.01 + 1e-6])
        F, GG = 4.0 * self.F0, 4.0 * self.GG0

        def rhs(t, y):
            R, S = y[:4].reshape(2, 2), y[4:].reshape(2, 2)
            dR = F @ R + 0.5 * GG @ np.linalg.inv(R).T
            dS = F @ S + S @ F.T + GG
            return np.concatenate([dR.reshape(-1), dS.reshape(-1)])

        y0 = np.concatenate([np.linalg.cholesky(S0).reshape(-1), S0.reshape(-1)])
        self.sol = solve_ivp(rhs, (0.0, 1.0), y0, method="DOP853", rtol=1e-12, atol=1e-15, dense_output=True).sol

    def psi(self, tp, tau):
        B = 4.0 * (tp - tau)
        return math.exp(-2 * B) * (np.eye(2) + B * (self.F0 + 2 * np.eye(2)))

    def integrand(self, tp, tau, kind):
        y = self.sol(tau)
        K = y[:4].reshape(2, 2) if kind == "R" else np.linalg.cholesky(y[4:].reshape(2, 2))
        return (0.5 * self.psi(tp, tau) @ (4.0 * self.GG0) @ np.linalg.inv(K).T)[None]


def lagrange(nodes, j, x):
    v = 1.0
    for k, xk in enumerate(nodes):
        if k != j:
            v *= (x - xk) / (nodes[j] - xk)
    return v


def reference_C(ref, times, i, q, kind):
    """``[q, n, b, b]`` coefficients of step i by adaptive quadrature of the original integrand."""
    t, tp = times[i].item(), times[i + 1].item()
    nodes = [times[i - j].item() for j in range(q)]

    def f(tau):
        M = ref.integrand(tp, tau, kind)
        return np.stack([M * lagrange(nodes, j, tau) for j in range(q)])

    val, err = quad_vec(f, t, tp, epsabs=1e-13, epsrel=1e-13, limit=400)
    assert err < 1e-10
    return torch.from_numpy(val)


@pytest.fixture(scope="module")
def cld_ref():
    ref = CLDRef()
    assert np.abs(ref.psi(0.7, 0.2) - scipy.linalg.expm(2.0 * ref.F0)).max() < 1e-14
    return ref


# --------------------------------------------------------------------------- order 1
@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_order1_coefficient_is_closed_form(name):
    p = processes()[name]
    for grid, n in [(QuadraticGrid(), 7), (UniformGrid(), 4)]:
        times = grid(p, n, 1e-3)
        plan = deterministic_plan(p, times, 1)
        t, tp = times[:-1], times[1:]
        ref = p.R(tp) - p.psi(tp, t) @ p.R(t)
        C = plan.coeffs["C"]
        assert C.shape == (n, 1, p.n_blocks, p.block_size, p.block_size) and C.dtype == F64
        assert (C[:, 0] - ref).abs().max() <= 1e-13 * max(1.0, ref.abs().max().item())
        assert (plan.coeffs["psi"] - p.psi(tp, t)).abs().max() == 0


@pytest.mark.parametrize("name", ["vp", "bdm"])
def test_order1_L_coefficient_equals_R_where_L_equals_R(name):
    """On scalar processes L = R, so the quadrature-built K='L' coefficient must equal the closed form."""
    p = processes()[name]
    times = QuadraticGrid()(p, 6, 1e-3)
    CR = deterministic_plan(p, times, 1, "R").coeffs["C"]
    CL = deterministic_plan(p, times, 1, "L", quad=64).coeffs["C"]
    assert rel_err(CL, CR) < 1e-10


# --------------------------------------------------------------------------- multistep vs independent quadrature
@pytest.mark.parametrize("kind", ["R", "L"])
@pytest.mark.parametrize("grid", ["quadratic", "uniform"])
@pytest.mark.parametrize("name", ["vp", "cld"])
def test_multistep_coefficients_vs_adaptive_quadrature(name, grid, kind, cld_ref):
    """With enough Gauss-Legendre nodes (quad=128) the plan equals scipy's adaptive quadrature of the
    original integrand to 1e-10 on every checked step, including the last one next to t_min."""
    p = processes()[name]
    ref = VPRef() if name == "vp" else cld_ref
    n = 8 if grid == "quadratic" else 5
    times = (QuadraticGrid() if grid == "quadratic" else UniformGrid())(p, n, 1e-3)
    for q in [2, 3, 4]:
        C = deterministic_plan(p, times, q, kind, quad=128).coeffs["C"]
        for i in sorted({q - 1, max(q - 1, n // 2), n - 1}):
            Cref = reference_C(ref, times, i, q, kind)
            assert rel_err(C[i], Cref) < 1e-10, (q, i, rel_err(C[i], Cref))
            # the warm-up is complete at step i >= q - 1: every node is used
            assert (C[i].abs().amax((-1, -2, -3)) > 0).all()


@pytest.mark.parametrize("kind", ["R", "L"])
@pytest.mark.parametrize("name", ["vp", "cld"])
def test_multistep_coefficients_default_quadrature_accuracy(name, kind, cld_ref):
    """The default quad=16. On the paper's quadratic grid it is accurate to 1e-6 relative on every checked
    step (measured: K=R ~2e-9, K=L ~2e-7 on the last step). On a coarse uniform grid the last step
    [t_min, t_min + h] has an integrand ~ tau^{-1/2}-like near t_min and 16 nodes are not enough
    (measured, 5 steps: K=R up to ~3e-6, K=L up to ~4e-4 relative); asserted loosely, reported."""
    p = processes()[name]
    ref = VPRef() if name == "vp" else cld_ref
    times = QuadraticGrid()(p, 8, 1e-3)
    for q in [2, 4]:
        C = deterministic_plan(p, times, q, kind).coeffs["C"]
        for i in [q - 1, 4, 7]:
            Cref = reference_C(ref, times, i, q, kind)
            assert rel_err(C[i], Cref) < 1e-6, (q, i, rel_err(C[i], Cref))
    times = UniformGrid()(p, 5, 1e-3)
    C = deterministic_plan(p, times, 3, kind).coeffs["C"]
    err = rel_err(C[4], reference_C(ref, times, 4, 3, kind))
    assert err < (1e-5 if kind == "R" else 1e-3), err


def test_bdm_multistep_R_and_L_agree_when_quadrature_converged():
    """On BDM, L = R: the by-parts (K='R') and direct (K='L') quadratures compute the same integral."""
    p = processes()["bdm"]
    times = QuadraticGrid()(p, 8, 1e-3)
    for q in [2, 3]:
        CR = deterministic_plan(p, times, q, "R", quad=96).coeffs["C"]
        CL = deterministic_plan(p, times, q, "L", quad=96).coeffs["C"]
        assert rel_err(CL, CR) < 1e-10
        CR16 = deterministic_plan(p, times, q, "R").coeffs["C"]
        # default quadrature on the sharp blur transition: looser, but far below the step error
        assert rel_err(CR16, CR) < 1e-5


@pytest.mark.parametrize("name", PROCESS_NAMES)
@pytest.mark.parametrize("kind", ["R", "L"])
def test_multistep_rows_sum_to_order1(name, kind):
    """sum_j l_j = 1, so sum_j C_ij is the order-1 coefficient (same kind, same quadrature)."""
    p = processes()[name]
    times = QuadraticGrid()(p, 9, 1e-3)
    C1 = deterministic_plan(p, times, 1, kind).coeffs["C"][:, 0]
    for q in [2, 3, 4]:
        C = deterministic_plan(p, times, q, kind).coeffs["C"]
        assert C.shape[1] == q
        assert rel_err(C.sum(1), C1) < 1e-12
        # warm-up: step i uses min(i + 1, q) nodes, the unused ones are exactly zero
        for i in range(q - 1):
            assert (C[i, i + 1 :] == 0).all()
            assert (C[i, : i + 1].abs().sum() > 0)


def test_vp_order2_matches_hand_formula():
    """VP, K=R, q = 2: C_1 = int l_1(tau) d/dtau[a_t'/a_tau sigma_tau] by an independent scipy quad."""
    p = processes()["vp"]
    times = UniformGrid()(p, 6, 1e-3)
    C = deterministic_plan(p, times, 2, quad=64).coeffs["C"]
    r = VPRef()
    for i in range(1, 6):
        t, tp, t_prev = times[i].item(), times[i + 1].item(), times[i - 1].item()
        val, _ = quad_vec(lambda x: r.integrand(tp, x, "R")[0, 0, 0] * (x - t) / (t_prev - t), t, tp,
                          epsabs=1e-14, epsrel=1e-13)
        assert abs(C[i, 1, 0, 0, 0].item() - val) <= 1e-10 * abs(val)


# --------------------------------------------------------------------------- stochastic plan
@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_stochastic_plan_lambda0_is_deterministic(name):
    p = processes()[name]
    times = QuadraticGrid()(p, 10, 1e-3)
    sp = stochastic_plan(p, times, 0.0)
    C1 = deterministic_plan(p, times, 1).coeffs["C"][:, 0]
    tol = 1e-9 if isinstance(p, CLD) else 1e-13  # CLD's Psi^ is a numeric solve
    assert rel_err(sp.coeffs["eps"], C1) < tol
    assert (sp.coeffs["psi"] - deterministic_plan(p, times, 1).coeffs["psi"]).abs().max() == 0
    assert sp.coeffs["P"].abs().max() < 1e-10
    # the noise factor is the clipped square root of a round-off P, so ~sqrt(1e-12) on CLD, not 0
    assert sp.coeffs["noise"].abs().max() < (1e-5 if isinstance(p, CLD) else 1e-7)
    assert (sp.coeffs["noise"][-1] == 0).all()


LAMBDA_CASES = [(n, lam) for n in PROCESS_NAMES for lam in (0.3, 1.0, 2.0)]


def _lambda_params():
    out = []
    for n, lam in LAMBDA_CASES:
        marks = []
        out.append(pytest.param(n, lam, marks=marks, id=f"{n}-{lam}"))
    return out


@pytest.mark.parametrize("name, lam", _lambda_params())
def test_stochastic_plan_covariance_symmetric_psd(name, lam):
    p = processes()[name]
    times = QuadraticGrid()(p, 12, 1e-3)
    plan = stochastic_plan(p, times, lam)
    P, Nz = plan.coeffs["P"], plan.coeffs["noise"]
    assert (P - P.transpose(-1, -2)).abs().max() <= 1e-14
    eig = torch.linalg.eigvalsh(P)
    assert (eig >= -1e-12 * P.abs().amax((-1, -2, -3), keepdim=True)[..., 0]).all()
    assert (eig.amax(-1) > 0).any(-1).all()  # a genuine noise injection on every step
    # noise = P^{1/2} (symmetric), except the noise-free last step
    NNt = Nz @ Nz.transpose(-1, -2)
    assert (NNt[:-1] - P[:-1]).abs().max() <= 1e-10 * P.abs().max()
    assert (Nz[-1] == 0).all()
    # the eps coefficient is (Psi^ - Psi) R_t
    t, tp = times[:-1], times[1:]
    ref = (p.psi_hat(tp, t, lam) - p.psi(tp, t)) @ p.R(t)
    assert rel_err(plan.coeffs["eps"], ref) < 1e-12


@pytest.mark.parametrize("name, lam", [("vp", 0.3), ("vp", 1.0), ("vp", 2.0), ("cld", 0.3), ("cld", 1.0),
                                       ("cld", 2.0)])
def test_stochastic_P_is_covariance_of_the_linear_sde(name, lam):
    """P_st = Sigma_t - Psi^ Sigma_s Psi^T must equal the noise the frozen-eps lambda-SDE injects,
    int_t^s Psi^(t, tau) lambda^2 G G^T Psi^(t, tau)^T dtau (d/dt of the difference is -lambda^2 G G^T +
    F^ Q + Q F^^T), here by composite Gauss-Legendre (8 panels x 24 nodes, geometric towards t)."""
    p = processes()[name]
    times = QuadraticGrid()(p, 6, 1e-3)
    P = stochastic_plan(p, times, lam).coeffs["P"]
    x, w = np.polynomial.legendre.leggauss(24)
    for i in [0, 3, 5]:
        s, t = times[i].item(), times[i + 1].item()
        edges = t + (s - t) * np.concatenate([[0.0], np.geomspace(1e-4, 1.0, 8)])
        a, b = edges[:-1, None], edges[1:, None]
        tau = (0.5 * (b - a) * x + 0.5 * (a + b)).reshape(-1)
        wt = (0.5 * (b - a) * w).reshape(-1)
        ggt = (tt(VPRef().beta(tau))[:, None, None, None] if name == "vp"  # analytic: autodiff GGT is slow
               else p.GGT(tt(tau)))
        ph = p.psi_hat(tt(t), tt(tau), lam)
        val = torch.einsum("k,knab->nab", tt(wt), ph @ (lam**2 * ggt) @ ph.transpose(-1, -2))
        assert rel_err(P[i], val) < 1e-8, (i, rel_err(P[i], val))


# --------------------------------------------------------------------------- drift plan
@pytest.mark.parametrize("name", ["vp", "cld", "bdm"])
def test_drift_plan_values(name):
    p = processes()[name]
    times = UniformGrid()(p, 5, 1e-3)
    for lam in [0.0, 1.0]:
        plan = drift_plan(p, times, lam)
        c = 0.5 * (1 + lam**2)
        assert rel_err(plan.coeffs["F"], p.F(times)) == 0
        ref = c * p.GGT(times) @ torch.linalg.inv(p.R(times)).transpose(-1, -2)
        assert rel_err(plan.coeffs["D"], ref) < 1e-14
        G = plan.coeffs["G"]
        assert rel_err(G @ G.transpose(-1, -2), lam**2 * p.GGT(times)) < 1e-12 if lam else (G == 0).all()


# --------------------------------------------------------------------------- caching
def test_plan_caching():
    p = CLD((2,))
    times = QuadraticGrid()(p, 10, 1e-3)
    a = deterministic_plan(p, times, 2)
    assert deterministic_plan(p, times.clone(), 2) is a
    assert deterministic_plan(p, times, 3) is not a
    assert deterministic_plan(p, times, 2, "L") is not a
    assert deterministic_plan(p, times, 2, quad=20) is not a
    assert deterministic_plan(p, UniformGrid()(p, 10, 1e-3), 2) is not a
    s = stochastic_plan(p, times, 1.0)
    assert stochastic_plan(p, times, 1.0) is s
    assert stochastic_plan(p, times, 0.5) is not s
    d = drift_plan(p, times, 1.0)
    assert drift_plan(p, times, 1.0) is d and drift_plan(p, times, 0.0) is not d
    # another process instance has its own cache
    assert deterministic_plan(CLD((2,)), times, 2) is not a
    # converted copies are cached too
    assert a.get("C", torch.float32, "cpu") is a.get("C", torch.float32, "cpu")
    assert a.get("C", torch.float32, "cpu").dtype == torch.float32


def test_sampler_reuses_cached_plan():
    p = VPSDE((2,))
    eps = PointMass(tt([0.5, -0.5])).eps_fn(p)
    sampler = GDDIM(10, q=2)
    sampler.sample(p, eps, SampleNoise([0], dtype=F64))
    n = len(p.plan_cache)
    plan = next(iter(p.plan_cache.values()))
    sampler.sample(p, eps, SampleNoise([1, 2], dtype=F64))
    assert len(p.plan_cache) == n and next(iter(p.plan_cache.values())) is plan
    GDDIM(10, q=1).sample(p, eps, SampleNoise([0], dtype=F64))
    assert len(p.plan_cache) == n + 1


# --------------------------------------------------------------------------- precompute budget (report only)
def test_plan_precompute_time_report(capsys):
    """Time of a 1000-step order-3 plan (issue budget 0.5 s); printed, not asserted."""
    rows = []
    for name, make in [("VP (3x32x32)", lambda: VPSDE((3, 32, 32))), ("CLD (3x32x32)", lambda: CLD((3, 32, 32))),
                       ("BDM 3x32x32", lambda: BDM((3, 32, 32)))]:
        p = make()
        t0 = time.perf_counter()
        p.R(tt(0.5))  # one-off float64 R solve (CLD), outside the plan
        t1 = time.perf_counter()
        times = UniformGrid()(p, 1000, 1e-3)
        t2 = time.perf_counter()
        plan = deterministic_plan(p, times, 3)
        t3 = time.perf_counter()
        stochastic_plan(p, times, 1.0)
        t4 = time.perf_counter()
        assert torch.isfinite(plan.coeffs["C"]).all()
        rows.append(f"{name:15s} R solve {t1 - t0:6.3f} s | order-3 plan {t3 - t2:6.3f} s | "
                    f"stochastic plan {t4 - t3:6.3f} s")
    with capsys.disabled():
        print("\n[plan precompute, 1000 steps, torch threads=%d]" % torch.get_num_threads())
        for r in rows:
            print("  " + r)
