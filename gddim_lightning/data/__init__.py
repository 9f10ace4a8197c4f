"""Offline LightningDataModules: 2-D toys, sklearn digits, CIFAR-10, image folders.

Every datamodule exposes ``data_shape`` (shape of one sample) and ``kind``
(``"points"`` or ``"images"``) right after construction, and its loaders yield
plain float32 tensors ``[B, *data_shape]`` (images in [-1, 1]). Nothing is
ever downloaded.
"""

from .cifar10 import CIFAR10_TEST_FILE, CIFAR10_TRAIN_FILES, CIFAR10DataModule, load_cifar10_batch
from .digits import DIGITS_N_IMAGES, DigitsDataModule, load_digits_split
from .folder import IMAGE_EXTENSIONS, ImageFolderDataModule, find_images, load_image
from .seeds import SeedDataModule, SeedDataset
from .toys import (
    TOY_NAMES,
    ToyDataModule,
    sample_checkerboard,
    sample_eight_gaussians,
    sample_gaussian_mixture,
    sample_mixture,
    sample_swiss_roll,
    sample_toy,
    sample_two_moons,
    toy_mixture_params,
)

__all__ = [
    "CIFAR10DataModule",
    "CIFAR10_TEST_FILE",
    "CIFAR10_TRAIN_FILES",
    "DIGITS_N_IMAGES",
    "DigitsDataModule",
    "IMAGE_EXTENSIONS",
    "ImageFolderDataModule",
    "SeedDataModule",
    "SeedDataset",
    "TOY_NAMES",
    "ToyDataModule",
    "find_images",
    "load_cifar10_batch",
    "load_digits_split",
    "load_image",
    "sample_checkerboard",
    "sample_eight_gaussians",
    "sample_gaussian_mixture",
    "sample_mixture",
    "sample_swiss_roll",
    "sample_toy",
    "sample_two_moons",
    "toy_mixture_params",
]
