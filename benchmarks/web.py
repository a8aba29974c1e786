"""``liq watch --web``: how long the event loop stalls while a page applies a filter over a long
history, with the view built in a worker thread (now) and on the loop (before).

    python benchmarks/web.py [--events 1000000] [--repeat 3]

A WatchState holding ``--events`` liquidations of history serves the real WebDashboard on
127.0.0.1; a WebSocket client sends a filter and waits for its filtered snapshot while a ticker
task on the same loop wakes every 5 ms and records how late it woke. Printed per run: the time
until the filtered snapshot arrived, and the longest stall of the loop meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import orjson
from websockets.asyncio.client import connect

from liqcli.core.events import Liquidation
from liqcli.core.timeutil import now_ms
from liqcli.render.web import WebDashboard
from liqcli.services.watch import WatchConfig, WatchState


def build_state(n: int) -> WatchState:
    state = WatchState(
        WatchConfig(exchanges=["binance", "okx", "bybit"], windows="3m,1h,1d", web=True),
        keep_history=True,
    )
    rng = random.Random(1)
    symbols = [f"SYM{i}USDT" for i in range(200)]
    t = now_ms() - 80_000_000
    batch = []
    for i in range(n):
        usd = rng.lognormvariate(8, 2)
        batch.append(
            Liquidation(
                rng.choice(("binance", "okx", "bybit")),
                rng.choice(symbols),
                rng.choice(("long", "short")),
                100.0,
                usd / 100,
                usd,
                t + i * 80_000_000 // n,
            )
        )
        if len(batch) == 50_000:
            state.ingest_batch(batch)
            batch = []
    state.ingest_batch(batch)
    state.tick()
    return state


async def one_filter(state: WatchState, min_usd: float) -> tuple[float, float]:
    worst = 0.0
    running = True

    async def ticker() -> None:
        nonlocal worst
        while running:
            start = time.perf_counter()
            await asyncio.sleep(0.005)
            worst = max(worst, time.perf_counter() - start - 0.005)

    async with (
        WebDashboard(state, host="127.0.0.1", port=0, push_interval=5) as web,
        connect(web.url.replace("http://", "ws://") + "ws", proxy=None) as ws,
    ):
        await ws.recv()
        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        worst = 0.0
        start = time.perf_counter()
        # Every symbol, a low minimum: the view keeps most of the history (the costly case).
        await ws.send(orjson.dumps({"type": "filter", "min_usd": min_usd}))
        while True:
            doc = orjson.loads(await ws.recv())
            if doc["type"] == "snapshot" and doc["snapshot"]["filter"]["min_usd"] == min_usd:
                break
        elapsed = time.perf_counter() - start
        running = False
        await task
    return elapsed, worst


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    state = build_state(args.events)
    print(f"history: {args.events:,} events ({time.perf_counter() - started:.1f} s to build)")
    offloaded = WatchState.open_view_async
    for mode in ("worker thread (now)", "on the loop (before)"):
        WatchState.open_view_async = offloaded if mode.startswith("worker") else None  # type: ignore[method-assign,assignment]
        for i in range(args.repeat):
            elapsed, worst = asyncio.run(one_filter(state, 10.0 + i))
            print(f"{mode:22}  filtered snapshot after {elapsed:.3f} s, loop stalled {worst:.3f} s")
    WatchState.open_view_async = offloaded  # type: ignore[method-assign]


if __name__ == "__main__":
    main()
