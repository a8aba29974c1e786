"""A maintained L2 order book that follows a venue's diff-sequencing rule. Pure: no I/O.

::

    book = L2Book("BTCUSDT")
    book.load(snapshot)                 # BookSnapshot (REST /fapi/v1/depth: lastUpdateId)
    for delta in buffered + live:       # BookDelta from the diff stream
        result = book.apply(delta)      # "ok" | "stale" (older than the book: dropped) | "gap"
        if result == "gap":             # a diff is missing: the book is unusable until the
            ...                         # caller loads a fresh snapshot (book.synced is False)
    book.best_bid(), book.best_ask()    # (price, qty) or None
    book.top(20)                        # (bids best first, asks best first)
    book.counters                       # applied, stale, gaps, loads

Sequencing rules (TRADING-VENUES.md §6, Binance "How to manage a local order book correctly"):

- ``"pu"`` (Binance USDⓈ-M futures, Aster): after a snapshot with ``lastUpdateId`` L, diffs with
  ``u < L`` are stale; the first one applied must have ``U <= L <= u``; every later one must have
  ``pu`` equal to the previous diff's ``u``.
- ``"contiguous"`` (Binance spot style): the first applied diff has ``U <= L + 1 <= u``; later ones
  ``U == previous u + 1``.

Anything else is a gap (counted once): the book stops applying diffs (each further one also
answers ``"gap"``) until ``load`` is called again. Quantities are absolute; qty 0 deletes a level, and deleting a
level the book does not hold is normal.

Cost: one dict per side, so a diff costs a dict write per level; sorted access (``top``) only
when asked, via a partial sort. The best price is cached and recomputed only after the best
level itself is removed.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Literal

from liqcli.core.events import BookDelta, BookSnapshot, Level

ApplyResult = Literal["ok", "stale", "gap"]
Rule = Literal["pu", "contiguous"]


@dataclass
class BookCounters:
    applied: int = 0  # diffs folded into the book
    stale: int = 0  # diffs older than the loaded snapshot, dropped (normal after a load)
    gaps: int = 0  # sequence breaks found (each one needs a new snapshot)
    loads: int = 0  # snapshots loaded (the first one and every resync)

    @property
    def resyncs(self) -> int:
        return max(self.loads - 1, 0)


class L2Book:
    """Price -> quantity per side, kept in step with a venue's diffs; see the module docstring."""

    __slots__ = (
        "_best_ask",
        "_best_bid",
        "_first",
        "asks",
        "bids",
        "counters",
        "exchange",
        "rule",
        "symbol",
        "synced",
        "ts",
        "update_id",
    )

    def __init__(self, symbol: str = "", exchange: str = "", *, rule: Rule = "pu") -> None:
        if rule not in ("pu", "contiguous"):
            raise ValueError(f"unknown sequencing rule {rule!r}")
        self.symbol = symbol
        self.exchange = exchange
        self.rule = rule
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.update_id: int | None = None  # last update id folded in (snapshot or diff)
        self.ts = 0  # venue time of the last snapshot or diff, ms
        self.synced = False  # a snapshot is loaded and no gap was seen since
        self.counters = BookCounters()
        self._first = True  # the next applied diff is the first after a snapshot
        self._best_bid: float | None = None  # cached best prices; None = recompute
        self._best_ask: float | None = None

    # ------------------------------------------------------------------ sequencing

    def load(self, snapshot: BookSnapshot) -> None:
        """Replace the whole book with ``snapshot``; diffs are checked against it from now on."""
        self.bids = {p: q for p, q in snapshot.bids if q > 0}
        self.asks = {p: q for p, q in snapshot.asks if q > 0}
        self.update_id = snapshot.update_id
        self.ts = snapshot.ts
        self.synced = True
        self._first = True
        self._best_bid = self._best_ask = None
        self.counters.loads += 1

    def apply(self, delta: BookDelta) -> ApplyResult:
        """Fold one diff in if it follows the book; ``"stale"`` and ``"gap"`` leave it unchanged."""
        last = self.update_id
        if not self.synced or last is None:
            return "gap"  # counted once, when found; the caller owes a snapshot
        u = delta.update_id
        pu_rule = self.rule == "pu"
        # Already in the book: dropped, not a gap (the diffs buffered before a snapshot, or a
        # diff delivered twice across a reconnect). A first futures diff may end exactly at L.
        if u < last or (u == last and not (self._first and pu_rule)):
            self.counters.stale += 1
            return "stale"
        if self._first:
            ok = delta.first_update_id <= (last if pu_rule else last + 1)
        elif pu_rule:
            ok = delta.prev_update_id == last
        else:
            ok = delta.first_update_id == last + 1
        if not ok:
            self.synced = False
            self.counters.gaps += 1
            return "gap"
        self._fold(delta)
        self._first = False
        self.update_id = delta.update_id
        self.ts = delta.ts
        self.counters.applied += 1
        return "ok"

    def _fold(self, delta: BookDelta) -> None:
        bids, asks = self.bids, self.asks
        best = self._best_bid
        for price, qty in delta.bids:
            if qty > 0:
                bids[price] = qty
                if best is not None and price > best:
                    best = price
            elif bids.pop(price, None) is not None and price == best:
                best = None
        self._best_bid = best
        best = self._best_ask
        for price, qty in delta.asks:
            if qty > 0:
                asks[price] = qty
                if best is not None and price < best:
                    best = price
            elif asks.pop(price, None) is not None and price == best:
                best = None
        self._best_ask = best

    # ------------------------------------------------------------------ reading

    def best_bid(self) -> Level | None:
        if not self.bids:
            return None
        if self._best_bid is None:
            self._best_bid = max(self.bids)
        return self._best_bid, self.bids[self._best_bid]

    def best_ask(self) -> Level | None:
        if not self.asks:
            return None
        if self._best_ask is None:
            self._best_ask = min(self.asks)
        return self._best_ask, self.asks[self._best_ask]

    def mid(self) -> float | None:
        bid, ask = self.best_bid(), self.best_ask()
        if bid is None or ask is None:
            return None
        return (bid[0] + ask[0]) / 2

    def top(self, n: int) -> tuple[list[Level], list[Level]]:
        """The best ``n`` levels of each side, best first."""
        bid_prices = heapq.nlargest(n, self.bids)
        ask_prices = heapq.nsmallest(n, self.asks)
        return (
            [(p, self.bids[p]) for p in bid_prices],
            [(p, self.asks[p]) for p in ask_prices],
        )

    def levels(self, side: str, depth: int) -> list[Level]:
        """One side's best ``depth`` levels, best first (the broker's BookView protocol)."""
        if side == "bid":
            return [(p, self.bids[p]) for p in heapq.nlargest(depth, self.bids)]
        return [(p, self.asks[p]) for p in heapq.nsmallest(depth, self.asks)]

    def snapshot(self, n: int | None = None, *, ts: int | None = None) -> BookSnapshot:
        """The book (or its top ``n`` levels) as a BookSnapshot at the last update id."""
        if n is None:
            bids = sorted(self.bids.items(), reverse=True)
            asks = sorted(self.asks.items())
        else:
            bids, asks = self.top(n)
        return BookSnapshot(
            exchange=self.exchange,
            symbol=self.symbol,
            ts=self.ts if ts is None else ts,
            update_id=self.update_id if self.update_id is not None else 0,
            bids=tuple(bids),
            asks=tuple(asks),
        )

    def __len__(self) -> int:
        return len(self.bids) + len(self.asks)
