"""``liq map`` wall time and peak memory on 1M, 10M and 50M synthetic aggTrades.

    python benchmarks/map.py [--sizes 1M,10M,50M] [--formats parquet,csv] [--out benchmarks/out]

The trades are written once under ``--out`` (git-ignored) as daily files in Binance's aggTrades
layout, like a run over downloaded archives: 1M trades = one day, 10M = 6 days, 50M = 30 days
(BTCUSDT prints 1-2M aggTrades a day). Prices are a random walk at ~3% daily volatility; sizes
are log-normal (about 0.3% of trades are >= $100k).

Each measurement runs in a fresh child process; peak RSS is that child's ``ru_maxrss``
(``RUSAGE_CHILDREN`` of a wrapper process that runs only that child), CPU its user+system
time (children included), and each is the best of ``--repeat`` runs by wall time (the machine
is shared). Measurements per input:

- compute: import, scan the files and build the map (``map_from_files``: one shared scan up to
  10M trades, separate bounded-memory scans above), nothing drawn or printed;
- command: the full ``python -m liqcli map ... --chart map --chart depth -f json`` (startup,
  scan, map, JSON and both PNGs), the reference's job (about 18 s and 525 MB for 1M trades).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

DAY_MS = 86_400_000
T0 = 1_709_251_200_000  # 2024-03-01
SIZES = {"1M": (1_000_000, 1), "10M": (10_000_000, 6), "50M": (50_000_000, 30)}

COMPUTE = """
import os, sys
from pathlib import Path
os.environ["OPENBLAS_NUM_THREADS"] = "1"  # as liq map imports numpy (cli.common.import_numpy)
from liqcli.analytics.liqmap import MapSpec
from liqcli.services.liqmap import map_from_files
data_dir, mode, model, *files = sys.argv[1:]
m = map_from_files([Path(p) for p in files], "BTCUSDT", MapSpec(mode=mode, model=model), Path(data_dir))
print(m.trades, m.selected.height, m.bins.height, file=sys.stderr)
"""


def write_days(out: Path, label: str, total: int, days: int, fmt: str, seed: int = 1) -> list[Path]:
    """Daily files for ``total`` trades; generated once, reused by later runs."""
    folder = out / f"trades_{label}_{fmt}"
    paths = [folder / f"BTCUSDT-aggTrades-day{d:02d}.{fmt}" for d in range(days)]
    if all(p.exists() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per_day = total // days
    price = 60_000.0
    next_id = 1
    for day, path in enumerate(paths):
        n = per_day if day < days - 1 else total - per_day * (days - 1)
        steps = rng.normal(0.0, 0.03 / np.sqrt(n), n)
        prices = np.round(price * np.exp(np.cumsum(steps)), 1)
        price = float(prices[-1])
        ts = T0 + day * DAY_MS + np.sort(rng.integers(0, DAY_MS, n))
        ids = np.arange(next_id, next_id + n, dtype=np.int64)
        next_id += n
        frame = pl.DataFrame(
            {
                "agg_trade_id": ids,
                "price": prices,
                "quantity": np.round(rng.lognormal(-4.0, 1.6, n), 3) + 0.001,
                "first_trade_id": ids,
                "last_trade_id": ids,
                "transact_time": ts,
                "is_buyer_maker": rng.random(n) < 0.5,
            }
        )
        tmp = path.with_suffix(".part")
        if fmt == "csv":
            frame.write_csv(tmp)
        else:
            frame.rename({"transact_time": "ts", "quantity": "qty"}).write_parquet(tmp)
        tmp.replace(path)
    return paths


def measure(cmd: list[str]) -> dict[str, float]:
    """Wall time and peak RSS of ``cmd`` in a fresh wrapper (so RUSAGE_CHILDREN is only it)."""
    wrapper = (
        "import resource, subprocess, sys, time\n"
        "t0 = time.perf_counter()\n"
        "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
        "wall = time.perf_counter() - t0\n"
        "use = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(r.returncode, wall, use.ru_maxrss / 1024, use.ru_utime + use.ru_stime, repr(r.stderr[-300:]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, check=True
    )
    code, wall, rss, cpu, err = out.stdout.split(" ", 4)
    if code != "0":
        raise SystemExit(f"failed: {' '.join(cmd[:6])}...: {err}")
    return {
        "wall_s": round(float(wall), 3),
        "cpu_s": round(float(cpu), 3),
        "peak_rss_mb": round(float(rss), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1M,10M,50M")
    parser.add_argument("--formats", default="parquet,csv")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per measurement; the best is kept"
    )
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as data_dir:
        for label in args.sizes.split(","):
            total, days = SIZES[label]
            for fmt in args.formats.split(","):
                t0 = time.perf_counter()
                paths = [str(p) for p in write_days(args.out, label, total, days, fmt)]
                print(
                    f"# {label} {fmt}: {len(paths)} files ready in {time.perf_counter() - t0:.1f}s",
                    file=sys.stderr,
                )
                charts = str(args.out / "charts")
                runs = {
                    "compute top_n default": [sys.executable, "-c", COMPUTE, data_dir, "top_n", "default", *paths],
                    "command top_n default": [
                        sys.executable, "-m", "liqcli", "--data-dir", data_dir, "map", "BTCUSDT",
                        "--mode", "top_n", "--chart", "map", "--chart", "depth", "--out", charts,
                        "-f", "json", "--input", *paths,
                    ],
                    "command gross_value compat": [
                        sys.executable, "-m", "liqcli", "--data-dir", data_dir, "map", "BTCUSDT",
                        "--mode", "gross_value", "--model", "compat", "--chart", "map", "--chart",
                        "depth", "--out", charts, "-f", "json", "--input", *paths,
                    ],
                }  # fmt: skip
                for name, cmd in runs.items():
                    best = min(
                        (measure(cmd) for _ in range(args.repeat)), key=lambda r: r["wall_s"]
                    )
                    row = {"trades": label, "input": fmt, "run": name, **best}
                    results.append(row)
                    print(json.dumps(row), flush=True)
    print("\n| trades | input | run | wall s | CPU s | peak RSS MB |\n|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['trades']} | {r['input']} | {r['run']} | {r['wall_s']} | {r['cpu_s']} | {r['peak_rss_mb']} |"
        )


if __name__ == "__main__":
    main()
