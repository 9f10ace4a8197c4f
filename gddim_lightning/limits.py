"""Upper bounds on sizes a user sets, so that a typo (``nfe: 1e9``, ``batch_size: 1e20``) fails at
once with a clear error instead of allocating gigabytes, running for days or ending in a traceback.
Each is far above any real use on the machines this package targets; documented in docs/cli.md.
"""

from __future__ import annotations

__all__ = ["MAX_BATCH", "MAX_CONFIG_NODES", "MAX_GLOBAL_SEED", "MAX_NFE", "MAX_SAMPLES", "MAX_SEED", "check_bounded"]

#: network evaluations of one sampler run (a 1000-step sampler is the usual "converged" reference)
MAX_NFE = 100_000
#: samples per batch (data loaders, predict, the sampling callback)
MAX_BATCH = 1 << 20
#: samples requested from predict or the sampling callback
MAX_SAMPLES = 1 << 30
#: per-sample seeds (``seed + k``): torch generators take 64-bit seeds
MAX_SEED = (1 << 63) - 1
#: ``seed_everything`` (numpy's global seed range)
MAX_GLOBAL_SEED = (1 << 32) - 1
#: nodes of a YAML config file after expanding its aliases (an alias bomb expands to billions)
MAX_CONFIG_NODES = 100_000


def check_bounded(name: str, value: object, low: int, high: int, hint: str = "") -> int:
    """``value`` as an int in ``[low, high]``, else a ValueError naming ``name``, the value and the bounds."""
    ok = not isinstance(value, bool)
    try:
        ok = ok and int(value) == value  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or not low <= int(value) <= high:  # type: ignore[arg-type]
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}{hint}")
    return int(value)  # type: ignore[arg-type]
