"""Tests of the linear processes in ``gddim_lightning.sdes`` against independent float64 computations.

Every closed form (``Psi``, ``Sigma``, ``R``, ``Psi^``) is checked against something computed here
without the package's numerics: analytic derivatives of the schedules written out by hand, scipy
quadrature of ``F``, scipy ``solve_ivp`` of the defining ODEs (transition, Lyapunov, R, F^).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import torch
from scipy.integrate import quad_vec, solve_ivp

from gddim_lightning.oracles import GaussianMixture, PointMass
from gddim_lightning.samplers import GDDIM, Ancestral, EulerMaruyama, Heun, SampleNoise
from gddim_lightning.sdes import (
    BDM,
    CLD,
    VPSDE,
    BlockLayout,
    LinearSDE,
    as_time,
    dct2,
    dct_frequencies,
    dct_matrix,
    idct2,
)
from helpers import F64, tt


# --------------------------------------------------------------------------- independent closed forms
def schedule_np(name: str, bmin: float = 0.1, bmax: float = 20.0):
    """``(log a_t, f = d log a/dt, sigma_t^2, g^2)`` of a noise schedule, derived by hand (numpy)."""

    def linear(t):
        beta = bmin + t * (bmax - bmin)
        loga = -0.25 * t**2 * (bmax - bmin) - 0.5 * t * bmin
        return loga, -0.5 * beta, -np.expm1(2 * loga), beta

    def cosine(t, s=0.004, d=1.008):
        th = (t + s) / d * np.pi / 2
        k = np.pi / (2 * d)
        # g^2 = d sigma^2/dt - 2 f sigma^2 = k sin(2 th) + 2 k tan(th) sin^2(th) = 2 k tan(th)
        return np.log(np.cos(th)), -k * np.tan(th), np.sin(th) ** 2, 2 * k * np.tan(th)

    def cosine_logsnr(t, lmin=-10.0, lmax=10.0):
        # logsnr = -2 log tan(c t + e)  =>  a^2 = cos^2(c t + e), sigma^2 = sin^2(c t + e)
        e = np.arctan(np.exp(-0.5 * lmax))
        c = np.arctan(np.exp(-0.5 * lmin)) - e
        ph = c * t + e
        return np.log(np.cos(ph)), -c * np.tan(ph), np.sin(ph) ** 2, 2 * c * np.tan(ph)

    return {"linear": linear, "cosine_gddim": cosine, "cosine_logsnr": cosine_logsnr}[name]


class ScalarNP:
    """Independent numpy ``log m_k(t)``, ``f_k(t)``, ``g_k^2(t)``, ``sigma_t^2`` of VP / BDM (all ``[n]``)."""

    def __init__(self, schedule: str, bmin=0.1, bmax=20.0, image=None, blur=0.0, dmin=0.001):
        self.sched = schedule_np(schedule, bmin, bmax)
        if image is None:
            self.lam = np.zeros(1)
        else:
            _, H, W = image
            i, j = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
            self.lam = ((np.pi * i / H) ** 2 + (np.pi * j / W) ** 2).reshape(-1)
        self.blur, self.dmin = blur, dmin

    def _blur(self, t):
        sb = self.blur * np.sin(np.pi * t / 2) ** 2
        tau = 0.5 * sb**2
        dtau = sb * self.blur * np.sin(np.pi * t) * np.pi / 2
        d = (1 - self.dmin) * np.exp(-self.lam * tau) + self.dmin
        dlogd = -(1 - self.dmin) * self.lam * np.exp(-self.lam * tau) * dtau / d
        return np.log(d), dlogd

    def logm(self, t):
        return self.sched(t)[0] + self._blur(t)[0]

    def f(self, t):
        return self.sched(t)[1] + self._blur(t)[1]

    def s2(self, t):
        return self.sched(t)[2]

    def g2(self, t):
        _, _, s2, g2 = self.sched(t)
        return g2 - 2 * self._blur(t)[1] * s2


SCALAR_CASES = {
    "vp_linear": (lambda: VPSDE((2,)), lambda: ScalarNP("linear")),
    "vp_linear_b": (lambda: VPSDE((3,), beta_min=0.5, beta_max=8.0), lambda: ScalarNP("linear", 0.5, 8.0)),
    "vp_cosine": (lambda: VPSDE((2,), schedule="cosine_gddim"), lambda: ScalarNP("cosine_gddim")),
    "vp_logsnr": (lambda: VPSDE((2,), schedule="cosine_logsnr"), lambda: ScalarNP("cosine_logsnr")),
    "bdm_1x4x4": (lambda: BDM((1, 4, 4)), lambda: ScalarNP("cosine_logsnr", image=(1, 4, 4), blur=20.0)),
    "bdm_2x3x5": (lambda: BDM((2, 3, 5), sigma_blur_max=7.0),
                  lambda: ScalarNP("cosine_logsnr", image=(2, 3, 5), blur=7.0)),
    "bdm_3x2x3_gddim": (lambda: BDM((3, 2, 3), schedule="cosine_gddim", sigma_blur_max=10.0),
                        lambda: ScalarNP("cosine_gddim", image=(3, 2, 3), blur=10.0)),
    "bdm_1x5x2_linear": (lambda: BDM((1, 5, 2), schedule="linear", sigma_blur_max=3.0),
                         lambda: ScalarNP("linear", image=(1, 5, 2), blur=3.0)),
}

CLD_CASES = {
    "critical": dict(),
    "underdamped_slope": dict(Gamma=0.5, beta_slope=2.0),
    "overdamped_slope": dict(beta=3.0, Gamma=2.0, beta_slope=-1.0, m_inv=4.0),
    "critical_mass": dict(m_inv=1.0, beta=2.0, beta_slope=3.0, gamma=0.1),
}

TIME_PAIRS = [(0.7, 0.2), (1.0, 0.0), (0.05, 0.9), (0.3, 0.3), (0.999, 0.001)]


def lyapunov_np(F, GG, S0, ts):
    """Independent solve of ``dS/dt = F S + S F^T + GG`` from ``S(0) = S0`` (numpy, ``[n, b, b]``)."""
    shape = S0.shape

    def rhs(t, y):
        S = y.reshape(shape)
        Ft = F(t)
        return (Ft @ S + S @ np.swapaxes(Ft, -1, -2) + GG(t)).reshape(-1)

    res = solve_ivp(rhs, (0.0, max(ts)), S0.reshape(-1), method="DOP853", rtol=1e-12, atol=1e-14,
                    t_eval=ts)
    assert res.success
    return res.y.T.reshape(len(ts), *shape)


def cld_np(**kw):
    """Numpy ``F(t)``, ``GG(t)`` and ``Sigma0`` of CLD written from the paper's definition."""
    c = CLD((1,), **kw)  # only used for its parameter defaults
    beta = lambda t: c.beta0 + c.beta_slope * t  # noqa: E731
    F0 = np.array([[0.0, c.m_inv], [-1.0, -c.Gamma * c.m_inv]])
    GG0 = np.array([[0.0, 0.0], [0.0, 2 * c.Gamma]])
    S0 = np.diag([c.eps_num, c.gamma / c.m_inv + c.eps_num])[None]
    return (lambda t: beta(t) * F0[None]), (lambda t: beta(t) * GG0[None]), S0


# --------------------------------------------------------------------------- DCT
@pytest.mark.parametrize("shape", [(4, 4), (5, 7), (1, 1), (2, 1), (3, 2, 9, 6), (2, 3, 8, 3)])
def test_dct2_matches_scipy(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=F64)
    ref = scipy.fft.dctn(x.numpy(), type=2, norm="ortho", axes=(-2, -1))
    np.testing.assert_allclose(dct2(x).numpy(), ref, atol=1e-13, rtol=0)
    ref_inv = scipy.fft.idctn(x.numpy(), type=2, norm="ortho", axes=(-2, -1))
    np.testing.assert_allclose(idct2(x).numpy(), ref_inv, atol=1e-13, rtol=0)


@pytest.mark.parametrize("shape", [(7, 7), (5, 12), (3, 1, 9, 4)])
def test_dct_round_trip_and_orthonormal(shape):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g, dtype=F64)
    assert (idct2(dct2(x)) - x).abs().max() < 1e-14
    assert (dct2(idct2(x)) - x).abs().max() < 1e-14
    assert abs(dct2(x).norm() - x.norm()) < 1e-12  # Parseval
    for n in shape[-2:]:
        D = dct_matrix(n)
        assert (D @ D.T - torch.eye(n, dtype=F64)).abs().max() < 1e-14


def test_dct_frequencies():
    lam = dct_frequencies(3, 5)
    ref = np.add.outer((np.pi * np.arange(3) / 3) ** 2, (np.pi * np.arange(5) / 5) ** 2)
    np.testing.assert_allclose(lam.numpy(), ref, rtol=1e-15)


# --------------------------------------------------------------------------- F, GGT of the scalar processes
@pytest.mark.parametrize("case", sorted(SCALAR_CASES))
def test_scalar_drift_and_diffusion_match_hand_derivation(case):
    mk, mk_np = SCALAR_CASES[case]
    p, ref = mk(), mk_np()
    ts = np.array([0.0, 0.01, 0.2, 0.5, 0.77, 0.95, 1.0])
    F = p.F(tt(ts))[..., 0, 0].numpy()
    G = p.GGT(tt(ts))[..., 0, 0].numpy()
    for k, t in enumerate(ts):
        np.testing.assert_allclose(F[k], ref.f(t) * np.ones(p.n_blocks), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(G[k], ref.g2(t) * np.ones(p.n_blocks), rtol=1e-10, atol=1e-12)
    assert (G >= 0).all()


# --------------------------------------------------------------------------- Psi
@pytest.mark.parametrize("case", sorted(SCALAR_CASES))
def test_scalar_psi_vs_integrated_drift_and_ode(case):
    mk, mk_np = SCALAR_CASES[case]
    p, ref = mk(), mk_np()
    for t, s in TIME_PAIRS:
        got = p.psi(tt(t), tt(s))
        assert got.shape == (p.n_blocks, 1, 1)
        got = got[:, 0, 0].numpy()
        # (a) expm of the integral of F (scalar blocks: exp), scipy adaptive quadrature
        intF, _ = quad_vec(lambda x: ref.f(x) * np.ones(p.n_blocks), s, t, epsabs=1e-13, epsrel=1e-13)
        np.testing.assert_allclose(got, np.exp(intF), rtol=1e-10, atol=1e-300)
        # (b) solve dPsi/dt = F Psi from s to t
        if t != s:
            res = solve_ivp(lambda x, y: ref.f(x) * y, (s, t), np.ones(p.n_blocks), method="DOP853",
                            rtol=1e-12, atol=1e-300)
            np.testing.assert_allclose(got, res.y[:, -1], rtol=1e-10)


def test_bdm_psi_vs_quadrature_of_process_F():
    """Integrate the package's own ``F`` (autodiff of the schedule) by composite Gauss-Legendre (one batched
    call of ``F``) and exponentiate."""
    p = BDM((2, 2, 3), sigma_blur_max=5.0)
    x, w = np.polynomial.legendre.leggauss(40)
    for t, s in [(0.8, 0.1), (0.2, 0.6)]:
        edges = np.linspace(s, t, 5)
        a, b = edges[:-1, None], edges[1:, None]
        nodes = (0.5 * (b - a) * x + 0.5 * (a + b)).reshape(-1)
        weights = (0.5 * (b - a) * w).reshape(-1)
        intF = torch.einsum("k,knab->nab", tt(weights), p.F(tt(nodes)))
        ref = torch.linalg.matrix_exp(intF)
        assert torch.allclose(p.psi(tt(t), tt(s)), ref, rtol=1e-11, atol=0)


@pytest.mark.parametrize("case", sorted(CLD_CASES))
def test_cld_psi_vs_expm_of_integral_and_ode(case):
    p = CLD((2,), **CLD_CASES[case])
    assert p.critical == (case in ("critical", "critical_mass"))
    for t, s in TIME_PAIRS:
        got = p.psi(tt(t), tt(s))
        assert got.shape == (1, 2, 2)
        intF, _ = quad_vec(lambda x: p.F(tt(x)).numpy(), s, t, epsabs=1e-13, epsrel=1e-13)
        ref = torch.linalg.matrix_exp(torch.from_numpy(intF))
        scale = ref.abs().max().item()
        assert (got - ref).abs().max().item() <= 1e-11 * scale
        if t != s:
            res = solve_ivp(lambda x, y: (p.F(tt(x))[0].numpy() @ y.reshape(2, 2)).reshape(-1), (s, t),
                            np.eye(2).reshape(-1), method="DOP853", rtol=1e-12, atol=1e-14)
            assert np.abs(got[0].numpy() - res.y[:, -1].reshape(2, 2)).max() <= 1e-10 * scale


def test_cld_psi_batched_times_shape():
    p = CLD((3,))
    t = tt([[0.5, 0.6, 0.9], [0.1, 0.2, 0.3]])
    s = tt(0.05)
    out = p.psi(t, s)
    assert out.shape == (2, 3, 1, 2, 2) and out.dtype == F64
    assert torch.allclose(out[1, 2], p.psi(tt(0.3), s), rtol=0, atol=1e-15)


# --------------------------------------------------------------------------- Sigma (Lyapunov)
@pytest.mark.parametrize("case", sorted(SCALAR_CASES))
def test_scalar_sigma_vs_lyapunov_ode(case):
    mk, mk_np = SCALAR_CASES[case]
    p, ref = mk(), mk_np()
    ts = np.linspace(0.0, 1.0, 21)[1:]
    n = p.n_blocks
    S0 = p.Sigma0().numpy()
    assert S0.shape == (n, 1, 1)
    assert abs(S0[0, 0, 0] - ref.s2(0.0)) < 1e-15
    Fn = lambda t: (ref.f(t) * np.ones(n))[:, None, None]  # noqa: E731
    Gn = lambda t: (ref.g2(t) * np.ones(n))[:, None, None]  # noqa: E731
    S = lyapunov_np(Fn, Gn, S0, ts)
    got = p.Sigma(tt(ts)).numpy()
    assert np.abs(got - S).max() < 1e-10
    np.testing.assert_allclose(got[:, 0, 0, 0], ref.s2(ts), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("case", sorted(CLD_CASES))
def test_cld_sigma_vs_lyapunov_ode(case):
    kw = CLD_CASES[case]
    p = CLD((2,), **kw)
    Fn, Gn, S0 = cld_np(**kw)
    assert np.abs(p.Sigma0().numpy() - S0).max() == 0
    ts = np.concatenate([[1e-4, 1e-3, 0.01], np.linspace(0.05, 1.0, 20)])
    S = lyapunov_np(Fn, Gn, S0, ts)
    got = p.Sigma(tt(ts))
    assert got.shape == (len(ts), 1, 2, 2)
    assert np.abs(got.numpy() - S).max() < 1e-10
    # the CLD prior at T: x ~ N(0, 1), v ~ N(0, M) (up to exp(-a B) terms)
    if case == "critical":
        assert np.allclose(got[-1, 0].numpy(), np.diag([1.0, 0.25]), atol=5e-5)


# --------------------------------------------------------------------------- R and L
def all_processes():
    return [VPSDE((2,)), VPSDE((2,), schedule="cosine_gddim"), BDM((2, 3, 4)), BDM((1, 4, 4), schedule="cosine_gddim"),
            CLD((2,)), CLD((2,), **CLD_CASES["underdamped_slope"]), CLD((2,), **CLD_CASES["overdamped_slope"])]


@pytest.mark.parametrize("idx", range(7))
def test_R_factorises_sigma(idx):
    p = all_processes()[idx]
    ts = tt(np.linspace(0.0, 1.0, 51))
    R, S = p.R(ts), p.Sigma(ts)
    assert R.shape == S.shape == (51, p.n_blocks, p.block_size, p.block_size)
    err = (R @ R.transpose(-1, -2) - S).abs().amax((-1, -2, -3))
    assert (err <= 1e-10 * S.abs().amax((-1, -2, -3)).clamp_min(1e-3)).all(), err.max()


@pytest.mark.parametrize("idx", range(7))
def test_R_solves_its_ode_by_finite_differences(idx):
    """dR/dt = F R + 1/2 G G^T R^{-T}, central differences in float64."""
    p = all_processes()[idx]
    h = 1e-5
    for t in [0.05, 0.2, 0.5, 0.9]:
        dR = (p.R(tt(t + h)) - p.R(tt(t - h))) / (2 * h)
        R = p.R(tt(t))
        rhs = p.F(tt(t)) @ R + 0.5 * p.GGT(tt(t)) @ torch.linalg.inv(R).transpose(-1, -2)
        scale = rhs.abs().max().item()
        assert (dR - rhs).abs().max().item() <= 2e-6 * scale, (t, (dR - rhs).abs().max().item(), scale)


@pytest.mark.parametrize("case", ["critical", "underdamped_slope"])
def test_cld_R_vs_independent_solve(case):
    kw = CLD_CASES[case]
    p = CLD((2,), **kw)
    Fn, Gn, S0 = cld_np(**kw)

    def rhs(t, y):
        R = y.reshape(2, 2)
        return (Fn(t)[0] @ R + 0.5 * Gn(t)[0] @ np.linalg.inv(R).T).reshape(-1)

    ts = np.array([1e-3, 0.01, 0.1, 0.3, 0.6, 1.0])
    res = solve_ivp(rhs, (0, 1), np.linalg.cholesky(S0[0]).reshape(-1), method="DOP853", rtol=1e-12,
                    atol=1e-15, t_eval=ts)
    ref = res.y.T.reshape(-1, 2, 2)
    got = p.R(tt(ts))[:, 0].numpy()
    assert np.abs(got - ref).max() < 1e-9


@pytest.mark.parametrize("idx", range(7))
def test_L_is_lower_cholesky(idx):
    p = all_processes()[idx]
    ts = tt([1e-3, 0.1, 0.5, 1.0])
    L, S = p.L(ts), p.Sigma(ts)
    assert (L.triu(1) == 0).all()
    assert (torch.diagonal(L, dim1=-2, dim2=-1) > 0).all()
    assert (L @ L.transpose(-1, -2) - S).abs().max() < 1e-13
    assert torch.equal(p.K(ts, "L"), L) and torch.equal(p.K(ts, "R"), p.R(ts))


def test_cld_R_rotates_far_from_triangular():
    """The reason L fails on CLD: R_t (constant-eps factor) is far from the Cholesky factor."""
    p = CLD((2,))
    R, L = p.R(tt(0.1))[0], p.L(tt(0.1))[0]
    assert abs(R[0, 1].item()) > 0.3
    assert abs(R[0, 1].item()) / R.abs().max().item() > 0.5
    Q = torch.linalg.solve(L, R)  # R = L Q with Q orthogonal, far from the identity
    assert (Q @ Q.T - torch.eye(2, dtype=F64)).abs().max() < 1e-9
    assert (Q - torch.eye(2, dtype=F64)).abs().max() > 0.5
    # at t = 0 they coincide (R_0 = chol(Sigma_0))
    assert (p.R(tt(0.0)) - p.L(tt(0.0))).abs().max() < 1e-15


def test_K_rejects_unknown_kind():
    with pytest.raises(ValueError, match="'R'.*'L'"):
        CLD((2,)).K(tt(0.5), "X")


# --------------------------------------------------------------------------- Psi composition and Psi^
@pytest.mark.parametrize("idx", range(7))
def test_psi_composition(idx):
    p = all_processes()[idx]
    for t, s, r in [(0.9, 0.5, 0.1), (0.1, 0.5, 0.9), (0.3, 0.8, 0.0), (1.0, 0.0, 0.6)]:
        lhs = p.psi(tt(t), tt(s)) @ p.psi(tt(s), tt(r))
        rhs = p.psi(tt(t), tt(r))
        assert (lhs - rhs).abs().max() <= 1e-11 * max(1.0, rhs.abs().max().item())
    assert (p.psi(tt(0.4), tt(0.4)) - torch.eye(p.block_size, dtype=F64)).abs().max() < 1e-15


@pytest.mark.parametrize("idx", range(7))
def test_psi_hat_lambda0_is_R_ratio(idx):
    p = all_processes()[idx]
    for t, s in [(0.2, 0.6), (0.01, 0.99), (0.5, 0.51)]:
        got = p.psi_hat(tt(t), tt(s), 0.0)
        ref = p.R(tt(t)) @ torch.linalg.inv(p.R(tt(s)))
        assert (got - ref).abs().max() <= 1e-9 * ref.abs().max()


def _fast_numeric_vp_cosine():
    """VP cosine_gddim (Sigma0 > 0) whose per-time coefficients for the *base-class numeric* paths are
    the hand-derived ones in numpy (the package's autodiff F costs ~10 ms a call); checked equal."""
    p = VPSDE((2,), schedule="cosine_gddim")
    ref = ScalarNP("cosine_gddim")
    for t in [0.0, 0.3, 0.99]:
        F, G = LinearSDE._coeffs_np(p, t)
        np.testing.assert_allclose(F[0, 0, 0], ref.f(t)[0], rtol=1e-12)
        np.testing.assert_allclose(G[0, 0, 0], ref.g2(t)[0], rtol=1e-12)
    def coeffs(t):  # the package's contract: times [*S] -> [*S, n, b, b]; a float -> [n, b, b]
        ts = np.atleast_1d(np.asarray(t, dtype=np.float64))
        F = np.stack([ref.f(x) for x in ts])[..., None, None]
        G = np.stack([ref.g2(x) for x in ts])[..., None, None]
        return (F[0], G[0]) if np.ndim(t) == 0 else (F, G)

    p._coeffs_np = coeffs
    return p, ref




def _indep_scalar_psi_hat(ref, lam, t, s):
    c = 0.5 * (1 + lam**2)
    res = solve_ivp(lambda x, y: (ref.f(x) + c * ref.g2(x) / ref.s2(x)) * y, (s, t), np.ones_like(ref.lam),
                    method="DOP853", rtol=1e-12, atol=1e-300)
    return res.y[:, -1]


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0, 2.0, 3.0])
def test_scalar_psi_hat_closed_form_vs_independent_ode(lam):
    p, ref = VPSDE((2,), schedule="cosine_gddim"), ScalarNP("cosine_gddim")
    for t, s in [(0.3, 0.6), (0.05, 0.9), (0.7, 0.71), (0.001, 1.0)]:
        closed = p.psi_hat(tt(t), tt(s), lam)[0, 0, 0].item()
        indep = _indep_scalar_psi_hat(ref, lam, t, s)[0]
        assert abs(closed - indep) <= 1e-9 * abs(indep), (t, s, closed, indep)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0, 2.0])
def test_base_numeric_psi_hat_vs_independent_ode(lam):
    """The base-class numeric Psi^ (what CLD and user processes get) on a process where the answer is known."""
    p, ref = _fast_numeric_vp_cosine()
    for t, s in [(0.3, 0.6), (0.05, 0.9), (0.7, 0.71), (0.001, 1.0)]:
        numeric = LinearSDE.psi_hat(p, tt(t), tt(s), lam)[0, 0, 0].item()
        indep = _indep_scalar_psi_hat(ref, lam, t, s)[0]
        # relative 1e-9, plus the solver's absolute tolerance at the identity's scale (1e-13)
        assert abs(numeric - indep) <= 1e-9 * abs(indep) + 1e-13, (t, s, numeric, indep)
    # the base-class numeric R agrees with the closed form sigma_t
    ts = tt([0.0, 0.2, 0.7, 1.0])
    assert (LinearSDE.R(p, ts) - p.R(ts)).abs().max() < 1e-10


@pytest.mark.parametrize("lam", [0.5, 1.0, 2.0])
def test_bdm_psi_hat_vs_independent_ode(lam):
    p = BDM((1, 2, 3), sigma_blur_max=6.0)
    ref = ScalarNP("cosine_logsnr", image=(1, 2, 3), blur=6.0)
    c = 0.5 * (1 + lam**2)
    for t, s in [(0.3, 0.6), (0.02, 0.95)]:
        res = solve_ivp(lambda x, y: (ref.f(x) + c * ref.g2(x) / ref.s2(x)) * y, (s, t), np.ones(6),
                        method="DOP853", rtol=1e-12, atol=1e-300)
        got = p.psi_hat(tt(t), tt(s), lam)[:, 0, 0].numpy()
        np.testing.assert_allclose(got, res.y[:, -1], rtol=1e-9)


@pytest.mark.parametrize("lam", [0.5, 1.0, 2.0])
def test_cld_psi_hat_vs_independent_ode(lam):
    """Psi^ of F + (1 + lam^2)/2 G G^T Sigma^{-1}, with Sigma the closed form (not R)."""
    p = CLD((2,))
    Fn, Gn, _ = cld_np()
    c = 0.5 * (1 + lam**2)

    def rhs(x, y):
        Sinv = np.linalg.inv(p.Sigma(tt(x))[0].numpy())
        return ((Fn(x)[0] + c * Gn(x)[0] @ Sinv) @ y.reshape(2, 2)).reshape(-1)

    for t, s in [(0.3, 0.6), (0.02, 0.9), (0.001, 0.0035), (0.05, 0.06)]:
        res = solve_ivp(rhs, (s, t), np.eye(2).reshape(-1), method="DOP853", rtol=1e-12, atol=1e-14)
        ref = res.y[:, -1].reshape(2, 2)
        got = p.psi_hat(tt(t), tt(s), lam)[0].numpy()
        assert np.abs(got - ref).max() <= 1e-8 * np.abs(ref).max()


# --------------------------------------------------------------------------- BDM without blur is VP
def _bdm_vp_pair():
    shape = (2, 3, 4)
    return BDM(shape, schedule="cosine_logsnr", sigma_blur_max=0.0), VPSDE(shape, schedule="cosine_logsnr")


def test_bdm_without_blur_equals_vp_quantities():
    bdm, vp = _bdm_vp_pair()
    ts = tt([0.0, 0.01, 0.3, 0.75, 1.0])
    s = tt(0.2)
    for name, fn in [("psi", lambda p: p.psi(ts, s)), ("R", lambda p: p.R(ts)), ("Sigma", lambda p: p.Sigma(ts)),
                     ("F", lambda p: p.F(ts)), ("GGT", lambda p: p.GGT(ts)), ("L", lambda p: p.L(ts)),
                     ("psi_hat", lambda p: p.psi_hat(ts.clamp_min(0.01), tt(1.0), 1.0))]:
        a, b = fn(bdm), fn(vp)
        assert a.shape[-3] == 12 and b.shape[-3] == 1, name
        assert (a - b).abs().max() <= 1e-12 * max(1.0, b.abs().max().item()), name
    assert (bdm.log_snr(ts) - vp.log_snr(ts)).abs().max() < 1e-12


def test_bdm_without_blur_equals_vp_samples():
    bdm, vp = _bdm_vp_pair()
    g = torch.Generator().manual_seed(3)
    mix = GaussianMixture([1.0, 2.0], torch.randn(2, 2, 3, 4, generator=g, dtype=F64), 0.3)
    seeds = [11, 12, 13]
    for sampler in [GDDIM(6, q=1), GDDIM(5, q=0, lambda_=1.0), EulerMaruyama(6), Ancestral(5)]:
        a = sampler.sample(bdm, mix.eps_fn(bdm), SampleNoise(seeds, dtype=F64))
        b = sampler.sample(vp, mix.eps_fn(vp), SampleNoise(seeds, dtype=F64))
        assert (a.samples - b.samples).abs().max() < 1e-12, sampler
        assert a.nfe == b.nfe


# --------------------------------------------------------------------------- user-defined processes
class UserCLD(LinearSDE):
    """CLD written as a user would: only F, GGT, Sigma0; everything else is the base-class numerics."""

    def __init__(self, data_shape, beta=4.0, beta_slope=0.0, m_inv=4.0, gamma=0.04, eps_num=1e-6, Gamma=None):
        super().__init__(BlockLayout(data_shape, 2, "shared"), 1.0)
        Gamma = 2.0 / math.sqrt(m_inv) if Gamma is None else Gamma
        self.b0, self.slope = beta, beta_slope
        self.F0 = tt([[0.0, m_inv], [-1.0, -Gamma * m_inv]])
        self.GG0 = tt([[0.0, 0.0], [0.0, 2 * Gamma]])
        self.S0 = torch.diag(tt([eps_num, gamma / m_inv + eps_num])).unsqueeze(0)

    def F(self, t):
        return (self.b0 + self.slope * as_time(t))[..., None, None, None] * self.F0

    def GGT(self, t):
        return (self.b0 + self.slope * as_time(t))[..., None, None, None] * self.GG0

    def Sigma0(self):
        return self.S0


class DiagOU(LinearSDE):
    """Per-element OU with a different rate per coordinate: F = -r_k(t), GGT = 2 r_k(t), r_k = theta_k (1 + t).

    Closed forms: B(t, s) = (t - s) + (t^2 - s^2)/2, Psi = exp(-theta B), Sigma_t = 1 - (1 - s0) exp(-2 theta B(t, 0)).
    """

    def __init__(self, theta=(0.5, 2.0, 5.0), s0=1e-3):
        super().__init__(BlockLayout((len(theta),), 1, "per_element"), 1.0)
        self.theta = tt(theta)
        self.s0 = s0

    def rate(self, t):
        return (1 + as_time(t))[..., None] * self.theta

    def F(self, t):
        return -self.rate(t)[..., None, None]

    def GGT(self, t):
        return 2 * self.rate(t)[..., None, None]

    def Sigma0(self):
        return torch.full((len(self.theta), 1, 1), self.s0, dtype=F64)

    def closed(self, t, s):
        B = (t - s) + 0.5 * (t**2 - s**2)
        B0 = t + 0.5 * t**2
        return torch.exp(-self.theta * B), 1 - (1 - self.s0) * torch.exp(-2 * self.theta * B0)


@pytest.mark.parametrize("kw", [dict(), dict(Gamma=0.5, beta_slope=2.0)])
def test_user_cld_numeric_matches_cld_closed_forms(kw):
    user, ref = UserCLD((2,), **kw), CLD((2,), **kw)
    ts = tt([0.0, 1e-3, 0.05, 0.3, 0.8, 1.0])
    s = tt(0.4)
    assert (user.psi(ts, s) - ref.psi(ts, s)).abs().max() < 1e-9 * ref.psi(ts, s).abs().max()
    assert (user.Sigma(ts) - ref.Sigma(ts)).abs().max() < 1e-9
    assert (user.R(ts) - ref.R(ts)).abs().max() < 1e-9
    assert (user.L(ts) - ref.L(ts)).abs().max() < 1e-8
    assert (user.psi_hat(ts[1:], tt(1.0), 1.0) - ref.psi_hat(ts[1:], tt(1.0), 1.0)).abs().max() < 1e-8
    assert user.state_shape == ref.state_shape == (4,)


def test_user_cld_samplers_run_and_match_cld():
    user, ref = UserCLD((2,)), CLD((2,))
    mix = GaussianMixture([1.0, 1.0], tt([[1.0, 0.5], [-1.0, 0.0]]), 0.2)
    seeds = [0, 1, 2, 3]
    for sampler in [GDDIM(8, q=1), GDDIM(6, q=0, lambda_=0.5), EulerMaruyama(8), Heun(9)]:
        a = sampler.sample(user, mix.eps_fn(user), SampleNoise(seeds, dtype=F64))
        b = sampler.sample(ref, mix.eps_fn(ref), SampleNoise(seeds, dtype=F64))
        assert torch.isfinite(a.samples).all() and a.nfe == sampler.nfe
        assert (a.samples - b.samples).abs().max() < 1e-7, sampler


def test_diag_ou_numeric_matches_closed_form():
    p = DiagOU()
    assert p.n_blocks == 3 and p.state_shape == (3,)
    for t, s in [(0.7, 0.2), (0.1, 0.9), (1.0, 0.0)]:
        psi_ref, _ = p.closed(tt(t), tt(s))
        assert ((p.psi(tt(t), tt(s))[:, 0, 0] - psi_ref).abs() / psi_ref).max() < 1e-9
    for t in [0.0, 0.01, 0.5, 1.0]:
        _, sig_ref = p.closed(tt(t), tt(0.0))
        assert (p.Sigma(tt(t))[:, 0, 0] - sig_ref).abs().max() < 1e-10
        assert (p.R(tt(t))[:, 0, 0] - sig_ref.sqrt()).abs().max() < 1e-10
    # the dense state matrix is diagonal with the per-element entries
    D = p.layout.dense(p.psi(tt(0.5), tt(0.0)))
    assert torch.allclose(D, torch.diag(p.closed(tt(0.5), tt(0.0))[0]), atol=1e-10)


def test_user_process_psi_with_fast_decay():
    p = DiagOU(theta=(40.0,), s0=1e-3)
    for t, s in [(1.0, 0.9), (0.7, 0.2)]:
        ref, _ = p.closed(tt(t), tt(s))
        got = p.psi(tt(t), tt(s))[:, 0, 0]
        # (a product Phi(t) Phi(s)^{-1} of one global solve got -0.0149 for 4.1e-4 here)
        assert ((got - ref).abs() - 1e-6 * ref).max() < 1e-13


@pytest.mark.parametrize("order", [1, 2, 3])
def test_diag_ou_point_mass_landing(order):
    p = DiagOU()
    x0 = tt([0.4, -1.2, 2.0])
    eps = PointMass(x0).eps_fn(p)
    seeds = [5, 6]
    T, tmin = tt(1.0), tt(1e-3)
    uT = p.prior_sample(SampleNoise(seeds, dtype=F64).randn(p.state_shape)) + 0.3
    psiT, _ = p.closed(T, tt(0.0))
    psim, sigm = p.closed(tmin, tt(0.0))
    _, sigT = p.closed(T, tt(0.0))
    eps_T = (uT - psiT * x0) / sigT.sqrt()
    target = psim * x0 + sigm.sqrt() * eps_T
    for nfe in [1, 3, 10]:
        r = GDDIM(nfe, q=order - 1, denoise="none").sample(p, eps, SampleNoise(seeds, dtype=F64), u_T=uT)
        # target from closed forms; the package solves R and Psi numerically at rtol 1e-11
        assert (r.state - target).abs().max() < 5e-9, nfe
        r = GDDIM(nfe + 1, q=order - 1, denoise="tweedie").sample(p, eps, SampleNoise(seeds, dtype=F64), u_T=uT)
        assert (r.samples - x0).abs().max() < 1e-9, nfe


def test_user_process_singular_sigma0_is_a_clear_error():
    class Singular(DiagOU):
        def Sigma0(self):
            return torch.zeros(3, 1, 1, dtype=F64)

    p = Singular()
    with pytest.raises(ValueError, match="positive definite"):
        p.R(tt(0.5))
    # Psi depends on F only, so it needs no Sigma0
    assert torch.isfinite(p.psi(tt(0.5), tt(0.1))).all()


def test_user_process_must_implement_definition():
    p = LinearSDE(BlockLayout((2,)), 1.0)
    with pytest.raises(NotImplementedError):
        p.F(tt(0.1))


# --------------------------------------------------------------------------- perturb, prior, conversions
def _apply_dense(p, A, u):
    return (u.reshape(u.shape[0], -1) @ p.layout.dense(A).T).reshape(u.shape)


@pytest.mark.parametrize("idx", range(7))
@pytest.mark.parametrize("kind", ["R", "L"])
def test_perturb_is_mean_plus_K_noise(idx, kind):
    p = all_processes()[idx]
    g = torch.Generator().manual_seed(idx)
    B = 4
    x0 = torch.randn(B, *p.data_shape, generator=g, dtype=F64)
    z = torch.randn(B, *p.state_shape, generator=g, dtype=F64)
    t = tt([0.01, 0.3, 0.6, 1.0])
    u = p.perturb(x0, t, z, kind)
    for k in range(B):
        m = _apply_dense(p, p.psi(t[k], tt(0.0)), p.layout.lift(x0[k : k + 1]))
        ref = m + _apply_dense(p, p.K(t[k], kind), z[k : k + 1])
        assert (u[k : k + 1] - ref).abs().max() < 1e-12


@pytest.mark.parametrize("kind", ["R", "L"])
def test_perturb_empirical_covariance(kind):
    p = CLD((1,))
    N = 40000
    g = torch.Generator().manual_seed(0)
    x0 = tt([[0.7]]).expand(N, 1)
    z = torch.randn(N, 2, generator=g, dtype=F64)
    t = tt(0.15)
    u = p.perturb(x0, t.expand(N), z, kind)
    mean_ref = p.psi(t, tt(0.0))[0] @ tt([0.7, 0.0])
    S = p.Sigma(t)[0]
    assert (u.mean(0) - mean_ref).abs().max() < 4 * S.diagonal().sqrt().max() / math.sqrt(N)
    cov = torch.cov(u.T)
    assert (cov - S).abs().max() < 0.03 * S.abs().max()


def test_prior_sample_covariance_and_image_state():
    p = BDM((1, 4, 4))
    N = 20000
    z = torch.randn(N, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    u = p.prior_sample(z)
    sT = p.Sigma(tt(1.0))[0, 0, 0].item()
    assert abs(u.var().item() - sT) < 0.02 * sT
    c = CLD((1,))
    z = torch.randn(N, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    cov = torch.cov(c.prior_sample(z).T)
    assert (cov - c.Sigma(tt(1.0))[0]).abs().max() < 0.03


@pytest.mark.parametrize("idx", range(7))
def test_eps_score_conversions(idx):
    p = all_processes()[idx]
    g = torch.Generator().manual_seed(10 + idx)
    e = torch.randn(3, *p.state_shape, generator=g, dtype=F64)
    t = tt(0.37)
    for kind in ["R", "L"]:
        s = p.eps_to_score(e, t, kind)
        ref = -_apply_dense(p, torch.linalg.inv(p.K(t, kind)).transpose(-1, -2), e)
        assert (s - ref).abs().max() < 1e-12 * max(1.0, ref.abs().max().item())
        assert (p.score_to_eps(s, t, kind) - e).abs().max() < 1e-12
    eL = p.eps_R_to_L(e, t)
    assert (p.eps_L_to_R(eL, t) - e).abs().max() < 1e-12
    # both parameterisations describe the same score
    assert (p.eps_to_score(eL, t, "L") - p.eps_to_score(e, t, "R")).abs().max() < 1e-10
    # the conversion is orthogonal (norm preserving)
    assert (eL.flatten(1).norm(dim=1) - e.flatten(1).norm(dim=1)).abs().max() < 1e-12


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("make, match", [
    (lambda: BDM((2,)), "image"),
    (lambda: BDM((1, 4)), "image"),
    (lambda: VPSDE((2,), schedule="nope"), "unknown schedule"),
    (lambda: BDM((1, 4, 4), schedule="nope"), "unknown schedule"),
    (lambda: VPSDE((2,), beta_min=-0.1), "beta_min"),
    (lambda: VPSDE((2,), beta_min=5.0, beta_max=1.0), "beta_min"),
    (lambda: VPSDE((2,), T=-1.0), r"T must lie in \(0"),
    (lambda: BDM((1, 4, 4), sigma_blur_max=-1.0), "sigma_blur_max"),
    (lambda: BDM((1, 4, 4), min_scale=0.0), "min_scale"),
    (lambda: CLD((2,), beta=-1.0), "beta"),
    (lambda: CLD((2,), beta=1.0, beta_slope=-2.0), "positive"),
    (lambda: CLD((2,), m_inv=-4.0), "m_inv"),
    (lambda: CLD((2,), gamma=-0.1), "gamma"),
    (lambda: CLD((2,), eps_num=-1e-6), "eps_num"),
    (lambda: CLD((2,), Gamma=-1.0), "Gamma"),
    (lambda: VPSDE((0,)), "positive sizes"),
    (lambda: BlockLayout((2,), 1, "bogus"), "blocks"),
    (lambda: BlockLayout((2,), 1, "shared", "fourier"), "basis"),
    (lambda: BlockLayout((2,), 2, "shared", data_index=2), "data_index"),
])
def test_construction_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_vp_cosine_schedule_constructs():
    p = VPSDE((2,), schedule="cosine")
    assert p.Sigma0().item() > 0


def test_state_shape_errors():
    p = CLD((2,))
    x0 = torch.zeros(3, 2, dtype=F64)
    t = tt([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="noise has shape"):
        p.perturb(x0, t, torch.zeros(3, 2, dtype=F64))
    with pytest.raises(ValueError, match="data has shape"):
        p.perturb(torch.zeros(3, 4, dtype=F64), t, torch.zeros(3, 4, dtype=F64))
    with pytest.raises(ValueError, match="z has shape"):
        p.prior_sample(torch.zeros(3, 2, dtype=F64))
    with pytest.raises(ValueError, match="must lie in"):
        p.perturb(x0, tt([0.1, 0.2, 1.5]), torch.zeros(3, 4, dtype=F64))
    with pytest.raises(ValueError, match="must lie in"):
        p.perturb(x0, tt([-0.1, 0.2, 0.5]), torch.zeros(3, 4, dtype=F64))
    b = BDM((1, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        b.prior_sample(torch.zeros(2, 1, 4, 5, dtype=F64))
    with pytest.raises(ValueError, match="outside the solved span"):
        UserCLD((2,)).R(tt(1.5))


# ---------------------------------------------------------------------------------------- bad definitions
@pytest.mark.parametrize("make,match", [
    (lambda: CLD((2,), beta=float("nan")), "CLD beta must be finite"),
    (lambda: CLD((2,), Gamma=float("inf")), "CLD Gamma must be finite"),
    (lambda: CLD((2,), gamma=-1.0), r"CLD gamma must lie in \[0"),
    (lambda: BDM((1, 4, 4), sigma_blur_max=float("nan")), "BDM sigma_blur_max must be finite"),
    (lambda: BDM((1, 4, 4), min_scale=2.0), "BDM min_scale must lie in"),
    (lambda: VPSDE((2,), beta_max=float("inf")), "LinearSchedule beta_max must be finite"),
    (lambda: VPSDE((2,), T=float("nan")), "VPSDE T must be finite"),
])
def test_nan_inf_and_out_of_range_parameters_are_refused_where_set(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_user_process_with_nan_or_non_psd_diffusion_fails_fast_before_solving():
    """A NaN in a user's GGT used to make the float64 solve loop forever; it is caught before any solve."""
    nan = UserCLD((2,))
    nan.GG0 = tt([[0.0, 0.0], [0.0, float("nan")]])
    with pytest.raises(ValueError, match="GGT.*NaN or inf"):
        nan.R(tt(0.5))
    neg = UserCLD((2,))
    neg.GG0 = tt([[0.0, 0.0], [0.0, -1.0]])
    with pytest.raises(ValueError, match="positive semi-definite"):
        neg.R(tt(0.5))
    asym = UserCLD((2,))
    asym.GG0 = tt([[0.0, 1.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="symmetric"):
        asym.R(tt(0.5))


def test_float64_solves_are_bounded(monkeypatch):
    """Every solve stops with a message past its evaluation budget instead of running on."""
    from gddim_lightning.sdes import ode

    monkeypatch.setattr(ode, "MAX_RHS_EVALS", 50)
    with pytest.raises(RuntimeError, match="did not finish within 50 evaluations"):
        UserCLD((2,)).R(tt(0.5))
