"""Order-flow features for a whole tape at once (``feature_columns``, numpy) against feeding the
same rows one by one through the incremental ``OrderFlow`` (what the backtest does today).

Same synthetic day as benchmarks/backtest.py (``trade_day``: N agg_trades and a book top every
4th trade), loaded with ``backtest_flow.tape()``. Prints the best CPU and wall of ``--repeat``
runs of ``feature_columns`` on every row, and of the incremental feed on the first
``--incremental`` rows (scaled to the whole tape), then checks the two agree on those rows.

    python benchmarks/features.py [--trades 3000000] [--repeat 3] [--incremental 300000]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from backtest import START, trade_day

from liqcli.analytics.orderflow import OrderFlow, feature_columns
from liqcli.services import backtest_flow as svc
from liqcli.store.parquet import Store


def incremental(ts, kind, a, b, c, d):
    flow = OrderFlow()
    on_trade, on_book, s = flow.on_trade, flow.on_book, flow.snapshot
    rows = zip(
        ts.tolist(), kind.tolist(), a.tolist(), b.tolist(), c.tolist(), d.tolist(), strict=True
    )
    for t, k, pa, pb, pc, pd in rows:
        if k == svc.TRADE:
            on_trade(t, pa, pb, bool(pc))
        elif k == svc.TOP:
            on_book(t, [(pa, pb)] if pb > 0 else [], [(pc, pd)] if pd > 0 else [])
    return s.signed_volume, s.vpin, s.atr_ratio, s.obi, s.microprice


def best(fn, repeat):
    cpus, walls, out = [], [], None
    for _ in range(repeat):
        cpu, wall = time.process_time(), time.perf_counter()
        out = fn()
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return out, min(cpus), min(walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, default=3_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--incremental", type=int, default=300_000, help="rows fed one by one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        events = trade_day(args.trades, Path(tmp))
        settings = svc.FlowSettings(
            symbol="BTCUSDT",
            modes=("0",),
            start_ms=START,
            end_ms=START + 86_400_000,
            data="trades",
        )
        frame = svc.tape(Store(Path(tmp)), settings, warn=False)
    columns = [frame[name].to_numpy() for name in ("ts", "kind", "a", "b", "c", "d")]
    n = len(frame)
    print(
        f"{args.trades:,} agg_trades + {events - args.trades:,} book tops = {n:,} rows; "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    got, cpu, wall = best(
        lambda: feature_columns(*columns, trade_kind=svc.TRADE, top_kind=svc.TOP), args.repeat
    )
    print(
        f"feature_columns, {n:,} rows: {cpu:.3f} s CPU, {wall:.3f} s wall (best of {args.repeat})"
    )
    m = min(args.incremental, n)
    part = [column[:m] for column in columns]
    last, cpu, wall = best(lambda: incremental(*part), 1)
    scale = n / m
    print(
        f"OrderFlow row by row, {m:,} rows: {cpu:.3f} s CPU, {wall:.3f} s wall "
        f"(x{scale:.1f} = {cpu * scale:.2f} s CPU for {n:,} rows)"
    )
    head = feature_columns(*part, trade_kind=svc.TRADE, top_kind=svc.TOP)
    names = ("signed_volume", "vpin", "atr_ratio", "obi", "microprice")
    for name, want in zip(names, last, strict=True):
        value = float(head[name][-1])
        same = math.isnan(value) if want is None else value == want
        if not same:
            raise SystemExit(f"{name} differs after {m:,} rows: {value!r} != {want!r}")
    print(f"the last snapshot of the {m:,} rows is identical ({', '.join(names)})")
    del got


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
