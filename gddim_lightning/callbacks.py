"""Sampling callback: fixed-seed samples, TensorBoard grids / scatter plots and FID during training.

`SampleCallback` runs a sampler on the (EMA) model every few epochs or steps and

* logs an image grid (``samples/grid``) or a scatter plot (``samples/scatter``) to TensorBoard;
* logs a sample-quality metric whose name carries the sample count: ``fid_2k`` (FID on the shipped
  digits feature network, or on Inception with a local weights file) for images, ``fd_2k`` (Frechet
  distance of raw coordinates) and ``swd_2k`` (sliced Wasserstein) for points;
* logs ``sample_time_s`` (wall time of the sampling), ``sample_nfe`` and ``sample_count``.

Sample ``k`` always uses seed ``seed + k`` (the module seeds every sample on its own), so a grid or a
metric is the same for the same weights whatever the batch size or number of devices. Under DDP,
rank ``r`` draws the samples ``k`` with ``k % world_size == r``; FID states are summed across ranks
by torchmetrics, point clouds are gathered, and only rank 0 writes to the loggers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from .limits import MAX_BATCH, MAX_SAMPLES
from .samplers.base import Sampler
from .visuals import image_grid, points_image

__all__ = ["METRICS", "SampleCallback", "format_count", "image_grid", "metric_name", "points_image"]

#: Accepted values of ``SampleCallback(metric=...)``.
METRICS = ("auto", "digits", "inception", "points", "none")

_DIGITS_SHAPE = (1, 8, 8)


# ---------------------------------------------------------------------------------------- helpers
def format_count(n: int) -> str:
    """Short sample count for metric names: ``2000 -> '2k'``, ``50000 -> '50k'``, ``500 -> '500'``.

    Args:
        n: a positive sample count.

    Returns:
        ``'{n/1e6}M'`` or ``'{n/1e3}k'`` when ``n`` is an exact multiple, else ``str(n)``.
    """
    n = int(n)
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def metric_name(prefix: str, n: int) -> str:
    """Metric name with its sample count, e.g. ``metric_name("fid", 2000) == "fid_2k"``."""
    return f"{prefix}_{format_count(n)}"


def _as_float_images(x: Tensor) -> Tensor:
    """uint8 images in ``[0, 255]`` -> float in ``[-1, 1]``; float images unchanged."""
    return x.float().div(127.5).sub(1.0) if x.dtype == torch.uint8 else x.float()


def _first_tensor(batch: Any) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    if isinstance(batch, dict):
        for value in batch.values():
            if isinstance(value, Tensor):
                return value
    raise TypeError(f"cannot find a tensor of data in a training batch of type {type(batch).__name__}")


# ---------------------------------------------------------------------------------------- callback
class SampleCallback(L.Callback):
    """Sample with fixed seeds during training; log a grid / scatter plot, FID or point metrics.

    Runs at the end of every ``every_n_epochs``-th training epoch (also when ``max_steps`` stops an
    epoch early, and under ``fast_dev_run``), if set every ``every_n_steps`` optimiser steps, and once
    more when ``fit`` ends (``at_end``) if the final step was not evaluated yet.
    Every rank must run the same hooks (it does under Lightning): sampling is split across ranks and
    the metrics use collective operations.

    Logged (rank 0, at ``trainer.global_step``), with ``{n}`` = `format_count` of ``num_samples``:

    * ``samples/grid``: the first ``num_grid`` samples as an image grid (kind ``"images"``), or
      ``samples/scatter``: all ``num_samples`` points over the real ones (kind ``"points"``);
      TensorBoard loggers only, when ``log_grid``.
    * ``fid_{n}`` (images, metric ``"digits"`` or ``"inception"``), or ``fd_{n}`` and ``swd_{n}``
      (points, metric ``"points"``).
    * ``sample_time_s`` (slowest rank), ``sample_nfe`` (network evaluations per sample) and
      ``sample_count`` (samples drawn over all ranks; equals ``num_samples``).

    The same values are put in ``trainer.callback_metrics`` on every rank, so ``ModelCheckpoint`` /
    ``EarlyStopping`` can monitor e.g. ``fid_2k`` (with validation enabled, give them
    ``save_on_train_epoch_end=True`` / ``check_on_train_epoch_end=True``: validation ends before the
    training epoch does).

    Real statistics are computed once, on the first evaluation, from the data module's unaugmented
    ``train_x`` / ``train_data`` tensor if it has one, else from its ``train_dataloader()``, up to
    ``num_real`` items (digits without a data module: ``load_digits_split("train")``). The FID
    metric is kept on the callback (never in checkpoints) with ``reset_real_features=False``.

    Args:
        every_n_epochs: evaluate at the end of every n-th training epoch; 0 disables.
        num_samples: number of samples for the metric (seeds ``seed .. seed + num_samples - 1``).
        num_grid: number of images in the grid (the first ``num_grid`` seeds).
        seed: seed of sample 0; sample ``k`` uses ``seed + k``.
        sampler: sampler to run; default the module's ``sampler``.
        metric: ``"auto"`` (digits feature net for ``data_shape == (1, 8, 8)``, points metrics for
            flat data, Inception FID for other images when ``inception_weights`` is given, else no
            metric with a warning), ``"digits"``, ``"inception"``, ``"points"`` or ``"none"``.
        inception_weights: local path of the FID Inception weights
            (``pt_inception-2015-12-05-6726825d.pth``; needs the ``inception`` extra). When given, it
            is used for all images (including digits) under ``"auto"``.
        num_real: at most this many real items for the reference statistics.
        batch_size: sampling (and feature extraction) batch size per rank.
        use_ema: sample the EMA weights (else the online network).
        log_grid: log the grid / scatter image.
        every_n_steps: also evaluate every n optimiser steps (``None`` or 0: never).
        at_end: also evaluate once when ``fit`` ends normally, on the final weights, unless the last
            evaluation was at the final step already (so a run shorter than the interval still logs
            its FID).

    Raises:
        ValueError: for an unknown ``metric``, non-positive counts, or ``metric="inception"`` without
            ``inception_weights``.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_samples: int = 2000,
        num_grid: int = 64,
        seed: int = 0,
        sampler: Sampler | None = None,
        metric: str = "auto",
        inception_weights: str | None = None,
        num_real: int = 50000,
        batch_size: int = 500,
        use_ema: bool = True,
        log_grid: bool = True,
        every_n_steps: int | None = None,
        at_end: bool = True,
    ) -> None:
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"SampleCallback(metric={metric!r}): choose one of {', '.join(METRICS)}")
        if metric == "inception" and not inception_weights:
            from .evaluation.inception import _WEIGHTS_NAME

            raise ValueError(
                "SampleCallback(metric='inception') needs inception_weights=<local path of "
                f"{_WEIGHTS_NAME}>; the weights are never downloaded at run time (see make_inception_fid)"
            )
        for name, value, low in (("every_n_epochs", every_n_epochs, 0), ("num_samples", num_samples, 1),
                                 ("num_grid", num_grid, 0), ("num_real", num_real, 2), ("batch_size", batch_size, 1)):
            if isinstance(value, bool) or int(value) != value or int(value) < low:
                raise ValueError(f"SampleCallback({name}={value!r}) must be an integer >= {low}")
            high = MAX_BATCH if name == "batch_size" else MAX_SAMPLES
            if int(value) > high:
                raise ValueError(f"SampleCallback({name}={value!r}) must be at most {high} (gddim_lightning.limits)")
        if every_n_steps is not None and int(every_n_steps) < 0:
            raise ValueError(f"SampleCallback(every_n_steps={every_n_steps!r}) must be >= 0 or None")
        self.every_n_epochs = int(every_n_epochs)
        self.every_n_steps = int(every_n_steps or 0)
        self.at_end = bool(at_end)
        self.num_samples = int(num_samples)
        self.num_grid = int(num_grid)
        self.seed = int(seed)
        self.sampler = sampler
        self.metric = metric
        self.inception_weights = inception_weights
        self.num_real = int(num_real)
        self.batch_size = int(batch_size)
        self.use_ema = bool(use_ema)
        self.log_grid = bool(log_grid)
        self.last_metrics: dict[str, float] = {}
        self.last_image: Tensor | None = None
        self.last_image_tag = "samples/grid"
        self._fid: Any = None
        self._fid_kind: str | None = None
        self._real_points: Tensor | None = None
        self._real_key: tuple[int, int] | None = None  # (world_size, rank) the real stats were made for
        self._warned = False
        self._last_step = -1

    # ------------------------------------------------------------------ configuration
    @staticmethod
    def _kind(pl_module: L.LightningModule, datamodule: Any) -> str:
        kind = getattr(datamodule, "kind", None)
        if kind in ("points", "images"):
            return kind
        return "points" if len(pl_module.data_shape) == 1 else "images"

    def resolve_metric(self, data_shape: tuple[int, ...], kind: str) -> str:
        """The metric actually used: ``"digits"``, ``"inception"``, ``"points"`` or ``"none"``."""
        if self.metric != "auto":
            return self.metric
        if kind == "points":
            return "points"
        if self.inception_weights:
            return "inception"
        if tuple(data_shape) == _DIGITS_SHAPE:
            return "digits"
        return "none"

    def _build_fid(self, kind: str, pl_module: L.LightningModule) -> None:
        if self._fid is not None and self._fid_kind == kind:
            return
        if kind == "digits":
            from .evaluation import make_digits_fid

            if tuple(pl_module.data_shape) != _DIGITS_SHAPE:
                raise ValueError(f"SampleCallback(metric='digits') needs 8x8 digits (data_shape {_DIGITS_SHAPE}), "
                                 f"got {tuple(pl_module.data_shape)}; use metric='inception' or 'points'")

            self._fid = make_digits_fid(reset_real_features=False)
        else:
            from .evaluation import make_inception_fid

            channels = pl_module.data_shape[0]
            if len(pl_module.data_shape) != 3 or channels not in (1, 3):
                raise ValueError(f"Inception FID needs 1- or 3-channel images, the data shape is {pl_module.data_shape}")
            self._fid = make_inception_fid(self.inception_weights, reset_real_features=False)
        self._fid_kind = kind
        self._real_key = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Builds the FID metric early, so a missing weights file or extra fails before training."""
        if stage != "fit":
            return
        if self.sampler is not None and hasattr(pl_module, "check_sampler"):  # before training, not after it
            pl_module.check_sampler(self.sampler, "SampleCallback.sampler")
        chosen = self.resolve_metric(pl_module.data_shape, self._kind(pl_module, trainer.datamodule))
        if chosen in ("digits", "inception"):
            self._build_fid(chosen, pl_module)

    # ------------------------------------------------------------------ hooks
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_epochs > 0 and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._run(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.every_n_steps > 0 and trainer.global_step > 0 and trainer.global_step % self.every_n_steps == 0:
            self._run(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_end and (self.every_n_epochs > 0 or self.every_n_steps > 0):  # not when disabled
            self._run(trainer, pl_module)

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.global_step == self._last_step:
            return  # once per step, even when a step and an epoch trigger coincide
        self._last_step = trainer.global_step
        metrics = self.evaluate(pl_module, trainer)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            experiment = getattr(logger, "experiment", None)
            if self.last_image is not None and hasattr(experiment, "add_image"):
                experiment.add_image(self.last_image_tag, self.last_image, global_step=step, dataformats="CHW")
            if hasattr(experiment, "flush"):
                experiment.flush()

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, pl_module: L.LightningModule, trainer: L.Trainer | None = None,
                 datamodule: Any = None) -> dict[str, float]:
        """Sample, compute the metrics and build the image; log nothing.

        Also usable outside ``fit`` (single process): ``SampleCallback(...).evaluate(module,
        datamodule=dm)``. Under DDP every rank must call it (it uses collective operations).

        Args:
            pl_module: a `DiffusionModule` (needs ``sample``, ``data_shape``, ``device``, ``dtype``).
            trainer: the running trainer (world size, rank, data module); None for one process.
            datamodule: data module for the real statistics; default ``trainer.datamodule``.

        Returns:
            ``{metric name: value}`` (identical on every rank). The image (``[C, H, W]`` in
            ``[0, 1]``) is left in ``last_image`` (rank 0 only, None on the others), its tag in
            ``last_image_tag`` and the metrics in ``last_metrics``.
        """
        world = int(trainer.world_size) if trainer is not None else 1
        rank = int(trainer.global_rank) if trainer is not None else 0
        if datamodule is None and trainer is not None:
            datamodule = trainer.datamodule
        kind = self._kind(pl_module, datamodule)
        chosen = self.resolve_metric(pl_module.data_shape, kind)
        if chosen == "none" and not self._warned:
            rank_zero_warn("SampleCallback: no sample metric for these images (data_shape "
                           f"{pl_module.data_shape}); set inception_weights=<path> for Inception FID")
            self._warned = True
        if chosen in ("digits", "inception"):
            self._build_fid(chosen, pl_module)
        self._prepare_real(chosen, pl_module, datamodule, world, rank)

        n_grid = self.num_grid if (self.log_grid and kind == "images") else 0
        n_draw = max(self.num_samples, n_grid)
        seeds = [self.seed + k for k in range(rank, n_draw, world)]  # rank r: k % world == r

        # Sample this rank's share with the modules in eval mode.
        modes = {m: m.training for m in pl_module.modules()}
        pl_module.eval()
        start = time.perf_counter()
        try:
            if seeds:
                res = pl_module.sample(seeds, sampler=self.sampler, batch_size=self.batch_size, use_ema=self.use_ema)
                local, nfe = res.samples, int(res.nfe)
            else:
                local, nfe = torch.empty((0, *pl_module.data_shape), device=pl_module.device, dtype=pl_module.dtype), 0
            if local.device.type == "cuda":
                torch.cuda.synchronize(local.device)
        finally:
            elapsed = time.perf_counter() - start
            for m, mode in modes.items():
                m.training = mode

        stats = torch.tensor([float(nfe), elapsed], dtype=torch.float64, device=pl_module.device)
        count = torch.tensor([len(seeds)], dtype=torch.float64, device=pl_module.device)
        if world > 1:
            stats = trainer.strategy.reduce(stats, reduce_op="max")
            count = trainer.strategy.reduce(count, reduce_op="sum")
        metrics: dict[str, float] = {}

        n_metric_local = len(range(rank, self.num_samples, world))
        if chosen in ("digits", "inception"):
            metrics[metric_name("fid", self.num_samples)] = self._fid_value(local[:n_metric_local], pl_module)
        all_points = None
        if kind == "points" or chosen == "points":
            all_points = self._gather_ordered(pl_module, local[:n_metric_local], self.num_samples, world).cpu()
        if chosen == "points":
            from .evaluation import frechet_distance, sliced_wasserstein

            metrics[metric_name("fd", self.num_samples)] = frechet_distance(all_points, self._real_points)
            metrics[metric_name("swd", self.num_samples)] = sliced_wasserstein(all_points, self._real_points)
        metrics["sample_time_s"] = float(stats[1])
        metrics["sample_nfe"] = float(stats[0])
        metrics["sample_count"] = float(count[0])

        self.last_image = None
        if self.log_grid:
            if kind == "images" and n_grid > 0:
                grid = self._gather_ordered(pl_module, local[: len(range(rank, n_grid, world))], n_grid, world)
                self.last_image = image_grid(grid) if rank == 0 else None
                self.last_image_tag = "samples/grid"
            elif kind == "points" and rank == 0:
                self.last_image = points_image(all_points, self._real_points)
                self.last_image_tag = "samples/scatter"
        self.last_metrics = metrics
        return metrics

    def _gather_ordered(self, pl_module: L.LightningModule, local: Tensor, n: int, world: int) -> Tensor:
        """All ranks' shares back in sample order ``[n, ...]`` (rank r holds k = r, r + W, ...)."""
        if world == 1:
            return local
        m = math.ceil(n / world)
        padded = local.new_zeros((m, *local.shape[1:]))
        padded[: local.shape[0]] = local
        gathered = pl_module.all_gather(padded)  # [W, m, ...]
        return gathered.transpose(0, 1).reshape(m * world, *local.shape[1:])[:n]

    def _fid_value(self, local: Tensor, pl_module: L.LightningModule) -> float:
        """FID of this rank's samples plus the others' (torchmetrics sums the states on compute)."""
        fid = self._fid.to(pl_module.device)
        fid.reset()  # fake statistics only (reset_real_features=False)
        for start in range(0, local.shape[0], self.batch_size):
            fid.update(self._fid_input(local[start : start + self.batch_size]), real=False)
        value = float(fid.compute())  # every rank calls compute: the states are synced
        fid.reset()
        return value

    def _fid_input(self, x: Tensor) -> Tensor:
        if self._fid_kind == "inception":
            from .evaluation import to_uint8_images

            x = to_uint8_images(_as_float_images(x))
            return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return _as_float_images(x)

    # ------------------------------------------------------------------ real statistics
    def _real_chunks(self, pl_module: L.LightningModule, datamodule: Any) -> Iterator[Tensor]:
        """Real items (float, images in [-1, 1]) in a fixed order, in chunks, at most ``num_real``."""
        if datamodule is None:
            if tuple(pl_module.data_shape) != _DIGITS_SHAPE:
                raise ValueError("SampleCallback needs a data module (trainer.datamodule or datamodule=...) "
                                 "for the real statistics")
            from .data import load_digits_split

            data = load_digits_split("train")[0]
        else:
            names = [name for name in ("train_x", "train_data") if hasattr(datamodule, name)]
            if names and all(getattr(datamodule, name) is None for name in names):
                datamodule.setup("fit")
            data = next((getattr(datamodule, n) for n in names if isinstance(getattr(datamodule, n), Tensor)), None)
        if data is not None:
            for start in range(0, min(self.num_real, data.shape[0]), self.batch_size):
                stop = min(start + self.batch_size, self.num_real)
                yield _as_float_images(data[start:stop])
            return
        seen = 0
        for batch in datamodule.train_dataloader():
            x = _first_tensor(batch)[: self.num_real - seen]
            seen += x.shape[0]
            yield _as_float_images(x)
            if seen >= self.num_real:
                return

    def _prepare_real(self, chosen: str, pl_module: L.LightningModule, datamodule: Any, world: int, rank: int) -> None:
        if chosen in ("digits", "inception"):
            if self._real_key == (world, rank):
                return
            fid = self._fid.to(pl_module.device)
            fid.reset_real_features = True
            fid.reset()
            fid.reset_real_features = False
            index = 0
            for chunk in self._real_chunks(pl_module, datamodule):
                mine = [i for i in range(chunk.shape[0]) if (index + i) % world == rank]  # rank's share
                index += chunk.shape[0]
                if mine:
                    fid.update(self._fid_input(chunk[mine].to(pl_module.device)), real=True)
            self._real_key = (world, rank)
        elif chosen == "points" or (self.log_grid and self._kind(pl_module, datamodule) == "points"):
            if self._real_points is None and (datamodule is not None or chosen == "points"):
                self._real_points = torch.cat(list(self._real_chunks(pl_module, datamodule))).cpu()
