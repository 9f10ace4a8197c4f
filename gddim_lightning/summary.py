"""What a command prints when it ends: where its outputs went, the last metrics, the wall time and the
command to run next. Printed on rank 0 only, to stdout."""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer

__all__ = ["fit_summary", "predict_summary"]


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{seconds:.1f} s"


def _metrics(trainer: Trainer) -> list[str]:
    """The last logged values worth reading: sample metrics (FID ...), validation and training loss."""
    out = []
    for key, value in sorted(trainer.callback_metrics.items()):
        if not (key.startswith(("fid_", "fd_", "swd_")) or key in ("val/loss", "train/loss")):
            continue
        try:
            v = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            out.append(f"{key} {v:.4g}")
    return out


def _shell(args: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in args)


def fit_summary(trainer: Trainer, configs: Sequence[Any], seconds: float, log_dir: str | None = None) -> str:
    """Steps, wall time, the last metrics, where checkpoints and logs are (``log_dir``: the trainer's,
    read by the caller on every rank because it is a collective under DDP), and the ``predict`` line
    for the checkpoint just written."""
    lines = [f"fit finished: {trainer.global_step} steps in {_duration(seconds)}"]
    metrics = _metrics(trainer)
    if metrics:
        lines.append("  last metrics: " + ", ".join(metrics))
    cb = trainer.checkpoint_callback
    last = getattr(cb, "last_model_path", "") or getattr(cb, "best_model_path", "")
    if last:
        lines.append(f"  checkpoints:  {os.path.dirname(last)}")
    if log_dir:
        lines.append(f"  logs:         {log_dir}  (tensorboard --logdir {log_dir})")
    if last:
        cmd = ["gddim-lightning", "predict"]
        for c in configs:
            cmd += ["--config", os.fspath(getattr(c, "relative", c))]
        cmd += ["--ckpt_path", last]
        lines.append(f"  next:         {_shell(cmd)}")
    else:
        lines.append("  no checkpoint was written (checkpointing is off)")
    return "\n".join(lines)


def predict_summary(out_dir: Path, meta: dict[str, Any] | None, seconds: float) -> str:
    """How many samples, with what, where, and how to load them."""
    if not meta:
        return f"predict finished in {_duration(seconds)}; outputs in {out_dir}"
    files = sorted(meta.get("outputs", {}))
    shown = ", ".join(files[:3]) + (f", ... ({len(files)} files)" if len(files) > 3 else "")
    return "\n".join([
        f"predict finished: {meta.get('num_samples')} samples, NFE {meta.get('nfe')}, in {_duration(seconds)}",
        f"  written to:   {out_dir}  ({shown}, meta.json)",
        f"  load with:    gddim_lightning.writer.load_samples({str(out_dir)!r})",
    ])
