"""What the package reads from a batch and from a data module: `data_batch` and `reference_batches`.

A training or validation batch may be

* a tensor ``[B, *data_shape]`` (every data module of this package yields these);
* a tuple or list whose first item is that tensor: ``(x, y)`` from a labelled, torchvision-style
  data set, or ``(x,)`` from a ``TensorDataset`` (the other items, e.g. labels, are ignored);
* a dict with the tensor under ``"x"`` or ``"image"`` (other keys are ignored).

Reference (real) data for sample metrics comes from the data module's ``reference_data(n)`` method:
the first ``min(n, N)`` unaugmented training items in a fixed order, as one tensor
``[<= n, *data_shape]`` (float32 in the loaders' range, or ``uint8`` images in ``[0, 255]``, which
are mapped to ``[-1, 1]`` like the loaders map them). A data module without that method is read
through its ``train_dataloader()`` instead (the first ``n`` items of its first epoch, augmentation and
shuffling included: fine for a trend, but give ``reference_data`` for numbers that repeat).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import Tensor

__all__ = ["BATCH_KEYS", "as_float_images", "data_batch", "reference_batches"]

#: Keys under which `data_batch` looks for the data tensor of a dict batch, in this order.
BATCH_KEYS = ("x", "image")


def data_batch(batch: Any) -> Tensor:
    """The data tensor of a batch: a tensor, ``(x, y)`` / ``[x, y]`` / ``(x,)``, or a dict with ``"x"`` / ``"image"``.

    Args:
        batch: what a data loader yields.

    Returns:
        The tensor ``x`` ``[B, *data_shape]`` (not copied).

    Raises:
        ValueError: for any other form, naming the accepted ones.
    """
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    if isinstance(batch, dict):
        for key in BATCH_KEYS:
            if isinstance(batch.get(key), Tensor):
                return batch[key]
    if isinstance(batch, dict):
        got = f"a dict with keys {sorted(map(str, batch))}"
    elif isinstance(batch, (tuple, list)):
        got = f"a {type(batch).__name__} whose first item is {type(batch[0]).__name__ if batch else 'missing'}"
    else:
        got = f"a {type(batch).__name__}"
    raise ValueError(
        f"cannot read the data of a batch that is {got}: a batch must be a tensor [B, *data_shape], a tuple or "
        f"list (x, y) whose first item is that tensor, or a dict holding it under {' or '.join(map(repr, BATCH_KEYS))}"
    )


def as_float_images(x: Tensor) -> Tensor:
    """uint8 images in ``[0, 255]`` -> float32 in ``[-1, 1]`` (as the loaders map them); other data -> float32."""
    return x.float().div(127.5).sub(1.0) if x.dtype == torch.uint8 else x.float()


def reference_batches(datamodule: Any, n: int, batch_size: int) -> Iterator[Tensor]:
    """Real items for reference statistics, in a fixed order, at most ``n`` of them, in chunks.

    Calls ``datamodule.reference_data(n)`` and cuts the result into chunks of ``batch_size``; without
    that method, reads ``datamodule.train_dataloader()`` batch by batch (through `data_batch`) until
    ``n`` items are seen.

    Args:
        datamodule: the data module.
        n: at most this many items.
        batch_size: chunk size (reference_data path).

    Yields:
        float32 chunks ``[b, *data_shape]`` (uint8 images mapped to ``[-1, 1]``).

    Raises:
        ValueError: when the data module has neither ``reference_data`` nor a working
            ``train_dataloader``, or ``reference_data`` returns something other than a non-empty tensor.
    """
    name = type(datamodule).__name__
    method = getattr(datamodule, "reference_data", None)
    if callable(method):
        data = method(int(n))
        if not isinstance(data, Tensor) or data.dim() == 0 or data.shape[0] == 0:
            got = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
            raise ValueError(f"{name}.reference_data({n}) must return a non-empty tensor [N, *data_shape], got {got}")
        for start in range(0, min(int(n), data.shape[0]), batch_size):
            yield as_float_images(data[start : min(start + batch_size, int(n))])
        return
    loader = None
    if callable(getattr(datamodule, "train_dataloader", None)):
        try:
            loader = datamodule.train_dataloader()
        except MisconfigurationException:  # LightningDataModule's default: "must be implemented"
            loader = None
    if loader is None:
        raise ValueError(
            f"the sample metric needs real data, but the data module {name} has no reference_data(n: int) -> Tensor "
            "method and no train_dataloader() to read instead; add reference_data (see the data module contract in "
            "docs/components/data.md)"
        )
    seen = 0
    for batch in loader:
        x = data_batch(batch)[: int(n) - seen]
        seen += x.shape[0]
        yield as_float_images(x)
        if seen >= n:
            return
