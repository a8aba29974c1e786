"""Worker processes for local sweeps, started with SIGINT ignored.

Ctrl-C reaches the whole process group; the command handles it and stops its workers. A worker
ignores SIGINT from its pool initializer on, but that runs only after the new process has
unpickled its job and imported liq, numpy and polars (~1 s): a Ctrl-C in that time printed the
worker's KeyboardInterrupt traceback under the command's one line. An ignored signal stays
ignored across exec, and Python then leaves it so; the command's own handler is back as soon as
the process has started (milliseconds: a Ctrl-C exactly then is not seen, a second one stops the
sweep). A module of its own: a spawned worker unpickles its Process class by name, and the
command's start-up need not import multiprocessing.
"""

from __future__ import annotations

import signal
import threading
from multiprocessing.context import SpawnContext, SpawnProcess


class QuietSpawnProcess(SpawnProcess):
    def start(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            super().start()  # dispositions are set from the main thread only
            return
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            super().start()
        finally:
            signal.signal(signal.SIGINT, previous)


class QuietSpawnContext(SpawnContext):
    Process = QuietSpawnProcess
