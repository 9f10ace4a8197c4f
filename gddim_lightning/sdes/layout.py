"""How a state tensor maps onto the blocks of a block-diagonal linear process.

Every process in the package is block-diagonal in a fixed orthogonal basis: VP is one scalar
block shared by every coordinate, CLD one 2x2 block on each (x, v) pair, BDM one scalar per
2-D DCT frequency. A [`BlockLayout`][gddim_lightning.sdes.layout.BlockLayout] owns that
structure once, so samplers and oracles never special-case a process.

Shapes used throughout:

* data ``x``: ``[B, *data_shape]`` (e.g. ``[B, 2]`` points or ``[B, C, H, W]`` images);
* state ``u``: ``[B, b * data_shape[0], *data_shape[1:]]`` -- the ``b`` block coordinates are
  stacked along the first data axis (CLD images have ``2C`` channels: x then v);
* block view ``y``: ``[B, b, *data_shape]`` in the process basis;
* block coefficients: ``[..., n, b, b]`` float64 with ``n`` distinct blocks, viewed as
  ``[..., b, b, *block_grid]`` where ``block_grid`` broadcasts against ``data_shape``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .dct import dct2, idct2

_BLOCKS = ("shared", "per_element", "per_frequency")
_BASES = ("identity", "dct")


class BlockLayout:
    """Block structure of a linear process over states of a given data shape.

    Args:
        data_shape: shape of one data sample, e.g. ``(2,)`` or ``(1, 8, 8)``.
        block_size: ``b``, the size of each block (1 for VP/BDM, 2 for CLD).
        blocks: ``"shared"`` (one block for all coordinates), ``"per_element"`` (one block per
            data coordinate) or ``"per_frequency"`` (one per 2-D DCT frequency, shared by channels).
        basis: ``"identity"`` or ``"dct"`` (orthonormal 2-D DCT-II over the last two axes).
        data_index: which block coordinate carries the data (CLD: 0 is x, 1 is v).
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        block_size: int = 1,
        blocks: str = "shared",
        basis: str = "identity",
        data_index: int = 0,
    ) -> None:
        data_shape = tuple(int(d) for d in data_shape)
        if not data_shape or any(d < 1 for d in data_shape):
            raise ValueError(f"data_shape must be a non-empty tuple of positive sizes, got {data_shape}")
        if blocks not in _BLOCKS:
            raise ValueError(f"blocks={blocks!r} is not one of {_BLOCKS}")
        if basis not in _BASES:
            raise ValueError(f"basis={basis!r} is not one of {_BASES}")
        if (blocks == "per_frequency" or basis == "dct") and len(data_shape) != 3:
            raise ValueError(
                f"a DCT basis needs image data of shape (C, H, W); got data_shape={data_shape}"
            )
        if not 0 <= data_index < block_size:
            raise ValueError(f"data_index={data_index} must lie in [0, block_size={block_size})")
        self.data_shape = data_shape
        self.block_size = int(block_size)
        self.blocks = blocks
        self.basis = basis
        self.data_index = data_index
        if blocks == "shared":
            self.block_grid = (1,) * len(data_shape)
        elif blocks == "per_element":
            self.block_grid = data_shape
        else:
            self.block_grid = (1,) + data_shape[1:]
        self.n_blocks = math.prod(self.block_grid)

    @property
    def state_shape(self) -> tuple[int, ...]:
        """Shape of one state sample (the ``b`` coordinates stacked on the first data axis)."""
        return (self.block_size * self.data_shape[0],) + self.data_shape[1:]

    @property
    def state_dim(self) -> int:
        return math.prod(self.state_shape)

    def check_state(self, u: Tensor, name: str = "u") -> None:
        """Raise a clear error when ``u`` is not a batch of states."""
        if tuple(u.shape[1:]) != self.state_shape:
            raise ValueError(
                f"{name} has shape {tuple(u.shape)}, expected [batch, *{self.state_shape}] "
                f"(data_shape={self.data_shape}, {self.block_size} block coordinate(s) per element)"
            )

    def to_blocks(self, u: Tensor) -> Tensor:
        """State ``[B, *state_shape]`` -> block view ``[B, b, *data_shape]`` in the basis."""
        y = u.reshape(u.shape[0], self.block_size, *self.data_shape)
        return dct2(y) if self.basis == "dct" else y

    def from_blocks(self, y: Tensor) -> Tensor:
        """Block view ``[B, b, *data_shape]`` -> state ``[B, *state_shape]``."""
        if self.basis == "dct":
            y = idct2(y)
        return y.reshape(y.shape[0], *self.state_shape)

    def view(self, A: Tensor) -> Tensor:
        """Coefficients ``[..., n, b, b]`` -> ``[..., b, b, *block_grid]`` ready for `apply`."""
        lead = A.shape[:-3]
        b = self.block_size
        A = A.reshape(*lead, *self.block_grid, b, b)
        nd = len(self.block_grid)
        perm = list(range(len(lead))) + [len(lead) + nd, len(lead) + nd + 1]
        perm += [len(lead) + k for k in range(nd)]
        return A.permute(*perm)

    def apply(self, A: Tensor, y: Tensor) -> Tensor:
        """Block matrix-vector product.

        Args:
            A: viewed coefficients ``[b, b, *block_grid]`` (shared by the batch) or
                ``[B, b, b, *block_grid]`` (one per sample), see `view`.
            y: block view ``[B, b, *data_shape]``.

        Returns:
            ``[B, b, *data_shape]``.
        """
        if self.block_size == 1:
            return (A[0] if A.dim() == y.dim() else A[:, 0]) * y
        return (A * y.unsqueeze(1)).sum(2)

    def lift(self, x: Tensor) -> Tensor:
        """Data ``[B, *data_shape]`` -> state with ``x`` in the data coordinate, zeros elsewhere."""
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"data has shape {tuple(x.shape)}, expected [batch, *{self.data_shape}]")
        y = x.new_zeros(x.shape[0], self.block_size, *self.data_shape)
        y[:, self.data_index] = x
        return y.reshape(x.shape[0], *self.state_shape)

    def project(self, u: Tensor) -> Tensor:
        """State ``[B, *state_shape]`` -> its data coordinate ``[B, *data_shape]``."""
        return u.reshape(u.shape[0], self.block_size, *self.data_shape)[:, self.data_index]

    def dense(self, A: Tensor) -> Tensor:
        """Dense state-space matrix ``[D, D]`` of block coefficients ``[n, b, b]`` (tests, oracles).

        ``D = prod(state_shape)``; only meant for small states.
        """
        D = self.state_dim
        eye = torch.eye(D, dtype=A.dtype, device=A.device).reshape(D, *self.state_shape)
        cols = self.from_blocks(self.apply(self.view(A), self.to_blocks(eye)))
        return cols.reshape(D, D).T
