"""Sample-quality metrics as components: what `SampleCallback` feeds, and the metrics that ship.

Longer than 300 lines: the protocol and its four small implementations stay together, so that a new
metric is read and written beside the ones it imitates; most lines are documentation.

A metric is a `SampleMetric`: it is given real items (``update_real``) once and generated samples
(``update_fake``) at every evaluation, and ``compute()`` returns ``{name: value}``; the callback logs
each value as ``{name}_{count}`` (``fid_2k``, ``fd_2k``, ``swd_2k``). Pass one to the callback by class
path::

    metric:
      class_path: gddim_lightning.evaluation.DigitsFID

* `DigitsFID`: FID on the shipped 8x8 digits feature network (``fid``).
* `MNISTFID`: FID on the shipped 28x28 MNIST feature network (``fid``).
* `InceptionFID`: FID on Inception-v3 from a local weights file (``fid``; needs the ``inception`` extra).
* `PointsMetric`: Frechet distance and sliced Wasserstein of raw coordinates (``fd``, ``swd``).
* `NoMetric`: none (grid / scatter plot and timings only).

An FID on another feature network (say 28x28 MNIST) is one more `FeatureFID` subclass here: set
``data_shape`` and build the torchmetrics metric in ``build``.

Under DDP the callback feeds rank ``r`` the items ``k`` with ``k % world_size == r`` (real and
generated alike), and every rank calls ``compute()``: FID states are summed across ranks by
torchmetrics, point clouds are gathered back in item order.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

from .._warn import warn_user
from .digits_features import make_digits_fid
from .mnist_features import make_mnist_fid
from .inception import _WEIGHTS_NAME, make_inception_fid, to_uint8_images
from .points import frechet_distance, sliced_wasserstein

if TYPE_CHECKING:  # pragma: no cover - typing only
    from torchmetrics.image.fid import FrechetInceptionDistance

__all__ = ["AUTO_FIDS", "METRICS", "DigitsFID", "FeatureFID", "InceptionFID", "MNISTFID", "NoMetric", "PointsMetric",
           "SampleMetric",
           "auto_metric", "metric_from_name"]


class SampleMetric(ABC):
    """What `SampleCallback` needs from a sample-quality metric.

    Inputs are float tensors ``[B, *data_shape]`` (images in ``[-1, 1]``), this rank's share only.
    Real statistics persist until `reset_real`; `reset` forgets the generated samples only.

    Attributes:
        names: names of the values `compute` returns (logged as ``{name}_{count}``); empty: no metric.
    """

    names: tuple[str, ...] = ()

    def check_shape(self, data_shape: tuple[int, ...]) -> None:
        """Raise ValueError (saying what to use instead) if samples of ``data_shape`` cannot be scored."""

    def to(self, device: torch.device | str) -> SampleMetric:
        """Move the metric's state and networks to ``device``; returns self."""
        return self

    @abstractmethod
    def reset_real(self) -> None:
        """Forget the real statistics."""

    @abstractmethod
    def update_real(self, x: Tensor) -> None:
        """Add real items ``[B, *data_shape]``."""

    @abstractmethod
    def reset(self) -> None:
        """Forget the generated samples (keeps the real statistics)."""

    @abstractmethod
    def update_fake(self, x: Tensor) -> None:
        """Add generated samples ``[B, *data_shape]``."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """``{name: value}`` over all ranks (a collective under DDP: every rank calls it)."""


class NoMetric(SampleMetric):
    """No metric: the callback logs its grid or scatter plot and timings only, and reads no real data."""

    def reset_real(self) -> None:
        pass

    def update_real(self, x: Tensor) -> None:
        pass

    def reset(self) -> None:
        pass

    def update_fake(self, x: Tensor) -> None:
        pass

    def compute(self) -> dict[str, float]:
        return {}


class FeatureFID(SampleMetric):
    """FID on the features of a network: a thin wrapper around torchmetrics' ``FrechetInceptionDistance``.

    Subclasses set ``data_shape`` (the one shape the network takes; None: checked in `check_shape`) and
    build the metric (with ``reset_real_features=False``) in `build`; `prepare` maps samples to the
    network's input. The torchmetrics object is `fid` (kept off the LightningModule and its checkpoints).
    """

    names = ("fid",)
    data_shape: tuple[int, ...] | None = None
    #: what the network scores, for the shape error (e.g. ``"8x8 digits"``); None: the generic message
    subject: str | None = None
    #: what to use instead, for the shape error
    instead: str = "InceptionFID for other images or PointsMetric"

    def __init__(self) -> None:
        self.fid = self.build()

    @abstractmethod
    def build(self) -> FrechetInceptionDistance:
        """The torchmetrics metric (built at construction, so missing weights fail before training)."""

    def prepare(self, x: Tensor) -> Tensor:
        """Samples ``[B, *data_shape]`` in ``[-1, 1]`` -> the feature network's input."""
        return x

    def check_shape(self, data_shape: tuple[int, ...]) -> None:
        if self.data_shape is None or tuple(data_shape) == self.data_shape:
            return
        name = type(self).__name__
        if self.subject is None:
            raise ValueError(f"{name} scores data of shape {self.data_shape}, the data shape is "
                             f"{tuple(data_shape)}; use {self.instead}")
        raise ValueError(f"{name} needs {self.subject} (data_shape {self.data_shape}), got {tuple(data_shape)}; "
                         f"use {self.instead}")

    def to(self, device: torch.device | str) -> FeatureFID:
        self.fid = self.fid.to(device)
        return self

    def reset_real(self) -> None:
        self.fid.reset_real_features = True
        self.fid.reset()
        self.fid.reset_real_features = False

    def update_real(self, x: Tensor) -> None:
        self.fid.update(self.prepare(x), real=True)

    def reset(self) -> None:
        self.fid.reset()  # fake statistics only (reset_real_features=False)

    def update_fake(self, x: Tensor) -> None:
        self.fid.update(self.prepare(x), real=False)

    def compute(self) -> dict[str, float]:
        return {"fid": float(self.fid.compute())}  # torchmetrics syncs the states across ranks


class DigitsFID(FeatureFID):
    """FID on the shipped 8x8 digits feature network (`make_digits_fid`), for data of shape ``(1, 8, 8)``.

    Args:
        weights_path: feature-network weights; default the shipped file.
    """

    data_shape = (1, 8, 8)
    subject = "8x8 digits"
    instead = "gddim_lightning.evaluation.InceptionFID or PointsMetric"

    def __init__(self, weights_path: str | None = None) -> None:
        self.weights_path = weights_path
        super().__init__()

    def build(self) -> FrechetInceptionDistance:
        return make_digits_fid(weights_path=self.weights_path, reset_real_features=False)


class MNISTFID(DigitsFID):
    """FID on the shipped 28x28 MNIST feature network (`make_mnist_fid`), for data of shape ``(1, 28, 28)``.

    Args:
        weights_path: feature-network weights; default the shipped file.
    """

    data_shape = (1, 28, 28)
    subject = "28x28 digits"
    instead = "gddim_lightning.evaluation.DigitsFID (8x8), InceptionFID or PointsMetric"

    def build(self) -> FrechetInceptionDistance:
        return make_mnist_fid(weights_path=self.weights_path, reset_real_features=False)


class InceptionFID(FeatureFID):
    """Standard Inception-v3 FID (`make_inception_fid`) on 1- or 3-channel images; grey images are repeated
    to RGB, and samples in ``[-1, 1]`` become uint8 (`to_uint8_images`).

    Args:
        weights_path: local path of ``pt_inception-2015-12-05-6726825d.pth`` (never downloaded).

    Raises:
        FileNotFoundError: if there is no file at ``weights_path``.
        ImportError: without torch-fidelity (the ``inception`` extra).
    """

    def __init__(self, weights_path: str | os.PathLike[str]) -> None:
        self.weights_path = weights_path
        super().__init__()

    def build(self) -> FrechetInceptionDistance:
        return make_inception_fid(self.weights_path, reset_real_features=False)

    def prepare(self, x: Tensor) -> Tensor:
        x = to_uint8_images(x)
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    def check_shape(self, data_shape: tuple[int, ...]) -> None:
        if len(data_shape) != 3 or data_shape[0] not in (1, 3):
            raise ValueError(f"Inception FID needs 1- or 3-channel images, the data shape is {tuple(data_shape)}")


def _gather_in_order(x: Tensor) -> Tensor:
    """All ranks' items back in item order: rank ``r`` holds the items ``k = r, r + W, ...``."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    world = dist.get_world_size()
    count = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    m = int(max(counts))
    padded = x.new_zeros((m, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.stack(parts, 1).reshape(m * world, *x.shape[1:])[: int(sum(counts))]


class PointsMetric(SampleMetric):
    """Frechet distance (``fd``) and sliced 2-Wasserstein distance (``swd``) of raw coordinates.

    For 2-D toys, or any data flattened to ``[N, prod(data_shape)]``. The point clouds are kept whole
    (under DDP gathered from all ranks at `compute`) and compared on the CPU in float64.

    Args:
        n_projections: directions of the sliced Wasserstein distance.
        seed: seed of those directions.
    """

    names = ("fd", "swd")

    def __init__(self, n_projections: int = 256, seed: int = 0) -> None:
        if int(n_projections) < 1:
            raise ValueError(f"PointsMetric(n_projections={n_projections!r}) must be >= 1")
        self.n_projections = int(n_projections)
        self.seed = int(seed)
        self.device = torch.device("cpu")
        self._real: list[Tensor] = []
        self._fake: list[Tensor] = []

    def to(self, device: torch.device | str) -> PointsMetric:
        self.device = torch.device(device)
        return self

    def reset_real(self) -> None:
        self._real = []

    def update_real(self, x: Tensor) -> None:
        self._real.append(x.detach().to(self.device))

    def reset(self) -> None:
        self._fake = []

    def update_fake(self, x: Tensor) -> None:
        self._fake.append(x.detach().to(self.device))

    def _all(self, parts: list[Tensor], what: str) -> Tensor:
        if not parts:
            raise ValueError(f"PointsMetric has no {what} points: call update_{what} before compute")
        return _gather_in_order(torch.cat(parts)).cpu()

    def compute(self) -> dict[str, float]:
        fake, real = self._all(self._fake, "fake"), self._all(self._real, "real")
        return {"fd": frechet_distance(fake, real),
                "swd": sliced_wasserstein(fake, real, n_projections=self.n_projections, seed=self.seed)}


#: Deprecated names of metrics (``SampleCallback(metric="digits")``); ``"auto"``: the automatic choice.
METRICS = ("auto", "digits", "inception", "points", "none")
_BY_NAME: dict[str, type[SampleMetric]] = {"digits": DigitsFID, "inception": InceptionFID, "points": PointsMetric,
                                           "none": NoMetric}


def metric_from_name(name: str, inception_weights: Any = None, owner: str = "SampleCallback") -> SampleMetric | None:
    """Deprecated: the metric a name of `METRICS` stood for (None for ``"auto"``), with a FutureWarning that
    names its class path. ``owner`` is the caller named in the messages.

    Raises:
        ValueError: for an unknown name, or ``"inception"`` without ``inception_weights``.
    """
    if name not in METRICS:
        raise ValueError(f"{owner}(metric={name!r}): give a metric object (e.g. metric: {{class_path: "
                         "gddim_lightning.evaluation.DigitsFID}), or one of the deprecated names " + ", ".join(METRICS))
    if name == "inception" and not inception_weights:
        raise ValueError(f"{owner}(metric='inception') needs inception_weights=<local path of {_WEIGHTS_NAME}>; "
                         "the weights are never downloaded at run time (see make_inception_fid)")
    if name == "auto":
        hint = "leave metric unset for the same automatic choice"
    else:
        args = ", init_args: {weights_path: <path>}" if name == "inception" else ""
        hint = f"use metric: {{class_path: gddim_lightning.evaluation.{_BY_NAME[name].__name__}{args}}}"
    warn_user(f"{owner}(metric={name!r}) is deprecated; {hint}", FutureWarning)
    if name == "auto":
        return None
    return InceptionFID(inception_weights) if name == "inception" else _BY_NAME[name]()


#: FIDs on a network for one data shape, tried in this order by `auto_metric`.
AUTO_FIDS: tuple[type[FeatureFID], ...] = (DigitsFID, MNISTFID)


def auto_metric(data_shape: tuple[int, ...], kind: str, inception_weights: Any = None) -> SampleMetric:
    """The metric chosen from the data when none is given: `PointsMetric` for points, `InceptionFID` for
    images when ``inception_weights`` is given, else the `AUTO_FIDS` entry for the data shape, else
    `NoMetric`."""
    if kind == "points":
        return PointsMetric()
    if inception_weights:
        return InceptionFID(inception_weights)
    for cls in AUTO_FIDS:
        if cls.data_shape == tuple(data_shape):
            return cls()
    return NoMetric()
