#!/usr/bin/env python
"""Train the digits FID feature network and write the shipped weights.

Trains :class:`gddim_lightning.evaluation.DigitsFeatureNet` on the 1500-image train
split of ``sklearn.datasets.load_digits`` (CPU, seeded, well under a minute), reports
accuracy on the 297 held-out val images and writes

* ``gddim_lightning/assets/digits_features.pt``: a plain state_dict (loadable with
  ``torch.load(..., weights_only=True)``);
* ``gddim_lightning/assets/digits_features.json``: accuracy, seed, epochs, versions.

Split convention (shared with ``gddim_lightning.data.digits``): images float32
``[N, 1, 8, 8]`` with ``x = pixel / 16 * 2 - 1``; ``perm = numpy.random.default_rng(0)
.permutation(1797)``; ``perm[:1500]`` is train, ``perm[1500:]`` (297) is val.

Usage::

    python scripts/train_digits_classifier.py [--overwrite] [--epochs 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
try:
    from gddim_lightning.evaluation.digits_features import DIGITS_FEATURES_WEIGHTS, DigitsFeatureNet
except ImportError:  # running from a checkout without an installed package
    sys.path.insert(0, str(REPO_ROOT))
    from gddim_lightning.evaluation.digits_features import DIGITS_FEATURES_WEIGHTS, DigitsFeatureNet

N_TRAIN = 1500


def digits_split() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Return ``{"train": (x, y), "val": (x, y)}`` with x float32 [N, 1, 8, 8] in [-1, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.from_numpy((data.images / 16.0 * 2.0 - 1.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(data.target.astype(np.int64))
    perm = torch.from_numpy(np.random.default_rng(0).permutation(x.shape[0]))
    tr, va = perm[:N_TRAIN], perm[N_TRAIN:]
    return {"train": (x[tr], y[tr]), "val": (x[va], y[va])}


def random_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by -1, 0 or +1 pixel in each axis, filling with background (-1)."""
    n, (h, w) = x.shape[0], x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy = torch.randint(0, 3, (n,), generator=gen)
    dx = torch.randint(0, 3, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, 1, h, w + 2)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, 1, h, w)
    return out.gather(3, cols)


@torch.no_grad()
def accuracy(net: DigitsFeatureNet, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    return float((net.logits(x).argmax(dim=1) == y).float().mean())


def train(epochs: int, seed: int, batch_size: int, lr: float, make_net=DigitsFeatureNet,
          split=digits_split) -> tuple[DigitsFeatureNet, dict[str, float]]:
    """Trains ``make_net()`` on ``split()["train"]`` (shift augmentation, label smoothing, one-cycle AdamW)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    split = split()
    x_tr, y_tr = split["train"]
    x_va, y_va = split["val"]
    net = make_net()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = (x_tr.shape[0] + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(x_tr.shape[0], generator=gen)
        total = 0.0
        for start in range(0, x_tr.shape[0], batch_size):
            idx = order[start : start + batch_size]
            xb = random_shift(x_tr[idx], gen)
            loss = F.cross_entropy(net.logits(xb), y_tr[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * idx.numel()
        if (epoch + 1) % 5 == 0 or epoch == epochs - 1:
            print(
                f"epoch {epoch + 1:3d}  loss {total / x_tr.shape[0]:.4f}  "
                f"train acc {accuracy(net, x_tr, y_tr):.4f}  val acc {accuracy(net, x_va, y_va):.4f}",
                flush=True,
            )
    net.eval()
    return net, {
        "train_accuracy": accuracy(net, x_tr, y_tr),
        "val_accuracy": accuracy(net, x_va, y_va),
        "n_train": int(x_tr.shape[0]),
        "n_val": int(x_va.shape[0]),
    }


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; use normal file permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


#: what this script trains; `train_mnist_classifier.py` passes its own
DIGITS = {
    "weights": DIGITS_FEATURES_WEIGHTS, "make_net": DigitsFeatureNet, "split": digits_split, "epochs": 20,
    "split_text": "numpy.random.default_rng(0).permutation(1797): [:1500] train, [1500:] val; x = pixel/16*2-1",
}


def main(argv: list[str] | None = None, target: dict | None = None, description: str | None = None) -> int:
    target = DIGITS if target is None else target
    parser = argparse.ArgumentParser(description=description or __doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=target["weights"], help="state_dict path (.json is written next to it)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    parser.add_argument("--epochs", type=int, default=target["epochs"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--min-accuracy", type=float, default=0.97, help="do not save below this val accuracy")
    args = parser.parse_args(argv)

    out: Path = args.out
    meta_path = out.with_suffix(".json")
    existing = [p for p in (out, meta_path) if p.exists()]
    if existing and not args.overwrite:
        print(f"refusing to overwrite {', '.join(map(str, existing))}; pass --overwrite", file=sys.stderr)
        return 1

    t0 = time.perf_counter()
    net, stats = train(args.epochs, args.seed, args.batch_size, args.lr, target["make_net"], target["split"])
    seconds = time.perf_counter() - t0
    print(f"held-out (val, {stats['n_val']} images) accuracy: {stats['val_accuracy']:.4f}  ({seconds:.1f} s)")
    if stats["val_accuracy"] < args.min_accuracy:
        print(f"val accuracy below --min-accuracy {args.min_accuracy}; nothing written", file=sys.stderr)
        return 2

    state = {k: v.detach().cpu().clone().contiguous() for k, v in net.state_dict().items()}
    buffer = io.BytesIO()  # serialise in memory: the archive's inner name must not depend on the temp name
    torch.save(state, buffer)
    payload = buffer.getvalue()
    _atomic_write(out, lambda tmp: Path(tmp).write_bytes(payload))
    sha256 = hashlib.sha256(payload).hexdigest()
    import sklearn

    meta = {
        "val_accuracy": round(stats["val_accuracy"], 6),
        "train_accuracy": round(stats["train_accuracy"], 6),
        "n_train": stats["n_train"],
        "n_val": stats["n_val"],
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "num_features": net.num_features,
        "split": target["split_text"],
        "train_seconds": round(seconds, 2),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "sklearn_version": sklearn.__version__,
        "weights_sha256": sha256,
    }

    def _write_json(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2)
            fh.write("\n")

    _atomic_write(meta_path, _write_json)
    print(f"wrote {out} and {meta_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
