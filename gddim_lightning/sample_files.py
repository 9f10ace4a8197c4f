"""The files of a ``predict`` output folder: names, formats, ownership, reading them back.

See `gddim_lightning.writer` for the layout. Everything here works on paths and arrays, without
Lightning: what `SampleWriter` writes (`save_png`, `scatter_png`), what an earlier run owns
(`owned_outputs`, from its ``meta.json``), whether a folder may be written (`check_out_dir`), how the
complete outputs replace the earlier ones (`swap_in`), and `load_samples` to read the samples back.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .files import atomic_write

__all__ = ["FORMATS", "OUTPUT_RE", "check_out_dir", "find_outputs", "load_samples", "owned_outputs",
           "parse_formats", "save_png", "scatter_png", "sha256", "swap_in", "to_uint8", "version"]

FORMATS: tuple[str, ...] = ("npz", "png", "grid")
OUTPUT_RE = re.compile(r"^(meta\.json|grid\.png|samples_rank\d+\.npz|\d{6,}\.png)$")


def find_outputs(out_dir: str | os.PathLike) -> list[Path]:
    """Files in ``out_dir`` that a `SampleWriter` writes (meta, shards, grid, per-seed PNGs), sorted."""
    d = Path(out_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if OUTPUT_RE.match(p.name) and p.is_file())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _own_meta(path: Path) -> dict[str, Any] | None:
    """``meta.json`` written by this writer (it lists its outputs), else ``None``."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("outputs"), dict) or \
            "gddim_lightning" not in (meta.get("versions") or {}):
        return None
    return meta


def owned_outputs(out_dir: str | os.PathLike) -> list[Path]:
    """The files of ``out_dir`` an earlier predict run recorded in its ``meta.json`` as its outputs and
    that are unchanged since (same SHA-256), ``meta.json`` included: the only files ``overwrite`` may
    replace or remove."""
    d = Path(out_dir)
    meta = _own_meta(d / "meta.json")
    if meta is None:
        return []
    owned = [d / "meta.json"]
    for name, digest in meta["outputs"].items():
        p = d / str(name)
        if p.parent == d and p.is_file() and sha256(p) == digest:
            owned.append(p)
    return sorted(owned)


def load_samples(out_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Concatenates every ``samples_rank*.npz`` of ``out_dir``, sorted by seed.

    Returns:
        ``(samples, seeds)``: float32 ``[N, *data_shape]`` and int64 ``[N]``.
    """
    shards = sorted(Path(out_dir).glob("samples_rank*.npz"))
    if not shards:
        raise FileNotFoundError(f"no samples_rank*.npz in {str(out_dir)!r}; run predict with this out_dir first")
    xs, ss = [], []
    for p in shards:
        with np.load(p) as z:
            xs.append(z["samples"])
            ss.append(z["seeds"])
    x, s = np.concatenate(xs), np.concatenate(ss)
    order = np.argsort(s, kind="stable")
    return x[order], s[order]


def to_uint8(images: Tensor | np.ndarray) -> np.ndarray:
    """Maps images ``[..., C, H, W]`` in [-1, 1] to uint8 ``[..., H, W, C]`` (clipped, rounded)."""
    x = torch.as_tensor(images, dtype=torch.float32)
    x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def _pil_image(img: np.ndarray):  # [H, W, C] uint8
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(img[..., 0] if img.shape[-1] == 1 else img))


def save_png(path: Path, img: np.ndarray) -> None:
    atomic_write(path, lambda f: _pil_image(img).save(f, format="PNG"))


def scatter_png(path: Path, points: np.ndarray, title: str) -> bool:
    """Scatter (or, for 1-D data, histogram) PNG via matplotlib; False if matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(5, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if points.shape[1] >= 2:
        ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5, linewidths=0)
        ax.set_aspect("equal", adjustable="datalim")
    else:
        ax.hist(points[:, 0], bins=100)
    ax.set_title(title, fontsize=9)
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    return True


def _names(paths: Sequence[Path]) -> str:
    return ", ".join(p.name for p in paths[:4]) + (", ..." if len(paths) > 4 else "")


def parse_formats(fmt: str | Sequence[str]) -> tuple[str, ...]:
    items = fmt.split(",") if isinstance(fmt, str) else list(fmt)
    items = [str(s).strip().lower() for s in items if str(s).strip()]
    bad = [s for s in items if s not in FORMATS]
    if bad:
        raise ValueError(f"predict.format: unknown format(s) {bad}; choose from {list(FORMATS)} "
                         "(a list or a comma-separated string, e.g. 'npz,png')")
    return tuple(s for s in FORMATS if s in items or s == "npz")  # npz shards are always written


def version(dist: str) -> str:
    """The installed version of the distribution ``dist``, or ``"unknown"``."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _installed

    try:
        return _installed(dist)
    except PackageNotFoundError:
        return "unknown"


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Raises FileExistsError if ``out_dir`` is a file, is not writable, holds outputs and ``overwrite``
    is False, or holds files under output names that no earlier run recorded."""
    where = f"predict.out_dir={str(out_dir)!r}"
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{where} is a file, not a folder; choose a folder for --predict.out_dir")
    existing = next((p for p in [out_dir, *out_dir.absolute().parents] if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise FileExistsError(f"{where}: {str(existing)!r} is not writable; choose another --predict.out_dir")
    found = find_outputs(out_dir)
    if not found:
        return
    names = _names(found)
    if not overwrite:
        raise FileExistsError(
            f"{where} already holds samples of an earlier run ({len(found)} file(s): {names}); refusing to "
            "overwrite them. Choose another --predict.out_dir, or pass --predict.overwrite true "
            "(SampleWriter(overwrite=True)) to replace the files that run recorded in its meta.json."
        )
    owned = set(owned_outputs(out_dir))
    foreign = [p for p in found if p not in owned]
    if foreign:
        raise FileExistsError(
            f"{where} holds {len(foreign)} file(s) under output names that no earlier predict run recorded in "
            f"its meta.json, or that changed since ({_names(foreign)}); predict never overwrites or deletes "
            "them, even with --predict.overwrite true. Move them away or choose another --predict.out_dir."
        )


def swap_in(out_dir: Path, staging: Path, new_files: list[Path]) -> None:
    """Moves the complete new outputs from ``staging`` into ``out_dir`` (``meta.json`` last), after
    removing the earlier run's recorded outputs that the new run does not replace; then removes
    ``staging``. A file this writer did not write is never overwritten (FileExistsError)."""
    names = {p.name for p in new_files} | {"meta.json"}
    owned = owned_outputs(out_dir)
    foreign = [p for p in find_outputs(out_dir) if p not in set(owned) and p.name in names]
    if foreign:  # appeared while sampling: never overwrite a file this writer did not write
        raise FileExistsError(
            f"files appeared in predict.out_dir={str(out_dir)!r} while sampling ({_names(foreign)}); they "
            f"are kept, and the new outputs stay in {str(staging)!r}")
    for p in owned:
        if p.name not in names:
            p.unlink()
    for p in [*new_files, staging / "meta.json"]:  # meta.json last: it vouches for the rest
        os.replace(p, out_dir / p.name)
    shutil.rmtree(staging, ignore_errors=True)
