"""`SignalHandlers`: one handler for SIGINT and SIGTERM while a run is in progress, the previous ones
restored after. Used by `InterruptCheckpoint` (fit) and `SampleWriter` (predict)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["SignalHandlers"]


class SignalHandlers:
    """Installs ``handler`` for SIGINT and SIGTERM and restores the previous handlers.

    Args:
        handler: called as ``handler(signum, frame)``, like any Python signal handler.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, handler: Callable[[int, Any], Any]) -> None:
        self.handler = handler
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Installs the handler (from the main thread only: elsewhere Python allows no signal handler)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self.handler)

    def restore(self) -> None:
        """Puts back the handlers found by `install` (nothing if it installed none); safe to call twice."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
