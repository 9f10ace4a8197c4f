#!/usr/bin/env python
"""Write an EMA-only copy of a training checkpoint: the small files shipped in ``pretrained/``.

Keeps the EMA weights (what ``predict`` samples with), the model's hyperparameters and the training
step; drops the online weights and the optimiser state (about a third of the size). The result loads
with ``predict``/``validate --ckpt_path`` and the config it was trained with (`DiffusionModule`
copies the EMA weights into the online network on load); it cannot resume training.

    python scripts/export_pretrained.py runs/bdm_digits/lightning_logs/version_0/checkpoints/last.ckpt \\
        pretrained/bdm_digits.ckpt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from gddim_lightning.files import atomic_write
from gddim_lightning.module import DiffusionModule

KEEP = ("hyper_parameters", "pytorch-lightning_version", "global_step", "epoch")


def export(src: Path, dst: Path) -> dict:
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    if "state_dict" not in ckpt:
        raise SystemExit(f"{src} is not a Lightning checkpoint (no state_dict)")
    state = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("ema.")}
    if not any(k.startswith("ema.ema_model.") for k in state):
        raise SystemExit(f"{src} holds no EMA weights (ema.ema_model.*)")
    out = {k: ckpt[k] for k in KEEP + (DiffusionModule.IDENTITY_KEY,) if k in ckpt}
    out.update({"state_dict": state, DiffusionModule.EMA_ONLY_KEY: True, "source": src.name})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="a checkpoint written by fit")
    ap.add_argument("dst", type=Path, help="the EMA-only checkpoint to write (never overwritten)")
    args = ap.parse_args(argv)
    if args.dst.exists():
        print(f"{args.dst} exists; remove it first or choose another path", file=sys.stderr)
        return 1
    out = export(args.src, args.dst)
    args.dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.dst, lambda f: torch.save(out, f))
    print(f"wrote {args.dst} ({args.dst.stat().st_size / 1e6:.1f} MB, step {out.get('global_step')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
