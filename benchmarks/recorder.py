"""Recorder throughput: journal a synthetic live session, then replay it in delivery order.

    python benchmarks/recorder.py [--events 200000]

A mix like a Binance market session for one symbol: per 100 ms a bookTicker or two, a trade,
every second a mark price and a 20-level top-N snapshot, now and then a liquidation. Timed
(CPU and wall): ``Recorder.record`` (the consumer's hot path: rows queued for the journals),
the close (journal flush + compaction into Parquet), and ``RecordedSource`` replay.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time

from liqcli.core.events import AggTrade, BookSnapshot, BookTop, Liquidation, MarkPrice
from liqcli.sources.recorder import RecordedSource, Recorder
from liqcli.store.parquet import Store

T0 = 1_767_225_600_000


def session(count: int, seed: int = 5) -> list[list]:
    rng = random.Random(seed)
    batches, batch, ts, trade, uid, second = [], [], T0, 1, 10**9, T0 // 1000
    while sum(map(len, batches)) + len(batch) < count:
        ts += rng.randint(1, 60)
        uid += rng.randint(1, 9)
        mid = 87_000 + rng.uniform(-50, 50)
        batch.append(
            BookTop("binance", "BTCUSDT", ts, mid - 0.05, 1.2, mid + 0.05, 0.8, uid, ts + 2)
        )
        if rng.random() < 0.6:
            batch.append(AggTrade("binance", "BTCUSDT", trade, ts, mid, 0.01, rng.random() < 0.5))
            trade += 1
        if ts // 1000 != second:  # a new second: its mark price and book snapshot
            second = ts // 1000
            batch.append(
                MarkPrice("binance", "BTCUSDT", ts, mid, mid - 1, 1e-4, T0 + 28_800_000, ts + 2)
            )
            levels = tuple((mid - 0.1 * i, 1.0 + i) for i in range(20))
            batch.append(
                BookSnapshot("binance", "BTCUSDT", ts // 1000 * 1000, uid, levels, levels, ts)
            )
        if rng.random() < 0.01:
            batch.append(
                Liquidation("binance", "BTCUSDT", "long", mid, 0.5, mid * 0.5, ts, "", ts + 3)
            )
        if len(batch) >= 50:
            batches.append(batch)
            batch = []
    return [*batches, batch]


class ListSource:
    def __init__(self, batches: list[list]) -> None:
        self._batches = batches
        self.statuses: dict = {}

    async def batches(self):
        for batch in self._batches:
            yield batch

    async def aclose(self) -> None:
        pass


async def run(count: int) -> None:
    batches = session(count)
    n = sum(map(len, batches))
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        recorder = Recorder(ListSource(batches), store, compact_interval=3600)
        await recorder.open()
        c0 = time.process_time()
        for batch in batches:
            recorder.record(batch)
        record_cpu = time.process_time() - c0
        c1, w1 = time.process_time(), time.perf_counter()
        await recorder.aclose()
        close_wall = time.perf_counter() - w1
        close_cpu = time.process_time() - c1
        rows = sum(v for k, v in recorder.stats.items() if k != "skipped")
        c2, w2 = time.process_time(), time.perf_counter()
        replayed = 0
        async for batch in RecordedSource(store, batch_size=1000).batches():
            replayed += len(batch)
        replay_cpu, replay_wall = time.process_time() - c2, time.perf_counter() - w2
    assert replayed == n, (replayed, n)
    print(f"recorder: {n} events ({rows} rows)")
    print(f"  record (queue rows)   {record_cpu / n * 1e6:6.2f} us/event CPU")
    print(f"  close (to Parquet)    {close_wall:6.2f} s wall, {close_cpu:.2f} s CPU")
    print(
        f"  replay                {replay_wall:6.2f} s wall ({n / replay_wall:,.0f} events/s), "
        f"{replay_cpu / n * 1e6:.2f} us/event CPU"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    asyncio.run(run(parser.parse_args().events))


if __name__ == "__main__":
    main()
