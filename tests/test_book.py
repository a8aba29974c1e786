"""L2Book against a brute-force rebuild from snapshot + diffs (hypothesis), and its
sequencing rules (Binance futures ``pu`` chain, spot-style contiguous ids)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liqcli.core.events import BookDelta, BookSnapshot
from liqcli.trading.book import L2Book

PRICES = st.integers(1, 40).map(lambda i: i / 10)  # a small grid: updates hit the same levels
QTYS = st.sampled_from([0.0, 0.0, 1.0, 2.5, 7.0, 100.0])  # qty 0 deletes
LEVELS = st.lists(st.tuples(PRICES, QTYS), max_size=8)


def snap(update_id: int, bids=(), asks=()) -> BookSnapshot:
    return BookSnapshot("binance", "X", 0, update_id, tuple(bids), tuple(asks))


def delta(first: int, last: int, prev: int, bids=(), asks=(), ts: int = 0) -> BookDelta:
    return BookDelta("binance", "X", ts, first, last, prev, tuple(bids), tuple(asks))


def rebuild(snapshot: BookSnapshot, diffs: list[BookDelta]) -> tuple[dict, dict]:
    """The obvious way: start from the snapshot, overwrite each level in order, drop zeros."""
    bids = {p: q for p, q in snapshot.bids}
    asks = {p: q for p, q in snapshot.asks}
    for d in diffs:
        for side, levels in ((bids, d.bids), (asks, d.asks)):
            for p, q in levels:
                side[p] = q
    return {p: q for p, q in bids.items() if q > 0}, {p: q for p, q in asks.items() if q > 0}


@st.composite
def sessions(draw):
    """A snapshot at L, diffs straddling it (some before L: stale), then a pu-linked chain."""
    snapshot_bids = draw(st.lists(st.tuples(PRICES, QTYS.filter(bool)), max_size=10))
    snapshot_asks = draw(st.lists(st.tuples(PRICES, QTYS.filter(bool)), max_size=10))
    # Diffs as (U, u) ranges over consecutive update ids; the snapshot lands inside one of them.
    sizes = draw(st.lists(st.integers(1, 5), min_size=1, max_size=40))
    diffs, u, prev = [], 1000, 990
    for size in sizes:
        first, u = u + 1, u + size
        diffs.append(delta(first, u, prev, draw(LEVELS), draw(LEVELS), ts=u))
        prev = u
    at = draw(st.integers(0, len(diffs) - 1))  # the diff whose range holds lastUpdateId
    last_update_id = draw(st.integers(diffs[at].first_update_id, diffs[at].update_id))
    snapshot = BookSnapshot(
        "binance", "X", 0, last_update_id, tuple(snapshot_bids), tuple(snapshot_asks)
    )
    return snapshot, diffs, at


def assert_same(book: L2Book, bids: dict, asks: dict) -> None:
    assert book.bids == bids and book.asks == asks
    assert book.best_bid() == ((max(bids), bids[max(bids)]) if bids else None)
    assert book.best_ask() == ((min(asks), asks[min(asks)]) if asks else None)
    top_bids, top_asks = book.top(3)
    assert top_bids == sorted(bids.items(), reverse=True)[:3]
    assert top_asks == sorted(asks.items())[:3]


@settings(max_examples=300, deadline=None)
@given(sessions())
def test_book_equals_brute_force_rebuild(session) -> None:
    snapshot, diffs, at = session
    book = L2Book("X", "binance")
    book.load(snapshot)
    results, applied = [], []
    for d in diffs:
        results.append(book.apply(d))
        if results[-1] == "ok":
            applied.append(d)
        # After every step: the cached best prices must follow deletions of the best level.
        assert_same(book, *rebuild(snapshot, applied))
    # Diffs ending before lastUpdateId are stale; the one holding it and all later ones apply.
    expected = ["stale" if d.update_id < snapshot.update_id else "ok" for d in diffs]
    assert results == expected
    assert applied[0] is diffs[at] or diffs[at].update_id < snapshot.update_id
    assert_same(book, *rebuild(snapshot, applied))
    assert book.update_id == diffs[-1].update_id and book.synced
    assert book.counters.applied == len(applied)
    assert book.counters.stale == len(diffs) - len(applied)
    assert book.counters.gaps == 0


@settings(max_examples=200, deadline=None)
@given(sessions(), st.data())
def test_a_missing_diff_is_a_gap_and_a_fresh_snapshot_resyncs(session, data) -> None:
    snapshot, diffs, at = session
    if len(diffs) - at < 3:
        return  # no room for a gap after the first applied diff
    lost = data.draw(st.integers(at + 1, len(diffs) - 2))  # a diff the client never receives
    book = L2Book("X", "binance")
    book.load(snapshot)
    for d in diffs[:lost]:
        assert book.apply(d) in ("ok", "stale")
    before = (dict(book.bids), dict(book.asks))
    assert book.apply(diffs[lost + 1]) == "gap"
    assert not book.synced and book.counters.gaps == 1
    assert (book.bids, book.asks) == before  # a gap changes nothing
    assert book.apply(diffs[lost + 1]) == "gap" and book.counters.gaps == 1  # counted once
    # Resync: the server's book as of diffs[lost + 1], then the rest of the chain.
    server_bids, server_asks = rebuild(
        snapshot, [d for d in diffs[: lost + 2] if d.update_id >= snapshot.update_id]
    )
    fresh = snap(diffs[lost + 1].update_id, server_bids.items(), server_asks.items())
    book.load(fresh)
    for d in diffs[lost + 1 :]:
        book.apply(d)
    assert_same(book, *rebuild(fresh, diffs[lost + 2 :]))
    assert book.counters.resyncs == 1


def test_first_diff_rules_futures() -> None:
    book = L2Book()
    book.load(snap(100, [(1.0, 1.0)], [(2.0, 1.0)]))
    assert book.apply(delta(90, 99, 89, [(1.0, 5.0)])) == "stale"  # u < L
    assert book.apply(delta(101, 105, 99)) == "gap"  # U > L: the diff holding L was missed
    book.load(snap(100, [(1.0, 1.0)], [(2.0, 1.0)]))
    assert book.apply(delta(95, 100, 94, [(1.0, 3.0)])) == "ok"  # U <= L <= u, u == L allowed
    assert book.apply(delta(101, 101, 100, [], [(2.0, 0.0), (2.5, 4.0)])) == "ok"
    assert book.best_bid() == (1.0, 3.0) and book.best_ask() == (2.5, 4.0)
    assert book.apply(delta(101, 101, 100)) == "stale"  # delivered twice: dropped, not a gap
    assert book.apply(delta(103, 104, 102)) == "gap"  # pu != previous u


def test_contiguous_rule() -> None:
    book = L2Book(rule="contiguous")
    book.load(snap(100))
    assert book.apply(delta(90, 100, -1)) == "stale"  # u <= L
    assert book.apply(delta(101, 103, -1, [(5.0, 1.0)])) == "ok"  # U <= L + 1 <= u
    assert book.apply(delta(104, 104, -1)) == "ok"
    assert book.apply(delta(106, 107, -1)) == "gap"  # 105 missing
    with pytest.raises(ValueError):
        L2Book(rule="nope")  # type: ignore[arg-type]


def test_unsynced_book_and_snapshot_helpers() -> None:
    book = L2Book("BTCUSDT", "binance")
    assert book.apply(delta(1, 2, 0)) == "gap" and book.best_bid() is None and book.mid() is None
    book.load(snap(10, [(99.0, 1.0), (100.0, 2.0), (98.0, 0.0)], [(101.0, 3.0), (102.0, 1.0)]))
    assert len(book) == 4 and book.mid() == 100.5  # the qty-0 snapshot level is not a level
    top = book.snapshot(1, ts=5)
    assert top.bids == ((100.0, 2.0),) and top.asks == ((101.0, 3.0),)
    assert (top.ts, top.update_id, top.symbol) == (5, 10, "BTCUSDT")
    full = book.snapshot()
    assert full.bids == ((100.0, 2.0), (99.0, 1.0)) and len(full.asks) == 2
