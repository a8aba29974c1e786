"""``liq data`` (the store inventory) on a store of many series and months.

    python benchmarks/data.py [--symbols 50] [--months 24]

Writes ``--symbols`` x 6 five-minute series (the open-interest and ratio datasets' layout) of
``--months`` month files each into a temporary data directory, then times the inventory (footers
and edge files only) against a full load of the same rows, to show what reading metadata saves.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from liqcli.services.inventory import inventory
from liqcli.store import Store

T0 = 1_704_067_200_000  # 2024-01-01
STEP = 300_000
DATASETS = ("open_interest", "taker_ratio", "global_account_ratio", "top_account_ratio",
            "top_position_ratio", "funding")  # fmt: skip


def populate(root: Path, symbols: int, months: int) -> int:
    store = Store(root)
    steps = months * 30 * 288
    ts = T0 + np.arange(steps, dtype=np.int64) * STEP
    values = np.random.default_rng(1).random(steps)
    rows = 0
    for i in range(symbols):
        symbol = f"S{i}USDT"
        base = {"exchange": "binance", "symbol": symbol, "ts": ts}
        store.write("open_interest", pl.DataFrame({**base, "period": "5m",
                    "open_interest": values, "open_interest_value": values}))  # fmt: skip
        store.write("taker_ratio", pl.DataFrame({**base, "period": "5m", "buy_sell_ratio": values,
                    "buy_vol": values, "sell_vol": values}))  # fmt: skip
        for name in DATASETS[2:5]:
            store.write(name, pl.DataFrame({**base, "period": "5m", "long_short_ratio": values,
                        "long_share": values, "short_share": values}))  # fmt: skip
        rows += 5 * steps
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--months", type=int, default=24)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = populate(root, args.symbols, args.months)
        files = len(list(root.rglob("*.parquet")))
        start = time.perf_counter()
        found = inventory(root)
        took = time.perf_counter() - start
        assert sum(e.rows for e in found.entries) == rows
        start = time.perf_counter()
        loaded = sum(pl.read_parquet(p).height for p in root.rglob("*.parquet"))
        full = time.perf_counter() - start
        assert loaded == rows
        print(f"{len(found.entries)} series, {files} files, {rows:,} rows")
        print(f"liq data inventory: {took:.3f} s   (a full load of the same files: {full:.3f} s)")


if __name__ == "__main__":
    main()
