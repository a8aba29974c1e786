"""Pressure-score history: 30 days of 5m data (8,640 steps) for 10 symbols.

    python benchmarks/pressure.py [--symbols 10] [--days 30] [--model default] [--seed 1]

Synthetic inputs shaped like the stored datasets (five ratio/OI series every 5 minutes with 2 %
of rows missing, funding every 8 h, ~20 liquidations an hour from two venues). Two timings:

- analytics: ``pressure_history`` on in-memory frames (the Polars computation alone);
- store: the whole `liq pressure --history --offline` path through the service: lazy scans of
  the Parquet store, the computation, and the upsert of the ``pressure`` dataset.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

import numpy as np
import polars as pl

from liqcli.analytics.pressure import PressureConfig, PressureInputs, pressure_history
from liqcli.services.pressure import pressure_history_run
from liqcli.store.parquet import Store

STEP = 300_000
T0 = 1_767_225_600_000  # 2026-01-01


def synthetic(symbol: str, steps: int, rng: np.random.Generator) -> dict[str, pl.DataFrame]:
    """One symbol's stored datasets (all schema columns, ts as ms)."""
    ts = T0 + np.arange(steps) * STEP

    def walk(level: float, sigma: float) -> np.ndarray:
        return level * np.exp(np.cumsum(rng.normal(0, sigma, steps)))

    keep = rng.random(steps) > 0.02
    common = {"exchange": "binance", "symbol": symbol, "period": "5m", "ts": ts}

    def ratio(level: float) -> pl.DataFrame:
        values = walk(level, 0.01)
        return pl.DataFrame(
            {
                **common,
                "long_short_ratio": values,
                "long_share": values / (1 + values),
                "short_share": 1 / (1 + values),
            }
        ).filter(keep)

    oi, price = walk(8e4, 0.003), walk(6e4, 0.002)
    taker = np.exp(rng.normal(0, 0.2, steps))
    funding_ts = ts[ts % (8 * 3_600_000) == 0]
    n_liq = steps * 2
    liq_ts = np.sort(rng.integers(ts[0], ts[-1], n_liq))
    qty = rng.exponential(0.4, n_liq)
    return {
        "global_account_ratio": ratio(1.8),
        "top_account_ratio": ratio(1.2),
        "top_position_ratio": ratio(0.9),
        "taker_ratio": pl.DataFrame(
            {**common, "buy_sell_ratio": taker, "buy_vol": taker, "sell_vol": 1.0}
        ).filter(keep),
        "open_interest": pl.DataFrame(
            {**common, "open_interest": oi, "open_interest_value": oi * price}
        ).filter(keep),
        "funding": pl.DataFrame(
            {
                "exchange": "binance",
                "symbol": symbol,
                "ts": funding_ts,
                "funding_rate": rng.normal(1e-4, 1e-4, len(funding_ts)),
                "mark_price": 6e4,
            }
        ),
        "liquidations": pl.DataFrame(
            {
                "exchange": rng.choice(["binance", "okx"], n_liq),
                "symbol": symbol,
                "ts": liq_ts,
                "side": rng.choice(["long", "short"], n_liq),
                "price": 6e4,
                "qty": qty,
                "notional_usd": qty * 6e4,
                "venue_symbol": symbol,
                "received_ts": liq_ts,
            }
        ),
    }


def as_inputs(frames: dict[str, pl.DataFrame]) -> PressureInputs:
    return PressureInputs(
        global_account=frames["global_account_ratio"],
        top_account=frames["top_account_ratio"],
        top_position=frames["top_position_ratio"],
        taker=frames["taker_ratio"],
        open_interest=frames["open_interest"],
        funding=frames["funding"],
        liquidations=frames["liquidations"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--model", choices=["default", "seed"], default="default")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    steps = args.days * 288
    symbols = [f"SYM{i}USDT" for i in range(args.symbols)]
    data = {s: synthetic(s, steps, rng) for s in symbols}
    config = PressureConfig(model=args.model)
    start, end = T0, T0 + (steps - 1) * STEP

    t0 = time.perf_counter()
    rows = sum(pressure_history(as_inputs(data[s]), config, start, end).height for s in symbols)
    analytics_s = time.perf_counter() - t0
    print(
        f"analytics: {args.symbols} symbols x {steps:,} steps ({args.model} model): "
        f"{analytics_s:.3f} s wall, {rows / analytics_s:,.0f} steps/s"
    )

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        for frames in data.values():
            for dataset, frame in frames.items():
                store.write(dataset, frame)
        t0 = time.perf_counter()
        stored = 0
        for s in symbols:
            report = asyncio.run(
                pressure_history_run(store, s, config, start, end, offline=True, now=end)
            )
            stored += report.stored_rows
        store_s = time.perf_counter() - t0
    print(
        f"store: scan + history + upsert of {stored:,} pressure rows: {store_s:.3f} s wall "
        f"({store_s / args.symbols * 1000:.0f} ms per symbol)"
    )


if __name__ == "__main__":
    main()
