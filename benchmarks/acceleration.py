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
from gddim_lightning.sdes.dct import dct2, idct2  # noqa: E402
from gddim_lightning.sdes.layout import BlockLayout  # noqa: E402

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
    coef[..., :n_freq, :n_freq] = torch.randn((k, C, n_freq, n_freq), generator=g, dtype=torch.float64)
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
