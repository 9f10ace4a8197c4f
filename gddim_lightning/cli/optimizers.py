"""``--optimizer`` / ``--lr_scheduler``: LightningCLI's own optimiser options, with the module's
default kept.

Without ``--optimizer`` nothing changes: `DiffusionModule.configure_optimizers` builds AdamW from
``model.lr``, ``model.betas`` and ``model.weight_decay`` with ``model.warmup_steps`` of linear warm-up,
exactly as every config and checkpoint expects. With ``--optimizer torch.optim.SGD --optimizer.lr
0.01`` (or an ``optimizer:`` section in YAML), LightningCLI builds that optimiser over the module's
parameters and `configure_optimizers` hands it to the module, which adds the same warm-up. With
``--lr_scheduler`` too, that scheduler replaces the warm-up (Lightning's default: stepped every epoch).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LightningCLI
from torch.optim import Optimizer

from ..module import DiffusionModule

__all__ = ["OVERRIDE_WARNING", "configure_optimizers", "scheduler_without_optimizer"]

#: LightningCLI's warning when ``--optimizer`` replaces a module's ``configure_optimizers``: here the
#: module's method still runs (it adds the warm-up), so the warning would mislead
OVERRIDE_WARNING = r".*configure_optimizers` will be overridden by"


def configure_optimizers(lightning_module: LightningModule, optimizer: Optimizer,
                         lr_scheduler: Any = None) -> Any:
    """What the model's ``configure_optimizers`` returns when ``--optimizer`` is given: a
    `DiffusionModule` adds its warm-up to ``optimizer`` unless ``--lr_scheduler`` is given; any other
    module, or a scheduler, gets LightningCLI's default."""
    if lr_scheduler is None and isinstance(lightning_module, DiffusionModule):
        return type(lightning_module).configure_optimizers(lightning_module, optimizer=optimizer)
    return LightningCLI.configure_optimizers(lightning_module, optimizer, lr_scheduler)


def scheduler_without_optimizer(cfg: Any) -> str | None:
    """The error for an ``lr_scheduler`` given without an ``optimizer`` (LightningCLI ignores it)."""
    if cfg.get("lr_scheduler") is None or cfg.get("optimizer") is not None:
        return None
    return ("--lr_scheduler is set but --optimizer is not: the scheduler needs an optimiser to drive. Pass both, "
            "e.g. --optimizer torch.optim.AdamW --optimizer.lr 2e-4 --lr_scheduler "
            "torch.optim.lr_scheduler.StepLR --lr_scheduler.step_size 10, or neither (the model's AdamW with "
            "model.warmup_steps of warm-up)")
