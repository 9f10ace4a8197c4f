"""Pictures of samples for TensorBoard and the prediction writer: image grids and 2-D scatter plots."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["image_grid", "points_image"]


def image_grid(images: Tensor, nrow: int | None = None, padding: int = 1, pad_value: float = 1.0,
               min_size: int = 32) -> Tensor:
    """Tile images in ``[-1, 1]`` into one ``[C, H, W]`` image in ``[0, 1]`` (torch only).

    Args:
        images: ``[N, C, h, w]`` in ``[-1, 1]`` (clamped). ``C`` must be 1 or 3; other channel counts
            show their first channel.
        nrow: images per row; default ``ceil(sqrt(N))`` (a square-ish grid).
        padding: pixels between tiles (after upscaling).
        pad_value: value of the padding in ``[0, 1]``.
        min_size: small images are upscaled (nearest) by an integer factor until ``h >= min_size``.

    Returns:
        float32 ``[C, H, W]`` in ``[0, 1]``.
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"image_grid needs a non-empty [N, C, H, W] tensor, got shape {tuple(images.shape)}")
    x = images.detach().float().cpu()
    if x.shape[1] not in (1, 3):
        x = x[:, :1]
    x = ((x + 1.0) / 2.0).clamp(0.0, 1.0)
    factor = max(1, math.ceil(min_size / x.shape[2]))
    if factor > 1:
        x = x.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
    n, c, h, w = x.shape
    ncol = int(nrow) if nrow else math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncol)
    out = torch.full((c, nrows * (h + padding) + padding, ncol * (w + padding) + padding), float(pad_value))
    for k in range(n):
        i, j = divmod(k, ncol)
        top, left = padding + i * (h + padding), padding + j * (w + padding)
        out[:, top : top + h, left : left + w] = x[k]
    return out


def _matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _limits(points: Tensor) -> tuple[float, float, float, float]:
    """Square plot limits from the 0.5 / 99.5 % quantiles of both coordinates, 10 % margin."""
    q = torch.quantile(points[:, :2].double(), torch.tensor([0.005, 0.995], dtype=torch.float64), dim=0)
    lo, hi = float(q[0].min()), float(q[1].max())
    margin = 0.1 * max(hi - lo, 1e-6)
    return lo - margin, hi + margin, lo - margin, hi + margin


def points_image(samples: Tensor, real: Tensor | None = None, size: int = 320,
                 use_matplotlib: bool | None = None) -> Tensor:
    """Render a 2-D point cloud (first two coordinates) as a ``[C, H, W]`` image in ``[0, 1]``.

    With matplotlib: a scatter plot, generated points in blue over real points in grey (RGB,
    ``[3, size, size]``). Without: a log-scaled 2-D histogram of the generated points made with
    torch (grey, ``[1, 128, 128]``, y axis up). Plot limits come from ``real`` when given.

    Args:
        samples: ``[N, d]`` generated points, ``d >= 2``.
        real: optional ``[M, d]`` reference points.
        size: side of the matplotlib image in pixels.
        use_matplotlib: force (True) or avoid (False) matplotlib; default: if importable.

    Returns:
        float32 image ``[C, H, W]`` in ``[0, 1]``.
    """
    pts = samples.detach().reshape(samples.shape[0], -1).double().cpu()
    if pts.shape[1] < 2:
        pts = torch.cat([pts, torch.zeros_like(pts)], dim=1)
    ref = real.detach().reshape(real.shape[0], -1).double().cpu() if real is not None else None
    if ref is not None and ref.shape[1] < 2:
        ref = torch.cat([ref, torch.zeros_like(ref)], dim=1)
    x0, x1, y0, y1 = _limits(ref if ref is not None else pts)
    if use_matplotlib is None:
        use_matplotlib = _matplotlib_available()
    if use_matplotlib:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        dpi = 80
        fig = Figure(figsize=(size / dpi, size / dpi), dpi=dpi)
        canvas = FigureCanvasAgg(fig)
        ax = fig.add_axes((0.08, 0.08, 0.9, 0.9))
        if ref is not None:
            r = ref[: max(pts.shape[0], 1)]
            ax.scatter(r[:, 0].numpy(), r[:, 1].numpy(), s=1.5, c="0.7", linewidths=0)
        ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=1.5, c="tab:blue", linewidths=0)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.tick_params(labelsize=6)
        canvas.draw()
        rgba = torch.frombuffer(bytearray(canvas.buffer_rgba()), dtype=torch.uint8)
        h, w = canvas.get_width_height()[::-1]
        return rgba.reshape(h, w, 4)[..., :3].permute(2, 0, 1).float() / 255.0
    bins = 128
    ix = ((pts[:, 0] - x0) / (x1 - x0) * bins).floor().long()
    iy = ((pts[:, 1] - y0) / (y1 - y0) * bins).floor().long()
    keep = (ix >= 0) & (ix < bins) & (iy >= 0) & (iy < bins)
    counts = torch.bincount(iy[keep] * bins + ix[keep], minlength=bins * bins).reshape(bins, bins).float()
    img = torch.log1p(counts)
    img = img / img.max().clamp_min(1e-12)
    return img.flip(0).unsqueeze(0)
