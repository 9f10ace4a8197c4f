"""Sample-quality distances on raw coordinates (2-D point clouds, flattened images).

All functions take ``[N, d]`` tensors (anything with more dimensions is flattened to
``[N, prod(rest)]``), compute in float64 on the CPU-or-device of the inputs, and return
Python floats.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..sdes.operators import psd_sqrt

__all__ = ["frechet_distance", "gaussian_moment_error", "sliced_wasserstein"]


def _as_2d_float64(x: Tensor, name: str) -> Tensor:
    x = torch.as_tensor(x)
    if x.dim() == 1:
        x = x.unsqueeze(1)
    elif x.dim() > 2:
        x = x.reshape(x.shape[0], -1)
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"`{name}` must be a non-empty [N, d] tensor, got shape {tuple(x.shape)}")
    return x.detach().to(torch.float64)


def _check_pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    x = _as_2d_float64(x, "x")
    y = _as_2d_float64(y, "y").to(x.device)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"`x` and `y` must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    return x, y


def _mean_cov(x: Tensor) -> tuple[Tensor, Tensor]:
    if x.shape[0] < 2:
        raise ValueError("at least two samples per set are needed to estimate a covariance")
    mu = x.mean(dim=0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def frechet_distance(x: Tensor, y: Tensor) -> float:
    r"""Frechet distance between Gaussians fitted to two sample sets.

    $$\|\mu_x - \mu_y\|^2 + \operatorname{tr}\big(\Sigma_x + \Sigma_y
    - 2 (\Sigma_x^{1/2} \Sigma_y \Sigma_x^{1/2})^{1/2}\big)$$

    (the squared 2-Wasserstein distance between the fitted Gaussians; FID is this on
    network features). Covariances are unbiased (``N - 1``). The trace of the cross
    term is computed from the eigenvalues of the symmetric PSD matrix
    `\Sigma_x^{1/2}\Sigma_y\Sigma_x^{1/2}`, clipped at zero, so singular or
    ill-conditioned covariances give no NaN or complex values.

    Args:
        x: Samples ``[N, d]`` (N >= 2).
        y: Samples ``[M, d]`` (M >= 2).

    Returns:
        The distance (a squared length; >= 0 up to rounding).

    Raises:
        ValueError: On mismatched dimensions or fewer than two samples.
    """
    x, y = _check_pair(x, y)
    mu_x, cov_x = _mean_cov(x)
    mu_y, cov_y = _mean_cov(y)
    sx = psd_sqrt(cov_x)
    m = sx @ cov_y @ sx
    m = 0.5 * (m + m.T)
    tr_cross = torch.linalg.eigvalsh(m).clamp_min(0.0).sqrt().sum()
    value = (mu_x - mu_y).square().sum() + torch.trace(cov_x) + torch.trace(cov_y) - 2.0 * tr_cross
    return float(value.clamp_min(0.0))


def _quantile_w2_sq(px: Tensor, py: Tensor) -> Tensor:
    """Exact squared W2 between 1-D empirical measures, one per row.

    Args:
        px: Projections ``[P, N]``.
        py: Projections ``[P, M]``.

    Returns:
        ``[P]`` squared distances.
    """
    n, m = px.shape[1], py.shape[1]
    sx = px.sort(dim=1).values
    sy = py.sort(dim=1).values
    if n == m:
        return (sx - sy).square().mean(dim=1)
    # Both quantile functions are piecewise constant with breaks at i/n and j/m; on the
    # merged grid they are constant on each cell, so evaluate at cell midpoints.
    dev = px.device
    breaks = torch.cat(
        [torch.arange(n + 1, dtype=torch.float64, device=dev) / n, torch.arange(1, m, dtype=torch.float64, device=dev) / m]
    ).sort().values
    widths = breaks[1:] - breaks[:-1]
    mids = 0.5 * (breaks[1:] + breaks[:-1])
    keep = widths > 0
    widths, mids = widths[keep], mids[keep]
    ix = (mids * n).floor().long().clamp_(0, n - 1)
    iy = (mids * m).floor().long().clamp_(0, m - 1)
    return ((sx[:, ix] - sy[:, iy]).square() * widths).sum(dim=1)


def sliced_wasserstein(x: Tensor, y: Tensor, n_projections: int = 256, seed: int = 0) -> float:
    r"""Sliced 2-Wasserstein distance between two empirical distributions.

    $$SW_2(x, y) = \Big(\frac{1}{P}\sum_{p=1}^{P} W_2^2(\theta_p^\top x, \theta_p^\top y)\Big)^{1/2}$$

    with ``P`` directions $\theta_p$ drawn uniformly on the unit sphere from a
    generator seeded with ``seed`` (so the value is deterministic for a seed). Each 1-D
    `W_2` is computed exactly from the empirical quantile functions, so the sample
    sizes may differ. For ``y = x + v`` the value is about `\|v\|/\sqrt{d}`
    (exactly `|v|` in one dimension).

    Args:
        x: Samples ``[N, d]``.
        y: Samples ``[M, d]``.
        n_projections: Number of random directions ``P``.
        seed: Seed of the directions.

    Returns:
        The sliced distance (same units as the coordinates).

    Raises:
        ValueError: On mismatched dimensions, empty sets or ``n_projections < 1``.
    """
    if n_projections < 1:
        raise ValueError(f"`n_projections` must be >= 1, got {n_projections}")
    x, y = _check_pair(x, y)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    theta = torch.randn(n_projections, x.shape[1], generator=gen, dtype=torch.float64)
    theta = (theta / theta.norm(dim=1, keepdim=True)).to(x.device)
    # [P, N] layout: sorting along the contiguous last dimension is much faster.
    w2_sq = _quantile_w2_sq(theta @ x.T, theta @ y.T)
    return float(w2_sq.mean().clamp_min(0.0).sqrt())


def gaussian_moment_error(x: Tensor, y: Tensor) -> dict[str, float]:
    """Errors of the first two moments of ``x`` against ``y``.

    Args:
        x: Samples ``[N, d]`` (e.g. generated).
        y: Samples ``[M, d]`` (e.g. reference).

    Returns:
        ``{"mean": ||mu_x - mu_y||_2, "cov": ||Sigma_x - Sigma_y||_F,
        "cov_rel": ||Sigma_x - Sigma_y||_F / ||Sigma_y||_F}``.

    Raises:
        ValueError: On mismatched dimensions or fewer than two samples.
    """
    x, y = _check_pair(x, y)
    mu_x, cov_x = _mean_cov(x)
    mu_y, cov_y = _mean_cov(y)
    cov_err = torch.linalg.matrix_norm(cov_x - cov_y)
    ref = torch.linalg.matrix_norm(cov_y)
    return {
        "mean": float((mu_x - mu_y).norm()),
        "cov": float(cov_err),
        "cov_rel": float(cov_err / ref) if float(ref) > 0 else float("inf") if float(cov_err) > 0 else 0.0,
    }
