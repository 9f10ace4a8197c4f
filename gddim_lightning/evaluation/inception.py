"""Real Inception-v3 FID (CIFAR-10) from a local weights file, via the optional extra.

Nothing here imports torchmetrics' image package, torch-fidelity or torchvision at
module import time: the CPU environment of this project cannot import them. They are
only imported inside `make_inception_fid`, after the checks below.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover - typing only
    from torchmetrics.image.fid import FrechetInceptionDistance

__all__ = ["make_inception_fid", "to_uint8_images"]

_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"


def _torch_fidelity_available() -> bool:
    """Whether torch-fidelity is installed (checked without importing it)."""
    return importlib.util.find_spec("torch_fidelity") is not None


def make_inception_fid(weights_path: str | os.PathLike[str], **kwargs: Any) -> FrechetInceptionDistance:
    """Build torchmetrics' Inception-v3 FID (2048 pool3 features) from local weights.

    No download happens: the FID Inception weights used by torch-fidelity
    (``pt_inception-2015-12-05-6726825d.pth``) must be fetched beforehand on a machine
    with internet and passed by path. With the torchmetrics default ``normalize=False``
    the metric's ``update`` expects ``uint8`` RGB images ``[N, 3, H, W]`` in
    ``[0, 255]``; convert model samples in ``[-1, 1]`` with `to_uint8_images`
    (clamps and rounds, unlike ``normalize=True`` which truncates and wraps values
    outside ``[0, 1]``).

    Args:
        weights_path: Path to the ``pt_inception-2015-12-05`` ``.pth`` file.
        **kwargs: Passed to ``FrechetInceptionDistance`` (``reset_real_features``
            defaults to ``False`` here so real statistics can be cached).

    Returns:
        A ``torchmetrics.image.fid.FrechetInceptionDistance`` with ``feature=2048``.

    Raises:
        FileNotFoundError: If ``weights_path`` is not an existing file.
        ImportError: If torch-fidelity (the ``inception`` extra) is not installed.
        TypeError: If ``feature`` or ``feature_extractor_weights_path`` is in ``kwargs``.
    """
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"make_inception_fid(weights_path=...): no file at {str(path)!r}. The FID Inception weights "
            f"({_WEIGHTS_NAME}, the pt_inception-2015-12-05 .pth used by torch-fidelity) are not downloaded "
            "at run time; download them on a machine with internet and pass their local path."
        )
    if not _torch_fidelity_available():
        raise ImportError(
            "Inception FID needs torch-fidelity: install the optional extra with "
            "`pip install 'gddim-lightning[inception]'` (GPU machines only: it pulls torchvision and a CUDA torch). "
            "For the 8x8 digits use make_digits_fid(); for 2-D points use frechet_distance / sliced_wasserstein."
        )
    for key in ("feature", "feature_extractor_weights_path"):
        if key in kwargs:
            raise TypeError(f"make_inception_fid sets `{key}` itself")
    from torchmetrics.image.fid import FrechetInceptionDistance  # lazy: imports torch-fidelity/torchvision

    kwargs.setdefault("reset_real_features", False)
    return FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(path), **kwargs)


def to_uint8_images(x: Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """Map float images to ``uint8`` in ``[0, 255]`` (clamped, rounded).

    Args:
        x: Float images, e.g. ``[N, C, H, W]`` in ``value_range``.
        value_range: ``(low, high)`` of the input values.

    Returns:
        ``uint8`` tensor of the same shape.

    Raises:
        ValueError: If ``high <= low``.
    """
    low, high = float(value_range[0]), float(value_range[1])
    if not high > low:
        raise ValueError(f"`value_range` must satisfy low < high, got {value_range}")
    y = (x.detach().float() - low) / (high - low)
    return (y.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
