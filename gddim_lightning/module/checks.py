"""Range checks of the module's optimiser, EMA and data-scale settings, named as in the config."""

from __future__ import annotations

import math
from typing import Any


def norm(value: Any) -> Any:
    """Lists and tuples compare equal (YAML gives lists, code tuples)."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def check_knobs(**knobs: Any) -> None:
    """The optimiser, EMA and data-scale settings: finite and in range, named as in the config (a NaN
    decay or an infinite weight decay would otherwise surface as NaN weights, blamed on the network)."""
    def bad(key: str, value: Any, rule: str) -> ValueError:
        return ValueError(f"model.{key} must be {rule}, got {value!r}")

    def real(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if not (real(knobs["lr"]) and knobs["lr"] > 0):
        raise bad("lr", knobs["lr"], "a finite number > 0")
    if not (real(knobs["weight_decay"]) and knobs["weight_decay"] >= 0):
        raise bad("weight_decay", knobs["weight_decay"], "a finite number >= 0")
    betas = knobs["betas"]
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2 and all(real(b) and 0 <= b < 1 for b in betas)):
        raise bad("betas", betas, "two numbers in [0, 1), e.g. [0.9, 0.999]")
    if not (real(knobs["ema_decay"]) and 0 <= knobs["ema_decay"] <= 1):
        raise bad("ema_decay", knobs["ema_decay"], "a number in [0, 1] (e.g. 0.999)")
    if not (real(knobs["sigma_data"]) and knobs["sigma_data"] > 0):
        raise bad("sigma_data", knobs["sigma_data"], "a finite number > 0 (the data's standard deviation)")
    for key, low in (("warmup_steps", 0), ("ema_update_after_step", 0), ("ema_update_every", 1)):
        value = knobs[key]
        if not (real(value) and int(value) == value and value >= low):
            raise bad(key, value, f"an integer >= {low}")
