"""Tests of gddim_lightning.evaluation (offline metrics). CPU only, seeded."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gddim_lightning.evaluation import (
    DIGITS_FEATURES_WEIGHTS,
    DigitsFeatureNet,
    DigitsFID,
    NoMetric,
    PointsMetric,
    SampleMetric,
    auto_metric,
    frechet_distance,
    gaussian_moment_error,
    load_digits_feature_net,
    make_digits_fid,
    make_inception_fid,
    sliced_wasserstein,
    to_uint8_images,
)
from gddim_lightning.evaluation import inception as inception_mod

REPO_ROOT = Path(__file__).resolve().parent.parent


def _digits_split() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Same convention as gddim_lightning.data.digits (replicated, not imported)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.from_numpy((data.images / 16.0 * 2.0 - 1.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(data.target.astype(np.int64))
    perm = torch.from_numpy(np.random.default_rng(0).permutation(1797))
    return {"train": (x[perm[:1500]], y[perm[:1500]]), "val": (x[perm[1500:]], y[perm[1500:]])}


@pytest.fixture(scope="module")
def digits():
    return _digits_split()


@pytest.fixture(scope="module")
def net():
    return load_digits_feature_net()


# --------------------------------------------------------------------------- feature net


def test_shipped_weights_are_plain_state_dict():
    state = torch.load(DIGITS_FEATURES_WEIGHTS, map_location="cpu", weights_only=True)
    assert isinstance(state, dict)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert set(state) == set(DigitsFeatureNet().state_dict())


def test_loaded_net_frozen_and_accurate(net, digits):
    x_va, y_va = digits["val"]
    assert x_va.shape == (297, 1, 8, 8)
    assert net.num_features == 128 and isinstance(net.num_features, int)
    assert not net.training
    assert all(not p.requires_grad for p in net.parameters())
    with torch.no_grad():
        acc = float((net.logits(x_va).argmax(dim=1) == y_va).float().mean())
    assert acc >= 0.97
    meta = json.loads(DIGITS_FEATURES_WEIGHTS.with_suffix(".json").read_text())
    assert abs(meta["val_accuracy"] - acc) <= 1.5 / 297
    assert {"seed", "epochs", "torch_version"} <= set(meta)


def test_forward_shapes_dtypes_and_layouts(net, digits):
    x = digits["val"][0][:16]
    with torch.no_grad():
        f = net(x)
        assert f.shape == (16, net.num_features) and f.dtype == torch.float32
        assert net.logits(x).shape == (16, 10)
        torch.testing.assert_close(net(x.reshape(16, 64)), f)
        torch.testing.assert_close(net(x.reshape(16, 8, 8)), f)
        u8 = ((x + 1) * 127.5).round().to(torch.uint8)
        torch.testing.assert_close(net(u8), f, atol=0.05, rtol=0.05)
        # inputs are clamped to [-1, 1]
        torch.testing.assert_close(net(x * 3), net((x * 3).clamp(-1, 1)))
        # no batch-norm / dropout: train mode computes the same function
        net.train()
        try:
            torch.testing.assert_close(net(x), f)
        finally:
            net.eval()
    with pytest.raises(ValueError, match="8x8"):
        net(torch.zeros(2, 3, 8, 8))


def test_missing_or_corrupt_weights_errors(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="train_digits_classifier.py") as err:
        load_digits_feature_net(missing)
    assert str(missing) in str(err.value)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(RuntimeError, match="train_digits_classifier.py") as err:
        load_digits_feature_net(corrupt)
    assert str(corrupt) in str(err.value)
    wrong = tmp_path / "wrong.pt"
    torch.save({"fc1.weight": torch.zeros(128, 1024)}, wrong)
    with pytest.raises(RuntimeError, match="do not match"):
        load_digits_feature_net(wrong)


# --------------------------------------------------------------------------- digits FID


@pytest.fixture(scope="module")
def digits_fid(digits):
    return make_digits_fid(real_images=digits["train"][0])


def _fid(metric, fake: torch.Tensor) -> float:
    metric.reset()  # keeps the cached real statistics (reset_real_features=False)
    metric.update(fake, real=False)
    return float(metric.compute())


def test_digits_fid_orders_quality(digits_fid, digits):
    x_tr = digits["train"][0]
    x_va = digits["val"][0]
    assert int(digits_fid.real_features_num_samples) == 1500
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(x_va.shape, generator=gen) * 2 - 1
    mean_img = x_tr.mean(dim=0, keepdim=True)
    fid_real = _fid(digits_fid, x_va)
    fid_mild = _fid(digits_fid, 0.8 * x_va + 0.2 * mean_img)
    fid_degraded = _fid(digits_fid, 0.6 * x_va + 0.4 * mean_img)
    fid_noise = _fid(digits_fid, noise)
    # observed: ~2.6, ~8.5, ~28, ~65
    assert 0.0 <= fid_real < 6.0
    assert fid_noise > 30.0 and fid_noise > 10 * fid_real
    assert fid_real < fid_mild < fid_degraded < fid_noise
    assert 3 * fid_real < fid_degraded < 0.8 * fid_noise
    # real statistics survived the resets
    assert int(digits_fid.real_features_num_samples) == 1500


def test_make_digits_fid_options():
    metric = make_digits_fid()
    assert metric.reset_real_features is False
    assert int(metric.real_features_num_samples) == 0
    assert metric.real_features_sum.shape == (128,)
    with pytest.raises(TypeError):
        make_digits_fid(feature=64)


# --------------------------------------------------------------------------- point metrics


def _gaussian(n: int, mean, chol, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, len(mean), generator=gen, dtype=torch.float64)
    return z @ torch.as_tensor(chol, dtype=torch.float64).T + torch.as_tensor(mean, dtype=torch.float64)


CHOL = [[1.0, 0.0], [0.6, 0.5]]


def test_frechet_identical_and_shifted():
    x = _gaussian(50_000, [0.0, 0.0], CHOL, seed=1)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    shift = torch.tensor([1.5, -2.0], dtype=torch.float64)
    assert frechet_distance(x, x + shift) == pytest.approx(6.25, abs=1e-8)
    y = _gaussian(50_000, [0.0, 0.0], CHOL, seed=2)
    assert frechet_distance(x, y) < 2e-3
    assert frechet_distance(x, y + shift) == pytest.approx(6.25, abs=0.05)
    # symmetric; float32 input accepted
    assert frechet_distance(y.float(), x.float()) == pytest.approx(frechet_distance(x, y), abs=1e-4)


def test_frechet_closed_form_and_degenerate():
    # diagonal Gaussians: sum (sqrt(a_i) - sqrt(b_i))^2
    x = _gaussian(100_000, [0.0, 0.0, 0.0], torch.diag(torch.tensor([1.0, 2.0, 0.5])), seed=3)
    y = _gaussian(100_000, [0.0, 0.0, 0.0], torch.diag(torch.tensor([2.0, 1.0, 0.5])), seed=4)
    assert frechet_distance(x, y) == pytest.approx(2.0, abs=0.05)
    # singular covariance (points on a line): finite, no NaN
    t = torch.linspace(-1, 1, 200, dtype=torch.float64)
    line = torch.stack([t, 2 * t], dim=1)
    value = frechet_distance(line, line + 1e-3)
    assert math.isfinite(value) and value == pytest.approx(2e-6, abs=1e-7)
    # images are flattened
    img = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(img, img) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        frechet_distance(torch.zeros(10, 2), torch.zeros(10, 3))
    with pytest.raises(ValueError):
        frechet_distance(torch.zeros(1, 2), torch.zeros(10, 2))


def test_sliced_wasserstein_basic():
    x = _gaussian(4000, [0.0, 0.0], CHOL, seed=5)
    assert sliced_wasserstein(x, x) == 0.0
    # duplicating every point leaves the empirical measure (and the distance) unchanged
    assert sliced_wasserstein(x, torch.cat([x, x])) == pytest.approx(0.0, abs=1e-12)
    shift = torch.tensor([3.0, 4.0], dtype=torch.float64)  # |shift| = 5
    sw = sliced_wasserstein(x, x + shift, n_projections=2048)
    assert sw > 0 and sw == pytest.approx(5.0 / math.sqrt(2), rel=0.05)
    # 1-D: exactly the shift
    assert sliced_wasserstein(x[:, :1], x[:, :1] + 0.7) == pytest.approx(0.7, abs=1e-12)


def test_sliced_wasserstein_unequal_sizes_exact():
    # quantile functions: x on {0,1,2}, y on {0,3}: W2^2 = 1/6*1 + 1/6*4 + 1/3*1 = 7/6
    x = torch.tensor([[0.0], [1.0], [2.0]])
    y = torch.tensor([[3.0], [0.0]])
    assert sliced_wasserstein(x, y, n_projections=8) == pytest.approx(math.sqrt(7 / 6), abs=1e-12)
    assert sliced_wasserstein(y, x, n_projections=8) == pytest.approx(math.sqrt(7 / 6), abs=1e-12)


def test_sliced_wasserstein_deterministic_per_seed():
    x = _gaussian(500, [0.0, 0.0], CHOL, seed=6)
    y = _gaussian(700, [0.5, 0.0], CHOL, seed=7)
    a = sliced_wasserstein(x, y, n_projections=64, seed=3)
    assert a == sliced_wasserstein(x, y, n_projections=64, seed=3)
    assert a != sliced_wasserstein(x, y, n_projections=64, seed=4)
    assert a > 0
    with pytest.raises(ValueError):
        sliced_wasserstein(x, y, n_projections=0)


def test_gaussian_moment_error():
    x = _gaussian(1000, [0.0, 0.0], CHOL, seed=8)
    err = gaussian_moment_error(x, x)
    assert err["mean"] == pytest.approx(0.0, abs=1e-12) and err["cov"] == pytest.approx(0.0, abs=1e-12)
    err = gaussian_moment_error(x + torch.tensor([3.0, 4.0], dtype=torch.float64), x)
    assert err["mean"] == pytest.approx(5.0) and err["cov"] == pytest.approx(0.0, abs=1e-9)
    err = gaussian_moment_error(2 * x, x)
    assert err["cov_rel"] == pytest.approx(3.0)


# --------------------------------------------------------------------------- inception


def test_inception_missing_weights(tmp_path):
    missing = tmp_path / "pt_inception.pth"
    with pytest.raises(FileNotFoundError) as err:
        make_inception_fid(missing)
    msg = str(err.value)
    assert "weights_path" in msg and "pt_inception-2015-12-05" in msg and "internet" in msg
    assert str(missing) in msg
    with pytest.raises(FileNotFoundError):
        make_inception_fid(tmp_path)  # a directory is not a weights file


def test_inception_without_torch_fidelity(tmp_path, monkeypatch):
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"dummy")
    monkeypatch.setattr(inception_mod, "_torch_fidelity_available", lambda: False)
    with pytest.raises(ImportError, match=r"pip install 'gddim-lightning\[inception\]'"):
        make_inception_fid(weights)


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity installed")
def test_inception_without_torch_fidelity_real_env(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"dummy")
    with pytest.raises(ImportError, match="gddim-lightning"):
        make_inception_fid(weights)


def test_to_uint8_images():
    x = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0, 5.0])
    out = to_uint8_images(x)
    assert out.dtype == torch.uint8
    assert out.tolist() == [0, 0, 128, 255, 255, 255]
    assert to_uint8_images(torch.tensor([0.0, 0.5, 1.0]), value_range=(0, 1)).tolist() == [0, 128, 255]


def test_package_import_is_light():
    code = (
        "import sys, gddim_lightning.evaluation\n"
        "bad = [m for m in ('torchvision', 'torch_fidelity', 'torchmetrics.image') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, timeout=120)


# --------------------------------------------------------------------------- metric components
def test_digits_fid_component_matches_make_digits_fid(digits):
    x_train, x_val = digits["train"][0][:400], digits["val"][0][:200]
    metric = DigitsFID()
    assert metric.names == ("fid",) and isinstance(metric, SampleMetric)
    for chunk in x_train.split(150):
        metric.update_real(chunk)
    metric.update_fake(x_val)
    value = metric.compute()["fid"]
    ref = make_digits_fid(real_images=x_train, batch_size=150)
    ref.update(x_val, real=False)
    assert value == float(ref.compute())
    metric.reset()  # forgets the samples, keeps the real statistics
    metric.update_fake(x_val)
    assert metric.compute()["fid"] == value and int(metric.fid.real_features_num_samples) == 400
    metric.reset_real()
    assert int(metric.fid.real_features_num_samples) == 0
    with pytest.raises(ValueError, match=r"DigitsFID needs 8x8 digits \(data_shape \(1, 8, 8\)\), got \(2,\)"):
        metric.check_shape((2,))


def test_points_metric_component():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 2, generator=g), torch.randn(200, 2, generator=g) + 0.5
    metric = PointsMetric(n_projections=64, seed=3)
    with pytest.raises(ValueError, match="no fake points"):
        metric.compute()
    metric.update_real(y[:120])
    metric.update_real(y[120:])
    metric.update_fake(x)
    assert metric.compute() == {"fd": frechet_distance(x, y), "swd": sliced_wasserstein(x, y, 64, seed=3)}
    metric.check_shape((1, 8, 8))  # any shape: flattened
    with pytest.raises(ValueError, match="n_projections"):
        PointsMetric(n_projections=0)
    assert NoMetric().names == () and NoMetric().compute() == {}


def _points_rank(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(51, 2, generator=g), torch.randn(40, 2, generator=g)
    metric = PointsMetric()
    metric.update_real(y[rank::world])  # the callback's split: item k on rank k % world
    metric.update_fake(x[rank::world][:10])  # uneven chunks: rank 0 holds one more
    metric.update_fake(x[rank::world][10:])
    torch.save(metric.compute(), f"{out}/{rank}.pt")
    dist.destroy_process_group()


def test_points_metric_gathers_ranks_in_item_order(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_points_rank, args=(2, f"file://{tmp_path}/store", str(tmp_path)), nprocs=2)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(51, 2, generator=g), torch.randn(40, 2, generator=g)
    single = {"fd": frechet_distance(x, y), "swd": sliced_wasserstein(x, y)}
    assert torch.load(tmp_path / "0.pt") == torch.load(tmp_path / "1.pt") == single  # exactly, not approximately


def test_auto_metric_choice():
    assert isinstance(auto_metric((2,), "points"), PointsMetric)
    assert isinstance(auto_metric((1, 8, 8), "images"), DigitsFID)
    assert isinstance(auto_metric((3, 32, 32), "images"), NoMetric)


# --------------------------------------------------------------------------- training script


def test_train_script_refuses_overwrite(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("train_digits_classifier", REPO_ROOT / "scripts" / "train_digits_classifier.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "digits_features.pt"
    out.write_bytes(b"keep me")
    assert module.main(["--out", str(out)]) == 1
    assert out.read_bytes() == b"keep me"
    assert "--overwrite" in capsys.readouterr().err
