"""``python -m gddim_lightning predict``: seeds, `SampleWriter` outputs, refusal to overwrite, DDP shards.

A tiny CLD model on the digits is trained for 2 steps once per module (configs/cld.yaml with small
overrides); every predict runs in-process through ``gddim_lightning.cli.main`` except the DDP one,
which is a clean subprocess (DDP re-launches the command line for rank 1).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from helpers import clean_env

from gddim_lightning.cli import main
from gddim_lightning.data import SeedDataModule
from gddim_lightning.writer import PredictInterrupted, SampleWriter, find_outputs, load_samples, to_uint8

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")

REPO = Path(__file__).resolve().parent.parent
CONFIG = str(REPO / "configs" / "cld.yaml")
NFE = 4
# configs/cld.yaml shrunk for CI: a 2-level UNet with 8 base channels, no sampling callback
MODEL = [
    "--model.init_args.backbone.init_args.base_channels", "8",
    "--model.init_args.backbone.init_args.num_res_blocks", "1",
    "--model.init_args.sampler.init_args.nfe", str(NFE),
]  # fmt: skip
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--trainer.logger", "false"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A 2-step checkpoint of the shrunk configs/cld.yaml."""
    root = tmp_path_factory.mktemp("fit")
    main(["fit", "--config", CONFIG, *MODEL, *QUIET, "--trainer.callbacks=[]", "--trainer.max_steps", "2",
          "--data.init_args.batch_size", "16", "--trainer.default_root_dir", str(root),
          "--checkpoint.dirpath", str(root / "ckpt")])
    path = root / "ckpt" / "last.ckpt"
    assert path.is_file()
    return path


def predict(ckpt: Path | None, out: Path, *extra: str, root: Path | None = None) -> None:
    args = ["predict", "--config", CONFIG, *MODEL, *QUIET, "--trainer.callbacks=[]",
            "--trainer.default_root_dir", str(root or out.parent), "--predict.out_dir", str(out), *extra]
    if ckpt is not None:
        args += ["--ckpt_path", str(ckpt)]
    main(args)


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


# ---------------------------------------------------------------------------------------- seeds
def test_seed_data_module_lists_seeds():
    dm = SeedDataModule(num_samples=7, seed=5, batch_size=3)
    batches = list(dm.predict_dataloader())
    assert [b.tolist() for b in batches] == [[5, 6, 7], [8, 9, 10], [11]]
    assert all(b.dtype == torch.int64 for b in batches)
    with pytest.raises(ValueError, match="num_samples"):
        SeedDataModule(num_samples=0)


# ---------------------------------------------------------------------------------------- outputs
def test_predict_writes_npz_png_grid_and_meta(ckpt, tmp_path):
    out = tmp_path / "samples"
    predict(ckpt, out, "--predict.num_samples", "6", "--predict.batch_size", "4", "--predict.seed", "10",
            "--predict.format", "[npz,png,grid]")
    x, s = load_samples(out)
    assert x.dtype == np.float32 and x.shape == (6, 1, 8, 8)
    assert np.isfinite(x).all()
    assert s.tolist() == list(range(10, 16))
    with np.load(out / "samples_rank0.npz") as z:
        assert z["seeds"].dtype == np.int64
    pngs = sorted(out.glob("0*.png"))
    assert [p.name for p in pngs] == [f"{k:06d}.png" for k in range(10, 16)]
    for p, img in zip(pngs, to_uint8(x)):
        assert np.array_equal(np.asarray(Image.open(p)), img[..., 0])
    assert Image.open(out / "grid.png").size[0] > 8
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary file

    meta = json.loads((out / "meta.json").read_text())
    assert meta["checkpoint"] == str(ckpt.resolve())
    assert meta["nfe"] == NFE and f"nfe={NFE}" in meta["sampler"] and meta["sampler"].startswith("GDDIM(")
    assert meta["num_samples"] == 6 and meta["world_size"] == 1 and meta["shards"] == ["samples_rank0.npz"]
    assert meta["seeds"] == {"first": 10, "last": 15, "count": 6, "contiguous": True, "duplicates": 0}
    assert meta["data_shape"] == [1, 8, 8] and meta["formats"] == ["npz", "png", "grid"]
    assert meta["model"] == "gddim_lightning.module.CLDModule"
    assert set(meta["versions"]) >= {"gddim_lightning", "torch", "lightning"}
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["time_taken_s"] >= 0
    assert meta["request"] == {"num_samples": 6, "seed": 10, "batch_size": 4}


def test_predict_refuses_existing_outputs_then_overwrite(ckpt, tmp_path, capsys):
    out = tmp_path / "samples"
    predict(ckpt, out, "--predict.num_samples", "5", "--predict.format", "[npz,png]")
    before = digest(out)
    assert len(before) == 7  # 5 PNGs, one shard, meta.json

    with pytest.raises(SystemExit) as err:
        predict(ckpt, out, "--predict.num_samples", "3")
    assert err.value.code != 0
    msg = capsys.readouterr().err
    assert str(out) in msg and "--predict.overwrite true" in msg
    assert digest(out) == before  # nothing touched

    predict(ckpt, out, "--predict.num_samples", "3", "--predict.seed", "100", "--predict.overwrite", "true")
    x, s = load_samples(out)
    assert s.tolist() == [100, 101, 102]
    assert not list(out.glob("00000*.png"))  # the earlier run's outputs are gone (format npz only now)
    assert json.loads((out / "meta.json").read_text())["num_samples"] == 3


def test_writer_refuses_in_setup_before_sampling(tmp_path):
    """The writer's own check (also without the CLI) fires in setup, before predict_step runs."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "meta.json").write_text("{}")
    (out / "notes.txt").write_text("unrelated files are fine")
    calls = []

    class Model(L.LightningModule):
        data_shape = (2,)

        def predict_step(self, batch, batch_idx):
            calls.append(batch_idx)
            return {"samples": torch.zeros(len(batch), 2), "seeds": batch, "nfe": torch.tensor(1)}

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path,
                        callbacks=[SampleWriter(out, "npz")])
    with pytest.raises(FileExistsError, match="overwrite"):
        trainer.predict(Model(), datamodule=SeedDataModule(4, batch_size=2), return_predictions=False)
    assert calls == [] and (out / "meta.json").read_text() == "{}"
    assert [p.name for p in find_outputs(out)] == ["meta.json"]
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path,
                        callbacks=[SampleWriter(tmp_path / "p", "png")])
    with pytest.raises(ValueError, match="png"):  # one PNG per sample is for images only
        trainer.predict(Model(), datamodule=SeedDataModule(2), return_predictions=False)


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        predict(tmp_path / "nope.ckpt", tmp_path / "o")
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert "nope.ckpt" in msg and "no such checkpoint file" in msg
    assert not (tmp_path / "o").exists()


class _RunsCode:
    """Unpickling this calls a function: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("kind", ["code", "corrupt"])
def test_unsafe_or_corrupt_checkpoint_is_refused(tmp_path, capsys, kind):
    """Checkpoints are read with weights_only=True: a file that would run code is refused with one clear
    error (and nothing in it runs); so is a corrupt file."""
    bad, marker = tmp_path / "bad.ckpt", tmp_path / "code-ran"
    if kind == "code":
        torch.save({"state_dict": {}, "hyper_parameters": {}, "x": _RunsCode(marker)}, bad)
    else:
        bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as err:
        predict(bad, tmp_path / "o")
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert "cannot be loaded safely" in msg and "bad.ckpt" in msg and "weights_only=False" not in msg
    assert not marker.exists()
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------- seeding
def test_samples_depend_on_seed_only(ckpt, tmp_path):
    """Per-sample seeding: an untrained UNet outputs exactly zero, so samples are bit-identical across
    batch sizes. A trained one agrees to float32 round-off only: CPU GEMM / conv kernels are not
    batch-size invariant (a row of a matmul can round differently in a batch of 1 and of 7)."""
    a, b = tmp_path / "a", tmp_path / "b"
    untrained = ("--predict.allow_untrained", "true")
    predict(None, a, "--predict.num_samples", "7", "--predict.batch_size", "7", *untrained)
    predict(None, b, "--predict.num_samples", "7", "--predict.batch_size", "2", *untrained)
    xa, sa = load_samples(a)
    xb, sb = load_samples(b)
    assert np.array_equal(sa, sb) and np.array_equal(xa, xb)

    c, d = tmp_path / "c", tmp_path / "d"
    predict(ckpt, c, "--predict.num_samples", "7", "--predict.batch_size", "7")
    predict(ckpt, d, "--predict.num_samples", "7", "--predict.batch_size", "1")
    xc, _ = load_samples(c)
    xd, _ = load_samples(d)
    # float32 round-off of batch-size dependent kernels, amplified over NFE steps: ~1e-5 relative
    assert np.abs(xc - xd).max() <= 1e-4 * max(1.0, float(np.abs(xc).max()))
    # a different seed gives a different sample
    assert not np.allclose(xc[0], xc[1])


# ---------------------------------------------------------------------------------------- DDP
def test_ddp_predict_writes_one_shard_per_rank(ckpt, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "gddim_lightning", "predict", "--config", CONFIG, *MODEL, *QUIET,
           "--trainer.callbacks=[]", "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(ckpt),
           "--predict.out_dir", str(out), "--predict.num_samples", "7", "--predict.batch_size", "1",
           "--predict.format", "[npz,grid]",
           "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]

    shards = {}
    for r in (0, 1):
        with np.load(out / f"samples_rank{r}.npz") as z:
            shards[r] = (z["samples"], z["seeds"])
    assert shards[0][1].tolist() == [0, 2, 4, 6] and shards[1][1].tolist() == [1, 3, 5]  # no padding
    meta = json.loads((out / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["num_samples"] == 7
    assert meta["seeds"] == {"first": 0, "last": 6, "count": 7, "contiguous": True, "duplicates": 0}
    assert (out / "grid.png").is_file()

    # Batch size 1 on both sides, so the same kernels run: the shards equal one process bit for bit.
    # (With other batch sizes they agree to float32 round-off: see test_samples_depend_on_seed_only.)
    single = tmp_path / "single"
    predict(ckpt, single, "--predict.num_samples", "7", "--predict.batch_size", "1")
    xs, ss = load_samples(single)
    xd, sd = load_samples(out)
    assert np.array_equal(ss, sd)
    assert np.abs(xd - xs).max() <= 1e-5 * max(1.0, float(np.abs(xs).max()))
    assert np.array_equal(xd, xs)


# ---------------------------------------------------------------------------------------- EMA-only export
def test_ema_only_export_predicts_the_same_samples_and_refuses_to_resume(ckpt, tmp_path):
    """scripts/export_pretrained.py (the pretrained/ files): smaller, same samples, never overwrites, and a
    fit from it stops with a clear message instead of a missing-optimiser traceback."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import export_pretrained
    finally:
        sys.path.pop(0)
    small = tmp_path / "ema.ckpt"
    assert export_pretrained.main([str(ckpt), str(small)]) == 0
    assert small.stat().st_size < 0.6 * ckpt.stat().st_size
    assert export_pretrained.main([str(ckpt), str(small)]) == 1  # refuses to overwrite
    full_out, small_out = tmp_path / "full", tmp_path / "small"
    predict(ckpt, full_out, "--predict.num_samples", "3", "--predict.format", "[npz]")
    predict(small, small_out, "--predict.num_samples", "3", "--predict.format", "[npz]")
    np.testing.assert_array_equal(load_samples(full_out)[0], load_samples(small_out)[0])
    with pytest.raises(ValueError, match="EMA-only checkpoint"):
        main(["fit", "--config", CONFIG, *MODEL, *QUIET, "--trainer.callbacks=[]", "--trainer.max_steps", "3",
              "--data.init_args.batch_size", "16", "--trainer.default_root_dir", str(tmp_path / "fit"),
              "--ckpt_path", str(small)])


def test_predict_creates_no_logger_folders(ckpt, tmp_path):
    """With the config's default logger, predict writes its samples and nothing else: no lightning_logs/version_N."""
    root = tmp_path / "root"
    args = ["predict", "--config", CONFIG, *MODEL, "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks=[]", "--trainer.default_root_dir", str(root), "--predict.out_dir", str(tmp_path / "s"),
            "--predict.num_samples", "2", "--ckpt_path", str(ckpt)]
    main(args)
    assert (tmp_path / "s").is_dir()
    assert not root.exists() or not any(root.rglob("*")), sorted(root.rglob("*"))


# ---------------------------------------------------------------------------------------- never lose user files
def _user_files(folder: Path) -> dict[str, bytes]:
    files = {"1234567.png": b"my own picture", "notes.txt": b"mine"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def test_overwrite_replaces_only_recorded_unchanged_outputs(ckpt, tmp_path, capsys):
    """--predict.overwrite removes only files an earlier run recorded in meta.json (with their hashes) and
    that are unchanged: a user's file under an output name, or an output the user edited, is never touched,
    and the folder is refused before sampling."""
    out = tmp_path / "samples"
    predict(ckpt, out, "--predict.num_samples", "3", "--predict.format", "[npz,png]")
    meta = json.loads((out / "meta.json").read_text())
    assert set(meta["outputs"]) == {"000000.png", "000001.png", "000002.png", "samples_rank0.npz"}
    assert meta["outputs"]["000001.png"] == hashlib.sha256((out / "000001.png").read_bytes()).hexdigest()
    assert meta["identity"]["process"].startswith("CLD(") and meta["identity"]["data_shape"] == [1, 8, 8]
    mine = _user_files(out)
    before = digest(out)
    with pytest.raises(SystemExit) as err:
        predict(ckpt, out, "--predict.num_samples", "2", "--predict.overwrite", "true")
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert "1234567.png" in msg and "never overwrites or deletes" in msg
    assert digest(out) == before

    (out / "1234567.png").unlink()  # the user moves their file away, but edits one of the outputs
    (out / "000001.png").write_bytes(b"edited by hand")
    with pytest.raises(SystemExit):
        predict(ckpt, out, "--predict.num_samples", "2", "--predict.overwrite", "true")
    assert "000001.png" in capsys.readouterr().err and (out / "000001.png").read_bytes() == b"edited by hand"

    (out / "000001.png").unlink()
    predict(ckpt, out, "--predict.num_samples", "2", "--predict.seed", "50", "--predict.overwrite", "true")
    assert load_samples(out)[1].tolist() == [50, 51]
    assert not (out / "000000.png").exists() and not (out / "000002.png").exists()  # recorded: replaced
    assert (out / "notes.txt").read_bytes() == mine["notes.txt"]
    assert not [p for p in out.iterdir() if p.name.startswith(".predict-partial")]


def test_foreign_meta_json_and_current_directory_are_safe(ckpt, tmp_path, monkeypatch, capsys):
    """A meta.json the writer did not write is a user's file; --predict.out_dir "" (the current directory)
    removes nothing it did not write."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    (cwd / "meta.json").write_text('{"mine": true}')
    (cwd / "000000.png").write_bytes(b"user image")
    for overwrite in ("false", "true"):
        with pytest.raises(SystemExit):
            predict(ckpt, Path(""), "--predict.num_samples", "2", "--predict.overwrite", overwrite)
        assert (cwd / "meta.json").read_text() == '{"mine": true}'
        assert (cwd / "000000.png").read_bytes() == b"user image"
    assert "meta.json" in capsys.readouterr().err
    (cwd / "meta.json").unlink()
    (cwd / "000000.png").unlink()
    (cwd / "keep.txt").write_text("x")
    predict(ckpt, Path(""), "--predict.num_samples", "2", "--predict.format", "[npz]", root=tmp_path)
    assert sorted(p.name for p in cwd.iterdir()) == ["keep.txt", "meta.json", "samples_rank0.npz"]


def test_out_dir_that_is_a_file_is_refused(ckpt, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("data")
    with pytest.raises(SystemExit) as err:
        predict(ckpt, f, "--predict.num_samples", "2")
    assert err.value.code == 2 and "is a file, not a folder" in capsys.readouterr().err
    assert f.read_text() == "data"


def _toy_model(signal_at: int | None, signum: int = signal.SIGTERM):
    class Model(L.LightningModule):
        data_shape = (2,)

        def predict_step(self, batch, batch_idx):
            if batch_idx == signal_at:
                os.kill(os.getpid(), signum)
                time.sleep(5)  # the handler interrupts this at once
            return {"samples": torch.full((len(batch), 2), float(batch_idx)), "seeds": batch, "nfe": 1}

    return Model()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_predict_keeps_earlier_outputs_and_its_partial_samples(tmp_path, capsys, signum):
    """SIGTERM or SIGINT while sampling: stops at once, the earlier outputs are untouched, the finished
    batches are kept in the staging folder, and the message names it. Whatever disposition the test process
    inherited (SIGINT ignored in a background job), the writer's handler is what runs."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        out = tmp_path / "o"

        def run(model, overwrite):
            trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path,
                                callbacks=[SampleWriter(out, "npz", overwrite=overwrite)])
            trainer.predict(model, datamodule=SeedDataModule(8, batch_size=2), return_predictions=False)

        run(_toy_model(None), False)
        before = digest(out)
        t0 = time.monotonic()
        with pytest.raises(PredictInterrupted) as err:
            run(_toy_model(2, signum), True)
        assert time.monotonic() - t0 < 4.0  # did not wait out the 5 s sleep
        assert err.value.exit_code == 128 + signum
        assert digest(out) == before
        (partial,) = [p for p in out.iterdir() if p.name.startswith(".predict-partial")]
        with np.load(partial / "samples_rank0.npz") as z:
            assert z["seeds"].tolist() == [0, 1, 2, 3]  # batches 0 and 1 finished
        msg = capsys.readouterr().err
        assert "untouched" in msg and partial.name in msg and "4 sample(s)" in msg
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # handlers restored
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def test_sigterm_stops_cli_predict_within_seconds(ckpt, tmp_path):
    """A real SIGTERM to a running `python -m gddim_lightning predict`: exit status 143 within seconds,
    earlier outputs intact."""
    out = tmp_path / "s"
    predict(ckpt, out, "--predict.num_samples", "2", "--predict.format", "[npz]")
    before = digest(out)
    cmd = [sys.executable, "-m", "gddim_lightning", "predict", "--config", CONFIG, *MODEL, *QUIET,
           "--trainer.callbacks=[]", "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(ckpt),
           "--predict.out_dir", str(out), "--predict.num_samples", "1000000", "--predict.batch_size", "4",
           "--predict.overwrite", "true"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while not [p for p in out.iterdir() if p.name.startswith(".predict-partial")]:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        time.sleep(1.0)  # sampling has started
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - t0 < 10
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "untouched" in err
    assert digest(out) == before


# ---------------------------------------------------------------------------------------- the right model
def test_checkpoint_of_another_process_or_backbone_is_refused(ckpt, tmp_path, capsys):
    """The checkpoint records the process, the backbone and the data shape; a config that builds another
    model is refused with one sentence naming both sides, before anything runs."""
    for extra, words in ((("--model.init_args.process.init_args.beta", "8.0"), ("process", "beta=4.0", "beta=8.0")),
                         (("--model.init_args.backbone.init_args.base_channels", "16"), ("backbone_parameters",))):
        with pytest.raises(SystemExit) as err:
            predict(ckpt, tmp_path / "o", "--predict.num_samples", "2", *extra)
        assert err.value.code == 2
        msg = capsys.readouterr().err
        assert "trained with another model than this config builds" in msg
        assert all(w in msg for w in words), msg
        assert not (tmp_path / "o").exists()
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert stored["gddim_identity"]["process"].startswith("CLD(")


def test_identity_check_on_load_without_the_cli(ckpt):
    """The module refuses the same mismatch when a checkpoint is loaded through Lightning directly."""
    from gddim_lightning.module import CLDModule

    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    from gddim_lightning.nets import UNet
    from gddim_lightning.sdes import CLD

    model = CLDModule(process=lambda shape: CLD(shape, beta=8.0),
                      backbone=lambda c: UNet(c, base_channels=8, num_res_blocks=1, image_size=8),
                      data_shape=(1, 8, 8), mixed_score=True)
    with pytest.raises(ValueError, match=r"process: checkpoint 'CLD\(.*beta=4\.0.*this config 'CLD\(.*beta=8\.0"):
        model.on_load_checkpoint(stored)


@pytest.mark.parametrize("ckpt_arg", [None, "last"])
def test_predict_refuses_untrained_weights(tmp_path, capsys, ckpt_arg):
    """No checkpoint (or Lightning's 'last', which a fresh predict cannot resolve) samples an untrained
    network: refused unless asked for explicitly."""
    extra = () if ckpt_arg is None else ("--ckpt_path", ckpt_arg)
    with pytest.raises(SystemExit) as err:
        predict(None, tmp_path / "o", "--predict.num_samples", "2", *extra)
    assert err.value.code == 2
    assert "untrained network" in capsys.readouterr().err and not (tmp_path / "o").exists()
    predict(None, tmp_path / "o", "--predict.num_samples", "2", "--predict.allow_untrained", "true", *extra)
    assert load_samples(tmp_path / "o")[1].tolist() == [0, 1]


@pytest.mark.parametrize("content", ["tensor", "empty-dict"])
def test_non_checkpoint_files_are_refused(tmp_path, capsys, content):
    bad = tmp_path / "weights.pt"
    torch.save(torch.zeros(3) if content == "tensor" else {}, bad)
    with pytest.raises(SystemExit) as err:
        predict(bad, tmp_path / "o", "--predict.num_samples", "2")
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert "weights.pt is not a checkpoint of this package" in msg


#: every shipped file: pretrained/<config>_digits.ckpt (8x8 digits) or pretrained/mnist_<process>.ckpt,
#: each for configs/<config>.yaml
SHIPPED = sorted(p.stem for p in (REPO / "pretrained").glob("*.ckpt"))


def test_the_shipped_checkpoints_are_found():
    assert {"vp_digits", "bdm_digits", "cld_digits", "cld_precond_digits", "mnist_bdm"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoints_record_the_model_of_their_config(name):
    """Every pretrained/*.ckpt records its identity, and it is the model its config builds."""
    path = REPO / "pretrained" / f"{name}.ckpt"
    config = name.removesuffix("_digits")
    assert (REPO / "configs" / f"{config}.yaml").is_file(), f"{path.name}: no configs/{config}.yaml"
    limit = 8e6 if name.endswith("_digits") else 15e6  # the sizes issues #10 and #12 allow
    assert path.stat().st_size <= limit, f"{path.name}: {path.stat().st_size} bytes, over {limit:.0e}"
    stored = torch.load(path, map_location="cpu", weights_only=True)
    model = main(["--config", str(REPO / "configs" / f"{config}.yaml")], run=False).model
    assert model.identity_mismatch(stored["gddim_identity"]) is None
    assert stored["gddim_identity"] == model.identity()


def test_vp_checkpoint_into_the_bdm_config_is_refused(tmp_path, capsys):
    """The reported case: a VP model sampled with configs/bdm.yaml ran without complaint."""
    with pytest.raises(SystemExit) as err:
        main(["predict", "--config", str(REPO / "configs" / "bdm.yaml"), *QUIET, "--ckpt_path",
              str(REPO / "pretrained" / "vp_digits.ckpt"), "--predict.out_dir", str(tmp_path / "o")])
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert "process: checkpoint 'VPSDE(" in msg and "this config 'BDM(" in msg
    assert not (tmp_path / "o").exists()
