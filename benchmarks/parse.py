"""Venue parser cost: microseconds per event for Binance, OKX and Bybit liquidation frames.

    python benchmarks/parse.py [--events 200000] [--repeat 5]

Builds ``--events`` real-format frames per venue (already JSON-decoded, as ReconnectingWebSocket
hands them over; one event per frame, as the venues push them), then times the venue parser over
all of them with the receive time passed in (so every check a live frame gets is paid: types,
ranges, the timestamp window). The best of ``--repeat`` runs is printed with every run, in µs per
event of one core (process CPU time). Run it on two checkouts to compare before/after.
"""

from __future__ import annotations

import argparse
import inspect
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from liqcli.core.timeutil import now_ms
from liqcli.exchanges import okx
from liqcli.exchanges.binance import stream as binance
from liqcli.exchanges.bybit import stream as bybit

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT", "XRPUSDT", "1000PEPEUSDT"]


def binance_frames(n: int, now: int, rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        sym = SYMBOLS[i % len(SYMBOLS)]
        qty, px = f"{rng.uniform(0.001, 5):.3f}", f"{rng.uniform(1, 70000):.2f}"
        out.append(
            {
                "stream": "!forceOrder@arr",
                "data": {
                    "e": "forceOrder",
                    "E": now + 3,
                    "o": {
                        "s": sym,
                        "S": "SELL" if i % 2 else "BUY",
                        "o": "LIMIT",
                        "f": "IOC",
                        "q": qty,
                        "p": px,
                        "ap": px,
                        "X": "FILLED",
                        "l": qty,
                        "z": qty,
                        "T": now,
                    },
                },
            }
        )
    return out


def okx_frames(n: int, now: int, rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        base = SYMBOLS[i % len(SYMBOLS)].removesuffix("USDT")
        out.append(
            {
                "arg": {"channel": "liquidation-orders", "instType": "SWAP"},
                "data": [
                    {
                        "instId": f"{base}-USDT-SWAP",
                        "instFamily": f"{base}-USDT",
                        "instType": "SWAP",
                        "uly": f"{base}-USDT",
                        "details": [
                            {
                                "bkLoss": "0",
                                "bkPx": f"{rng.uniform(1, 70000):.2f}",
                                "ccy": "",
                                "posSide": "long" if i % 2 else "short",
                                "side": "sell" if i % 2 else "buy",
                                "sz": str(rng.randint(1, 500)),
                                "ts": str(now),
                            }
                        ],
                    }
                ],
            }
        )
    return out


def bybit_frames(n: int, now: int, rng: random.Random) -> list[dict[str, Any]]:
    return [
        {
            "topic": f"allLiquidation.{SYMBOLS[i % len(SYMBOLS)]}",
            "type": "snapshot",
            "ts": now + 5,
            "data": [
                {
                    "T": now,
                    "s": SYMBOLS[i % len(SYMBOLS)],
                    "S": "Buy" if i % 2 else "Sell",
                    "v": f"{rng.uniform(0.001, 5):.3f}",
                    "p": f"{rng.uniform(1, 70000):.2f}",
                }
            ],
        }
        for i in range(n)
    ]


def okx_instruments() -> dict[str, okx.OkxInstrument]:
    return {
        f"{s.removesuffix('USDT')}-USDT-SWAP": okx.OkxInstrument(
            f"{s.removesuffix('USDT')}-USDT-SWAP", "SWAP", 0.01, "BTC", inverse=False
        )
        for s in SYMBOLS
    }


def time_parser(parse: Callable[[Any], list[Any]], frames: list[Any], repeat: int) -> list[float]:
    runs = []
    for _ in range(repeat):
        start = time.process_time()
        events = 0
        for frame in frames:
            events += len(parse(frame))
        elapsed = time.process_time() - start
        if events != len(frames):
            raise SystemExit(f"expected {len(frames)} events, parsed {events}")
        runs.append(elapsed / events * 1e6)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    now = now_ms()
    rng = random.Random(args.seed)
    instruments = okx_instruments()
    # Parsers that count refusals take refused=; older ones do not (before/after comparisons).
    kw: dict[str, Any] = {}
    if "refused" in inspect.signature(binance.parse_liquidations).parameters:
        kw = {"refused": {}}
    cases = [
        ("binance", binance_frames, lambda m: binance.parse_liquidations(m, now, **kw)),
        ("okx", okx_frames, lambda m: okx.parse_liquidations(m, instruments, now, **kw)),
        ("bybit", bybit_frames, lambda m: bybit.parse_liquidations(m, now, **kw)),
    ]
    print(f"{args.events:,} frames per venue, one event each; µs per event (CPU), best of runs")
    for venue, build, parse in cases:
        frames = build(args.events, now, rng)
        runs = time_parser(parse, frames, args.repeat)
        spread = " ".join(f"{r:.3f}" for r in runs)
        print(f"  {venue:8s} {min(runs):.3f} µs/event   (runs: {spread})")


if __name__ == "__main__":
    main()
