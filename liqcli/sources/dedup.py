"""One de-duplication of venue re-sends (reconnects, make-before-break overlaps, journal recovery)
and one guard against events stamped far in the future, shared by every consumer.

    dedup = Deduper()
    fresh = dedup.fresh(batch)        # events not seen among the last ``capacity``; order kept
    dedup.duplicates                  # how many were dropped

    guard = FutureGuard()
    kept = guard.admit(batch)         # drops events stamped more than MAX_AHEAD_MS after their
    guard.refused                     # receive time (a clock bug or a hostile frame): counted

Keys: a liquidation is (exchange, symbol, ts, side, price, qty); an aggregate trade is
(exchange, symbol, trade_id); other events are never dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from liqcli.core.events import AggTrade, Liquidation
from liqcli.core.timeutil import now_ms
from liqcli.sources.clock import MAX_AHEAD_MS

DEDUP_CAPACITY = 100_000  # recent event keys remembered


class Deduper:
    """Drops events already seen among the last ``capacity`` keys."""

    def __init__(self, capacity: int = DEDUP_CAPACITY) -> None:
        self.capacity = capacity
        self.duplicates = 0
        self._seen: set[tuple] = set()
        self._order: deque[tuple] = deque()

    def fresh(self, events: Sequence[object]) -> list:
        """The events of ``events`` not seen before, in order (each is remembered)."""
        seen, order = self._seen, self._order
        out = []
        append = out.append
        for event in events:
            kind = type(event)
            if kind is Liquidation:
                key = (event.exchange, event.symbol, event.ts, event.side, event.price, event.qty)
            elif kind is AggTrade:
                key = (event.exchange, event.symbol, event.trade_id)
            else:
                append(event)
                continue
            if key in seen:
                self.duplicates += 1
                continue
            seen.add(key)
            order.append(key)
            append(event)
        while len(order) > self.capacity:
            seen.discard(order.popleft())
        return out

    def is_new(self, event: object) -> bool:
        """One event: True (and remembered) unless it was seen."""
        return bool(self.fresh((event,)))


class FutureGuard:
    """Refuses events stamped more than ``max_ahead_ms`` after they were received.

    One such event would otherwise move an event clock years ahead (a cascade detector would then
    treat every later event as late) or stay in every rolling window until its time comes. The
    receive time is the event's ``received_ts`` when it has one (live events, journaled rows),
    else the wall clock for a live source; replays of rows without it keep every event.
    """

    def __init__(
        self,
        max_ahead_ms: int = MAX_AHEAD_MS,
        *,
        wall_clock: Callable[[], int] | None = now_ms,
    ) -> None:
        self.max_ahead_ms = max_ahead_ms
        self.wall_clock = wall_clock
        self.refused = 0

    def admit(self, events: Sequence[object]) -> Sequence[object]:
        limit_wall = self.wall_clock() + self.max_ahead_ms if self.wall_clock else None
        ahead = self.max_ahead_ms
        bad = False
        for event in events:
            received = getattr(event, "received_ts", 0)
            if received:
                if event.ts > received + ahead:  # type: ignore[attr-defined]
                    bad = True
                    break
            elif limit_wall is not None and event.ts > limit_wall:  # type: ignore[attr-defined]
                bad = True
                break
        if not bad:
            return events  # the common case: no copy
        kept = [e for e in events if not self._too_far(e, limit_wall)]
        self.refused += len(events) - len(kept)
        return kept

    def _too_far(self, event: object, limit_wall: int | None) -> bool:
        received = getattr(event, "received_ts", 0)
        if received:
            return event.ts > received + self.max_ahead_ms  # type: ignore[attr-defined]
        return limit_wall is not None and event.ts > limit_wall  # type: ignore[attr-defined]
