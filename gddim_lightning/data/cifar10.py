"""CIFAR-10 from the standard "python version" pickle batches on disk.

Nothing is ever downloaded. Get ``cifar-10-python.tar.gz`` on a machine with
internet, extract it, and pass the extracted folder (``cifar-10-batches-py``)
or its parent as ``data.init_args.root``.

Security: the batches are Python pickles and unpickling can execute arbitrary
code, so ``root`` must be a trusted folder. Each file is checked to be a
regular file of at most 200 MB before it is unpickled.
"""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .loaders import SplitDataModule
from .digits import _ImageTensorDataset
from .toys import _check_loader_args, _make_loader

__all__ = ["CIFAR10_TEST_FILE", "CIFAR10_TRAIN_FILES", "CIFAR10DataModule", "load_cifar10_batch"]

CIFAR10_TRAIN_FILES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
_SUBDIR = "cifar-10-batches-py"
_MAX_BYTES = 200 * 1024 * 1024
_HOWTO = (
    "download the CIFAR-10 python version (cifar-10-python.tar.gz) on a machine with "
    "internet, extract it, and pass its folder as data.init_args.root"
)


def _resolve_root(root: str | os.PathLike) -> Path:
    """Returns the folder holding the batch files: ``root`` or ``root/cifar-10-batches-py``.

    Raises:
        FileNotFoundError: if the root is missing or a batch file is absent.
    """
    wanted = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(
            f"data.init_args.root={str(root)!r} is not an existing folder; expected the "
            f"files {', '.join(wanted)} in it or in its subfolder {_SUBDIR}/; {_HOWTO}"
        )
    candidates = [base / _SUBDIR, base] if (base / _SUBDIR).is_dir() else [base]
    best, best_missing = candidates[0], list(wanted)
    for folder in candidates:
        missing = [name for name in wanted if not (folder / name).exists()]
        if not missing:
            return folder
        if len(missing) < len(best_missing):
            best, best_missing = folder, missing
    raise FileNotFoundError(
        f"data.init_args.root={str(root)!r}: missing CIFAR-10 file(s) "
        f"{', '.join(best_missing)} in {str(best)!r} (expected {', '.join(wanted)} in the "
        f"root or in {_SUBDIR}/); {_HOWTO}"
    )


def load_cifar10_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR-10 pickle batch. The file must come from a trusted source.

    Args:
        path: a batch file (``data_batch_<i>`` or ``test_batch``).

    Returns:
        ``(images, labels)``: uint8 [N, 3, 32, 32] and int64 [N].

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not a regular file, exceeds 200 MB, cannot be
            unpickled, or lacks the ``b"data"`` / ``b"labels"`` layout.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"CIFAR-10 batch file {str(p)!r} not found; {_HOWTO}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"CIFAR-10 batch {str(p)!r} is not a regular file; {_HOWTO}")
    if st.st_size > _MAX_BYTES:
        raise ValueError(
            f"CIFAR-10 batch {str(p)!r} is {st.st_size} bytes, over the 200 MB limit; "
            f"refusing to unpickle it"
        )
    try:
        with open(p, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except Exception as err:  # UnpicklingError, EOFError, ValueError, ...
        raise ValueError(
            f"could not unpickle CIFAR-10 batch {str(p)!r} ({type(err).__name__}: {err}); "
            f"the file is corrupt or not a CIFAR-10 python batch; {_HOWTO}"
        ) from err
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise ValueError(
            f"CIFAR-10 batch {str(p)!r} is not a dict with keys b'data' and b'labels'; {_HOWTO}"
        )
    data = np.asarray(d[b"data"])
    labels = np.asarray(d[b"labels"], dtype=np.int64).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"CIFAR-10 batch {str(p)!r}: b'data' must be uint8 [N, 3072], "
            f"got {data.dtype} {list(data.shape)}"
        )
    if labels.shape[0] != data.shape[0]:
        raise ValueError(
            f"CIFAR-10 batch {str(p)!r}: {labels.shape[0]} labels for {data.shape[0]} images"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _load_files(folder: Path, names: tuple[str, ...]) -> Tensor:
    arrays = [load_cifar10_batch(folder / name)[0] for name in names]
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(arrays, axis=0)))


class CIFAR10DataModule(SplitDataModule):
    """CIFAR-10 images (no labels) scaled to [-1, 1], read from local pickles.

    Train is ``data_batch_1`` .. ``data_batch_5`` (50 000 images, randomly
    flipped horizontally if ``random_flip``); val, test and predict are
    ``test_batch``. Images are kept in memory as uint8 and converted per batch.

    Security: the batches are pickles; unpickling can run code, so ``root``
    must be trusted. Files larger than 200 MB or not regular are refused.

    Args:
        root: folder holding the batch files, or its parent containing
            ``cifar-10-batches-py/``.
        batch_size: batch size of every loader.
        num_workers: DataLoader worker processes.
        seed: seed of the training shuffle.
        random_flip: horizontal flip augmentation of the training images.

    Raises:
        FileNotFoundError: at construction if the root or a batch file is missing.
    """

    def __init__(
        self,
        root: str,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        random_flip: bool = True,
    ) -> None:
        super().__init__()
        _check_loader_args(batch_size, num_workers)
        self.save_hyperparameters()
        self.folder: Path = _resolve_root(root)
        self.data_shape: tuple[int, ...] = (3, 32, 32)
        self.kind: str = "images"
        self.train_x: Tensor | None = None
        self.test_x: Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        """Loads the training batches (for fit) and the test batch (always)."""
        if stage in (None, "fit") and self.train_x is None:
            self.train_x = _load_files(self.folder, CIFAR10_TRAIN_FILES)
        if self.test_x is None:
            self.test_x = _load_files(self.folder, (CIFAR10_TEST_FILE,))

    def _loader(self, train: bool) -> DataLoader:
        self.setup("fit" if train else "validate")
        hp = self.hparams
        if train:
            ds = _ImageTensorDataset(self.train_x, flip=bool(hp.random_flip))
        else:
            ds = _ImageTensorDataset(self.test_x)
        return _make_loader(ds, hp.batch_size, hp.num_workers, train, hp.seed)

    def reference_data(self, n: int) -> Tensor:
        """The first ``n`` training images, unflipped, as stored (uint8 ``[n, 3, 32, 32]``, a quarter of the
        float memory; `reference_batches` maps them to ``[-1, 1]`` like the loaders): real data for metrics."""
        self.setup("fit")
        return self.train_x[: int(n)]
