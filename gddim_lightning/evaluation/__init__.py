"""Offline sample-quality metrics.

* Metric components for `SampleCallback` (`metrics`): `SampleMetric` (the protocol),
  `DigitsFID`, `MNISTFID`, `InceptionFID`, `PointsMetric`, `NoMetric`, and `auto_metric`.
* 8x8 digits and 28x28 MNIST: FID on the features of small shipped CNNs
  (`make_digits_fid`, `DigitsFeatureNet`; `make_mnist_fid`, `MNISTFeatureNet`).
* Point clouds / flattened images: `frechet_distance`,
  `sliced_wasserstein`, `gaussian_moment_error`.
* CIFAR-10: real Inception FID from a local weights file (`make_inception_fid`,
  needs the ``inception`` extra).

Importing this package does not import torchvision, torch-fidelity or
``torchmetrics.image``.
"""

from gddim_lightning.evaluation.digits_features import (
    DIGITS_FEATURES_WEIGHTS,
    DigitsFeatureNet,
    load_digits_feature_net,
    make_digits_fid,
)
from gddim_lightning.evaluation.mnist_features import (
    MNIST_FEATURES_WEIGHTS,
    MNISTFeatureNet,
    load_mnist_feature_net,
    make_mnist_fid,
)
from gddim_lightning.evaluation.inception import make_inception_fid, to_uint8_images
from gddim_lightning.evaluation.metrics import (
    DigitsFID,
    FeatureFID,
    InceptionFID,
    MNISTFID,
    NoMetric,
    PointsMetric,
    SampleMetric,
    auto_metric,
)
from gddim_lightning.evaluation.points import frechet_distance, gaussian_moment_error, sliced_wasserstein

__all__ = [
    "DIGITS_FEATURES_WEIGHTS",
    "DigitsFID",
    "DigitsFeatureNet",
    "FeatureFID",
    "InceptionFID",
    "MNISTFID",
    "MNIST_FEATURES_WEIGHTS",
    "MNISTFeatureNet",
    "NoMetric",
    "PointsMetric",
    "SampleMetric",
    "auto_metric",
    "frechet_distance",
    "gaussian_moment_error",
    "load_digits_feature_net",
    "make_digits_fid",
    "make_inception_fid",
    "load_mnist_feature_net",
    "make_mnist_fid",
    "sliced_wasserstein",
    "to_uint8_images",
]
