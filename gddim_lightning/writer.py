"""`SampleWriter`: writes what ``predict`` samples to a folder, never over earlier outputs.

Longer than 300 lines: one class (claiming the folder, writing shards, merging them on rank 0,
cleaning up on a signal) whose steps share its state; the file formats live in `sample_files`.

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

import json
import os
import platform
import signal
import sys
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

from ._warn import warn_user
from .files import atomic_write
from .sample_files import (
    FORMATS, OUTPUT_RE, check_out_dir, find_outputs, load_samples, owned_outputs, parse_formats, save_png,
    scatter_png, sha256, swap_in, to_uint8, version,
)
from .signals import SignalHandlers
from .visuals import image_grid

__all__ = ["FORMATS", "PredictInterrupted", "SampleWriter", "find_outputs", "load_samples", "owned_outputs", "to_uint8"]


class PredictInterrupted(Exception):
    """SIGINT or SIGTERM during ``predict`` (raised by the writer's signal handler)."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"predict stopped by {signal.Signals(self.signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


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
        self.formats = parse_formats(format)
        self.overwrite = bool(overwrite)
        if int(grid_size) < 1:
            raise ValueError(f"predict.grid_size must be >= 1, got {grid_size}")
        self.grid_size = int(grid_size)
        self.extra_meta = dict(meta or {})
        self.staging: Path | None = None
        self.last_meta: dict[str, Any] | None = None  # meta.json of the last finished run (rank 0)
        self._signals = SignalHandlers(self._handler)
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
        check_out_dir(self.out_dir, self.overwrite)

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
        self._signals.install()

    def _handler(self, signum: int, frame: Any) -> None:
        """SIGINT and SIGTERM stop sampling at once (`PredictInterrupted`), leaving earlier outputs intact."""
        self._signals.restore()  # a second signal acts as it would without this writer
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
                save_png(self._dir / f"{seed:06d}.png", img)
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
        self._signals.restore()
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
        self._signals.restore()
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
                if not scatter_png(self._dir / "grid.png", hx, title):
                    warn_user("matplotlib is not installed: grid.png (scatter plot) skipped")
            else:
                grid = image_grid(torch.as_tensor(hx), min_size=64, padding=2, pad_value=0.5)
                save_png(self._dir / "grid.png", to_uint8(grid * 2.0 - 1.0))
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
                "gddim_lightning": version("gddim-lightning"),
                "torch": torch.__version__,
                "lightning": L.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
            },
            "time_taken_s": round(time.perf_counter() - self._t0, 3),
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **self.extra_meta,
        }
        new_files = sorted(p for p in self._dir.iterdir() if p.is_file() and OUTPUT_RE.match(p.name))
        meta["outputs"] = {p.name: sha256(p) for p in new_files if p.name != "meta.json"}
        text = json.dumps(meta, indent=2) + "\n"
        atomic_write(self._dir / "meta.json", lambda f: f.write(text.encode()))
        self._swap_in(new_files)
        self.last_meta = meta

    def _swap_in(self, new_files: list[Path]) -> None:
        """Moves the complete new outputs from the staging folder into ``out_dir`` (`swap_in`)."""
        assert self.staging is not None
        swap_in(self.out_dir, self.staging, new_files)
        self.staging = None

    @staticmethod
    def _all_gather(trainer: L.Trainer, obj: Any) -> list[Any]:
        if trainer.world_size == 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return [obj]
        out: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(out, obj)
        return out
