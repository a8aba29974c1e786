"""``liq liquidations`` over a big store: the whole command (start-up, scan, aggregate, JSON) and
the query alone.

    python benchmarks/liquidations.py [--rows 2000000] [--symbols 50] [--days 30] [--repeat 3]

Writes ``--rows`` liquidations spread over ``--days`` days, three venues and ``--symbols``
symbols (OKX with its dashed venue symbols) into a temporary store through the Store API, then
times ``liq liquidations --by coin --interval 1h`` over the whole range (every row read) and a
one-coin query (partition pruning), best of ``--repeat``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from liqcli.services.liquidations import HistoryQuery, liquidation_history
from liqcli.store.parquet import Store

DAY = 86_400_000


def fill(store: Store, rows: int, symbols: int, days: int, end: int) -> None:
    rng = np.random.default_rng(1)
    coins = [f"C{i}" for i in range(symbols - 1)] + ["BTC"]
    venue = rng.integers(0, 3, rows)
    coin = np.array(coins)[rng.integers(0, len(coins), rows)]
    exchange = np.array(["binance", "okx", "bybit"])[venue]
    symbol = np.char.add(coin, "USDT")
    venue_symbol = np.where(venue == 1, np.char.add(coin, "-USDT-SWAP"), symbol)
    usd = rng.lognormal(8, 2, rows)
    frame = pl.DataFrame(
        {
            "exchange": exchange,
            "symbol": symbol,
            "ts": end - rng.integers(0, days * DAY, rows),
            "side": np.where(rng.random(rows) < 0.5, "long", "short"),
            "price": 100.0,
            "qty": usd / 100.0,
            "notional_usd": usd,
            "venue_symbol": venue_symbol,
        }
    ).with_columns(
        pl.col("ts").cast(pl.Datetime("ms", "UTC")),
        pl.col("ts").cast(pl.Datetime("ms", "UTC")).alias("received_ts"),
    )
    store.write("liquidations", frame)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    end = 1_764_547_200_000  # 2025-12-01
    start = end - args.days * DAY
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        t = time.perf_counter()
        fill(store, args.rows, args.symbols, args.days, end)
        print(f"store: {args.rows:,} rows, {args.symbols} symbols x 3 venues, {args.days} days "
              f"({time.perf_counter() - t:.1f} s to write)")  # fmt: skip
        for label, names in (("every coin", []), ("one coin (BTC)", ["BTC"])):
            query = HistoryQuery(start, end, "1h", "coin", names, top=0)
            rows = liquidation_history(store, query).rows.height
            seconds = best(lambda q=query: liquidation_history(store, q), args.repeat)
            command = [sys.executable, "-m", "liqcli", "--data-dir", tmp, "liquidations",
                       *names, "--by", "coin", "--interval", "1h", "--top", "0", "-f", "json",
                       "--start", str(start), "--end", str(end)]  # fmt: skip
            whole = best(
                lambda c=command: subprocess.run(c, check=True, stdout=subprocess.DEVNULL),
                args.repeat,
            )
            print(
                f"{label:15}  query {seconds:.3f} s, whole command {whole:.3f} s ({rows:,} rows out)"
            )
        print(
            f"data dir size: {sum(f.stat().st_size for f in Path(tmp).rglob('*.parquet')) / 1e6:.0f} MB"
        )


if __name__ == "__main__":
    main()
