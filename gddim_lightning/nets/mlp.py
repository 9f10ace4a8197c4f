"""Residual MLP backbone with FiLM time conditioning, for flat (toy) data."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gddim_lightning.nets.embeddings import broadcast_time, build_time_embedding

__all__ = ["ACTIVATIONS", "MLP", "build_activation"]

#: Names accepted by the ``activation`` argument.
ACTIVATIONS: tuple[str, ...] = ("silu", "gelu", "relu", "tanh", "softplus")


def build_activation(name: str) -> nn.Module:
    """Build an activation module from its name.

    Args:
        name: One of `ACTIVATIONS` (case-insensitive).

    Returns:
        A fresh activation module.

    Raises:
        ValueError: If ``name`` is unknown.
    """
    table = {
        "silu": nn.SiLU,
        "gelu": nn.GELU,
        "relu": nn.ReLU,
        "tanh": nn.Tanh,
        "softplus": nn.Softplus,
    }
    key = str(name).lower()
    if key not in table:
        raise ValueError(
            f"activation={name!r} is not supported; use one of {list(ACTIVATIONS)}."
        )
    return table[key]()


class _FiLMBlock(nn.Module):
    """Pre-norm residual block ``x + W2 act(FiLM(W1 act(LN(x)), temb))``."""

    def __init__(self, hidden: int, temb_dim: int, activation: str) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.act1 = build_activation(activation)
        self.fc1 = nn.Linear(hidden, hidden)
        self.film = nn.Linear(temb_dim, 2 * hidden)
        self.act2 = build_activation(activation)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.fc1(self.act1(self.norm(x)))
        scale, shift = self.film(temb).chunk(2, dim=1)
        h = h * (1.0 + scale) + shift
        h = self.fc2(self.act2(h))
        return x + h


class MLP(nn.Module):
    """Residual MLP noise-prediction network for flat data.

    Architecture: ``t`` is embedded (sinusoidal or Fourier features) and passed
    through a two-layer MLP to a conditioning vector ``temb``. The input is
    projected to ``hidden`` features and ``temb`` is added to it; then
    ``depth`` pre-norm residual blocks follow, each modulating its hidden
    layer with a FiLM scale/shift computed from ``temb``. A final
    LayerNorm + activation + linear layer (small, non-zero init) gives the
    output.

    Args:
        in_dim: Feature size of the input ``u`` (for CLD, the full state size:
            twice the data dimension).
        out_dim: Feature size of the output; defaults to ``in_dim``.
        hidden: Width of the hidden layers.
        depth: Number of residual blocks (at least 1).
        time_dim: Size of the raw time embedding.
        embedding: ``"sinusoidal"`` or ``"fourier"``.
        activation: One of `ACTIVATIONS`.

    Raises:
        ValueError: For non-positive sizes, an unknown ``embedding`` or an
            unknown ``activation``.

    Example:
        >>> net = MLP(in_dim=2)
        >>> net(torch.randn(8, 2), torch.rand(8)).shape
        torch.Size([8, 2])
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int | None = None,
        hidden: int = 256,
        depth: int = 3,
        time_dim: int = 64,
        embedding: str = "sinusoidal",
        activation: str = "silu",
    ) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("hidden", hidden), ("depth", depth)):
            if int(value) < 1:
                raise ValueError(f"MLP({name}={value}): {name} must be a positive integer.")
        if out_dim is not None and int(out_dim) < 1:
            raise ValueError(f"MLP(out_dim={out_dim}): out_dim must be positive or None.")
        if int(time_dim) < 2:
            raise ValueError(f"MLP(time_dim={time_dim}): time_dim must be at least 2.")
        self.in_dim = int(in_dim)
        self.out_dim = int(out_dim) if out_dim is not None else self.in_dim
        self.hidden = int(hidden)
        self.depth = int(depth)

        self.time_embed = build_time_embedding(embedding, int(time_dim))
        self.time_mlp = nn.Sequential(
            nn.Linear(int(time_dim), self.hidden),
            build_activation(activation),
            nn.Linear(self.hidden, self.hidden),
        )
        self.time_act = build_activation(activation)
        self.in_proj = nn.Linear(self.in_dim, self.hidden)
        self.temb_in = nn.Linear(self.hidden, self.hidden)
        self.blocks = nn.ModuleList(
            _FiLMBlock(self.hidden, self.hidden, activation) for _ in range(self.depth)
        )
        self.out_norm = nn.LayerNorm(self.hidden)
        self.out_act = build_activation(activation)
        self.out = nn.Linear(self.hidden, self.out_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier init with zero biases; small (not zero) output and FiLM layers."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.out.weight.mul_(0.1)
            for block in self.blocks:
                block.film.weight.mul_(0.1)

    def forward(self, u: Tensor, t: Tensor | float) -> Tensor:
        """Predict the noise ``eps`` for state ``u`` at time ``t``.

        Args:
            u: Input of shape ``[B, in_dim]``.
            t: Continuous time in ``[0, T]``: a float, a 0-dim tensor or a
                tensor of shape ``[B]``.

        Returns:
            Tensor of shape ``[B, out_dim]`` with the dtype of the network.

        Raises:
            ValueError: If ``u`` is not ``[B, in_dim]`` or ``t`` has a batch
                size different from ``B``.
        """
        if u.ndim != 2 or u.shape[1] != self.in_dim:
            raise ValueError(
                f"MLP(in_dim={self.in_dim}) expects input of shape [B, {self.in_dim}]; "
                f"got {tuple(u.shape)}. For images use the UNet backbone (gddim_lightning.nets.UNet); "
                "for flat data in_dim is the number of features (DiffusionModule sets it; for CLD "
                "the state has 2x the data dimension)."
            )
        t = broadcast_time(t, u.shape[0], device=u.device)
        dtype = self.in_proj.weight.dtype
        temb = self.time_act(self.time_mlp(self.time_embed(t).to(dtype)))
        h = self.in_proj(u) + self.temb_in(temb)
        for block in self.blocks:
            h = block(h, temb)
        return self.out(self.out_act(self.out_norm(h)))
