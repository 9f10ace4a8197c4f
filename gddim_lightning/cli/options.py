"""`PredictOptions`: the ``predict:`` section of a config (what ``predict`` draws and writes)."""

from __future__ import annotations

from typing import Union

__all__ = ["PredictOptions"]


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
