"""Images from a local folder tree (any layout), square-cropped and resized.

Files are found recursively by extension, sorted, and split into train / val
by a permutation drawn from ``seed``. Images are decoded lazily with PIL on
access, so arbitrarily large folders work and ``num_workers`` parallelises the
decoding.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .loaders import SplitDataModule
from .toys import _check_loader_args, _make_loader

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataModule", "find_images", "load_image"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def find_images(root: str | os.PathLike) -> list[Path]:
    """Lists the image files under ``root``, recursively, in sorted order.

    Args:
        root: folder to search; files are matched by (case-insensitive)
            extension in ``IMAGE_EXTENSIONS``.

    Returns:
        Sorted list of paths.

    Raises:
        FileNotFoundError: if ``root`` is not a folder or holds no image.
    """
    base = Path(root).expanduser()
    exts = ", ".join(IMAGE_EXTENSIONS)
    if not base.is_dir():
        raise FileNotFoundError(
            f"data.init_args.root={str(root)!r} is not an existing folder; expected a folder "
            f"(searched recursively) of images with extensions {exts}; copy or mount your "
            f"images there and pass its path as data.init_args.root"
        )
    files, skipped = [], []
    for p in sorted(base.rglob("*")):
        if p.is_file():
            (files if p.suffix.lower() in IMAGE_EXTENSIONS else skipped).append(p)
    skipped = [p for p in skipped if not p.name.startswith(".")]  # .DS_Store and the like
    if skipped and files:
        names = ", ".join(str(p.relative_to(base)) for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        warnings.warn(f"data.init_args.root={str(root)!r}: skipped {len(skipped)} file(s) that are not "
                      f"{exts} ({names}); convert them to PNG to use them", stacklevel=2)
    if not files:
        raise FileNotFoundError(
            f"data.init_args.root={str(root)!r}: no image files found (searched recursively "
            f"for extensions {exts}); put your images there or pass another folder as "
            f"data.init_args.root"
        )
    return files


def load_image(path: str | os.PathLike, image_size: int, channels: int = 3) -> Tensor:
    """Loads one image, centre-crops it to a square and resizes it.

    Downscaling uses Lanczos, upscaling bicubic resampling.

    Args:
        path: image file.
        image_size: side of the output square.
        channels: 3 (RGB) or 1 (grayscale, PIL mode "L").

    Returns:
        float32 tensor [channels, image_size, image_size] in [-1, 1].

    Raises:
        ValueError: if ``channels`` is not 1 or 3, or the file cannot be decoded.
    """
    if channels not in (1, 3):
        raise ValueError(f"data.init_args.channels must be 1 or 3, got {channels}")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            scale, im = _decode(im, channels, path)
    except ValueError:
        raise
    except Exception as err:  # UnidentifiedImageError, OSError, truncated data, ...
        raise ValueError(
            f"could not read image {str(path)!r} ({type(err).__name__}: {err}); "
            f"remove or replace the file"
        ) from err
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.crop((left, top, left + side, top + side))
    if side != image_size:
        resample = Image.Resampling.LANCZOS if side > image_size else Image.Resampling.BICUBIC
        im = im.resize((image_size, image_size), resample=resample)
    arr = np.asarray(im, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] != channels:  # a high-bit-depth grey image asked for as RGB
        arr = np.repeat(arr, channels, axis=2)
    x = torch.from_numpy(arr.transpose(2, 0, 1).copy())
    return x.div_(scale / 2.0).sub_(1.0).clamp_(-1.0, 1.0)


#: modes of grey images deeper than 8 bits (16-bit PNG, TIFF): read as float, never squeezed into 8 bits
_DEEP_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _decode(im: Image.Image, channels: int, path: Any) -> tuple[float, Image.Image]:
    """The image in a mode that keeps its precision, and its full-scale value. 16-bit grey images
    become float images scaled by 65535 (``convert("L")`` would clip them at 255); an alpha channel that
    is not fully opaque is dropped with a warning; floating-point images are refused (no known range)."""
    if im.mode == "F":
        raise ValueError(f"image {str(path)!r} holds floating-point pixels (mode F) with no defined range; "
                         "save it as an 8- or 16-bit PNG")
    if im.mode in _DEEP_GREY:
        top = im.getextrema()[1]
        scale = 65535.0 if im.mode.startswith("I;16") or top > 255 else 255.0
        return scale, im.convert("F")
    if "A" in im.getbands() and im.getchannel("A").getextrema()[0] < 255:
        warnings.warn(f"image {str(path)!r} has transparent pixels: its alpha channel is dropped (the colour "
                      "under it is used)", stacklevel=3)
    return 255.0, im.convert("RGB" if channels == 3 else "L")


class _ImageFileDataset(Dataset):
    """Decodes image files on access; optional random horizontal flip."""

    def __init__(self, files: list[Path], image_size: int, channels: int, flip: bool) -> None:
        self.files = files
        self.image_size = image_size
        self.channels = channels
        self.flip = flip

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tensor:
        x = load_image(self.files[i], self.image_size, self.channels)
        if self.flip and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        return x


class ImageFolderDataModule(SplitDataModule):
    """Unlabelled images from a local folder, as float32 [B, C, S, S] in [-1, 1].

    Args:
        root: folder searched recursively for .png/.jpg/.jpeg/.bmp/.webp files.
        image_size: side S of the square output (centre crop, then resize).
        channels: 3 for RGB, 1 for grayscale.
        batch_size: batch size of every loader.
        val_fraction: fraction of the images held out for val/test/predict, in
            [0, 1); at least one image is held out when it is positive and
            at least one is kept for training.
        num_workers: DataLoader worker processes.
        seed: seed of the split and of the training shuffle.
        random_flip: horizontal flip augmentation of the training images.

    Raises:
        ValueError: for bad ``channels``, ``image_size`` or ``val_fraction``.
        FileNotFoundError: at construction if the root is missing or has no image.
    """

    def __init__(
        self,
        root: str,
        image_size: int,
        channels: int = 3,
        batch_size: int = 64,
        val_fraction: float = 0.05,
        num_workers: int = 0,
        seed: int = 0,
        random_flip: bool = True,
    ) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"data.init_args.channels must be 1 or 3, got {channels}")
        if int(image_size) < 1:
            raise ValueError(f"data.init_args.image_size must be >= 1, got {image_size}")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ValueError(f"data.init_args.val_fraction must be in [0, 1), got {val_fraction}")
        _check_loader_args(batch_size, num_workers)
        self.save_hyperparameters()
        self.data_shape: tuple[int, ...] = (int(channels), int(image_size), int(image_size))
        self.kind: str = "images"
        self.files: list[Path] = find_images(root)
        self.train_files: list[Path] = []
        self.val_files: list[Path] = []
        self._split()

    def _split(self) -> None:
        n = len(self.files)
        frac = float(self.hparams.val_fraction)
        n_val = 0 if frac == 0.0 or n < 2 else min(max(1, round(frac * n)), n - 1)
        perm = np.random.default_rng(self.hparams.seed).permutation(n)
        self.train_files = [self.files[i] for i in perm[: n - n_val]]
        self.val_files = [self.files[i] for i in perm[n - n_val :]]

    def setup(self, stage: str | None = None) -> None:
        """Nothing to load up front: files are listed at construction, decoded lazily."""

    def _loader(self, train: bool) -> DataLoader:
        hp = self.hparams
        files = self.train_files if train else self.val_files
        flip = bool(hp.random_flip) and train
        ds = _ImageFileDataset(files, int(hp.image_size), int(hp.channels), flip)
        return _make_loader(ds, hp.batch_size, hp.num_workers, train, hp.seed)

    def reference_data(self, n: int) -> Tensor:
        """The first ``n`` training images (unflipped, in split order), decoded: real data for sample metrics."""
        hp = self.hparams
        files = self.train_files[: int(n)]
        return torch.stack([load_image(f, int(hp.image_size), int(hp.channels)) for f in files])
