"""Hive-partitioned Parquet datasets (CONTRACT.md "Stored data").

Layout: ``{root}/{dataset}/{p1}={v1}/.../{YYYY-MM}.parquet`` (or ``{YYYY-MM-DD}.parquet``). Files hold
only the non-partition columns, sorted by key, so Polars, DuckDB and pandas read the tree as-is.

Writes are keyed upserts: each touched file is read, merged with the new rows (new wins on an equal
key) and replaced atomically (temp file in the same directory, fsync, ``os.replace``), the whole
cycle under the dataset's cross-process lock. A crash at any point leaves every file either in its
old or its new state, never half-written. Readers take no lock: they only ever see whole files.
"""

from __future__ import annotations

import calendar
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl

from liqcli.core.schemas import DatasetSpec, time_column
from liqcli.core.schemas import dataset as dataset_spec
from liqcli.errors import DataError, LiqError, UsageError
from liqcli.store.lock import file_lock

log = logging.getLogger(__name__)

# Partition values become directory names: keep them to characters every reader decodes alike.
_PARTITION_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_BUCKET_COL = "__liq_bucket"
_BUCKET_FORMAT = {"month": "%Y-%m", "day": "%Y-%m-%d"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LOCK_NAME = ".lock"
# Polars raises its own errors for bad files, but a few corruptions surface as a Rust panic.
_READ_ERRORS = (pl.exceptions.PolarsError, pl.exceptions.PanicException, OSError)


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
        rows = rows.with_columns(
            pl.col(time_column(spec)).dt.strftime(_BUCKET_FORMAT[spec.file_by]).alias(_BUCKET_COL)
        )
        groups = rows.partition_by([*spec.partition_by, _BUCKET_COL], as_dict=True)
        self.corrupt_files = []
        result = WriteResult(df.height, 0, [])
        try:
            with file_lock(self.dataset_dir(dataset) / _LOCK_NAME, timeout=lock_timeout):
                for group_key, group in sorted(groups.items()):
                    *partition_values, bucket = group_key
                    directory = self._partition_dir(spec, partition_values)
                    path = directory / f"{bucket}.parquet"
                    new_rows, rewritten = self._merge_into(
                        spec, path, group.select(spec.file_columns), file_key
                    )
                    result.new_rows += new_rows
                    if rewritten:
                        result.files.append(path)
        except OSError as exc:  # read-only or full disk: an expected failure, one line
            raise LiqError(f"{spec.name}: cannot write under {self.root}: {exc}") from None
        return result

    def _merge_into(
        self, spec: DatasetSpec, path: Path, rows: pl.DataFrame, file_key: list[str]
    ) -> tuple[int, bool]:
        """Merge ``rows`` into one file; returns (new keys, whether the file was rewritten)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path.parent)  # safe: we hold the dataset lock, so no writer is live
        existing = self._read_for_merge(spec, path)
        if existing is None:
            _atomic_write(rows.sort(file_key), path)
            return rows.height, True
        tc = time_column(spec)
        if tc in file_key and existing.height and rows[tc].min() > existing[tc].max():
            # Appending (a live journal's usual batch): no stored key can match a later time.
            _atomic_write(pl.concat([existing, rows.sort(file_key)]), path)
            return rows.height, True
        new_rows = rows.join(
            existing.select(file_key), on=file_key, how="anti", nulls_equal=True
        ).height
        merged = pl.concat([existing, rows]).unique(subset=file_key, keep="last").sort(file_key)
        if new_rows == 0 and merged.equals(existing):
            return 0, False  # re-writing the same batch: leave the file (and its mtime) alone
        _atomic_write(merged, path)
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
        **partitions: str | list[str] | None,
    ) -> pl.LazyFrame:
        """Lazy frame of every schema column, pruned by partition values and by time [start, end)."""
        self.corrupt_files = []
        return self._scan(dataset, start, end, partitions, deep_check=False)

    def read(
        self,
        dataset: str,
        *,
        start: int | None = None,
        end: int | None = None,
        **partitions: str | list[str] | None,
    ) -> pl.DataFrame:
        """``scan`` collected and sorted by key."""
        spec = dataset_spec(dataset)
        self.corrupt_files = []
        try:
            df = self._scan(dataset, start, end, partitions, deep_check=False).collect()
        except _READ_ERRORS:
            # A file with an intact footer but damaged pages: find it by reading each file whole.
            df = self._scan(dataset, start, end, partitions, deep_check=True).collect()
        return df.sort(list(spec.key))

    def _scan(
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
        for values, directory in self._leaves(spec, partitions):
            files = [
                f
                for f in sorted(directory.glob("*.parquet"))
                if _bucket_overlaps(f.stem, start, end) and self._readable(f, deep=deep_check)
            ]
            if not files:
                continue
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
            frames.append(lf.select(list(spec.schema)))
        if not frames:
            return pl.LazyFrame(schema=spec.pl_schema)
        lf = pl.concat(frames, how="vertical")
        tc = time_column(spec)
        if start is not None:
            lf = lf.filter(pl.col(tc) >= _ms_to_datetime(start))
        if end is not None:
            lf = lf.filter(pl.col(tc) < _ms_to_datetime(end))
        return lf

    def last_ts(self, dataset: str, **partitions: str) -> int | None:
        """Newest time (ms) stored for the partition(s); reads only the newest file of each."""
        return self._edge_ts(dataset, partitions, newest=True)

    def first_ts(self, dataset: str, **partitions: str) -> int | None:
        """Oldest time (ms) stored for the partition(s); reads only the oldest file of each."""
        return self._edge_ts(dataset, partitions, newest=False)

    def _edge_ts(self, dataset: str, partitions: dict[str, str], *, newest: bool) -> int | None:
        spec = dataset_spec(dataset)
        tc = time_column(spec)
        self.corrupt_files = []
        agg = pl.col(tc).max() if newest else pl.col(tc).min()
        found: list[int] = []
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
            directory = directory / f"{name}={value}"
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
                    children = [(v, directory / f"{name}={v}") for v in wanted]
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
    out = pl.DataFrame(columns)
    for name in dict.fromkeys((*spec.key, *spec.partition_by, time_column(spec))):
        nulls = out[name].null_count()
        if nulls:
            raise DataError(f"{spec.name}: column {name!r} has {nulls} null value(s)")
    for name in spec.partition_by:
        bad = [
            v for v in out[name].cast(pl.String).unique().to_list() if not _PARTITION_VALUE.match(v)
        ]
        if bad:
            raise DataError(
                f"{spec.name}: column {name!r} has values unfit for a directory name: {bad[:3]}"
            )
    return out


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
        if not isinstance(v, str) or not _PARTITION_VALUE.match(v):
            raise UsageError(f"invalid {name} {v!r}")
    return values


def _child_values(directory: Path, name: str) -> dict[str, Path]:
    prefix = f"{name}="
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return {}
    return {
        e.name[len(prefix) :]: Path(e.path)
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


def _atomic_write(df: pl.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            df.write_parquet(f, statistics=True)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _publish(tmp: Path, path: Path) -> None:
    """The commit point of a write: readers switch from the old file to the new one at once."""
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
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
