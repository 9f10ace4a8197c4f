"""`SampleWriter`: writes what ``predict`` samples to a folder, never over earlier outputs.

Layout of ``out_dir`` after ``predict`` (``W`` ranks):

* ``samples_rank{r}.npz`` for ``r < W`` (always): ``samples`` float32 ``[n_r, *data_shape]`` and
  ``seeds`` int64 ``[n_r]``, sorted by seed. Rank ``r`` writes its own shard; the union of the
  shards' seeds is the requested seed range. Load them all with `load_samples`.
* ``{seed:06d}.png`` per sample (``format`` contains ``"png"``, images only), [-1, 1] mapped to uint8.
* ``grid.png`` (``format`` contains ``"grid"``): the first ``grid_size`` samples by seed as an image
  grid; for 1-D data (2-D points) a scatter plot of all samples (needs matplotlib).
* ``meta.json`` (rank 0, last): checkpoint, sampler, NFE, seeds, world size, versions, time taken.

Every file is written to a temporary file in ``out_dir`` and moved into place with ``os.replace``,
so a crash never leaves a half-written output under its final name. A folder that already holds
outputs of this writer is refused before anything is sampled, unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

from .files import atomic_write
from .visuals import image_grid

__all__ = ["FORMATS", "SampleWriter", "find_outputs", "load_samples", "to_uint8"]

FORMATS: tuple[str, ...] = ("npz", "png", "grid")
_OUTPUT_RE = re.compile(r"^(meta\.json|grid\.png|samples_rank\d+\.npz|\d{6,}\.png)$")


def find_outputs(out_dir: str | os.PathLike) -> list[Path]:
    """Files in ``out_dir`` that a `SampleWriter` writes (meta, shards, grid, per-seed PNGs), sorted."""
    d = Path(out_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _OUTPUT_RE.match(p.name) and p.is_file())


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


def _save_png(path: Path, img: np.ndarray) -> None:
    atomic_write(path, lambda f: _pil_image(img).save(f, format="PNG"))


def _scatter_png(path: Path, points: np.ndarray, title: str) -> bool:
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


def _parse_formats(fmt: str | Sequence[str]) -> tuple[str, ...]:
    items = fmt.split(",") if isinstance(fmt, str) else list(fmt)
    items = [str(s).strip().lower() for s in items if str(s).strip()]
    bad = [s for s in items if s not in FORMATS]
    if bad:
        raise ValueError(f"predict.format: unknown format(s) {bad}; choose from {list(FORMATS)} "
                         "(a list or a comma-separated string, e.g. 'npz,png')")
    return tuple(s for s in FORMATS if s in items or s == "npz")  # npz shards are always written


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return "unknown"


class SampleWriter(BasePredictionWriter):
    """Prediction writer for `DiffusionModule.predict_step` outputs (``samples``, ``seeds``, ``nfe``).

    Args:
        out_dir: output folder (created if needed).
        format: ``"npz"``, ``"png"``, ``"grid"``, or several (a list or ``"npz,png"``). The npz shards
            are always written (they hold the seeds, and every other output can be rebuilt from
            them); ``"png"`` adds one PNG per sample (images only), ``"grid"`` one overview PNG.
        overwrite: replace the outputs of an earlier run in ``out_dir`` (its shards, PNGs and
            ``meta.json``; other files are never touched). Without it such a folder is refused
            before any sampling starts.
        grid_size: number of images in ``grid.png`` (2-D points: every sample is plotted).
        meta: extra entries for ``meta.json`` (the CLI adds the seed request).

    Raises:
        FileExistsError: in ``setup`` if ``out_dir`` holds outputs and ``overwrite`` is False.
        ValueError: for an unknown format, or ``"png"`` for data that are not 1- or 3-channel images.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike = "samples",
        format: str | Sequence[str] = "npz",
        overwrite: bool = False,
        grid_size: int = 64,
        meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.formats = _parse_formats(format)
        self.overwrite = bool(overwrite)
        if int(grid_size) < 1:
            raise ValueError(f"predict.grid_size must be >= 1, got {grid_size}")
        self.grid_size = int(grid_size)
        self.extra_meta = dict(meta or {})
        self._reset()

    def _reset(self) -> None:
        self._samples: list[Tensor] = []
        self._seeds: list[Tensor] = []
        self._nfe = 0
        self._t0 = time.perf_counter()

    # ------------------------------------------------------------------ checks
    def check_out_dir(self) -> None:
        """Raises FileExistsError if ``out_dir`` holds outputs and ``overwrite`` is False."""
        found = find_outputs(self.out_dir)
        if found and not self.overwrite:
            names = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
            raise FileExistsError(
                f"predict.out_dir={str(self.out_dir)!r} already holds samples of an earlier run ({len(found)} "
                f"file(s): {names}); refusing to overwrite them. Choose another --predict.out_dir, or pass "
                "--predict.overwrite true (SampleWriter(overwrite=True)) to replace them."
            )

    def _check_data(self, data_shape: Sequence[int]) -> None:
        shape = tuple(data_shape)
        if "png" in self.formats and not (len(shape) == 3 and shape[0] in (1, 3)):
            raise ValueError(
                f"predict.format 'png' writes one image per sample and needs [C, H, W] data with C = 1 or 3; "
                f"the model's data_shape is {shape}. Use 'npz' or 'grid' (a scatter plot for 2-D points)."
            )
        if "grid" in self.formats and not (len(shape) == 1 or (len(shape) == 3 and shape[0] in (1, 3))):
            raise ValueError(f"predict.format 'grid' needs 1-D points or [1|3, H, W] images; data_shape is {shape}")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "predict":
            return
        if getattr(pl_module, "data_shape", None) is not None:
            self._check_data(pl_module.data_shape)
        # Rank 0 decides, so every rank raises (or goes on) together.
        error: str | None = None
        if trainer.is_global_zero:
            try:
                self.check_out_dir()
            except FileExistsError as err:
                error = str(err)
        error = trainer.strategy.broadcast(error)
        if error is not None:
            raise FileExistsError(error)
        if trainer.is_global_zero:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for p in find_outputs(self.out_dir):  # only with overwrite=True: stale shards would join the union
                p.unlink()
        trainer.strategy.barrier("SampleWriter.setup")
        self.out_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ writing
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        if not isinstance(prediction, dict) or "samples" not in prediction or "seeds" not in prediction:
            raise TypeError("SampleWriter expects predict_step to return a dict with 'samples' and 'seeds'")
        x = prediction["samples"].detach().to("cpu", torch.float32)
        s = prediction["seeds"].detach().to("cpu", torch.int64).reshape(-1)
        if x.shape[0] != s.shape[0]:
            raise ValueError(f"predict_step returned {x.shape[0]} samples for {s.shape[0]} seeds")
        if not torch.isfinite(x).all():
            bad = s[~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)].tolist()
            warnings.warn(f"non-finite samples for seeds {bad[:10]}; they are written as they are", stacklevel=2)
        self._nfe = max(self._nfe, int(prediction.get("nfe", 0)))
        if "png" in self.formats:
            for img, seed in zip(to_uint8(x), s.tolist()):
                _save_png(self.out_dir / f"{seed:06d}.png", img)
        self._samples.append(x)
        self._seeds.append(s)

    def _local(self) -> tuple[np.ndarray, np.ndarray]:
        """This rank's samples and seeds, deduplicated by seed and sorted."""
        if not self._seeds:
            return np.zeros((0,), np.float32), np.zeros((0,), np.int64)
        x = torch.cat(self._samples).numpy()
        s = torch.cat(self._seeds).numpy()
        _, first = np.unique(s, return_index=True)  # sorted unique seeds, first occurrence
        return x[first], s[first]

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rank, world = trainer.global_rank, trainer.world_size
        x, s = self._local()
        if x.ndim == 1 and getattr(pl_module, "data_shape", None) is not None:
            x = x.reshape(0, *pl_module.data_shape)
        shard = self.out_dir / f"samples_rank{rank}.npz"
        atomic_write(shard, lambda f: np.savez(f, samples=x.astype(np.float32), seeds=s.astype(np.int64)))

        # Gather the seeds (and what the grid shows) on every rank; rank 0 writes grid and meta.
        points = x.ndim == 2
        head = x if points else x[: self.grid_size]
        parts = self._all_gather(trainer, (s, head, s[: len(head)], self._nfe))
        if not trainer.is_global_zero:
            return
        all_seeds = np.concatenate([p[0] for p in parts])
        uniq = np.unique(all_seeds)
        nfe = max(p[3] for p in parts)
        if "grid" in self.formats and len(uniq):
            hx = np.concatenate([p[1] for p in parts])
            hs = np.concatenate([p[2] for p in parts])
            _, first = np.unique(hs, return_index=True)
            hx = hx[first] if points else hx[first][: self.grid_size]
            title = f"{len(hx)} samples, {type(getattr(pl_module, 'sampler', None)).__name__}, NFE {nfe}"
            if points:
                if not _scatter_png(self.out_dir / "grid.png", hx, title):
                    warnings.warn("matplotlib is not installed: grid.png (scatter plot) skipped", stacklevel=2)
            else:
                grid = image_grid(torch.as_tensor(hx), min_size=64, padding=2, pad_value=0.5)
                _save_png(self.out_dir / "grid.png", to_uint8(grid * 2.0 - 1.0))
        sampler = getattr(pl_module, "sampler", None)
        ckpt = trainer.ckpt_path
        meta = {
            "checkpoint": None if ckpt is None else os.path.abspath(str(ckpt)),
            "model": f"{type(pl_module).__module__}.{type(pl_module).__qualname__}",
            "sampler": repr(sampler),
            "nfe": int(nfe),
            "num_samples": int(len(uniq)),
            "seeds": {
                "first": int(uniq[0]) if len(uniq) else None,
                "last": int(uniq[-1]) if len(uniq) else None,
                "count": int(len(uniq)),
                "contiguous": bool(len(uniq) and uniq[-1] - uniq[0] + 1 == len(uniq)),
                "duplicates": int(len(all_seeds) - len(uniq)),
            },
            "data_shape": list(x.shape[1:]),
            "world_size": int(world),
            "shards": [f"samples_rank{r}.npz" for r in range(world)],
            "formats": list(self.formats),
            "use_ema": True,
            "versions": {
                "gddim_lightning": _version("gddim-lightning"),
                "torch": torch.__version__,
                "lightning": L.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
            },
            "time_taken_s": round(time.perf_counter() - self._t0, 3),
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **self.extra_meta,
        }
        text = json.dumps(meta, indent=2) + "\n"
        atomic_write(self.out_dir / "meta.json", lambda f: f.write(text.encode()))

    @staticmethod
    def _all_gather(trainer: L.Trainer, obj: Any) -> list[Any]:
        if trainer.world_size == 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return [obj]
        out: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(out, obj)
        return out
