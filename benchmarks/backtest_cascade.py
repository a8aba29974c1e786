"""``liq backtest cascade BTCUSDT --data trades``: one day of BTCUSDT-like agg_trades (``--trades``,
default 1M, random walk), a book top every 4th trade, and liquidations (``--liquidations``,
default 20k: bursts of one side, as cascades come, between quiet singles), all stored, through
the cascade mode (liq cascade's detector per trade and liquidation) and, for comparison, mode 0.

Prints, per command, the whole command (a fresh process: start-up, Parquet scans, the merged
tape, engine, metrics, the run stored) as CPU time (best of ``--repeat``) and µs per event.

    python benchmarks/backtest_cascade.py [--trades 1000000] [--liquidations 20000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from liqcli.store.parquet import Store

START = 1_735_689_600_000  # 2025-01-01
DAY = 86_400_000


def store_day(root: Path, n: int, n_liq: int) -> int:
    rng = np.random.default_rng(11)
    ts = START + np.sort(rng.integers(0, DAY, n))
    price = np.round(60_000 * np.exp(np.cumsum(rng.normal(0, 4e-5, n))), 1)
    base = {"exchange": pl.lit("binance"), "symbol": pl.lit("BTCUSDT")}
    trades = pl.DataFrame(
        {
            "trade_id": np.arange(n),
            "ts": ts,
            "price": price,
            "qty": np.round(rng.exponential(0.05, n), 3) + 0.001,
            "is_buyer_maker": rng.random(n) < 0.5,
        }
    ).with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC")), **base)
    every = np.arange(0, n, 4)
    tops = pl.DataFrame(
        {
            "ts": ts[every],
            "update_id": np.arange(every.size),
            "bid": price[every] - 0.1,
            "bid_qty": np.round(rng.lognormal(1.0, 1.2, every.size), 3),
            "ask": price[every],
            "ask_qty": np.round(rng.lognormal(1.0, 1.2, every.size), 3),
        }
    ).with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC")), **base)
    # Half the liquidations in 40 one-sided bursts of ~2 minutes, half scattered singles.
    bursts = n_liq // 2
    starts = rng.integers(0, DAY - 120_000, 40)
    burst_ts = starts[rng.integers(0, 40, bursts)] + rng.integers(0, 120_000, bursts)
    burst_side = np.where(starts[rng.integers(0, 40, bursts)] % 2 == 0, "long", "short")
    single_ts = rng.integers(0, DAY, n_liq - bursts)
    liq_ts = START + np.concatenate([burst_ts, single_ts])
    sides = np.concatenate(
        [burst_side, np.where(rng.random(n_liq - bursts) < 0.5, "long", "short")]
    )
    idx = np.searchsorted(ts, liq_ts).clip(0, n - 1)
    usd = np.round(rng.lognormal(10.5, 1.3, n_liq), 2)
    liquidations = pl.DataFrame(
        {
            "ts": liq_ts,
            "side": sides,
            "price": price[idx],
            "qty": usd / price[idx],
            "notional_usd": usd,
            "venue_symbol": "BTCUSDT",
            "received_ts": liq_ts + 50,
        }
    ).with_columns(pl.col("ts", "received_ts").cast(pl.Datetime("ms", "UTC")), **base)
    store = Store(root)
    store.write("agg_trades", trades)
    store.write("book_tops", tops)
    store.write("liquidations", liquidations)
    return n + every.size


def run(tmp: str, mode: str, repeat: int) -> tuple[float, float, dict]:
    command = [
        sys.executable, "-m", "liqcli", "--data-dir", tmp, "backtest", mode, "BTCUSDT",
        "--data", "trades", "--start", "2025-01-01", "--end", "2025-01-02", "--funding", "off",
        "-f", "json",
    ]  # fmt: skip
    cpus, walls, doc = [], [], {}
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        out = subprocess.run(command, check=True, capture_output=True)
        walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        doc = json.loads(out.stdout)
    return min(cpus), min(walls), doc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trades", type=int, default=1_000_000)
    parser.add_argument("--liquidations", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        market = store_day(Path(tmp), args.trades, args.liquidations)
        print(
            f"one day: {args.trades:,} agg_trades + {market - args.trades:,} book tops "
            f"(+ {args.liquidations:,} liquidations for the cascade mode)"
        )
        for mode in ("0", "cascade"):
            cpu, wall, doc = run(tmp, mode, args.repeat)
            events = doc["bars"]
            print(
                f"liq backtest {mode} BTCUSDT --data trades: {events:,} events, "
                f"{doc['metrics']['trades']} trades; whole command CPU {cpu:.2f} s "
                f"= {cpu / events * 1e6:.2f} µs/event (wall {wall:.2f} s, best of {args.repeat})"
            )


if __name__ == "__main__":
    main()
