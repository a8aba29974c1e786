"""L2Book and depth-parse cost per diff.

    python benchmarks/book.py [--diffs 200000] [--levels 1000] [--per-diff 8]
        [--capture WS_FILE HTTP_FILE]

Synthetic Binance futures diffs (``--per-diff`` level changes each, a quarter of them deletes,
prices near the top of a ``--levels``-deep book). Timed separately: ``L2Book.apply`` alone, the
depthUpdate parse (``parse_market_message`` of a decoded frame) plus apply, and ``top(20)``.
``--capture`` replays a cryptofeed-format capture (e.g. a recorded Binance futures session)
and prints each symbol's book counters (gaps must be 0).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.captures

from liqcli.core.events import BookSnapshot
from liqcli.exchanges.binance import stream as binance
from liqcli.trading.book import L2Book

TICK = 0.1
MID = 87_000.0


def synthetic(count: int, levels: int, per_diff: int, seed: int = 3):
    rng = random.Random(seed)
    bids = tuple((round(MID - TICK * (i + 1), 1), rng.uniform(0.1, 9)) for i in range(levels))
    asks = tuple((round(MID + TICK * (i + 1), 1), rng.uniform(0.1, 9)) for i in range(levels))
    snapshot = BookSnapshot("binance", "BTCUSDT", 0, 1001, bids, asks)  # inside the 1st diff
    frames, deltas = [], []
    u = 1000
    for n in range(count):
        changes = {"b": [], "a": []}
        for _ in range(per_diff):
            side = rng.choice("ba")
            k = int(rng.expovariate(1 / 15)) + 1  # mostly near the top
            price = MID - TICK * k if side == "b" else MID + TICK * k
            qty = 0.0 if rng.random() < 0.25 else round(rng.uniform(0.1, 9), 3)
            changes[side].append([f"{price:.1f}", f"{qty:g}"])
        first, prev, u = u + 1, u, u + per_diff
        frame = {
            "stream": "btcusdt@depth@100ms",
            "data": {
                "e": "depthUpdate",
                "E": n,
                "T": n,
                "s": "BTCUSDT",
                "U": first,
                "u": u,
                "pu": prev,
                "b": changes["b"],
                "a": changes["a"],
            },
        }
        frames.append(frame)
        deltas.append(binance.parse_market_message(frame)[0])
    return snapshot, frames, deltas


def bench(args: argparse.Namespace) -> None:
    snapshot, frames, deltas = synthetic(args.diffs, args.levels, args.per_diff)
    book = L2Book("BTCUSDT", "binance")
    book.load(snapshot)
    apply = book.apply
    t0 = time.perf_counter()
    for delta in deltas:
        apply(delta)
    t_apply = time.perf_counter() - t0
    assert book.counters.gaps == 0 and book.counters.applied == len(deltas)

    book = L2Book("BTCUSDT", "binance")
    book.load(snapshot)
    parse, apply = binance.parse_market_message, book.apply
    t0 = time.perf_counter()
    for frame in frames:
        for delta in parse(frame):
            apply(delta)
    t_both = time.perf_counter() - t0

    rounds = max(args.diffs // 100, 100)
    t0 = time.perf_counter()
    for _ in range(rounds):
        book.top(20)
        book.best_bid()
        book.best_ask()
    t_top = time.perf_counter() - t0
    n = len(deltas)
    print(f"book: {args.levels} levels/side, {n} diffs of {args.per_diff} level changes")
    print(
        f"  L2Book.apply           {t_apply / n * 1e6:6.2f} us/diff  ({n / t_apply:,.0f} diffs/s)"
    )
    print(f"  parse + apply          {t_both / n * 1e6:6.2f} us/diff  ({n / t_both:,.0f} diffs/s)")
    print(f"  top(20) + best bid/ask {t_top / rounds * 1e6:6.2f} us  ({len(book)} levels in book)")


def capture(ws: Path, http: Path) -> None:
    from tests.captures import replay_depth

    t0 = time.perf_counter()
    replay = replay_depth(ws, http)
    elapsed = time.perf_counter() - t0
    print(f"capture {ws.name}: replayed in {elapsed:.3f} s")
    for symbol, book in replay.books.items():
        c = book.counters
        print(
            f"  {symbol:10s} diffs {replay.deltas.get(symbol, 0):5d} applied {c.applied:5d} "
            f"stale {c.stale:3d} gaps {c.gaps} synced {book.synced}"
        )
    print(f"  bookTicker u ahead of the applied depth u: {replay.tops_ahead}/{replay.tops}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diffs", type=int, default=200_000)
    parser.add_argument("--levels", type=int, default=1000)
    parser.add_argument("--per-diff", type=int, default=8)
    parser.add_argument("--capture", nargs=2, type=Path, metavar=("WS_FILE", "HTTP_FILE"))
    args = parser.parse_args()
    if args.capture:
        capture(*args.capture)
    else:
        bench(args)


if __name__ == "__main__":
    main()
