"""Tests of the exact-score oracles (``gddim_lightning.oracles``) against an independent dense construction:
the marginal mixture is rebuilt here with ``torch.distributions.MultivariateNormal`` from independently
assembled dense ``Psi`` / ``Sigma`` and its log-density is differentiated with autograd."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import torch
from torch.distributions import MultivariateNormal

from gddim_lightning.oracles import Gaussian, GaussianMixture, MixtureEps, PointMass, ring_mixture
from gddim_lightning.sdes import BDM, CLD, VPSDE
from helpers import F64, tt


def dense_psi_sigma(p, t):
    """Dense state-space ``Psi(t, 0)`` and ``Sigma_t`` assembled without ``BlockLayout``."""
    t = tt(t)
    if isinstance(p, VPSDE):
        D = math.prod(p.data_shape)
        # Psi(t, 0) = a_t / a_0 (a_0 < 1 for the cosine schedules), Sigma_t = 1 - a_t^2 (includes Sigma_0)
        return p.alpha(t) / p.alpha(tt(0.0)) * torch.eye(D, dtype=F64), p.sigma(t) ** 2 * torch.eye(D, dtype=F64)
    if isinstance(p, CLD):
        # state = (x_1..x_d, v_1..v_d): the 2x2 block acts on (x_i, v_i), i.e. kron(block, I_d)
        d = math.prod(p.data_shape)
        B = p.beta0 * t + 0.5 * p.beta_slope * t**2
        F0 = tt([[0.0, p.m_inv], [-1.0, -p.Gamma * p.m_inv]])
        Psi2 = torch.linalg.matrix_exp(B * F0)
        Sig2 = p.Sigma(t)[0]
        eye = torch.eye(d, dtype=F64)
        return torch.kron(Psi2, eye), torch.kron(Sig2, eye)
    if isinstance(p, BDM):
        C, H, W = p.data_shape
        DH = torch.from_numpy(scipy.fft.dct(np.eye(H), norm="ortho", axis=0))
        DW = torch.from_numpy(scipy.fft.dct(np.eye(W), norm="ortho", axis=0))
        Kf = torch.kron(DH, DW)  # row-major vec of D_H X D_W^T
        diag = p.psi(t, tt(0.0))[:, 0, 0]  # one scale per frequency (validated in test_sdes)
        Pc = Kf.T @ torch.diag(diag) @ Kf
        Psi = torch.block_diag(*[Pc] * C)
        return Psi, p.Sigma(t)[0, 0, 0] * torch.eye(C * H * W, dtype=F64)
    raise TypeError(p)


def lift_dense(p, v):
    """Data vector -> state vector (CLD: zeros in v)."""
    v = v.reshape(-1)
    if isinstance(p, CLD):
        return torch.cat([v, torch.zeros_like(v)])
    return v


def log_density_factory(p, mix, t):
    Psi, Sig = dense_psi_sigma(p, t)
    comps = []
    for k in range(mix.means.shape[0]):
        m = Psi @ lift_dense(p, mix.means[k])
        S0 = torch.diag(lift_dense(p, mix.stds[k] ** 2))
        comps.append(MultivariateNormal(m, covariance_matrix=Sig + Psi @ S0 @ Psi.T))
    logw = torch.log(mix.weights)

    def logp(u):  # u [B, D]
        return torch.logsumexp(torch.stack([logw[k] + c.log_prob(u) for k, c in enumerate(comps)]), 0)

    return logp


CASES = {
    "vp": (lambda: VPSDE((2,)), (2,)),
    "vp_cosine": (lambda: VPSDE((3,), schedule="cosine_gddim"), (3,)),
    "cld": (lambda: CLD((2,)), (2,)),
    "cld_noncritical": (lambda: CLD((2,), Gamma=0.5, beta_slope=1.0), (2,)),
    "bdm": (lambda: BDM((1, 3, 3)), (1, 3, 3)),
    "bdm_2ch": (lambda: BDM((2, 2, 3), sigma_blur_max=4.0), (2, 2, 3)),
}


def random_mixture(shape, seed):
    g = torch.Generator().manual_seed(seed)
    K = 3
    means = torch.randn(K, *shape, generator=g, dtype=F64)
    stds = 0.1 + 0.5 * torch.rand(K, *shape, generator=g, dtype=F64)  # anisotropic, per component
    stds[0] = 0.0  # one point mass in the mix
    return GaussianMixture(tt([0.2, 0.5, 0.3]), means, stds)


@pytest.mark.parametrize("case", sorted(CASES))
def test_score_matches_autograd_of_dense_mixture(case):
    make, shape = CASES[case]
    p = make()
    mix = random_mixture(shape, seed=len(case))
    oracle = MixtureEps(mix, p)
    g = torch.Generator().manual_seed(1)
    for t in [0.01, 0.3, 0.9]:
        Psi, Sig = dense_psi_sigma(p, t)
        m0 = torch.stack([Psi @ lift_dense(p, mix.means[k]) for k in range(3)])
        # points near the components (where the responsibilities matter) and far away
        u = m0[torch.arange(6) % 3] + torch.randn(6, m0.shape[1], generator=g, dtype=F64) * torch.tensor(
            [0.05, 0.5, 2.0, 0.05, 0.5, 2.0], dtype=F64)[:, None]
        u = u.requires_grad_(True)
        logp = log_density_factory(p, mix, t)
        (grad,) = torch.autograd.grad(logp(u).sum(), u)
        s = oracle.score(u.detach().reshape(6, *p.state_shape), t).reshape(6, -1)
        assert (s - grad).abs().max() <= 1e-8 * max(1.0, grad.abs().max().item()), (t, (s - grad).abs().max())
        # eps = -R^T score, through the package's process methods
        e = oracle(u.detach().reshape(6, *p.state_shape), tt(t).expand(6))
        assert (e - p.score_to_eps(s.reshape(e.shape), tt(t), "R")).abs().max() < 1e-10


@pytest.mark.parametrize("case", ["cld", "cld_noncritical", "vp", "bdm"])
def test_eps_L_vs_R_related_by_conversion(case):
    make, shape = CASES[case]
    p = make()
    mix = random_mixture(shape, seed=3)
    eR, eL = mix.eps_fn(p, "R"), mix.eps_fn(p, "L")
    g = torch.Generator().manual_seed(2)
    u = torch.randn(5, *p.state_shape, generator=g, dtype=F64)
    for t in [0.05, 0.5, 1.0]:
        tv = tt(t).expand(5)
        a, b = eR(u, tv), eL(u, tv)
        assert (p.eps_R_to_L(a, tt(t)) - b).abs().max() < 1e-10
        assert (p.eps_L_to_R(b, tt(t)) - a).abs().max() < 1e-10
    if case.startswith("cld"):
        assert (eR(u, tt(0.1).expand(5)) - eL(u, tt(0.1).expand(5))).abs().max() > 0.1  # genuinely different
    else:
        assert (eR(u, tt(0.1).expand(5)) - eL(u, tt(0.1).expand(5))).abs().max() < 1e-12


def test_point_mass_and_gaussian_eps_closed_form():
    """eps of a point mass is R_t^{-1} (u - Psi u0); of a Gaussian R_t^T C_t^{-1} (u - m_t)."""
    p = CLD((1,))
    x0 = tt([0.4])
    g = torch.Generator().manual_seed(0)
    u = torch.randn(4, 2, generator=g, dtype=F64)
    for t in [0.02, 0.4, 1.0]:
        Psi, Sig = dense_psi_sigma(p, t)
        R = p.R(tt(t))[0]
        m = Psi @ tt([0.4, 0.0])
        e = PointMass(x0).eps_fn(p)(u, tt(t).expand(4))
        assert (e - (u - m) @ torch.linalg.inv(R).T).abs().max() < 1e-9
        C = Sig + Psi @ torch.diag(tt([0.09, 0.0])) @ Psi.T
        e = Gaussian(x0, 0.3).eps_fn(p)(u, tt(t).expand(4))
        assert (e - (u - m) @ torch.linalg.inv(C) @ R).abs().max() < 1e-9


def test_eps_with_per_sample_times_and_dtype():
    p = VPSDE((2,))
    mix = ring_mixture((2,), k=5, seed=1)
    eps = mix.eps_fn(p)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(4, 2, generator=g, dtype=F64)
    t = tt([0.1, 0.5, 0.1, 0.9])
    out = eps(u, t)
    for k in range(4):
        assert (out[k] - eps(u[k : k + 1], t[k : k + 1])[0]).abs().max() < 1e-14
    out32 = eps(u.float(), t.float())
    assert out32.dtype == torch.float32
    # float32 times are rounded to float32 before the float64 evaluation
    assert (out32.double() - eps(u, t.float().double())).abs().max() < 1e-5


def test_mixture_sample_statistics():
    mix = ring_mixture((2,), k=6, radius=3.0, std=0.2, seed=7)
    n = 120_000
    x = mix.sample(n, torch.Generator().manual_seed(0))
    assert x.shape == (n, 2) and x.dtype == F64
    d = torch.cdist(x, mix.means)
    k = d.argmin(1)  # components are well separated (distance 3 vs std 0.2)
    freq = torch.bincount(k, minlength=6).double() / n
    w = mix.weights
    assert ((freq - w).abs() < 5 * (w * (1 - w) / n).sqrt()).all(), (freq, w)
    for j in range(6):
        xj = x[k == j]
        sd = 0.2 / math.sqrt(len(xj))
        assert ((xj.mean(0) - mix.means[j]).abs() < 5 * sd).all()
        assert ((xj.std(0) - 0.2).abs() < 0.02).all()
    assert (x.mean(0) - (w[:, None] * mix.means).sum(0)).abs().max() < 0.05
    # reproducible with the same generator
    assert torch.equal(mix.sample(10, torch.Generator().manual_seed(3)), mix.sample(10, torch.Generator().manual_seed(3)))


def test_point_mass_and_gaussian_samples():
    pm = PointMass(tt([[1.0, 2.0]]))
    assert torch.equal(pm.sample(5), tt([[1.0, 2.0]]).expand(5, 1, 2))
    gs = Gaussian(tt([1.0, -1.0]), tt([0.5, 2.0]))
    x = gs.sample(100_000, torch.Generator().manual_seed(0))
    assert (x.mean(0) - tt([1.0, -1.0])).abs().max() < 0.03
    assert (x.std(0) - tt([0.5, 2.0])).abs().max() < 0.02


def test_ring_mixture_shapes():
    m = ring_mixture((2,), k=8, radius=2.0)
    assert torch.allclose(m.means.norm(dim=1), torch.full((8,), 2.0, dtype=F64))
    assert abs(m.weights.sum().item() - 1) < 1e-15 and (m.weights > 0).all()
    img = ring_mixture((1, 4, 4), k=3, seed=2)
    assert img.means.shape == (3, 1, 4, 4) and (img.means.abs() <= 1).all()
    assert torch.equal(ring_mixture((2,), seed=5).weights, ring_mixture((2,), seed=5).weights)


def test_oracle_errors():
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([1.0, -1.0], torch.zeros(2, 2), 0.1)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([1.0], torch.zeros(2, 2), 0.1)
    with pytest.raises(ValueError, match="stds"):
        GaussianMixture([1.0, 1.0], torch.zeros(2, 2), -0.1)
    with pytest.raises(ValueError, match="data_shape"):
        ring_mixture((3,)).eps_fn(VPSDE((2,)))
    with pytest.raises(ValueError, match="dense"):
        ring_mixture((1, 70, 70), k=2).eps_fn(BDM((1, 70, 70)))


def test_eps_cache_is_bounded_by_memory(monkeypatch):
    """Each cached time holds K dense D x D factors: the cache must stay under its byte budget."""
    import gddim_lightning.oracles as oracles

    monkeypatch.setattr(oracles, "_CACHE_BYTES", 200_000)
    p = CLD((1, 4, 4))
    eps = ring_mixture((1, 4, 4)).eps_fn(p)
    u = torch.zeros(2, *p.state_shape, dtype=torch.float64)
    for t in torch.linspace(0.05, 0.95, 40, dtype=torch.float64):
        eps(u, t.expand(2))
    m, chol, _, Kt = next(iter(eps._cache.values()))
    assert len(eps._cache) * 8 * (chol.numel() + Kt.numel() + m.numel()) <= 200_000
