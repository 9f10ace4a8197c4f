"""Checkpoints that survive faults: atomic writes, a final ``last.ckpt``, and a checkpoint on interrupt.

* `AtomicCheckpointIO` writes every checkpoint to a temporary file in the same folder, flushes it
  to disk and renames it over the target: a crash or a kill during the write leaves the previous
  file intact, never a truncated one. The CLI installs it for every ``fit``.
* `FinalModelCheckpoint` makes ``last.ckpt`` the final state of ``fit``.
* `InterruptCheckpoint` turns the first SIGINT (Ctrl+C) or SIGTERM (a scheduler's pre-emption) into
  a clean stop after the training step in progress, writes ``last.ckpt`` from which ``fit
  --ckpt_path`` continues the run exactly, and exits with ``128 + signal``. A second signal aborts
  at once.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info

from ._lightning_private import monitor_candidates, save_last_checkpoint, should_skip_saving_checkpoint
from .files import atomic_write
from .signals import SignalHandlers

__all__ = ["AtomicCheckpointIO", "FinalModelCheckpoint", "InterruptCheckpoint", "TrainingInterrupted",
           "atomic_torch_save"]


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` through a temporary file and a rename (see `atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with atomic writes (see `atomic_torch_save`); local paths only,
    anything with a URL scheme goes through Lightning's own writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)


class FinalModelCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose ``last.ckpt`` is always the final state of ``fit``.

    Lightning writes ``last.ckpt`` only together with a top-k checkpoint, i.e. after validation when
    ``check_val_every_n_epoch > 1``: a run stopped by ``max_steps`` or ``max_time`` between two
    validations would lose its last steps. This one also writes it when training ends.
    """

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.save_last and not should_skip_saving_checkpoint(self, trainer):
            save_last_checkpoint(self, trainer, monitor_candidates(self, trainer))
            return
        super().on_train_end(trainer, pl_module)


class TrainingInterrupted(Exception):
    """Raised by `fit` after an interrupt checkpoint was written (the CLI exits with ``exit_code``)."""

    def __init__(self, signum: int, path: str | None) -> None:
        self.signum = int(signum)
        self.path = path
        name = signal.Signals(self.signum).name
        where = f"wrote {path}; continue with --ckpt_path {path}" if path else "no checkpoint written"
        super().__init__(f"training stopped by {name}: {where}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class InterruptCheckpoint(Callback):
    """Stops ``fit`` cleanly on SIGINT/SIGTERM and writes a resumable ``last.ckpt``.

    The first signal is noted; the step in progress finishes (optimiser, EMA, scheduler), then the
    state is written (atomically) to ``last.ckpt`` in the checkpoint folder and `TrainingInterrupted`
    is raised. A second signal restores the default handler and re-sends itself: it aborts at once.
    Under DDP the ranks agree (an all-reduce per step) so they stop after the same step.

    Args:
        filename: checkpoint name inside the `ModelCheckpoint` folder (default: that callback's
            ``last`` name, ``last.ckpt``).
    """

    def __init__(self, filename: str | None = None) -> None:
        self.filename = filename
        self.signum: int | None = None
        self._signals = SignalHandlers(self._handler)

    # ------------------------------------------------------------------ signal handling
    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # second signal: abort now
            self._signals.restore()
            if signum == signal.SIGTERM:  # not Lightning's handler, which would wait for the step end
                signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)  # SIGINT: KeyboardInterrupt, Lightning exits with status 1
            return
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: finishing the current training step, then writing "
              "a checkpoint (send it again to abort without one)", file=sys.stderr, flush=True)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.signum = None
        self._signals.install()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._signals.restore()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._signals.restore()

    # ------------------------------------------------------------------ stopping
    def _requested(self, trainer: Trainer) -> int:
        flag = torch.tensor(float(self.signum or 0))
        if trainer.world_size > 1:
            flag = trainer.strategy.reduce(flag.to(trainer.strategy.root_device), reduce_op="max").cpu()
        return int(flag.item())

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # The step is complete (optimiser, EMA, step schedulers): Lightning resumes a checkpoint written
        # here with the next batch, and `ResumableLoader` skips the batches already used.
        signum = self._requested(trainer)
        if signum:
            self.signum = signum
            self._write_and_stop(trainer)

    def _write_and_stop(self, trainer: Trainer) -> None:
        assert self.signum is not None
        path = self._target(trainer)
        if path is not None:
            cb = trainer.checkpoint_callback
            if isinstance(cb, ModelCheckpoint):
                # the checkpoint callback owns this file from now on: the resumed run updates it in place
                # instead of writing last-v1.ckpt beside it
                cb.last_model_path = path
            trainer.save_checkpoint(path, weights_only=False)
            rank_zero_info(f"checkpoint written to {path}")
        raise TrainingInterrupted(self.signum, path)

    def _target(self, trainer: Trainer) -> str | None:
        cb = trainer.checkpoint_callback
        if cb is None or getattr(cb, "dirpath", None) is None:
            return None
        if getattr(cb, "save_top_k", 1) == 0 and not getattr(cb, "save_last", True):
            return None  # checkpointing switched off (--trainer.enable_checkpointing false)
        name = self.filename or f"{getattr(cb, 'CHECKPOINT_NAME_LAST', 'last')}{getattr(cb, 'FILE_EXTENSION', '.ckpt')}"
        return os.path.join(cb.dirpath, name)
