"""What the CLI does around each subcommand: ``fit`` (atomic checkpoints, writable folders, one
sentence for a full disk, a NaN loss or an interrupt, a closing summary), ``validate``/``test``
(without the fit-only checkpoint callback) and ``predict`` (seeds, the sample writer, no logs)."""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

from ..checkpointing import AtomicCheckpointIO, TrainingInterrupted
from ..data.seeds import SeedDataModule
from ..summary import fit_summary, predict_summary
from ..writer import PredictInterrupted, SampleWriter
from .checkpoints import SPECIAL_CKPT
from .errors import DISK_ERRORS

__all__ = ["SubcommandRuns"]


class SubcommandRuns(LightningCLI):
    """The ``before_<subcommand>`` hooks and subcommand methods of `GDDIMCLI`."""

    def _sub(self) -> Namespace:
        """The parsed config of the running subcommand."""
        return self.config[self.subcommand] if self.subcommand else self.config

    def _sub_init(self) -> Namespace:
        """The instantiated config of the running subcommand."""
        return self.config_init[self.subcommand] if self.subcommand else self.config_init

    def _drop_checkpoint_callback(self) -> None:
        """Outside fit the ``checkpoint`` callback has nothing to save: leave it out."""
        cb = self._sub_init().get("checkpoint")
        self.trainer.callbacks = [c for c in self.trainer.callbacks if c is not cb]

    def _evaluate(self, fn: str, **kwargs: Any) -> Any:
        """Runs ``trainer.<fn>`` without Lightning's warning that the checkpoint holds the state of
        callbacks (ModelCheckpoint, ResumeRNGState) that only ``fit`` uses."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`")
            return getattr(self.trainer, fn)(**kwargs)

    # ------------------------------------------------------------------ fit
    def before_fit(self) -> None:
        strategy = self.trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:  # keep a user's own plugin
            strategy.checkpoint_io = AtomicCheckpointIO()
        self._check_writable()

    def _check_writable(self) -> None:
        """The folders fit writes to must be writable now, not at the first checkpoint after the training."""
        cb = self.trainer.checkpoint_callback
        folders = [("--trainer.default_root_dir", self.trainer.default_root_dir)]
        if getattr(cb, "dirpath", None) and "://" not in str(cb.dirpath):
            folders.append(("--checkpoint.dirpath", cb.dirpath))
        for flag, folder in folders:
            if "://" in str(folder):
                continue
            try:
                Path(folder).mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryFile(dir=folder):
                    pass
            except OSError as err:
                self.parser.error(f"{flag} {folder} is not writable ({type(err).__name__}: {err.strerror or err}); "
                                  "fit would lose its training at the first checkpoint: choose a writable folder")

    def fit(self, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            out = self.trainer.fit(**kwargs)
            if self.trainer.global_step == 0 and self.trainer.max_steps != 0:
                print("gddim_lightning: fit made no optimiser step: the training data loader yielded no batches "
                      "(check the data module's size and batch size, and --trainer.limit_train_batches); nothing "
                      "was trained", file=sys.stderr, flush=True)
                sys.exit(1)
            # trainer.log_dir is a collective under DDP: every rank asks, rank 0 prints
            log_dir = self.trainer.log_dir if self.trainer.loggers else None
            if self.trainer.is_global_zero:
                configs = self._sub().get("config") or []
                print(fit_summary(self.trainer, configs, time.perf_counter() - t0, log_dir), flush=True)
            return out
        except TrainingInterrupted as stop:
            print(f"gddim_lightning: {stop}", file=sys.stderr, flush=True)
            sys.exit(stop.exit_code)
        except OSError as err:
            if err.errno not in DISK_ERRORS:
                raise
            # a full disk or a folder that became read-only while training: the atomic writes left the
            # previous checkpoint as it was
            print(f"gddim_lightning: {err.strerror or err} while writing to {err.filename or 'disk'}. Training "
                  f"stopped; {self._last_good()}", file=sys.stderr, flush=True)
            sys.exit(1)
        except FloatingPointError as err:  # a NaN/inf loss: nothing after the last checkpoint is kept
            print(f"gddim_lightning: {err}. Training stopped; {self._last_good()}", file=sys.stderr, flush=True)
            sys.exit(1)

    def _last_good(self) -> str:
        cb = self.trainer.checkpoint_callback
        last = getattr(cb, "last_model_path", "") or getattr(cb, "best_model_path", "")
        if last and Path(last).is_file():
            return f"the last good checkpoint is {last} (written before the failure, intact)"
        return "no checkpoint was written before it"

    # ------------------------------------------------------------------ validate, test
    def before_validate(self) -> None:
        self._drop_checkpoint_callback()

    def validate(self, **kwargs: Any) -> Any:
        return self._evaluate("validate", **kwargs)

    def before_test(self) -> None:
        self._drop_checkpoint_callback()

    def test(self, **kwargs: Any) -> Any:
        return self._evaluate("test", **kwargs)

    # ------------------------------------------------------------------ predict
    def predict(self, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            out = self._evaluate("predict", **kwargs)
        except PredictInterrupted as stop:  # the writer has said what it kept
            sys.exit(stop.exit_code)
        writer = next((c for c in self.trainer.callbacks if isinstance(c, SampleWriter)), None)
        if writer is not None and self.trainer.is_global_zero:
            print(predict_summary(writer.out_dir, writer.last_meta, time.perf_counter() - t0), flush=True)
        return out

    def _refuse_untrained(self, ckpt: Any, allowed: bool) -> None:
        """Last check before predict samples: weights that were never trained or loaded are refused
        unless asked for (after every config error, so those are reported first)."""
        if ckpt is not None and str(ckpt) not in SPECIAL_CKPT:
            return
        what = ("no --ckpt_path" if ckpt is None else
                f"--ckpt_path {ckpt} (a name fit resolves in its own run; predict starts a fresh one and would find no "
                "weights)")
        if not allowed:
            self.parser.error(f"predict with {what} would sample an untrained network; pass --ckpt_path FILE.ckpt "
                              "(written by fit, or one of pretrained/*.ckpt), or --predict.allow_untrained true to "
                              "sample the untrained network on purpose")
        rank_zero_warn(f"predict with {what}: sampling an untrained network (--predict.allow_untrained true)")

    def before_predict(self) -> None:
        self._drop_checkpoint_callback()
        # predict logs nothing: no logger (and so no empty lightning_logs/version_N), no saved config (meta.json
        # in the output folder records the request)
        self.trainer.loggers = []
        self.trainer.callbacks = [c for c in self.trainer.callbacks if not isinstance(c, SaveConfigCallback)]
        opts = self._sub().predict
        dm = self.datamodule
        if not isinstance(dm, SeedDataModule) or (dm.num_samples, dm.seed, dm.batch_size) != (
            opts.num_samples, opts.seed, opts.batch_size
        ):
            shape = getattr(dm, "data_shape", None) or getattr(self.model, "data_shape", None)
            dm = SeedDataModule(opts.num_samples, opts.seed, opts.batch_size, shape)
        world = self.trainer.world_size
        if dm.num_samples < world:
            self.parser.error(f"predict.num_samples={dm.num_samples} is smaller than the number of devices ({world}); "
                              "every device needs at least one sample")
        self.datamodule = dm  # LightningCLI builds trainer.predict's kwargs after this hook
        writer = SampleWriter(
            opts.out_dir, opts.format, opts.overwrite, opts.grid_size,
            meta={"request": {"num_samples": dm.num_samples, "seed": dm.seed, "batch_size": dm.batch_size}},
        )
        self.trainer.callbacks.append(writer)
        self._refuse_untrained(self._sub().get("ckpt_path"), opts.allow_untrained)
        sub = self._sub_init()
        if sub.get("return_predictions") is None:
            sub["return_predictions"] = False  # the writer has them; do not hold every sample twice
