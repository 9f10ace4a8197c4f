"""Integer seeds as a prediction data set: ``predict`` draws one sample per seed.

`DiffusionModule.predict_step` takes a batch of integer seeds and draws sample ``k`` from its own
generator seeded with ``seeds[k]`` (EDM-style), so a sample depends on its seed only: never on the
batch size, its position in the batch, or the number of devices. This module lists the seeds
``seed, seed + 1, ..., seed + num_samples - 1``.

Under DDP, Lightning's predict loop shards the set with ``UnrepeatedDistributedSampler``: rank ``r``
of ``W`` gets the indices ``r, r + W, r + 2W, ...``, with no padding and no duplicate, so the union
of the ranks' seeds is exactly the requested range.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..limits import MAX_BATCH, MAX_SAMPLES, MAX_SEED, check_bounded
from .toys import collate_tensors

__all__ = ["SeedDataModule", "SeedDataset"]


class SeedDataset(Dataset):
    """The seeds ``seed + k`` for ``k < num_samples`` as int64 scalars."""

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        self.num_samples = int(num_samples)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, k: int) -> Tensor:
        if not 0 <= k < self.num_samples:
            raise IndexError(f"seed index {k} out of range [0, {self.num_samples})")
        return torch.tensor(self.seed + k, dtype=torch.int64)

    def __getitems__(self, idx: list[int]) -> Tensor:
        return torch.as_tensor([self.seed + int(k) for k in idx], dtype=torch.int64)


class SeedDataModule(L.LightningDataModule):
    """Predict-only data module yielding batches of integer seeds ``[B]`` (int64).

    The ``predict`` subcommand builds it from the ``predict`` options (``--predict.num_samples``,
    ``--predict.seed``, ``--predict.batch_size``); it can also be given as ``data`` directly.

    Args:
        num_samples: number of samples (seeds) to draw, >= 1.
        seed: first seed; the seeds are ``seed, ..., seed + num_samples - 1``.
        batch_size: seeds per predict batch (per device); does not change the samples.
        data_shape: shape of one sample; only needed when this module is the CLI's ``data`` (the CLI
            links it into the model). The ``predict`` subcommand fills it from the checkpoint.

    Raises:
        ValueError: for non-positive sizes or a negative seed.
    """

    def __init__(
        self,
        num_samples: int = 64,
        seed: int = 0,
        batch_size: int = 64,
        data_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_samples, (int, float)) and not isinstance(num_samples, bool) and num_samples < 1:
            raise ValueError(f"predict.num_samples must be >= 1, got {num_samples}")
        check_bounded("predict.num_samples", num_samples, 1, MAX_SAMPLES)
        check_bounded("predict.batch_size", batch_size, 1, MAX_BATCH)
        if isinstance(seed, (int, float)) and not isinstance(seed, bool) and seed < 0:
            raise ValueError(f"predict.seed must be >= 0 (torch generators take non-negative seeds), got {seed}")
        check_bounded("predict.seed", seed, 0, MAX_SEED - int(num_samples),
                      " (the last sample's seed, seed + num_samples - 1, must fit in 63 bits)")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.data_shape: tuple[int, ...] | None = None if data_shape is None else tuple(int(d) for d in data_shape)
        self.kind: str = "points" if self.data_shape is not None and len(self.data_shape) == 1 else "images"

    @property
    def seeds(self) -> range:
        """All requested seeds, in order."""
        return range(self.seed, self.seed + self.num_samples)

    def predict_dataloader(self) -> DataLoader:
        """Ordered loader over the seeds (Lightning shards it across ranks without padding)."""
        return DataLoader(SeedDataset(self.num_samples, self.seed), batch_size=self.batch_size, shuffle=False,
                          num_workers=0, collate_fn=collate_tensors)
