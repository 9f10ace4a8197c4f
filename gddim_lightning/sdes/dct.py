"""Orthonormal 2-D DCT-II in torch, exact to round-off in the tensor's dtype.

Implemented as two small matrix products with the orthonormal DCT-II matrix, so the inverse is
the transpose and ``idct2(dct2(x)) == x`` to round-off (float64: ~1e-15).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor


@functools.lru_cache(maxsize=64)
def _dct_matrix_cpu64(n: int) -> Tensor:
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    D = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    D[0] /= math.sqrt(2.0)
    return D


def dct_matrix(n: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
    """Orthonormal DCT-II matrix ``D`` of size ``n x n`` (``y = D @ x``; ``D @ D.T = I``)."""
    return _dct_matrix_cpu64(int(n)).to(dtype=dtype, device=device)


def dct2(x: Tensor) -> Tensor:
    """Orthonormal 2-D DCT-II over the last two axes of ``x`` (``[..., H, W]``)."""
    H, W = x.shape[-2:]
    DH = dct_matrix(H, x.dtype, x.device)
    DW = dct_matrix(W, x.dtype, x.device)
    return DH @ x @ DW.T


def idct2(y: Tensor) -> Tensor:
    """Inverse of `dct2` (orthonormal DCT-III over the last two axes)."""
    H, W = y.shape[-2:]
    DH = dct_matrix(H, y.dtype, y.device)
    DW = dct_matrix(W, y.dtype, y.device)
    return DH.T @ y @ DW


def dct_frequencies(H: int, W: int) -> Tensor:
    """Squared spatial frequencies ``(pi i / H)^2 + (pi j / W)^2`` as float64 ``[H, W]``."""
    fi = (math.pi * torch.arange(H, dtype=torch.float64) / H) ** 2
    fj = (math.pi * torch.arange(W, dtype=torch.float64) / W) ** 2
    return fi[:, None] + fj[None, :]
