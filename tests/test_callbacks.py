"""SampleCallback: short CPU fits that log grids / scatter plots and FID / point metrics to TensorBoard,
read back from the event files; fixed seeds; the DDP run is in tests/test_ddp_fit.py."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers import read_events

from gddim_lightning.callbacks import SampleCallback, format_count, image_grid, metric_name, points_image
from gddim_lightning.data import DigitsDataModule, ToyDataModule, load_digits_split
from gddim_lightning.evaluation import DigitsFID, InceptionFID, NoMetric, PointsMetric, auto_metric
from gddim_lightning.evaluation import metrics as metrics_module
from gddim_lightning.module import DiffusionModule
from gddim_lightning.nets import MLP, UNet
from gddim_lightning.samplers import GDDIM
from gddim_lightning.sdes import VPSDE

TINY_UNET = functools.partial(UNet, base_channels=8, channel_mult=[1], num_res_blocks=1, attn_resolutions=[],
                              num_groups=4, image_size=8)
TINY_MLP = functools.partial(MLP, hidden=32, depth=1)


def fit(module, datamodule, callback, root: Path, max_steps: int = 3) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, logger=TensorBoardLogger(str(root), name="tb"),
        callbacks=[callback], limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module, datamodule)
    return trainer


def digits_module() -> DiffusionModule:
    torch.manual_seed(0)
    return DiffusionModule(process=VPSDE, backbone=TINY_UNET, data_shape=(1, 8, 8))


def toy_module() -> DiffusionModule:
    torch.manual_seed(0)
    return DiffusionModule(process=VPSDE, backbone=TINY_MLP, data_shape=(2,))


# ------------------------------------------------------------------------------------ helpers
@pytest.mark.parametrize("n, text", [(2000, "2k"), (500, "500"), (50000, "50k"), (1500, "1500"), (64, "64"),
                                     (1000, "1k"), (2_000_000, "2M")])
def test_format_count(n, text):
    assert format_count(n) == text
    assert metric_name("fid", n) == f"fid_{text}"


def test_image_grid_is_square_ish_and_in_unit_range():
    x = torch.linspace(-2, 2, 10 * 8 * 8).reshape(10, 1, 8, 8)
    g = image_grid(x, padding=1, min_size=16)  # 4 x 3 tiles of 16 x 16 (upscaled by 2)
    assert g.shape == (1, 3 * 17 + 1, 4 * 17 + 1)
    assert g.min() >= 0 and g.max() <= 1
    torch.testing.assert_close(g[:, 1:17:2, 1:17:2], ((x[0].clamp(-1, 1) + 1) / 2))
    assert image_grid(torch.zeros(4, 6, 8, 8)).shape[0] == 1  # odd channel counts: first channel


@pytest.mark.parametrize("use_matplotlib", [True, False])
def test_points_image(use_matplotlib):
    if use_matplotlib:
        pytest.importorskip("matplotlib")
    g = torch.Generator().manual_seed(0)
    img = points_image(torch.randn(300, 2, generator=g), torch.randn(400, 2, generator=g),
                       use_matplotlib=use_matplotlib)
    assert img.shape == ((3, 320, 320) if use_matplotlib else (1, 128, 128))
    assert img.min() >= 0 and img.max() <= 1 and img.std() > 0


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="inception_weights"):
        SampleCallback(metric="inception")
    with pytest.raises(ValueError, match="metric"):
        SampleCallback(metric="fidd")
    with pytest.raises(ValueError, match="num_samples"):
        SampleCallback(num_samples=0)
    with pytest.raises(ValueError, match="inception_weights"):
        SampleCallback(metric=PointsMetric(), inception_weights="w.pth")
    with pytest.raises(TypeError, match="SampleMetric"):
        SampleCallback(metric=42)
    # A missing weights file fails when the metric is built (before training), with make_inception_fid's message.
    with pytest.raises(FileNotFoundError, match="no file at"):
        InceptionFID("/nonexistent/pt_inception.pth")
    with pytest.warns(FutureWarning), pytest.raises(FileNotFoundError, match="no file at"):
        SampleCallback(metric="inception", inception_weights="/nonexistent/pt_inception.pth")
    # A metric that cannot score the data fails in setup.
    with pytest.raises(ValueError, match="8x8 digits"):
        SampleCallback(metric=DigitsFID()).setup(SimpleNamespace(datamodule=None), toy_module(), "fit")


def test_automatic_choice():
    assert isinstance(SampleCallback().resolve_metric((1, 8, 8), "images"), DigitsFID)
    assert isinstance(SampleCallback().resolve_metric((2,), "points"), PointsMetric)
    with pytest.warns(UserWarning, match="no sample metric"):
        assert isinstance(SampleCallback().resolve_metric((3, 32, 32), "images"), NoMetric)
    assert isinstance(auto_metric((1, 8, 8), "points"), PointsMetric)


@pytest.mark.parametrize("name, cls", [("digits", DigitsFID), ("points", PointsMetric), ("none", NoMetric),
                                       ("auto", DigitsFID)])
def test_deprecated_metric_names_build_the_metric_and_warn(name, cls):
    with pytest.warns(FutureWarning, match=rf"SampleCallback\(metric='{name}'\) is deprecated"):
        cb = SampleCallback(metric=name)
    assert isinstance(cb.resolve_metric((1, 8, 8), "images"), cls)


def test_inception_shorthand_maps_to_inception_fid(monkeypatch):
    calls = []
    monkeypatch.setattr(metrics_module, "make_inception_fid", lambda path, **kw: calls.append(path) or "fid")
    with pytest.warns(FutureWarning, match="InceptionFID"):
        cb = SampleCallback(metric="inception", inception_weights="w.pth")
    assert isinstance(cb.metric, InceptionFID) and cb.metric.fid == "fid" and calls == ["w.pth"]


# ------------------------------------------------------------------------------------ fits
def test_digits_fit_logs_fid_and_grid(tmp_path):
    cb = SampleCallback(num_samples=64, num_grid=16, sampler=GDDIM(nfe=5), batch_size=32)
    module = digits_module()
    fit(module, DigitsDataModule(batch_size=32), cb, tmp_path)
    scalars, images, _ = read_events(tmp_path)
    assert [e.step for e in scalars["fid_64"]] == [3]
    assert math.isfinite(scalars["fid_64"][0].value) and scalars["fid_64"][0].value > 0
    assert scalars["sample_nfe"][0].value == 5
    assert scalars["sample_count"][0].value == 64
    assert scalars["sample_time_s"][0].value > 0
    (grid,) = images["samples/grid"]
    assert grid.step == 3 and grid.width == grid.height == 4 * 33 + 1  # 4 x 4 tiles, 8 px upscaled to 32
    assert cb.last_metrics["fid_64"] == pytest.approx(scalars["fid_64"][0].value, rel=1e-6)
    assert not any("fid" in k or "feature" in k for k in module.state_dict())  # metric kept off the module


def test_points_fit_logs_fd_swd_and_scatter(tmp_path):
    cb = SampleCallback(num_samples=200, num_real=1000, sampler=GDDIM(nfe=4), every_n_steps=2)
    fit(toy_module(), ToyDataModule("checkerboard", n_train=1024, n_val=64, batch_size=128), cb, tmp_path)
    scalars, images, _ = read_events(tmp_path)
    # every_n_steps=2 -> step 2; epoch end at max_steps=3 -> step 3.
    assert [e.step for e in scalars["fd_200"]] == [2, 3]
    assert [e.step for e in scalars["swd_200"]] == [2, 3]
    assert all(math.isfinite(e.value) for e in scalars["fd_200"] + scalars["swd_200"])
    assert scalars["sample_count"][-1].value == 200
    assert [e.step for e in images["samples/scatter"]] == [2, 3]


def test_same_weights_same_grid_and_metric(tmp_path):
    """Fixed seeds: the grid and FID of a checkpoint do not depend on the run or the batch size."""
    module = digits_module()
    trainer = fit(module, DigitsDataModule(batch_size=32), SampleCallback(every_n_epochs=0), tmp_path, max_steps=2)
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    results = []
    for batch_size in (48, 48, 17):
        reloaded = digits_module()
        reloaded.load_state_dict(torch.load(ckpt, weights_only=False)["state_dict"])
        cb = SampleCallback(num_samples=48, num_grid=9, sampler=GDDIM(nfe=4), batch_size=batch_size)
        metrics = cb.evaluate(reloaded, datamodule=DigitsDataModule())
        results.append((cb.last_image, metrics["fid_48"]))
    assert torch.equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]
    torch.testing.assert_close(results[2][0], results[0][0], atol=1e-5, rtol=0)
    assert results[2][1] == pytest.approx(results[0][1], rel=1e-4)
    # The real statistics are the training images (1500), added once.
    assert int(cb.metric.fid.real_features_num_samples) == 1500


class _Zero(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, u, t):
        return u * self.w


def test_images_without_feature_net_warn_once_and_still_grid():
    module = DiffusionModule(process=VPSDE, backbone=_Zero, data_shape=(3, 4, 4))
    cb = SampleCallback(num_samples=4, num_grid=4, sampler=GDDIM(nfe=3))
    with pytest.warns(UserWarning, match="inception_weights"):
        metrics = cb.evaluate(module)
    assert not any(k.startswith("fid") for k in metrics) and metrics["sample_count"] == 4
    assert cb.last_image.shape[0] == 3


def test_fast_dev_run(tmp_path):
    cb = SampleCallback(num_samples=20, num_real=200, sampler=GDDIM(nfe=3))
    trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", callbacks=[cb], enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(toy_module(), ToyDataModule("checkerboard", n_train=256, n_val=32, batch_size=64))
    assert set(cb.last_metrics) >= {"fd_20", "swd_20", "sample_time_s", "sample_nfe", "sample_count"}
    assert float(trainer.callback_metrics["fd_20"]) == pytest.approx(cb.last_metrics["fd_20"], rel=1e-6)  # monitorable


class _UInt8Features(nn.Module):
    """Stands in for Inception: checks its input is uint8 RGB, returns 4 features."""

    num_features = 4

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.shape[1] == 3, (x.dtype, x.shape)
        f = x.float().mean(dim=(2, 3)) / 255
        return torch.cat([f, f.square().sum(1, keepdim=True)], dim=1)


def test_inception_path_feeds_uint8_rgb(monkeypatch, tmp_path):
    """With inception_weights, 1-channel images in [-1, 1] reach the feature net as uint8 RGB."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    calls = []

    def fake(weights_path, **kwargs):
        calls.append(weights_path)
        return FrechetInceptionDistance(feature=_UInt8Features(), **kwargs)

    monkeypatch.setattr(metrics_module, "make_inception_fid", fake)
    cb = SampleCallback(num_samples=16, num_real=100, sampler=GDDIM(nfe=3), inception_weights="w.pth")
    metrics = cb.evaluate(digits_module(), datamodule=DigitsDataModule())
    assert calls == ["w.pth"] and math.isfinite(metrics["fid_16"])
    assert int(cb.metric.fid.real_features_num_samples) == 100


def test_points_metrics_on_flattened_images():
    cb = SampleCallback(num_samples=16, num_grid=4, num_real=100, sampler=GDDIM(nfe=3), metric=PointsMetric())
    metrics = cb.evaluate(digits_module(), datamodule=DigitsDataModule())
    assert math.isfinite(metrics["fd_16"]) and math.isfinite(metrics["swd_16"]) and "fid_16" not in metrics
    assert cb.last_image_tag == "samples/grid" and torch.cat(cb.metric._real).shape == (100, 1, 8, 8)
    with pytest.raises(ValueError, match="8x8 digits"):
        SampleCallback(metric=DigitsFID()).evaluate(toy_module())


def test_metric_without_real_data_is_a_clear_error():
    cb = SampleCallback(num_samples=4, num_grid=4, sampler=GDDIM(nfe=3), metric=DigitsFID())
    with pytest.raises(ValueError, match=r"DigitsFID needs real data.*datamodule="):
        cb.evaluate(digits_module())


# ------------------------------------------------------------------------------------ labelled data
class LabelledDigits(L.LightningDataModule):
    """A torchvision-style data module: (x, y) training batches, dict validation batches, and no
    reference_data (the callback reads its train_dataloader instead)."""

    def __init__(self) -> None:
        super().__init__()
        self.data_shape = (1, 8, 8)
        self.x, self.y = load_digits_split("train")

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=32, shuffle=True,
                          generator=torch.Generator().manual_seed(0))

    def val_dataloader(self):
        return DataLoader([{"x": x, "y": y} for x, y in zip(self.x[:64], self.y[:64])], batch_size=32)


def test_labelled_batches_fit_with_the_sample_callback(tmp_path):
    cb = SampleCallback(num_samples=16, num_grid=4, num_real=100, sampler=GDDIM(nfe=3), batch_size=32,
                        metric=DigitsFID())
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=TensorBoardLogger(str(tmp_path), name="tb"),
                        callbacks=[cb], limit_val_batches=1, val_check_interval=2, num_sanity_val_steps=0,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(digits_module(), LabelledDigits())
    scalars, images, _ = read_events(tmp_path)
    assert [e.step for e in scalars["fid_16"]] == [2] and math.isfinite(scalars["fid_16"][0].value)
    assert "val/loss" in scalars and len(images["samples/grid"]) == 1
    assert int(cb.metric.fid.real_features_num_samples) == 100  # read from train_dataloader's (x, y) batches


def test_impossible_callback_sampler_fails_before_training(tmp_path):
    """A sampler the model cannot run (t_min at the end time T) used to fail at the first evaluation,
    after an epoch of training; it now fails in setup, before the first step."""
    module = toy_module()
    steps = []

    class Count(L.Callback):
        def on_train_batch_end(self, *args, **kwargs):
            steps.append(1)

    callback = SampleCallback(every_n_epochs=1, num_samples=8, sampler=GDDIM(nfe=4, t_min=1.0))
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, callbacks=[callback, Count()],
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=tmp_path)
    with pytest.raises(ValueError, match=r"SampleCallback\.sampler: t_min=1(\.0)? must lie in \(0, T=1(\.0)?\)"):
        trainer.fit(module, ToyDataModule("checkerboard", n_train=64, n_val=16, batch_size=32))
    assert steps == []
