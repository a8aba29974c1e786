"""The one retry policy every network client uses: backoff, ``Retry-After``, rate-limit bans.

API::

    backoff = Backoff(initial=1.0, maximum=60.0)        # factor 2, jitter 0.5, rng, sleep injectable
    delay = backoff.next()        # jittered delay for this attempt, then the next one grows
    await backoff.wait()          # sleep backoff.next(); returns the delay slept
    backoff.reset()               # after a success (or a connection that stayed healthy)
    backoff.delay(n)              # the jittered delay of 0-based attempt n, without counting it

    retry_after(response.headers) -> float | None      # or retry_after("120"), HTTP-date too

    gate = RateLimitGate("binance", max_wait_s=300)     # one per venue, shared by its requests
    async with gate.admit() as ticket:                   # waits out a pause; one probe at a time
        response = await send()
    if response.status_code in (429, 418):
        gate.refused(ticket, response.status_code, retry_after(response.headers))  # may raise
    else:
        gate.succeeded(ticket)

Jitter scales each delay by a uniform factor in ``[1 - jitter, 1]``: with the default 0.5 a step of
``s`` waits between ``s/2`` and ``s``, so a fleet of clients never retries in lockstep.

:class:`RateLimitGate` is the venue-wide answer to 429 and 418: every request waits out the
``Retry-After`` (or, without one, a backoff that grows with each refusal), then exactly one request
probes; the others wait until a probe succeeds. A 418 is a ban: the second one in a run stops the
venue (every later request fails at once with RateLimitError, nothing more is sent), because on
Binance each repeated ban lasts longer, from minutes up to days. Refusals of requests that were
already in flight when the first refusal arrived count once, not once per request.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from liqcli.errors import RateLimitError

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[Any]]


def exponential_delay(
    attempt: int,
    *,
    initial: float,
    maximum: float,
    factor: float = 2.0,
    jitter: float = 0.5,
    rng: random.Random | None = None,
) -> float:
    """Delay before retry number ``attempt`` (0-based): ``initial * factor**attempt`` capped at
    ``maximum``, scaled down by a random factor in ``[1 - jitter, 1]``."""
    # Exponent capped so a long outage never overflows a float.
    base = min(maximum, initial * factor ** min(attempt, 64))
    return base * (1.0 - jitter * (rng or random).random())


class Backoff:
    """Exponential backoff with jitter; counts attempts until :meth:`reset`."""

    def __init__(
        self,
        initial: float = 1.0,
        maximum: float = 60.0,
        *,
        factor: float = 2.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if initial < 0 or maximum < 0 or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError("backoff needs initial, maximum >= 0, factor >= 1, jitter in [0, 1]")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self.attempts = 0  # delays handed out since the last reset
        self._rng = rng or random.Random()
        self._sleep = sleep

    def delay(self, attempt: int) -> float:
        return exponential_delay(
            attempt,
            initial=self.initial,
            maximum=self.maximum,
            factor=self.factor,
            jitter=self.jitter,
            rng=self._rng,
        )

    def next(self) -> float:
        """The delay for this attempt; the following one is ``factor`` times longer."""
        delay = self.delay(self.attempts)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0

    async def wait(self) -> float:
        delay = self.next()
        await self._sleep(delay)
        return delay


def retry_after(
    source: Mapping[str, str] | str | None, *, now: float | None = None
) -> float | None:
    """Seconds a ``Retry-After`` asks for: delta-seconds (``"120"``, fractions accepted: some fakes
    and venues send them) or an HTTP-date (relative to ``now``, wall-clock seconds). ``source`` is
    a header mapping (case-insensitive ones such as httpx's, or lower-case keys) or the raw value.
    None when absent or unreadable (the caller backs off instead)."""
    if source is None:
        return None
    if isinstance(source, str):
        raw: str | None = source
    else:
        raw = source.get("Retry-After")
        if raw is None:
            raw = source.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None or when.tzinfo is None:
            return None
        value = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, value) if math.isfinite(value) else None
    return value if math.isfinite(value) and value >= 0 else None


@dataclass(frozen=True)
class Ticket:
    """What :meth:`RateLimitGate.admit` hands a request: the refusal epoch it was sent in."""

    epoch: int
    probe: bool = False


class RateLimitGate:
    """Venue-wide pause, probe and ban policy for 429/418 (see the module docstring)."""

    def __init__(
        self,
        venue: str,
        *,
        max_wait_s: float = 300.0,
        bans_tolerated: int = 1,
        backoff: Backoff | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.venue = venue
        self.max_wait_s = max_wait_s
        self.bans_tolerated = bans_tolerated
        # Refusals without Retry-After: from a second, doubling up to a minute.
        self.backoff = backoff or Backoff(1.0, 60.0)
        self.bans = 0  # 418s counted (in-flight echoes of one ban count once)
        self.refusals = 0  # 429s and 418s counted the same way
        self.waited_s = 0.0  # seconds requests spent waiting out pauses (summed over requests)
        self.stopped: RateLimitError | None = None  # set once the venue is given up for the run
        self._clock = clock
        self._sleep = sleep
        self._blocked_until = 0.0
        self._probing = False
        self._epoch = 0
        self._probe_lock = asyncio.Lock()

    @property
    def probing(self) -> bool:
        return self._probing

    @property
    def epoch(self) -> int:
        """Counts registered refusals; a ticket from an older epoch was sent before the last."""
        return self._epoch

    @property
    def blocked_for(self) -> float:
        return max(0.0, self._blocked_until - self._clock())

    def check(self) -> None:
        """Raise when the venue is stopped or paused for longer than this command waits."""
        if self.stopped is not None:
            raise self.stopped
        remaining = self._blocked_until - self._clock()
        if remaining > self.max_wait_s:
            # Sending anyway would only prolong a ban: fail without a request.
            raise RateLimitError(
                self.venue,
                f"requests paused for another {remaining:.0f}s after a rate-limit answer; "
                f"longer than the {self.max_wait_s:g}s this command waits",
            )

    async def _wait_unblocked(self) -> None:
        while True:
            self.check()
            remaining = self._blocked_until - self._clock()
            if remaining <= 0:
                return
            self.waited_s += remaining
            await self._sleep(remaining)

    def admit(self) -> _Admission:
        """``async with gate.admit() as ticket:`` around sending one request."""
        return _Admission(self)

    def succeeded(self, ticket: Ticket) -> None:
        """A request got an answer that was not a rate-limit refusal: the pause is over (unless
        the request was sent before the latest refusal: its answer proves nothing)."""
        if self._probing and ticket.epoch == self._epoch:
            self._probing = False
            self.backoff.reset()

    def refused(self, ticket: Ticket, status: int, retry_after_s: float | None) -> float:
        """Register a 429/418; returns the pause every request now waits, or raises
        RateLimitError when the venue is stopped (second ban) or the pause is too long."""
        echo = ticket.epoch != self._epoch  # sent before an earlier refusal was registered
        if not echo:
            self._epoch += 1
            self.refusals += 1
            if status == 418:
                self.bans += 1
        what = "banned this IP" if status == 418 else "rate limit hit"
        if status == 418 and self.bans > self.bans_tolerated:
            ban = f", Retry-After {retry_after_s:g}s" if retry_after_s is not None else ""
            self.stopped = RateLimitError(
                self.venue,
                f"banned again (HTTP 418{ban}) after waiting out a ban: no more requests to "
                f"{self.venue} in this run (repeated bans last longer); run again later",
                status=418,
            )
            raise self.stopped
        wait = retry_after_s
        if wait is None:
            wait = 0.0 if echo else self.backoff.next()
        self._blocked_until = max(self._blocked_until, self._clock() + wait)
        self._probing = True
        if wait > self.max_wait_s:
            raise RateLimitError(
                self.venue,
                f"{what} (HTTP {status}); Retry-After {wait:g}s is longer than the "
                f"{self.max_wait_s:g}s this command waits",
                status=status,
            )
        return max(wait, self._blocked_until - self._clock())


class _Admission:
    def __init__(self, gate: RateLimitGate) -> None:
        self._gate = gate
        self._locked = False

    async def __aenter__(self) -> Ticket:
        gate = self._gate
        while True:
            await gate._wait_unblocked()
            if not gate._probing:
                return Ticket(gate._epoch)
            # Paused venue: one request at a time until one gets through.
            await gate._probe_lock.acquire()
            if gate._probing and gate._blocked_until <= gate._clock() and gate.stopped is None:
                self._locked = True
                return Ticket(gate._epoch, probe=True)
            gate._probe_lock.release()

    async def __aexit__(self, *exc: object) -> None:
        if self._locked:
            self._locked = False
            self._gate._probe_lock.release()
