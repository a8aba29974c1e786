"""Cascade detector throughput and alert latency on a synthetic stream.

    python benchmarks/cascade.py [--events 1000000] [--symbols 1] [--seed 1]

The stream: one event every 10 ms of event time, 80 % aggTrades and 20 % liquidations (about 20
liquidations a second), a background of ~$200 liquidations (~$240k a minute) and, every ~10 minutes, a 1-2 minute
burst whose 60-s total is log-uniform between $500k and $100M, so every level and many cascade
ends occur. Events are built before timing starts; the timed part is ``feed()`` alone
(throughput) and ``feed()`` plus serialising the alert with orjson in the callback (latency from
event in to alert out, measured only on the calls that emitted an alert).
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import time
from collections import Counter

import orjson

from liqcli.analytics.cascade import CascadeMonitor, LiquidationCascadeDetector
from liqcli.core.events import AggTrade, Liquidation

T0 = 1_767_225_600_000  # 2026-01-01


def synthetic_stream(count: int, symbols: list[str], seed: int) -> list[Liquidation | AggTrade]:
    rng = random.Random(seed)
    events: list[Liquidation | AggTrade] = []
    price = 100_000.0
    burst_until = burst_mean = 0.0
    next_burst = T0 + rng.uniform(60_000, 600_000)
    for i in range(count):
        ts = T0 + i * 10
        symbol = symbols[i % len(symbols)]
        if ts >= next_burst:
            burst_until = ts + rng.uniform(60_000, 120_000)
            # ~1,200 liquidations a minute: the mean size sets the burst's 60-s total.
            burst_mean = math.exp(rng.uniform(math.log(5e5), math.log(1e8))) / 1_200
            next_burst = burst_until + rng.uniform(300_000, 900_000)
        in_burst = ts < burst_until
        if rng.random() < 0.8:
            price *= 1 + rng.gauss(-0.00002 if in_burst else 0.0, 0.0002)
            events.append(AggTrade("binance", symbol, i, ts, price, 0.01, rng.random() < 0.5))
        else:
            usd = rng.expovariate(1 / (burst_mean if in_burst else 200.0))
            side = "long" if rng.random() < (0.85 if in_burst else 0.5) else "short"
            events.append(Liquidation("binance", symbol, side, price, usd / price, usd, ts))
    return events


def percentile(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--symbols", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    symbols = ["BTCUSDT"] + [f"C{i}USDT" for i in range(1, args.symbols)]

    started = time.perf_counter()
    events = synthetic_stream(args.events, symbols, args.seed)
    print(f"built {len(events):,} events in {time.perf_counter() - started:.1f}s")
    # A live process does not hold a million events: keep the collector from rescanning them.
    gc.freeze()

    if len(symbols) == 1:
        target = LiquidationCascadeDetector(symbols[0], clock=lambda: T0)
        label = "LiquidationCascadeDetector.feed"
    else:
        target = CascadeMonitor(symbols, clock=lambda: T0)
        label = f"CascadeMonitor.feed ({len(symbols)} symbols)"
    feed = target.feed
    kinds: Counter[str] = Counter()
    started = time.perf_counter()
    for event in events:
        for alert in feed(event):
            kinds[alert["type"]] += 1
    elapsed = time.perf_counter() - started
    print(f"{label}: {len(events) / elapsed:,.0f} events/s ({elapsed:.2f}s)")
    print(f"alerts: {dict(kinds)}")

    wire: list[bytes] = []
    detector = (
        LiquidationCascadeDetector(
            symbols[0], lambda a: wire.append(orjson.dumps(a)), clock=lambda: T0
        )
        if len(symbols) == 1
        else CascadeMonitor(symbols, cascade_callback=lambda a: wire.append(orjson.dumps(a)))
    )
    feed = detector.feed
    clock = time.perf_counter_ns
    all_calls: list[int] = []
    alert_calls: list[int] = []
    for event in events:
        before = clock()
        emitted = feed(event)
        spent = clock() - before
        all_calls.append(spent)
        if emitted:
            alert_calls.append(spent)
    all_calls.sort()
    alert_calls.sort()
    print(
        f"feed() latency, all calls: p50 {percentile(all_calls, 0.5):.2f} us, "
        f"p99 {percentile(all_calls, 0.99):.2f} us"
    )
    if alert_calls:
        print(
            f"event in -> alert out (orjson bytes), {len(alert_calls)} alerting calls: "
            f"p50 {percentile(alert_calls, 0.5):.1f} us, p99 {percentile(alert_calls, 0.99):.1f} us"
        )


if __name__ == "__main__":
    main()
