#!/usr/bin/env python
"""Acceleration factor of gDDIM with exact scores, measured with error metrics that have no floor.

Every sampler is driven by the exact eps of a Gaussian mixture, and every error measure here has
expectation exactly 0 for exact sampling, so it shrinks with the sampler's own error, not with the
sample count (issue #11):

* path error (deterministic samplers): RMS per dimension, at ``t_min``, between the sampler's state
  and the probability-flow ODE solution from the same initial state; the reference is computed twice,
  by scipy DOP853 (rtol 1e-9) and by gDDIM order 3 at 2000 steps, both in float64;
* unbiased MMD^2 (Gretton et al. 2012), Gaussian kernel, median-heuristic bandwidth on exact samples;
* per-mode statistics from the soft posterior mode assignments r_k(x) = p(k | x) of the true mixture:
  total variation between E[r(x)] and the weights (cross-fitted, see `cross_fitted_tv`), and the
  squared errors of the per-mode means and variances (unbiased U-statistics).

Each comes with a standard error (over independent groups of samples, or over samples for the path
error). For every process and baseline the script reports the smallest NFE at which the baseline is at
least as accurate as deterministic gDDIM (its defaults, order 2) at NFE 20, by each metric.

Run ``python benchmarks/acceleration.py --help`` and see ``benchmarks/README.md``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import datetime as _dt
import importlib.metadata
import json
import math
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampler_accuracy import BatchNoise, SharedCovarianceEps, _json_safe  # noqa: E402

from gddim_lightning.oracles import GaussianMixture  # noqa: E402
from gddim_lightning.samplers import (  # noqa: E402
    GDDIM, RK45, SSCS, Ancestral, EulerMaruyama, Heun, LogSNRGrid, ProbabilityFlowEuler, QuadraticGrid, Sampler,
    UniformGrid,
)
from gddim_lightning.samplers.base import CountingEps  # noqa: E402
from gddim_lightning.sdes import BDM, CLD, VPSDE, LinearSDE  # noqa: E402
from gddim_lightning.sdes.base import as_time  # noqa: E402
from gddim_lightning.sdes.dct import idct2  # noqa: E402

RESULT_NAME = "acceleration"
TARGET_NFE = 20
MAX_NFE = 2000
SIGMAS = 2.0  # "at least as accurate": within 2 standard errors, or better
METRICS = ("path", "mmd2", "tv", "mean_err2", "var_err2")
METRIC_LABELS = {
    "path": "path error (RMS/dim at t_min)",
    "mmd2": "MMD^2 (unbiased)",
    "tv": "mode-weight TV (cross-fitted)",
    "mean_err2": "per-mode mean error^2 (per dim)",
    "var_err2": "per-mode rel. variance error^2",
}
BDM_RHO_START = 80.0  # official gDDIM BDM sampler: start where sigma/alpha = 80


# ------------------------------------------------------------------------------------------ data
def image_mixture(data_shape: tuple[int, ...], k: int = 8, std: float = 0.5, separation: float = 4.0,
                  n_freq: int = 4, seed: int = 0) -> GaussianMixture:
    """``k`` Gaussians with one isotropic std and smooth random means (unequal weights).

    Each mean is a random pattern on the lowest ``n_freq x n_freq`` DCT frequencies (the same pattern,
    up to resolution, at every image size), scaled so that the expected distance between two means is
    ``separation * std``: the modes overlap (at 4 std apart about 2% of a mode's mass lies nearer
    another one's mean) so that a sampler's error shows in the mode weights as well as in the
    within-mode moments.
    """
    C, H, W = data_shape
    g = torch.Generator().manual_seed(seed)
    w = 0.5 + torch.rand(k, generator=g, dtype=torch.float64)
    coef = torch.zeros((k, C, H, W), dtype=torch.float64)
    coef[..., :n_freq, :n_freq] = torch.randn((k, C, n_freq, n_freq), generator=g, dtype=torch.float64)
    pat = idct2(coef)
    flat = pat.reshape(k, -1)
    mean_d2 = torch.pdist(flat).pow(2).mean()  # scale so that the mean pairwise distance^2 is (sep * std)^2
    return GaussianMixture(w, pat * (separation * std / mean_d2.sqrt()), std)


# ----------------------------------------------------------------------------------------- oracle
class BlockMixtureEps:
    """Exact ``eps(u, t)`` of a `GaussianMixture` with one isotropic covariance ``s^2 I``, computed in the
    process's block basis.

    Every process here is block-diagonal in an orthogonal basis (VP: one scalar block, CLD: one 2x2 block
    per coordinate, BDM: one scalar per DCT frequency), and ``s^2 I`` is diagonal in any orthonormal
    basis, so the marginal covariance ``C_t = Sigma_t + Psi(t,0) lift(s^2 I) Psi(t,0)^T`` is block-diagonal
    too: responsibilities and ``eps = K_t^T C_t^{-1} (u - sum_k r_k m_k)`` cost O(B D K) per call with no
    dense ``D x D`` matrix (32x32 CLD has D = 2048). Checked against the package oracle (8x8) and
    `SharedCovarianceEps` (32x32) at start-up; the agreement is stored in the results.
    """

    def __init__(self, mixture: GaussianMixture, process: LinearSDE, kind: str = "R", cache: int = 64) -> None:
        s = mixture.stds.reshape(-1)
        if not torch.allclose(s, s[:1].expand_as(s)):
            raise ValueError("BlockMixtureEps needs one isotropic std shared by every component")
        self.process, self.kind, self.cache = process, kind, cache
        lay = process.layout
        self.var = float(s[0]) ** 2
        self.mu = lay.to_blocks(lay.lift(mixture.means))  # [K, b, *data_shape] in the basis
        self.logw = torch.log(mixture.weights)
        self._c: dict[float, tuple] = {}

    def _at(self, t: float) -> tuple:
        c = self._c.get(t)
        if c is None:
            p, lay = self.process, self.process.layout
            tt = torch.tensor(t, dtype=torch.float64)
            psi = p.psi(tt, torch.zeros_like(tt))  # [n, b, b]
            e = torch.zeros(lay.block_size, lay.block_size, dtype=torch.float64)
            e[lay.data_index, lay.data_index] = self.var
            cinv = torch.linalg.inv(p.Sigma(tt) + psi @ e @ psi.transpose(-1, -2))
            m = lay.apply(lay.view(psi), self.mu)  # component means at t
            cm = lay.apply(lay.view(cinv), m)
            bias = self.logw - 0.5 * (cm * m).flatten(1).sum(1)
            kc = lay.view(p.K(tt, self.kind).transpose(-1, -2) @ cinv)
            if len(self._c) >= self.cache:
                self._c.clear()
            c = self._c[t] = (m.flatten(1), cm.flatten(1), bias, kc)
        return c

    def __call__(self, u: Tensor, t: Tensor) -> Tensor:
        tt = as_time(t).reshape(-1)
        if tt.numel() > 1 and not bool((tt == tt[0]).all()):
            return torch.cat([self(u[i:i + 1], tt[i:i + 1]) for i in range(u.shape[0])])
        lay = self.process.layout
        m, cm, bias, kc = self._at(float(tt[0]))
        y = lay.to_blocks(u.to(torch.float64))
        yf = y.flatten(1)
        r = torch.softmax(yf @ cm.T + bias, dim=-1)
        out = lay.from_blocks(lay.apply(kc, (yf - r @ m).reshape(y.shape)))
        return out.to(u.dtype)


def oracle_check(fast: Callable, ref: Callable, process: LinearSDE, seed: int = 1234) -> float:
    """Max relative difference of two eps functions on random states at several times."""
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for t in (1e-3, 1e-2, 0.2, 0.7, 1.0):
        u = 1.5 * torch.randn((16, *process.state_shape), generator=g, dtype=torch.float64)
        tt = torch.full((16,), t, dtype=torch.float64)
        a, b = ref(u, tt), fast(u, tt)
        worst = max(worst, float((a - b).abs().max() / a.abs().max()))
    return worst


class FastNoise(BatchNoise):
    """`BatchNoise` drawn by numpy's ziggurat (PCG64): ~5x faster than ``torch.randn`` on CPU."""

    def __init__(self, n: int, seed: int) -> None:
        super().__init__(n, seed)
        self.rng = np.random.default_rng(int(seed))

    def randn(self, shape) -> Tensor:
        return torch.from_numpy(self.rng.standard_normal((self.n, *shape)))


# ---------------------------------------------------------------------------------------- metrics
def groups_of(n: int, n_groups: int) -> Tensor:
    """Group index of each of ``n`` i.i.d. samples (interleaved, sizes differ by at most one)."""
    return torch.arange(n) % n_groups


def _jackknife(stat: Callable[[Tensor], float], n_groups: int) -> tuple[float, float]:
    """``stat(keep)`` over all groups and its delete-one-group jackknife standard error; ``keep`` is a
    boolean mask over groups."""
    full = stat(torch.ones(n_groups, dtype=torch.bool))
    loo = []
    for r in range(n_groups):
        keep = torch.ones(n_groups, dtype=torch.bool)
        keep[r] = False
        loo.append(stat(keep))
    loo_t = torch.tensor(loo, dtype=torch.float64)
    se = math.sqrt((n_groups - 1) / n_groups * float(((loo_t - loo_t.mean()) ** 2).sum()))
    return full, se


def _pair_u(v: Tensor, g: Tensor, n_groups: int) -> tuple[float, float]:
    """Unbiased estimate of ``||E v||^2`` (a U-statistic over all pairs of distinct samples) from
    per-sample vectors ``v [N, P]``, with its jackknife SE over groups."""
    s = torch.zeros((n_groups, v.shape[1]), dtype=torch.float64).index_add_(0, g, v)  # per-group sums
    q = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, g, (v * v).sum(1))  # per-group sum ||v_i||^2
    cnt = torch.bincount(g, minlength=n_groups).to(torch.float64)

    def stat(keep: Tensor) -> float:
        n = cnt[keep].sum()
        tot = s[keep].sum(0)
        return float(((tot * tot).sum() - q[keep].sum()) / (n * (n - 1)))

    return _jackknife(stat, n_groups)


def responsibilities(x: Tensor, mixture: GaussianMixture) -> Tensor:
    """Posterior mode probabilities ``r_k(x) = p(k | x)`` under the true mixture (shared isotropic std)."""
    xf = x.reshape(x.shape[0], -1).to(torch.float64)
    mu = mixture.means.reshape(mixture.means.shape[0], -1)
    var = float(mixture.stds.reshape(-1)[0]) ** 2
    logits = (xf @ mu.T - 0.5 * (mu * mu).sum(1)) / var + torch.log(mixture.weights)
    return torch.softmax(logits, dim=-1)


def cross_fitted_tv(a: Tensor, g: Tensor, n_groups: int) -> tuple[float, float]:
    """Total variation ``1/2 sum_k |E a_k|`` from per-sample ``a_k = r_k(x) - w_k`` with no floor.

    The plug-in ``1/2 sum_k |mean a_k|`` is biased upwards by the noise of the mean (a floor of order
    ``sqrt(K/N)``). Cross-fitting removes it: the sign of each ``E a_k`` is estimated on all groups but
    one and applied to the held-out group's mean, ``T_r = 1/2 sum_k sign(abar_k^{(-r)}) abar_k^{(r)}``.
    Its expectation is exactly 0 when ``E a = 0`` (exact sampling), equals the TV once each ``E a_k`` is
    resolved, and never exceeds it. Estimate ``mean_r T_r``, SE ``sd(T_r)/sqrt(R)``.
    """
    s = torch.zeros((n_groups, a.shape[1]), dtype=torch.float64).index_add_(0, g, a)
    cnt = torch.bincount(g, minlength=n_groups).to(torch.float64)
    tr = []
    for r in range(n_groups):
        rest = torch.cat([s[:r], s[r + 1:]]).sum(0) / (cnt.sum() - cnt[r])
        tr.append(0.5 * float((torch.sign(rest) * s[r] / cnt[r]).sum()))
    t = torch.tensor(tr, dtype=torch.float64)
    return float(t.mean()), float(t.std() / math.sqrt(n_groups))


def mode_stats(x: Tensor, mixture: GaussianMixture, n_groups: int) -> dict[str, tuple[float, float]]:
    """Per-mode statistics of samples ``x``, each ``(estimate, SE)``, all 0 in expectation when ``x`` is
    exact. With soft assignments ``r_k(x)`` the exact identities ``E r_k = w_k``,
    ``E[r_k x] = w_k mu_k`` and ``E[r_k (x - mu_k)^2] = w_k s^2`` (per coordinate) hold for any overlap:

    * ``tv``: ``1/2 sum_k |E r_k - w_k|`` (`cross_fitted_tv`);
    * ``mean_err2``: ``sum_k w_k |E_k x - mu_k|^2 / D`` with ``E_k x = E[r_k x]/w_k``, the weighted squared
      error of the per-mode means per dimension (unbiased U-statistic);
    * ``var_err2``: ``sum_k w_k (E_k |x - mu_k|^2 / (D s^2) - 1)^2``, the weighted squared relative error
      of the per-mode variances (unbiased U-statistic).
    """
    n = x.shape[0]
    xf = x.reshape(n, -1).to(torch.float64)
    if not torch.isfinite(xf).all() or xf.abs().max() > 1e100:
        return {k: (math.inf, math.inf) for k in ("tv", "mean_err2", "var_err2")}
    w = mixture.weights
    mu = mixture.means.reshape(w.shape[0], -1)
    D = xf.shape[1]
    var = float(mixture.stds.reshape(-1)[0]) ** 2
    r = responsibilities(x, mixture)  # [N, K]
    g = groups_of(n, n_groups)
    out = {"tv": cross_fitted_tv(r - w, g, n_groups)}
    # sqrt(w_k) (E[r_k (x - mu_k)]/w_k) / sqrt(D): its squared norm summed over k is mean_err2
    b = (r / w.sqrt()).unsqueeze(-1) * (xf.unsqueeze(1) - mu.unsqueeze(0)) / math.sqrt(D)  # [N, K, D]
    out["mean_err2"] = _pair_u(b.reshape(n, -1), g, n_groups)
    d2 = ((xf.unsqueeze(1) - mu.unsqueeze(0)) ** 2).sum(-1) / (D * var)  # [N, K]
    c = r * (d2 - 1.0) / w.sqrt()
    out["var_err2"] = _pair_u(c, g, n_groups)
    return out


def median_bandwidth(y: Tensor, max_points: int = 2000) -> float:
    """Median heuristic: the median pairwise distance between (up to ``max_points``) exact samples."""
    yf = y.reshape(y.shape[0], -1)[:max_points].to(torch.float64)
    d2 = torch.cdist(yf, yf).pow(2)
    iu = torch.triu_indices(yf.shape[0], yf.shape[0], 1)
    return float(d2[iu[0], iu[1]].median().sqrt())


def _block_kernel_sums(x: Tensor, y: Tensor, gx: Tensor, gy: Tensor, n_groups: int, h: float,
                       same: bool) -> Tensor:
    """``S[r, s] = sum_{i in r, j in s} k(x_i, y_j)`` (diagonal pairs i = j dropped when ``same``)."""
    d2 = ((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T).clamp_min_(0)
    k = torch.exp(d2.mul_(-0.5 / h**2))
    if same:
        k.fill_diagonal_(0.0)
    ox = torch.nn.functional.one_hot(gx, n_groups).to(torch.float64)
    oy = torch.nn.functional.one_hot(gy, n_groups).to(torch.float64)
    return ox.T @ k @ oy


class MMD:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) against a fixed set of exact samples, Gaussian kernel
    ``exp(-|x - y|^2 / (2 h^2))`` with ``h`` the median heuristic on the exact samples. Samples are split
    into ``n_groups`` independent groups (sampler group r paired with exact group r); the estimate uses
    all pairs and its SE is the delete-one-group jackknife."""

    def __init__(self, y: Tensor, n_groups: int) -> None:
        self.y = y.reshape(y.shape[0], -1).to(torch.float64)
        self.n_groups = n_groups
        self.h = median_bandwidth(self.y)
        self.gy = groups_of(self.y.shape[0], n_groups)
        self.syy = _block_kernel_sums(self.y, self.y, self.gy, self.gy, n_groups, self.h, True)
        self.cy = torch.bincount(self.gy, minlength=n_groups).to(torch.float64)

    def __call__(self, x: Tensor) -> tuple[float, float]:
        xf = x.reshape(x.shape[0], -1).to(torch.float64)
        if not torch.isfinite(xf).all() or xf.abs().max() > 1e100:
            return math.inf, math.inf
        R = self.n_groups
        gx = groups_of(xf.shape[0], R)
        sxx = _block_kernel_sums(xf, xf, gx, gx, R, self.h, True)
        sxy = _block_kernel_sums(xf, self.y, gx, self.gy, R, self.h, False)
        cx = torch.bincount(gx, minlength=R).to(torch.float64)

        def stat(keep: Tensor) -> float:
            nx, ny = cx[keep].sum(), self.cy[keep].sum()
            kk = keep.to(torch.float64)
            txx = kk @ sxx @ kk / (nx * (nx - 1))
            tyy = kk @ self.syy @ kk / (ny * (ny - 1))
            txy = kk @ sxy @ kk / (nx * ny)
            return float(txx + tyy - 2 * txy)

        return _jackknife(stat, R)


def path_error(x: Tensor, ref: Tensor) -> tuple[float, float]:
    """RMS per dimension between states ``x`` and reference states ``ref`` (same initial noise), with the
    SE of the RMS over samples (delta method on the mean squared error)."""
    e = ((x.to(torch.float64) - ref.to(torch.float64)) ** 2).reshape(x.shape[0], -1).mean(1)
    if not torch.isfinite(e).all():
        return math.inf, math.inf
    mse, se_mse = float(e.mean()), float(e.std() / math.sqrt(e.numel()))
    rms = math.sqrt(mse)
    return rms, (se_mse / (2 * rms) if rms > 0 else 0.0)
