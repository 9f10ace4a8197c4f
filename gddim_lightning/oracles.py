"""Exact eps for data whose score under any linear process is known in closed form.

Data ``x0 ~ sum_k w_k N(mu_k, diag(s_k^2))`` (a point mass is ``s = 0``; a Gaussian is ``K = 1``).
Under a linear process the state is again a Gaussian mixture,

    u_t ~ sum_k w_k N(Psi(t,0) lift(mu_k), C_k(t)),   C_k = Sigma_t + Psi(t,0) lift(S_k) Psi(t,0)^T,

so the score, and ``eps = -K_t^T score``, are exact. The computation is dense in the state dimension
``D`` (fine up to a few thousand: 2-D points, 8x8 images), in float64 by default.

Oracles are a feature (benchmark a sampler without training) and the backbone of the tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ._warn import renamed
from .sdes.base import LinearSDE, as_time

_MAX_DENSE_DIM = 4096
_CACHE_BYTES = 256 * 2**20  # per oracle: exact eps at many distinct times must not exhaust memory


class GaussianMixture:
    """A mixture of Gaussians with diagonal (or isotropic, or zero) covariances in data space.

    Args:
        weights: ``[K]`` positive mixture weights (normalised here).
        means: ``[K, *data_shape]``.
        stds: standard deviations, broadcastable to ``means`` (``0`` gives point masses).
    """

    def __init__(self, weights: Tensor | Sequence[float], means: Tensor, stds: Tensor | float) -> None:
        self.means = torch.as_tensor(means, dtype=torch.float64)
        K = self.means.shape[0]
        w = torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (K,) or (w <= 0).any():
            raise ValueError(f"weights must be {K} positive numbers, got shape {tuple(w.shape)}")
        self.weights = w / w.sum()
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand_as(self.means).clone()
        if (self.stds < 0).any():
            raise ValueError("stds must be >= 0")

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.means.shape[1:])

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact samples ``[n, *data_shape]`` (float64)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn((n, *self.data_shape), generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k] * z

    def eps_fn(self, process: LinearSDE, parameterization: str = "R", *, kind: str | None = None):
        """The exact ``eps(u, t)`` under ``process`` (``parameterization``: ``K_t = R_t`` or ``L_t``; ``kind``
        is its deprecated name)."""
        return MixtureEps(self, process, renamed("eps_fn", "parameterization", parameterization, "kind", kind, "R"))


class PointMass(GaussianMixture):
    """A Dirac at ``point`` (``[*data_shape]``)."""

    def __init__(self, point: Tensor) -> None:
        point = torch.as_tensor(point, dtype=torch.float64)
        super().__init__([1.0], point.unsqueeze(0), 0.0)


class Gaussian(GaussianMixture):
    """A single Gaussian ``N(mean, diag(std^2))``."""

    def __init__(self, mean: Tensor, std: Tensor | float) -> None:
        mean = torch.as_tensor(mean, dtype=torch.float64)
        super().__init__([1.0], mean.unsqueeze(0), torch.as_tensor(std, dtype=torch.float64).unsqueeze(0)
                         if torch.as_tensor(std).dim() else std)


class MixtureEps:
    """Callable ``eps(u, t)`` of a `GaussianMixture` under a process (cached per time)."""

    def __init__(self, mixture: GaussianMixture, process: LinearSDE, parameterization: str = "R", *,
                 kind: str | None = None) -> None:
        parameterization = renamed("MixtureEps", "parameterization", parameterization, "kind", kind, "R")
        if mixture.data_shape != process.data_shape:
            raise ValueError(f"mixture data_shape {mixture.data_shape} != process data_shape {process.data_shape}")
        lay = process.layout
        if lay.state_dim > _MAX_DENSE_DIM:
            raise ValueError(f"oracles are dense in the state dimension; {lay.state_dim} > {_MAX_DENSE_DIM}")
        self.mixture, self.process, self.parameterization = mixture, process, parameterization
        K = mixture.means.shape[0]
        self.lift_means = lay.lift(mixture.means).reshape(K, -1)  # [K, D]
        self.lift_vars = lay.lift(mixture.stds**2).reshape(K, -1)  # [K, D] diagonal of lift(S_k)
        self._cache: dict[float, tuple[Tensor, Tensor, Tensor, Tensor]] = {}

    def _at(self, t: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if t not in self._cache:
            ops = self.process.ops
            Psi, Sig, Kt = ops.mean(t).dense(), ops.Sigma(t).dense(), ops.K(t, self.parameterization).dense()
            m = self.lift_means @ Psi.T  # [K, D]
            C = Sig + (Psi.unsqueeze(0) * self.lift_vars.unsqueeze(1)) @ Psi.T  # [K, D, D]
            chol = torch.linalg.cholesky(0.5 * (C + C.transpose(-1, -2)))
            logw = torch.log(self.mixture.weights) - torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
            # bound the cache by memory (each entry holds K dense D x D factors), not by count
            entry_bytes = 8 * (chol.numel() + Kt.numel() + m.numel())
            if (len(self._cache) + 1) * entry_bytes > _CACHE_BYTES:
                self._cache.clear()
            self._cache[t] = (m, chol, logw, Kt)
        return self._cache[t]

    def score(self, u: Tensor, t: float) -> Tensor:
        """Exact score ``[B, *state_shape]`` at a single time ``t`` (float64)."""
        m, chol, logw, _ = self._at(float(t))
        x = u.reshape(u.shape[0], -1).to(torch.float64)
        diff = x.unsqueeze(0) - m.unsqueeze(1)  # [K, B, D]
        white = torch.linalg.solve_triangular(chol, diff.transpose(-1, -2), upper=False)  # [K, D, B]
        logp = logw.unsqueeze(-1) - 0.5 * (white**2).sum(1)  # [K, B]
        resp = torch.softmax(logp, dim=0)
        Cinv_diff = torch.cholesky_solve(diff.transpose(-1, -2), chol)  # [K, D, B]
        s = -(resp.unsqueeze(1) * Cinv_diff).sum(0).T  # [B, D]
        return s.reshape(u.shape)

    def __call__(self, u: Tensor, t: Tensor) -> Tensor:
        tt = as_time(t).reshape(-1)
        out = torch.empty(u.shape, dtype=torch.float64, device="cpu")
        uc = u.detach().to("cpu", torch.float64)
        for tv in torch.unique(tt).tolist():
            idx = (tt == tv).nonzero().squeeze(-1) if tt.numel() > 1 else torch.arange(u.shape[0])
            _, _, _, Kt = self._at(tv)
            s = self.score(uc[idx], tv).reshape(len(idx), -1)
            out[idx] = (-(s @ Kt)).reshape(len(idx), *u.shape[1:])  # eps = -K^T s (row form)
        return out.to(device=u.device, dtype=u.dtype)


def ring_mixture(data_shape: Sequence[int] = (2,), k: int = 8, radius: float = 2.0, std: float = 0.15,
                 seed: int = 0) -> GaussianMixture:
    """A standard test mixture: ``k`` components with unequal weights.

    For 2-D data the means lie on a ring; for images each mean is a smooth random pattern in [-1, 1].
    """
    g = torch.Generator().manual_seed(seed)
    w = 0.5 + torch.rand(k, generator=g, dtype=torch.float64)
    if tuple(data_shape) == (2,):
        ang = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
        means = radius * torch.stack([ang.cos(), ang.sin()], -1)
    else:
        means = torch.tanh(1.5 * torch.randn((k, *data_shape), generator=g, dtype=torch.float64))
    return GaussianMixture(w, means, std)
