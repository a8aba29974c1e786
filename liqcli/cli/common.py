"""What every subcommand shares: the app state, option types, async running, progress."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from liqcli.errors import UsageError
from liqcli.render.output import Format, StreamFormat

T = TypeVar("T")
log = logging.getLogger("liq")


@dataclass
class AppState:
    data_dir: Path
    log_level: str = "warning"

    def store(self):
        from liqcli.store.parquet import Store

        return Store(self.data_dir)


def state(ctx: typer.Context) -> AppState:
    """The root callback's state; commands invoked directly in tests get the defaults."""
    root = ctx.find_root()
    if isinstance(root.obj, AppState):
        return root.obj
    from liqcli.core.config import default_data_dir

    return AppState(data_dir=default_data_dir())


FormatOpt = Annotated[
    Format,
    typer.Option(
        "--format", "-f", help="Output format: table for people, json (one document) or csv."
    ),
]
StreamFormatOpt = Annotated[
    StreamFormat,
    typer.Option(
        "--format",
        "-f",
        help="dashboard (live terminal view) or jsonl (one JSON object per event).",
    ),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress or warnings on stderr (for cron).")
]


# Exit codes after a clean shutdown on a signal (README "Exit codes"): 128 + the signal number,
# as a shell reports a process killed by it.
EXIT_SIGINT = 130
EXIT_SIGTERM = 143
EXIT_SIGHUP = 129


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine. Ctrl-C, SIGTERM (systemd, docker, cron timeouts, ``kill``) and
    SIGHUP (the terminal went away) all cancel it, so its ``finally`` blocks flush and close the
    same way; then Ctrl-C raises KeyboardInterrupt (the CLI exits 130) and SIGTERM / SIGHUP end
    the command with exit code 143 / 129. A second signal during that shutdown is ignored: the
    shutdown is bounded (sinks drain for at most a few seconds)."""
    import asyncio  # here: commands that never run a coroutine (liq map --input) skip its import
    import signal

    received: list[int] = []

    async def main() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        installed = []

        def on_signal(signum: int) -> None:
            if not received and task is not None:
                received.append(signum)
                log.warning("received %s: shutting down", signal.Signals(signum).name)
                task.cancel()

        for signum in (signal.SIGTERM, signal.SIGHUP):
            try:
                loop.add_signal_handler(signum, on_signal, signum)
                installed.append(signum)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread, or a platform without it: the default action
        try:
            return await coro
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)

    try:
        result = asyncio.run(main())
    except (asyncio.CancelledError, OSError) as exc:
        # After SIGHUP the terminal may be gone: a final frame that cannot be drawn (EIO) must
        # not turn a clean shutdown into a traceback.
        if received:
            log.debug("shutdown after signal %d: %r", received[0], exc)
            raise typer.Exit(128 + received[0]) from None
        raise
    if received:  # the coroutine finished its shutdown and returned
        raise typer.Exit(128 + received[0])
    return result


def upper_symbols(symbols: list[str] | None) -> list[str]:
    """Validate and normalise user-typed symbols (``btcusdt`` -> ``BTCUSDT``) before any network call."""
    out: list[str] = []
    for s in symbols or []:
        sym = s.strip().upper()
        if not sym or not sym.replace("-", "").replace("_", "").isalnum():
            raise UsageError(f"invalid symbol {s!r}: expected e.g. BTCUSDT")
        out.append(sym)
    return out


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def import_numpy() -> None:
    """Import numpy with its OpenBLAS limited to one thread. By default OpenBLAS starts a thread
    per core at import that spins for a while, ~0.1 s of CPU on a 2-core machine, and liq does
    no linear algebra for it to speed up. A user's OPENBLAS_NUM_THREADS wins; ours is not left in
    the environment of child processes."""
    if "numpy" in sys.modules:
        return
    ours = "OPENBLAS_NUM_THREADS" not in os.environ
    if ours:
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        import numpy  # noqa: F401
    finally:
        if ours:
            del os.environ["OPENBLAS_NUM_THREADS"]


_teardown_skippable = False


def skip_teardown() -> None:
    """Called by a command once all it writes is written and closed (no open files, threads or
    child processes): when it then exits 0, ``liq`` ends the process at once instead of letting
    the interpreter free every module and object first (~0.05 s after ``liq map``)."""
    global _teardown_skippable
    _teardown_skippable = True


def teardown_skippable() -> bool:
    return _teardown_skippable


def require_writable(directory: Path, what: str = "data dir") -> None:
    """Fail before any request when ``directory`` (created if missing) cannot be written: a
    download that cannot be stored is wasted (and with the venue's rate limits, costly)."""
    import tempfile

    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        from liqcli.errors import LiqError

        raise LiqError(f"{what} {directory} is not writable: {exc.strerror or exc}") from None
