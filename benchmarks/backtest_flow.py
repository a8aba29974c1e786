"""``liq backtest --data trades`` per stage, in one process: where the order-flow backtest's time
goes (the whole command is ``benchmarks/backtest.py --only-trades``).

Same synthetic day as benchmarks/backtest.py (``trade_day``: N agg_trades and a book top every
4th trade), stored once; then, per repeat, CPU time (``time.process_time``) and wall of:
the tape load (``tape`` + ``depth_snapshots``: Parquet scan, Polars merge), the feed
(``_Driver.feed_gated``, what the command runs: the features of every row at once, the engine,
modes and brokers stepped only where a mode can act), and the result documents.

``--full`` also times, once, ``_Driver.feed_tape`` (every row through the engine, the features
updated per event: what a session replay runs) and checks that both give the same documents.

    python benchmarks/backtest_flow.py [--trades 1000000] [--repeat 3] [--modes 0] [--profile N]
        [--compare-leverage] [--full]

``--compare-leverage``: every dynamic-leverage engine (off, rules, kelly, vol_target) on the same
events, as ``liq backtest --compare-leverage``.

``--profile N``: cProfile one feed and print the top N functions by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from backtest import START, trade_day

from liqcli.services import backtest_flow as svc
from liqcli.store.parquet import Store


def timed(fn, *args):
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn(*args)
    return out, time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--modes", default="0", help="0, 1, 2, 3 or all")
    parser.add_argument("--dynamic", default="off")
    parser.add_argument("--profile", type=int, default=0)
    parser.add_argument("--compare-leverage", action="store_true", help="all four engines")
    parser.add_argument("--full", action="store_true", help="also feed every row; compare")
    args = parser.parse_args()
    dynamics = svc.DYNAMIC if args.compare_leverage else (args.dynamic,)
    with tempfile.TemporaryDirectory() as tmp:
        events = trade_day(args.trades, Path(tmp))
        store = Store(Path(tmp))
        settings = svc.FlowSettings(
            symbol="BTCUSDT",
            modes=svc.parse_modes(args.modes),
            start_ms=START,
            end_ms=START + 86_400_000,
            data="trades",
        )
        print(
            f"{args.trades:,} agg_trades + {events - args.trades:,} book tops = {events:,} "
            f"events, modes {','.join(settings.modes)}, dynamic {','.join(dynamics)}; "
            f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
        )
        for n in range(args.repeat):
            (frame, snaps), load_cpu, load_wall = timed(
                lambda: (svc.tape(store, settings), svc.depth_snapshots(store, settings))
            )
            driver = svc._Driver(settings, dynamics)
            assert driver.can_gate(snaps)
            _, feed_cpu, feed_wall = timed(driver.feed_gated, [frame])  # one part

            def documents(driver=driver):
                driver.finish()
                return [svc._document(driver, r, m) for r in driver.runs for m in settings.modes]

            docs, doc_cpu, _ = timed(documents)
            trades = sum(d["metrics"]["trades"] for d in docs)
            total = load_cpu + feed_cpu + doc_cpu
            print(
                f"run {n + 1}: load {load_cpu:.2f} s CPU ({load_wall:.2f} wall) | feed "
                f"{feed_cpu:.2f} s CPU ({feed_wall:.2f} wall) = {feed_cpu / events * 1e6:.2f} "
                f"µs/event | documents {doc_cpu:.2f} s | total {total:.2f} s CPU; "
                f"{trades} trades, final equity "
                + ", ".join(f"{d['metrics']['final_equity']:.4f}" for d in docs)
                + f"; {driver.stepped:,} of {driver.events:,} events stepped"
            )
        if args.full:
            full = svc._Driver(settings, dynamics)
            _, cpu, wall = timed(full.feed_tape, [frame], snaps)
            full.finish()
            same = [
                {k: v for k, v in svc._document(full, r, m).items() if k != "_equity"}
                for r in full.runs
                for m in settings.modes
            ] == [{k: v for k, v in d.items() if k != "_equity"} for d in docs]
            print(
                f"full feed (every event stepped): {cpu:.2f} s CPU ({wall:.2f} wall) = "
                f"{cpu / events * 1e6:.2f} µs/event, {feed_cpu and cpu / feed_cpu:.1f}x the "
                f"gated feed's; same documents: {same}"
            )
            assert same
        if args.profile:
            frame, snaps = svc.tape(store, settings), svc.depth_snapshots(store, settings)
            driver = svc._Driver(settings, dynamics)
            prof = cProfile.Profile()
            prof.runcall(driver.feed_gated, [frame])
            pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    main()
