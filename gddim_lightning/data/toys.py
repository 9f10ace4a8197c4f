"""Two-dimensional toy distributions and their LightningDataModule.

Every sampler has the signature ``sample_<name>(n, generator) -> Tensor[n, 2]``
(float32, roughly centred, roughly unit scale) and draws all of its randomness
from ``generator``, so a fixed seed gives a fixed point cloud.

The Gaussian mixtures are defined by `toy_mixture_params` (exact weights,
means, diagonal stds), which exact-score oracles elsewhere reuse. This module
also holds the loader helpers shared by the other data modules.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..limits import MAX_BATCH, check_bounded
from .loaders import ResumableLoader, SplitDataModule

__all__ = [
    "TOY_NAMES", "ToyDataModule", "sample_checkerboard", "sample_eight_gaussians",
    "sample_gaussian_mixture", "sample_mixture", "sample_swiss_roll", "sample_toy",
    "sample_two_moons", "toy_mixture_params",
]  # fmt: skip


# --- shared loader helpers (used by digits, cifar10 and folder as well) ---
def _derive_seed(seed: int, stream: int) -> int:
    """Returns an independent 63-bit seed for ``stream`` derived from ``seed``."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(stream)])
    return int(ss.generate_state(1, dtype=np.uint64)[0]) & 0x7FFF_FFFF_FFFF_FFFF


def collate_tensors(batch: Tensor | list[Tensor]) -> Tensor:
    """Collates into one tensor; a dataset's ``__getitems__`` may already return one."""
    return batch if isinstance(batch, Tensor) else torch.stack(list(batch), dim=0)


def _make_loader(
    dataset: Dataset, batch_size: int, num_workers: int, train: bool, seed: int = 0
) -> DataLoader:
    """Builds a DataLoader following the package conventions.

    Training loaders shuffle with a generator seeded by ``seed`` and drop the
    last incomplete batch when the set is larger than one batch; evaluation
    loaders keep the order and every sample.
    """
    n = len(dataset)  # type: ignore[arg-type]
    common = dict(batch_size=batch_size, num_workers=num_workers, persistent_workers=num_workers > 0,
                  collate_fn=collate_tensors)
    if train:  # position within the epoch is saved in checkpoints (exact mid-epoch resume)
        return ResumableLoader(dataset, seed=int(seed), drop_last=n > batch_size, **common)
    return DataLoader(dataset, shuffle=False, **common)


def _check_loader_args(batch_size: int, num_workers: int) -> None:
    """Raises ValueError for a non-positive batch size or negative worker count."""
    if isinstance(batch_size, (int, float)) and not isinstance(batch_size, bool) and batch_size < 1:
        raise ValueError(f"data.init_args.batch_size must be >= 1, got {batch_size}")
    check_bounded("data.init_args.batch_size", batch_size, 1, MAX_BATCH)
    if int(num_workers) < 0:
        raise ValueError(f"data.init_args.num_workers must be >= 0, got {num_workers}")


class _PointDataset(Dataset):
    """Rows of a float32 tensor as samples; ``__getitems__`` fetches whole batches."""

    def __init__(self, x: Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> Tensor:
        return self.x[i]

    def __getitems__(self, idx: list[int]) -> Tensor:
        return self.x[torch.as_tensor(idx, dtype=torch.long)]


# --- samplers ---
def toy_mixture_params(name: str = "mixture") -> dict[str, Tensor]:
    """Exact parameters of the toy Gaussian mixtures (float32).

    Args:
        name: ``"mixture"``: 8 components on a ring of radius 2, std 0.15 and
            unequal weights proportional to (4, 1, 2, 1, 4, 1, 2, 1) (symmetric
            under a half turn, hence mean zero). ``"eight_gaussians"``: the same
            ring with equal weights and std 0.2.

    Returns:
        A dict with ``weights`` [K] (sum 1), ``means`` [K, 2] and ``stds`` [K, 2]
        (diagonal standard deviation per component).

    Raises:
        ValueError: for an unknown name.
    """
    specs = {"mixture": ([4, 1, 2, 1, 4, 1, 2, 1], 0.15), "eight_gaussians": ([1] * 8, 0.2)}
    if name not in specs:
        raise ValueError(f"unknown mixture {name!r}; allowed: 'mixture', 'eight_gaussians'")
    raw_weights, std = specs[name]
    weights = torch.tensor(raw_weights, dtype=torch.float64)
    angles = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
    means = 2.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    stds = torch.full((8, 2), std, dtype=torch.float32)
    return {"weights": (weights / weights.sum()).float(), "means": means.float(), "stds": stds}


def sample_mixture(params: dict[str, Tensor], n: int, generator: torch.Generator) -> Tensor:
    """Draws ``n`` points from a diagonal Gaussian mixture.

    Args:
        params: dict as returned by `toy_mixture_params`.
        n: number of samples.
        generator: source of randomness.

    Returns:
        Tensor [n, D] float32.
    """
    w, mu, sd = params["weights"], params["means"], params["stds"]
    k = torch.multinomial(w.double(), n, replacement=True, generator=generator)
    eps = torch.randn(n, mu.shape[1], generator=generator)
    return (mu[k] + sd[k] * eps).float()


def sample_gaussian_mixture(n: int, generator: torch.Generator) -> Tensor:
    """``n`` points ``[n, 2]`` (float32, from ``generator``) of the unequal-weight 8-component ring
    ``toy_mixture_params("mixture")``."""
    return sample_mixture(toy_mixture_params("mixture"), n, generator)


def sample_eight_gaussians(n: int, generator: torch.Generator) -> Tensor:
    """``n`` points ``[n, 2]`` (float32, from ``generator``) of 8 equal-weight Gaussians on a ring of
    radius 2 (std 0.2)."""
    return sample_mixture(toy_mixture_params("eight_gaussians"), n, generator)


def sample_checkerboard(n: int, generator: torch.Generator) -> Tensor:
    """Samples uniformly from the 8 dark squares of a 4x4 board on [-2, 2]^2.

    Args:
        n: number of samples.
        generator: source of randomness.

    Returns:
        Tensor [n, 2] float32 (mean zero).
    """
    row = torch.randint(0, 4, (n,), generator=generator)
    col = 2 * torch.randint(0, 2, (n,), generator=generator) + row % 2  # (row + col) even
    cell = torch.stack([col, row], dim=1).float()
    return cell + torch.rand(n, 2, generator=generator) - 2.0


def sample_swiss_roll(n: int, generator: torch.Generator) -> Tensor:
    """Samples a 2-D swiss roll ``t (cos t, sin t)``, t uniform in [1.5 pi, 4.5 pi].

    The exact mean of the noiseless roll, (2, 2 / (3 pi)), is removed, noise of
    std 0.5 added and the result divided by 6.

    Args:
        n: number of samples.
        generator: source of randomness.

    Returns:
        Tensor [n, 2] float32.
    """
    t = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(n, generator=generator))
    x = torch.stack([t * torch.cos(t) - 2.0, t * torch.sin(t) - 2.0 / (3.0 * math.pi)], dim=1)
    x = x + 0.5 * torch.randn(n, 2, generator=generator)
    return (x / 6.0).float()


def sample_two_moons(n: int, generator: torch.Generator) -> Tensor:
    """Samples two interleaving half circles (noise std 0.1), centred.

    Args:
        n: number of samples.
        generator: source of randomness.

    Returns:
        Tensor [n, 2] float32.
    """
    theta = math.pi * torch.rand(n, generator=generator)
    lower = torch.rand(n, generator=generator) < 0.5
    upper_pts = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    lower_pts = torch.stack([1.0 - torch.cos(theta), 0.5 - torch.sin(theta)], dim=1)
    x = torch.where(lower[:, None], lower_pts, upper_pts)
    x = x + 0.1 * torch.randn(n, 2, generator=generator)
    return (x - torch.tensor([0.5, 0.25])).float()


_SAMPLERS: dict[str, Callable[[int, torch.Generator], Tensor]] = {
    "checkerboard": sample_checkerboard,
    "swiss_roll": sample_swiss_roll,
    "eight_gaussians": sample_eight_gaussians,
    "two_moons": sample_two_moons,
    "gaussian_mixture": sample_gaussian_mixture,
}
TOY_NAMES: tuple[str, ...] = tuple(_SAMPLERS)


def sample_toy(name: str, n: int, generator: torch.Generator) -> Tensor:
    """Samples ``n`` points of the toy distribution ``name``.

    Args:
        name: one of ``TOY_NAMES``.
        n: number of samples.
        generator: source of randomness.

    Returns:
        Tensor [n, 2] float32.

    Raises:
        ValueError: for an unknown name, listing the allowed ones.
    """
    if name not in _SAMPLERS:
        allowed = ", ".join(TOY_NAMES)
        raise ValueError(f"data.init_args.name: unknown toy {name!r}; allowed: {allowed}")
    return _SAMPLERS[name](int(n), generator)


class ToyDataModule(SplitDataModule):
    """2-D toy point clouds generated once, deterministically, from ``seed``.

    Args:
        name: one of ``TOY_NAMES`` (checkerboard, swiss_roll, eight_gaussians,
            two_moons, gaussian_mixture).
        n_train: number of training points.
        n_val: number of validation points (also used for test and predict).
        batch_size: batch size of every loader.
        seed: seed of the data and of the training shuffle; train and val use
            distinct streams derived from it.
        num_workers: DataLoader worker processes.

    Raises:
        ValueError: for an unknown name or non-positive sizes.
    """

    def __init__(
        self,
        name: str,
        n_train: int = 100_000,
        n_val: int = 10_000,
        batch_size: int = 1024,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        sample_toy(name, 1, torch.Generator())  # raises ValueError for an unknown name
        if n_train < 1 or n_val < 1:
            raise ValueError(f"data.init_args.n_train/n_val must be >= 1, got {n_train}/{n_val}")
        _check_loader_args(batch_size, num_workers)
        self.save_hyperparameters()
        self.data_shape: tuple[int, ...] = (2,)
        self.kind: str = "points"
        self.train_data: Tensor | None = None
        self.val_data: Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        """Generates the train and val point clouds (once)."""
        hp = self.hparams
        if self.train_data is None or self.val_data is None:
            gens = [torch.Generator().manual_seed(_derive_seed(hp.seed, k)) for k in (1, 2)]
            self.train_data = sample_toy(hp.name, hp.n_train, gens[0])
            self.val_data = sample_toy(hp.name, hp.n_val, gens[1])

    def _loader(self, train: bool) -> DataLoader:
        self.setup()
        data = self.train_data if train else self.val_data
        hp = self.hparams
        return _make_loader(_PointDataset(data), hp.batch_size, hp.num_workers, train, hp.seed)

    def reference_data(self, n: int) -> Tensor:
        """The first ``n`` training points (in generation order): real data for sample metrics."""
        self.setup("fit")
        return self.train_data[: int(n)]
