"""`ResumeRNGState`: ``fit --ckpt_path`` continues the random streams of the interrupted run."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from .._lightning_private import restart_train_iterator

__all__ = ["ResumeRNGState"]


class ResumeRNGState(Callback):
    """Makes ``fit --ckpt_path`` continue the random streams of the interrupted run.

    Lightning restores weights, optimiser, schedulers and loop counters, but not the global torch
    generator (which draws dropout masks) nor the shuffling generator of a plain training
    ``DataLoader``. This callback stores both in every checkpoint and puts them back when training
    resumes. The package's data modules use `ResumableLoader`, whose own state (order and position
    within the epoch) Lightning saves, so a run resumed from any checkpoint, mid-epoch included,
    continues bit for bit; a plain ``DataLoader`` resumes exactly only from an epoch boundary. Under
    DDP the ranks share rank 0's global generator state, as after ``seed_everything``.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None
        self._trainer: Trainer | None = None

    @staticmethod
    def _loader_generator(trainer: Trainer) -> torch.Generator | None:
        loader = trainer.train_dataloader
        if callable(getattr(loader, "load_state_dict", None)):
            return None  # a stateful loader (e.g. ResumableLoader): Lightning saves and restores it
        gen = getattr(loader, "generator", None)
        return gen if isinstance(gen, torch.Generator) else None

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"torch": torch.get_rng_state()}
        gen = self._loader_generator(self._trainer) if self._trainer is not None else None
        if gen is not None:
            state["loader"] = gen.get_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # after the checkpoint is restored and the loader built, before its first iterator shuffles
        if self._pending is None:
            return
        if "torch" in self._pending:
            torch.set_rng_state(self._pending["torch"])
        gen = self._loader_generator(trainer)
        if gen is not None and "loader" in self._pending:
            old = gen.get_state()
            gen.set_state(self._pending["loader"])
            # Lightning made the epoch's iterator (which draws from the generator) before this hook;
            # make it again from the restored state, as an uninterrupted run does at an epoch start
            if not restart_train_iterator(trainer):
                gen.set_state(old)  # no iterator to remake: leave the stream as Lightning left it
        self._pending = None
