"""Every use of a private Lightning name in this package, one function each.

The rest of the package uses only public Lightning and jsonargparse API. Where no public API does
what we need, the private access lives here, with the reason, so that a Lightning upgrade that
renames or removes one of these names breaks in one place: ``tests/test_lightning_private.py``
checks each name (`PRIVATE_NAMES`) and fails naming the one that vanished. ``pyproject.toml`` bounds
``lightning`` to the tested major version for the same reason.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

__all__ = ["PRIVATE_NAMES", "CheckpointHparamsOverride", "monitor_candidates", "restart_train_iterator",
           "save_last_checkpoint", "should_skip_saving_checkpoint"]

#: (owner, private attribute) pairs used below; the test checks that each still exists (``fit_loop``:
#: ``Trainer().fit_loop``, whose ``_data_fetcher`` is an instance attribute)
PRIVATE_NAMES: tuple[tuple[Any, str], ...] = (
    (LightningCLI, "_parse_ckpt_path"),
    ("fit_loop", "_data_fetcher"),
    (ModelCheckpoint, "_should_skip_saving_checkpoint"),
    (ModelCheckpoint, "_monitor_candidates"),
    (ModelCheckpoint, "_save_last_checkpoint"),
)


class CheckpointHparamsOverride:
    """Mixin for a `LightningCLI` subclass: replaces Lightning's ``_parse_ckpt_path`` with the
    subclass's ``apply_checkpoint_hparams()``.

    Why private: `LightningCLI.__init__` calls ``self._parse_ckpt_path()`` right after parsing, and
    Lightning's version re-parses the checkpoint's hyperparameters as the model's ``dict_kwargs``,
    which replaces the whole model value (the process, backbone and sampler, not stored in a
    checkpoint, are lost and parsing fails). No public hook or option turns it off.
    """

    def _parse_ckpt_path(self) -> None:
        self.apply_checkpoint_hparams()  # type: ignore[attr-defined]


def restart_train_iterator(trainer: Trainer) -> bool:
    """Makes the fit loop's training iterator again (``iter(trainer.fit_loop._data_fetcher)``), as
    Lightning does at an epoch start; False if the loop holds none.

    Why private: the fit loop builds the epoch's iterator (which draws from the loader's generator)
    before the first public hook that sees the loader (``on_train_start``); a generator state restored
    there reaches the data order only through a new iterator, and the loop exposes no public way to
    make one.
    """
    fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
    if fetcher is None:
        return False
    iter(fetcher)
    return True


def should_skip_saving_checkpoint(callback: ModelCheckpoint, trainer: Trainer) -> bool:
    """``ModelCheckpoint._should_skip_saving_checkpoint``: fast_dev_run, not fitting, sanity checking,
    or already saved at this global step.

    Why private: the last condition reads the callback's private ``_last_global_step_saved``; no
    public attribute says whether this step was saved.
    """
    return callback._should_skip_saving_checkpoint(trainer)


def monitor_candidates(callback: ModelCheckpoint, trainer: Trainer) -> dict[str, Any]:
    """``ModelCheckpoint._monitor_candidates``: the metrics a checkpoint name may interpolate.

    Why private: `save_last_checkpoint` takes them, and Lightning builds them (logged metrics plus
    ``epoch`` and ``step`` as tensors) only in this method.
    """
    return callback._monitor_candidates(trainer)


def save_last_checkpoint(callback: ModelCheckpoint, trainer: Trainer, candidates: dict[str, Any]) -> None:
    """``ModelCheckpoint._save_last_checkpoint``: writes ``last.ckpt`` now.

    Why private: ModelCheckpoint writes ``last.ckpt`` only beside a top-k checkpoint (or, in recent
    versions, at train end if it never wrote one); its naming, versioning (``last-v1.ckpt``), symlink
    mode and removal of the previous file are not public.
    """
    callback._save_last_checkpoint(trainer, candidates)
