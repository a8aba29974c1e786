"""One symbol's order book kept in step with a venue's diff stream and REST snapshots.

Both live market sources (Binance, Backpack) use it; only the snapshot call, the L2Book's
sequencing rule and what to emit differ. The rule (TRADING-VENUES.md §6, §1.7): diffs are
buffered from the first one received; a REST snapshot is loaded and the buffer replayed through
the book (stale diffs dropped, the first must straddle the snapshot's id, then the venue's
sequencing rule); a gap - a lost diff, a reconnect, a snapshot older than the buffer - starts a
new sync. Failed snapshot requests are retried with the source's backoff while diffs keep
buffering; a symbol the venue has no book for stops its sync (``failed``).

Emitted through ``emit`` (the source's ready queue): a top-N ``BookSnapshot`` each time a diff
crosses a ``snapshot_every_ms`` boundary of event time (the book as it stood at the boundary);
with ``emit_deltas`` every applied diff and each loaded snapshot; with ``emit_loaded`` the top-N
of each loaded snapshot (consumers have depth before the first boundary).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from liqcli.core.events import BookDelta, BookSnapshot
from liqcli.errors import DataError, LiqError, UnknownSymbolError
from liqcli.exchanges.ws import WsTimings, backoff_delay
from liqcli.trading.book import L2Book

log = logging.getLogger("liq.sources")


@dataclass(frozen=True)
class SyncOptions:
    snapshot_every_ms: int | None = 1000
    depth_levels: int = 20
    emit_deltas: bool = False
    emit_loaded: bool = False
    max_buffer: int = 10_000


def with_received(snapshot: BookSnapshot, received_ts: int) -> BookSnapshot:
    return BookSnapshot(
        snapshot.exchange,
        snapshot.symbol,
        snapshot.ts,
        snapshot.update_id,
        snapshot.bids,
        snapshot.asks,
        received_ts,
    )


class BookSync:
    """See the module docstring. ``fetch()`` returns the venue's REST snapshot; ``emit(event)``
    queues an event for the consumer and ``wake()`` tells it; ``on_error(text)`` records a problem
    on the venue's status; ``closed()`` says the source is shutting down."""

    def __init__(
        self,
        venue: str,
        book: L2Book,
        *,
        fetch: Callable[[], Awaitable[BookSnapshot]],
        emit: Callable[[object], None],
        wake: Callable[[], None],
        clock: Callable[[], int],
        on_error: Callable[[str], None],
        closed: Callable[[], bool],
        timings: WsTimings,
        rng: random.Random,
        options: SyncOptions,
    ) -> None:
        self.venue = venue
        self.book = book
        self.buffer: deque[BookDelta] = deque(maxlen=options.max_buffer)
        self.task: asyncio.Task[None] | None = None
        self.next_due: int | None = None  # the next top-N snapshot boundary (event time, ms)
        self.failed = False  # the venue refused the symbol: no book
        self._fetch = fetch
        self._sink = emit
        self.emitted = 0  # events handed to ``emit`` so far
        self._wake = wake
        self._clock = clock
        self._on_error = on_error
        self._closed = closed
        self._timings = timings
        self._rng = rng
        self.options = options

    def _emit(self, event: object) -> None:
        self.emitted += 1
        self._sink(event)

    def on_delta(self, delta: BookDelta) -> None:
        if self.failed:
            return
        book = self.book
        if self.task is not None or not book.synced:
            self.buffer.append(delta)
            if self.task is None:
                self._start_sync()
            return
        self._apply(delta)
        if not book.synced:  # a gap: start over from a fresh snapshot, this diff buffered
            log.info(
                "%s: %s book gap at %d..%d; resyncing",
                self.venue,
                book.symbol,
                delta.first_update_id,
                delta.update_id,
            )
            self.next_due = None
            self.buffer.append(delta)
            self._start_sync()

    def _start_sync(self) -> None:
        self.task = asyncio.create_task(self._sync(), name=f"liq-book-{self.book.symbol}")

    def _apply(self, delta: BookDelta) -> str:
        book = self.book
        every = self.options.snapshot_every_ms
        if every and self.next_due is not None and delta.ts >= self.next_due and book.synced:
            # The book as it stood at the boundary: every diff before it, none after.
            top = book.snapshot(self.options.depth_levels, ts=self.next_due)
            self._emit(with_received(top, delta.received_ts))
            self.next_due = None
        result = book.apply(delta)
        if result == "ok":
            if every and self.next_due is None:
                self.next_due = (delta.ts // every + 1) * every
            if self.options.emit_deltas:
                self._emit(delta)
        return result

    async def _sync(self) -> None:
        """Snapshot + buffered diffs until the book holds, retrying with backoff."""
        book = self.book
        attempt = 0
        try:
            while not self._closed():
                try:
                    snapshot = await self._fetch()
                except UnknownSymbolError as exc:
                    self.failed = True
                    self.buffer.clear()
                    self._on_error(str(exc))
                    log.error("%s: no order book for %s: %s", self.venue, book.symbol, exc)
                    return
                except (LiqError, DataError) as exc:
                    self._on_error(f"depth snapshot: {exc}")
                    log.warning("%s: %s depth snapshot failed: %s", self.venue, book.symbol, exc)
                    await asyncio.sleep(backoff_delay(attempt, self._timings, self._rng))
                    attempt += 1
                    continue
                snapshot = with_received(snapshot, self._clock())
                book.load(snapshot)
                before = self.emitted
                if self.options.emit_deltas:
                    self._emit(snapshot)
                if self.options.emit_loaded:
                    n = self.options.depth_levels
                    self._emit(
                        BookSnapshot(
                            snapshot.exchange,
                            snapshot.symbol,
                            snapshot.ts,
                            snapshot.update_id,
                            snapshot.bids[:n],
                            snapshot.asks[:n],
                            snapshot.received_ts,
                        )
                    )
                buffered = list(self.buffer)
                self.buffer.clear()
                for delta in buffered:
                    if self._apply(delta) == "gap":
                        # The snapshot is older than the buffer: keep what is left, ask again.
                        self.buffer.extend(d for d in buffered if d.update_id >= delta.update_id)
                        break
                if self.emitted > before:
                    self._wake()
                if book.synced:
                    return
                log.info(
                    "%s: %s snapshot older than the stream; asking again", self.venue, book.symbol
                )
                await asyncio.sleep(backoff_delay(attempt, self._timings, self._rng))
                attempt += 1
        finally:
            self.task = None
            # Diffs that arrived while the last snapshot was being applied were buffered.
            if self.buffer and book.synced and not self._closed():
                pending = list(self.buffer)
                self.buffer.clear()
                for delta in pending:
                    self.on_delta(delta)
