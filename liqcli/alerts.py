"""Alert sinks for cascade alerts: webhook POST, ``--exec`` command, min-level filter.

Detection must never wait on a sink: ``submit(alert)`` is synchronous and only puts the alert on
a bounded queue (dropping the oldest, counted, when full); a worker task per sink delivers them,
starting in order. Delivery failures are logged and counted, never raised into the detector.

A webhook delivers up to ``max_in_flight`` alerts at once, each attempt within ``timeout_s`` (a
total deadline: a server trickling its answer cannot stretch it) and each alert within
``deadline_s`` over all its attempts, so one stuck alert never holds back the newer ones (retries
may then arrive after a newer alert: each carries its own ``ts``). An ``--exec`` command runs in
its own process group, which is killed on timeout, on shutdown and at interpreter exit.

Typical wiring::

    router = AlertRouter([WebhookSink(url), ExecSink(cmd)], min_level="SIGNIFICANT")
    await router.start()
    monitor = CascadeMonitor(symbols, cascade_callback=router)
    ...
    await router.aclose()
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import httpx
import orjson

from liqcli import __version__
from liqcli.analytics.cascade import level_index
from liqcli.errors import UsageError
from liqcli.exchanges.retry import Backoff, retry_after

log = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({408, 425, 429})


def alert_json(alert: dict) -> bytes:
    """The wire form of an alert (webhook body, exec stdin, jsonl line without the newline)."""
    return orjson.dumps(alert)


def alert_level(alert: dict) -> int:
    """The level a filter judges: the peak for ``cascade_end``, the current level otherwise."""
    return level_index(alert.get("peak_level") or alert["level"])


class AlertSink(Protocol):
    def submit(self, alert: dict) -> None: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class QueuedSink:
    """A bounded queue and a worker starting deliveries in order, up to ``max_in_flight`` at
    once; subclasses define ``deliver``."""

    name = "sink"

    def __init__(self, *, queue_size: int = 1000, max_in_flight: int = 1) -> None:
        if queue_size < 1:
            raise UsageError(f"{self.name} queue size must be at least 1, got {queue_size}")
        if max_in_flight < 1:
            raise UsageError(f"{self.name} needs max_in_flight >= 1, got {max_in_flight}")
        self.max_in_flight = max_in_flight
        self._queue: asyncio.Queue[dict] = asyncio.Queue(queue_size)
        self._worker: asyncio.Task | None = None
        self.dropped = 0  # alerts discarded because the queue was full
        self.delivered = 0
        self.failed = 0

    def submit(self, alert: dict) -> None:
        """Enqueue without waiting; when full the oldest queued alert makes room."""
        if self._queue.full():
            self._queue.get_nowait()
            self._queue.task_done()
            self.dropped += 1
            log.warning(
                "%s is behind: dropped the oldest queued alert (%d so far)", self.name, self.dropped
            )
        self._queue.put_nowait(alert)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def start(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name=self.name)

    async def aclose(self, drain_timeout_s: float = 5.0) -> None:
        """Deliver what is queued (up to ``drain_timeout_s``), then stop the worker."""
        if self._worker is not None and not self._worker.done():
            try:
                await asyncio.wait_for(self._queue.join(), drain_timeout_s)
            except TimeoutError:
                log.warning("%s: %d alerts undelivered at shutdown", self.name, self.pending)
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._worker = None

    async def deliver(self, alert: dict) -> bool:
        """Deliver one alert; True on success. Failures are logged here, not raised."""
        raise NotImplementedError

    async def _work(self) -> None:
        if self.max_in_flight == 1:
            while True:
                await self._deliver_one(await self._queue.get())
        slots = asyncio.Semaphore(self.max_in_flight)
        running: set[asyncio.Task] = set()
        try:
            while True:
                await slots.acquire()
                alert = await self._queue.get()
                task = asyncio.create_task(self._deliver_one(alert))
                running.add(task)
                task.add_done_callback(running.discard)
                task.add_done_callback(lambda _: slots.release())
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _deliver_one(self, alert: dict) -> None:
        try:
            ok = await self.deliver(alert)
        except Exception:  # a sink bug must not kill the worker and silently stop alerts
            log.exception("%s failed to deliver an alert", self.name)
            ok = False
        finally:
            self._queue.task_done()
        if ok:
            self.delivered += 1
        else:
            self.failed += 1


class WebhookSink(QueuedSink):
    """POSTs each alert as JSON; retries network errors, 5xx, 408 and 429 with backoff (doubling
    from ``backoff_s``, or the server's ``Retry-After``) within the alert's ``deadline_s``."""

    name = "webhook"

    def __init__(
        self,
        url: str,
        *,
        queue_size: int = 1000,
        timeout_s: float = 5.0,
        deadline_s: float = 30.0,
        max_attempts: int = 4,
        max_in_flight: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"invalid webhook URL {url!r}: must start with http:// or https://")
        if max_attempts < 1 or timeout_s <= 0 or backoff_s < 0 or deadline_s <= 0:
            raise UsageError(
                "webhook needs max_attempts >= 1, timeout > 0, deadline > 0 and backoff >= 0"
            )
        super().__init__(queue_size=queue_size, max_in_flight=max_in_flight)
        self.url = url
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.max_attempts = max_attempts
        # One receiver, not a fleet: no jitter, so the delays are what the docs say.
        self.backoff = Backoff(backoff_s, max_backoff_s, jitter=0.0)
        self.max_backoff_s = max_backoff_s
        self.retries = 0
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout_s)
        self._sleep = sleep
        self._clock = clock

    async def aclose(self, drain_timeout_s: float = 5.0) -> None:
        await super().aclose(drain_timeout_s)
        if self._owns_client:
            await self._client.aclose()

    async def deliver(self, alert: dict) -> bool:
        body = alert_json(alert)
        headers = {"content-type": "application/json", "user-agent": f"liq/{__version__}"}
        clock = self._clock or asyncio.get_running_loop().time
        give_up_at = clock() + self.deadline_s
        for attempt in range(1, self.max_attempts + 1):
            wait = self.backoff.delay(attempt - 1)
            # httpx's timeout is per read: only a total one ends a trickled answer.
            budget = min(self.timeout_s, give_up_at - clock())
            try:
                async with asyncio.timeout(budget):
                    response = await self._client.post(self.url, content=body, headers=headers)
            except TimeoutError:
                reason = f"no answer within {budget:.3g}s"
            except httpx.HTTPError as exc:
                reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
            else:
                if response.status_code < 300:
                    return True
                reason = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code not in _RETRY_STATUSES:
                    log.warning("webhook %s rejected an alert: %s", self.url, reason)
                    return False
                asked = retry_after(response.headers)
                wait = asked if asked is not None else wait
            wait = min(wait, self.max_backoff_s)
            out_of_time = clock() + wait >= give_up_at
            if attempt == self.max_attempts or out_of_time:
                log.warning(
                    "webhook %s: gave up on an alert after %d attempts%s (%s)",
                    self.url,
                    attempt,
                    f" and {self.deadline_s:g}s" if out_of_time else "",
                    reason,
                )
                return False
            self.retries += 1
            await self._sleep(wait)
        return False


class ExecSink(QueuedSink):
    """Runs ``command`` through the shell once per alert with the alert JSON on stdin.

    The command also gets ``LIQ_ALERT_TYPE``, ``LIQ_ALERT_SYMBOL`` and ``LIQ_ALERT_LEVEL`` in its
    environment. It runs in its own process group so a timeout kills its children too, and so
    does shutdown: a command still running when the sink closes (or the task delivering it is
    cancelled, or the interpreter exits) is killed with its whole group. Its output is captured
    (stdout must stay clean for ``--format jsonl``) and logged at debug.
    """

    name = "exec"

    def __init__(self, command: str, *, timeout_s: float = 10.0, queue_size: int = 100) -> None:
        if not command or not command.strip():
            raise UsageError("--exec needs a command")
        if timeout_s <= 0:
            raise UsageError(f"exec timeout must be positive, got {timeout_s}")
        super().__init__(queue_size=queue_size)
        self.command = command
        self.timeout_s = timeout_s
        self.timed_out = 0

    async def deliver(self, alert: dict) -> bool:
        env = {
            **os.environ,
            "LIQ_ALERT_TYPE": str(alert.get("type", "")),
            "LIQ_ALERT_SYMBOL": str(alert.get("symbol", "")),
            "LIQ_ALERT_LEVEL": str(alert.get("level", "")),
        }
        try:
            proc = await asyncio.create_subprocess_shell(
                self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            log.warning("exec %r could not start: %s", self.command, exc)
            return False
        _RUNNING.add(proc.pid)
        try:
            out, err = await asyncio.wait_for(proc.communicate(alert_json(alert)), self.timeout_s)
        except TimeoutError:
            _kill_group(proc.pid)
            await proc.wait()
            self.timed_out += 1
            log.warning("exec %r timed out after %gs and was killed", self.command, self.timeout_s)
            return False
        except BaseException:
            # Shutdown (cancellation) or Ctrl-C: never leave the command or its children behind.
            _kill_group(proc.pid)
            log.warning("exec %r was still running at shutdown and was killed", self.command)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(proc.wait(), 2.0)  # reap it while the loop still runs
            raise
        finally:
            _RUNNING.discard(proc.pid)
        if out or err:
            log.debug("exec %r output: %s", self.command, (out + err).decode(errors="replace"))
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
            log.warning("exec %r exited with %d %s", self.command, proc.returncode, tail[0])
            return False
        return True


# Process groups of --exec commands still running: killed at interpreter exit as a last resort
# (a normal shutdown kills them through cancellation already).
_RUNNING: set[int] = set()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if hasattr(os, "killpg"):
            os.killpg(pgid, signal.SIGKILL)
        else:
            os.kill(pgid, signal.SIGTERM)


@atexit.register
def _kill_leftovers() -> None:
    for pgid in list(_RUNNING):
        _kill_group(pgid)
    _RUNNING.clear()


class AlertRouter:
    """The detector's ``cascade_callback``: drops alerts under ``min_level``, fans out the rest.

    ``cascade_end`` alerts are judged by their peak level, so the end of every cascade that
    was alerted is delivered too.
    """

    def __init__(self, sinks: Sequence[AlertSink] = (), *, min_level: str = "QUIET") -> None:
        self.sinks = list(sinks)
        self.min_level = level_index(min_level)
        self.passed = 0
        self.filtered = 0

    def __call__(self, alert: dict) -> None:
        if alert_level(alert) < self.min_level:
            self.filtered += 1
            return
        self.passed += 1
        for sink in self.sinks:
            sink.submit(alert)

    async def start(self) -> None:
        for sink in self.sinks:
            await sink.start()

    async def aclose(self) -> None:
        await asyncio.gather(*(sink.aclose() for sink in self.sinks))
