"""`VersionedSaveConfigCallback`: saves the run's config beside its logs, never over an earlier one."""

from __future__ import annotations

import os

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback

__all__ = ["VersionedSaveConfigCallback"]


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
