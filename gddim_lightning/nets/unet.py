"""DDPM++-style UNet backbone for image data (``[B, C, H, W]``).

Longer than 300 lines: the UNet and its building blocks (residual block, attention, down/up sampling)
are one network read top to bottom; the blocks have no use outside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gddim_lightning.nets.embeddings import broadcast_time, build_time_embedding

__all__ = ["UNet", "group_count"]

_SKIP_SCALE = 1.0 / math.sqrt(2.0)


def group_count(channels: int, num_groups: int = 32) -> int:
    """Number of GroupNorm groups for ``channels`` features.

    Returns the largest divisor of ``channels`` that is at most
    ``min(num_groups, channels // 4)`` (and at least 1), so every group holds
    at least four channels when possible, as in DDPM++.

    Args:
        channels: Number of feature channels.
        num_groups: Upper bound on the number of groups.

    Returns:
        A positive divisor of ``channels``.
    """
    limit = max(1, min(int(num_groups), channels // 4))
    for groups in range(limit, 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def _norm(channels: int, num_groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(group_count(channels, num_groups), channels, eps=1e-6)


class _ResBlock(nn.Module):
    """DDPM++ residual block, optionally resampling (BigGAN-style up/down)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        temb_dim: int,
        dropout: float,
        num_groups: int,
        resample: str | None = None,
    ) -> None:
        super().__init__()
        self.resample = resample
        self.norm0 = _norm(in_ch, num_groups)
        self.conv0 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, out_ch)
        self.norm1 = _norm(out_ch, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = F.silu(self.norm0(x))
        h = self.conv0(self._resample(h))
        h = h + self.temb_proj(temb)[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        return (self.skip(self._resample(x)) + h) * _SKIP_SCALE


class _AttnBlock(nn.Module):
    """Single-head spatial self-attention with a GroupNorm in front."""

    def __init__(self, channels: int, num_groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, num_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, 1, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, 1, HW, C]
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return (x + self.proj(out)) * _SKIP_SCALE


class _Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        return self.conv(x)


class _Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """DDPM++-style UNet noise-prediction network.

    ``t`` is embedded (Gaussian Fourier or sinusoidal features of size
    ``base_channels``) and mapped by a two-layer MLP to a ``4 * base_channels``
    conditioning vector. The body is a UNet with ``len(channel_mult)``
    resolution levels: at level ``i`` the feature maps have
    ``base_channels * channel_mult[i]`` channels and size ``H / 2**i``. Each
    level holds ``num_res_blocks`` residual blocks (GroupNorm, SiLU, 3x3 conv,
    time projection, dropout, skip rescaled by ``1/sqrt(2)``) on the way down
    and ``num_res_blocks + 1`` on the way up, fed by UNet skip connections.
    Self-attention is applied wherever the feature-map size (``min(H, W)``
    of the actual input at that level) is in ``attn_resolutions``, and always
    in the middle block. The output layer (GroupNorm, SiLU, 3x3 conv) is
    zero-initialised, so the network outputs zeros at initialisation.

    Attention modules: when ``image_size`` is given, they are built only at
    the levels whose size is in ``attn_resolutions``, so every parameter is
    used. When it is ``None`` the size is not known at construction, so they
    are built at every level (if ``attn_resolutions`` is non-empty) and only
    the ones matching the input size run; the others receive no gradient
    (pass ``image_size`` for DDP without ``find_unused_parameters``).

    Args:
        in_channels: Channels of the input ``u``. For CLD the state stacks
            positions and velocities, so this is twice the data channels.
        out_channels: Channels of the output; defaults to ``in_channels``.
        base_channels: Channels at the first level.
        channel_mult: Channel multiplier per level; ``len(channel_mult) - 1``
            downsamplings, so H and W must be divisible by
            ``2 ** (len(channel_mult) - 1)``.
        num_res_blocks: Residual blocks per level on the way down.
        attn_resolutions: Feature-map sizes at which self-attention is used.
        dropout: Dropout probability inside residual blocks.
        embedding: ``"fourier"`` or ``"sinusoidal"``.
        num_groups: Upper bound on GroupNorm groups (see `group_count`).
        image_size: Expected input size (square); if given, inputs are
            validated against it and unused attention modules are not built.
        resblock_updown: Resample with BigGAN-style residual blocks instead of
            strided conv / nearest-upsample + conv.

    Raises:
        ValueError: For invalid hyper-parameters or an unknown ``embedding``.

    Example:
        >>> net = UNet(1, channel_mult=(1, 2), attn_resolutions=(4,), base_channels=32)
        >>> net(torch.randn(3, 1, 8, 8), 0.5).shape
        torch.Size([3, 1, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.0,
        embedding: str = "fourier",
        num_groups: int = 32,
        image_size: int | None = None,
        resblock_updown: bool = False,
    ) -> None:
        super().__init__()
        channel_mult = tuple(int(m) for m in channel_mult)
        if int(in_channels) < 1 or int(base_channels) < 1:
            raise ValueError(
                f"UNet(in_channels={in_channels}, base_channels={base_channels}): "
                "both must be positive integers."
            )
        if out_channels is not None and int(out_channels) < 1:
            raise ValueError(f"UNet(out_channels={out_channels}): must be positive or None.")
        if not channel_mult or min(channel_mult) < 1:
            raise ValueError(
                f"UNet(channel_mult={channel_mult}): need at least one level and "
                "positive multipliers, e.g. channel_mult=(1, 2, 2)."
            )
        if int(num_res_blocks) < 1:
            raise ValueError(f"UNet(num_res_blocks={num_res_blocks}): must be at least 1.")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"UNet(dropout={dropout}): must be in [0, 1).")
        if int(num_groups) < 1:
            raise ValueError(f"UNet(num_groups={num_groups}): must be at least 1.")
        self.factor = 2 ** (len(channel_mult) - 1)
        if image_size is not None and (int(image_size) < 1 or int(image_size) % self.factor):
            raise ValueError(
                f"UNet(image_size={image_size}) must be a positive multiple of "
                f"2**(len(channel_mult)-1) = {self.factor}; change image_size or channel_mult."
            )
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels) if out_channels is not None else self.in_channels
        self.channel_mult = channel_mult
        self.attn_resolutions = tuple(int(r) for r in attn_resolutions)
        self.image_size = int(image_size) if image_size is not None else None
        ch, groups = int(base_channels), int(num_groups)
        temb_dim = 4 * ch

        self.time_embed = build_time_embedding(embedding, ch)
        self.time_mlp = nn.Sequential(
            nn.Linear(ch, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim)
        )

        def has_attn(level: int) -> bool:
            if not self.attn_resolutions:
                return False
            if self.image_size is None:
                return True
            return self.image_size // 2**level in self.attn_resolutions

        def res(i: int, o: int, resample: str | None = None) -> _ResBlock:
            return _ResBlock(i, o, temb_dim, float(dropout), groups, resample)

        self.conv_in = nn.Conv2d(self.in_channels, ch, 3, padding=1)
        skip_channels = [ch]
        cur = ch
        self.down_blocks = nn.ModuleList()
        self.down_attn = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(int(num_res_blocks)):
                blocks.append(res(cur, ch * mult))
                cur = ch * mult
                attns.append(_AttnBlock(cur, groups) if has_attn(level) else nn.Identity())
                skip_channels.append(cur)
            self.down_blocks.append(blocks)
            self.down_attn.append(attns)
            if level < len(channel_mult) - 1:
                down = res(cur, cur, "down") if resblock_updown else _Downsample(cur)
                self.downsample.append(down)
                skip_channels.append(cur)

        self.mid_block1 = res(cur, cur)
        self.mid_attn = _AttnBlock(cur, groups)
        self.mid_block2 = res(cur, cur)

        self.up_blocks = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            blocks = nn.ModuleList()
            for _ in range(int(num_res_blocks) + 1):
                blocks.append(res(cur + skip_channels.pop(), ch * channel_mult[level]))
                cur = ch * channel_mult[level]
            self.up_blocks.append(blocks)
            self.up_attn.append(_AttnBlock(cur, groups) if has_attn(level) else nn.Identity())
            if level > 0:
                self.upsample.append(res(cur, cur, "up") if resblock_updown else _Upsample(cur))
        assert not skip_channels

        self.out_norm = _norm(cur, groups)
        self.out_conv = nn.Conv2d(cur, self.out_channels, 3, padding=1)
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier-uniform (DDPM++ fan-avg) weights, zero biases, zero output conv."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    def _check_input(self, u: Tensor) -> None:
        if u.ndim != 4:
            raise ValueError(
                f"UNet expects input of shape [B, C, H, W]; got shape {tuple(u.shape)}. "
                "Add the missing batch/channel dimensions or use MLP for flat data."
            )
        c, h, w = u.shape[1:]
        if c != self.in_channels:
            raise ValueError(
                f"UNet(in_channels={self.in_channels}) got input with {c} channels; for CLD "
                "the state has 2x the data channels (positions and velocities), so set "
                f"in_channels to 2 * data channels there, and in_channels={c} otherwise."
            )
        if h % self.factor or w % self.factor:
            raise ValueError(
                f"UNet with channel_mult={self.channel_mult} downsamples "
                f"{len(self.channel_mult) - 1} times, so H and W must be divisible by "
                f"{self.factor}; got {h}x{w}. Pad/crop the input or use a shorter channel_mult."
            )
        if self.image_size is not None and (h, w) != (self.image_size, self.image_size):
            raise ValueError(
                f"UNet(image_size={self.image_size}) got input of size {h}x{w}; "
                f"set image_size={h if h == w else None} or resize the data."
            )

    def _attend(self, attn: nn.Module, h: Tensor) -> Tensor:
        if isinstance(attn, _AttnBlock) and min(h.shape[-2:]) in self.attn_resolutions:
            return attn(h)
        return h

    def forward(self, u: Tensor, t: Tensor | float) -> Tensor:
        """Predict the noise ``eps`` for state ``u`` at time ``t``.

        Args:
            u: Input of shape ``[B, in_channels, H, W]``.
            t: Continuous time in ``[0, T]``: a float, a 0-dim tensor or a
                tensor of shape ``[B]``.

        Returns:
            Tensor of shape ``[B, out_channels, H, W]``.

        Raises:
            ValueError: If ``u`` is not 4-D, has the wrong number of channels,
                a size not divisible by ``2**(len(channel_mult)-1)`` or not
                equal to ``image_size``, or if ``t`` does not match the batch.
        """
        self._check_input(u)
        t = broadcast_time(t, u.shape[0], device=u.device)
        temb = F.silu(self.time_mlp(self.time_embed(t).to(self.conv_in.weight.dtype)))

        h = self.conv_in(u)
        skips = [h]
        for level, (blocks, attns) in enumerate(zip(self.down_blocks, self.down_attn)):
            for block, attn in zip(blocks, attns):
                h = self._attend(attn, block(h, temb))
                skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h, temb)
                skips.append(h)

        h = self.mid_block2(self.mid_attn(self.mid_block1(h, temb)), temb)

        for i, (blocks, attn) in enumerate(zip(self.up_blocks, self.up_attn)):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), temb)
            h = self._attend(attn, h)
            if i < len(self.upsample):
                h = self.upsample[i](h, temb)

        return self.out_conv(F.silu(self.out_norm(h)))
