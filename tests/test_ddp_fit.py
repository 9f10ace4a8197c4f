"""SampleCallback under DDP: ``python -m gddim_lightning fit --trainer.strategy ddp --trainer.devices 2``
on CPU (gloo) in a clean subprocess; the metric logged once by rank 0 must equal the one a single
process computes on the saved checkpoint (each rank samples its share of the fixed seeds; FID states
are summed across ranks, point clouds gathered)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from helpers import clean_env, read_events

from gddim_lightning.callbacks import SampleCallback
from gddim_lightning.cli import main


# Per case: model, data and the callback's init_args (uneven sample counts: rank 0 draws one more).
CASES = {
    "points": {
        "model": {
            "process": {"class_path": "gddim_lightning.sdes.VPSDE"},
            "backbone": {"class_path": "gddim_lightning.nets.MLP", "init_args": {"hidden": 32, "depth": 1}},
        },
        "data": {"class_path": "gddim_lightning.data.ToyDataModule",
                 "init_args": {"name": "checkerboard", "n_train": 512, "n_val": 64, "batch_size": 64}},
        "callback": {"num_samples": 51, "num_real": 300},
        "metrics": ["fd_51", "swd_51"],
        "image": "samples/scatter",
    },
    "digits": {
        "model": {
            "process": {"class_path": "gddim_lightning.sdes.VPSDE"},
            "backbone": {"class_path": "gddim_lightning.nets.UNet",
                         "init_args": {"base_channels": 8, "channel_mult": [1], "num_res_blocks": 1,
                                       "attn_resolutions": [], "num_groups": 4, "image_size": 8}},
        },
        "data": {"class_path": "gddim_lightning.data.DigitsDataModule", "init_args": {"batch_size": 32}},
        "callback": {"num_samples": 37, "num_grid": 9, "batch_size": 16},
        "metrics": ["fid_37"],
        "image": "samples/grid",
    },
}

def write_config(case: dict, root: Path) -> Path:
    cfg = {
        "seed_everything": 0,
        "model": {"class_path": "gddim_lightning.module.DiffusionModule", "init_args": case["model"]},
        "data": case["data"],
        "trainer": {
            "accelerator": "cpu", "max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 0,
            "default_root_dir": str(root / "runs"), "enable_progress_bar": False, "enable_model_summary": False,
            "callbacks": [{
                "class_path": "gddim_lightning.callbacks.SampleCallback",
                "init_args": {**case["callback"], "sampler": {"class_path": "gddim_lightning.samplers.GDDIM",
                                                              "init_args": {"nfe": 4}}},
            }],
        },
    }
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("name", ["points", pytest.param("digits", marks=pytest.mark.slow)])
def test_ddp_metric_equals_single_process(name, tmp_path, monkeypatch):
    case = CASES[name]
    cfg = write_config(case, tmp_path)
    cmd = [sys.executable, "-m", "gddim_lightning", "fit", "--config", str(cfg),
           "--trainer.strategy", "ddp", "--trainer.devices", "2"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]

    scalars, images, n_files = read_events(tmp_path / "runs")
    assert n_files == 1  # rank 0 only
    n = case["callback"]["num_samples"]
    assert [e.value for e in scalars["sample_count"]] == [n]  # both ranks sampled their share
    assert [e.value for e in scalars["sample_nfe"]] == [4]
    assert len(images[case["image"]]) == 1
    logged = {}
    for key in case["metrics"]:
        (event,) = scalars[key]
        assert event.step == 2 and math.isfinite(event.value)
        logged[key] = event.value

    # One process, same config, the checkpoint written right after the evaluation.
    (ckpt,) = (tmp_path / "runs").rglob("epoch=0-step=2.ckpt")
    monkeypatch.setattr(sys, "argv", ["gddim_lightning"])
    cli = main(args=["--config", str(cfg), "--trainer.devices", "1", "--trainer.logger", "false"], run=False)
    cli.model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"])
    (callback,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, SampleCallback)]
    single = callback.evaluate(cli.model, datamodule=cli.datamodule)
    for key, value in logged.items():
        assert value == pytest.approx(single[key], rel=1e-4), key
