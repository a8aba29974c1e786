"""Benchmark ``liq fetch``: 10 symbols x all seven datasets x 30 days against the fake Binance REST
server enforcing Binance's real limits.

    python benchmarks/fetch.py [--latency 0.1] [--symbols 10] [--days 30] [--concurrency 10]

Prints the wall time, the minimum the limits and latency allow, their ratio and the 429 count.

Assumptions (printed too):

- the fake server runs in its own process (no shared GIL) and adds ``--latency`` seconds to
  every answer, standing in for the round trip to fapi.binance.com (tens of ms nearby, ~200 ms
  from far away);
- the client keeps at most ``--concurrency`` requests in flight (VenueHttp's max_concurrency,
  default 10): Binance publishes no connection limit, this is our own politeness bound;
- Binance's limits as documented: 1000 requests / 5 min for /futures/data/*, 500 / 5 min for
  fundingRate, REQUEST_WEIGHT 2400 / min (klines with limit 1500 weigh 10);
- the minimum is ``max(limit bound, latency bound)``: the limit bound is how long the budgets make
  the requests take (a window's worth at once, then one more window per further window's worth),
  the latency bound is ``ceil(requests / concurrency) * latency``. Parsing and Parquet writes are
  the client's overhead, inside the measured time.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from liqcli.core.timeutil import now_ms  # noqa: E402
from liqcli.exchanges.binance.rest import FETCH_DATASETS, BinanceLimits, binance_http  # noqa: E402
from liqcli.services.fetch import run_fetch  # noqa: E402
from liqcli.store.parquet import Store  # noqa: E402

SYMBOLS = [
    "BTCUSDT",
    "ETHUSDT",
    "SOLUSDT",
    "XRPUSDT",
    "BNBUSDT",
    "DOGEUSDT",
    "ADAUSDT",
    "AVAXUSDT",
    "LINKUSDT",
    "DOTUSDT",
    "LTCUSDT",
    "TRXUSDT",
    "NEARUSDT",
    "ATOMUSDT",
    "APTUSDT",
    "ARBUSDT",
    "OPUSDT",
    "SUIUSDT",
    "FILUSDT",
    "ETCUSDT",
]


def limit_bound(requests_by_budget: dict[str, int], limits: BinanceLimits) -> float:
    """Seconds the budgets alone force: N at once, then a window per further N."""
    windows = {
        "futures_data": (limits.futures_data, limits.futures_data_window_s),
        "funding": (limits.funding, limits.funding_window_s),
        "weight": (limits.weight, limits.weight_window_s),
    }
    bound = 0.0
    for name, used in requests_by_budget.items():
        limit, window = windows[name]
        if used > 0:
            bound = max(bound, ((used - 1) // limit) * window)
    return bound


def budget_usage(log: list[tuple[str, int]]) -> dict[str, int]:
    usage: Counter[str] = Counter()
    for path, limit in log:
        if path.startswith("/futures/data/"):
            usage["futures_data"] += 1
        elif path == "/fapi/v1/fundingRate":
            usage["funding"] += 1
            usage["weight"] += 1
        elif path == "/fapi/v1/klines":
            usage["weight"] += (
                1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10
            )
    return dict(usage)


async def run(url: str, symbols: list[str], days: int, concurrency: int, data_dir: Path) -> dict:
    store = Store(data_dir)
    now = now_ms()
    log: list[tuple[str, int]] = []

    def record(response: httpx.Response) -> None:
        request = response.request
        log.append((request.url.path, int(request.url.params.get("limit", "0"))))

    async with binance_http(url, max_concurrency=concurrency) as http:
        observe_weight = http.on_response

        def on_response(response: httpx.Response) -> None:
            record(response)
            if observe_weight is not None:
                observe_weight(response)

        http.on_response = on_response
        started, cpu_started = time.perf_counter(), time.process_time()
        results = await run_fetch(
            store, symbols, list(FETCH_DATASETS), start=now - days * 86_400_000, http=http, now=now
        )
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    return {"wall": wall, "cpu": cpu, "results": results, "stats": http.stats, "log": log}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--latency", type=float, default=0.1, help="seconds per answer (default 0.1)"
    )
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=1, help="runs (fresh server and store each)")
    args = parser.parse_args()
    for run_number in range(1, args.repeat + 1):
        if args.repeat > 1:
            print(f"--- run {run_number} of {args.repeat}")
        once(args)


def once(args: argparse.Namespace) -> None:
    symbols = SYMBOLS[: args.symbols]

    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.binance_rest",
            "--latency",
            str(args.latency),
            "--symbols",
            ",".join(symbols),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = server.stdout.readline().strip()
        with tempfile.TemporaryDirectory() as data_dir:
            outcome = asyncio.run(run(url, symbols, args.days, args.concurrency, Path(data_dir)))
        server_stats = httpx.get(f"{url}/_fake/stats").json()
    finally:
        server.stdin.close()
        server.wait(10)

    results = outcome["results"]
    requests = len(outcome["log"])
    usage = budget_usage(outcome["log"])
    limits = BinanceLimits()
    by_limits = limit_bound(usage, limits)
    by_latency = math.ceil(requests / args.concurrency) * args.latency
    minimum = max(by_limits, by_latency)
    rows = sum(r.new_rows for r in results)
    failed = [r for r in results if r.status != "ok"]
    status = {int(k): v for k, v in server_stats["status"].items()}

    print(
        f"liq fetch benchmark: {len(symbols)} symbols x {len(FETCH_DATASETS)} datasets x {args.days} days (5m)"
    )
    print(
        "assumptions: fake Binance in its own process, Binance's real limits "
        f"(1000/5min futures/data, 500/5min funding, 2400 weight/min), latency {args.latency * 1000:.0f} ms "
        f"per answer, at most {args.concurrency} requests in flight"
    )
    print(
        f"requests: {requests} ({', '.join(f'{k} {v}' for k, v in sorted(usage.items()))}); rows stored: {rows:,}"
    )
    print(
        f"minimum allowed: {minimum:.2f} s (limit bound {by_limits:.2f} s, latency bound {by_latency:.2f} s)"
    )
    print(f"wall time:       {outcome['wall']:.2f} s (client CPU {outcome['cpu']:.2f} s)")
    print(f"ratio:           {outcome['wall'] / minimum:.2f} (target <= 1.2)")
    print(
        f"429 answers:     {status.get(429, 0)}   418 answers: {status.get(418, 0)}   "
        f"retries: {outcome['stats'].retries}   failed fetches: {len(failed)}"
    )


if __name__ == "__main__":
    main()
