"""Record what a live source delivers into the datasets, and replay a recording in the same order.

::

    async with Recorder(source, store) as recorder:      # any source: batches(), statuses, aclose()
        async for batch in recorder.batches():           # the source's batches, unchanged
            ...                                          # (each one journaled first)
    recorder.stats                                       # rows per dataset, events not recordable

    replay = RecordedSource(store, symbols=["BTCUSDT"], start=t0, end=t1)
    async for batch in replay.batches():                 # the recorded events, in delivery order
        ...

What goes where (through liqcli.store.journal, so a kill -9 loses at most the last half second
and the rows reach Parquet in batches): Liquidation -> ``liquidations``, AggTrade ->
``agg_trades``, BookTop -> ``book_tops``, BookSnapshot (the source's top-N pictures) ->
``book_depth`` (``source=live``, one row per level, level 1 = best), MarkPrice -> ``mark_prices``.
BookDelta events are not recorded (a recording keeps the periodic book snapshots, not the diff
stream), so a session replays exactly when its source emits no deltas.

Order: every recorded event gets ``seq``, a counter that starts at the session's start time in
µs (``start_ms * 1000``), so it is unique and increasing across sessions recorded one after the
other; the replay merges the datasets on it. The store keys rows (CONTRACT.md), so an event the
venue sent twice with the same key is stored once.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any

import polars as pl

from liqcli.core.events import (
    AggTrade,
    BookSnapshot,
    BookTop,
    Event,
    Liquidation,
    MarkPrice,
)
from liqcli.core.timeutil import now_ms
from liqcli.exchanges.ws import VenueStatus
from liqcli.store.journal import Journal
from liqcli.store.parquet import Store

LIVE = "live"  # book_depth ``source`` of recorded snapshots (the archive's is "archive")
DATASET_OF: dict[type, str] = {
    Liquidation: "liquidations",
    AggTrade: "agg_trades",
    BookTop: "book_tops",
    BookSnapshot: "book_depth",
    MarkPrice: "mark_prices",
}
RECORDED_DATASETS = tuple(DATASET_OF.values())


# ---------------------------------------------------------------------------- event -> rows


def rows_of(event: Event, seq: int) -> list[dict[str, Any]]:
    """The dataset rows of one event (time fields as ms ints, the journal's row form)."""
    kind = type(event)
    if kind is Liquidation:
        return [{**event.to_row(), "seq": seq}]
    if kind is AggTrade:
        e: Any = event
        return [
            {
                "exchange": e.exchange,
                "symbol": e.symbol,
                "trade_id": e.trade_id,
                "ts": e.ts,
                "price": e.price,
                "qty": e.qty,
                "is_buyer_maker": e.is_buyer_maker,
                "seq": seq,
            }
        ]
    if kind is BookTop:
        e = event
        return [
            {
                "exchange": e.exchange,
                "symbol": e.symbol,
                "ts": e.ts,
                "update_id": e.update_id,
                "bid": e.bid_price,
                "bid_qty": e.bid_qty,
                "ask": e.ask_price,
                "ask_qty": e.ask_qty,
                "received_ts": e.received_ts,
                "seq": seq,
            }
        ]
    if kind is MarkPrice:
        e = event
        return [
            {
                "exchange": e.exchange,
                "symbol": e.symbol,
                "ts": e.ts,
                "mark_price": e.mark_price,
                "index_price": e.index_price,
                "funding_rate": e.funding_rate,
                "next_funding_ts": e.next_funding_ts,
                "received_ts": e.received_ts,
                "seq": seq,
            }
        ]
    if kind is BookSnapshot:
        e = event
        base = {
            "exchange": e.exchange,
            "symbol": e.symbol,
            "source": LIVE,
            "ts": e.ts,
            "update_id": e.update_id,
            "received_ts": e.received_ts,
            "seq": seq,
        }
        rows = [
            {**base, "side": "bid", "level": i, "price": p, "qty": q}
            for i, (p, q) in enumerate(e.bids, 1)
        ]
        rows += [
            {**base, "side": "ask", "level": i, "price": p, "qty": q}
            for i, (p, q) in enumerate(e.asks, 1)
        ]
        return rows
    return []


# ---------------------------------------------------------------------------- recording


class Recorder:
    """Passes a source's batches through and journals every recordable event (module doc)."""

    def __init__(
        self,
        source: Any,
        store: Store,
        *,
        flush_interval: float = 0.5,
        compact_interval: float = 60.0,
        wall_clock: Callable[[], int] = now_ms,
    ) -> None:
        self.source = source
        self.store = store
        self.stats: Counter[str] = Counter()  # rows per dataset; "skipped" events not recordable
        self._journal_args = {
            "flush_interval": flush_interval,
            "compact_interval": compact_interval,
        }
        self._journals: dict[str, Journal] = {}
        self._seq = wall_clock() * 1000
        self._opened = False

    @property
    def statuses(self) -> dict[str, VenueStatus]:
        return self.source.statuses

    @property
    def clock(self) -> Any:
        return self.source.clock

    async def __aenter__(self) -> Recorder:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Open one journal per dataset (recovering rows a killed recorder left behind)."""
        if self._opened:
            return
        self._opened = True
        for name in RECORDED_DATASETS:
            journal = Journal(self.store, name, **self._journal_args)
            await asyncio.to_thread(journal.open)
            self._journals[name] = journal

    async def batches(self) -> AsyncIterator[list[Event]]:
        await self.open()
        async for batch in self.source.batches():
            self.record(batch)
            yield batch

    def record(self, batch: Iterable[Event]) -> None:
        """Journal a batch (queued in memory; the journals' threads write it)."""
        per_dataset: dict[str, list[dict[str, Any]]] = {}
        for event in batch:
            name = DATASET_OF.get(type(event))
            if name is None:
                self.stats["skipped"] += 1  # BookDelta: not recorded
                continue
            rows = rows_of(event, self._seq)
            self._seq += 1
            per_dataset.setdefault(name, []).extend(rows)
        for name, rows in per_dataset.items():
            self._journals[name].extend(rows)
            self.stats[name] += len(rows)

    async def aclose(self) -> None:
        """Close the source, then move every journaled row into Parquet."""
        try:
            await self.source.aclose()
        finally:
            journals, self._journals = list(self._journals.values()), {}
            for journal in journals:
                await asyncio.to_thread(journal.close)


# ---------------------------------------------------------------------------- replay


def recorded_events(
    store: Store,
    *,
    exchange: str | Sequence[str] | None = None,
    symbols: Sequence[str] | None = None,
    start: int | None = None,
    end: int | None = None,
) -> Iterator[Event]:
    """Every recorded event with ``start <= ts < end`` (ms), in the order it was delivered."""
    streams = []
    filters: dict[str, Any] = {}
    if exchange is not None:
        filters["exchange"] = exchange
    if symbols:
        filters["symbol"] = [s.upper() for s in symbols]
    for name in RECORDED_DATASETS:
        extra = {"source": LIVE} if name == "book_depth" else {}
        frame = (
            store.scan(name, start=start, end=end, **filters, **extra)
            .filter(pl.col("seq").is_not_null())
            .with_columns(pl.col(pl.Datetime).dt.epoch("ms"))
            .sort("seq", *(("side", "level") if name == "book_depth" else ()), maintain_order=True)
            .collect()
        )
        if frame.height:
            streams.append(_EVENTS_OF[name](frame))
    return (event for _, event in heapq.merge(*streams, key=lambda pair: pair[0]))


def _liquidations(frame: pl.DataFrame) -> Iterator[tuple[int, Event]]:
    for r in frame.iter_rows(named=True):
        venue_symbol = r["venue_symbol"] if r["venue_symbol"] != r["symbol"] else ""
        yield (
            r["seq"],
            Liquidation(
                r["exchange"],
                r["symbol"],
                r["side"],
                r["price"],
                r["qty"],
                r["notional_usd"],
                r["ts"],
                venue_symbol,
                r["received_ts"] or 0,
            ),
        )


def _agg_trades(frame: pl.DataFrame) -> Iterator[tuple[int, Event]]:
    for r in frame.iter_rows(named=True):
        yield (
            r["seq"],
            AggTrade(
                r["exchange"],
                r["symbol"],
                r["trade_id"],
                r["ts"],
                r["price"],
                r["qty"],
                r["is_buyer_maker"],
            ),
        )


def _book_tops(frame: pl.DataFrame) -> Iterator[tuple[int, Event]]:
    for r in frame.iter_rows(named=True):
        yield (
            r["seq"],
            BookTop(
                r["exchange"],
                r["symbol"],
                r["ts"],
                r["bid"],
                r["bid_qty"],
                r["ask"],
                r["ask_qty"],
                r["update_id"],
                r["received_ts"] or 0,
            ),
        )


def _mark_prices(frame: pl.DataFrame) -> Iterator[tuple[int, Event]]:
    for r in frame.iter_rows(named=True):
        yield (
            r["seq"],
            MarkPrice(
                r["exchange"],
                r["symbol"],
                r["ts"],
                r["mark_price"],
                r["index_price"],
                r["funding_rate"],
                r["next_funding_ts"],
                r["received_ts"] or 0,
            ),
        )


def _book_depth(frame: pl.DataFrame) -> Iterator[tuple[int, Event]]:
    """Rows of one snapshot share a ``seq``: bids then asks, each by level (the sort above)."""
    current: list[dict[str, Any]] = []
    for r in frame.iter_rows(named=True):
        if current and r["seq"] != current[0]["seq"]:
            yield current[0]["seq"], _snapshot(current)
            current = []
        current.append(r)
    if current:
        yield current[0]["seq"], _snapshot(current)


def _snapshot(rows: list[dict[str, Any]]) -> BookSnapshot:
    first = rows[0]
    return BookSnapshot(
        first["exchange"],
        first["symbol"],
        first["ts"],
        first["update_id"] or 0,
        tuple((r["price"], r["qty"]) for r in rows if r["side"] == "bid"),
        tuple((r["price"], r["qty"]) for r in rows if r["side"] == "ask"),
        first["received_ts"] or 0,
    )


_EVENTS_OF: dict[str, Callable[[pl.DataFrame], Iterator[tuple[int, Event]]]] = {
    "liquidations": _liquidations,
    "agg_trades": _agg_trades,
    "book_tops": _book_tops,
    "book_depth": _book_depth,
    "mark_prices": _mark_prices,
}


class RecordedSource:
    """A recording as a source: ``batches()`` of up to ``batch_size`` events in delivery order,
    ``statuses`` (one closed VenueStatus per exchange met), ``aclose()``, and ``clock()``: event
    time, the receive time of the last event handed out (ms)."""

    def __init__(
        self,
        store: Store,
        *,
        exchange: str | Sequence[str] | None = None,
        symbols: Sequence[str] | None = None,
        start: int | None = None,
        end: int | None = None,
        batch_size: int = 1000,
    ) -> None:
        self._args = {
            "exchange": exchange,
            "symbols": symbols,
            "start": start,
            "end": end,
        }
        self.store = store
        self.batch_size = batch_size
        self.statuses: dict[str, VenueStatus] = {}
        self._now = 0
        self._closed = False

    def clock(self) -> int:
        return self._now

    async def __aenter__(self) -> RecordedSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True

    async def batches(self) -> AsyncIterator[list[Event]]:
        events = await asyncio.to_thread(lambda: list(recorded_events(self.store, **self._args)))
        for i in range(0, len(events), self.batch_size):
            if self._closed:
                return
            batch = events[i : i + self.batch_size]
            for event in batch:
                if event.exchange not in self.statuses:
                    status = self.statuses[event.exchange] = VenueStatus(event.exchange)
                    status.state = "closed"
                self.statuses[event.exchange].events += 1
            last = batch[-1]
            self._now = getattr(last, "received_ts", 0) or last.ts
            yield batch
            await asyncio.sleep(0)  # let other tasks run between batches
