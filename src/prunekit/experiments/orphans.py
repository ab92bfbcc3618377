"""Worker processes that exit when their parent dies (a SIGKILLed sweep leaves no orphans).

Linux delivers a parent-death signal set with ``prctl(PR_SET_PDEATHSIG)``; everywhere (and as a
second line on Linux) a daemon thread polls the parent pid and exits the worker once it changes.
This module imports nothing heavy: it runs first in every spawned worker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

__all__ = ["exit_with_parent"]

_PR_SET_PDEATHSIG = 1


def _set_pdeathsig(sig: int) -> bool:
    """Ask the kernel to send ``sig`` when the parent exits; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    return False


def _watch(parent: int, interval: float) -> None:
    while True:
        time.sleep(interval)
        if os.getppid() != parent:
            os._exit(1)  # the parent is gone: nobody will collect this worker's result


def exit_with_parent(parent: int, interval: float = 0.5) -> None:
    """Make the calling process exit once process ``parent`` (its parent) is gone.

    Use as a ``ProcessPoolExecutor`` initializer with ``initargs=(os.getpid(),)``.
    """
    _set_pdeathsig(signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch, args=(parent, interval), daemon=True).start()
