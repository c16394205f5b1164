"""Stopping training cleanly: SIGINT / SIGTERM become a request honoured between two steps.

While :func:`stop_requests` is active (main thread only), the first SIGINT or SIGTERM is
recorded instead of interrupting a step; the trainer then writes a checkpoint and raises
:class:`TrainingStopped`, which the command line turns into exit status 128 + signal
(130 for SIGINT, 143 for SIGTERM). A second signal acts as usual (KeyboardInterrupt, or
termination).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


class TrainingStopped(Exception):
    """Training stopped on a signal after saving a checkpoint at ``step``."""

    def __init__(self, signum: int, step: int) -> None:
        self.signum, self.step = signum, step
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step} (checkpoint written; "
                         "run the same command to resume)")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm became NaN or infinite; training stopped without saving that state."""


@dataclass
class StopRequest:
    """The signal received, if any."""

    signum: int | None = None


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Record SIGINT / SIGTERM in the yielded :class:`StopRequest` instead of acting on them."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if request.signum is not None:  # a second signal: behave as without us
            for s, h in previous.items():
                signal.signal(s, h)
            signal.raise_signal(signum)
            return
        request.signum = signum

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


__all__ = ["NonFiniteLossError", "STOP_SIGNALS", "StopRequest", "TrainingStopped", "stop_requests"]
