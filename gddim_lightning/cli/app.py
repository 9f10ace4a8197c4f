"""`GDDIMCLI`: the LightningCLI subclass, from parsing to the built trainer.

Parsing (config-file checks, the seed range), checkpoint hyperparameters merged into the configured
model, instantiation (a constructor's own error as the message, the checkpoint's identity), the
trainer (line progress when stdout is not a terminal) and the checks that fail before anything is
built. What runs around each subcommand is in `SubcommandRuns`.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar

from .._lightning_private import CheckpointHparamsOverride
from ..checkpointing import FinalModelCheckpoint
from ..limits import MAX_GLOBAL_SEED
from ..module import DiffusionModule
from ..progress import LineProgressBar
from ..writer import SampleWriter
from . import optimizers
from .checkpoints import CheckpointError, is_special, merge_hparams, read_checkpoint, seeds_data
from .config_file import PLACEHOLDER, check_config_file, config_paths, placeholders
from .errors import own_error
from .options import PredictOptions
from .runs import SubcommandRuns

__all__ = ["DESCRIPTION", "EXAMPLES", "GDDIMCLI", "PROG"]

PROG = "gddim-lightning"
DESCRIPTION = ("Train linear diffusion models (VP, CLD, BDM or your own du = F u dt + G dw) and sample them with "
               "gDDIM and its baselines. Every process, backbone, sampler and data module is chosen in YAML by "
               "class_path + init_args.")
EXAMPLES = """examples:
  gddim-lightning fit --config configs/cld.yaml                       # train on the 8x8 digits (CPU, minutes)
  gddim-lightning predict --config configs/cld.yaml --ckpt_path CKPT  # write samples
  gddim-lightning predict --config configs/bdm.yaml --ckpt_path pretrained/bdm_digits.ckpt \\
      --model.init_args.sampler.init_args.nfe 50                      # another sampler setting
  gddim-lightning fit --config configs/cld.yaml --optimizer torch.optim.SGD --optimizer.lr 0.01
  python benchmarks/digits_fid.py --run cld configs/cld.yaml CKPT     # compare samplers by FID
(python -m gddim_lightning works the same way)"""


class GDDIMCLI(CheckpointHparamsOverride, SubcommandRuns):
    """LightningCLI that links the data module's ``data_shape`` into the model (process and backbone
    are built from it), so a config never states a shape twice, and adds the ``checkpoint`` and
    ``predict`` sections (see `gddim_lightning.cli`)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.data_shape", "model.init_args.data_shape", apply_on="instantiate")
        parser.add_lightning_class_args(FinalModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        parser.add_class_arguments(PredictOptions, "predict", as_group=False, instantiate=False)

    configure_optimizers = staticmethod(optimizers.configure_optimizers)

    # ------------------------------------------------------------------ parsing
    def parse_arguments(self, parser, args) -> None:
        """Checks every ``--config`` file first: one error naming the file if it is not UTF-8 text, not
        YAML, or not a mapping of sections (jsonargparse's own messages name neither)."""
        argv = [str(a) for a in (sys.argv[1:] if args is None else args)] if not isinstance(args, dict) else []
        for path in config_paths(argv):
            check_config_file(parser, path)
        super().parse_arguments(parser, args)
        # checked here: LightningCLI seeds right after parsing, before any other hook
        sub = self.config.get("subcommand")
        seed = (self.config[sub] if sub else self.config).get("seed_everything")
        if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed <= MAX_GLOBAL_SEED:
            parser.error(f"seed_everything must be in [0, {MAX_GLOBAL_SEED}] (numpy's seed range), got {seed}; "
                         "true draws one")

    def apply_checkpoint_hparams(self) -> None:
        """Applies the checkpoint's model hyperparameters on top of the configured model (`merge_hparams`).

        Lightning's version re-parses them as the model's ``dict_kwargs``, which replaces the whole
        model value: the process, backbone and sampler (not stored in the checkpoint) were lost and
        parsing failed. Here the checkpoint's values win (data shape, parameterisation, mixed score,
        ...), everything else comes from the config and the command line (e.g.
        ``--model.init_args.sampler.init_args.nfe``).
        """
        sub = self.config.get("subcommand")
        if not sub:
            return
        ckpt = self.config[sub].get("ckpt_path")
        if not ckpt or not Path(ckpt).is_file():
            return
        merge_hparams(self.config[sub].get("model"), self._load_checkpoint(ckpt), ckpt)

    def _load_checkpoint(self, ckpt: Any) -> dict:
        """`read_checkpoint`, once per path; a file that fails is one clear error instead of a traceback."""
        cache = self.__dict__.setdefault("_checkpoints", {})
        if str(ckpt) not in cache:
            try:
                cache[str(ckpt)] = read_checkpoint(ckpt)
            except CheckpointError as err:
                self.parser.error(str(err))
        return cache[str(ckpt)]

    # ------------------------------------------------------------------ before instantiation
    def before_instantiate_classes(self) -> None:
        """Fails early, before anything is built, on user errors: a missing checkpoint, an occupied
        ``predict.out_dir``, a required config value still ``???``, a scheduler without optimiser."""
        if not self.subcommand:
            return
        cfg = self._sub()
        if self.subcommand == "fit" and cfg.get("trainer") is not None and cfg.trainer.get("enable_checkpointing") is False:
            # the CLI's own checkpoint callback would clash with Lightning's check: keep it, saving nothing
            cfg.trainer.enable_checkpointing = True
            cfg.checkpoint.save_last = False
            cfg.checkpoint.save_top_k = 0
        ckpt = cfg.get("ckpt_path")
        if ckpt is not None and not is_special(ckpt) and not Path(ckpt).is_file():
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
            if ckpt is not None and not is_special(ckpt):
                # predict never builds the training data: the seeds module replaces it, shaped from the checkpoint
                data = seeds_data(self._load_checkpoint(ckpt), opts)
                if data is not None:
                    cfg.data = data
        missing = placeholders(cfg)
        if missing:
            self.parser.error(
                f"required value(s) not set (still {PLACEHOLDER!r} in the config): {', '.join(missing)}; pass them "
                f"on the command line, e.g. --{missing[0]} VALUE"
            )
        scheduler_error = optimizers.scheduler_without_optimizer(cfg)
        if scheduler_error:
            self.parser.error(scheduler_error)

    # ------------------------------------------------------------------ building
    def instantiate_classes(self) -> None:
        """A constructor's own error (a wrong channel count, an impossible sampler setting) is the message,
        not jsonargparse's wrapper around it ("Does not validate against any of the Union subtypes")."""
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=optimizers.OVERRIDE_WARNING)
                super().instantiate_classes()
        except (ValueError, TypeError) as err:
            cause = own_error(err)
            if cause is err:
                raise
            self.parser.error(str(cause))
        self._check_identity()

    def _check_identity(self) -> None:
        """One plain error, before any work, when ``--ckpt_path`` holds a model of another process,
        backbone or data shape than the config builds (`DiffusionModule.identity`)."""
        ckpt = self._sub().get("ckpt_path") if self.subcommand else None
        check = getattr(self.model, "identity_mismatch", None)
        if ckpt is None or check is None or is_special(ckpt) or not Path(ckpt).is_file():
            return
        mismatch = check(self._load_checkpoint(ckpt).get(DiffusionModule.IDENTITY_KEY))
        if mismatch:
            self.parser.error(f"--ckpt_path {ckpt}: {mismatch}")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """When stdout is not a terminal (a log file, CI), a line of progress every few percent
        (`LineProgressBar`) instead of tqdm's redraws, unless the config chose a progress bar."""
        trainer_cfg = self._sub_init().get("trainer") or {}
        callbacks = trainer_cfg.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if (trainer_cfg.get("enable_progress_bar") is not False and not sys.stdout.isatty()
                and not any(isinstance(c, ProgressBar) for c in callbacks)):
            trainer_cfg["callbacks"] = [*callbacks, LineProgressBar()]
        return super().instantiate_trainer(**kwargs)
