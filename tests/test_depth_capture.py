"""A depth session in the real capture format (tests/data, synthetic values in the frames
Binance sends, TRADING-VENUES.md §6) replays through the parser and L2Book with zero gaps."""

from __future__ import annotations

from pathlib import Path

from tests.captures import replay_depth

DATA = Path(__file__).parent / "data"


def test_real_format_capture_replays_with_zero_gaps() -> None:
    replay = replay_depth(DATA / "binance_futures.ws.txt", DATA / "binance_futures.http.txt")
    assert set(replay.books) == {"BTCUSDT", "DOGEUSDT"}
    for symbol, book in replay.books.items():
        counters = book.counters
        assert counters.gaps == 0 and book.synced, symbol
        assert counters.loads == 1
        assert counters.stale > 0  # diffs buffered before the snapshot were dropped, not applied
        assert counters.applied + counters.stale == replay.deltas[symbol]
        (bid, _), (ask, _) = book.best_bid(), book.best_ask()
        assert bid < ask  # an uncrossed book
    # bookTicker's u shares the depth id space and runs ahead of the 100 ms diff.
    assert replay.tops > 0 and replay.tops_ahead == replay.tops


def test_a_lost_frame_in_the_capture_is_found(tmp_path) -> None:
    lines = (DATA / "binance_futures.ws.txt").read_text().splitlines()
    # Drop one BTCUSDT diff well after the snapshot: the chain breaks there.
    depth = [i for i, line in enumerate(lines) if "btcusdt@depth" in line]
    del lines[depth[-10]]
    broken = tmp_path / "ws.txt"
    broken.write_text("\n".join(lines) + "\n")
    replay = replay_depth(broken, DATA / "binance_futures.http.txt")
    assert replay.books["BTCUSDT"].counters.gaps == 1 and not replay.books["BTCUSDT"].synced
    assert replay.books["DOGEUSDT"].counters.gaps == 0
