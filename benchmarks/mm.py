"""``liq mm``: book update -> quote decision latency, and requests per minute at a steady book
against the seed's re-place-everything rate.

    python benchmarks/mm.py [--updates 100000] [--levels 2] [--interval 5] [--fake-seconds 20]

1. Latency: ``Engine.step`` on a BookTop (merged book, the strategy's tolerance check and, when
   the mid moved past ``--refresh-tolerance``, the new quotes sent to the broker) with the
   SimBroker, per update; p50/p99 over all updates and over the updates that re-quoted.
2. Requests at a steady book (the mid jitters within ±1 bp, 10 updates/s, 10 minutes of event
   time): order actions (placements + cancels) per minute of the strategy vs the seed, which
   cancels all and places every level again each interval.
3. ``--fake-seconds``: the real thing against the fake Backpack (REST + WS on 127.0.0.1): the
   HTTP requests ``liq mm`` sends per minute at a steady book, vs the seed's
   (one cancel-all plus one batch order request per interval).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.fakes

from liqcli.core.events import BookTop
from liqcli.trading.engine import Engine
from liqcli.trading.sim import SimBroker
from liqcli.trading.strategies.market_maker import MarketMaker, MarketRules, MMParams

SYM = "SOL_USDC_PERP"
RULES = MarketRules(0.01, 0.01, 0.01)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(int(q * len(values)), len(values) - 1)]


def latency(updates: int, levels: int, interval: float) -> None:
    rng = random.Random(7)
    p = MMParams(SYM, spread=0.1, quantity=0.1, max_orders=levels, interval_s=interval,
                 max_position=10, refresh_tolerance_bps=5)  # fmt: skip
    strategy = MarketMaker(p, RULES)
    engine = Engine()
    engine.add(strategy, SimBroker(1e6))
    mid, ts = 100.0, 1_700_000_000_000
    all_us, requote_us = [], []
    clock = time.perf_counter_ns
    for _ in range(updates):
        mid *= 1 + rng.gauss(0, 0.0002)  # 2 bps per update: re-quotes every few updates
        ts += 100
        bid, ask = round(mid - 0.01, 2), round(mid + 0.01, 2)
        event = BookTop("backpack", SYM, ts, bid, 5.0, ask, 5.0, ts)
        before = strategy.stats.submits
        t0 = clock()
        engine.step(event)
        dt = (clock() - t0) / 1000
        all_us.append(dt)
        if strategy.stats.submits > before:
            requote_us.append(dt)
    print(f"latency, book update -> decision ({updates} updates, {levels} level(s)/side):")
    print(f"  all updates      p50 {pct(all_us, 0.5):7.1f} µs   p99 {pct(all_us, 0.99):7.1f} µs")
    if requote_us:
        print(f"  re-quoting ones  p50 {pct(requote_us, 0.5):7.1f} µs   "
              f"p99 {pct(requote_us, 0.99):7.1f} µs   ({len(requote_us)} of them)")  # fmt: skip


def steady(levels: int, interval: float, minutes: float = 10.0) -> None:
    rng = random.Random(11)
    p = MMParams(SYM, spread=0.1, quantity=0.1, max_orders=levels, interval_s=interval,
                 max_position=10, refresh_tolerance_bps=5, max_order_age_s=300)  # fmt: skip
    strategy = MarketMaker(p, RULES)
    engine = Engine()
    engine.add(strategy, SimBroker(1e6))
    ts0 = ts = 1_700_000_000_000
    end = ts0 + int(minutes * 60_000)
    while ts < end:
        ts += 100
        mid = 100.0 * (1 + rng.uniform(-1e-4, 1e-4))
        engine.step(
            BookTop("backpack", SYM, ts, round(mid - 0.01, 2), 5, round(mid + 0.01, 2), 5, ts)
        )
    ours = (strategy.stats.submits + strategy.stats.cancels) / minutes
    seed = 60 / interval * (2 * levels + 2 * levels)  # every level cancelled and placed again
    print(f"steady book, ±1 bp jitter, interval {interval:g}s, {levels} level(s)/side, "
          f"{minutes:g} min of event time:")  # fmt: skip
    print(
        f"  order actions/min: liq mm {ours:8.1f}   seed {seed:8.1f}   ({seed / max(ours, 1e-9):.0f}x fewer)"
    )


async def against_fake(seconds: float, levels: int, interval: float) -> None:
    import os

    from liqcli.exchanges.backpack.auth import BackpackSigner
    from liqcli.services import mm as svc
    from tests.fakes.backpack import FakeBackpack, new_keypair

    key, secret = new_keypair()
    async with FakeBackpack(api_keys={key}) as fake:
        os.environ["LIQ_BACKPACK_REST_URL"] = fake.rest_url
        os.environ["LIQ_BACKPACK_WS_URL"] = fake.ws_url
        p = MMParams(SYM, spread=0.1, quantity=0.1, max_orders=levels, interval_s=interval,
                     max_position=10, refresh_tolerance_bps=5)  # fmt: skip
        cfg = svc.MMConfig("backpack", p, session="bench")
        task = asyncio.create_task(svc.run_mm(cfg, signer=BackpackSigner(key, secret),
                                              duration_s=seconds))  # fmt: skip
        await fake.wait_subscribed(f"bookTicker.{SYM}", timeout=10)
        start = len(fake.requests)
        rng = random.Random(5)
        t_end = time.monotonic() + seconds - 0.5
        while time.monotonic() < t_end:
            mid = 100.0 * (1 + rng.uniform(-1e-4, 1e-4))
            bid, ask = f"{mid - 0.01:.2f}", f"{mid + 0.01:.2f}"
            fake.set_book([(bid, "5")], [(ask, "5")])
            await fake.push_book_ticker(bid, "5", ask, "5")
            await asyncio.sleep(0.1)
        await task
        reqs = fake.requests[start:]
        trading = [r for r in reqs if r[0] in ("POST", "DELETE")]
    per_min = len(trading) * 60 / seconds
    seed = 60 / interval * 2
    print(
        f"against the fake Backpack, {seconds:g}s, interval {interval:g}s, {levels} level(s)/side:"
    )
    print(f"  order requests/min: liq mm {per_min:6.1f} (incl. the exit cancel-all)   "
          f"seed {seed:6.1f} (cancel-all + batch each interval)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--updates", type=int, default=100_000)
    ap.add_argument("--levels", type=int, default=2)
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--fake-seconds", type=float, default=20.0, help="0 skips the fake run")
    a = ap.parse_args()
    latency(a.updates, a.levels, a.interval)
    steady(a.levels, a.interval)
    if a.fake_seconds > 0:
        asyncio.run(against_fake(a.fake_seconds, a.levels, min(a.interval, 1.0)))


if __name__ == "__main__":
    main()
