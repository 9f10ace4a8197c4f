"""A small feature network for FID on the 8x8 digits data set, and its FID metric.

Inception-v3 features are meaningless on 8x8 grey-scale digits (and need weights that
cannot be downloaded offline), so the package ships a tiny CNN classifier trained on
the training split of `sklearn.datasets.load_digits`. Its penultimate layer
(128 ReLU units) plays the role of Inception's pool3 features.

How torchmetrics uses the module (``torchmetrics`` 1.x, ``FrechetInceptionDistance``):

* With ``feature=<nn.Module>`` the metric sets ``used_custom_model=True`` and
  ``update(imgs, real)`` passes ``imgs`` to ``module(imgs)`` *unchanged*: no resizing,
  no uint8 conversion (the ``normalize`` flag only casts for the built-in Inception).
* The feature dimension is read from the module's ``num_features`` attribute (int or
  tensor). Without it the metric would probe the module with a dummy
  ``(1, *input_img_size)`` image, by default ``(1, 3, 299, 299)``, which this network
  cannot take, so the attribute is required here.
* The returned features ``[N, d]`` are cast to float64 for the running sums; the
  final value is cast back to the dtype of the features (float32 here).

Images given to the metric are therefore the model's own float images in ``[-1, 1]``
(``[N, 1, 8, 8]``; ``[N, 64]`` and ``[N, 8, 8]`` are reshaped; ``uint8`` images in
``[0, 255]`` are mapped to ``[-1, 1]``). Inputs are clamped to ``[-1, 1]`` first, like
the uint8 quantisation of the usual image pipelines.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

if TYPE_CHECKING:  # pragma: no cover - typing only
    from torchmetrics.image.fid import FrechetInceptionDistance

__all__ = [
    "DIGITS_FEATURES_WEIGHTS",
    "DigitsFeatureNet",
    "feature_fid",
    "load_frozen_net",
    "load_digits_feature_net",
    "make_digits_fid",
]

#: Location of the shipped state_dict of `DigitsFeatureNet`.
DIGITS_FEATURES_WEIGHTS: Path = Path(__file__).resolve().parent.parent / "assets" / "digits_features.pt"

_REGENERATE_HINT = "regenerate it with `python scripts/train_digits_classifier.py --overwrite`"


class DigitsFeatureNet(nn.Module):
    """Small CNN classifier for 8x8 digits whose penultimate layer gives FID features.

    Architecture: conv3x3(1->32) -> ReLU -> conv3x3(32->64) -> ReLU -> maxpool 2 ->
    linear(1024->128) -> ReLU (features) -> linear(128->10) (logits). It has no
    batch-norm or dropout, so train and eval mode compute the same function.

    Attributes:
        num_features: Size of the feature vector returned by `forward` (128);
            torchmetrics reads it to size the FID statistics.
        num_classes: Number of digit classes (10).
    """

    num_features: int
    num_classes: int

    def __init__(self, num_features: int = 128, num_classes: int = 10) -> None:
        """Build an untrained network.

        Args:
            num_features: Width of the penultimate (feature) layer.
            num_classes: Number of output classes.
        """
        super().__init__()
        self.num_features = int(num_features)
        self.num_classes = int(num_classes)
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, self.num_features)
        self.fc2 = nn.Linear(self.num_features, self.num_classes)

    @staticmethod
    def prepare(x: Tensor) -> Tensor:
        """Bring images to the network's input convention.

        Args:
            x: Images ``[N, 1, 8, 8]``, ``[N, 8, 8]`` or ``[N, 64]``; floating point in
                ``[-1, 1]`` or ``uint8`` in ``[0, 255]``.

        Returns:
            float32 tensor ``[N, 1, 8, 8]`` clamped to ``[-1, 1]``.

        Raises:
            ValueError: If a sample does not have 64 pixels.
        """
        if x.dim() < 2 or x.shape[1:].numel() != 64:
            raise ValueError(f"DigitsFeatureNet expects 8x8 single-channel images, got shape {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            x = x.float() / 127.5 - 1.0
        x = x.reshape(x.shape[0], 1, 8, 8).float()
        return x.clamp(-1.0, 1.0)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features.

        Args:
            x: Images, see `prepare`.

        Returns:
            float32 tensor ``[N, num_features]`` (non-negative, post-ReLU).
        """
        h = self.prepare(x)
        h = F.relu(self.conv1(h))
        h = F.relu(self.conv2(h))
        h = F.max_pool2d(h, 2)
        return F.relu(self.fc1(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """Return the FID features (what ``FrechetInceptionDistance`` calls).

        Args:
            x: Images ``[N, 1, 8, 8]`` in ``[-1, 1]`` (see `prepare` for the
                other accepted layouts).

        Returns:
            float32 tensor ``[N, num_features]``.
        """
        return self.features(x)

    def logits(self, x: Tensor) -> Tensor:
        """Class logits.

        Args:
            x: Images, see `prepare`.

        Returns:
            float32 tensor ``[N, num_classes]``.
        """
        return self.fc2(self.features(x))


def load_digits_feature_net(
    weights_path: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
) -> DigitsFeatureNet:
    """Load the shipped, frozen digits feature network.

    Args:
        weights_path: state_dict file; defaults to the shipped
            ``gddim_lightning/assets/digits_features.pt``.
        device: Device to put the network on.

    Returns:
        A `DigitsFeatureNet` in eval mode with ``requires_grad=False`` on all
        parameters.

    Raises:
        FileNotFoundError: If the weights file does not exist.
        RuntimeError: If the file cannot be read as a matching state_dict.
    """
    return load_frozen_net(DigitsFeatureNet, weights_path or DIGITS_FEATURES_WEIGHTS, "Digits", _REGENERATE_HINT, device)


def load_frozen_net(cls: type[nn.Module], weights_path: str | os.PathLike[str], what: str, hint: str,
                    device: str | torch.device = "cpu") -> nn.Module:
    """A feature network ``cls(num_features=...)`` from a state_dict file, frozen and in eval mode; errors
    name the file and ``hint`` (how to regenerate it)."""
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} feature-network weights not found at {path}; {hint}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError, ValueError) as err:  # corrupt / not a torch file
        raise RuntimeError(f"Could not read {what.lower()} feature-network weights from {path} ({err}); {hint}.") from err
    if not isinstance(state, dict):
        raise RuntimeError(f"{path} does not hold a state_dict (got {type(state).__name__}); {hint}.")
    width = state.get("fc1.weight")
    net = cls(num_features=int(width.shape[0]) if isinstance(width, Tensor) else 128)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise RuntimeError(f"Weights in {path} do not match {cls.__name__} ({err}); {hint}.") from err
    net.eval()
    net.requires_grad_(False)
    return net.to(device)


def feature_fid(net: nn.Module, real_images: Tensor | None, batch_size: int, kwargs: dict[str, Any]
                ) -> FrechetInceptionDistance:
    """torchmetrics FID on ``net``'s features (``reset_real_features=False`` by default), with
    ``real_images`` already added."""
    from torchmetrics.image.fid import FrechetInceptionDistance  # lazy: keeps package import light

    if "feature" in kwargs:
        raise TypeError("the feature network is set here; use FrechetInceptionDistance directly for others")
    kwargs.setdefault("reset_real_features", False)
    # Only meaningful for the dummy probe; these nets expose `num_features`, so no probe happens.
    kwargs.setdefault("normalize", True)
    metric = FrechetInceptionDistance(feature=net, **kwargs)
    if real_images is not None:
        for start in range(0, real_images.shape[0], batch_size):
            metric.update(real_images[start : start + batch_size], real=True)
    return metric


def make_digits_fid(
    *,
    weights_path: str | os.PathLike[str] | None = None,
    real_images: Tensor | None = None,
    batch_size: int = 500,
    **kwargs: Any,
) -> FrechetInceptionDistance:
    """Build a torchmetrics FID metric on the digits feature network.

    ``update(imgs, real=...)`` takes float images ``[N, 1, 8, 8]`` in ``[-1, 1]``
    directly. By default ``reset_real_features=False``, so real statistics added once
    survive `torchmetrics.Metric.reset` and only generated samples need to be
    fed at each evaluation.

    Args:
        weights_path: Feature-network weights; defaults to the shipped file.
        real_images: Optional real images to add to the real statistics right away.
        batch_size: Batch size used to add ``real_images``.
        **kwargs: Passed to ``FrechetInceptionDistance`` (e.g.
            ``reset_real_features``, ``sync_on_compute``); ``feature`` is set here.

    Returns:
        A ``torchmetrics.image.fid.FrechetInceptionDistance`` instance on CPU.

    Raises:
        TypeError: If ``feature`` is passed in ``kwargs``.
    """
    return feature_fid(load_digits_feature_net(weights_path), real_images, batch_size, kwargs)
