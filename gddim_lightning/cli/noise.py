"""Third-party warnings and log lines a user of the CLI cannot act on, filtered by the entry point only
(importing the package changes no warning filter)."""

from __future__ import annotations

import logging
import warnings

__all__ = ["NOISE", "quiet_third_party_noise"]

#: third-party warnings a user of the CLI cannot act on (deprecations inside Lightning and jsonargparse)
NOISE = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's pytree helper on torch >= 2.9
    r".*was deprecated in v4\.\d+\.\d+ and will be removed in v5\.0\.0",  # LightningCLI's jsonargparse calls
    r".*LightningCLI's args parameter is intended to run from within Python",
)


class _DropNoise(logging.Filter):
    """Drops Lightning's advertisement for its cloud logger (nothing to act on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_third_party_noise() -> None:
    """Filters the known third-party noise (`NOISE`, the litlogger tip). Called by the CLI entry point
    only: importing the package changes no warning filter."""
    for pattern in NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropNoise) for f in logger.filters):
        logger.addFilter(_DropNoise())
