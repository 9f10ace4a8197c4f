"""Offline LightningDataModules: 2-D toys, sklearn digits, MNIST (5,000 shipped digits), CIFAR-10, image folders.

Every datamodule exposes ``data_shape`` (shape of one sample) and ``kind``
(``"points"`` or ``"images"``) right after construction, its loaders yield
plain float32 tensors ``[B, *data_shape]`` (images in [-1, 1]), and
``reference_data(n)`` returns the first ``n`` unaugmented training items for
sample metrics. Nothing is ever downloaded. What the package needs from a data
module of your own (labelled ``(x, y)`` batches included) is in `batches` and
on the Data page of the docs.
"""

from .batches import BATCH_KEYS, as_float_images, data_batch, reference_batches
from .cifar10 import CIFAR10_TEST_FILE, CIFAR10_TRAIN_FILES, CIFAR10DataModule, load_cifar10_batch
from .digits import DIGITS_N_IMAGES, DigitsDataModule, load_digits_split
from .mnist import MNIST_HELDOUT, MNIST_N_IMAGES, MNISTDataModule, load_mnist_split
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
    "BATCH_KEYS",
    "CIFAR10DataModule",
    "CIFAR10_TEST_FILE",
    "CIFAR10_TRAIN_FILES",
    "DIGITS_N_IMAGES",
    "DigitsDataModule",
    "IMAGE_EXTENSIONS",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "MNIST_HELDOUT",
    "MNIST_N_IMAGES",
    "SeedDataModule",
    "SeedDataset",
    "TOY_NAMES",
    "ToyDataModule",
    "as_float_images",
    "data_batch",
    "find_images",
    "load_cifar10_batch",
    "load_digits_split",
    "load_image",
    "load_mnist_split",
    "reference_batches",
    "sample_checkerboard",
    "sample_eight_gaussians",
    "sample_gaussian_mixture",
    "sample_mixture",
    "sample_swiss_roll",
    "sample_toy",
    "sample_two_moons",
    "toy_mixture_params",
]
