"""``liq data``: what the store holds, read from the Parquet footers (no data pages loaded).

One entry per partition leaf (dataset, exchange, symbol, period / interval, other partition
values): files, rows, first and last time, missing steps for the datasets on a period grid, and
bytes on disk. The tree is walked as laid out (CONTRACT.md "Stored data"), so datasets this
process never registered (another tool's, a newer version's) are listed too; ``date=``
directories are summed into their parent, and directories starting with ``_`` or ``.`` (the
archive cache, temp files) are not datasets.

API::

    inventory(data_dir, datasets=None, symbol=None) -> Inventory   # .entries, .corrupt
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liqcli.core.timeutil import iso_ms, period_ms
from liqcli.store.parquet import first_line

log = logging.getLogger("liq")

# Partition columns that name the step of a regular series.
PERIOD_KEYS = ("period", "interval")
TIME_COLUMNS = ("ts", "start_ts")


@dataclass
class Entry:
    dataset: str
    exchange: str | None
    symbol: str | None
    period: str | None
    partition: str  # any other partition values, e.g. "model=default"
    files: int = 0
    rows: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    gaps: int | None = None  # missing period steps between first and last (grid datasets)
    bytes: int = 0
    corrupt: int = 0  # files whose footer cannot be read (left out of the figures)

    def row(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "exchange": self.exchange,
            "symbol": self.symbol,
            "period": self.period,
            "partition": self.partition or None,
            "first_ts": iso_ms(self.first_ms) if self.first_ms is not None else None,
            "last_ts": iso_ms(self.last_ms) if self.last_ms is not None else None,
            "rows": self.rows,
            "gaps": self.gaps,
            "files": self.files,
            "bytes": self.bytes,
            "corrupt_files": self.corrupt,
        }


@dataclass
class Inventory:
    root: Path
    entries: list[Entry] = field(default_factory=list)
    corrupt: list[Path] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(e.bytes for e in self.entries)


def inventory(
    data_dir: Path, datasets: list[str] | None = None, symbol: str | None = None
) -> Inventory:
    root = Path(data_dir)
    result = Inventory(root)
    if not root.is_dir():
        return result
    wanted = set(datasets or [])
    for dataset_dir in sorted(_subdirs(root)):
        name = dataset_dir.name
        if name.startswith(("_", ".")) or "=" in name or (wanted and name not in wanted):
            continue
        for values, files in sorted(_leaves(dataset_dir, {}).items()):
            parts = dict(values)
            if symbol is not None and parts.get("symbol") != symbol:
                continue
            entry = Entry(
                dataset=name,
                exchange=parts.pop("exchange", None),
                symbol=parts.pop("symbol", None),
                period=next((parts.pop(k) for k in PERIOD_KEYS if k in parts), None),
                partition=",".join(f"{k}={v}" for k, v in parts.items()),
            )
            _measure(entry, sorted(files, key=lambda p: p.name), result.corrupt)
            result.entries.append(entry)
    return result


def _subdirs(directory: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(directory) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _leaves(
    directory: Path, values: dict[str, str]
) -> dict[tuple[tuple[str, str], ...], list[Path]]:
    """Partition values -> their Parquet files; ``date=`` levels are merged into the parent."""
    out: dict[tuple[tuple[str, str], ...], list[Path]] = {}
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return out
    here = [
        Path(e.path)
        for e in entries
        if e.name.endswith(".parquet") and not e.name.startswith(".") and e.is_file()
    ]
    if here:
        out.setdefault(tuple(values.items()), []).extend(here)
    for e in entries:
        if not e.is_dir(follow_symlinks=False) or "=" not in e.name or e.name.startswith("."):
            continue
        key, value = e.name.split("=", 1)
        deeper = values if key == "date" else {**values, key: value}
        for k, files in _leaves(Path(e.path), deeper).items():
            out.setdefault(k, []).extend(files)
    return out


def _measure(entry: Entry, files: list[Path], corrupt: list[Path]) -> None:
    """Rows from each footer; first/last from the column statistics of the oldest and newest
    readable file (files are named by month/day, so their order is time order)."""
    import polars as pl

    readable: list[tuple[Path, str | None, Any]] = []
    for path in files:
        try:
            entry.bytes += path.stat().st_size
            schema = pl.read_parquet_schema(path)
            rows = pl.scan_parquet(path, hive_partitioning=False).select(pl.len()).collect().item()
        except (pl.exceptions.PolarsError, OSError) as exc:
            entry.corrupt += 1
            corrupt.append(path)
            log.warning("%s: not readable, left out (%s)", path, first_line(exc))
            continue
        entry.files += 1
        entry.rows += int(rows)
        column = next((c for c in TIME_COLUMNS if c in schema), None)
        readable.append((path, column, schema.get(column) if column else None))
    if not readable or readable[0][1] is None:
        return
    entry.first_ms = _edge(readable[0], newest=False)
    entry.last_ms = _edge(readable[-1], newest=True)
    if entry.period and entry.first_ms is not None and entry.last_ms is not None:
        try:
            step = period_ms(entry.period)
        except Exception:  # a period this version does not know: no gap figure
            return
        expected = (entry.last_ms - entry.first_ms) // step + 1
        entry.gaps = max(expected - entry.rows, 0)


def _edge(found: tuple[Path, str | None, Any], *, newest: bool) -> int | None:
    import polars as pl

    path, column, dtype = found
    if column is None:
        return None
    col = pl.col(column)
    ms = col.dt.epoch("ms") if isinstance(dtype, pl.Datetime) else col.cast(pl.Int64)
    try:
        lf = pl.scan_parquet(path, hive_partitioning=False)
        value = lf.select(ms.max() if newest else ms.min()).collect().item()
    except (pl.exceptions.PolarsError, OSError) as exc:
        log.warning("%s: no %s range (%s)", path, column, first_line(exc))
        return None
    return None if value is None else int(value)
