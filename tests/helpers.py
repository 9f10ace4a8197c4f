"""Helpers shared by several test files (imported as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
from lightning.pytorch import Callback

REPO_ROOT = Path(__file__).resolve().parent.parent

F64 = torch.float64


def tt(x) -> torch.Tensor:
    """``x`` as a float64 tensor (times, reference values in the float64 tests)."""
    return torch.as_tensor(x, dtype=F64)

_DIST_VARS = {"LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
              "MASTER_PORT", "CUDA_VISIBLE_DEVICES"}
_DIST_PREFIXES = ("PYTEST_", "PL_", "TORCHELASTIC_", "SLURM_", "OMPI_", "LSB_", "JSM_", "KUBERNETES_")


def clean_env() -> dict[str, str]:
    """The current environment for a DDP subprocess: no pytest or launcher variables, a free
    MASTER_PORT, one thread per rank, and the repository importable."""
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS and not k.startswith(_DIST_PREFIXES)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        env["MASTER_PORT"] = str(s.getsockname()[1])
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def read_events(root: Path) -> tuple[dict[str, list], dict[str, list], int]:
    """All TensorBoard scalar and image events under ``root`` (``{tag: [event, ...]}``) and the number
    of event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list] = {}
    images: dict[str, list] = {}
    files = sorted(root.rglob("events.out.tfevents.*"))
    for path in files:
        acc = EventAccumulator(str(path), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(acc.Scalars(tag))
        for tag in acc.Tags()["images"]:
            images.setdefault(tag, []).extend(acc.Images(tag))
    return scalars, images, len(files)


class SignalAtStep(Callback):
    """A Lightning callback (``--trainer.callbacks``) that sends ``signum`` to its own process when
    training reaches ``step``, ``times`` times in a row (``times=2``: the second one aborts); only on
    process ``rank`` if given."""

    def __init__(self, step: int, signum: int = 2, times: int = 1, rank: int | None = None) -> None:
        self.step, self.signum, self.times, self.rank = step, signum, times, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)
