"""``liq backtest`` speed: SMA 20/50 cross, long/short always in the market, fill at the next
bar's open, 0.05 % fee per side, on 525,600 one-minute bars (one year); and one day of
BTCUSDT-like trades (``--trades``, default 1M synthetic agg_trades plus a book top every 4th
trade, 250k) through order-flow mode 0 (``--data trades``).

Prints: the whole command (a fresh process: start-up, Parquet scan, engine, metrics, output, the
run stored), the engine alone (µs per bar, CPU and wall), and the same strategy in
backtesting.py when it is installed (``pip install backtesting``; not a dependency of liq);
for the trades: the whole ``liq backtest 0 BTCUSDT --data trades`` command and µs per event.

    python benchmarks/backtest.py [--bars 525600] [--repeat 3] [--trades 1000000] [--only-trades]
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
from liqcli.trading.bars import BarSettings, run_vectorised
from liqcli.trading.costs import Fees
from liqcli.trading.strategies.sma_cross import SmaCross

START = 1_735_689_600_000  # 2025-01-01


def bars(n: int) -> pl.DataFrame:
    rng = np.random.default_rng(42)
    close = 50_000 * np.exp(np.cumsum(rng.normal(0, 0.0008, n)))
    open_ = np.concatenate(([close[0]], close[:-1]))
    spread = np.abs(rng.normal(0, 0.0004, n))
    return pl.DataFrame(
        {
            "ts": START + 60_000 * np.arange(n),
            "open": open_,
            "high": np.maximum(open_, close) * (1 + spread),
            "low": np.minimum(open_, close) * (1 - spread),
            "close": close,
            "volume": rng.uniform(1, 10, n),
        }
    )


def store_klines(root: Path, frame: pl.DataFrame) -> None:
    rows = frame.with_columns(
        pl.col("ts").cast(pl.Datetime("ms", "UTC")),
        exchange=pl.lit("binance"),
        symbol=pl.lit("BTCUSDT"),
        interval=pl.lit("1m"),
        quote_volume=pl.col("volume") * pl.col("close"),
        trades=pl.lit(1, pl.Int64),
        taker_buy_volume=pl.col("volume") / 2,
        taker_buy_quote_volume=pl.col("volume") * pl.col("close") / 2,
    )
    Store(root).write("klines", rows)


def backtesting_py(frame: pl.DataFrame) -> tuple[float, int] | None:
    try:
        import pandas as pd
        from backtesting import Backtest, Strategy
        from backtesting.lib import crossover
    except ImportError:
        return None

    def sma(values, n):
        return pd.Series(values).rolling(n).mean()

    class Cross(Strategy):
        def init(self):
            self.fast = self.I(sma, self.data.Close, 20)
            self.slow = self.I(sma, self.data.Close, 50)

        def next(self):
            if crossover(self.fast, self.slow):
                self.position.close()
                self.buy()
            elif crossover(self.slow, self.fast):
                self.position.close()
                self.sell()

    df = pd.DataFrame({c: frame[c].to_numpy() for c in frame.columns})
    df.index = pd.to_datetime(df.pop("ts"), unit="ms")
    df = df.rename(columns=str.title)
    bt = Backtest(df, Cross, cash=1e12, commission=0.0005, finalize_trades=True)
    started = time.perf_counter()
    stats = bt.run()
    return time.perf_counter() - started, int(stats["# Trades"])


def trade_day(n: int, root: Path) -> int:
    """One day of synthetic BTCUSDT trades (random walk, exponential sizes, random takers) and a
    book top every 4th trade with lognormal queues, stored as agg_trades and book_tops."""
    rng = np.random.default_rng(7)
    ts = START + np.sort(rng.integers(0, 86_400_000, n))
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
    m = every.size
    tops = pl.DataFrame(
        {
            "ts": ts[every],
            "update_id": np.arange(m),
            "bid": price[every] - 0.1,
            "bid_qty": np.round(rng.lognormal(1.0, 1.2, m), 3),
            "ask": price[every],
            "ask_qty": np.round(rng.lognormal(1.0, 1.2, m), 3),
        }
    ).with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC")), **base)
    store = Store(root)
    store.write("agg_trades", trades)
    store.write("book_tops", tops)
    return n + m


def order_flow(n: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        events = trade_day(n, Path(tmp))
        command = [
            sys.executable, "-m", "liqcli", "--data-dir", tmp, "backtest", "0", "BTCUSDT",
            "--data", "trades", "--start", "2025-01-01", "--end", "2025-01-02", "-f", "json",
        ]  # fmt: skip
        walls, cpus, doc = [], [], None
        for _ in range(repeat):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            out = subprocess.run(command, check=True, capture_output=True)
            walls.append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            doc = json.loads(out.stdout)
        assert doc is not None
        best = min(walls)
        print(
            f"order flow, one day: {n:,} agg_trades + {events - n:,} book tops = {events:,} "
            f"events through mode 0; {doc['metrics']['trades']} trades"
        )
        print(
            f"whole command (liq backtest 0 BTCUSDT --data trades, start-up to printed JSON): "
            f"best {best:.2f} s wall = {best / events * 1e6:.2f} µs/event, CPU {min(cpus):.2f} s "
            "(the machine's other load shows in wall, not CPU); runs "
            + ", ".join(f"{w:.2f}" for w in walls)
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bars", type=int, default=525_600)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--trades", type=int, default=1_000_000)
    parser.add_argument("--only-trades", action="store_true")
    args = parser.parse_args()
    if args.trades:
        order_flow(args.trades, args.repeat)
    if args.only_trades:
        return
    frame = bars(args.bars)
    n = frame.height
    settings = BarSettings(fees=Fees(0.0005, 0.0005))
    engine = []
    for _ in range(args.repeat):
        cpu, wall = time.process_time(), time.perf_counter()
        result = run_vectorised(frame, SmaCross(20, 50), settings)
        engine.append((time.perf_counter() - wall, time.process_time() - cpu))
    best_wall = min(w for w, _ in engine)
    best_cpu = min(c for _, c in engine)
    print(f"bars: {n:,}; trades: {len(result.trades):,}")
    print(
        f"engine (run_vectorised): best wall {best_wall:.3f} s = {best_wall / n * 1e6:.2f} µs/bar; "
        f"CPU {best_cpu:.3f} s = {best_cpu / n * 1e6:.2f} µs/bar; runs "
        + ", ".join(f"{w:.3f}" for w, _ in engine)
    )
    with tempfile.TemporaryDirectory() as tmp:
        store_klines(Path(tmp), frame)
        command = [
            sys.executable, "-m", "liqcli", "--data-dir", tmp, "backtest", "sma_cross", "BTCUSDT",
            "--start", "2025-01-01", "--end", "2026-01-01", "--fees", "0.05%,0.05%", "-f", "json",
        ]  # fmt: skip
        walls = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            walls.append(time.perf_counter() - started)
        print(
            f"whole command (start-up to printed JSON, run stored): best {min(walls):.2f} s; runs "
            + ", ".join(f"{w:.2f}" for w in walls)
        )
    if args.no_peer:
        return
    peer = backtesting_py(frame)
    if peer is None:
        print("backtesting.py: not installed (pip install backtesting) - no comparison")
        return
    seconds, trades = peer
    print(
        f"backtesting.py run(): {seconds:.2f} s = {seconds / n * 1e6:.1f} µs/bar, {trades:,} trades; "
        f"liq's whole command is {seconds / min(walls):.1f}x faster, its engine {seconds / best_wall:.0f}x"
    )


if __name__ == "__main__":
    main()
