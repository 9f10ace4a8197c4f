"""What the CLI reads from a ``--ckpt_path`` before anything is built.

* `read_checkpoint`: ``torch.load(weights_only=True)`` (nothing in the file can run code); a file that
  fails, or is not a checkpoint, is a `CheckpointError` with one sentence for the user.
* `merge_hparams`: the checkpoint's stored model hyperparameters written into the configured model.
* `seeds_data`: ``predict``'s data module (seeds), shaped from the checkpoint instead of the data.
"""

from __future__ import annotations

import pickle
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["NOT_STORED", "SPECIAL_CKPT", "CheckpointError", "is_special", "merge_hparams", "read_checkpoint",
           "seeds_data"]

#: ckpt_path values that Lightning resolves itself instead of reading a file
SPECIAL_CKPT = ("last", "best", "hpc", "registry")
#: model arguments that DiffusionModule does not store in checkpoints (they come from the config)
NOT_STORED = ("process", "backbone", "sampler")


class CheckpointError(ValueError):
    """A ``--ckpt_path`` that cannot be read safely, or is not a checkpoint of this package."""


def is_special(ckpt: Any) -> bool:
    """A ``ckpt_path`` that is not a local file name: ``last``/``best``/... or a URL."""
    return str(ckpt) in SPECIAL_CKPT or "://" in str(ckpt)


def _unpickling_reason(path: Any) -> str:
    """Why ``weights_only`` refused the file: the globals it would import, or that it is no checkpoint."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (ValueError, RuntimeError):  # not a zip file written by torch.save
        return "not a file written by torch.save"
    return f"Unsupported global(s) {', '.join(names)}" if names else "UnpicklingError"


def read_checkpoint(path: Any) -> dict:
    """The checkpoint at ``path``, read with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: the file is corrupt, not a ``torch.save`` file, holds pickled objects other
            than tensors and plain data, or is not a Lightning checkpoint (no ``state_dict``).
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        reason = _unpickling_reason(path) if isinstance(err, pickle.UnpicklingError) else type(err).__name__
        raise CheckpointError(
            f"--ckpt_path {path} cannot be loaded safely: {reason}. gddim-lightning only loads checkpoints "
            "with torch.load(weights_only=True): the file is corrupt, not a checkpoint, or holds pickled "
            "objects that could run code; use a checkpoint written by this package's fit"
        ) from err
    if not isinstance(data, dict) or "state_dict" not in data:
        what = type(data).__name__ if not isinstance(data, dict) else "a dict without 'state_dict'"
        raise CheckpointError(f"--ckpt_path {path} is not a checkpoint of this package (it holds {what}); pass "
                              "a .ckpt written by fit or one of pretrained/*.ckpt")
    return data


def merge_hparams(model: Namespace | None, checkpoint: dict, ckpt: Any) -> None:
    """Writes the checkpoint's model hyperparameters into the configured ``model`` (in place).

    The stored values win (data shape, parameterisation, mixed score, ...); everything else (the
    process, backbone and sampler, never stored) comes from the config and the command line. A
    checkpoint of another module class replaces the configured class, with a warning.
    """
    hparams = dict(checkpoint.get("hyper_parameters", {}))
    hparams.pop("_instantiator", None)
    class_path = hparams.pop("_class_path", None)
    if not hparams or model is None or model.get("init_args") is None:
        return
    init = model.init_args
    if class_path is not None and class_path != model.class_path:
        rank_zero_warn(f"--ckpt_path {ckpt} holds a {class_path}; it replaces the configured {model.class_path}")
        model.class_path = class_path
        for key in [k for k in init.keys() if "." not in k and k not in hparams and k not in NOT_STORED]:
            del init[key]
    for key, value in hparams.items():
        init[key] = list(value) if isinstance(value, tuple) else value


def seeds_data(checkpoint: dict, opts: Namespace) -> Namespace | None:
    """``predict``'s data config: the seeds module of ``opts`` (the ``predict`` section), shaped like the
    checkpoint's data; None if the checkpoint records no data shape."""
    shape = checkpoint.get("hyper_parameters", {}).get("data_shape")
    if shape is None:
        return None
    return Namespace(
        class_path="gddim_lightning.data.seeds.SeedDataModule",
        init_args=Namespace(num_samples=opts.num_samples, seed=opts.seed, batch_size=opts.batch_size,
                            data_shape=[int(d) for d in shape]),
    )
