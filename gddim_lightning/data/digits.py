"""The 8x8 handwritten digits of scikit-learn as an offline image data set.

``sklearn.datasets.load_digits`` ships its 1797 images inside the scikit-learn
package, so nothing is ever downloaded. Pixel values 0..16 are mapped to
[-1, 1] by ``x = v / 16 * 2 - 1``.

This module also defines ``_ImageTensorDataset``, the in-memory image data set
(with optional flip / shift augmentation) reused by the CIFAR-10 module.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .loaders import SplitDataModule
from .toys import _check_loader_args, _make_loader

__all__ = ["DIGITS_N_IMAGES", "DigitsDataModule", "load_digits_split"]

DIGITS_N_IMAGES = 1797


class _ImageTensorDataset(Dataset):
    """Images held in memory as one tensor [N, C, H, W].

    ``uint8`` storage (0..255) is scaled to [-1, 1] on access, which keeps large
    sets such as CIFAR-10 at a quarter of the float32 memory; float storage is
    returned as is. Augmentation draws from torch's global generator, which
    DataLoader workers seed from the loader's seeded generator.

    Args:
        images: [N, C, H, W] uint8 or float32 tensor.
        flip: random horizontal flip with probability 1/2.
        shift: random shift by up to one pixel in each direction, the
            uncovered border filled with the background value -1.
    """

    def __init__(self, images: Tensor, flip: bool = False, shift: bool = False) -> None:
        self.images = images
        self.flip = flip
        self.shift = shift

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> Tensor:
        return self.__getitems__([i])[0]

    def __getitems__(self, idx: list[int]) -> Tensor:
        x = self.images[torch.as_tensor(idx, dtype=torch.long)]
        if x.dtype == torch.uint8:
            x = x.float().div_(127.5).sub_(1.0)
        else:
            x = x.float().clone()
        if self.flip:
            flip = torch.rand(x.shape[0]) < 0.5
            x[flip] = x[flip].flip(-1)
        if self.shift:
            x = _random_shift(x)
        return x


def _random_shift(x: Tensor) -> Tensor:
    """Shifts each image of [B, C, H, W] by (dy, dx) in {-1, 0, 1}^2, padding with -1."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    offsets = torch.randint(0, 3, (b, 2))
    out = torch.empty_like(x)
    for i in range(b):
        dy, dx = int(offsets[i, 0]), int(offsets[i, 1])
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    return out


@lru_cache(maxsize=1)
def _load_all() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64)
    return images, np.asarray(bunch.target, dtype=np.int64)


def split_indices(n: int, part: str, seed: int, n_heldout: int) -> np.ndarray:
    """Indices of ``part`` among ``n`` items: ``"all"`` in order, else a permutation drawn with
    ``numpy.random.default_rng(seed)`` whose last ``n_heldout`` indices are ``"heldout"`` and the
    others (in permutation order) ``"train"``."""
    if part == "all":
        return np.arange(n)
    perm = np.random.default_rng(seed).permutation(n)
    cut = n - n_heldout
    return perm[:cut] if part == "train" else perm[cut:]


def load_digits_split(split: str, seed: int = 0, n_val: int = 297) -> tuple[Tensor, Tensor]:
    """Loads one split of the scikit-learn 8x8 digits (offline).

    A permutation of the 1797 images is drawn with
    ``numpy.random.default_rng(seed)``; its last ``n_val`` indices form
    ``"val"``, the others (in permutation order) ``"train"``; ``"all"`` is the
    full set in its original order.

    Args:
        split: ``"train"``, ``"val"`` or ``"all"``.
        seed: seed of the permutation.
        n_val: validation set size, 1..1796.

    Returns:
        ``(x, y)``: x float32 [N, 1, 8, 8] in [-1, 1], y int64 [N] in 0..9.

    Raises:
        ValueError: for an unknown split or an out-of-range ``n_val``.
    """
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    if not 1 <= int(n_val) < DIGITS_N_IMAGES:
        raise ValueError(f"n_val must be in [1, {DIGITS_N_IMAGES - 1}], got {n_val}")
    images, labels = _load_all()
    idx = split_indices(images.shape[0], "heldout" if split == "val" else split, seed, int(n_val))
    x = torch.from_numpy(images[idx] / 16.0 * 2.0 - 1.0).float().unsqueeze(1)
    y = torch.from_numpy(labels[idx].copy())
    return x.contiguous(), y


class InMemoryImageDataModule(SplitDataModule):
    """Base of the data modules whose two splits fit in memory as image tensors (digits, MNIST): a
    subclass calls ``super().__init__(data_shape)``, then ``save_hyperparameters()`` with ``batch_size``,
    ``num_workers``, ``seed`` and ``augment`` among them, and implements `load_split`."""

    def __init__(self, data_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.data_shape: tuple[int, ...] = tuple(data_shape)
        self.kind: str = "images"
        self.train_x: Tensor | None = None
        self.val_x: Tensor | None = None

    def load_split(self, train: bool) -> Tensor:
        """The training (``train=True``) or held-out images ``[N, *data_shape]`` (float in [-1, 1] or uint8)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Loads both splits (once)."""
        if self.train_x is None:
            self.train_x = self.load_split(True)
        if self.val_x is None:
            self.val_x = self.load_split(False)

    def _loader(self, train: bool) -> DataLoader:
        self.setup()
        hp = self.hparams
        ds = _ImageTensorDataset(self.train_x, shift=bool(hp.augment)) if train else _ImageTensorDataset(self.val_x)
        return _make_loader(ds, hp.batch_size, hp.num_workers, train, hp.seed)

    def reference_data(self, n: int) -> Tensor:
        """The first ``n`` training images as stored (unaugmented, in split order): real data for sample
        metrics (`reference_batches` maps uint8 storage to [-1, 1] like the loaders)."""
        self.setup("fit")
        return self.train_x[: int(n)]


class DigitsDataModule(InMemoryImageDataModule):
    """scikit-learn 8x8 digits, images only, scaled to [-1, 1].

    Batches are float32 tensors [B, 1, 8, 8]. The test and predict sets are the
    validation set. Digits are never flipped (a flipped digit is another glyph).

    Args:
        batch_size: batch size of every loader.
        n_val: number of held-out images (the rest, 1500 by default, train).
        seed: seed of the train/val split and of the training shuffle.
        num_workers: DataLoader worker processes.
        augment: random shift by up to one pixel of the training images.
    """

    def __init__(
        self,
        batch_size: int = 128,
        n_val: int = 297,
        seed: int = 0,
        num_workers: int = 0,
        augment: bool = False,
    ) -> None:
        super().__init__((1, 8, 8))
        _check_loader_args(batch_size, num_workers)
        if not 1 <= int(n_val) < DIGITS_N_IMAGES:
            raise ValueError(
                f"data.init_args.n_val must be in [1, {DIGITS_N_IMAGES - 1}], got {n_val}"
            )
        self.save_hyperparameters()

    def load_split(self, train: bool) -> Tensor:
        hp = self.hparams
        return load_digits_split("train" if train else "val", hp.seed, hp.n_val)[0]
