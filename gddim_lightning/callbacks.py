"""Sampling callback: fixed-seed samples, TensorBoard grids / scatter plots and a sample metric during training.

Longer than 300 lines: one class whose three concerns (when to sample, per-sample seeding across DDP
ranks, what to log) share its state; about half the lines are its documentation.

`SampleCallback` decides when to sample, seeds the samples and logs. What it measures is a
`SampleMetric` object (`gddim_lightning.evaluation.metrics`); the real data comes from the data
module's ``reference_data(n)`` (`gddim_lightning.data.batches`). Sample ``k`` always uses seed
``seed + k``, so a grid or a metric is the same for the same weights whatever the batch size or
number of devices.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from .data.batches import reference_batches
from .evaluation.metrics import METRICS, NoMetric, SampleMetric, auto_metric, metric_from_name
from .limits import MAX_BATCH, MAX_SAMPLES
from .samplers.base import Sampler
from .visuals import image_grid, points_image

__all__ = ["METRICS", "SampleCallback", "format_count", "image_grid", "metric_name", "points_image"]


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


class SampleCallback(L.Callback):
    """Sample with fixed seeds during training; log a grid / scatter plot, the metric and timings.

    Runs at the end of every ``every_n_epochs``-th training epoch (also when ``max_steps`` stops an
    epoch early, and under ``fast_dev_run``), if set every ``every_n_steps`` optimiser steps, and once
    more when ``fit`` ends (``at_end``) if the final step was not evaluated yet.
    Every rank must run the same hooks (it does under Lightning): sampling is split across ranks and
    the metrics use collective operations.

    Logged (rank 0, at ``trainer.global_step``), with ``{n}`` = `format_count` of ``num_samples``:

    * ``samples/grid``: the first ``num_grid`` samples as an image grid (kind ``"images"``), or
      ``samples/scatter``: all ``num_samples`` points over the real ones (kind ``"points"``);
      TensorBoard loggers only, when ``log_grid``.
    * ``{name}_{n}`` for each value of the metric (``fid_{n}``; ``fd_{n}`` and ``swd_{n}``).
    * ``sample_time_s`` (slowest rank), ``sample_nfe`` (network evaluations per sample) and
      ``sample_count`` (samples drawn over all ranks; equals ``num_samples``).

    The same values are put in ``trainer.callback_metrics`` on every rank, so ``ModelCheckpoint`` /
    ``EarlyStopping`` can monitor e.g. ``fid_2k`` (with validation enabled, give them
    ``save_on_train_epoch_end=True`` / ``check_on_train_epoch_end=True``: validation ends before the
    training epoch does).

    Real statistics are computed once, on the first evaluation, from up to ``num_real`` items of the
    data module's ``reference_data(n)`` (or its ``train_dataloader()``; see `reference_batches`). The
    metric is kept on the callback, never in checkpoints.

    Args:
        every_n_epochs: evaluate at the end of every n-th training epoch; 0 disables.
        num_samples: number of samples for the metric (seeds ``seed .. seed + num_samples - 1``).
        num_grid: number of images in the grid (the first ``num_grid`` seeds).
        seed: seed of sample 0; sample ``k`` uses ``seed + k``.
        sampler: sampler to run; default the module's ``sampler``.
        metric: a `SampleMetric` (`DigitsFID`, `InceptionFID`, `PointsMetric`, `NoMetric`, ...). Unset
            (None): chosen from the data by `auto_metric` (points metrics for points, Inception FID
            when ``inception_weights`` is given, digits FID for 8x8 digits, else none with a warning).
            The strings ``"auto"``, ``"digits"``, ``"inception"``, ``"points"``, ``"none"`` still work
            but are deprecated (FutureWarning).
        inception_weights: local path of the FID Inception weights, for the automatic choice and the
            ``"inception"`` shorthand only; otherwise give ``InceptionFID(weights_path=...)``.
        num_real: at most this many real items for the reference statistics.
        batch_size: sampling (and feature extraction) batch size per rank.
        use_ema: sample the EMA weights (else the online network).
        log_grid: log the grid / scatter image.
        every_n_steps: also evaluate every n optimiser steps (``None`` or 0: never).
        at_end: also evaluate once when ``fit`` ends normally, on the final weights, unless the last
            evaluation was at the final step already (so a run shorter than the interval still logs
            its FID).

    Raises:
        ValueError: for an unknown ``metric`` name, non-positive counts, ``metric="inception"`` without
            ``inception_weights``, or ``inception_weights`` next to a metric object.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_samples: int = 2000,
        num_grid: int = 64,
        seed: int = 0,
        sampler: Sampler | None = None,
        metric: SampleMetric | str | None = None,
        inception_weights: str | None = None,
        num_real: int = 50000,
        batch_size: int = 500,
        use_ema: bool = True,
        log_grid: bool = True,
        every_n_steps: int | None = None,
        at_end: bool = True,
    ) -> None:
        super().__init__()
        for name, value, low in (("every_n_epochs", every_n_epochs, 0), ("num_samples", num_samples, 1),
                                 ("num_grid", num_grid, 0), ("num_real", num_real, 2), ("batch_size", batch_size, 1)):
            if isinstance(value, bool) or int(value) != value or int(value) < low:
                raise ValueError(f"SampleCallback({name}={value!r}) must be an integer >= {low}")
            high = MAX_BATCH if name == "batch_size" else MAX_SAMPLES
            if int(value) > high:
                raise ValueError(f"SampleCallback({name}={value!r}) must be at most {high} (gddim_lightning.limits)")
        if every_n_steps is not None and int(every_n_steps) < 0:
            raise ValueError(f"SampleCallback(every_n_steps={every_n_steps!r}) must be >= 0 or None")
        if isinstance(metric, str):
            metric = metric_from_name(metric, inception_weights, "SampleCallback")
        elif metric is not None and inception_weights:
            raise ValueError("SampleCallback(inception_weights=...) only applies when no metric is given; "
                             "use metric: InceptionFID(weights_path=...) instead")
        elif metric is not None and not isinstance(metric, SampleMetric):
            raise TypeError(f"SampleCallback(metric=...) must be a gddim_lightning.evaluation.SampleMetric, "
                            f"got {type(metric).__name__}")
        self.every_n_epochs = int(every_n_epochs)
        self.every_n_steps = int(every_n_steps or 0)
        self.at_end = bool(at_end)
        self.num_samples = int(num_samples)
        self.num_grid = int(num_grid)
        self.seed = int(seed)
        self.sampler = sampler
        self.metric: SampleMetric | None = metric  # None until chosen from the data (auto_metric)
        self._auto = metric is None
        self.inception_weights = inception_weights
        self.num_real = int(num_real)
        self.batch_size = int(batch_size)
        self.use_ema = bool(use_ema)
        self.log_grid = bool(log_grid)
        self.last_metrics: dict[str, float] = {}
        self.last_image: Tensor | None = None
        self.last_image_tag = "samples/grid"
        self._real_points: Tensor | None = None  # for the scatter plot
        self._real_key: tuple[int, int] | None = None  # (world_size, rank) the metric's real stats were made for
        self._last_step = -1

    # ------------------------------------------------------------------ configuration
    @staticmethod
    def _kind(pl_module: L.LightningModule, datamodule: Any) -> str:
        kind = getattr(datamodule, "kind", None)
        if kind in ("points", "images"):
            return kind
        return "points" if len(pl_module.data_shape) == 1 else "images"

    def resolve_metric(self, data_shape: tuple[int, ...], kind: str) -> SampleMetric:
        """The metric used for this data: the one given, or (once) `auto_metric`'s choice; shape checked."""
        if self.metric is None:
            self.metric = auto_metric(tuple(data_shape), kind, self.inception_weights)
            if self._auto and isinstance(self.metric, NoMetric):
                rank_zero_warn(f"SampleCallback: no sample metric for these images (data_shape {tuple(data_shape)}); "
                               "give metric: {class_path: gddim_lightning.evaluation.InceptionFID, init_args: "
                               "{weights_path: <path>}} (or inception_weights=<path>) for Inception FID")
        self.metric.check_shape(tuple(data_shape))
        return self.metric

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Checks the sampler and the metric against the model before training."""
        if stage != "fit":
            return
        if self.sampler is not None and hasattr(pl_module, "check_sampler"):  # before training, not after it
            pl_module.check_sampler(self.sampler, "SampleCallback.sampler")
        self.resolve_metric(pl_module.data_shape, self._kind(pl_module, trainer.datamodule))

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
        metric = self.resolve_metric(pl_module.data_shape, kind).to(pl_module.device)
        self._prepare_real(metric, kind, pl_module, datamodule, world, rank)

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
        if metric.names:
            mine = local[: len(range(rank, self.num_samples, world))]
            metric.reset()
            for start in range(0, mine.shape[0], self.batch_size):
                metric.update_fake(mine[start : start + self.batch_size])
            values = metric.compute()  # every rank calls compute: the ranks are combined
            metric.reset()
            metrics.update({metric_name(name, self.num_samples): float(v) for name, v in values.items()})
        metrics["sample_time_s"] = float(stats[1])
        metrics["sample_nfe"] = float(stats[0])
        metrics["sample_count"] = float(count[0])

        self.last_image = None
        if self.log_grid:
            if kind == "images" and n_grid > 0:
                grid = self._gather_ordered(pl_module, local[: len(range(rank, n_grid, world))], n_grid, world)
                self.last_image = image_grid(grid) if rank == 0 else None
                self.last_image_tag = "samples/grid"
            elif kind == "points":
                points = local[: len(range(rank, self.num_samples, world))]
                points = self._gather_ordered(pl_module, points, self.num_samples, world).cpu()
                self.last_image = points_image(points, self._real_points) if rank == 0 else None
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

    # ------------------------------------------------------------------ real data
    def _prepare_real(self, metric: SampleMetric, kind: str, pl_module: L.LightningModule, datamodule: Any,
                      world: int, rank: int) -> None:
        """Feeds the metric this rank's share of the real items (once per world size and rank) and keeps
        all of them for the scatter plot."""
        need_metric = bool(metric.names) and self._real_key != (world, rank)
        need_points = self.log_grid and kind == "points" and self._real_points is None and datamodule is not None
        if not (need_metric or need_points):
            return
        if datamodule is None:
            raise ValueError(f"SampleCallback: the metric {type(metric).__name__} needs real data; fit with a data "
                             "module, or pass evaluate(..., datamodule=...)")
        if need_metric:
            metric.reset_real()
        index, points = 0, []
        for chunk in reference_batches(datamodule, self.num_real, self.batch_size):
            if need_points:
                points.append(chunk.cpu())
            if need_metric:
                mine = [i for i in range(chunk.shape[0]) if (index + i) % world == rank]  # rank's share
                if mine:
                    metric.update_real(chunk[mine].to(pl_module.device))
            index += chunk.shape[0]
        if need_metric:
            self._real_key = (world, rank)
        if need_points:
            self._real_points = torch.cat(points)
