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

import polars as pl

from liqcli.core.timeutil import iso_ms, period_ms
from liqcli.store.parquet import first_line

log = logging.getLogger("liq")

# Partition columns that name the step of a regular series.
PERIOD_KEYS = ("period", "interval")
# Polars raises its own errors for foreign files; a few corruptions surface as a panic.
_ERRORS = (pl.exceptions.PolarsError, pl.exceptions.PanicException, OSError)
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
    """Rows from the footers (one scan over the leaf's files; file by file only when one of
    them is unreadable); first/last from the oldest and newest readable file (files are named
    by month/day, so their order is time order)."""
    for path in files:
        try:
            entry.bytes += path.stat().st_size
        except OSError:
            pass
    good = files
    try:
        entry.rows = _count(files)
    except _ERRORS:
        good = []
        for path in files:
            try:
                entry.rows += _count([path])
                good.append(path)
            except _ERRORS as exc:
                entry.corrupt += 1
                corrupt.append(path)
                log.warning("%s: not readable, left out (%s)", path, first_line(exc))
    entry.files = len(good)
    if not good:
        return
    entry.first_ms = _edge(good[0], newest=False)
    entry.last_ms = _edge(good[-1], newest=True)
    if entry.period and entry.first_ms is not None and entry.last_ms is not None:
        try:
            step = period_ms(entry.period, klines=True)
        except Exception:  # a period this version does not know: no gap figure
            return
        expected = (entry.last_ms - entry.first_ms) // step + 1
        entry.gaps = max(expected - entry.rows, 0)


def _count(files: list[Path]) -> int:
    lf = pl.scan_parquet(files, hive_partitioning=False, glob=False)
    return int(lf.select(pl.len()).collect().item())


def _edge(path: Path, *, newest: bool) -> int | None:
    try:
        schema = pl.read_parquet_schema(path)
        column = next((c for c in TIME_COLUMNS if c in schema), None)
        if column is None:
            return None
        col = pl.col(column)
        ms = col.dt.epoch("ms") if isinstance(schema[column], pl.Datetime) else col.cast(pl.Int64)
        lf = pl.scan_parquet(path, hive_partitioning=False)
        value = lf.select(ms.max() if newest else ms.min()).collect().item()
    except _ERRORS as exc:
        log.warning("%s: no time range (%s)", path, first_line(exc))
        return None
    return None if value is None else int(value)
