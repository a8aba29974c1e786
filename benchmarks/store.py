"""Parquet store and live-event journal throughput.

    python benchmarks/store.py [--rows 1000000] [--days 30]

Synthetic liquidations spread over ``--days`` day files of one partition, in a temporary data
directory. Timed: ``Journal.append`` (the hot path, background flusher running), ``Journal.close``
(flush + compaction into Parquet), ``Store.write`` of fresh rows and of the same rows again
(the idempotent re-write that touches nothing), ``Store.read`` and ``Store.last_ts``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import polars as pl

from liqcli.store import Journal, Store

T0 = 1_767_225_600_000  # 2026-01-01
DAY = 86_400_000


def rows_frame(count: int, days: int, seed: int = 1) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    ts = T0 + np.sort(rng.integers(0, days * DAY, count))
    price = 100_000 + rng.normal(0, 500, count)
    qty = rng.exponential(0.05, count)
    return pl.DataFrame(
        {
            "exchange": "binance",
            "symbol": "BTCUSDT",
            "ts": ts,
            "side": np.where(rng.random(count) < 0.5, "long", "short"),
            "price": price,
            "qty": qty,
            "notional_usd": price * qty,
            "venue_symbol": "BTCUSDT",
            "received_ts": ts + 5,
        }
    )


def timed(label: str, rows: int, action) -> object:
    start = time.perf_counter()
    result = action()
    seconds = time.perf_counter() - start
    rate = f"{rows / seconds:>12,.0f} rows/s" if rows else ""
    print(f"{label:<34} {seconds * 1000:>9.1f} ms {rate}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    frame = rows_frame(args.rows, args.days)
    dicts = frame.to_dicts()

    with tempfile.TemporaryDirectory() as root:
        store = Store(root)
        journal = Journal(store, "liquidations", compact_interval=3600, compact_rows=10**9)
        journal.open()

        def append_all() -> None:
            append = journal.append
            for row in dicts:
                append(row)

        timed("Journal.append", len(dicts), append_all)
        timed("Journal.close (flush + compact)", len(dicts), journal.close)

    with tempfile.TemporaryDirectory() as root:
        store = Store(root)
        result = timed(
            f"Store.write (new, {args.days} files)",
            args.rows,
            lambda: store.write("liquidations", frame),
        )
        assert result.new_rows == args.rows
        result = timed(
            "Store.write (same rows again)", args.rows, lambda: store.write("liquidations", frame)
        )
        assert result.files == []
        df = timed("Store.read (all)", args.rows, lambda: store.read("liquidations"))
        assert df.height == args.rows
        last = timed(
            "Store.last_ts",
            0,
            lambda: store.last_ts("liquidations", exchange="binance", symbol="BTCUSDT"),
        )
        assert last == frame["ts"].max()


if __name__ == "__main__":
    main()
