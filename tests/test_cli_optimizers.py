"""``--optimizer`` / ``--lr_scheduler`` (LightningCLI's optimiser options): unset, the model's own AdamW
with its warm-up trains, as every shipped config expects; set, the chosen optimiser trains, with the
model's warm-up unless a scheduler is given too. Short CPU fits of the toy config."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from gddim_lightning.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")

CONFIG = str(Path(__file__).resolve().parent.parent / "configs" / "toy_vp.yaml")
TINY = ["--model.init_args.backbone.init_args.hidden", "16", "--model.init_args.backbone.init_args.depth", "1",
        "--data.init_args.n_train", "256", "--data.init_args.n_val", "64", "--data.init_args.batch_size", "128",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.callbacks=[]", "--trainer.logger", "false", "--trainer.max_steps", "2"]


def fit(tmp_path: Path, *extra: str):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = main(["fit", "--config", CONFIG, *TINY, "--trainer.default_root_dir", str(tmp_path), *extra])
    assert not [w for w in caught if "will be overridden" in str(w.message)], "misleading override warning"
    assert cli.trainer.global_step == 2
    return cli


def trained(cli) -> set[int]:
    return {id(p) for group in cli.trainer.optimizers[0].param_groups for p in group["params"]}


def test_default_is_the_models_adamw_with_warmup(tmp_path):
    cli = fit(tmp_path, "--model.init_args.lr", "3e-4", "--model.init_args.weight_decay", "0.01")
    (opt,) = cli.trainer.optimizers
    assert type(opt) is torch.optim.AdamW
    assert opt.defaults["lr"] == 3e-4 and opt.defaults["weight_decay"] == 0.01 and opt.defaults["betas"] == (0.9, 0.999)
    assert trained(cli) == {id(p) for p in cli.model.net.parameters()}
    (sched,) = cli.trainer.lr_scheduler_configs  # toy_vp.yaml: 500 warm-up steps
    assert isinstance(sched.scheduler, torch.optim.lr_scheduler.LambdaLR) and sched.interval == "step"
    assert opt.param_groups[0]["lr"] == pytest.approx(3e-4 * 3 / 500)


def test_optimizer_from_the_command_line(tmp_path):
    cli = fit(tmp_path, "--optimizer", "torch.optim.SGD", "--optimizer.lr", "0.01", "--optimizer.momentum", "0.9")
    (opt,) = cli.trainer.optimizers
    assert type(opt) is torch.optim.SGD and opt.defaults["lr"] == 0.01 and opt.defaults["momentum"] == 0.9
    assert {id(p) for p in cli.model.net.parameters()} <= trained(cli)
    assert all(p.grad is None for p in cli.model.ema.parameters())  # the EMA copy is not trained
    (sched,) = cli.trainer.lr_scheduler_configs  # the model's warm-up still applies
    assert isinstance(sched.scheduler, torch.optim.lr_scheduler.LambdaLR)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 3 / 500)


def test_optimizer_and_scheduler_from_yaml(tmp_path):
    extra = tmp_path / "opt.yaml"
    extra.write_text("optimizer:\n  class_path: torch.optim.SGD\n  init_args: {lr: 0.05}\n"
                     "lr_scheduler:\n  class_path: torch.optim.lr_scheduler.StepLR\n  init_args: {step_size: 3}\n")
    cli = fit(tmp_path, "--config", str(extra))
    (opt,) = cli.trainer.optimizers
    assert type(opt) is torch.optim.SGD and opt.defaults["lr"] == 0.05
    (sched,) = cli.trainer.lr_scheduler_configs  # the scheduler replaces the warm-up
    assert isinstance(sched.scheduler, torch.optim.lr_scheduler.StepLR)


def test_scheduler_without_optimizer_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", CONFIG, *TINY, "--trainer.default_root_dir", str(tmp_path),
              "--lr_scheduler", "torch.optim.lr_scheduler.StepLR", "--lr_scheduler.step_size", "3"])
    assert err.value.code == 2
    assert "--lr_scheduler is set but --optimizer is not" in capsys.readouterr().err
