"""`SampleWriter`: writes what ``predict`` samples to a folder, never over earlier outputs.

Layout of ``out_dir`` after ``predict`` (``W`` ranks):

* ``samples_rank{r}.npz`` for ``r < W`` (always): ``samples`` float32 ``[n_r, *data_shape]`` and
  ``seeds`` int64 ``[n_r]``, sorted by seed. Rank ``r`` writes its own shard; the union of the
  shards' seeds is the requested seed range. Load them all with `load_samples`.
* ``{seed:06d}.png`` per sample (``format`` contains ``"png"``, images only), [-1, 1] mapped to uint8.
* ``grid.png`` (``format`` contains ``"grid"``): the first ``grid_size`` samples by seed as an image
  grid; for 1-D data (2-D points) a scatter plot of all samples (needs matplotlib).
* ``meta.json`` (rank 0, last): checkpoint, sampler, NFE, seeds, world size, versions, time taken.

Nothing in ``out_dir`` is touched until the run has finished: every output is first written to a
staging folder inside it (``.predict-partial-<time>-<pid>``), and only a complete set is moved into
place (``os.replace``, one file at a time, ``meta.json`` last). An interrupted or failed run (Ctrl+C,
SIGTERM, a full disk, an error) leaves the earlier outputs as they were and its own partial outputs in
the staging folder, and says so.

``meta.json`` lists every output with its SHA-256 (``outputs``). A folder that already holds outputs
is refused before anything is sampled unless ``overwrite=True``; even then only the files an earlier
run recorded there, unchanged since, are replaced or removed. A file the writer did not write (a
user's own ``000001.png`` or ``meta.json``), or one changed since, is never deleted or overwritten:
such a folder is refused.
"""

from __future__ import annotations


import hashlib
import json
import os
import platform
import re
import shutil
import signal
import sys
import threading
import time
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
from ._warn import warn_user

__all__ = ["FORMATS", "PredictInterrupted", "SampleWriter", "find_outputs", "load_samples", "owned_outputs", "to_uint8"]

FORMATS: tuple[str, ...] = ("npz", "png", "grid")
_OUTPUT_RE = re.compile(r"^(meta\.json|grid\.png|samples_rank\d+\.npz|\d{6,}\.png)$")


def find_outputs(out_dir: str | os.PathLike) -> list[Path]:
    """Files in ``out_dir`` that a `SampleWriter` writes (meta, shards, grid, per-seed PNGs), sorted."""
    d = Path(out_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _OUTPUT_RE.match(p.name) and p.is_file())


def _sha256(path: Path) -> str:
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
        if p.parent == d and p.is_file() and _sha256(p) == digest:
            owned.append(p)
    return sorted(owned)


class PredictInterrupted(Exception):
    """SIGINT or SIGTERM during ``predict`` (raised by the writer's signal handler)."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"predict stopped by {signal.Signals(self.signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


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


def _names(paths: Sequence[Path]) -> str:
    return ", ".join(p.name for p in paths[:4]) + (", ..." if len(paths) > 4 else "")


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
        overwrite: replace the outputs of an earlier run in ``out_dir``: only the files its
            ``meta.json`` records, unchanged since, and only once the new run is complete. Without it
            such a folder is refused before any sampling starts.
        grid_size: number of images in ``grid.png`` (2-D points: every sample is plotted).
        meta: extra entries for ``meta.json`` (the CLI adds the seed request).

    Raises:
        FileExistsError: in ``setup`` if ``out_dir`` holds outputs and ``overwrite`` is False, or holds
            files with output names that no earlier run recorded (never overwritten).
        PredictInterrupted: on SIGINT or SIGTERM while sampling (the earlier outputs stay intact).
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
        self.staging: Path | None = None
        self.last_meta: dict[str, Any] | None = None  # meta.json of the last finished run (rank 0)
        self._previous_handlers: dict[int, Any] = {}
        self._reset()

    def _reset(self) -> None:
        self._samples: list[Tensor] = []
        self._seeds: list[Tensor] = []
        self._nfe = 0
        self._t0 = time.perf_counter()

    # ------------------------------------------------------------------ checks
    def check_out_dir(self) -> None:
        """Raises FileExistsError if ``out_dir`` is a file, is not writable, holds outputs and
        ``overwrite`` is False, or holds files under output names that no earlier run recorded."""
        where = f"predict.out_dir={str(self.out_dir)!r}"
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise FileExistsError(f"{where} is a file, not a folder; choose a folder for --predict.out_dir")
        existing = next((p for p in [self.out_dir, *self.out_dir.absolute().parents] if p.exists()), None)
        if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
            raise FileExistsError(f"{where}: {str(existing)!r} is not writable; choose another --predict.out_dir")
        found = find_outputs(self.out_dir)
        if not found:
            return
        names = _names(found)
        if not self.overwrite:
            raise FileExistsError(
                f"{where} already holds samples of an earlier run ({len(found)} file(s): {names}); refusing to "
                "overwrite them. Choose another --predict.out_dir, or pass --predict.overwrite true "
                "(SampleWriter(overwrite=True)) to replace the files that run recorded in its meta.json."
            )
        owned = set(owned_outputs(self.out_dir))
        foreign = [p for p in found if p not in owned]
        if foreign:
            raise FileExistsError(
                f"{where} holds {len(foreign)} file(s) under output names that no earlier predict run recorded in "
                f"its meta.json, or that changed since ({_names(foreign)}); predict never overwrites or deletes "
                "them, even with --predict.overwrite true. Move them away or choose another --predict.out_dir."
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
        # The staging folder: every output goes there first (see the module docstring).
        name = None
        if trainer.is_global_zero:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            name = f".predict-partial-{stamp}-{os.getpid()}"
            (self.out_dir / name).mkdir(parents=True)
        name = trainer.strategy.broadcast(name)
        self.staging = self.out_dir / name
        trainer.strategy.barrier("SampleWriter.setup")

    # ------------------------------------------------------------------ writing
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()
        self._install_handlers()

    def _install_handlers(self) -> None:
        """SIGINT and SIGTERM stop sampling at once (`PredictInterrupted`), leaving earlier outputs intact."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def _restore_handlers(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers = {}

    def _handler(self, signum: int, frame: Any) -> None:
        self._restore_handlers()  # a second signal acts as it would without this writer
        raise PredictInterrupted(signum)

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
            warn_user(f"non-finite samples for seeds {bad[:10]}; they are written as they are")
        self._nfe = max(self._nfe, int(prediction.get("nfe", 0)))
        if "png" in self.formats:
            for img, seed in zip(to_uint8(x), s.tolist()):
                _save_png(self._dir / f"{seed:06d}.png", img)
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

    @property
    def _dir(self) -> Path:
        """Where outputs are written while sampling: the staging folder (``out_dir`` outside ``predict``)."""
        return self.staging if self.staging is not None else self.out_dir

    def _write_shard(self, rank: int, pl_module: L.LightningModule) -> np.ndarray:
        x, s = self._local()
        if x.ndim == 1 and getattr(pl_module, "data_shape", None) is not None:
            x = x.reshape(0, *pl_module.data_shape)
        shard = self._dir / f"samples_rank{rank}.npz"
        atomic_write(shard, lambda f: np.savez(f, samples=x.astype(np.float32), seeds=s.astype(np.int64)))
        return x

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Keeps what was sampled (a shard of this rank's finished samples, in the staging folder) and says
        where it is and that the earlier outputs are untouched."""
        self._restore_handlers()
        if self.staging is None or not self.staging.is_dir():
            return
        kept = "nothing"
        try:
            if self._seeds:
                self._write_shard(trainer.global_rank, pl_module)
            n = len(self._local()[1])
            kept = f"the {n} sample(s) this process finished" if n else "nothing (no batch had finished)"
        except Exception as err:  # a full disk: say so, do not hide the original error
            kept = f"nothing more (writing the partial samples failed: {err})"
        if trainer.is_global_zero:
            print(f"gddim_lightning: predict did not finish ({type(exception).__name__}: {exception}). The earlier "
                  f"contents of {str(self.out_dir)!r} are untouched; kept {kept} in {str(self.staging)!r} "
                  "(delete it when you no longer need it).", file=sys.stderr, flush=True)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()
        rank, world = trainer.global_rank, trainer.world_size
        x = self._write_shard(rank, pl_module)
        s = self._local()[1]

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
                if not _scatter_png(self._dir / "grid.png", hx, title):
                    warn_user("matplotlib is not installed: grid.png (scatter plot) skipped")
            else:
                grid = image_grid(torch.as_tensor(hx), min_size=64, padding=2, pad_value=0.5)
                _save_png(self._dir / "grid.png", to_uint8(grid * 2.0 - 1.0))
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
            "identity": pl_module.identity() if hasattr(pl_module, "identity") else None,
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
        new_files = sorted(p for p in self._dir.iterdir() if p.is_file() and _OUTPUT_RE.match(p.name))
        meta["outputs"] = {p.name: _sha256(p) for p in new_files if p.name != "meta.json"}
        text = json.dumps(meta, indent=2) + "\n"
        atomic_write(self._dir / "meta.json", lambda f: f.write(text.encode()))
        self._swap_in(new_files)
        self.last_meta = meta

    def _swap_in(self, new_files: list[Path]) -> None:
        """Moves the complete new outputs from the staging folder into ``out_dir`` (``meta.json`` last),
        after removing the earlier run's recorded outputs that the new run does not replace."""
        assert self.staging is not None
        names = {p.name for p in new_files} | {"meta.json"}
        owned = owned_outputs(self.out_dir)
        foreign = [p for p in find_outputs(self.out_dir) if p not in set(owned) and p.name in names]
        if foreign:  # appeared while sampling: never overwrite a file this writer did not write
            raise FileExistsError(
                f"files appeared in predict.out_dir={str(self.out_dir)!r} while sampling ({_names(foreign)}); they "
                f"are kept, and the new outputs stay in {str(self.staging)!r}")
        for p in owned:
            if p.name not in names:
                p.unlink()
        for p in [*new_files, self.staging / "meta.json"]:  # meta.json last: it vouches for the rest
            os.replace(p, self.out_dir / p.name)
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging = None

    @staticmethod
    def _all_gather(trainer: L.Trainer, obj: Any) -> list[Any]:
        if trainer.world_size == 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return [obj]
        out: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(out, obj)
        return out
