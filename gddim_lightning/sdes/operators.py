"""Block operators: a batch of per-block matrices acting on the states of one linear process.

Every process of the package is block-diagonal in a fixed orthogonal basis (see `BlockLayout`). A
`BlockOp` is the matrix of such an operator: ``n`` blocks of size ``b x b``, held as a tensor
``[*lead, n, b, b]``. The leading axes index a family of operators:

* ``[]``: one operator for the whole batch (``Psi(t', t)`` at one pair of times);
* ``[B]``: one per sample (``K_t`` at per-sample training times), applied row by row;
* ``[N, ...]``: a table, e.g. the per-step coefficients of a sampler; ``op[i]`` is step ``i``.

``A @ u`` applies ``A`` to a state batch ``u [B, *state_shape]`` (basis change, block product and
back), in ``u``'s dtype and device: operators are built in float64 and cast at use. ``A @ B``,
``A + B``, ``A - B``, ``c * A``, ``A.T``, ``A.inv()`` and ``A.sqrt()`` (symmetric PSD square root)
act block by block, so a sampler step reads as its formula::

    u = Psi[i] @ u + sum(C[i, j] @ e_j for j, e_j in enumerate(history))
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .layout import BlockLayout


def bmm(A: Tensor, B: Tensor) -> Tensor:
    """Block matrix product of raw ``[..., b, b]`` tensors; elementwise for 1x1 blocks (much faster
    than batched 1x1 matmuls)."""
    return A * B if A.shape[-1] == 1 and B.shape[-2] == 1 else A @ B


def binv(A: Tensor) -> Tensor:
    """Block inverse of a raw ``[..., b, b]`` tensor; elementwise for 1x1 blocks."""
    return 1.0 / A if A.shape[-1] == 1 else torch.linalg.inv(A)


def psd_sqrt(P: Tensor) -> Tensor:
    """Symmetric square root of a (numerically) positive semi-definite ``[..., b, b]`` tensor;
    negative round-off eigenvalues are clipped to zero. The one PSD square root of the package."""
    P = 0.5 * (P + P.transpose(-1, -2))
    if P.shape[-1] == 1:
        return P.clamp_min(0).sqrt()
    w, V = torch.linalg.eigh(P)
    return (V * w.clamp_min(0).sqrt().unsqueeze(-2)) @ V.transpose(-1, -2)


def as_time(t: Any) -> Tensor:
    """Times as a float64 CPU tensor (python floats, lists and tensors of any dtype accepted)."""
    if isinstance(t, Tensor):
        return t.detach().to(device="cpu", dtype=torch.float64)
    return torch.as_tensor(t, dtype=torch.float64)


class BlockOp:
    """Per-block matrices ``[*lead, n, b, b]`` of a linear operator on the states of ``layout``.

    Args:
        layout: the block structure of the process the operator acts on.
        data: the block matrices; the last three axes must be ``(n_blocks, b, b)`` of ``layout``.
    """

    __slots__ = ("layout", "data")

    def __init__(self, layout: BlockLayout, data: Tensor) -> None:
        n, b = layout.n_blocks, layout.block_size
        if data.dim() < 3 or tuple(data.shape[-3:]) != (n, b, b):
            raise ValueError(f"block operator data has shape {tuple(data.shape)}, expected [..., {n}, {b}, {b}] "
                             f"for {n} block(s) of size {b}")
        self.layout = layout
        self.data = data

    # ------------------------------------------------------------------ construction
    @classmethod
    def eye(cls, layout: BlockLayout, dtype: torch.dtype = torch.float64) -> BlockOp:
        """The identity operator."""
        b = layout.block_size
        return cls(layout, torch.eye(b, dtype=dtype).expand(layout.n_blocks, b, b).clone())

    @classmethod
    def diag(cls, layout: BlockLayout, values: Tensor) -> BlockOp:
        """A block-diagonal operator with diagonal blocks: ``values [..., n, b]`` (or ``[..., n]`` for
        ``b = 1``, e.g. one scale per DCT frequency)."""
        if layout.block_size == 1:
            values = values.unsqueeze(-1)
        return cls(layout, torch.diag_embed(values))

    def dense(self) -> Tensor:
        """The dense state-space matrix ``[D, D]`` (``D = prod(state_shape)``) of a single operator (no
        leading axes); for tests and oracles on small states."""
        if self.lead:
            raise ValueError(f"dense() needs a single operator, got leading shape {self.lead}")
        return self.layout.dense(self.data)

    # ------------------------------------------------------------------ shape and casting
    @property
    def lead(self) -> tuple[int, ...]:
        """The leading (family) shape: ``()`` for one operator."""
        return tuple(self.data.shape[:-3])

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def device(self) -> torch.device:
        return self.data.device

    def to(self, *args: Any, **kwargs: Any) -> BlockOp:
        """Cast like `torch.Tensor.to` (e.g. ``A.to(u)``: ``u``'s dtype and device)."""
        return BlockOp(self.layout, self.data.to(*args, **kwargs))

    def __getitem__(self, index: Any) -> BlockOp:
        """Index the leading axes (``plan_op[i]``, ``C[i, j]``); the block axes stay whole."""
        idx = index if isinstance(index, tuple) else (index,)
        if len(idx) > len(self.lead) or any(k is Ellipsis for k in idx):
            raise IndexError(f"a block operator with leading shape {self.lead} takes at most {len(self.lead)} "
                             f"indices, got {index!r}")
        return BlockOp(self.layout, self.data[idx])

    # ------------------------------------------------------------------ algebra
    def __matmul__(self, other: BlockOp | Tensor) -> BlockOp | Tensor:
        if isinstance(other, BlockOp):
            self._same_layout(other)
            return BlockOp(self.layout, bmm(self.data, other.data))
        if isinstance(other, Tensor):
            return self.apply(other)
        return NotImplemented

    def apply(self, u: Tensor) -> Tensor:
        """The operator applied to a state batch ``u [B, *state_shape]``, in ``u``'s dtype and device.
        A single operator acts on every row; a family with leading shape ``[B]`` acts row by row."""
        lay = self.layout
        lay.check_state(u)
        if self.lead not in ((), (u.shape[0],)):
            raise ValueError(f"a block operator with leading shape {self.lead} cannot act on a batch of "
                             f"{u.shape[0]} states: give one operator or one per sample")
        return lay.from_blocks(lay.apply(lay.view(self.data.to(u)), lay.to_blocks(u)))

    def __add__(self, other: BlockOp) -> BlockOp:
        self._same_layout(other)
        return BlockOp(self.layout, self.data + other.data)

    def __sub__(self, other: BlockOp) -> BlockOp:
        self._same_layout(other)
        return BlockOp(self.layout, self.data - other.data)

    def __neg__(self) -> BlockOp:
        return BlockOp(self.layout, -self.data)

    def __mul__(self, c: float | Tensor) -> BlockOp:
        """Scale by a number, or by one number per leading entry (a tensor of shape `lead`)."""
        if isinstance(c, Tensor) and c.dim():
            c = c.reshape(*c.shape, 1, 1, 1)
        return BlockOp(self.layout, self.data * c)

    __rmul__ = __mul__

    @property
    def T(self) -> BlockOp:
        """The transpose (of every block)."""
        return BlockOp(self.layout, self.data.transpose(-1, -2))

    def inv(self) -> BlockOp:
        """The inverse (of every block)."""
        return BlockOp(self.layout, binv(self.data))

    def sqrt(self) -> BlockOp:
        """The symmetric square root of a positive semi-definite operator (round-off clipped)."""
        return BlockOp(self.layout, psd_sqrt(self.data))

    def sym(self) -> BlockOp:
        """The symmetric part ``(A + A^T) / 2`` (removes round-off asymmetry of covariances)."""
        return BlockOp(self.layout, 0.5 * (self.data + self.data.transpose(-1, -2)))

    def _same_layout(self, other: BlockOp) -> None:
        if not isinstance(other, BlockOp):
            raise TypeError(f"expected a BlockOp, got {type(other).__name__}")
        if other.layout is not self.layout and (other.layout.n_blocks, other.layout.block_size) != (
                self.layout.n_blocks, self.layout.block_size):
            raise ValueError("block operators of different block structures cannot be combined")

    def __repr__(self) -> str:
        return (f"BlockOp(lead={self.lead}, blocks={self.layout.n_blocks}x{self.layout.block_size}x"
                f"{self.layout.block_size}, dtype={self.dtype})")


class ProcessOperators:
    """The quantities of a linear process as float64 `BlockOp`s, each built in one place
    (``process.ops``). Times follow the process's conventions (floats or float64 tensors ``[*S]``;
    the operators then have leading shape ``[*S]``).
    """

    def __init__(self, process: Any) -> None:
        self.process = process
        self.layout: BlockLayout = process.layout

    def _op(self, data: Tensor) -> BlockOp:
        return BlockOp(self.layout, data)

    def F(self, t: Any) -> BlockOp:
        """The drift ``F_t``."""
        return self._op(self.process.F(as_time(t)))

    def GGT(self, t: Any) -> BlockOp:
        """The diffusion ``G_t G_t^T``."""
        return self._op(self.process.GGT(as_time(t)))

    def G(self, t: Any) -> BlockOp:
        """The symmetric PSD square root of ``G_t G_t^T`` (noise injection)."""
        return self.GGT(t).sqrt()

    def Psi(self, t: Any, s: Any) -> BlockOp:
        """The transition ``Psi(t, s)``."""
        return self._op(self.process.psi(as_time(t), as_time(s)))

    def mean(self, t: Any) -> BlockOp:
        """``Psi(t, 0)``: carries the data (lifted to a state) to the mean of ``u_t``."""
        t = as_time(t)
        return self.Psi(t, torch.zeros_like(t))

    def Sigma(self, t: Any) -> BlockOp:
        """The marginal covariance ``Sigma_t`` given the data point."""
        return self._op(self.process.Sigma(as_time(t)))

    def R(self, t: Any) -> BlockOp:
        """gDDIM's square root ``R_t`` of ``Sigma_t``."""
        return self._op(self.process.R(as_time(t)))

    def L(self, t: Any) -> BlockOp:
        """The Cholesky factor ``L_t`` of ``Sigma_t``."""
        return self._op(self.process.L(as_time(t)))

    def K(self, t: Any, parameterization: str = "R") -> BlockOp:
        """``R_t`` or ``L_t`` by name."""
        return self._op(self.process.K(as_time(t), parameterization))

    def score_drift(self, t: Any, parameterization: str = "R") -> BlockOp:
        """``D_t = G_t G_t^T K_t^{-T}``: with ``score = -K_t^{-T} eps`` the reverse-time drift is
        ``F_t u + (1 + lambda^2)/2 D_t eps`` (the probability flow at ``lambda = 0``)."""
        return self.GGT(t) @ self.K(t, parameterization).inv().T

    def eps_change(self, t: Any, source: str, target: str) -> BlockOp:
        """Converts eps from one factor to another: ``eps_target = K_target^T K_source^{-T} eps_source``."""
        return self.K(t, target).T @ self.K(t, source).inv().T
