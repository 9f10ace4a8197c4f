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
* ``optimizer`` / ``lr_scheduler``: LightningCLI's optimiser options. Unset (the default), the model's
  own AdamW (``model.lr``, ``model.betas``, ``model.weight_decay``, ``model.warmup_steps``) trains;
  ``--optimizer torch.optim.SGD --optimizer.lr 0.01`` replaces it (see `gddim_lightning.cli.optimizers`).

Example::

    python -m gddim_lightning fit --config configs/cld.yaml
    python -m gddim_lightning predict --config configs/cld.yaml --ckpt_path CKPT \\
        --predict.num_samples 64 --predict.out_dir samples/ --predict.format [npz,png,grid] \\
        --model.init_args.sampler.init_args.nfe 20 --model.init_args.sampler.init_args.order 2

The package, one concern per module: `app` (the `GDDIMCLI` class: parsing and building), `runs` (what
happens around each subcommand), `checkpoints` (reading ``--ckpt_path``), `config_file` (checks of
``--config`` files), `optimizers`, `options` (`PredictOptions`), `resume` (`ResumeRNGState`),
`save_config`, `errors` and `noise` (third-party warnings the entry point filters).
"""

from __future__ import annotations

import argparse

from ..checkpointing import FinalModelCheckpoint, InterruptCheckpoint
from ..module import DiffusionModule
from .app import DESCRIPTION, EXAMPLES, PROG, GDDIMCLI
from .noise import NOISE, quiet_third_party_noise
from .options import PredictOptions
from .resume import ResumeRNGState
from .save_config import VersionedSaveConfigCallback

__all__ = [
    "DESCRIPTION", "EXAMPLES", "NOISE", "PROG", "FinalModelCheckpoint", "GDDIMCLI", "PredictOptions",
    "ResumeRNGState", "VersionedSaveConfigCallback", "console_main", "main", "quiet_third_party_noise",
]


def main(args: list[str] | None = None, run: bool = True) -> GDDIMCLI:
    """Runs the CLI (``args``: command-line arguments, default ``sys.argv[1:]``)."""
    return GDDIMCLI(
        DiffusionModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=VersionedSaveConfigCallback,
        save_config_kwargs={"overwrite": False},
        trainer_defaults={"callbacks": [ResumeRNGState(), InterruptCheckpoint()]},
        # --optimizer/--lr_scheduler: unset, the module's own AdamW and warm-up (see .optimizers)
        auto_configure_optimizers=True,
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
