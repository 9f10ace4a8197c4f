"""Time embeddings shared by the network backbones.

Every backbone maps ``(u, t) -> eps`` where ``t`` is a continuous time in
``[0, T]`` (``T = 1`` for the processes shipped with the package). The modules
here turn ``t`` into a feature vector; the backbones then push that vector
through a small MLP of their own.

Two embeddings are provided:

* `SinusoidalEmbedding`: the fixed transformer-style ``sin``/``cos``
  features of ``scale * t`` (DDPM). ``scale = 1000`` maps ``t in [0, 1]`` onto
  the range of the discrete DDPM step index.
* `FourierEmbedding`: Gaussian random Fourier features (NCSN++/DDPM++).
  The random frequencies are a frozen buffer drawn from a fixed seed, so two
  instances are identical and checkpoints stay interchangeable.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "EMBEDDINGS",
    "FourierEmbedding",
    "SinusoidalEmbedding",
    "broadcast_time",
    "build_time_embedding",
]

#: Names accepted by the ``embedding`` argument of the backbones.
EMBEDDINGS: tuple[str, ...] = ("fourier", "sinusoidal")

#: Seed of the generator that draws the Fourier frequencies.
_FOURIER_SEED = 20220617


def broadcast_time(
    t: Tensor | float,
    batch_size: int,
    device: torch.device | str | None = None,
) -> Tensor:
    """Broadcast a time argument to one float32 value per batch element.

    Args:
        t: Continuous time in ``[0, T]``: a python number, a 0-dim tensor, a
            one-element tensor, or a tensor with exactly ``batch_size``
            elements (shape ``[B]``; ``[B, 1]`` is flattened).
        batch_size: Batch size ``B`` of the network input.
        device: Device of the result; defaults to the device of ``t`` (CPU
            for python numbers).

    Returns:
        Tensor of shape ``[B]`` and dtype ``float32``.

    Raises:
        ValueError: If ``t`` has neither one nor ``batch_size`` elements.
    """
    t = torch.as_tensor(t, device=device)
    if device is not None and t.device != torch.device(device):
        t = t.to(device)
    t = t.to(torch.float32)
    if t.numel() == 1:
        return t.reshape(1).expand(batch_size)
    if t.numel() != batch_size:
        raise ValueError(
            f"t has shape {tuple(t.shape)} ({t.numel()} elements) but the batch has "
            f"{batch_size} elements; pass t as a float, a 0-dim tensor or a tensor "
            f"of shape [B] = [{batch_size}]."
        )
    return t.reshape(batch_size)



def _check_dim(owner: str, dim: int) -> int:
    """``dim`` of a time embedding, or a ValueError: it must be at least 2."""
    if dim < 2:
        raise ValueError(f"{owner}(dim={dim}): dim must be at least 2.")
    return dim

class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding of ``scale * t``.

    Frequencies are geometric between ``1`` and ``1 / 10000`` as in DDPM. The
    first half of the output holds the ``sin`` features, the second half the
    ``cos`` features; an odd ``dim`` is zero-padded by one column.

    Args:
        dim: Output feature size (at least 2).
        scale: Multiplier applied to ``t`` before the embedding. ``1000``
            matches the DDPM step index for ``t in [0, 1]``.

    Raises:
        ValueError: If ``dim < 2``.
    """

    def __init__(self, dim: int, scale: float = 1000.0) -> None:
        super().__init__()
        self.dim, self.scale = _check_dim("SinusoidalEmbedding", dim), float(scale)
        half = dim // 2
        exponent = torch.arange(half, dtype=torch.float32) / max(half - 1, 1)
        freqs = torch.exp(-math.log(10000.0) * exponent)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: Tensor | float) -> Tensor:
        """Embed the times.

        Args:
            t: Times, a number, 0-dim tensor or tensor of shape ``[B]``.

        Returns:
            Float32 tensor of shape ``[B, dim]`` (``B = 1`` for a scalar ``t``).
        """
        t = torch.as_tensor(t, device=self.freqs.device).to(torch.float32).reshape(-1)
        args = (self.scale * t)[:, None] * self.freqs[None, :]
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
        if self.dim % 2:
            emb = nn.functional.pad(emb, (0, 1))
        return emb

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale}"


class FourierEmbedding(nn.Module):
    """Gaussian random Fourier features of ``t`` (NCSN++ / DDPM++).

    Computes ``[sin(2 pi W t), cos(2 pi W t)]`` with ``W ~ N(0, scale^2)``.
    ``W`` is a frozen (non-trainable) buffer drawn from a dedicated
    `torch.Generator` with a fixed seed, so it does not depend on (or
    consume) the global RNG state and every instance of a given ``dim`` and
    ``scale`` is identical. An odd ``dim`` is zero-padded by one column.

    Args:
        dim: Output feature size (at least 2).
        scale: Standard deviation of the random frequencies. ``16`` is the
            NCSN++ value and suits ``t in [0, 1]``.

    Raises:
        ValueError: If ``dim < 2``.
    """

    def __init__(self, dim: int, scale: float = 16.0) -> None:
        super().__init__()
        self.dim, self.scale = _check_dim("FourierEmbedding", dim), float(scale)
        generator = torch.Generator().manual_seed(_FOURIER_SEED)
        weight = torch.randn(dim // 2, generator=generator, dtype=torch.float32) * self.scale
        self.register_buffer("weight", weight)

    def forward(self, t: Tensor | float) -> Tensor:
        """Embed the times.

        Args:
            t: Times, a number, 0-dim tensor or tensor of shape ``[B]``.

        Returns:
            Float32 tensor of shape ``[B, dim]`` (``B = 1`` for a scalar ``t``).
        """
        t = torch.as_tensor(t, device=self.weight.device).to(torch.float32).reshape(-1)
        args = (2.0 * math.pi) * t[:, None] * self.weight.float()[None, :]
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
        if self.dim % 2:
            emb = nn.functional.pad(emb, (0, 1))
        return emb

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale}"


def build_time_embedding(name: str, dim: int) -> nn.Module:
    """Build a time embedding from its name, with its default scale.

    Args:
        name: ``"fourier"`` or ``"sinusoidal"`` (case-insensitive).
        dim: Output feature size.

    Returns:
        The embedding module, mapping ``t`` of shape ``[B]`` to ``[B, dim]``.

    Raises:
        ValueError: If ``name`` is not one of `EMBEDDINGS`.
    """
    key = str(name).lower()
    if key == "fourier":
        return FourierEmbedding(dim)
    if key == "sinusoidal":
        return SinusoidalEmbedding(dim)
    raise ValueError(
        f"embedding={name!r} is not supported; use one of {list(EMBEDDINGS)}."
    )
