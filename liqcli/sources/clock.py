"""Clocks of sources, and the ticker that drives analytics from them.

- ``WallClock``: live wall time (``liq watch``: windows roll on while venues are quiet).
- ``LiveClock``: the newest event time, moved on by the wall clock (less ``lag_ms`` for delivery)
  only while the venues are quiet (``liq cascade``: evaluating at wall time would put the
  detectors ahead of events still in flight, and a replay would not give the same cascades).
- ``EventClock``: replay time, the newest event time seen.

Live clocks never jump forward because of one event: an event more than ``max_ahead_ms`` ahead
of wall time is not observed (consumers drop such events with ``FutureGuard`` as well).

Analytics own no timers. The consumer ticks them: after each batch with the event times it holds
(replay and live alike), and on a live clock also from a :class:`Ticker`, so levels decay and
windows roll while nothing arrives. A replay therefore runs at full speed with the same decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from liqcli.core.timeutil import now_ms

log = logging.getLogger("liq.sources")

LIVE_LAG_MS = 2_000  # how late a venue's event may arrive before quiet time moves past it
MAX_AHEAD_MS = 5 * 60_000  # events further ahead of their receive time are refused (FutureGuard)


class WallClock:
    """Live wall time."""

    live = True

    def __init__(self, wall_clock: Callable[[], int] = now_ms) -> None:
        self.wall = wall_clock

    def __call__(self) -> int:
        return self.wall()

    def observe(self, ts: int) -> None:
        return None


class LiveClock:
    """Live evaluation time: ``max(newest event, wall - lag_ms)``; see the module docstring."""

    live = True

    def __init__(
        self,
        wall_clock: Callable[[], int] = now_ms,
        lag_ms: int = LIVE_LAG_MS,
        max_ahead_ms: int = MAX_AHEAD_MS,
    ) -> None:
        self.wall = wall_clock
        self.lag_ms = lag_ms
        self.max_ahead_ms = max_ahead_ms
        self.newest = 0

    def observe(self, ts: int) -> None:
        if ts > self.newest and ts <= self.wall() + self.max_ahead_ms:
            self.newest = ts

    def __call__(self) -> int:
        return max(self.newest, self.wall() - self.lag_ms)


class EventClock:
    """Replay time: the newest event timestamp observed so far (0 before the first)."""

    live = False

    def __init__(self) -> None:
        self.newest = 0

    def observe(self, ts: int) -> None:
        if ts > self.newest:
            self.newest = ts

    # ``liq watch`` called this ``advance``: one clock, both names.
    advance = observe

    @property
    def now(self) -> int:
        return self.newest

    def __call__(self) -> int:
        return self.newest


class Ticker:
    """Calls ``callback(clock())`` every ``interval_s`` seconds of wall time, in a task.

    For live clocks (and dashboards that refresh during a replay). A failing callback is logged
    and the ticking goes on: one bad tick must not stop live detection or the screen.
    """

    def __init__(
        self, clock: Callable[[], int], interval_s: float, callback: Callable[[int], object]
    ) -> None:
        if not interval_s > 0:
            raise ValueError("tick interval must be positive")
        self.clock = clock
        self.interval_s = interval_s
        self.callback = callback
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Ticker:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="liq-ticker")
        return self

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.callback(self.clock())
            except Exception:
                log.exception("tick failed")
