"""Progress for a console that is not a terminal (a log file, a CI job, ``nohup``): a line every few
percent instead of tqdm's carriage-return redraws, which fill a redirected log with hundreds of KB."""

from __future__ import annotations

import sys
import time
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar

__all__ = ["LineProgressBar"]


def _eta(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


class LineProgressBar(ProgressBar):
    """Prints ``step 550/2200 (25%) | 2.1 steps/s | ~13 min 05 s left | train/loss 0.045`` about
    ``lines`` times per ``fit`` (and the same for ``predict`` batches), on rank 0, to stdout.

    The CLI uses it in place of the tqdm bar when stdout is not a terminal; pass your own progress
    bar callback (or ``--trainer.enable_progress_bar false``) to choose otherwise.

    Args:
        lines: about how many lines a whole run prints.
    """

    def __init__(self, lines: int = 20) -> None:
        super().__init__()
        if int(lines) < 1:
            raise ValueError(f"LineProgressBar(lines={lines}) must be >= 1")
        self.lines = int(lines)
        self._enabled = True
        self._t0 = 0.0
        self._next = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _start(self) -> None:
        self._t0 = time.perf_counter()
        self._next = 0

    def _report(self, what: str, done: int, total: int, extra: str = "") -> None:
        if done < self._next and done != total:
            return
        self._next = done + max(1, total // self.lines)
        elapsed = time.perf_counter() - self._t0
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{what} {done}/{total} ({100 * done // max(total, 1)}%)", f"{rate:.2f} {what}s/s"]
        if 0 < rate and done < total:
            parts.append(f"~{_eta((total - done) / rate)} left")
        if extra:
            parts.append(extra)
        print(" | ".join(parts), file=sys.stdout, flush=True)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        total = trainer.estimated_stepping_batches
        total = int(total) if total != float("inf") else trainer.global_step
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k not in ("v_num",)}
        extra = ", ".join(f"{k} {v}" for k, v in metrics.items())
        self._report("step", trainer.global_step, total, extra)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start()

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        total = sum(int(n) for n in trainer.num_predict_batches)
        self._report("batch", batch_idx + 1, total)
