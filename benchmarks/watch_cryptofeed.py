"""The peer in ``benchmarks/watch.py --cryptofeed PYTHON``: cryptofeed's Binance futures
liquidation feed with a no-op callback, against the same replay server and frames.

Run by watch.py with an interpreter that has cryptofeed installed (it is not a dependency of liq,
and this file imports nothing from liq)::

    python -m venv /tmp/cf && /tmp/cf/bin/pip install cryptofeed
    python benchmarks/watch.py --cryptofeed /tmp/cf/bin/python

What runs is cryptofeed's own path, unchanged: FeedHandler (uvloop when installed, as cryptofeed
sets it up) -> its websockets connection -> ``BinanceFutures.message_handler`` (JSON with Decimal
prices) -> its ``Liquidation`` objects -> the callback, which only counts. Two things are bent to
run offline: the symbol table is filled in directly (cryptofeed would fetch it over REST), and
cryptofeed accepts only ``wss://`` addresses, so the address is given as ``wss://`` and the
connection made with ``ws://`` underneath. Prints one JSON line: CPU and wall seconds from the
first liquidation to the last, and the count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--symbols", required=True, help="comma-separated venue symbols")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})

    import cryptofeed.connection as connection
    from cryptofeed import FeedHandler
    from cryptofeed.connection import WebsocketEndpoint
    from cryptofeed.defines import LIQUIDATIONS, PERPETUAL
    from cryptofeed.exchanges import BinanceFutures
    from cryptofeed.symbols import Symbol, Symbols

    plain_connect = connection.connect

    def connect(address: str, **kwargs):  # cryptofeed insists on wss://; the replay is ws://
        return plain_connect(address.replace("wss://", "ws://", 1), **kwargs)

    connection.connect = connect
    BinanceFutures.websocket_endpoints = [
        WebsocketEndpoint(f"wss://127.0.0.1:{args.port}", options={"compression": None})
    ]
    mapping, info = {}, {"tick_size": {}, "instrument_type": {}}
    for venue_symbol in args.symbols.split(","):
        symbol = Symbol(venue_symbol.removesuffix("USDT"), "USDT", type=PERPETUAL)
        mapping[symbol.normalized] = venue_symbol
        info["tick_size"][symbol.normalized] = "0.01"
        info["instrument_type"][symbol.normalized] = PERPETUAL
    Symbols.set(BinanceFutures.id, mapping, info)
    first_symbol = next(iter(mapping))

    seen = 0
    started: tuple[float, float] | None = None
    result: dict[str, float] = {}

    async def on_liquidation(liquidation, receipt_timestamp) -> None:
        nonlocal seen, started
        if started is None:
            started = (time.process_time(), time.perf_counter())
        seen += 1
        if seen == args.events:
            result["cpu"] = time.process_time() - started[0]
            result["wall"] = time.perf_counter() - started[1]
            asyncio.get_event_loop().stop()

    handler = FeedHandler(config={"log": {"disabled": True}, "uvloop": True})
    asyncio.set_event_loop(asyncio.new_event_loop())  # of uvloop's policy, set just above
    handler.add_feed(
        BinanceFutures(
            symbols=[first_symbol],  # the replay sends every symbol's frames on any stream
            channels=[LIQUIDATIONS],
            callbacks={LIQUIDATIONS: on_liquidation},
        )
    )
    handler.run(install_signal_handlers=False)
    print(json.dumps(result | {"events": seen}), flush=True)


if __name__ == "__main__":
    main()
