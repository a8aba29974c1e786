"""The protocol every source of market data follows (live venues, replays, recordings).

    async with source:                       # or try/finally: await source.aclose()
        async for batch in source.batches():  # list[Event]: arrival order (live), event time (replay)
            for event in batch: ...
            source.clock()                    # now, ms: wall time live, newest event time on replay
        source.statuses["okx"].to_dict()      # venue -> VenueStatus-like (empty for a replay)

A batch is never empty. ``batches()`` ends when the source is exhausted (a replay's end, every
live venue stopped; LiqError when they all failed) or closed. ``aclose()`` is idempotent and safe
from any task. Analytics own no timers: the consumer ticks them with ``source.clock()``, after
each batch and, for a live clock, on a :class:`~liqcli.sources.clock.Ticker`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol, runtime_checkable

from liqcli.core.events import Event


@runtime_checkable
class Clock(Protocol):
    """A source's notion of now, in epoch ms."""

    live: bool  # True: wall time moves on by itself (tick on a timer); False: only events move it

    def __call__(self) -> int: ...

    def observe(self, ts: int) -> None:
        """An event stamped ``ts`` was delivered (event clocks move to it; wall clocks may not)."""
        ...


class VenueStatusLike(Protocol):
    """What dashboards read of a venue's health (liqcli.exchanges.ws.VenueStatus is one)."""

    venue: str
    state: str

    def to_dict(self) -> dict[str, Any]: ...


@runtime_checkable
class Source(Protocol):
    """Batches of normalised events with a clock and per-venue statuses."""

    clock: Clock
    statuses: Mapping[str, VenueStatusLike]

    def batches(self) -> AsyncIterator[list[Event]]: ...

    async def aclose(self) -> None: ...


class Counters:
    """Named event counters of a pipeline (attributes; ``to_dict`` for dashboards and JSON)::

    counters = Counters(received=0, duplicates=0)
    counters.received += 10
    """

    def __init__(self, **start: int) -> None:
        self.__dict__.update(start)

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return f"Counters({', '.join(f'{k}={v}' for k, v in self.__dict__.items())})"
