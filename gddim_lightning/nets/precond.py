"""EDM preconditioning (Karras et al. 2022) generalised from a scalar noise level to any linear process.

EDM scales a network's input, adds a skip term and scales its output so that, for data of scale
``sigma_data``, the network's input and regression target both have unit variance at every noise
level. For a linear process ``u_t = Psi(t, 0) lift(x0) + K_t z`` the same idea works per block of
the process's basis, with ``b x b`` matrices in place of scalars. Model the data as
``x0 ~ N(0, sigma_data^2 I)``; per block, with ``e`` the data coordinate and ``p = Psi(t, 0) e``:

    C_t = sigma_data^2 p p^T + K_t K_t^T          (covariance of u_t)
    c_in = C_t^{-1/2}                             (input scaling: unit covariance)
    A_t = K_t^T C_t^{-1}                          (skip: the best linear estimate E[z | u_t] = A_t u_t)
    Q_t = I - K_t^T C_t^{-1} K_t = q q^T,         q = sigma_data w / sqrt(1 + sigma_data^2 |w|^2),
                                                  w = K_t^{-1} p   (residual covariance, rank one)
    eps = A_t u + S_t F(c_in u, t),               S_t = Q_t^{1/2} = |q| n n^T,  n = q / |q|

The network ``F`` regresses ``S^+ (z - A_t u)``, which has unit variance under the Gaussian model
(the loss weight of EDM). ``z - A_t u`` always lies on ``n`` (for any data: ``z`` is fixed by ``u`` and
``x0``, a single number per block), so the optimum is the same eps as plain denoising score
matching, ``E[z | u]``. Where ``eps`` is predictable from ``u`` alone (frequencies the blur of BDM has
erased, ``|p| -> 0``), ``S -> 0`` and the network's error is suppressed: an eps error ``delta`` costs
the predicted ``x0`` at most ``sigma_data * |delta F|`` instead of ``sigma_t / (a_t d_{t,k}) * delta``.
``sigma_data = 1`` without the output scale is the CLD paper's mixed score.

Pure torch: coefficients are built in float64 per batch of times and applied in the model dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._warn import renamed
from ..sdes.base import LinearSDE, as_time
from ..sdes.operators import BlockOp

Network = Callable[[Tensor, Tensor], Tensor]


@dataclass
class PrecondCoefficients:
    """Per-sample block operators (float64, leading shape ``[B]``) at times ``t [B]``."""

    c_in: BlockOp    # C^{-1/2}
    skip: BlockOp    # A = K^T C^{-1}
    out: BlockOp     # S = |q| n n^T
    proj: BlockOp    # n n^T (what of the network's output is used)
    signal: BlockOp  # (1/|q|) n n^T A Psi(t, 0): the x0 part of the regression target


class Preconditioner:
    """Block EDM preconditioning of an eps-network for ``process`` (see the module docstring).

    Args:
        process: the linear process.
        sigma_data: the data's scale (standard deviation per coordinate; EDM: 0.5 for images in
            [-1, 1]).
        parameterization: the factor ``K_t`` eps is defined with: ``"R"`` (gDDIM) or ``"L"`` (Cholesky).
        output_scale: scale the network's output by ``S_t`` and its target by ``S_t^+`` (EDM); without
            it only the input scaling and the skip are applied (``sigma_data = 1`` then is the CLD
            paper's mixed score).
        kind: deprecated name of ``parameterization``.
    """

    def __init__(self, process: LinearSDE, sigma_data: float = 0.5, parameterization: str | None = None,
                 output_scale: bool = True, kind: str | None = None) -> None:
        parameterization = renamed("Preconditioner", "parameterization", parameterization, "kind", kind, None) or "R"
        if not (isinstance(sigma_data, (int, float)) and 0 < sigma_data < float("inf")):
            raise ValueError(f"sigma_data must be a positive finite data scale, got {sigma_data!r}")
        if parameterization not in ("R", "L"):
            raise ValueError(f"parameterization must be 'R' (gDDIM) or 'L' (Cholesky), got {parameterization!r}")
        self.process = process
        self.sigma_data = float(sigma_data)
        self.parameterization = parameterization
        self.output_scale = bool(output_scale)

    def coefficients(self, t: Tensor) -> PrecondCoefficients:
        """The block operators at times ``t [B]`` (float64, leading shape ``[B]``). The formulas work on
        the raw ``[B, n, b, b]`` blocks: the data column ``Psi e`` is a vector per block, not an operator."""
        p = self.process
        t64 = as_time(t)
        K = p.ops.K(t64, self.parameterization).data
        b, di = p.block_size, p.layout.data_index
        psi = p.ops.mean(t64).data
        col = psi[..., :, di : di + 1]  # Psi e: [B, n, b, 1]
        C = self.sigma_data**2 * col @ col.transpose(-1, -2) + K @ K.transpose(-1, -2)
        C = 0.5 * (C + C.transpose(-1, -2))
        evals, V = torch.linalg.eigh(C)
        c_in = (V * evals.clamp_min(torch.finfo(torch.float64).tiny).rsqrt().unsqueeze(-2)) @ V.transpose(-1, -2)
        skip = torch.linalg.solve(C, K).transpose(-1, -2)  # K^T C^{-1} (C symmetric)
        w = torch.linalg.solve(K, col)  # [B, n, b, 1]
        q = self.sigma_data * w / torch.sqrt(1 + self.sigma_data**2 * (w**2).sum(-2, keepdim=True))
        s = q.norm(dim=-2, keepdim=True)  # [B, n, 1, 1]
        nvec = q / s
        proj = nvec @ nvec.transpose(-1, -2)
        if b == 1:
            proj = torch.ones_like(proj)  # n = +-1: exactly the identity
        signal = proj @ skip @ psi / s
        lay = p.layout
        return PrecondCoefficients(*(BlockOp(lay, A) for A in (c_in, skip, s * proj, proj, signal)))

    def skip_eps(self, u: Tensor, t: Tensor) -> Tensor:
        """The skip term ``A_t u``: the exact eps if the data were ``N(0, sigma_data^2 I)``."""
        return self.coefficients(t).skip @ u

    def eps(self, net: Network, u: Tensor, t: Tensor) -> Tensor:
        """``eps = A_t u + S_t net(c_in u, t)`` (``S_t = I`` without `output_scale`)."""
        c = self.coefficients(t)
        out = net(c.c_in @ u, t)
        if self.output_scale:
            out = c.out @ out
        return c.skip @ u + out

    def regression(self, net: Network, u: Tensor, t: Tensor, x0: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """The network's prediction and its unit-variance target for ``u = Psi(t,0) lift(x0) + K_t z``.

        Returns ``(n n^T F, S^+ (z - A_t u))`` as states; the target is computed from ``x0`` and ``z``
        (``S z - (1/|q|) n n^T A Psi x0``), without the cancellation of ``z - A_t u`` where ``S`` is
        tiny. Without `output_scale`: ``(F, z - A_t u)``. The squared difference times the block size,
        averaged, is the weighted loss per data coordinate.
        """
        c = self.coefficients(t)
        out = net(c.c_in @ u, t)
        if not self.output_scale:
            return out, z - c.skip @ u
        target = c.out @ z - c.signal @ self.process.layout.lift(x0)
        return c.proj @ out, target

    def __repr__(self) -> str:
        return (f"Preconditioner({self.process.describe()}, sigma_data={self.sigma_data}, "
                f"parameterization={self.parameterization!r}, "
                f"output_scale={self.output_scale})")
