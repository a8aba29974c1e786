"""``liq paper``'s core on one CPU: events per second through the book, the order-flow features
and all five modes (0-3 and cascade, each with its SimBroker), and event-to-decision latency.

    python benchmarks/paper.py [--events 300000] [--repeat 3] [--seed 7]

Synthetic BTCUSDT tape, in the proportions of a live session: bookTicker tops (55 %), aggTrades
(40 %), a 20-level BookSnapshot and a MarkPrice every 100 ms of event time, and a long-liquidation
burst every 2-5 minutes (the cascade mode trades it). The book leans to one side for a few seconds
at a time, with taker flow the same way, so the seed modes open and close positions throughout.
Storage is not timed (``PaperSession`` alone, as ``drive`` calls it between saves).

Throughput is CPU time (``time.process_time``) over every event, best of ``--repeat``.
Latency: from the start of ``PaperSession.step`` (the engine step: market state, features,
every mode) to the moment a strategy's order record is emitted, for every order sent.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from liqcli.core.events import AggTrade, BookSnapshot, BookTop, Liquidation, MarkPrice
from liqcli.services.paper import PaperConfig, PaperSession

SYM = "BTCUSDT"


def tape(count: int, seed: int) -> list:
    rng = random.Random(seed)
    events: list = []
    ts, price, trade_id, lean = 0, 87_000.0, 0, 0.0
    next_snap = next_liq = 0
    while len(events) < count:
        ts += rng.randint(1, 4)
        if ts // 4_000 != (ts - 4) // 4_000:
            lean = rng.choice((-0.9, -0.5, 0.0, 0.5, 0.9))  # a new regime every 4 s
        price = max(1_000.0, price * (1 + rng.gauss(lean * 2e-6, 2e-5)))
        bid = round(price - 0.05, 1)
        ask = round(bid + 0.1, 1)
        heavy, light = rng.uniform(5, 40), rng.uniform(0.2, 5)
        bq, aq = (heavy, light) if lean > 0 else (light, heavy) if lean < 0 else (heavy, heavy)
        if rng.random() < 0.55:
            events.append(BookTop("binance", SYM, ts, bid, bq, ask, aq))
        else:
            trade_id += 1
            buyer = rng.random() < 0.5 + lean / 3
            events.append(
                AggTrade("binance", SYM, trade_id, ts, ask if buyer else bid, rng.uniform(0.001, 0.1), not buyer)
            )  # fmt: skip
        if ts >= next_snap:
            next_snap = ts + 100
            bids = tuple((round(bid - 0.1 * i, 1), rng.uniform(0.5, 9)) for i in range(20))
            asks = tuple((round(ask + 0.1 * i, 1), rng.uniform(0.5, 9)) for i in range(20))
            events.append(BookSnapshot("binance", SYM, ts, 0, bids, asks))
            events.append(MarkPrice("binance", SYM, ts, price, price, 0.0001, ts + 3_600_000))
        if ts >= next_liq:
            next_liq = ts + rng.randint(120_000, 300_000)  # separate cascades
            for k in range(rng.randint(5, 30)):  # a burst: $150k-$6M of longs in a few seconds
                usd = rng.uniform(30_000, 200_000)
                events.append(Liquidation("binance", SYM, "long", price, usd / price, usd, ts + k))
    return events[:count]


def run(events: list) -> tuple[float, list[int], PaperSession]:
    session = PaperSession(PaperConfig(symbol=SYM))
    latencies: list[int] = []
    started = [0]
    perf = time.perf_counter_ns

    def emit(record: dict) -> None:
        if record.get("type") == "order":
            latencies.append(perf() - started[0])

    session._emit = emit
    step = session.step
    cpu = time.process_time()
    for event in events:
        started[0] = perf()
        step(event)
    return time.process_time() - cpu, latencies, session


def split(events: list) -> None:
    """Where the event-to-decision latency goes, per mode (one more run, instrumented, so its
    times are a little higher): every mode's order record counts from the start of the step,
    so a mode's latency includes the decisions of the modes before it in the slot loop; its own
    decision runs from its on_event to its order record, of which the order path is the
    broker's submit (book walk, fill, position, fees, records)."""
    session = PaperSession(PaperConfig(symbol=SYM))
    perf = time.perf_counter_ns
    started = [0, 0, 0]  # step, this mode's on_event, this order's submit
    rows: dict[str, list[tuple[int, int, int]]] = {}
    submit_ns = [0]

    def emit(record: dict) -> None:
        if record.get("type") == "order":
            now = perf()
            rows.setdefault(record["mode"], []).append(
                (now - started[0], now - started[1], submit_ns[0])
            )

    for slot in session.engine.slots:
        strategy, broker = slot.strategy, slot.broker

        def on_event(event, ctx, _inner=strategy.on_event):
            started[1] = perf()
            _inner(event, ctx)

        def submit(order, _inner=broker.submit):
            t = perf()
            out = _inner(order)
            submit_ns[0] = perf() - t
            return out

        strategy.on_event = on_event
        broker.submit = submit
    session._emit = emit
    for event in events:
        started[0] = perf()
        session.step(event)
    print("latency split (p50, µs; slot order = the order modes decide in on each event):")
    for mode, vals in rows.items():
        total, own, sub = ([v[i] for v in vals] for i in range(3))
        print(
            f"  mode {mode:>7}: {len(vals):>4} orders, from step start {pct(total, 0.5):6.1f}, "
            f"own decision {pct(own, 0.5):5.1f}, of which submit (order path) {pct(sub, 0.5):5.1f}"
        )


def pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000 if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    events = tape(args.events, args.seed)
    gc.collect()
    gc.freeze()  # the tape is input: live, events do not pile up for the collector to scan
    kinds: dict[str, int] = {}
    for e in events:
        kinds[type(e).__name__] = kinds.get(type(e).__name__, 0) + 1
    span = (events[-1].ts - events[0].ts) / 1000
    print(f"tape: {len(events):,} events over {span:,.0f} s of event time: {kinds}")
    best = None
    for n in range(args.repeat):
        cpu, latencies, session = run(events)
        rate = len(events) / cpu
        print(
            f"run {n + 1}: {rate:,.0f} events/s CPU ({cpu * 1e6 / len(events):.2f} µs/event), "
            f"{len(latencies)} orders, decision latency p50 {pct(latencies, 0.5):.1f} µs "
            f"p99 {pct(latencies, 0.99):.1f} µs"
        )
        if best is None or rate > best[0]:
            best = (rate, latencies, session)
    assert best is not None
    rate, latencies, session = best
    print(f"best: {rate:,.0f} events/s through book, features and five modes (target 50,000)")
    split(events)
    for row in session.leaderboard():
        print(
            f"  mode {row['mode']:>7}: trades {row['trades']:>4}  equity {row['equity']:>10,.2f}"
            f"  blocks {row['blocks']}"
        )


if __name__ == "__main__":
    main()
