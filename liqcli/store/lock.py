"""Cross-process advisory locks (``flock``) guarding read-merge-write cycles on a dataset.

``flock`` locks belong to an open file description, so two opens of the same path conflict even
inside one process (threads are excluded too), and the kernel drops the lock when its holder
dies, so a ``kill -9`` never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from liqcli.errors import LiqError

_POLL_MIN_S = 0.001
_POLL_MAX_S = 0.05


def try_flock(fd: int, *, shared: bool = False) -> bool:
    """One non-blocking attempt; False when someone else holds a conflicting lock."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def file_lock(path: Path, timeout: float | None = None, *, shared: bool = False) -> Iterator[None]:
    """Hold an exclusive (or shared) lock on ``path`` for the ``with`` block.

    ``timeout=None`` waits forever; ``0`` tries once. Polling (not a blocking ``flock``) keeps the
    wait interruptible by Ctrl-C and bounded by ``timeout``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = _POLL_MIN_S
        while not try_flock(fd, shared=shared):
            if deadline is not None and time.monotonic() >= deadline:
                raise LiqError(
                    f"timed out after {timeout:g}s waiting for lock {path}: "
                    "another liq process holds it"
                )
            time.sleep(pause)
            pause = min(pause * 2, _POLL_MAX_S)
        yield
    finally:
        # Closing the descriptor releases the lock.
        os.close(fd)
