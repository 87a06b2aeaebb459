"""SIGINT (Ctrl-C) and SIGTERM end a run as one line, ``interrupted``, exit 130 / 143, with nothing left behind.

:func:`installed` makes either signal raise :class:`Interrupted` (a ``KeyboardInterrupt``) in the main thread,
once. Every ``finally`` and ``with`` block then cleans up as on any error: staging folders are removed,
reader and writer threads stopped and joined, process pools shut down, CUDA graphs released. Signals that
arrive during that cleanup are ignored, so a second Ctrl-C cannot cut it short and leave a staging folder
behind (SIGKILL still can). :func:`deferred` holds a signal back across a few steps that must not be
split, such as the renames that publish a result.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when SIGINT or SIGTERM arrives; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    def __init__(self) -> None:
        self.received: int | None = None  # the signal that interrupted this run
        self.deferred = 0  # depth of deferred() blocks
        self.pending: int | None = None  # a signal held back by deferred()


_state = _State()


def _handler(signum: int, frame: FrameType | None) -> None:
    if _state.received is not None:
        return  # already interrupted: let the cleanup finish
    if _state.deferred:
        _state.pending = signum
        return
    _state.received = signum
    raise Interrupted(signum)


def received() -> int | None:
    """The signal that interrupted the run, or None."""
    return _state.received


@contextmanager
def installed() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted`; the previous handlers come back after.

    Only the main thread can install handlers; elsewhere this does nothing.
    """
    global _state
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {s: signal.getsignal(s) for s in SIGNALS}
    _state = _State()
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for signum, h in previous.items():
            signal.signal(signum, h)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back until the block ends (for steps that must happen together, all of them short)."""
    _state.deferred += 1
    try:
        yield
    finally:
        _state.deferred -= 1
        signum, _state.pending = _state.pending, None
        if not _state.deferred and signum is not None and _state.received is None:
            _state.received = signum
            raise Interrupted(signum)
