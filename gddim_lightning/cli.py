"""``python -m gddim_lightning {fit,validate,test,predict}``: LightningCLI with shape linking.

* ``model``: `DiffusionModule` or any subclass (``--model gddim_lightning.module.CLDModule``); the
  process, backbone and sampler are ``class_path`` + ``init_args`` inside it. The data module's
  ``data_shape`` is linked into ``model.init_args.data_shape``, so no config states a shape twice.
* ``checkpoint``: a `ModelCheckpoint` that every run gets (``save_last: true``: ``last.ckpt``, the
  final state, plus the latest ``epoch=E-step=S.ckpt``); configure it with ``--checkpoint.*``.
* ``predict``: what the ``predict`` subcommand draws and writes (``--predict.num_samples``,
  ``--predict.out_dir``, ...). It is accepted by every subcommand, so one config serves ``fit``
  and ``predict``. ``predict`` samples with the model's sampler, e.g.
  ``--model.init_args.sampler.init_args.nfe 20``, and needs ``--ckpt_path``; it never loads the
  training data (the data shape comes from the checkpoint).

Example::

    python -m gddim_lightning fit --config configs/cld.yaml
    python -m gddim_lightning predict --config configs/cld.yaml --ckpt_path CKPT \\
        --predict.num_samples 64 --predict.out_dir samples/ --predict.format [npz,png,grid] \\
        --model.init_args.sampler.init_args.nfe 20 --model.init_args.sampler.init_args.order 2
"""

from __future__ import annotations

import argparse
import logging

import os
import errno
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Union

import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_warn

from .checkpointing import AtomicCheckpointIO, FinalModelCheckpoint, InterruptCheckpoint, TrainingInterrupted
from .data.seeds import SeedDataModule
from .limits import MAX_CONFIG_NODES, MAX_GLOBAL_SEED
from .module import DiffusionModule
from .progress import LineProgressBar
from .summary import fit_summary, predict_summary
from .writer import PredictInterrupted, SampleWriter

__all__ = [
    "FinalModelCheckpoint", "GDDIMCLI", "PredictOptions", "ResumeRNGState", "VersionedSaveConfigCallback", "main",
]

# ckpt_path values that Lightning resolves itself instead of reading a file
#: errors of the disk rather than of the program: reported in one sentence, keeping the last checkpoint
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)
_SPECIAL_CKPT = ("last", "best", "hpc", "registry")
# model arguments that DiffusionModule does not store in checkpoints (they come from the config)
_NOT_STORED = ("process", "backbone", "sampler")


_PLACEHOLDER = "???"  # a config value the user must set (e.g. the CIFAR-10 root)


def _walk(value: Any, prefix: str = "") -> Any:
    """Yields ``(dotted key, leaf value)`` of a parsed config (namespaces, dicts and lists)."""
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _walk(v, f"{prefix}[{i}]")
    else:
        yield prefix, value


_UNION_WRAPPER = "Does not validate against any of the Union subtypes"


def _own_error(err: BaseException) -> BaseException:
    """The first exception in ``err``'s cause chain that is not jsonargparse's Union wrapper (``err``
    itself if it is not one)."""
    seen = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if _UNION_WRAPPER not in str(cur):
            return cur
        cur = cur.__cause__ or cur.__context__
    return err


def _expanded_nodes(node: yaml.Node, limit: int) -> int:
    """Number of values ``node`` stands for once its aliases are expanded (stops counting past ``limit``)."""
    sizes: dict[int, int] = {}
    stack = [(node, False)]
    while stack:
        cur, done = stack.pop()
        if id(cur) in sizes:
            continue
        children = ([c for kv in cur.value for c in kv] if isinstance(cur, yaml.MappingNode) else
                    list(cur.value) if isinstance(cur, yaml.SequenceNode) else [])
        if done or not children:
            sizes[id(cur)] = min(limit + 1, 1 + sum(sizes.get(id(c), 0) for c in children))
        else:
            stack.append((cur, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(node)]


def _check_config_file(parser: Any, path: str) -> None:
    try:
        text = Path(path).read_text(encoding="utf-8")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None and _expanded_nodes(root, MAX_CONFIG_NODES) > MAX_CONFIG_NODES:
            parser.error(f"--config {path}: expands to more than {MAX_CONFIG_NODES} values once its YAML aliases "
                         "(*name) are resolved (gddim_lightning.limits.MAX_CONFIG_NODES); a config is a few hundred "
                         "values: remove the aliases that repeat large blocks")
        data = yaml.safe_load(text)
    except UnicodeDecodeError as err:
        parser.error(f"--config {path}: not a UTF-8 text file ({err.reason} at byte {err.start}); a config is a "
                     "YAML file such as configs/cld.yaml")
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        parser.error(f"--config {path}: not valid YAML{at}: {problem}")
    if not isinstance(data, dict):
        what = "an empty file" if data is None else f"a {type(data).__name__}"
        parser.error(f"--config {path}: expected a YAML mapping of sections (model:, data:, trainer:, ...), "
                     f"got {what}")


class PredictOptions:
    """Options of the ``predict`` subcommand (the ``predict:`` section of a config).

    Args:
        num_samples: samples to draw in total (over all devices); one per seed.
        seed: first seed; sample ``k`` uses seed ``seed + k`` and depends on nothing else.
        batch_size: seeds per predict batch and device (does not change the samples).
        out_dir: output folder; refused if it already holds samples, unless ``overwrite``.
        format: ``npz`` (always written), ``png`` (one file per sample), ``grid`` (one overview
            PNG); a list such as ``[npz,png]`` or a comma-separated string.
        overwrite: replace the outputs of an earlier run in ``out_dir`` (only files that run recorded in
            its ``meta.json``, unchanged since; the new outputs replace them only once complete).
        grid_size: images shown in ``grid.png``.
        allow_untrained: sample without trained weights (no ``--ckpt_path``): refused otherwise.
    """

    def __init__(
        self,
        num_samples: int = 64,
        seed: int = 0,
        batch_size: int = 64,
        out_dir: str = "samples",
        format: Union[str, list[str]] = "npz",
        overwrite: bool = False,
        grid_size: int = 64,
        allow_untrained: bool = False,
    ) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.batch_size = batch_size
        self.out_dir = out_dir
        self.format = format
        self.overwrite = overwrite
        self.grid_size = grid_size
        self.allow_untrained = allow_untrained


class VersionedSaveConfigCallback(SaveConfigCallback):
    """`SaveConfigCallback` that never overwrites and never fails on an existing file.

    With the default loggers every run has its own ``version_N`` folder and the file is
    ``config.yaml``. Where the folder is shared (``--trainer.logger false`` or a fixed logger
    version), the config goes to the first free name ``config_1.yaml``, ``config_2.yaml``, ...
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not self.already_saved and self.save_to_log_dir:
            base = self.__dict__.setdefault("_base_filename", self.config_filename)
            log_dir = trainer.log_dir  # broadcast from rank 0
            name = None
            if trainer.is_global_zero and log_dir is not None:
                stem, ext = os.path.splitext(base)
                name, k = base, 0
                while os.path.exists(os.path.join(log_dir, name)):
                    k += 1
                    name = f"{stem}_{k}{ext}"
            self.config_filename = trainer.strategy.broadcast(name) or base
        super().setup(trainer, pl_module, stage)


class ResumeRNGState(Callback):
    """Makes ``fit --ckpt_path`` continue the random streams of the interrupted run.

    Lightning restores weights, optimiser, schedulers and loop counters, but not the global torch
    generator (which draws dropout masks) nor the shuffling generator of a plain training
    ``DataLoader``. This callback stores both in every checkpoint and puts them back when training
    resumes. The package's data modules use `ResumableLoader`, whose own state (order and position
    within the epoch) Lightning saves, so a run resumed from any checkpoint, mid-epoch included,
    continues bit for bit; a plain ``DataLoader`` resumes exactly only from an epoch boundary. Under
    DDP the ranks share rank 0's global generator state, as after ``seed_everything``.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None
        self._trainer: Trainer | None = None

    @staticmethod
    def _loader_generator(trainer: Trainer) -> torch.Generator | None:
        loader = trainer.train_dataloader
        if callable(getattr(loader, "load_state_dict", None)):
            return None  # a stateful loader (e.g. ResumableLoader): Lightning saves and restores it
        gen = getattr(loader, "generator", None)
        return gen if isinstance(gen, torch.Generator) else None

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"torch": torch.get_rng_state()}
        gen = self._loader_generator(self._trainer) if self._trainer is not None else None
        if gen is not None:
            state["loader"] = gen.get_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # after the checkpoint is restored and the loader built, before its first iterator shuffles
        if self._pending is None:
            return
        if "torch" in self._pending:
            torch.set_rng_state(self._pending["torch"])
        gen = self._loader_generator(trainer)
        fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
        if gen is not None and "loader" in self._pending and fetcher is not None:
            gen.set_state(self._pending["loader"])
            # Lightning made the epoch's iterator (which draws from the generator) before this hook;
            # make it again from the restored state, as an uninterrupted run does at an epoch start
            iter(fetcher)
        self._pending = None


class GDDIMCLI(LightningCLI):
    """LightningCLI that links the data module's ``data_shape`` into the model (process and backbone
    are built from it), so a config never states a shape twice, and adds the ``checkpoint`` and
    ``predict`` sections (see the module docstring)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.data_shape", "model.init_args.data_shape", apply_on="instantiate")
        parser.add_lightning_class_args(FinalModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        parser.add_class_arguments(PredictOptions, "predict", as_group=False, instantiate=False)

    # ------------------------------------------------------------------ parsing and building
    def parse_arguments(self, parser, args) -> None:
        """Checks every ``--config`` file first: one error naming the file if it is not UTF-8 text, not
        YAML, or not a mapping of sections (jsonargparse's own messages name neither)."""
        argv = [str(a) for a in (sys.argv[1:] if args is None else args)] if not isinstance(args, dict) else []
        for i, arg in enumerate(argv):
            path = argv[i + 1] if arg in ("-c", "--config") and i + 1 < len(argv) else (
                arg.split("=", 1)[1] if arg.startswith("--config=") else None)
            if path is not None and Path(path).is_file():
                _check_config_file(parser, path)
        super().parse_arguments(parser, args)
        # checked here: LightningCLI seeds right after parsing, before any other hook
        sub = self.config.get("subcommand")
        seed = (self.config[sub] if sub else self.config).get("seed_everything")
        if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed <= MAX_GLOBAL_SEED:
            parser.error(f"seed_everything must be in [0, {MAX_GLOBAL_SEED}] (numpy's seed range), got {seed}; "
                         "true draws one")

    def instantiate_classes(self) -> None:
        """A constructor's own error (a wrong channel count, an impossible sampler setting) is the message,
        not jsonargparse's wrapper around it ("Does not validate against any of the Union subtypes")."""
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            cause = _own_error(err)
            if cause is err:
                raise
            self.parser.error(str(cause))
        self._check_identity()

    def _check_identity(self) -> None:
        """One plain error, before any work, when ``--ckpt_path`` holds a model of another process,
        backbone or data shape than the config builds (`DiffusionModule.identity`)."""
        ckpt = self._sub().get("ckpt_path") if self.subcommand else None
        check = getattr(self.model, "identity_mismatch", None)
        if ckpt is None or check is None or str(ckpt) in _SPECIAL_CKPT or not Path(ckpt).is_file():
            return
        mismatch = check(self._load_checkpoint(ckpt).get(DiffusionModule.IDENTITY_KEY))
        if mismatch:
            self.parser.error(f"--ckpt_path {ckpt}: {mismatch}")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """When stdout is not a terminal (a log file, CI), a line of progress every few percent
        (`LineProgressBar`) instead of tqdm's redraws, unless the config chose a progress bar."""
        cfg = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer_cfg = cfg.get("trainer") or {}
        callbacks = trainer_cfg.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if (trainer_cfg.get("enable_progress_bar") is not False and not sys.stdout.isatty()
                and not any(isinstance(c, ProgressBar) for c in callbacks)):
            trainer_cfg["callbacks"] = [*callbacks, LineProgressBar()]
        return super().instantiate_trainer(**kwargs)

    # ------------------------------------------------------------------ checkpoint hyperparameters
    def _parse_ckpt_path(self) -> None:
        """Applies the checkpoint's model hyperparameters on top of the configured model.

        Lightning's version re-parses them as the model's ``dict_kwargs``, which replaces the whole
        model value: the process, backbone and sampler (not stored in the checkpoint) were lost and
        parsing failed. Here the stored values are written into the configured ``init_args``: the
        checkpoint's values win (data shape, parameterisation, mixed score, ...), everything else
        comes from the config and the command line (e.g. ``--model.init_args.sampler.init_args.nfe``).
        """
        sub = self.config.get("subcommand")
        if not sub:
            return
        ckpt = self.config[sub].get("ckpt_path")
        if not ckpt or not Path(ckpt).is_file():
            return
        hparams = dict(self._load_checkpoint(ckpt).get("hyper_parameters", {}))
        hparams.pop("_instantiator", None)
        class_path = hparams.pop("_class_path", None)
        model = self.config[sub].get("model")
        if not hparams or model is None or model.get("init_args") is None:
            return
        init = model.init_args
        if class_path is not None and class_path != model.class_path:
            rank_zero_warn(f"--ckpt_path {ckpt} holds a {class_path}; it replaces the configured {model.class_path}")
            model.class_path = class_path
            for key in [k for k in init.keys() if "." not in k and k not in hparams and k not in _NOT_STORED]:
                del init[key]
        for key, value in hparams.items():
            init[key] = list(value) if isinstance(value, tuple) else value

    # ------------------------------------------------------------------ before instantiation
    def _sub(self) -> Namespace:
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        """Fails early, before anything is built, on user errors: a missing checkpoint, an occupied
        ``predict.out_dir``, a required config value still ``???``."""
        if not self.subcommand:
            return
        cfg = self._sub()
        if self.subcommand == "fit" and cfg.get("trainer") is not None and cfg.trainer.get("enable_checkpointing") is False:
            # the CLI's own checkpoint callback would clash with Lightning's check: keep it, saving nothing
            cfg.trainer.enable_checkpointing = True
            cfg.checkpoint.save_last = False
            cfg.checkpoint.save_top_k = 0
        ckpt = cfg.get("ckpt_path")
        if ckpt is not None and str(ckpt) not in _SPECIAL_CKPT and "://" not in str(ckpt) and not Path(ckpt).is_file():
            self.parser.error(
                f"--ckpt_path {str(ckpt)!r}: no such checkpoint file. Pass a .ckpt written by fit, e.g. "
                "<default_root_dir>/lightning_logs/version_N/checkpoints/last.ckpt"
            )
        if self.subcommand == "predict":
            opts = cfg.predict
            try:
                SampleWriter(opts.out_dir, opts.format, opts.overwrite, opts.grid_size).check_out_dir()
            except (FileExistsError, ValueError) as err:
                self.parser.error(str(err))
            self._predict_data_from_checkpoint(cfg, ckpt)
        missing = [key for key, value in _walk(cfg) if value == _PLACEHOLDER]
        if missing:
            self.parser.error(
                f"required value(s) not set (still {_PLACEHOLDER!r} in the config): {', '.join(missing)}; pass them "
                f"on the command line, e.g. --{missing[0]} VALUE"
            )

    def _load_checkpoint(self, ckpt: Any) -> dict:
        """Reads a checkpoint with ``weights_only=True`` (tensors and plain data only: nothing in the file
        can run code); a file that fails, or that is not a checkpoint, is one clear error instead of a
        traceback. Read once per path."""
        cache = self.__dict__.setdefault("_checkpoints", {})
        if str(ckpt) not in cache:
            data = self._read_checkpoint(ckpt)
            if not isinstance(data, dict) or "state_dict" not in data:
                what = type(data).__name__ if not isinstance(data, dict) else "a dict without 'state_dict'"
                self.parser.error(f"--ckpt_path {ckpt} is not a checkpoint of this package (it holds {what}); pass "
                                  "a .ckpt written by fit or one of pretrained/*.ckpt")
            cache[str(ckpt)] = data
        return cache[str(ckpt)]

    def _read_checkpoint(self, ckpt: Any) -> Any:
        try:
            return torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as err:  # UnpicklingError (code or foreign objects), RuntimeError/EOFError (corrupt)
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            # torch's own first line suggests weights_only=False: quote the specific cause instead
            reason = next((line.rstrip(".") for line in lines if "GLOBAL" in line or "Unsupported" in line),
                          type(err).__name__)
            reason = reason.split(". Please use")[0]  # torch's advice to allow-list the global: not ours to give
            self.parser.error(
                f"--ckpt_path {ckpt} cannot be loaded safely: {reason}. gddim-lightning only loads checkpoints "
                "with torch.load(weights_only=True): the file is corrupt, not a checkpoint, or holds pickled "
                "objects that could run code; use a checkpoint written by this package's fit"
            )

    def _predict_data_from_checkpoint(self, cfg: Namespace, ckpt: Any) -> None:
        """predict never builds the training data: the seeds module replaces it, shaped from the checkpoint."""
        opts = cfg.predict
        if ckpt is None or str(ckpt) in _SPECIAL_CKPT or "://" in str(ckpt):
            return  # no weights to read the data shape from (untrained weights are refused in before_predict)
        hparams = self._load_checkpoint(ckpt).get("hyper_parameters", {})
        shape = hparams.get("data_shape")
        if shape is None:
            return
        cfg.data = Namespace(
            class_path="gddim_lightning.data.seeds.SeedDataModule",
            init_args=Namespace(num_samples=opts.num_samples, seed=opts.seed, batch_size=opts.batch_size,
                                data_shape=[int(d) for d in shape]),
        )

    # ------------------------------------------------------------------ subcommands
    def _drop_checkpoint_callback(self) -> None:
        """Outside fit the ``checkpoint`` callback has nothing to save: leave it out."""
        cb = self._get(self.config_init, "checkpoint")
        self.trainer.callbacks = [c for c in self.trainer.callbacks if c is not cb]

    def _evaluate(self, fn: str, **kwargs: Any) -> Any:
        """Runs ``trainer.<fn>`` without Lightning's warning that the checkpoint holds the state of
        callbacks (ModelCheckpoint, ResumeRNGState) that only ``fit`` uses."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`")
            return getattr(self.trainer, fn)(**kwargs)

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
            if err.errno not in _DISK_ERRORS:
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

    def before_validate(self) -> None:
        self._drop_checkpoint_callback()

    def validate(self, **kwargs: Any) -> Any:
        return self._evaluate("validate", **kwargs)

    def before_test(self) -> None:
        self._drop_checkpoint_callback()

    def test(self, **kwargs: Any) -> Any:
        return self._evaluate("test", **kwargs)

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
        if ckpt is not None and str(ckpt) not in _SPECIAL_CKPT:
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
        sub = self.config_init[self.subcommand]
        if sub.get("return_predictions") is None:
            sub["return_predictions"] = False  # the writer has them; do not hold every sample twice


PROG = "gddim-lightning"
DESCRIPTION = ("Train linear diffusion models (VP, CLD, BDM or your own du = F u dt + G dw) and sample them with "
               "gDDIM and its baselines. Every process, backbone, sampler and data module is chosen in YAML by "
               "class_path + init_args.")
EXAMPLES = """examples:
  gddim-lightning fit --config configs/cld.yaml                       # train on the 8x8 digits (CPU, minutes)
  gddim-lightning predict --config configs/cld.yaml --ckpt_path CKPT  # write samples
  gddim-lightning predict --config configs/bdm.yaml --ckpt_path pretrained/bdm_digits.ckpt \\
      --model.init_args.sampler.init_args.nfe 50                      # another sampler setting
  python benchmarks/digits_fid.py --run cld configs/cld.yaml CKPT     # compare samplers by FID
(python -m gddim_lightning works the same way)"""


class _DropNoise(logging.Filter):
    """Drops Lightning's advertisement for its cloud logger (nothing to act on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


#: third-party warnings a user of the CLI cannot act on (deprecations inside Lightning and jsonargparse)
NOISE = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's pytree helper on torch >= 2.9
    r".*was deprecated in v4\.\d+\.\d+ and will be removed in v5\.0\.0",  # LightningCLI's jsonargparse calls
    r".*LightningCLI's args parameter is intended to run from within Python",
)


def quiet_third_party_noise() -> None:
    """Filters the known third-party noise (`NOISE`, the litlogger tip). Called by the CLI entry point
    only: importing the package changes no warning filter."""
    for pattern in NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropNoise) for f in logger.filters):
        logger.addFilter(_DropNoise())


def main(args: list[str] | None = None, run: bool = True) -> GDDIMCLI:
    """Runs the CLI (``args``: command-line arguments, default ``sys.argv[1:]``)."""
    return GDDIMCLI(
        DiffusionModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=VersionedSaveConfigCallback,
        save_config_kwargs={"overwrite": False},
        trainer_defaults={"callbacks": [ResumeRNGState(), InterruptCheckpoint()]},
        auto_configure_optimizers=False,  # the module owns its optimiser (lr, betas, warm-up)
        # --trainer.max_step is an error, not --trainer.max_steps
        parser_kwargs={"allow_abbrev": False, "prog": PROG, "description": DESCRIPTION, "epilog": EXAMPLES,
                       "formatter_class": argparse.RawDescriptionHelpFormatter},
        args=args,
        run=run,
    )


def console_main() -> None:
    """Entry point of ``gddim-lightning`` and ``python -m gddim_lightning`` (`main` returns the CLI
    object, which a console script would turn into an exit status)."""
    quiet_third_party_noise()
    main()
