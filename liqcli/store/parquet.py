"""Hive-partitioned Parquet datasets (CONTRACT.md "Stored data").

Layout: ``{root}/{dataset}/{p1}={v1}/.../{YYYY-MM}.parquet`` (or ``{YYYY-MM-DD}.parquet``). Files hold
only the non-partition columns, sorted by key, so Polars, DuckDB and pandas read the tree as-is.
Partition values may be any string: directory names hold them percent-encoded
(:func:`liqcli.core.schemas.escape_partition`), and reads decode them back.

Writes are keyed upserts: each touched file is read, merged with the new rows (new wins on an equal
key) and replaced atomically (temp file in the same directory, fsync, ``os.replace``), the whole
cycle under the dataset's cross-process lock. A crash at any point leaves every file either in its
old or its new state, never half-written. Readers take no lock: they only ever see whole files.
One write's files are made durable together (:class:`_Batch`): every temp file is written, then
synced, and only then renamed into place, then the renames are synced.
"""

from __future__ import annotations

import calendar
import ctypes
import logging
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl

from liqcli.core.schemas import (
    PARTITION_NAME_MAX,
    TS_MAX_MS,
    TS_MIN_MS,
    DatasetSpec,
    escape_partition,
    time_column,
    unescape_partition,
)
from liqcli.core.schemas import dataset as dataset_spec
from liqcli.errors import DataError, LiqError, UsageError
from liqcli.store.lock import file_lock

log = logging.getLogger(__name__)

_BUCKET_COL = "__liq_bucket"
_BUCKET_FORMAT = {"month": "%Y-%m", "day": "%Y-%m-%d"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LOCK_NAME = ".lock"
# Polars raises its own errors for bad files, but a few corruptions surface as a Rust panic.
_READ_ERRORS = (pl.exceptions.PolarsError, pl.exceptions.PanicException, OSError)
REASON_COL = "reason"  # why split_storable set a row aside
_OK_COL = "__liq_plausible"
# Values read back must be plausible: Polars writes no page checksums, so a flipped bit in a page
# decodes silently. Floats must be finite and below this magnitude (an exponent flip gives
# -4.7e184); these columns must not be negative (a sign flip). Mantissa flips stay undetected.
_FLOAT_MAX = 1e18
_NON_NEGATIVE = {
    "liquidations": ("price", "qty", "notional_usd"),
    "agg_trades": ("price", "qty"),
}


@dataclass
class WriteResult:
    rows_in: int  # rows given
    new_rows: int  # keys that were not stored before
    files: list[Path] = field(default_factory=list)  # files (re)written


class Store:
    """The data directory: one sub-directory per dataset."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.corrupt_files: list[Path] = []
        self.implausible_rows = 0  # rows the last read skipped for impossible values
        self._files: list[Path] = []  # the files the last scan read

    def dataset_dir(self, dataset: str) -> Path:
        return self.root / dataset_spec(dataset).name

    # ------------------------------------------------------------------ writing

    def write(self, dataset: str, df: pl.DataFrame, *, lock_timeout: float = 600.0) -> WriteResult:
        """Upsert ``df`` by the dataset key; returns what changed. Empty ``df`` is a no-op."""
        spec = dataset_spec(dataset)
        if df.height == 0:
            return WriteResult(0, 0, [])
        rows = _conform(spec, df)
        file_key = _file_key(spec)
        # Within one batch the later row wins, as it does against stored rows.
        rows = rows.unique(subset=list(spec.key), keep="last", maintain_order=True)
        try:
            # One sort and one column selection for every file (each group keeps the order).
            rows = rows.select(
                *spec.partition_by,
                pl.col(time_column(spec))
                .dt.strftime(_BUCKET_FORMAT[spec.file_by])
                .alias(_BUCKET_COL),
                *spec.file_columns,
            ).sort(file_key)
            groups = rows.partition_by(
                [*spec.partition_by, _BUCKET_COL],
                as_dict=True,
                include_key=False,
                maintain_order=True,
            )
        except _READ_ERRORS as exc:  # a panic on an out-of-range value must not escape
            raise DataError(f"{spec.name}: rows cannot be stored: {first_line(exc)}") from None
        self.corrupt_files = []
        result = WriteResult(df.height, 0, [])
        batch = _Batch()
        try:
            with file_lock(self.dataset_dir(dataset) / _LOCK_NAME, timeout=lock_timeout):
                for group_key, group in sorted(groups.items()):
                    *partition_values, bucket = group_key
                    directory = self._partition_dir(spec, partition_values)
                    path = directory / f"{bucket}.parquet"
                    new_rows, rewritten = self._merge_into(spec, path, group, file_key, batch)
                    result.new_rows += new_rows
                    if rewritten:
                        result.files.append(path)
                batch.commit()
        except OSError as exc:  # read-only or full disk: an expected failure, one line
            raise LiqError(f"{spec.name}: cannot write under {self.root}: {exc}") from None
        finally:
            batch.discard()  # temp files not published (a failure part-way)
        return result

    def _merge_into(
        self,
        spec: DatasetSpec,
        path: Path,
        rows: pl.DataFrame,
        file_key: list[str],
        batch: _Batch,
    ) -> tuple[int, bool]:
        """Merge ``rows`` (the file's columns, sorted by ``file_key``) into one file (published
        by ``batch.commit()``); returns (new keys, whether the file is rewritten)."""
        batch.prepare(path.parent)
        existing = self._read_for_merge(spec, path)
        if existing is None:
            batch.add(rows, path)
            return rows.height, True
        tc = time_column(spec)
        if tc in file_key and existing.height and rows[tc].min() > existing[tc].max():
            # Appending (a live journal's usual batch): no stored key can match a later time.
            batch.add(pl.concat([existing, rows]), path)
            return rows.height, True
        new_rows = rows.join(
            existing.select(file_key), on=file_key, how="anti", nulls_equal=True
        ).height
        merged = pl.concat([existing, rows])
        sticky = [c for c in spec.optional if c in merged.columns and c not in file_key]
        if sticky and new_rows < rows.height:
            # A later write that leaves an optional column out must not erase what an earlier
            # one stored: liq watch's liquidations carry no `seq`, liq paper --record's do.
            merged = merged.with_columns(pl.col(sticky).forward_fill().over(file_key))
        merged = merged.unique(subset=file_key, keep="last").sort(file_key)
        if new_rows == 0 and merged.equals(existing):
            return 0, False  # re-writing the same batch: leave the file (and its mtime) alone
        batch.add(merged, path)
        return new_rows, True

    def _read_for_merge(self, spec: DatasetSpec, path: Path) -> pl.DataFrame | None:
        if not path.exists():
            return None
        try:
            existing = pl.read_parquet(path)
        except _READ_ERRORS as exc:
            # Unreadable data cannot be merged; keep it aside (not deleted) for inspection.
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            os.replace(path, aside)
            self.corrupt_files.append(path)
            log.warning(
                "corrupt Parquet file %s (%s): moved aside to %s", path, first_line(exc), aside
            )
            return None
        return _conform_file(spec, existing)

    # ------------------------------------------------------------------ reading

    def scan(
        self,
        dataset: str,
        *,
        start: int | None = None,
        end: int | None = None,
        include_journal: bool = False,
        **partitions: str | list[str] | None,
    ) -> pl.LazyFrame:
        """Lazy frame of every schema column, pruned by partition values and by time [start, end).

        ``include_journal``: also the rows live writers (and killed ones) have journaled but not
        yet compacted into Parquet, read without taking their segments over.
        """
        self.corrupt_files = []
        pending = self._pending(dataset, start, end, partitions) if include_journal else None
        lf = self._scan(dataset, start, end, partitions, deep_check=False, pending=pending)
        return lf.filter(pl.col(_OK_COL)).drop(_OK_COL)

    def read(
        self,
        dataset: str,
        *,
        start: int | None = None,
        end: int | None = None,
        include_journal: bool = False,
        **partitions: str | list[str] | None,
    ) -> pl.DataFrame:
        """``scan`` collected and sorted by key."""
        spec = dataset_spec(dataset)
        self.corrupt_files = []
        pending = self._pending(dataset, start, end, partitions) if include_journal else None
        try:
            df = self._scan(
                dataset, start, end, partitions, deep_check=False, pending=pending
            ).collect()
        except _READ_ERRORS:
            # A file with an intact footer but damaged pages: find it by reading each file whole.
            df = self._scan(
                dataset, start, end, partitions, deep_check=True, pending=pending
            ).collect()
        bad = df.height - int(df[_OK_COL].sum())
        self.implausible_rows = bad
        if bad:
            self._name_implausible(spec)
            df = df.filter(pl.col(_OK_COL))
        return df.drop(_OK_COL).sort(list(spec.key))

    def _name_implausible(self, spec: DatasetSpec) -> None:
        """A read found impossible values: say which files hold them (a rare, slow path)."""
        check = _plausible(spec)
        for path in self._files:
            try:
                n = pl.scan_parquet(path).filter(~check).select(pl.len()).collect().item()
            except _READ_ERRORS:
                continue
            if n:
                log.warning(
                    "skipping %d row(s) with impossible values in %s (damaged data?)", n, path
                )

    def _pending(
        self,
        dataset: str,
        start: int | None,
        end: int | None,
        partitions: dict[str, str | list[str] | None],
    ) -> pl.DataFrame:
        """Journaled rows matching the filters. Read before the Parquet files are listed: a
        segment compacted in between is then found in Parquet, never missed."""
        from liqcli.store.journal import pending_rows

        spec = dataset_spec(dataset)
        rows = pending_rows(self.root, dataset)
        for name in spec.partition_by:
            wanted = _filter_values(name, partitions.get(name))
            if wanted is not None:
                rows = rows.filter(pl.col(name).is_in(wanted))
        tc = time_column(spec)
        if start is not None:
            rows = rows.filter(pl.col(tc) >= _ms_to_datetime(start))
        if end is not None:
            rows = rows.filter(pl.col(tc) < _ms_to_datetime(end))
        return rows

    def _scan(
        self,
        dataset: str,
        start: int | None,
        end: int | None,
        partitions: dict[str, str | list[str] | None],
        *,
        deep_check: bool,
        pending: pl.DataFrame | None = None,
    ) -> pl.LazyFrame:
        lf = self._scan_files(dataset, start, end, partitions, deep_check=deep_check)
        if pending is None or pending.height == 0:
            return lf
        spec = dataset_spec(dataset)
        key, tc = list(spec.key), time_column(spec)
        # A segment is deleted only after its rows are stored: keep each key once.
        stored = lf.filter(pl.col(tc).is_between(pending[tc].min(), pending[tc].max())).select(key)
        fresh = pending.lazy().join(stored, on=key, how="anti", nulls_equal=True)
        fresh = fresh.select(*spec.schema, _plausible(spec).alias(_OK_COL))
        return pl.concat([lf, fresh], how="vertical")

    def _scan_files(
        self,
        dataset: str,
        start: int | None,
        end: int | None,
        partitions: dict[str, str | list[str] | None],
        *,
        deep_check: bool,
    ) -> pl.LazyFrame:
        spec = dataset_spec(dataset)
        file_schema = {c: spec.schema[c] for c in spec.file_columns}
        frames = []
        self._files = []
        check = _plausible(spec).alias(_OK_COL)
        for values, directory in self._leaves(spec, partitions):
            files = [
                f
                for f in sorted(directory.glob("*.parquet"))
                if _bucket_overlaps(f.stem, start, end) and self._readable(f, deep=deep_check)
            ]
            if not files:
                continue
            self._files += files
            lf = pl.scan_parquet(
                files,
                schema=file_schema,
                missing_columns="insert",
                extra_columns="ignore",
                hive_partitioning=False,
                glob=False,
            )
            lf = lf.with_columns(
                pl.lit(value).cast(spec.schema[name]).alias(name) for name, value in values.items()
            )
            frames.append(lf.select(*spec.schema, check))
        if not frames:
            return pl.LazyFrame(schema={**spec.pl_schema, _OK_COL: pl.Boolean()})
        lf = pl.concat(frames, how="vertical")
        tc = time_column(spec)
        if start is not None:
            lf = lf.filter(pl.col(tc) >= _ms_to_datetime(start))
        if end is not None:
            lf = lf.filter(pl.col(tc) < _ms_to_datetime(end))
        return lf

    def last_ts(
        self, dataset: str, *, include_journal: bool = False, **partitions: str
    ) -> int | None:
        """Newest time (ms) stored for the partition(s); reads only the newest file of each."""
        return self._edge_ts(dataset, partitions, newest=True, include_journal=include_journal)

    def first_ts(
        self, dataset: str, *, include_journal: bool = False, **partitions: str
    ) -> int | None:
        """Oldest time (ms) stored for the partition(s); reads only the oldest file of each."""
        return self._edge_ts(dataset, partitions, newest=False, include_journal=include_journal)

    def _edge_ts(
        self, dataset: str, partitions: dict[str, str], *, newest: bool, include_journal: bool
    ) -> int | None:
        spec = dataset_spec(dataset)
        tc = time_column(spec)
        self.corrupt_files = []
        agg = pl.col(tc).max() if newest else pl.col(tc).min()
        found: list[int] = []
        if include_journal:
            pending = self._pending(dataset, None, None, dict(partitions))
            if pending.height:
                found.append(pending.select(agg.dt.epoch("ms")).item())
        for _values, directory in self._leaves(spec, dict(partitions)):
            # File names sort by time, so the first readable file in that order holds the edge.
            for path in sorted(directory.glob("*.parquet"), reverse=newest):
                try:
                    value = (
                        pl.scan_parquet(path, hive_partitioning=False)
                        .select(agg.dt.epoch("ms"))
                        .collect()
                        .item()
                    )
                except _READ_ERRORS as exc:
                    self._mark_corrupt(path, exc)
                    continue
                if value is not None:
                    found.append(value)
                    break
        if not found:
            return None
        return max(found) if newest else min(found)

    def partitions(self, dataset: str) -> list[dict[str, str]]:
        """Every partition holding at least one file, e.g. ``{"exchange": "binance", ...}``."""
        spec = dataset_spec(dataset)
        return [
            values
            for values, directory in self._leaves(spec, {})
            if any(directory.glob("*.parquet"))
        ]

    # ------------------------------------------------------------------ helpers

    def _partition_dir(self, spec: DatasetSpec, values: list[str]) -> Path:
        directory = self.dataset_dir(spec.name)
        for name, value in zip(spec.partition_by, values, strict=True):
            directory = directory / f"{name}={escape_partition(value)}"
        return directory

    def _leaves(
        self, spec: DatasetSpec, partitions: dict[str, str | list[str] | None]
    ) -> Iterator[tuple[dict[str, str], Path]]:
        """Partition directories matching the filters, walking only the matching branches."""
        unknown = sorted(set(partitions) - set(spec.partition_by))
        if unknown:
            raise UsageError(
                f"{spec.name} is partitioned by {', '.join(spec.partition_by)}, "
                f"not {', '.join(unknown)}"
            )
        level: list[tuple[dict[str, str], Path]] = [({}, self.dataset_dir(spec.name))]
        for name in spec.partition_by:
            wanted = _filter_values(name, partitions.get(name))
            deeper: list[tuple[dict[str, str], Path]] = []
            for values, directory in level:
                if wanted is None:
                    children = sorted(_child_values(directory, name).items())
                else:
                    children = [(v, directory / f"{name}={escape_partition(v)}") for v in wanted]
                deeper.extend(({**values, name: v}, d) for v, d in children if d.is_dir())
            level = deeper
        yield from level

    def _readable(self, path: Path, *, deep: bool) -> bool:
        try:
            if deep:
                pl.read_parquet(path)
            else:
                pl.read_parquet_schema(path)  # the footer: catches truncated and foreign files
        except _READ_ERRORS as exc:
            self._mark_corrupt(path, exc)
            return False
        return True

    def _mark_corrupt(self, path: Path, exc: BaseException) -> None:
        if path not in self.corrupt_files:
            self.corrupt_files.append(path)
        log.warning("skipping corrupt Parquet file %s: %s", path, first_line(exc))


def _conform(spec: DatasetSpec, df: pl.DataFrame) -> pl.DataFrame:
    """Select and cast the schema columns, or raise DataError naming the dataset and column."""
    out = _cast_columns(spec, df)
    for name in _required_columns(spec):
        nulls = out[name].null_count()
        if nulls:
            raise DataError(f"{spec.name}: column {name!r} has {nulls} null value(s)")
    reasons = out.select(_problems(spec, out, finite=False)).to_series().drop_nulls()
    if reasons.len():
        raise DataError(f"{spec.name}: {reasons.len()} row(s) cannot be stored: {reasons[0]}")
    return out


def split_storable(
    dataset: str, df: pl.DataFrame, *, finite: bool = True
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``df`` cast to the dataset's columns, split into the rows ``Store.write`` accepts and the
    rest, the latter with a ``reason`` column, so one bad row is set aside on its own.

    A row is refused for a missing key, partition or time value, a time outside the years
    1-9999, a partition value too long for a directory name, and (``finite``) a NaN or infinite
    float. Raises DataError only when a whole column is missing or of the wrong type.
    """
    spec = dataset_spec(dataset)
    out = _cast_columns(spec, df)
    reason = out.select(_problems(spec, out, finite=finite)).to_series()
    if not reason.null_count() < out.height:
        return out, out.clear().with_columns(pl.lit(None, pl.String).alias(REASON_COL))
    bad = reason.is_not_null()
    return out.filter(~bad), out.filter(bad).with_columns(reason.filter(bad).alias(REASON_COL))


def _cast_columns(spec: DatasetSpec, df: pl.DataFrame) -> pl.DataFrame:
    absent = [c for c in spec.optional if c not in df.columns]
    if absent:  # optional columns a writer left out are nulls
        df = df.with_columns(pl.lit(None, spec.schema[c]).alias(c) for c in absent)
    missing = [c for c in spec.schema if c not in df.columns]
    if missing:
        raise DataError(f"{spec.name}: missing column(s) {', '.join(missing)}")
    columns = []
    for name, dtype in spec.schema.items():
        try:
            columns.append(df.select(_cast_expr(name, df.schema[name], dtype)).to_series())
        except _READ_ERRORS as exc:
            raise DataError(
                f"{spec.name}: column {name!r} ({df.schema[name]}) cannot be stored as {dtype}: "
                f"{first_line(exc)}"
            ) from None
    return pl.DataFrame(columns)


def _required_columns(spec: DatasetSpec) -> list[str]:
    return list(dict.fromkeys((*spec.key, *spec.partition_by, time_column(spec))))


def _problems(spec: DatasetSpec, df: pl.DataFrame, *, finite: bool) -> pl.Expr:
    """Per row, why it cannot be stored (null when it can): the first problem found."""
    checks: list[tuple[pl.Expr, str]] = [
        (pl.col(name).is_null(), f"no {name}") for name in _required_columns(spec)
    ]
    for name, dtype in spec.schema.items():
        if isinstance(dtype, pl.Datetime):
            ms = pl.col(name).dt.epoch("ms")
            checks.append(((ms < TS_MIN_MS) | (ms > TS_MAX_MS), f"{name} outside the years 1-9999"))
        elif finite and dtype.is_float():
            checks.append((~pl.col(name).is_finite(), f"{name} is not a finite number"))
    for name in spec.partition_by:
        too_long = [
            v
            for v in df[name].unique().drop_nulls().to_list()
            if len(escape_partition(v)) > PARTITION_NAME_MAX
        ]
        if too_long:
            checks.append((pl.col(name).is_in(too_long), f"{name} too long for a directory name"))
    expr = pl.lit(None, pl.String)
    for condition, reason in reversed(checks):
        expr = pl.when(condition.fill_null(False)).then(pl.lit(reason)).otherwise(expr)
    return expr.alias(REASON_COL)


def _plausible(spec: DatasetSpec) -> pl.Expr:
    """Per row read back: are its values possible at all (nulls are)?"""
    checks = []
    non_negative = _NON_NEGATIVE.get(spec.name, ())
    for name in spec.file_columns:
        dtype = spec.schema[name]
        if dtype.is_float():
            # NaN compares greater than any number: refused too.
            low = 0.0 if name in non_negative else -_FLOAT_MAX
            checks.append(pl.col(name).is_between(low, _FLOAT_MAX))
        elif isinstance(dtype, pl.Datetime):
            checks.append(pl.col(name).dt.epoch("ms").is_between(TS_MIN_MS, TS_MAX_MS))
    if not checks:
        return pl.lit(True)
    # Kleene logic: a null check (a missing value) leaves the row plausible unless one fails.
    return pl.all_horizontal(checks).fill_null(True)


def _cast_expr(name: str, source: pl.DataType, target: pl.DataType) -> pl.Expr:
    col = pl.col(name)
    if not isinstance(target, pl.Datetime):
        return col.cast(target, strict=True)
    unit, zone = target.time_unit or "ms", target.time_zone
    if isinstance(source, pl.Datetime):
        if source.time_zone is None:
            col = col.dt.replace_time_zone(zone)
        else:
            col = col.dt.convert_time_zone(zone or "UTC")
        return col.dt.cast_time_unit(unit)
    if source.is_integer() or source.is_float() or source == pl.Null:
        # Integers are epoch milliseconds (the event model's convention).
        return col.cast(pl.Int64, strict=True).cast(pl.Datetime("ms", zone)).dt.cast_time_unit(unit)
    raise pl.exceptions.InvalidOperationError("expected epoch milliseconds or a datetime")


def _conform_file(spec: DatasetSpec, df: pl.DataFrame) -> pl.DataFrame:
    """A stored file's frame in today's column order, with columns added later as nulls."""
    return df.select(
        pl.col(c).cast(spec.schema[c]) if c in df.columns else pl.lit(None, spec.schema[c]).alias(c)
        for c in spec.file_columns
    )


def _file_key(spec: DatasetSpec) -> list[str]:
    return [c for c in spec.key if c not in spec.partition_by]


def _filter_values(name: str, value: str | list[str] | None) -> list[str] | None:
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    for v in values:
        if not isinstance(v, str):
            raise UsageError(f"invalid {name} {v!r}")
    return values


def _child_values(directory: Path, name: str) -> dict[str, Path]:
    prefix = f"{name}="
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return {}
    return {
        unescape_partition(e.name[len(prefix) :]): Path(e.path)
        for e in entries
        if e.name.startswith(prefix) and e.is_dir()
    }


def _bucket_overlaps(stem: str, start: int | None, end: int | None) -> bool:
    """Does the file named ``YYYY-MM`` / ``YYYY-MM-DD`` cover any of [start, end)?"""
    if start is None and end is None:
        return True
    try:
        if len(stem) == 7:
            year, month = int(stem[:4]), int(stem[5:7])
            first = date(year, month, 1)
            after = first + timedelta(days=calendar.monthrange(year, month)[1])
        else:
            first = date.fromisoformat(stem)
            after = first + timedelta(days=1)
    except ValueError:
        return True  # not one of ours: don't prune what we can't date
    bucket_start = int(datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp() * 1000)
    bucket_end = int(datetime(after.year, after.month, after.day, tzinfo=UTC).timestamp() * 1000)
    return (start is None or bucket_end > start) and (end is None or bucket_start < end)


def _ms_to_datetime(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


class _Batch:
    """One write's new files: each written to a temp file beside its target (``add``), then
    ``commit``: every temp file's bytes on disk first, then each renamed into place, then the
    renames on disk. A file is never renamed into place before its bytes are durable.

    Two fsyncs per file (the file, its directory) cost a compaction of 200 symbols 400 syscalls
    and journal commits; from :data:`_SYNCFS_MIN_FILES` files on Linux, one ``syncfs`` per
    filesystem before the renames and one after do the same (Linux's syncfs waits for the I/O).
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []  # (temp file, target)
        self._prepared: set[Path] = set()

    def prepare(self, directory: Path) -> None:
        """Create ``directory`` and clear temp files left there by writers killed before their
        rename (safe: we hold the dataset lock, so no writer is live), once per write: the
        batch's own temp files must stay."""
        if directory not in self._prepared:
            directory.mkdir(parents=True, exist_ok=True)
            _remove_stale_temps(directory)
            self._prepared.add(directory)

    def add(self, df: pl.DataFrame, path: Path) -> None:
        self.pending.append((_write_temp(df, path), path))

    def commit(self) -> None:
        if not self.pending:
            return
        directories = list(dict.fromkeys(path.parent for _, path in self.pending))
        filesystems = _syncfs_targets(directories) if len(self.pending) >= _SYNCFS_MIN_FILES else []
        if filesystems:
            for directory in filesystems:
                _syncfs(directory)
        else:
            for tmp, _ in self.pending:
                _fsync_path(tmp, os.O_RDONLY)
        while self.pending:
            tmp, path = self.pending[0]
            _publish(tmp, path)
            self.pending.pop(0)
        if filesystems:
            for directory in filesystems:
                _syncfs(directory)
        else:
            for directory in directories:
                _fsync_path(directory, os.O_RDONLY | os.O_DIRECTORY)

    def discard(self) -> None:
        for tmp, _ in self.pending:
            tmp.unlink(missing_ok=True)
        self.pending.clear()


def _write_temp(df: pl.DataFrame, path: Path) -> Path:
    """``df`` as Parquet in a new temp file beside ``path`` (not yet synced); returns its path."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            df.write_parquet(f, statistics=True)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _publish(tmp: Path, path: Path) -> None:
    """The commit point of one file: readers switch from the old file to the new one at once."""
    os.replace(tmp, path)


def _fsync_path(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SYNCFS_MIN_FILES = 8


def _libc_syncfs() -> Callable[[int], int] | None:
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


_SYNCFS = _libc_syncfs()


def _syncfs_targets(directories: list[Path]) -> list[Path]:
    """One directory per filesystem holding ``directories``, or ``[]`` without syncfs."""
    if _SYNCFS is None:
        return []
    by_device: dict[int, Path] = {}
    for directory in directories:
        by_device.setdefault(os.stat(directory).st_dev, directory)
    return list(by_device.values())


def _syncfs(directory: Path) -> None:
    """Every dirty page and inode of ``directory``'s filesystem on disk (waits for the I/O)."""
    assert _SYNCFS is not None
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {directory}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _remove_stale_temps(directory: Path) -> None:
    """Temp files left by writers killed before their rename."""
    for tmp in directory.glob(".*.parquet.*.tmp"):
        tmp.unlink(missing_ok=True)


def first_line(exc: BaseException) -> str:
    """An error's first line (Polars' messages go on with hints), or its type when empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
