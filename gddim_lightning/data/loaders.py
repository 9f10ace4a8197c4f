"""A shuffling DataLoader that stops and resumes in the middle of an epoch.

Lightning stores the ``state_dict`` of every training loader that has one in each checkpoint and
hands it back through ``load_state_dict`` when ``fit --ckpt_path`` resumes. `ResumableLoader` keeps
the state of its shuffling generator at the start of the current epoch and the number of batches
it has handed out; on resume it redraws the same order and skips the batches already used (as
indices: nothing is loaded for them). A run resumed from a checkpoint taken in the middle of an
epoch (an interrupt, a periodic checkpoint) therefore sees exactly the batches of the
uninterrupted run. Under DDP every rank draws the same order and takes its share of it, so
Lightning does not need to add a distributed sampler.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["ResumableLoader"]


def _world() -> tuple[int, int]:
    """(number of processes, this rank) of the default process group, or (1, 0)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class _ShuffleSampler(DistributedSampler):
    """A random permutation per epoch from ``generator``, shared by all ranks (each takes every
    ``world``-th index of it), optionally starting ``skip`` indices into this rank's share.

    It is a `DistributedSampler` only so that Lightning does not replace it under DDP: it reads the
    world size and rank from the process group when an epoch starts, and every rank draws the same
    order from its identically seeded generator.
    """

    def __init__(self, n: int, generator: torch.Generator) -> None:  # no DistributedSampler.__init__
        self.n = int(n)
        self.generator = generator
        self.skip = 0

    def __len__(self) -> int:
        world, _ = _world()
        return self.n // world if world > 1 else self.n

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        world, rank = _world()
        order = torch.randperm(self.n, generator=self.generator).tolist()
        if world > 1:
            order = order[: len(self) * world][rank::world]
        return iter(order[skip:])

    def set_epoch(self, epoch: int) -> None:  # the generator carries the epoch-to-epoch change
        pass


class ResumableLoader(DataLoader):
    """Shuffling `DataLoader` whose position within the epoch survives a checkpoint.

    Args:
        dataset: a map-style dataset.
        batch_size: samples per batch.
        seed: seed of the shuffling generator.
        drop_last: drop the last incomplete batch.
        **kwargs: other `DataLoader` arguments (``num_workers``, ``collate_fn``, ...); not
            ``shuffle``, ``sampler`` or ``batch_sampler``.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, drop_last: bool = False,
                 **kwargs: Any) -> None:
        generator = torch.Generator().manual_seed(int(seed))
        sampler = _ShuffleSampler(len(dataset), generator)  # type: ignore[arg-type]
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                         generator=generator, **kwargs)
        self._epoch_start: torch.Tensor | None = None  # generator state before this epoch's draws
        self._served = 0  # batches handed out in this epoch
        self._resume: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        resume, self._resume = self._resume, None
        skip = 0
        if resume is not None:
            self.generator.set_state(resume["epoch_start"])
            skip = int(resume["served"])
        self._epoch_start = self.generator.get_state()
        self._served = skip
        self.sampler.skip = skip * int(self.batch_size)  # type: ignore[attr-defined]
        return self._counting(super().__iter__())

    def _counting(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands: the generator state at the start of the epoch in progress and now
        (an epoch draws its order when it starts), and the batches of it handed out. Lightning's
        training loop does not fetch ahead on a loader with a length, so at its checkpoint points
        (after a training step, at an epoch end) every batch handed out has been trained on."""
        now = self.generator.get_state()
        start = self._epoch_start if self._epoch_start is not None else now
        return {"epoch_start": start.clone(), "after_draws": now, "served": self._served}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The next iterator continues the saved epoch, or starts the next one if it was finished."""
        if set(state_dict) != {"epoch_start", "after_draws", "served"}:
            raise ValueError(f"not a ResumableLoader state: keys {sorted(state_dict)}")
        # (saved before any epoch: epoch_start is the current state and nothing was served, so resuming
        # it is a fresh start)
        if int(state_dict["served"]) >= len(self):
            self.generator.set_state(state_dict["after_draws"])
            self._resume = None
        else:
            self._resume = dict(state_dict)


class SplitDataModule(L.LightningDataModule):
    """Base of the package's data modules: a training split and a held-out split, each served by the
    subclass's ``_loader(train)``. Test and predict use the held-out split."""

    def _loader(self, train: bool) -> DataLoader:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded) loader over the training split."""
        return self._loader(True)

    def val_dataloader(self) -> DataLoader:
        """Ordered loader over the held-out split."""
        return self._loader(False)

    def test_dataloader(self) -> DataLoader:
        """The held-out split, as `val_dataloader`."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """The held-out split, as `val_dataloader`."""
        return self.val_dataloader()
