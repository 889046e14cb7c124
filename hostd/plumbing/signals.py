"""Ctrl-C and SIGTERM held back while a resource is being made and recorded for teardown."""
from __future__ import annotations

import contextlib
import signal
import threading


@contextlib.contextmanager
def deferred():
    """Hold SIGINT/SIGTERM until the block ends, then act on them as usual.

    An exception raised between creating something (a segment, a child process) and recording
    it where teardown looks would leak it. The stand-in handler only notes the signal; a
    handler, unlike SIG_IGN or a blocked mask, is not inherited by a child started meanwhile.
    Signal handlers belong to the main thread: elsewhere the block just runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    note = lambda signum, frame: caught.append(signum)  # noqa: E731
    old = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for signum in caught[:1]:
            handler = old[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)
