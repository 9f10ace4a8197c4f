"""``python -m gddim_lightning``: every shipped config, ``--print_config`` round trip, checkpoints,
config saving in a reused folder, exact resume, clear errors. All in-process on CPU, shrunk from the
command line."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gddim_lightning.cli import main
from gddim_lightning.module import CLDModule, DiffusionModule

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
ALL = sorted(p.name for p in CONFIGS.glob("*.yaml"))
CIFAR = [n for n in ALL if n.startswith("cifar")]
LOCAL = [n for n in ALL if n not in CIFAR]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
TINY_UNET = ["--model.init_args.backbone.init_args.base_channels", "8",
             "--model.init_args.backbone.init_args.num_res_blocks", "1", "--data.init_args.batch_size", "16"]
TINY_TOY = ["--model.init_args.backbone.init_args.hidden", "16", "--model.init_args.backbone.init_args.depth", "1",
            "--data.init_args.n_train", "256", "--data.init_args.n_val", "64", "--data.init_args.batch_size", "128"]


def tiny(name: str) -> list[str]:
    return TINY_TOY if name.startswith("toy") else TINY_UNET


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", ALL)
def test_config_parses(name, capsys):
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", str(CONFIGS / name), "--print_config"])
    assert err.value.code in (0, None)
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert {"model", "data", "trainer", "checkpoint", "predict"} <= set(cfg)
    # gDDIM everywhere except the CLD paper's setting, whose velocity-only network samples with SSCS
    sampler = "SSCS" if name == "cld_paper.yaml" else "GDDIM"
    assert cfg["model"]["init_args"]["sampler"]["class_path"] == f"gddim_lightning.samplers.{sampler}"
    assert cfg["checkpoint"]["save_last"] is True


@pytest.mark.parametrize("name", LOCAL)
def test_config_fits_fast_dev_run(name, tmp_path):
    cli = main(["fit", "--config", str(CONFIGS / name), *tiny(name), *QUIET,
                "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path),
                "--model.init_args.sampler.init_args.nfe", "4",
                "--trainer.callbacks.init_args.num_samples", "8"])  # the SampleCallback (last callback)
    assert cli.trainer.state.finished
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert any(type(c).__name__ == "SampleCallback" for c in cli.trainer.callbacks)


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_config_without_root_is_a_clear_error(name, capsys):
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", str(CONFIGS / name)])
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert "data.init_args.root" in msg and "???" in msg


def test_model_classes_and_shape_link():
    cli = main(["--config", str(CONFIGS / "toy_cld.yaml"), *TINY_TOY], run=False)
    assert isinstance(cli.model, CLDModule) and cli.model.data_shape == (2,)
    cli = main(["--config", str(CONFIGS / "toy_cld.yaml"), *TINY_TOY, "--model", "DiffusionModule"], run=False)
    assert type(cli.model) is DiffusionModule and cli.model.process.state_shape == (4,)
    assert not cli.parser.get_defaults().get("optimizer")  # no --optimizer: the module's own AdamW


# ---------------------------------------------------------------------------------------- print_config
def test_print_config_round_trip(tmp_path, capsys):
    args = ["--config", str(CONFIGS / "cld.yaml"), *TINY_UNET, *QUIET, "--trainer.max_steps", "2",
            "--trainer.callbacks=[]", "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--model.init_args.lr", "3e-4"]
    with pytest.raises(SystemExit):
        main(["fit", *args, "--print_config"])
    printed = capsys.readouterr().out
    (tmp_path / "full.yaml").write_text(printed)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(tmp_path / "full.yaml"), "--print_config"])
    assert capsys.readouterr().out == printed  # a fixed point: nothing lost or added

    cli = main(["fit", "--config", str(tmp_path / "full.yaml")])
    assert cli.trainer.global_step == 2 and cli.model.hparams.lr == 3e-4


# ---------------------------------------------------------------------------------------- checkpoints, config
def test_checkpoints_and_rerun_in_the_same_folder(tmp_path):
    args = ["fit", "--config", str(CONFIGS / "toy_vp.yaml"), *TINY_TOY, *QUIET, "--trainer.callbacks=[]",
            "--trainer.max_steps", "2", "--trainer.check_val_every_n_epoch", "1", "--trainer.logger", "false",
            "--trainer.default_root_dir", str(tmp_path)]
    main(args)
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["epoch=0-step=2.ckpt", "last.ckpt"]
    first = {p.name: sha(p) for p in [tmp_path / "config.yaml", *(tmp_path / "checkpoints").iterdir()]}

    main(args)  # same folder (no logger version): a second config file, new checkpoint names
    assert (tmp_path / "config_1.yaml").is_file()
    assert {p.name: sha(p) for p in [tmp_path / "config.yaml", *(tmp_path / "checkpoints").glob("*")]
            if p.name in first} == first
    assert len(list((tmp_path / "checkpoints").iterdir())) == 4


def test_last_checkpoint_is_the_final_state(tmp_path):
    """toy_vp.yaml validates (and so checkpoints) every 10 epochs; last.ckpt must still hold step 3."""
    main(["fit", "--config", str(CONFIGS / "toy_vp.yaml"), *TINY_TOY, *QUIET, "--trainer.callbacks=[]",
          "--trainer.max_steps", "3", "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)])
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


def test_missing_checkpoint_for_fit_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", str(CONFIGS / "toy_vp.yaml"), *TINY_TOY, "--ckpt_path", str(tmp_path / "x.ckpt")])
    assert err.value.code == 2
    assert "x.ckpt" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- resume
class EMAOnOptimizerStep(DiffusionModule):
    """DiffusionModule with the EMA updated in ``optimizer_step`` (before ``ModelCheckpoint`` saves in
    ``on_train_batch_end``) instead of in the module's ``on_train_batch_end`` (after it)."""

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        pass

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self.ema.update()


def _fit_4_steps(root: Path, *extra: str) -> dict:
    main(["fit", "--config", str(CONFIGS / "toy_vp.yaml"), *TINY_TOY, *QUIET, "--trainer.callbacks=[]",
          "--trainer.logger", "false", "--trainer.num_sanity_val_steps", "0", "--trainer.limit_val_batches", "0",
          "--trainer.max_steps", "4", "--trainer.default_root_dir", str(root), "--checkpoint.dirpath", str(root),
          "--checkpoint.every_n_train_steps", "1", "--checkpoint.save_top_k", "-1", *extra])
    return torch.load(root / "epoch=1-step=4.ckpt", weights_only=True)


def _optimizer_tensors(ckpt: dict) -> list[torch.Tensor]:
    return [v for s in ckpt["optimizer_states"][0]["state"].values() for v in s.values()]


@pytest.mark.parametrize("model", ["stock", "ema_on_optimizer_step"])
def test_resume_from_checkpoint_continues_exactly(tmp_path, model):
    """4 steps (2 per epoch) straight vs 2 steps + resume from the step-2 checkpoint: same weights,
    optimiser state and EMA. The CLI's ResumeRNGState restores the global generator (training times
    and noise) and the loader's shuffling generator, which Lightning does not checkpoint."""
    extra = [] if model == "stock" else ["--model", f"{__name__}.EMAOnOptimizerStep"]
    a = _fit_4_steps(tmp_path / "a", *extra)
    b = _fit_4_steps(tmp_path / "b", *extra, "--ckpt_path", str(tmp_path / "a" / "epoch=0-step=2.ckpt"))
    assert a["global_step"] == b["global_step"] == 4
    net = [k for k in a["state_dict"] if k.startswith("net.")]
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in net)
    assert all(torch.equal(x, y) for x, y in zip(_optimizer_tensors(a), _optimizer_tensors(b), strict=True))
    assert a["lr_schedulers"] == b["lr_schedulers"]
    ema = [k for k in a["state_dict"] if k.startswith("ema.")]
    ema_equal = all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in ema)
    assert ema_equal


def test_help_names_the_program_and_shows_examples(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: gddim-lightning")
    assert "gDDIM" in out and "examples:" in out and "predict --config configs/cld.yaml" in out


def test_console_script_is_declared_and_returns_nothing(monkeypatch):
    """pyproject's [project.scripts] points at a function returning None (a returned object would become exit 1)."""
    import tomllib

    from gddim_lightning import cli

    scripts = tomllib.loads((CONFIGS.parent / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"gddim-lightning": "gddim_lightning.cli:console_main"}
    monkeypatch.setattr(cli, "main", lambda *a, **k: object())
    assert cli.console_main() is None


def test_redirected_fit_and_predict_are_quiet_and_end_with_a_summary(tmp_path):
    """What a user sees from `python -m gddim_lightning fit ... > log`: no known third-party noise (the
    litlogger tip, Lightning's LeafSpec deprecation), progress as a few lines instead of tqdm redraws, a
    FID even though the run is shorter than the callback's interval, and a closing summary with the
    checkpoint folder and the predict command; predict then says where its samples went."""
    import subprocess
    import sys

    from helpers import clean_env

    root = tmp_path / "run"
    cmd = [sys.executable, "-m", "gddim_lightning", "fit", "--config", str(CONFIGS / "cld.yaml"), *TINY_UNET,
           "--trainer.max_steps", "4", "--trainer.default_root_dir", str(root),
           # the config's SampleCallback (the last callback), every 50 epochs: never within 4 steps
           "--trainer.callbacks.num_samples", "32", "--trainer.callbacks.batch_size", "32",
           "--model.init_args.sampler.init_args.nfe", "4"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=600)
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, err[-3000:]
    assert "litlogger" not in out + err and "LeafSpec" not in out + err
    assert "\r" not in out and len(out) < 5000, out[-2000:]
    assert "step 4/4 (100%)" in out
    assert "fit finished: 4 steps" in out and "fid_32" in out
    (ckpt_line,) = [line for line in out.splitlines() if line.strip().startswith("next:")]
    assert "gddim-lightning predict --config" in ckpt_line and "last.ckpt" in ckpt_line
    last = ckpt_line.split("--ckpt_path", 1)[1].strip()
    assert Path(last).is_file()

    samples = tmp_path / "samples"
    proc = subprocess.run([sys.executable, "-m", "gddim_lightning", "predict", "--config", str(CONFIGS / "cld.yaml"),
                           *TINY_UNET, "--model.init_args.sampler.init_args.nfe", "4", "--ckpt_path", last,
                           "--predict.out_dir", str(samples), "--predict.num_samples", "8"],
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "predict finished: 8 samples, NFE 4" in proc.stdout and str(samples) in proc.stdout
    assert "\r" not in proc.stdout


def test_bf16_mixed_fit_and_predict_on_cpu(tmp_path):
    """Mixed precision (bf16 autocast) trains and samples on CPU: finite loss, finite float32 samples."""
    from gddim_lightning.writer import load_samples

    root = tmp_path / "run"
    main(["fit", "--config", str(CONFIGS / "cld.yaml"), *TINY_UNET, *QUIET, "--trainer.precision", "bf16-mixed",
          "--trainer.max_steps", "2", "--trainer.callbacks=[]", "--trainer.logger", "false",
          "--trainer.default_root_dir", str(root), "--checkpoint.dirpath", str(root / "ckpt")])
    ckpt = root / "ckpt" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    out = tmp_path / "samples"
    main(["predict", "--config", str(CONFIGS / "cld.yaml"), *TINY_UNET, *QUIET, "--trainer.precision", "bf16-mixed",
          "--trainer.callbacks=[]", "--trainer.default_root_dir", str(root), "--ckpt_path", str(ckpt),
          "--model.init_args.sampler.init_args.nfe", "6", "--predict.out_dir", str(out), "--predict.num_samples", "4"])
    x, seeds = load_samples(out)
    assert x.dtype == np.float32 and x.shape == (4, 1, 8, 8) and np.isfinite(x).all()
    assert seeds.tolist() == [0, 1, 2, 3]


def test_fit_with_checkpointing_off_runs_and_writes_no_checkpoint(tmp_path, capsys):
    """--trainer.enable_checkpointing false used to clash with the CLI's own checkpoint callback (a raw
    MisconfigurationException): now training runs and writes no checkpoint, and the summary says so."""
    root = tmp_path / "run"
    main(["fit", "--config", str(CONFIGS / "toy_vp.yaml"), *TINY_TOY, *QUIET, "--trainer.max_steps", "2",
          "--trainer.callbacks=[]", "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
          "--trainer.default_root_dir", str(root)])
    assert not list(root.rglob("*.ckpt"))
    assert "no checkpoint was written (checkpointing is off)" in capsys.readouterr().out


def test_fit_that_trains_nothing_is_an_error(tmp_path, capsys):
    """A data loader that yields no batch used to end fit with success and an untrained checkpoint."""
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", str(CONFIGS / "toy_vp.yaml"), *TINY_TOY, *QUIET, "--trainer.max_steps", "3",
              "--trainer.limit_train_batches", "0", "--trainer.callbacks=[]", "--trainer.logger", "false",
              "--trainer.default_root_dir", str(tmp_path)])
    assert err.value.code == 1
    assert "fit made no optimiser step: the training data loader yielded no batches" in capsys.readouterr().err


def test_full_disk_while_training_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    """ENOSPC at a checkpoint write: one sentence naming the last good checkpoint (intact), exit 1."""
    import errno

    from gddim_lightning import checkpointing

    real = checkpointing.atomic_torch_save

    def save(checkpoint, path):
        if checkpoint["global_step"] >= 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(checkpoint, path)

    monkeypatch.setattr(checkpointing, "atomic_torch_save", save)
    ckpt_dir = tmp_path / "ckpt"
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", str(CONFIGS / "toy_vp.yaml"), *TINY_TOY, *QUIET, "--trainer.max_steps", "4",
              "--trainer.callbacks=[]", "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path),
              "--checkpoint.dirpath", str(ckpt_dir), "--checkpoint.every_n_train_steps", "1"])
    assert err.value.code == 1
    msg = capsys.readouterr().err
    assert "No space left on device while writing to" in msg and "the last good checkpoint is" in msg
    last = msg.split("the last good checkpoint is ", 1)[1].split(" (written", 1)[0]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 1
    assert not list(ckpt_dir.glob(".*.tmp"))


def test_unwritable_output_folder_is_refused_before_training(tmp_path, capsys, monkeypatch):


    import tempfile

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", str(CONFIGS / "toy_vp.yaml"), *TINY_TOY, *QUIET, "--trainer.max_steps", "2",
              "--trainer.callbacks=[]", "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "r")])
    assert err.value.code == 2
    assert "--trainer.default_root_dir" in capsys.readouterr().err
    assert not list((tmp_path / "r").rglob("*.ckpt"))
