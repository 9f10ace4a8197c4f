"""Tests of the offline datamodules in gddim_lightning.data (CPU, no network)."""

from __future__ import annotations

import pickle
import re

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from gddim_lightning.data import (
    CIFAR10_TEST_FILE,
    CIFAR10_TRAIN_FILES,
    TOY_NAMES,
    CIFAR10DataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    ToyDataModule,
    data_batch,
    load_digits_split,
    reference_batches,
    sample_mixture,
    sample_toy,
    toy_mixture_params,
)
from gddim_lightning.data import toys


# ---------------------------------------------------------------- toys
@pytest.mark.parametrize("name", TOY_NAMES)
def test_toy_sampler_shape_finite_deterministic(name):
    fn = getattr(toys, f"sample_{name}")
    a = fn(500, torch.Generator().manual_seed(3))
    b = fn(500, torch.Generator().manual_seed(3))
    c = fn(500, torch.Generator().manual_seed(4))
    assert a.shape == (500, 2) and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    big = fn(20_000, torch.Generator().manual_seed(0))
    assert big.mean(0).abs().max() < 0.1  # centred
    assert 0.3 < big.std(0).min() and big.std(0).max() < 2.0  # roughly unit scale


@pytest.mark.parametrize("name", ["mixture", "eight_gaussians"])
def test_mixture_params(name):
    p = toy_mixture_params(name)
    k = p["weights"].shape[0]
    assert p["means"].shape == (k, 2) and p["stds"].shape == (k, 2)
    assert torch.allclose(p["weights"].sum(), torch.tensor(1.0))
    assert (p["weights"] > 0).all() and (p["stds"] > 0).all()
    x = sample_mixture(p, 50_000, torch.Generator().manual_seed(0))
    mean = (p["weights"][:, None] * p["means"]).sum(0)
    assert torch.allclose(x.mean(0), mean, atol=0.05)


def test_default_mixture_unequal_weights_and_sampler_matches():
    p = toy_mixture_params()
    assert p["weights"].unique().numel() > 1
    x = toys.sample_gaussian_mixture(40_000, torch.Generator().manual_seed(1))
    nearest = torch.cdist(x, p["means"]).argmin(1)
    freq = torch.bincount(nearest, minlength=8).float() / x.shape[0]
    assert torch.allclose(freq, p["weights"], atol=0.01)
    with pytest.raises(ValueError):
        toy_mixture_params("nope")


def test_toy_datamodule_batches_and_determinism():
    dm = ToyDataModule("checkerboard", n_train=1000, n_val=300, batch_size=128, seed=5)
    assert dm.data_shape == (2,) and dm.kind == "points"
    dm.setup("fit")
    assert not torch.equal(dm.train_data[:300], dm.val_data)
    batches = list(dm.train_dataloader())
    assert len(batches) == 1000 // 128  # drop_last
    assert all(isinstance(b, torch.Tensor) and b.shape == (128, 2) for b in batches)
    assert batches[0].dtype == torch.float32
    val = torch.cat(list(dm.val_dataloader()))
    assert torch.equal(val, dm.val_data)  # no shuffle, nothing dropped
    dm2 = ToyDataModule("checkerboard", n_train=1000, n_val=300, batch_size=128, seed=5)
    assert torch.equal(next(iter(dm2.train_dataloader())), batches[0])


def test_toy_small_train_set_keeps_last_batch():
    dm = ToyDataModule("two_moons", n_train=50, n_val=10, batch_size=64)
    assert sum(b.shape[0] for b in dm.train_dataloader()) == 50


def test_unknown_toy_name():
    with pytest.raises(ValueError, match="checkerboard"):
        ToyDataModule("spiral")
    with pytest.raises(ValueError):
        sample_toy("spiral", 3, torch.Generator())


# ---------------------------------------------------------------- digits
def test_digits_split():
    xtr, ytr = load_digits_split("train")
    xva, yva = load_digits_split("val")
    assert xtr.shape == (1500, 1, 8, 8) and xva.shape == (297, 1, 8, 8)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    for x, y in ((xtr, ytr), (xva, yva)):
        assert x.min() >= -1 and x.max() <= 1 and x.min() == -1 and x.max() == 1
        assert set(y.tolist()) == set(range(10))
    xall, _ = load_digits_split("all")
    assert xall.shape[0] == 1797
    # disjoint and covering: match rows of the full set
    rows = {tuple(r) for r in xall.flatten(1).tolist()}
    tr = [tuple(r) for r in xtr.flatten(1).tolist()]
    va = [tuple(r) for r in xva.flatten(1).tolist()]
    assert set(tr) <= rows and set(va) <= rows
    perm = np.random.default_rng(0).permutation(1797)
    assert torch.equal(xva, xall[torch.from_numpy(perm[-297:])])
    assert torch.equal(xtr, xall[torch.from_numpy(perm[:-297])])
    assert torch.equal(load_digits_split("val")[0], xva)  # deterministic
    assert not torch.equal(load_digits_split("val", seed=1)[0], xva)
    with pytest.raises(ValueError):
        load_digits_split("test")


def test_digits_datamodule():
    dm = DigitsDataModule(batch_size=100)
    assert dm.data_shape == (1, 8, 8) and dm.kind == "images"
    train = list(dm.train_dataloader())
    assert len(train) == 15 and all(b.shape == (100, 1, 8, 8) for b in train)
    val = torch.cat(list(dm.val_dataloader()))
    assert torch.equal(val, load_digits_split("val")[0])
    assert torch.equal(torch.cat(list(dm.test_dataloader())), val)
    aug = DigitsDataModule(batch_size=64, augment=True)
    b = next(iter(aug.train_dataloader()))
    assert b.shape == (64, 1, 8, 8) and b.min() >= -1 and b.max() <= 1


# ---------------------------------------------------------------- CIFAR-10
def _write_fake_cifar(folder, n=20, skip=()):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE):
        if name in skip:
            continue
        d = {
            b"batch_label": name.encode(),
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, size=n).tolist(),
            b"filenames": [b"x.png"] * n,
        }
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)


@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_fake_root(tmp_path, nested):
    folder = tmp_path / "cifar-10-batches-py" if nested else tmp_path
    _write_fake_cifar(folder)
    dm = CIFAR10DataModule(root=str(tmp_path), batch_size=16, random_flip=True)
    assert dm.data_shape == (3, 32, 32) and dm.kind == "images"
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert len(train) == 100 // 16 and all(b.shape == (16, 3, 32, 32) for b in train)
    assert train[0].dtype == torch.float32
    assert train[0].min() >= -1 and train[0].max() <= 1
    val = torch.cat(list(dm.val_dataloader()))
    assert val.shape == (20, 3, 32, 32)
    with open(folder / CIFAR10_TEST_FILE, "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"].reshape(-1, 3, 32, 32)
    assert torch.allclose(val, torch.from_numpy(raw).float() / 127.5 - 1)


def test_cifar10_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.init_args.root") as e:
        CIFAR10DataModule(root=str(tmp_path / "nope"))
    assert "cifar-10-python.tar.gz" in str(e.value)


def test_cifar10_missing_one_batch(tmp_path):
    _write_fake_cifar(tmp_path, skip=("data_batch_3",))
    with pytest.raises(FileNotFoundError, match="data_batch_3") as e:
        CIFAR10DataModule(root=str(tmp_path))
    assert "data_batch_1" not in str(e.value).split("(expected")[0]


def test_cifar10_corrupt_pickle(tmp_path):
    _write_fake_cifar(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(b"this is not a pickle")
    dm = CIFAR10DataModule(root=str(tmp_path), batch_size=8)
    with pytest.raises(ValueError, match="data_batch_2"):
        dm.setup("fit")


# ---------------------------------------------------------------- image folder
def _write_pngs(folder):
    rng = np.random.default_rng(0)
    sizes = [(40, 30), (16, 16), (25, 50), (64, 48), (10, 12), (33, 33)]
    for i, (w, h) in enumerate(sizes):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(sub / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return len(sizes)


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder(tmp_path, channels):
    n = _write_pngs(tmp_path)
    dm = ImageFolderDataModule(
        root=str(tmp_path), image_size=16, channels=channels, batch_size=2, val_fraction=0.34
    )
    assert dm.data_shape == (channels, 16, 16) and dm.kind == "images"
    assert len(dm.train_files) + len(dm.val_files) == n
    assert not set(dm.train_files) & set(dm.val_files)
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert all(b.shape == (2, channels, 16, 16) for b in train)
    assert all(b.min() >= -1 and b.max() <= 1 for b in train)
    val = torch.cat(list(dm.val_dataloader()))
    assert val.shape == (len(dm.val_files), channels, 16, 16)
    again = ImageFolderDataModule(root=str(tmp_path), image_size=16, val_fraction=0.34)
    assert again.val_files == dm.val_files  # deterministic split


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"\.png"):
        ImageFolderDataModule(root=str(tmp_path), image_size=8)
    with pytest.raises(FileNotFoundError, match="data.init_args.root"):
        ImageFolderDataModule(root=str(tmp_path / "missing"), image_size=8)
    _write_pngs(tmp_path)
    with pytest.raises(ValueError, match="channels"):
        ImageFolderDataModule(root=str(tmp_path), image_size=8, channels=2)
    (tmp_path / "broken.jpg").write_bytes(b"garbage")
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=8, val_fraction=0.0, batch_size=8)
    with pytest.raises(ValueError, match="broken.jpg"):
        list(dm.train_dataloader())


def test_signatures_parse_with_jsonargparse():
    jsonargparse = pytest.importorskip("jsonargparse")
    for cls in (ToyDataModule, DigitsDataModule, CIFAR10DataModule, ImageFolderDataModule):
        parser = jsonargparse.ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, "data")


@pytest.mark.parametrize("name", TOY_NAMES)
def test_every_toy_name_constructs_and_yields_a_batch(name):
    dm = ToyDataModule(name, n_train=64, n_val=16, batch_size=32)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (32, 2) and torch.isfinite(batch).all()


# ---------------------------------------------------------------------------------------- nothing lost silently
def test_16_bit_images_keep_their_precision(tmp_path):
    """A 16-bit grey PNG used to be squeezed into 8 bits by PIL's convert('L'), which clips at 255 (17
    distinct values left of 4096): it is now read as float and scaled by 65535."""
    from PIL import Image

    from gddim_lightning.data.folder import load_image

    a = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "deep.png")
    x = load_image(tmp_path / "deep.png", 64, channels=1)
    assert x.dtype == torch.float32 and x.shape == (1, 64, 64)
    assert len(torch.unique(x)) == 4096
    np.testing.assert_allclose(x[0].numpy(), a.astype(np.float32) / 32767.5 - 1.0, atol=1e-6)
    rgb = load_image(tmp_path / "deep.png", 32, channels=3)
    assert rgb.shape == (3, 32, 32) and torch.equal(rgb[0], rgb[2])
    Image.fromarray(np.zeros((4, 4), np.float32), mode="F").save(tmp_path / "float.tiff")
    with pytest.raises(ValueError, match="floating-point pixels"):
        load_image(tmp_path / "float.tiff", 4, channels=1)


def test_dropped_alpha_and_skipped_files_are_reported(tmp_path):
    from PIL import Image

    from gddim_lightning.data.folder import find_images, load_image

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "half.png")
    with pytest.warns(UserWarning, match="transparent pixels: its alpha channel is dropped"):
        load_image(tmp_path / "half.png", 8, channels=3)
    (tmp_path / "scan.tif").write_bytes(b"not used")
    (tmp_path / ".DS_Store").write_bytes(b"ignored")
    with pytest.warns(UserWarning, match=r"skipped 1 file\(s\) that are not .* \(scan\.tif\)"):
        assert [p.name for p in find_images(tmp_path)] == ["half.png"]


# ---------------------------------------------------------------- batches and reference data
def test_data_batch_forms():
    x = torch.randn(4, 2)
    assert data_batch(x) is x
    assert data_batch((x, torch.arange(4))) is x and data_batch([x, torch.arange(4)]) is x and data_batch((x,)) is x
    assert data_batch({"x": x, "y": 1}) is x and data_batch({"image": x, "label": 0}) is x
    for bad, said in (({"pixels": x}, "keys ['pixels']"), ([], "first item is missing"), ((1, x), "first item is int"),
                      ("x", "a str")):
        with pytest.raises(ValueError, match=rf"{re.escape(said)}.*tuple or list \(x, y\).*'x' or 'image'"):
            data_batch(bad)


def _reference(dm, n, batch_size=7):
    return torch.cat(list(reference_batches(dm, n, batch_size)))


def test_reference_data_of_the_shipped_modules(tmp_path):
    digits = DigitsDataModule()
    ref = _reference(digits, 20)
    assert torch.equal(ref, load_digits_split("train")[0][:20])  # unaugmented, split order
    assert _reference(DigitsDataModule(augment=True), 5000).shape == (1500, 1, 8, 8)  # at most what there is
    toy = ToyDataModule("checkerboard", n_train=50, n_val=5)
    toy.setup()
    assert torch.equal(_reference(toy, 30), toy.train_data[:30])
    _write_fake_cifar(tmp_path / "c")
    cifar = CIFAR10DataModule(root=str(tmp_path / "c"))
    raw = cifar.reference_data(9)
    assert raw.dtype == torch.uint8 and raw.shape == (9, 3, 32, 32)  # stored form; mapped like the loaders
    assert torch.equal(_reference(cifar, 9), raw.float() / 127.5 - 1)
    _write_pngs(tmp_path / "f")
    folder = ImageFolderDataModule(root=str(tmp_path / "f"), image_size=8, channels=1, val_fraction=0.34)
    assert _reference(folder, 2).shape == (2, 1, 8, 8)


class _LoaderOnly(L.LightningDataModule):
    def train_dataloader(self):
        x = torch.arange(10.0).reshape(10, 1)
        return DataLoader(TensorDataset(x, torch.zeros(10)), batch_size=4)


def test_reference_data_falls_back_to_the_training_loader():
    ref = list(reference_batches(_LoaderOnly(), 6, 100))
    assert [r.shape[0] for r in ref] == [4, 2]  # loader batches, cut at n
    assert torch.equal(torch.cat(ref).flatten(), torch.arange(6.0))


def test_reference_data_missing_is_a_clear_error():
    with pytest.raises(ValueError, match=r"LightningDataModule has no reference_data\(n: int\) -> Tensor method"):
        list(reference_batches(L.LightningDataModule(), 5, 5))

    class Bad(L.LightningDataModule):
        def reference_data(self, n):
            return [1, 2]

    with pytest.raises(ValueError, match=r"Bad.reference_data\(5\) must return a non-empty tensor"):
        list(reference_batches(Bad(), 5, 5))
