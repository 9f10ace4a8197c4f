"""Helpers shared by the benchmark scripts.

Importing this module first makes BLAS/OpenMP single-threaded unless the environment says
otherwise: on a shared 2-core machine, multi-threaded small ops (OpenMP barriers) get >10x slower
as soon as another job takes a core. It must be imported before numpy and torch.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import importlib.metadata  # noqa: E402
import platform  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402


def versions() -> dict:
    """Interpreter, library and machine versions for a results file."""
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    for pkg in ("gddim-lightning", "scipy", "matplotlib"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def max_relative_difference(fast, ref, state_shape, times, batch: int, scale: float, seed: int = 1234) -> float:
    """Max over ``times`` of ``max|ref - fast| / max|ref|`` of two eps functions on states ``scale * N(0, I)``
    (``batch`` of them per time, float64, seeded): how the benchmarks check a fast oracle against a reference."""
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for t in times:
        u = scale * torch.randn((batch, *state_shape), generator=g, dtype=torch.float64)
        tt = torch.full((batch,), t, dtype=torch.float64)
        a, b = ref(u, tt), fast(u, tt)
        worst = max(worst, float((a - b).abs().max() / a.abs().max()))
    return worst
