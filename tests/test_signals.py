"""`SignalHandlers`, shared by the fit interrupt checkpoint and the predict writer."""

from __future__ import annotations

import signal
import threading

from gddim_lightning.signals import SignalHandlers


def test_install_and_restore_round_trip():
    before = {s: signal.getsignal(s) for s in SignalHandlers.SIGNALS}
    seen = []
    handlers = SignalHandlers(lambda signum, frame: seen.append(signum))
    try:
        handlers.install()
        assert all(signal.getsignal(s) is handlers.handler for s in SignalHandlers.SIGNALS)
        signal.raise_signal(signal.SIGTERM)
        assert seen == [signal.SIGTERM]
    finally:
        handlers.restore()
    assert {s: signal.getsignal(s) for s in SignalHandlers.SIGNALS} == before
    handlers.restore()  # twice: nothing to restore
    assert {s: signal.getsignal(s) for s in SignalHandlers.SIGNALS} == before


def test_outside_the_main_thread_nothing_is_installed():
    before = {s: signal.getsignal(s) for s in SignalHandlers.SIGNALS}
    handlers = SignalHandlers(lambda signum, frame: None)
    worker = threading.Thread(target=handlers.install)
    worker.start()
    worker.join()
    assert {s: signal.getsignal(s) for s in SignalHandlers.SIGNALS} == before
