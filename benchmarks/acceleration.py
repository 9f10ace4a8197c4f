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

import argparse
import datetime as _dt
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  first: one BLAS/OpenMP thread unless told otherwise (before numpy and torch)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402
from torch import Tensor  # noqa: E402

from sampler_accuracy import BatchNoise, _json_safe  # noqa: E402

from gddim_lightning.oracles import GaussianMixture  # noqa: E402
from gddim_lightning.samplers import (  # noqa: E402
    GDDIM, RK45, SSCS, Ancestral, EulerMaruyama, Heun, LogSNRGrid, ProbabilityFlowEuler, QuadraticGrid, Sampler,
    UniformGrid,
)
from gddim_lightning.samplers.base import CountingEps  # noqa: E402
from gddim_lightning.sdes import BDM, CLD, VPSDE, LinearSDE  # noqa: E402
from gddim_lightning.sdes.base import as_time  # noqa: E402
from gddim_lightning.sdes.dct import dct2, idct2  # noqa: E402
from gddim_lightning.sdes.layout import BlockLayout  # noqa: E402

RESULT_NAME = "acceleration"
TARGET_NFE = 20
MAX_NFE = 2000
SIGMAS = 2.0  # "at least as accurate": within 2 standard errors, or better
METRICS = ("path", "mmd2", "tv", "mean_err2", "var_err2")
METRIC_LABELS = {
    "path": "path error (x, RMS/dim at t_min)",
    "mmd2": "MMD^2 (unbiased)",
    "tv": "mode-weight TV (cross-fitted)",
    "mean_err2": "per-mode mean error^2 (per dim)",
    "var_err2": "per-mode rel. variance error^2",
}
BDM_RHO_START = 80.0  # official gDDIM BDM sampler: start where sigma/alpha = 80


# ------------------------------------------------------------------------------------------ data
class SpectralMixture:
    """A mixture of Gaussians on images ``[C, H, W]`` whose components share one covariance that is
    diagonal in the orthonormal 2-D DCT basis: ``x = mu_k + idct2(sqrt(S) * z)`` with mode ``k`` of
    weight ``w_k``. An isotropic ``S = s^2`` is the package's `GaussianMixture` with std ``s``.

    Args:
        weights: ``[K]`` positive weights (normalised here).
        means: ``[K, C, H, W]``.
        freq_var: ``S``, variance per DCT frequency, ``[H, W]`` (shared by channels and components).
    """

    def __init__(self, weights: Tensor, means: Tensor, freq_var: Tensor) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = self.weights / self.weights.sum()
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.freq_var = torch.as_tensor(freq_var, dtype=torch.float64).expand(self.means.shape[-2:]).clone()
        self.mean_dct = dct2(self.means)  # [K, C, H, W]

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.means.shape[1:])

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn((n, *self.data_shape), generator=generator, dtype=torch.float64)
        return self.means[k] + idct2(self.freq_var.sqrt() * z)

    def whitened(self, x: Tensor) -> Tensor:
        """``(dct2(x) - dct2(mu_k)) / sqrt(S)`` for every mode: ``[N, K, C*H*W]``."""
        xd = dct2(x.to(torch.float64))
        z = (xd.unsqueeze(1) - self.mean_dct.unsqueeze(0)) / self.freq_var.sqrt()
        return z.reshape(x.shape[0], self.weights.numel(), -1)

    def responsibilities(self, x: Tensor) -> Tensor:
        """Posterior mode probabilities ``r_k(x) = p(k | x)`` ``[N, K]``."""
        xd = dct2(x.to(torch.float64)).reshape(x.shape[0], -1)
        m = (self.mean_dct / self.freq_var).reshape(self.weights.numel(), -1)
        bias = torch.log(self.weights) - 0.5 * (m * self.mean_dct.reshape(m.shape)).sum(1)
        return torch.softmax(xd @ m.T + bias, dim=-1)

    def as_gaussian_mixture(self) -> GaussianMixture:
        """The package's `GaussianMixture` (only for an isotropic ``S``: the oracle cross-check)."""
        s = self.freq_var.reshape(-1)
        if not torch.allclose(s, s[:1].expand_as(s)):
            raise ValueError("only an isotropic covariance is a GaussianMixture")
        return GaussianMixture(self.weights, self.means, float(s[0].sqrt()))


def image_mixture(data_shape: tuple[int, ...], k: int = 8, pixel_std: float = 0.3, separation: float = 4.0,
                  alpha: float = 1.0, n_freq: int = 4, seed: int = 0) -> SpectralMixture:
    """``k`` modes of smooth random images with an image-like within-mode spectrum (unequal weights).

    Within a mode the DCT coefficient of integer frequency ``(i, j)`` has variance proportional to
    ``(1 + i^2 + j^2)^(-alpha)`` (``alpha = 1``: the ``1/f^2`` power spectrum of natural images), scaled to
    a mean pixel variance of ``pixel_std^2``: coarse structure varies a lot, fine detail little, so each
    frequency resolves at its own noise level as in real images. The means are random patterns on the
    lowest ``n_freq x n_freq`` frequencies, scaled so that the RMS Mahalanobis distance between two
    means is ``separation``: the modes overlap (a few percent of a mode's mass is nearer another mean),
    so a sampler's error shows in the mode weights as well as in the within-mode moments.
    """
    C, H, W = data_shape
    g = torch.Generator().manual_seed(seed)
    w = 0.5 + torch.rand(k, generator=g, dtype=torch.float64)
    ii = torch.arange(H, dtype=torch.float64)[:, None]
    jj = torch.arange(W, dtype=torch.float64)[None, :]
    q = (1 + ii**2 + jj**2) ** (-alpha)
    var = q * (pixel_std**2 * H * W / q.sum())  # orthonormal DCT: sum of variances = D * pixel variance / C
    coef = torch.zeros((k, C, H, W), dtype=torch.float64)
    fh, fw = min(n_freq, H), min(n_freq, W)
    coef[..., :fh, :fw] = torch.randn((k, C, fh, fw), generator=g, dtype=torch.float64)
    coef = coef * var.sqrt()  # each pattern frequency in proportion to the within-mode spread there
    maha = torch.pdist((coef / var.sqrt()).reshape(k, -1)).pow(2).mean().sqrt()
    return SpectralMixture(w, idct2(coef * (separation / maha)), var)


# ----------------------------------------------------------------------------------------- oracle
class SpectralMixtureEps:
    """Exact ``eps(u, t)`` of a `SpectralMixture` under a process, computed per DCT frequency.

    Every process here is block-diagonal in the 2-D DCT basis: VP (one scalar shared by all coordinates)
    and CLD (one shared 2x2 block) trivially, BDM by construction (a scalar per frequency). The data
    covariance is diagonal there too, so the marginal ``C_t = Sigma_t + Psi(t,0) lift(S) Psi(t,0)^T`` is
    one ``b x b`` block per frequency: responsibilities and ``eps = K_t^T C_t^{-1} (u - sum_k r_k m_k)``
    cost O(B D K) per call with no dense ``D x D`` matrix (32x32 CLD has D = 2048). Checked at start-up
    against a dense evaluation (`dense_eps`) and, for isotropic data, against the package oracle.
    """

    def __init__(self, mixture: SpectralMixture, process: LinearSDE, kind: str = "R", cache: int = 64) -> None:
        if mixture.data_shape != process.data_shape:
            raise ValueError(f"mixture {mixture.data_shape} vs process {process.data_shape}")
        self.process, self.kind, self.cache = process, kind, cache
        lay = process.layout
        self.b, self.di = lay.block_size, lay.data_index
        # the process's state in the DCT basis, one block per frequency (shared by channels)
        self.lay = BlockLayout(process.data_shape, lay.block_size, "per_frequency", "dct", lay.data_index)
        self.nf = self.lay.n_blocks
        self.mu = self.lay.to_blocks(lay.lift(mixture.means))  # [K, b, C, H, W]
        self.S = mixture.freq_var.reshape(-1)  # [n_freq]
        self.logw = torch.log(mixture.weights)
        self._c: dict[float, tuple] = {}

    def _per_freq(self, A: Tensor) -> Tensor:
        """Process block coefficients ``[n, b, b]`` (n = 1 or one per frequency) -> ``[n_freq, b, b]``."""
        return A.expand(self.nf, self.b, self.b) if A.shape[-3] == 1 else A

    def _at(self, t: float) -> tuple:
        c = self._c.get(t)
        if c is None:
            p, lay = self.process, self.lay
            tt = torch.tensor(t, dtype=torch.float64)
            psi = self._per_freq(p.psi(tt, torch.zeros_like(tt)))
            lifted = torch.zeros((self.nf, self.b, self.b), dtype=torch.float64)
            lifted[:, self.di, self.di] = self.S
            cinv = torch.linalg.inv(self._per_freq(p.Sigma(tt)) + psi @ lifted @ psi.transpose(-1, -2))
            m = lay.apply(lay.view(psi), self.mu)  # component means at t
            cm = lay.apply(lay.view(cinv), m)
            bias = self.logw - 0.5 * (cm * m).flatten(1).sum(1)
            kc = lay.view(self._per_freq(p.K(tt, self.kind)).transpose(-1, -2) @ cinv)
            if len(self._c) >= self.cache:
                self._c.clear()
            c = self._c[t] = (m.flatten(1), cm.flatten(1), bias, kc)
        return c

    def __call__(self, u: Tensor, t: Tensor) -> Tensor:
        tt = as_time(t).reshape(-1)
        if tt.numel() > 1 and not bool((tt == tt[0]).all()):
            return torch.cat([self(u[i:i + 1], tt[i:i + 1]) for i in range(u.shape[0])])
        lay = self.lay
        m, cm, bias, kc = self._at(float(tt[0]))
        y = lay.to_blocks(u.to(torch.float64))
        yf = y.flatten(1)
        r = torch.softmax(yf @ cm.T + bias, dim=-1)
        return lay.from_blocks(lay.apply(kc, (yf - r @ m).reshape(y.shape))).to(u.dtype)


def dense_eps(mixture: SpectralMixture, process: LinearSDE, u: Tensor, t: float, kind: str = "R") -> Tensor:
    """The exact eps by dense linear algebra in state space (``D x D``; checks only)."""
    lay = process.layout
    tt = torch.tensor(t, dtype=torch.float64)
    ds = process.data_shape
    eye = torch.eye(math.prod(ds), dtype=torch.float64).reshape(-1, *ds)
    A = idct2(mixture.freq_var.sqrt() * eye).reshape(eye.shape[0], -1)  # x = z @ A, z standard normal
    lift = lay.lift(eye).reshape(eye.shape[0], -1)  # state = x @ lift
    lift_cov = lift.T @ (A.T @ A) @ lift
    psi = lay.dense(process.psi(tt, torch.zeros_like(tt)))
    C = lay.dense(process.Sigma(tt)) + psi @ lift_cov @ psi.T
    Cinv = torch.linalg.inv(C)
    m = lay.lift(mixture.means).reshape(mixture.weights.numel(), -1) @ psi.T
    x = u.reshape(u.shape[0], -1).to(torch.float64)
    diff = x.unsqueeze(1) - m.unsqueeze(0)  # [B, K, D]
    logp = torch.log(mixture.weights) - 0.5 * torch.einsum("bkd,de,bke->bk", diff, Cinv, diff)
    r = torch.softmax(logp, -1)
    score = -(r.unsqueeze(-1) * (diff @ Cinv)).sum(1)
    return (-(score @ lay.dense(process.K(tt, kind)))).reshape(u.shape)


def oracle_check(fast: Callable, ref: Callable, process: LinearSDE, seed: int = 1234) -> float:
    """Max relative difference of two eps functions on random states at several times."""
    return _common.max_relative_difference(fast, ref, process.state_shape, (1e-3, 1e-2, 0.2, 0.7, 1.0), 16, 1.5, seed)


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


def _pair_u(s: Tensor, q: Tensor, cnt: Tensor) -> tuple[float, float]:
    """Unbiased estimate of ``|E v|^2`` (U-statistic over all pairs of distinct samples) from per-group
    sums ``s [R, P]`` of per-sample vectors ``v``, per-group sums ``q [R]`` of ``|v|^2`` and group sizes;
    with its delete-one-group jackknife SE."""

    def stat(keep: Tensor) -> float:
        n = cnt[keep].sum()
        tot = s[keep].sum(0)
        return float(((tot * tot).sum() - q[keep].sum()) / (n * (n - 1)))

    return _jackknife(stat, s.shape[0])


def split_half_tv(a: Tensor) -> tuple[float, float]:
    """Total variation ``1/2 sum_k |E a_k|`` from per-sample ``a_k = r_k(x) - w_k`` ``[N, K]``, with no floor.

    The plug-in ``1/2 sum_k |mean a_k|`` is biased upwards by the noise of the mean (a floor of order
    ``sqrt(K/N)``). Here the sign of each ``E a_k`` is estimated on one half of the samples and applied to
    the other half's mean, and the other way round: ``T = 1/2 (T_AB + T_BA)`` with
    ``T_AB = 1/2 sum_k sign(abar_k^A) abar_k^B``. Its expectation is exactly 0 when ``E a = 0`` (exact
    sampling), equals the TV once every ``E a_k`` is resolved, and never exceeds it. Given the signs,
    ``T_AB`` is a mean of i.i.d. terms with a plain SE; the SE of ``T`` is the mean of the two (exact for
    fully correlated halves, conservative otherwise).
    """
    half = a.shape[0] // 2
    parts = (a[:half], a[half:2 * half])
    est, ses = [], []
    for sign_part, value_part in (parts, parts[::-1]):
        v = 0.5 * (value_part * torch.sign(sign_part.mean(0))).sum(1)
        est.append(float(v.mean()))
        ses.append(float(v.std() / math.sqrt(v.numel())))
    return 0.5 * (est[0] + est[1]), 0.5 * (ses[0] + ses[1])


def mode_stats(x: Tensor, mixture: SpectralMixture, n_groups: int, chunk: int = 256) -> dict[str, tuple[float, float]]:
    """Per-mode statistics of samples ``x``, each ``(estimate, SE)``, all 0 in expectation when ``x`` is
    exact. With the soft assignments ``r_k(x) = p(k | x)`` of the true mixture, the identities
    ``E r_k = w_k``, ``E[r_k z_k] = 0`` and ``E[r_k z_k^2] = w_k`` hold exactly for any overlap (``z_k``: ``x``
    whitened by mode ``k``, per DCT frequency, `SpectralMixture.whitened`):

    * ``tv``: ``1/2 sum_k |E r_k - w_k|`` (`split_half_tv`);
    * ``mean_err2``: ``sum_k w_k |E_k z_k|^2 / D``, with ``E_k[.] = E[r_k .] / w_k``: the weighted squared error
      of the per-mode means, per dimension and in units of the mode's own std (unbiased U-statistic);
    * ``var_err2``: ``sum_k w_k sum_f (E_k z_kf^2 - 1)^2 / D``: the weighted mean squared relative error of the
      per-mode variances, per frequency (unbiased U-statistic).

    The U-statistics use all pairs of distinct samples; their SE is the delete-one-group jackknife over
    ``n_groups`` interleaved groups.
    """
    n = x.shape[0]
    xf = x.reshape(n, -1).to(torch.float64)
    if not torch.isfinite(xf).all() or xf.abs().max() > 1e100:
        return {k: (math.inf, math.inf) for k in ("tv", "mean_err2", "var_err2")}
    w = mixture.weights
    K, D = w.numel(), xf.shape[1]
    g = groups_of(n, n_groups)
    sums = {k: torch.zeros((n_groups, K * D), dtype=torch.float64) for k in ("m", "v")}
    sq = {k: torch.zeros(n_groups, dtype=torch.float64) for k in ("m", "v")}
    r_all = []
    for i in range(0, n, chunk):
        xc, gc = x[i:i + chunk], g[i:i + chunk]
        r = mixture.responsibilities(xc)  # [c, K]
        z = mixture.whitened(xc)  # [c, K, D]
        c = (r / w.sqrt()).unsqueeze(-1) / math.sqrt(D)
        for key, v in (("m", c * z), ("v", c * (z * z - 1.0))):
            v = v.reshape(v.shape[0], -1)
            sums[key].index_add_(0, gc, v)
            sq[key].index_add_(0, gc, (v * v).sum(1))
        r_all.append(r)
    out = {"tv": split_half_tv(torch.cat(r_all) - w)}
    cnt = torch.bincount(g, minlength=n_groups).to(torch.float64)
    for key, name in (("m", "mean_err2"), ("v", "var_err2")):
        out[name] = _pair_u(sums[key], sq[key], cnt)
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
    ``exp(-|x - y|^2 / (2 h^2))`` with ``h`` the median heuristic on exact samples (an independent set when
    ``bandwidth_samples`` is given: then ``E[MMD^2] = 0`` exactly for exact ``x``). Samples are split
    into ``n_groups`` independent groups (sampler group r paired with exact group r); the estimate uses
    all pairs and its SE is the delete-one-group jackknife."""

    def __init__(self, y: Tensor, n_groups: int, bandwidth_samples: Tensor | None = None) -> None:
        self.y = y.reshape(y.shape[0], -1).to(torch.float64)
        self.n_groups = n_groups
        # the bandwidth from an independent exact set keeps the estimator exactly unbiased
        self.h = median_bandwidth(self.y if bandwidth_samples is None else bandwidth_samples)
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


# ------------------------------------------------------------------------------- reference ODE
def score_drift(oracle: SpectralMixtureEps):
    """Probability-flow drift ``du/dt = F_t u - 1/2 G G^T score(u, t)`` in the DCT coordinates of
    ``oracle.lay``, with the exact score ``-C_t^{-1} (y - sum_k r_k m_k)``: written from the process's
    ``F``, ``G G^T`` and the mixture alone (no R parameterisation, no sampler code), so it is an
    independent route to the same ODE."""
    p, lay = oracle.process, oracle.lay
    cinv_cache: dict[float, Tensor] = {}

    def drift(t: float, y: Tensor) -> Tensor:
        tt = torch.tensor(t, dtype=torch.float64)
        m, cm, bias, _ = oracle._at(t)
        if t not in cinv_cache:
            cinv_cache.clear()
            psi = oracle._per_freq(p.psi(tt, torch.zeros_like(tt)))
            lifted = torch.zeros((oracle.nf, oracle.b, oracle.b), dtype=torch.float64)
            lifted[:, oracle.di, oracle.di] = oracle.S
            C = oracle._per_freq(p.Sigma(tt)) + psi @ lifted @ psi.transpose(-1, -2)
            half_gg_cinv = 0.5 * oracle._per_freq(p.GGT(tt)) @ torch.linalg.inv(C)
            cinv_cache[t] = (lay.view(oracle._per_freq(p.F(tt))), lay.view(half_gg_cinv))
        F, H = cinv_cache[t]
        yf = y.flatten(1)
        r = torch.softmax(yf @ cm.T + bias, dim=-1)
        return lay.apply(F, y) + lay.apply(H, (yf - r @ m).reshape(y.shape))

    return drift


def reference_dop853(oracle: SpectralMixtureEps, u0: Tensor, t0: float, t1: float, rtol: float = 1e-9,
                     atol: float = 1e-11) -> tuple[Tensor, dict]:
    """The probability-flow ODE from ``u0`` at ``t0`` to ``t1`` by scipy DOP853 (float64, whole batch)."""
    lay = oracle.lay
    y0 = lay.to_blocks(u0.to(torch.float64))
    shape = y0.shape
    drift = score_drift(oracle)

    def f(t: float, v: np.ndarray) -> np.ndarray:
        return drift(t, torch.from_numpy(v).reshape(shape)).reshape(-1).numpy()

    res = solve_ivp(f, (t0, t1), y0.reshape(-1).numpy(), method="DOP853", rtol=rtol, atol=atol)
    if not res.success:
        raise RuntimeError(f"DOP853 reference failed: {res.message}")
    out = lay.from_blocks(torch.from_numpy(res.y[:, -1].copy()).reshape(shape))
    return out, {"method": "DOP853", "rtol": rtol, "atol": atol, "nfev": int(res.nfev)}


class NFEBudgetExceeded(RuntimeError):
    pass


class Budget:
    """An eps function that refuses to be called more than ``limit`` times (RK45 past 2000 NFE)."""

    def __init__(self, eps_fn: Callable, limit: int) -> None:
        self.eps_fn, self.limit, self.calls = eps_fn, limit, 0

    def __call__(self, u: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        if self.calls > self.limit:
            raise NFEBudgetExceeded(f"more than {self.limit} NFE")
        return self.eps_fn(u, t)


def run_sampler(sampler: Sampler, process: LinearSDE, eps_fn: Callable, noise, u0: Tensor):
    """`Sampler.sample`, also returning the state at ``t_min`` before the final denoising step (where the
    path error is measured). Returns ``(samples, state at t_min, nfe)``."""
    sampler.check(process)
    counted = CountingEps(eps_fn, process)
    with torch.no_grad():
        u, _ = sampler.run(process, counted, noise, u0.to(noise.dtype), None)
        out = sampler.final_step(process, counted, u)
    return process.layout.project(out), u, counted.nfe


# ----------------------------------------------------------------------------------- matching
def resolved(value: float | None, se: float | None) -> bool:
    """Whether a metric separates from exact sampling (expectation 0): value > 2 SE."""
    return value is not None and se is not None and math.isfinite(value) and value > SIGMAS * se


def at_least_as_accurate(value: float | None, se: float | None, target: float, target_se: float) -> bool:
    """The baseline's error is within 2 standard errors of the target's, or below it."""
    if value is None or se is None or not (math.isfinite(value) and math.isfinite(se)):
        return False
    return value - target <= SIGMAS * math.hypot(se, target_se)


def nfe_to_match(curve: list[dict], target: float | None, target_se: float | None,
                 max_nfe: int | None = None) -> dict:
    """Smallest NFE on a baseline's curve at which it is at least as accurate as the target.

    ``curve``: points ``{"nfe", "value", "se"}`` (value ``None`` or inf: diverged; ``"over_budget"``: an
    adaptive solver that needed more than ``max_nfe``). Returns ``{"text", "nfe", "bracket"}``: text is
    the NFE, ``">2000"`` (never within ``max_nfe``), ``">N"`` (never, but only tried up to N < max_nfe)
    or ``"unresolved"`` (the target's SE cannot separate it from exact sampling; never a match).
    """
    max_nfe = MAX_NFE if max_nfe is None else max_nfe
    if not resolved(target, target_se):
        return {"text": "unresolved", "nfe": None, "bracket": None}
    last_miss, largest, over = None, 0, False
    for p in sorted((p for p in curve if p.get("nfe") is not None), key=lambda p: p["nfe"]):
        if p.get("over_budget"):
            over = True
            continue
        if p["nfe"] > max_nfe:
            continue
        largest = max(largest, p["nfe"])
        if at_least_as_accurate(p.get("value"), p.get("se"), target, target_se):
            return {"text": str(p["nfe"]), "nfe": p["nfe"], "bracket": [last_miss, p["nfe"]]}
        last_miss = p["nfe"]
    over = over or any(p.get("over_budget") for p in curve)
    if over or largest >= max_nfe:
        return {"text": f">{max_nfe}", "nfe": None, "bracket": [last_miss, None]}
    return {"text": f">{largest}" if largest else "n/a", "nfe": None, "bracket": [last_miss, None]}


# ------------------------------------------------------------------------------------ settings
@dataclass
class Setting:
    key: str
    process: str  # "vp", "cld" or "bdm"
    size: int  # images 1 x size x size
    blur: float | None = None  # BDM sigma_blur_max (pixels)
    blur_note: str = ""

    @property
    def data_shape(self) -> tuple[int, int, int]:
        return (1, self.size, self.size)

    @property
    def label(self) -> str:
        blur = f", blur {self.blur:g} ({self.blur_note})" if self.blur is not None else ""
        return f"{self.process.upper()} {self.size}x{self.size}{blur}"

    def make_process(self) -> LinearSDE:
        if self.process == "vp":
            return VPSDE(self.data_shape)
        if self.process == "cld":
            return CLD(self.data_shape)
        return BDM(self.data_shape, schedule="cosine_logsnr", sigma_blur_max=self.blur)

    def gddim_start(self) -> dict:
        """The official start of the gDDIM sampler: rho = 80 on BDM, T elsewhere."""
        return {"rho_start": BDM_RHO_START} if self.process == "bdm" else {}


# sigma_blur_max at 32x32: 10 in the official gDDIM code, 20 in the BDM paper; blur is in pixels, so
# other sizes scale it with the image size (8x8: 2.5 and 5).
SETTINGS = [
    Setting("vp-8", "vp", 8),
    Setting("cld-8", "cld", 8),
    Setting("bdm-8-code", "bdm", 8, 2.5, "gDDIM code, 10 at 32x32"),
    Setting("bdm-8-paper", "bdm", 8, 5.0, "BDM paper, 20 at 32x32"),
    Setting("vp-32", "vp", 32),
    Setting("cld-32", "cld", 32),
    Setting("bdm-32-code", "bdm", 32, 10.0, "gDDIM code"),
    Setting("bdm-32-paper", "bdm", 32, 20.0, "BDM paper"),
]
SETTING = {s.key: s for s in SETTINGS}

GRIDS = {"uniform": UniformGrid, "quadratic": QuadraticGrid, "logsnr": LogSNRGrid}


@dataclass
class Baseline:
    key: str
    label: str
    make: Callable  # (nfe, grid or None for the sampler's default) -> Sampler
    applies: Callable[[LinearSDE], bool]
    deterministic: bool
    default_grid: str
    nfe_of: Callable[[int], int] = lambda g: g  # grid NFE -> the NFE the sampler is built with
    style: dict | None = None


def _not_cld(p: LinearSDE) -> bool:
    return not isinstance(p, CLD)


BASELINES = [
    Baseline("ancestral", "Ancestral (DDPM/BDM)", lambda n, g: Ancestral(n, grid=g), _not_cld, False, "uniform",
             style=dict(color="#000000", marker="*")),
    Baseline("em", "Euler-Maruyama (lambda=1)", lambda n, g: EulerMaruyama(n, lambda_=1.0, grid=g),
             lambda p: True, False, "uniform", style=dict(color="#2ca02c", marker="D")),
    Baseline("pf-euler", "prob. flow Euler", lambda n, g: ProbabilityFlowEuler(n, grid=g), lambda p: True, True,
             "uniform", style=dict(color="#ff7f0e", marker="x")),
    Baseline("heun", "prob. flow Heun", lambda n, g: Heun(n, grid=g), lambda p: True, True, "uniform",
             nfe_of=lambda g: g - 1, style=dict(color="#bcbd22", marker="P")),
    Baseline("sscs", "SSCS (CLD)", lambda n, g: SSCS(n, grid=g), lambda p: isinstance(p, CLD), False, "quadratic",
             style=dict(color="#7f7f7f", marker="v")),
]
BASELINE = {b.key: b for b in BASELINES}
RK45_STYLE = dict(color="#1f77b4", marker="h")
GDDIM_STYLE = dict(color="#d62728", marker="s")
LABELS = {**{b.key: b.label for b in BASELINES}, "rk45": "prob. flow RK45", "gddim": "gDDIM (q=1, default)"}


def diagnostics(setting: Setting) -> list[tuple[str, str, Callable[[], Sampler]]]:
    """gDDIM variants at NFE 20 that isolate the error terms (key, what it changes, sampler)."""
    st = setting.gddim_start()
    out = [
        ("order-1", "order q=0 (DDIM)", lambda: GDDIM(TARGET_NFE, q=0, **st)),
        ("order-3", "order q=2", lambda: GDDIM(TARGET_NFE, q=2, **st)),
        ("grid-uniform", "uniform grid", lambda: GDDIM(TARGET_NFE, grid=UniformGrid(), **st)),
        ("grid-logsnr", "log-SNR grid", lambda: GDDIM(TARGET_NFE, grid=LogSNRGrid(), **st)),
        ("final-euler", "Euler final step instead of Tweedie", lambda: GDDIM(TARGET_NFE, denoise="euler", **st)),
        ("converged", "q=2 at NFE 200 (what no step count removes: start time, t_min, final step)",
         lambda: GDDIM(200, q=2, **st)),
    ]
    if setting.process == "bdm":
        out.insert(5, ("start-T", "start at T instead of rho=80", lambda: GDDIM(TARGET_NFE)))
    return out


# ------------------------------------------------------------------------------------- running
def run_setting(setting: Setting, args: argparse.Namespace, log) -> dict:
    t_setting = time.perf_counter()
    process = setting.make_process()
    mixture = image_mixture(setting.data_shape, k=args.modes, pixel_std=args.pixel_std,
                            separation=args.separation, alpha=args.alpha, seed=args.mixture_seed)
    oracle = SpectralMixtureEps(mixture, process)
    checks = {"vs_dense": oracle_check(oracle, lambda u, t: dense_eps(mixture, process, u, float(t[0])), process)}
    if process.layout.state_dim <= 256:  # the package oracle needs an isotropic covariance
        iso = SpectralMixture(mixture.weights, mixture.means, torch.full(mixture.freq_var.shape, args.pixel_std**2))
        checks["isotropic_vs_package"] = oracle_check(SpectralMixtureEps(iso, process),
                                                      iso.as_gaussian_mixture().eps_fn(process), process)
    if max(checks.values()) > 1e-8:
        raise RuntimeError(f"exact eps disagrees with its dense check: {checks}")
    n = args.n_8 if setting.size <= 8 else args.n_32 or (2000 if setting.process == "bdm" else 1000)
    n_path = min(args.n_path, n)
    exact = mixture.sample(n, torch.Generator().manual_seed(args.seed + 1))
    mmd = MMD(exact, args.groups, mixture.sample(min(n, 2000), torch.Generator().manual_seed(args.seed + 3)))
    z = torch.from_numpy(np.random.default_rng(args.seed + 2).standard_normal((n, *process.state_shape)))
    t_min = 1e-3  # every sampler's default
    starts = {"T": float(process.T)}
    if setting.process == "bdm":
        starts["rho80"] = process.time_at_rho(BDM_RHO_START)
    gddim_start = "rho80" if setting.process == "bdm" else "T"
    u_start = {k: process.prior_sample(z, t) for k, t in starts.items()}
    project = process.layout.project  # the path error is measured on the data coordinate (CLD: x, not v)
    log(f"[{setting.key}] {process.describe()}  n={n} (path {n_path})  MMD bandwidth {mmd.h:.3f}  "
        f"oracle checks {checks}  starts {starts}")

    refs = {}
    for key, t0 in starts.items():
        r0 = time.perf_counter()
        dop, info = reference_dop853(oracle, u_start[key][:n_path], t0, t_min, rtol=args.ref_rtol)
        dop = project(dop)
        r1 = time.perf_counter()
        ref_sampler = GDDIM(args.ref_nfe, q=2, denoise="none", t_start=t0)
        _, gd, _ = run_sampler(ref_sampler, process, oracle, FastNoise(n_path, 0), u_start[key][:n_path])
        agree = path_error(project(gd), dop)
        refs[key] = {"t_start": t0, "dop853": dop, "gddim": gd, "dop853_info": info, "dop853_time_s": r1 - r0,
                     "gddim_sampler": repr(ref_sampler), "gddim_time_s": time.perf_counter() - r1,
                     "agreement_rms": agree[0], "agreement_se": agree[1]}
        log(f"  reference from {key} (t={t0:.6g}): DOP853 {info['nfev']} evaluations {r1 - r0:.0f}s, gDDIM q=2 NFE "
            f"{args.ref_nfe} {time.perf_counter() - r1:.0f}s; RMS difference {agree[0]:.2e}")

    runs: list[dict] = []
    seeds = iter(range(args.seed + 1000, args.seed + 10**6))

    def evaluate(key: str, variant: str, sampler: Sampler, start: str, grid_nfe: int | None, deterministic: bool,
                 budget: int | None = None, path_only: bool = False, record: bool = True) -> dict:
        """One run: all metrics on ``n`` samples, or (``path_only``, deterministic samplers) the path error
        alone on the ``n_path`` path samples, which is the same number at a fraction of the cost."""
        entry = {"sampler": key, "variant": variant, "grid_nfe": grid_nfe, "start": start,
                 "deterministic": deterministic, "sampler_repr": repr(sampler)}
        if path_only:
            entry["path_only"] = True
        t0 = time.perf_counter()
        eps_fn = Budget(oracle, budget) if budget else oracle
        m = n_path if path_only else n
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                x, state, nfe = run_sampler(sampler, process, eps_fn, FastNoise(m, next(seeds)), u_start[start][:m])
            entry["nfe"] = nfe
            metrics = {}
            if deterministic:
                metrics["path"] = path_error(project(state[:n_path]), refs[start]["dop853"])
            if not path_only:
                metrics.update(mode_stats(x, mixture, args.groups))
                metrics["mmd2"] = mmd(x)
            if caught:
                entry["warnings"] = sorted({str(w.message)[:160] for w in caught})
        except NFEBudgetExceeded as err:
            entry.update(nfe=None, over_budget=True, error=str(err))
            metrics = {}
        except (FloatingPointError, RuntimeError, ValueError) as err:  # a diverged run is a result too
            entry.update(nfe=getattr(sampler, "nfe", None), error=f"{type(err).__name__}: {str(err)[:200]}")
            metrics = {k: (math.inf, math.inf) for k in (("path",) if path_only else METRICS)
                       if k != "path" or deterministic}
        entry["metrics"] = {k: [float(v[0]), float(v[1])] for k, v in metrics.items()}
        entry["time_s"] = time.perf_counter() - t0
        if not record:
            return entry
        runs.append(entry)
        shown = "  ".join(f"{k}={v[0]:.3g}+-{v[1]:.1g}" for k, v in entry["metrics"].items())
        log(f"  {key:<10}{variant:<10} nfe={entry['nfe']!s:>5}  {shown}  ({entry['time_s']:.1f}s)"
            + (f"  [{entry['error']}]" if "error" in entry else ""))
        return entry

    st = setting.gddim_start()
    for g in args.gddim_nfe:
        evaluate("gddim", "default", GDDIM(g, **st), gddim_start, g, True)
    target = next(r for r in runs if r["sampler"] == "gddim" and r["grid_nfe"] == TARGET_NFE)["metrics"]
    resolved_metrics = [m for m, (v, s) in target.items() if resolved(v, s)]
    log(f"  gDDIM at NFE {TARGET_NFE} resolved by: {resolved_metrics or 'none'}")
    if args.diagnostics:
        for key, _, make in diagnostics(setting):
            s = make()
            evaluate("gddim-diag", key, s, "T" if s.rho_start is None else "rho80", s.nfe, True)

    def matched(entry: dict, which: str) -> bool:
        """Whether a run matches gDDIM by every metric that resolves gDDIM at NFE 20: ``which`` is "path" or
        "dist" (the distribution metrics)."""
        ms = [m for m in resolved_metrics if (m == "path") == (which == "path")]
        if which == "path" and not entry["deterministic"]:
            ms = []
        return all(at_least_as_accurate(*entry["metrics"].get(m, (None, None)), *target[m]) for m in ms)

    def sweep(key: str, variant: str, deterministic: bool, points) -> None:
        """A baseline over increasing NFE. Early stop: once it matches by every distribution metric, a
        deterministic baseline goes on with path-only runs until it matches by path error too."""
        dist_done = path_done = False
        for grid_nfe, make, *label in points:
            if args.early_stop and dist_done and path_done:
                return
            var = label[0] if label else variant
            path_only = args.early_stop and dist_done
            if grid_nfe is None and not path_only:
                # adaptive (RK45): probe the NFE on the path samples first, so that a tolerance needing more
                # than 2000 NFE costs a path-sized run, not a full one (the step control sees an RMS norm over
                # the batch, so the NFE hardly depends on the batch size)
                probe = evaluate(key, var, make(), "T", None, deterministic, MAX_NFE, path_only=True, record=False)
                if probe.get("over_budget"):
                    runs.append(probe)
                    log(f"  {key:<10}{var:<10} needs more than {MAX_NFE} NFE (probe on the path samples)")
                    return
            e = evaluate(key, var, make(), "T", grid_nfe, deterministic, path_only=path_only,
                         budget=MAX_NFE if grid_nfe is None else None)
            if e.get("over_budget"):
                return
            dist_done = dist_done or matched(e, "dist")
            path_done = path_done or matched(e, "path")

    for b in BASELINES:
        if not b.applies(process):
            continue
        alt_grids = args.alt_grids if setting.size <= 8 or args.alt_grids_32 else []
        for grid_name in [b.default_grid] + [gn for gn in alt_grids if gn != b.default_grid]:
            grid = None if grid_name == b.default_grid else GRIDS[grid_name]()
            sweep(b.key, grid_name, b.deterministic,
                  [(g, lambda g=g: b.make(b.nfe_of(g), grid)) for g in args.nfe])
    # RK45's NFE is adaptive (set by the tolerance); a run that needs more than 2000 NFE is stopped there.
    sweep("rk45", "adaptive", True, [(None, lambda tol=tol: RK45(rtol=tol, atol=tol), f"tol={tol:g}")
                                     for tol in sorted(args.rk45_tol, reverse=True)])

    out = {
        "key": setting.key, "label": setting.label, "process": setting.process, "process_repr": process.describe(),
        "data": "x".join(map(str, setting.data_shape)), "state_shape": list(process.state_shape),
        "n_samples": n, "n_path": n_path, "groups": args.groups, "mmd_bandwidth": mmd.h, "oracle_checks": checks,
        "mixture": {"weights": mixture.weights.tolist(), "pixel_std": args.pixel_std, "separation": args.separation,
                    "alpha": args.alpha, "modes": args.modes, "seed": args.mixture_seed},
        "starts": starts, "gddim_start": gddim_start, "baseline_start": "T", "t_min": t_min,
        "references": {k: {kk: vv for kk, vv in r.items() if kk not in ("dop853", "gddim")} for k, r in refs.items()},
        "target": {"sampler": "gddim", "nfe": TARGET_NFE, "metrics": target, "resolved": resolved_metrics},
        "diagnostics": [{"key": k, "what": w} for k, w, _ in diagnostics(setting)] if args.diagnostics else [],
        "runs": runs,
    }
    out["matching"] = matching(out)
    out["time_s"] = time.perf_counter() - t_setting
    log(f"[{setting.key}] done in {out['time_s']:.0f}s")
    return out


def matching(res: dict) -> list[dict]:
    """One row per (baseline, grid variant, metric): the NFE at which it matches gDDIM at NFE 20."""
    target = res["target"]["metrics"]
    rows = []
    keys = [b.key for b in BASELINES] + ["rk45"]
    for key in keys:
        entries = [r for r in res["runs"] if r["sampler"] == key]
        if not entries:
            continue
        variants = ["rk45"] if key == "rk45" else list(dict.fromkeys(r["variant"] for r in entries))
        for m in METRICS:
            if m not in target:
                continue
            det = entries[0]["deterministic"]
            if m == "path" and not det:
                continue
            per_variant = {}
            for v in variants:
                curve = [{"nfe": r["nfe"], "value": r["metrics"].get(m, [None, None])[0],
                          "se": r["metrics"].get(m, [None, None])[1], "over_budget": r.get("over_budget", False)}
                         for r in entries if key == "rk45" or r["variant"] == v]
                per_variant[v] = nfe_to_match(curve, *target[m])
                hit = per_variant[v]
                at = next((r for r in entries if r["nfe"] == hit["nfe"] and (key == "rk45" or r["variant"] == v)),
                          None) if hit["nfe"] else None
                per_variant[v]["value_at_match"] = at["metrics"][m] if at else None
            default = variants[0]  # the sampler's default grid comes first
            best = min(variants, key=lambda v: (per_variant[v]["nfe"] is None, per_variant[v]["nfe"] or 0))
            d = per_variant[default]
            rows.append({
                "process": res["process"].upper(), "data": res["data"], "setting": res["key"],
                "baseline": key, "grid": "adaptive" if key == "rk45" else default, "metric": m,
                "nfe_to_match_gddim20": d["text"],
                "factor": d["nfe"] / TARGET_NFE if d["nfe"] else None,
                "bracket": d["bracket"],
                "gddim20": target[m][0], "se": target[m][1],
                "baseline_at_match": d["value_at_match"],
                "best_grid": best, "nfe_to_match_best_grid": per_variant[best]["text"],
                "variants": {v: per_variant[v]["text"] for v in variants},
            })
    return rows


# ------------------------------------------------------------------------------------- reports
HEADLINE = [  # (process, baseline, metric): the comparisons the issue names
    ("bdm", "ancestral", "mmd2"), ("bdm", "pf-euler", "path"),
    ("cld", "em", "mmd2"), ("cld", "pf-euler", "path"),
]


def fmt(v: float | None, se: float | None = None) -> str:
    if v is None:
        return "-"
    if not math.isfinite(v):
        return "diverged"
    return f"{v:.3g}" if se is None else f"{v:.3g} ± {se:.2g}"


def _cell(row: dict) -> str:
    text = row["nfe_to_match_gddim20"]
    if row["factor"] is not None:
        text += f" ({row['factor']:.1f}x)"
    elif text.startswith(">") and text[1:].isdigit():
        text += f" (>{int(text[1:]) / TARGET_NFE:g}x)"
    if row["best_grid"] != row["grid"] and row["nfe_to_match_best_grid"] != row["nfe_to_match_gddim20"]:
        text += f"; {row['best_grid']}: {row['nfe_to_match_best_grid']}"
    return text


def acceleration_table(results: dict) -> list[str]:
    L = ["| setting | baseline (default grid) | " + " | ".join(METRIC_LABELS[m] for m in METRICS) + " |",
         "|---|---|" + "---|" * len(METRICS)]
    for res in results.values():
        tgt = res["target"]["metrics"]
        L.append(f"| **{res['label']}** | *gDDIM @ NFE {TARGET_NFE}* | "
                 + " | ".join(fmt(*tgt[m]) + ("" if m in res["target"]["resolved"] else " (unresolved)")
                              if m in tgt else "-" for m in METRICS) + " |")
        by = {}
        for r in res["matching"]:
            by.setdefault(r["baseline"], {})[r["metric"]] = r
        for key, cells in by.items():
            grid = next(iter(cells.values()))["grid"]
            L.append(f"| | {LABELS[key]} ({grid}) | " + " | ".join(_cell(cells[m]) if m in cells else "n/a"
                                                                  for m in METRICS) + " |")
    return L


def headline(results: dict) -> list[str]:
    L = []
    for proc, base, metric in HEADLINE:
        for res in results.values():
            if res["process"] != proc:
                continue
            row = next((r for r in res["matching"] if r["baseline"] == base and r["metric"] == metric), None)
            if row is None:
                continue
            text = row["nfe_to_match_gddim20"]
            if text == "unresolved":
                verdict = ("**unresolved**: gDDIM's error at NFE 20 is within 2 SE of exact sampling at this sample "
                           "size")
            elif row["factor"] is not None:
                lo, hi = row["bracket"]
                rng = f"factor in ({lo / TARGET_NFE:g}x, {row['factor']:g}x]" if lo else f"factor <= {row['factor']:g}x"
                claim = 20 * TARGET_NFE
                verdict = f"**{rng}**: " + ("the paper's >= 20x holds" if lo and lo >= claim else
                                             "the paper's >= 20x is NOT reproduced" if hi < claim else
                                             "at most 20x: the paper's >= 20x holds only at the edge" if hi == claim
                                             else "undecided at this NFE grid")
            else:
                lim = int(text[1:]) if text[1:].isdigit() else 0
                verdict = (f"**>{lim / TARGET_NFE:g}x**: the paper's >= 20x "
                           + ("holds" if lim >= 400 else "is neither confirmed nor refuted (NFE grid too short)"))
            best = ("" if row["nfe_to_match_best_grid"] == text
                    else f"; on its best grid ({row['best_grid']}): {row['nfe_to_match_best_grid']}")
            needs = "" if text == "unresolved" else f"needs {text} NFE, "
            L.append(f"- {res['label']}, {LABELS[base]} vs gDDIM by {METRIC_LABELS[metric]}: {needs}"
                     f"{verdict}{best}.")
    return L


def diagnostics_table(res: dict) -> list[str]:
    metrics = [m for m in METRICS if m in res["target"]["metrics"]]
    L = ["| gDDIM variant | NFE | " + " | ".join(METRIC_LABELS[m] for m in metrics) + " |",
         "|---|---:|" + "---:|" * len(metrics)]
    rows = [("default (q=1, quadratic grid, Tweedie final step)",
             next(r for r in res["runs"] if r["sampler"] == "gddim" and r["grid_nfe"] == TARGET_NFE))]
    what = {d["key"]: d["what"] for d in res["diagnostics"]}
    rows += [(what[r["variant"]], r) for r in res["runs"] if r["sampler"] == "gddim-diag"]
    for name, r in rows:
        L.append(f"| {name} | {r['nfe']} | " + " | ".join(fmt(*r["metrics"].get(m, [None, None])) for m in metrics) + " |")
    return L


def limiting_terms(res: dict) -> str:
    """One sentence per resolved metric: which diagnostic variant at NFE 20 helps most, and how much of
    the NFE-20 error is left at convergence."""
    tgt = res["target"]["metrics"]
    diag = {r["variant"]: r["metrics"] for r in res["runs"] if r["sampler"] == "gddim-diag"}
    parts = []
    for m in res["target"]["resolved"]:
        v0 = tgt[m][0]
        cands = {k: d[m][0] for k, d in diag.items() if k != "converged" and m in d and math.isfinite(d[m][0])}
        if not cands:
            continue
        best = min(cands, key=cands.get)
        conv = diag.get("converged", {}).get(m, [None])[0]
        left = f"; at convergence {fmt(conv)} ({100 * conv / v0:.0f}% of it)" if conv is not None else ""
        parts.append(f"{METRIC_LABELS[m]}: {fmt(v0)} at NFE 20; best single change: {best} -> {fmt(cands[best])}"
                     f" ({v0 / cands[best]:.1f}x lower)" if cands[best] > 0 else f" (-> {fmt(cands[best])})")
        parts[-1] += left
    return "; ".join(parts) if parts else "no metric resolves gDDIM at NFE 20"


def curve_table(res: dict, metric: str, nfe_grid: list[int]) -> list[str]:
    cols = sorted(set(nfe_grid) | {r["grid_nfe"] for r in res["runs"] if r["sampler"] == "gddim"})
    L = ["| sampler | " + " | ".join(str(c) for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    seen = []
    for r in res["runs"]:
        if r["sampler"] in ("gddim-diag", "rk45"):
            continue
        k = (r["sampler"], r["variant"])
        if k not in seen:
            seen.append(k)
    for key, variant in seen:
        pts = {r["grid_nfe"]: r["metrics"].get(metric) for r in res["runs"]
               if (r["sampler"], r["variant"]) == (key, variant)}
        if not any(pts.values()):
            continue
        name = LABELS.get(key, key) + ("" if variant == "default" else f" ({variant})")
        L.append(f"| {name} | " + " | ".join(fmt(*pts[c]) if pts.get(c) else "" for c in cols) + " |")
    rk = [r for r in res["runs"] if r["sampler"] == "rk45"]
    if rk:
        cells = ", ".join(f"{r['variant']}: " + (f"{fmt(*r['metrics'][metric])} @ NFE {r['nfe']}" if metric in
                                                 r["metrics"] else r.get("error", "-")) for r in rk)
        L.append(f"| {LABELS['rk45']} | {cells} |" + " |" * (len(cols) - 1))
    return L


def write_markdown(path: Path, payload: dict) -> None:
    cfg, results = payload["config"], payload["results"]
    suffix = payload["suffix"]
    partial = "" if payload.get("complete", True) else " (PARTIAL: settings still running)"
    L = [f"## Acceleration factor of gDDIM with exact scores{' (QUICK run)' if cfg['quick'] else ''}{partial}", "",
         f"Generated by `{payload['command']}` on {payload['finished']} in {payload['runtime_s'] / 60:.1f} min "
         f"({payload['versions']['torch_threads']} torch thread(s)). Raw numbers and full error curves: "
         f"`{Path(cfg['out']).name}.json`; plots: `{Path(cfg['out']).name}_{{vp,cld,bdm}}.png`.", "",
         "Every sampler is driven by the exact eps of a Gaussian mixture, and every error measure has expectation "
         "exactly 0 for exact sampling, so none has a statistical floor; each comes with a standard error (SE). "
         f"A baseline *matches* gDDIM (q=1, its defaults) at NFE {TARGET_NFE} at the smallest NFE where its error "
         f"is within {SIGMAS:g} SE of gDDIM's (SE of the difference, sqrt(se_b^2 + se_g^2)) or below it; "
         f"'>{MAX_NFE}' = never within {MAX_NFE} NFE; '>N' = never up to the largest NFE tried; 'unresolved' = "
         f"gDDIM's value at NFE {TARGET_NFE} is within {SIGMAS:g} SE of 0 (exact sampling), so nothing can be said "
         "(never reported as a match). The NFE grid is "
         f"{', '.join(map(str, cfg['nfe']))}: a match at N means the smallest matching NFE lies between the "
         "previous grid point and N (the bracket is in the JSON). Factor = NFE / 20; the paper claims >= 20x "
         "(NFE >= 400).", "",
         "## Headline (the comparisons issue #11 names)", "", *headline(results), "",
         "## NFE each baseline needs to match gDDIM at NFE 20", "",
         "Cells: NFE (factor); where another grid does better: '; grid: NFE' (the baseline's best grid, "
         f"tried: {', '.join(cfg['alt_grids']) or 'none'}). The *gDDIM* rows give its value ± SE at NFE {TARGET_NFE}. "
         "Path error only for deterministic samplers (stochastic ones have no path).", "",
         *acceleration_table(results), "",
         "## Settings", "",
         f"- Data: `image_mixture`, {cfg['modes']} modes with unequal weights; within a mode a Gaussian that is "
         f"diagonal in the 2-D DCT basis with variance ~ (1 + i^2 + j^2)^-{cfg['alpha']:g} (image-like 1/f^2 "
         f"spectrum), mean pixel std {cfg['pixel_std']:g}; means are smooth random patterns (lowest 4x4 "
         f"frequencies), RMS Mahalanobis distance {cfg['separation']:g} between modes (they overlap).",
         f"- Samples per run: n in the table below, split into {cfg['groups']} interleaved groups for the jackknife "
         f"SEs; path error on the first {cfg['n_path']} of them (same initial noise for every deterministic "
         "sampler), in float64; MMD bandwidth from an independent exact set.",
         "- Processes: `VPSDE` (linear beta 0.1..20), `CLD` (paper settings), `BDM` (cosine log-SNR schedule, "
         "sigma_blur_max 10 (official gDDIM code) and 20 (BDM paper) at 32x32, 2.5 and 5 at 8x8: blur is in "
         "pixels, so it scales with the image size).",
         f"- gDDIM: `GDDIM(nfe)` defaults (order q=1, quadratic grid, t_min=1e-3, Tweedie final step), on BDM "
         f"with the official start `rho_start={BDM_RHO_START:g}` (t = "
         + ", ".join(f"{r['starts'].get('rho80'):.6g} ({k})" for k, r in results.items() if "rho80" in r["starts"])
         + "); elsewhere it starts at T.",
         "- Baselines, each with its documented defaults (start at T, t_min = 1e-3, its own grid and final step): "
         "Ancestral (uniform grid, Tweedie), Euler-Maruyama lambda=1 (uniform, Euler final step), probability-flow "
         "Euler (uniform) and Heun (uniform; NFE = grid NFE - 1, two evaluations per step), SSCS (CLD; quadratic, "
         f"score at the step midpoint), RK45 (scipy, rtol = atol in {', '.join(f'{t:g}' for t in cfg['rk45_tol'])}; "
         f"its NFE is adaptive; a tolerance whose run needs more than {MAX_NFE} NFE is not run).",
         f"- Early stop: {'on' if cfg['early_stop'] else 'off'} (a baseline's sweep ends at the first NFE where it "
         "matches gDDIM by every metric that resolves gDDIM, so its curves end there; once a deterministic "
         "baseline matches by every distribution metric, it continues on the path samples only until it matches "
         "by path error too). Other grids than the default are tried at 8x8"
         + (" and 32x32." if cfg.get("alt_grids_32") else " only (cost)."),
         "- Path error reference: the probability-flow ODE written with the exact score (no R, no sampler code) "
         f"solved by scipy DOP853 (rtol {cfg['ref_rtol']:g}), and gDDIM q=2 with {cfg['ref_nfe']} steps, both "
         "float64 from the same initial state; every sampler's state is compared at t_min = 1e-3, before its "
         "final step (which differs between samplers and is not part of the ODE); the final step's effect shows "
         "in the distribution metrics.", "",
         "| setting | process | n | MMD bandwidth | exact-eps check (max rel. diff) | reference agreement (RMS) "
         "| smallest path error reported | time |",
         "|---|---|---:|---:|---|---|---:|---:|"]
    for res in results.values():
        agree = ", ".join(f"{k}: {r['agreement_rms']:.1e}" for k, r in res["references"].items())
        paths = [r["metrics"]["path"][0] for r in res["runs"] if "path" in r["metrics"]
                 and math.isfinite(r["metrics"]["path"][0])]
        L.append(f"| {res['label']} | `{res['process_repr']}` | {res['n_samples']} | {res['mmd_bandwidth']:.3g} | "
                 + ", ".join(f"{k} {v:.1e}" for k, v in res["oracle_checks"].items())
                 + f" | {agree} | {min(paths):.2e} | {res['time_s']:.0f} s |")
    L += ["", "## What limits gDDIM at NFE 20", "",
          "gDDIM variants at NFE 20 that change one thing each; 'converged' (q=2, NFE 200) keeps what no step count "
          "removes (start time, t_min, final step).", ""]
    for res in results.values():
        if res["diagnostics"]:
            L += [f"### {res['label']}", "", limiting_terms(res) + ".", "", *diagnostics_table(res), ""]
    L += ["## Error curves (default grids; all variants and metrics in the JSON and plots)", ""]
    for res in results.values():
        for m in ("path", "mmd2", "var_err2"):
            L += [f"**{res['label']}**, {METRIC_LABELS[m]}:", "", *curve_table(res, m, cfg["nfe"]), ""]
    path.write_text("\n".join(L) + "\n")


def write_plots(prefix: Path, payload: dict) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for proc in ("vp", "cld", "bdm"):
        sets = [r for r in payload["results"].values() if r["process"] == proc]
        if not sets:
            continue
        fig, axes = plt.subplots(len(sets), len(METRICS), figsize=(4.2 * len(METRICS), 3.6 * len(sets)), squeeze=False)
        for row, res in zip(axes, sets):
            for ax, m in zip(row, METRICS):
                curves: dict[str, list] = {}
                for r in res["runs"]:
                    if r["sampler"] == "gddim-diag" or m not in r["metrics"] or r["nfe"] is None:
                        continue
                    if r["sampler"] != "rk45" and r["variant"] not in ("default", BASELINE.get(r["sampler"],
                                                                                                 BASELINES[0]).default_grid):
                        continue
                    curves.setdefault(r["sampler"], []).append((r["nfe"], *r["metrics"][m]))
                for key, pts in curves.items():
                    pts = sorted(p for p in pts if math.isfinite(p[1]))
                    style = GDDIM_STYLE if key == "gddim" else RK45_STYLE if key == "rk45" else BASELINE[key].style
                    pos = [p for p in pts if p[1] > 0]
                    if not pos:
                        continue
                    xs, ys, es = zip(*pos)
                    ax.errorbar(xs, ys, yerr=[[min(e, 0.95 * y) for y, e in zip(ys, es)], list(es)], color=style["color"],
                                marker=style["marker"], ms=5, lw=2.2 if key == "gddim" else 1.2, capsize=2,
                                label=LABELS[key], mfc="none" if key != "gddim" else style["color"])
                tgt = res["target"]["metrics"].get(m)
                if tgt and tgt[0] > 0:
                    ax.axhline(tgt[0], color="#d62728", ls="--", lw=0.8, alpha=0.7)
                    ax.axhspan(max(tgt[0] - SIGMAS * tgt[1], tgt[0] * 0.05), tgt[0] + SIGMAS * tgt[1], color="#d62728",
                               alpha=0.08, lw=0)
                ax.axvline(TARGET_NFE, color="0.5", ls=":", lw=0.8)
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.grid(True, which="both", alpha=0.25)
                ok = "" if m in res["target"]["resolved"] else " [gDDIM@20 unresolved]"
                ax.set_title(f"{res['label']}\n{METRIC_LABELS[m]}{ok}", fontsize=9)
                ax.set_xlabel("NFE")
        handles, labels = {}, []
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=len(handles), fontsize=9,
                   frameon=False)
        fig.suptitle(f"{proc.upper()}: error vs NFE with exact scores (error bars: 1 SE; red dashed: "
                     f"gDDIM at NFE {TARGET_NFE} with its +-{SIGMAS:g} SE band; values <= 0 not drawn)", fontsize=11)
        fig.tight_layout(rect=(0, 0.04, 1, 0.97))
        out = Path(f"{prefix}_{proc}.png")
        fig.savefig(out, dpi=90)
        plt.close(fig)
        written.append(out)
    return written


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few-minute run (small sets, 8x8 and one 32x32 setting)")
    p.add_argument("--out", type=Path, default=None,
                   help="output prefix (default benchmarks/results/acceleration, or ..._quick with --quick): "
                        "writes PREFIX.json, PREFIX.md, PREFIX_{vp,cld,bdm}.png")
    p.add_argument("--overwrite", action="store_true", help="replace existing result files")
    p.add_argument("--settings", nargs="+", default=None, choices=list(SETTING),
                   help="settings to run (default: all; quick: vp-8 cld-8 bdm-8-paper bdm-32-paper)")
    p.add_argument("--nfe", type=int, nargs="+", default=None,
                   help="baselines' NFE grid (default 10 20 50 100 200 400 1000 2000; quick up to 400)")
    p.add_argument("--gddim-nfe", type=int, nargs="+", default=None, help="gDDIM's NFE grid (default 10 20 50 100)")
    p.add_argument("--rk45-tol", type=float, nargs="+", default=None, help="RK45 rtol = atol (default 1e-1 ... 1e-5)")
    p.add_argument("--n-8", type=int, default=None, help="samples per run at 8x8 (default 3000; quick 1000)")
    p.add_argument("--n-32", type=int, default=None,
                   help="samples per run at 32x32 (default 2000 on BDM, 1000 on VP and CLD; quick 500)")
    p.add_argument("--n-path", type=int, default=None, help="samples for the path error (default 128; quick 32)")
    p.add_argument("--groups", type=int, default=10, help="independent groups for the jackknife SE (default 10)")
    p.add_argument("--alt-grids", nargs="*", default=None, choices=list(GRIDS),
                   help="grids tried besides each baseline's default, at 8x8 (default: all three; quick: none)")
    p.add_argument("--alt-grids-32", action="store_true", help="try the other grids at 32x32 too (costly)")
    p.add_argument("--no-early-stop", dest="early_stop", action="store_false",
                   help="run every baseline on the whole NFE grid (default: stop once it matches by every metric)")
    p.add_argument("--no-diagnostics", dest="diagnostics", action="store_false",
                   help="skip the gDDIM variants at NFE 20 (order, grid, start, final step)")
    p.add_argument("--ref-nfe", type=int, default=2000, help="steps of the gDDIM q=2 path reference (default 2000)")
    p.add_argument("--ref-rtol", type=float, default=1e-9, help="rtol of the DOP853 path reference (default 1e-9)")
    p.add_argument("--modes", type=int, default=8, help="mixture components (default 8)")
    p.add_argument("--pixel-std", type=float, default=0.3, help="mean within-mode pixel std (default 0.3)")
    p.add_argument("--separation", type=float, default=4.0, help="RMS Mahalanobis distance of the modes (default 4)")
    p.add_argument("--alpha", type=float, default=1.0, help="within-mode spectrum exponent (default 1: 1/f^2 power)")
    p.add_argument("--mixture-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="base seed of exact samples, initial and sampler noise")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--from-json", type=Path, default=None, help="no sampling: re-render Markdown and plots from a JSON")
    a = p.parse_args(argv)
    q = a.quick
    a.settings = a.settings or (["vp-8", "cld-8", "bdm-8-paper", "bdm-32-paper"] if q else list(SETTING))
    a.settings = [k for k in SETTING if k in a.settings]
    a.nfe = sorted(set(a.nfe or ([10, 20, 50, 100, 200, 400] if q else [10, 20, 50, 100, 200, 400, 1000, 2000])))
    a.gddim_nfe = sorted(set(a.gddim_nfe or ([10, 20, 50] if q else [10, 20, 50, 100])))
    if TARGET_NFE not in a.gddim_nfe:
        p.error(f"--gddim-nfe must contain {TARGET_NFE}")
    if max(a.nfe) > MAX_NFE:
        p.error(f"the NFE grid stops at {MAX_NFE}")
    a.rk45_tol = a.rk45_tol or ([1e-1, 1e-2, 1e-3] if q else [1e-1, 1e-2, 1e-3, 1e-4, 1e-5])
    a.n_8 = a.n_8 or (1000 if q else 3000)
    a.n_32 = a.n_32 or (500 if q else None)
    a.n_path = a.n_path or (32 if q else 128)
    a.alt_grids = a.alt_grids if a.alt_grids is not None else ([] if q else list(GRIDS))
    a.out = a.out or Path("benchmarks/results/acceleration" + ("_quick" if q else ""))
    if a.groups < 4:
        p.error("--groups must be >= 4")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    prefix = args.out
    md_path, json_path = Path(f"{prefix}.md"), Path(f"{prefix}.json")
    if args.from_json is not None:
        payload = json.loads(args.from_json.read_text())
        for res in payload["results"].values():
            for r in res["runs"]:
                r["metrics"] = {k: [math.inf if v is None else v, math.inf if s is None else s]
                                for k, (v, s) in r["metrics"].items()}
            res["matching"] = matching(res)
        write_markdown(md_path, payload)
        write_plots(prefix, payload)
        print(f"re-rendered {md_path} and plots from {args.from_json}")
        return 0
    existing = [str(q) for q in (md_path, json_path) if q.exists()]
    if existing and not args.overwrite:
        print(f"refusing to overwrite {', '.join(existing)} (pass --overwrite)", file=sys.stderr)
        return 2
    json_path.parent.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    command = "python " + " ".join([os.path.relpath(__file__)] + (sys.argv[1:] if argv is None else argv))
    started = _dt.datetime.now().isoformat(timespec="seconds")
    t0 = time.perf_counter()
    versions = _common.versions()
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    cfg.update(target_nfe=TARGET_NFE, max_nfe=MAX_NFE, sigmas=SIGMAS, bdm_rho_start=BDM_RHO_START,
               metrics=METRIC_LABELS, baselines={b.key: b.label for b in BASELINES})
    results: dict[str, dict] = {}
    for k in args.settings:  # results are written after every setting: a cut-short run leaves what it did
        results[k] = run_setting(SETTING[k], args, log)
        runtime = time.perf_counter() - t0
        payload = {"rows": [r for res in results.values() for r in res["matching"]],
                   "complete": len(results) == len(args.settings), "command": command, "started": started,
                   "finished": _dt.datetime.now().isoformat(timespec="seconds"), "runtime_s": runtime,
                   "suffix": "_quick" if args.quick else "", "config": cfg, "versions": versions, "results": results}
        json_path.write_text(json.dumps(_json_safe(payload), indent=1, allow_nan=False))
        write_markdown(md_path, payload)
        pngs = write_plots(prefix, payload)
    log(f"total {runtime / 60:.1f} min; wrote {json_path}, {md_path}, {', '.join(map(str, pngs))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
