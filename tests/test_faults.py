"""Faults lose nothing: atomic checkpoint writes under SIGKILL, SIGINT/SIGTERM stop with a resumable
checkpoint and the resumed run equals the uninterrupted one (mid-epoch), a NaN loss stops with the last
good checkpoint intact, and two seeded fits give identical weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gddim_lightning.checkpointing import atomic_torch_save
from gddim_lightning.cli import main
import yaml

from helpers import clean_env

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# CLD on digits with a tiny UNet (dropout 0.1: the global generator matters), 94 batches per epoch.
DIGITS = ["--config", str(CONFIGS / "cld.yaml"), "--model.init_args.backbone.init_args.base_channels", "8",
          "--model.init_args.backbone.init_args.num_res_blocks", "1", "--data.init_args.batch_size", "16",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
          "--trainer.logger", "false", "--trainer.callbacks=[]", "--trainer.num_sanity_val_steps", "0", "--trainer.limit_val_batches", "0"]


def fit(root: Path, steps: int, *extra: str) -> None:
    main(["fit", *DIGITS, "--trainer.max_steps", str(steps), "--trainer.default_root_dir", str(root),
          "--checkpoint.dirpath", str(root), *extra])


def same_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:  # net and EMA
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)
    assert a["lr_schedulers"] == b["lr_schedulers"]


@pytest.fixture(autouse=True)
def sigint_default_handler():
    """Python's Ctrl-C handler for each test, whatever this process inherited: a background job of a
    non-interactive shell starts with SIGINT ignored, and these tests check what the CLI restores."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_mid_epoch_then_resume_equals_uninterrupted(tmp_path, signum):
    """A signal at step 5 (inside the first epoch): the step finishes, last.ckpt holds step 6, the CLI exits
    with 128 + signal; resuming from it to step 9 gives the same weights, EMA, optimiser and scheduler state,
    bit for bit, as 9 uninterrupted steps."""
    fit(tmp_path / "straight", 9)
    cb = ('--trainer.callbacks=[{"class_path": "helpers.SignalAtStep", "init_args": {"step": 5, "signum": %d}}]'
          % int(signum))
    with pytest.raises(SystemExit) as stop:
        fit(tmp_path / "cut", 9, cb)
    assert stop.value.code == 128 + int(signum)
    cut = load(tmp_path / "cut" / "last.ckpt")
    assert cut["global_step"] == 6
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    fit(tmp_path / "cut", 9, "--ckpt_path", str(tmp_path / "cut" / "last.ckpt"))
    same_state(load(tmp_path / "straight" / "last.ckpt"), load(tmp_path / "cut" / "last.ckpt"))


def test_second_sigint_aborts_without_a_checkpoint(tmp_path):
    cb = '--trainer.callbacks=[{"class_path": "helpers.SignalAtStep", "init_args": {"step": 2, "times": 2}}]'
    with pytest.raises(SystemExit) as stop:
        fit(tmp_path, 9, cb)
    assert stop.value.code == 1
    assert not list(tmp_path.glob("*.ckpt"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_resume_from_a_finished_epoch_equals_uninterrupted(tmp_path):
    """The loader's state at an epoch end (every batch used) continues with the next epoch's order."""
    extra = ["--data.init_args.batch_size", "512"]  # 2 batches per epoch (drop_last)
    fit(tmp_path / "straight", 5, *extra)
    fit(tmp_path / "cut", 4, *extra)
    fit(tmp_path / "cut", 5, *extra, "--ckpt_path", str(tmp_path / "cut" / "last.ckpt"))
    same_state(load(tmp_path / "straight" / "last.ckpt"), load(tmp_path / "cut" / "last.ckpt"))


def test_two_seeded_fits_give_identical_weights(tmp_path):
    fit(tmp_path / "a", 3)
    fit(tmp_path / "b", 3)
    same_state(load(tmp_path / "a" / "last.ckpt"), load(tmp_path / "b" / "last.ckpt"))
    fit(tmp_path / "c", 3, "--seed_everything", "1")
    a, c = load(tmp_path / "a" / "last.ckpt"), load(tmp_path / "c" / "last.ckpt")
    assert not all(torch.equal(a["state_dict"][k], c["state_dict"][k]) for k in a["state_dict"])


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    """A learning rate that blows the weights up: the run stops with one message naming the step, and the
    checkpoints written before it are intact (loadable, finite)."""
    with pytest.raises(SystemExit) as stop:
        fit(tmp_path, 60, "--model.init_args.lr", "1e6", "--model.init_args.warmup_steps", "0",
            "--trainer.gradient_clip_val", "null", "--checkpoint.every_n_train_steps", "1")
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert "training loss is nan at global step" in err.lower() or "inf at global step" in err.lower()
    assert "last good checkpoint" in err
    ckpts = sorted(tmp_path.glob("*.ckpt"))
    assert ckpts
    for path in ckpts:
        state = load(path)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


_WRITER = """
import sys, torch
from gddim_lightning.checkpointing import atomic_torch_save
blob = {"w": torch.arange(4_000_000, dtype=torch.float64), "step": 0}
print("ready", flush=True)
k = 0
while True:
    k += 1
    blob["step"] = k
    atomic_torch_save(blob, sys.argv[1])
"""


def test_atomic_save_survives_sigkill(tmp_path):
    """A process rewriting a 32 MB checkpoint in a loop is SIGKILLed at several moments: the file always
    loads (the old or the new version, never a truncated one)."""
    target = tmp_path / "last.ckpt"
    atomic_torch_save({"w": torch.zeros(3), "step": -1}, target)
    for delay in (0.05, 0.2, 0.45, 0.7):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE,
                                env=clean_env(), text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.kill()
        proc.wait(timeout=30)
        state = torch.load(target, weights_only=True)
        assert state["step"] >= -1 and state["w"].numel() in (3, 4_000_000)


def test_atomic_save_failure_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, target)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("gddim_lightning.checkpointing.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"step": 2}, target)
    assert load(target)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


def _ddp_fit(root: Path, steps: int, *extra: str) -> subprocess.CompletedProcess:
    cfg = {
        "seed_everything": 0,
        "model": {"class_path": "gddim_lightning.module.DiffusionModule", "init_args": {
            "process": {"class_path": "gddim_lightning.sdes.VPSDE"},
            "backbone": {"class_path": "gddim_lightning.nets.MLP", "init_args": {"hidden": 16, "depth": 1}}}},
        "data": {"class_path": "gddim_lightning.data.ToyDataModule",
                 "init_args": {"name": "checkerboard", "n_train": 512, "n_val": 64, "batch_size": 32}},
        "trainer": {"accelerator": "cpu", "strategy": "ddp", "devices": 2, "max_steps": steps,
                    "limit_val_batches": 0, "num_sanity_val_steps": 0, "logger": False,
                    "enable_progress_bar": False, "enable_model_summary": False},
        "checkpoint": {"dirpath": str(root)},
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "gddim_lightning", "fit", "--config", str(root / "cfg.yaml"), *extra]
    env = clean_env()  # tests/ on the path too, for helpers.SignalAtStep
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent), env["PYTHONPATH"]])
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_ddp_sigterm_on_one_rank_stops_both_after_the_same_step_and_resumes_exactly(tmp_path):
    """SIGTERM to rank 0 only (as a scheduler might deliver it): the ranks agree, both stop after the
    same step, one checkpoint is written, and resuming under DDP equals the uninterrupted DDP run."""
    straight = _ddp_fit(tmp_path / "straight", 7)
    assert straight.returncode == 0, straight.stderr[-3000:]
    cb = ('--trainer.callbacks=[{"class_path": "helpers.SignalAtStep", '
          '"init_args": {"step": 3, "signum": 15, "rank": 0}}]')
    cut = _ddp_fit(tmp_path / "cut", 7, cb)
    assert cut.returncode == 143, cut.stderr[-3000:]
    assert "training stopped by SIGTERM" in cut.stderr
    assert load(tmp_path / "cut" / "last.ckpt")["global_step"] == 4
    resumed = _ddp_fit(tmp_path / "cut", 7, "--ckpt_path", str(tmp_path / "cut" / "last.ckpt"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    same_state(load(tmp_path / "straight" / "last.ckpt"), load(tmp_path / "cut" / "last.ckpt"))


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_respect_the_umask(tmp_path, umask):
    """Checkpoints and samples go through atomic_write: their mode follows the umask (mkstemp alone gives 0600)."""
    from gddim_lightning.files import atomic_write

    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "f.bin", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o666 & ~umask
