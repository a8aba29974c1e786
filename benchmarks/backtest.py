"""``liq backtest`` speed: SMA 20/50 cross, long/short always in the market, fill at the next
bar's open, 0.05 % fee per side, on 525,600 one-minute bars (one year); and one day of
BTCUSDT-like trades (``--trades``, default 1M synthetic agg_trades plus a book top every 4th
trade, 250k) through order-flow mode 0 (``--data trades``).

Prints: the engine alone (µs per bar, CPU and wall), the whole command (a fresh process:
start-up, Parquet scan, engine, metrics, output, the run stored; ``-f table`` and ``-f json``),
and, in the same run on the same bars, each peer in its own fresh process: backtesting.py (its
run, and the whole process) and vectorbt (the whole process: imports + numba compilation + first
run; and its warm run), with liq's ratio against each. Peers are found in this interpreter,
each ``--peer-python`` and python3 on PATH; neither is a dependency of liq, and the benchmark
runs without them. Wall times are noisy on a shared machine: CPU times are printed too, best of
``--repeat``, with the load average.

    python benchmarks/backtest.py [--bars 525600] [--repeat 3] [--trades 1000000] [--only-trades]
        [--days 1]
        [--peer-python /path/to/venv/bin/python] [--no-peer]
"""

from __future__ import annotations

import argparse
import json
import os
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


# The peers run in their own fresh processes (the Python that has them: this one, one given
# with --peer-python, or python3 on PATH), on the same bars saved as .npz. Each prints one JSON
# line: the import time, the first run (numba compiles vectorbt's kernels there), warm runs and
# the trade count. Neither is a dependency of liq.
BACKTESTING_PY = """
import json, sys, time
started = time.perf_counter()
import numpy as np, pandas as pd
from backtesting import Backtest, Strategy
from backtesting.lib import crossover
imported = time.perf_counter()
d = np.load(sys.argv[1])
df = pd.DataFrame({c.title(): d[c] for c in ("open", "high", "low", "close", "volume")},
                  index=pd.to_datetime(d["ts"], unit="ms"))

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

runs, cpus, trades = [], [], 0
for _ in range(int(sys.argv[2])):
    t, c = time.perf_counter(), time.process_time()
    bt = Backtest(df, Cross, cash=1e12, commission=0.0005, finalize_trades=True)
    trades = int(bt.run()["# Trades"])
    runs.append(time.perf_counter() - t)
    cpus.append(time.process_time() - c)
print(json.dumps({"import": imported - started, "runs": runs, "cpus": cpus, "trades": trades}))
"""

# Long while SMA20 > SMA50, short while below, always in the market once both exist; the
# target known at a bar's close is executed at the next bar's open; 0.05 % per side.
VECTORBT = """
import json, sys, time
started = time.perf_counter()
import numpy as np, pandas as pd
import vectorbt as vbt
imported = time.perf_counter()
d = np.load(sys.argv[1])
index = pd.to_datetime(d["ts"], unit="ms")
close, open_ = pd.Series(d["close"], index=index), pd.Series(d["open"], index=index)

def run():
    fast = vbt.MA.run(close, 20).ma
    slow = vbt.MA.run(close, 50).ma
    want = pd.Series(np.where(fast > slow, 1.0, np.where(fast < slow, -1.0, np.nan)), index=index)
    execute = want.ffill().shift(1)  # decided at the close, filled at the next open
    long_in = (execute == 1) & (execute.shift(1) != 1)
    short_in = (execute == -1) & (execute.shift(1) != -1)
    pf = vbt.Portfolio.from_signals(
        close, entries=long_in, short_entries=short_in, price=open_, fees=0.0005,
        init_cash=10_000, freq="1min", upon_opposite_entry="reverse",
    )
    return int(pf.trades.count()), float(pf.final_value())

runs, cpus, out = [], [], None
for _ in range(1 + int(sys.argv[2])):
    t, c = time.perf_counter(), time.process_time()
    out = run()
    runs.append(time.perf_counter() - t)
    cpus.append(time.process_time() - c)
print(json.dumps({"import": imported - started, "runs": runs, "cpus": cpus, "trades": out[0]}))
"""


def peer_python(module: str, candidates: list[str]) -> str | None:
    """The first interpreter that can import ``module`` (found without importing it)."""
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    for python in candidates:
        try:
            if subprocess.run([python, "-c", probe], capture_output=True).returncode == 0:
                return python
        except OSError:
            continue
    return None


def run_peer(python: str, script: str, data: Path, repeat: int) -> dict:
    """One fresh process: wall and CPU of the whole process, and what the script measured."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run(
        [python, "-c", script, str(data), str(repeat)], check=True, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    doc["process_wall"] = wall
    doc["process_cpu"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return doc


def peers(frame: pl.DataFrame, pythons: list[str], repeat: int, liq: dict[str, float]) -> None:
    n = frame.height
    candidates = [sys.executable, *pythons, "python3"]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "bars.npz"
        np.savez(data, **{c: frame[c].to_numpy() for c in frame.columns})
        for name, module, script in (
            ("backtesting.py", "backtesting", BACKTESTING_PY),
            ("vectorbt", "vectorbt", VECTORBT),
        ):
            python = peer_python(module, candidates)
            if python is None:
                print(f"{name}: not installed (no interpreter among {candidates} has it; give "
                      "--peer-python PATH) - no comparison")  # fmt: skip
                continue
            try:
                doc = run_peer(python, script, data, repeat if module == "vectorbt" else 1)
            except subprocess.CalledProcessError as exc:
                tail = (exc.stderr or "").strip().splitlines()[-1:] or ["?"]
                print(f"{name} ({python}): failed: {tail[0]}")
                continue
            runs, cpus = doc["runs"], doc["cpus"]
            warm, warm_cpu = min(runs[1:] or runs), min(cpus[1:] or cpus)
            print(
                f"{name} ({python}): fresh process {doc['process_wall']:.2f} s wall, "
                f"CPU {doc['process_cpu']:.2f} s (imports {doc['import']:.2f} s wall, first run "
                f"{runs[0]:.2f} s wall / {cpus[0]:.2f} s CPU); run {warm:.2f} s wall, "
                f"{warm_cpu:.2f} s CPU = {warm_cpu / n * 1e6:.1f} µs/bar; {doc['trades']:,} trades"
            )
            print(
                f"  liq's whole command is {doc['process_cpu'] / liq['cpu']:.1f}x faster than its "
                f"fresh process in CPU ({doc['process_wall'] / liq['wall']:.1f}x wall), "
                f"{warm_cpu / liq['cpu']:.1f}x than its run alone in CPU "
                f"({warm / liq['wall']:.1f}x wall); liq's engine vs its run "
                f"{warm_cpu / liq['engine_cpu']:.1f}x (CPU)"
            )


def trade_day(n: int, root: Path, day: int = 0) -> int:
    """One day (``day`` days after 2025-01-01) of synthetic BTCUSDT trades (random walk,
    exponential sizes, random takers) and a book top every 4th trade with lognormal queues,
    stored as agg_trades and book_tops."""
    rng = np.random.default_rng(7 + day)
    ts = START + day * 86_400_000 + np.sort(rng.integers(0, 86_400_000, n))
    price = np.round(60_000 * np.exp(np.cumsum(rng.normal(0, 4e-5, n))), 1)
    base = {"exchange": pl.lit("binance"), "symbol": pl.lit("BTCUSDT")}
    trades = pl.DataFrame(
        {
            "trade_id": day * n + np.arange(n),
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
            "update_id": day * m + np.arange(m),
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


# ``python -m liqcli ARGS``, then its own peak RSS on stderr (VmHWM, Linux): the parent's
# rusage of children would count this big process's pages at the fork.
PEAK_RSS = """
import runpy, sys
sys.argv = ["liq", *sys.argv[1:]]
try:
    runpy.run_module("liqcli", run_name="__main__", alter_sys=True)
finally:
    try:
        with open("/proc/self/status") as status:
            kb = [line.split()[1] for line in status if line.startswith("VmHWM:")]
        print("peak-rss", *kb, file=sys.stderr)
    except OSError:
        pass
"""


def order_flow(n: int, repeat: int, days: int = 1) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        events = sum(trade_day(n, Path(tmp), day) for day in range(days))
        end = f"2025-01-{1 + days:02d}"
        command = [
            sys.executable, "-c", PEAK_RSS, "--data-dir", tmp, "backtest", "0", "BTCUSDT",
            "--data", "trades", "--start", "2025-01-01", "--end", end, "-f", "json",
        ]  # fmt: skip
        walls, cpus, peaks, doc = [], [], [], None
        for _ in range(repeat):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            out = subprocess.run(command, check=True, capture_output=True, text=True)
            walls.append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            peaks += [
                int(line.split()[1]) for line in out.stderr.splitlines() if "peak-rss" in line
            ]
            doc = json.loads(out.stdout)
        assert doc is not None
        best = min(walls)
        print(
            f"order flow, {days} day(s) of {n:,} agg_trades + {(events - n * days) // days:,} "
            f"book tops = {events:,} events through mode 0; {doc['metrics']['trades']} trades"
        )
        print(
            f"whole command (liq backtest 0 BTCUSDT --data trades, start-up to printed JSON): "
            f"best {best:.2f} s wall = {best / events * 1e6:.2f} µs/event, CPU {min(cpus):.2f} s "
            "(the machine's other load shows in wall, not CPU); runs "
            + ", ".join(f"{w:.2f}" for w in walls)
            + (f"; peak RSS {max(peaks) / 1024:,.0f} MB" if peaks else "")
        )


def whole_command(data_dir: str, fmt: str, repeat: int) -> dict[str, float]:
    command = [
        sys.executable, "-m", "liqcli", "--data-dir", data_dir, "backtest", "sma_cross",
        "BTCUSDT", "--start", "2025-01-01", "--end", "2026-01-01", "--fees", "0.05%,0.05%",
        "-f", fmt,
    ]  # fmt: skip
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    print(
        f"whole command, -f {fmt} (fresh process: start-up, Parquet scan, engine, metrics, "
        f"output, run stored): best {min(walls):.2f} s wall, CPU {min(cpus):.2f} s; runs "
        + ", ".join(f"{w:.2f}/{c:.2f}" for w, c in zip(walls, cpus, strict=True))
        + " (wall/CPU)"
    )
    return {"wall": min(walls), "cpu": min(cpus)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=525_600)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-peer", action="store_true", help="skip backtesting.py and vectorbt")
    parser.add_argument(
        "--peer-python",
        action="append",
        default=[],
        metavar="PATH",
        help="an interpreter that has vectorbt and/or backtesting.py (repeatable); this one "
        "and python3 on PATH are tried too",
    )
    parser.add_argument("--trades", type=int, default=1_000_000)
    parser.add_argument("--only-trades", action="store_true")
    parser.add_argument("--days", type=int, default=1, help="days of --trades each (memory)")
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"{os.cpu_count()} CPUs; figures are best of {args.repeat}")  # fmt: skip
    if args.trades:
        order_flow(args.trades, args.repeat, args.days)
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
        + ", ".join(f"{w:.3f}/{c:.3f}" for w, c in engine)
        + " (wall/CPU)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        store_klines(Path(tmp), frame)
        liq = whole_command(tmp, "table", args.repeat)
        whole_command(tmp, "json", args.repeat)  # the same plus every trade on stdout
    liq["engine_cpu"] = best_cpu
    if not args.no_peer:
        peers(frame, args.peer_python, args.repeat, liq)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
