"""The streaming append path for live events (e.g. liquidations seen by ``liq watch``).

Rows go to a segment ``{root}/{dataset}/_journal/{pid}-{n}.arrows`` first and reach Parquet in
batches ("compaction"), because rewriting a Parquet file per event would be far too slow.
``append`` only queues the row; a background thread turns the queue into one Arrow IPC stream at
least every ``flush_interval`` seconds and hands it to the OS, so a ``kill -9`` loses at most that
much. (Columnar batches cost a tenth of a JSON line per row to write and to read back.) A second
thread compacts every ``compact_interval`` seconds or ``compact_rows`` rows, without blocking
``append``.

Segment format: frames of ``b"LIQJ"``, the payload length (8 bytes, little-endian) and the payload,
a complete Arrow IPC stream of the dataset's columns (time columns as epoch-ms Int64). Reading
resynchronises on the next frame magic after damage (a torn last frame is the normal trace of a
crash); a segment damaged anywhere else is kept as ``.damaged`` once its readable rows are
stored. JSON-lines segments (``.jsonl``) left by earlier versions are still recovered.

Failures stay local: a row the store cannot hold is set aside on its own in ``.rows-rejected``
(same frame format, with a ``reason`` column); a failed write (a full disk) is truncated back to
the last whole frame and its rows kept in memory (up to ``max_unwritten_bytes``) and retried at
every flush; rows that could not be kept are counted in ``stats.lost`` (see ``lost_rows``).

Each live segment is held under an exclusive ``flock``; the kernel drops it when its writer dies.
``open()`` therefore recovers exactly the segments of dead writers (whatever their pid is now used
for) and never a live one. Store writes are idempotent upserts, so a segment recovered twice (a
crash between its Parquet write and its deletion) never duplicates a row. Readers see journaled
rows too, without taking a segment over: :func:`pending_rows`.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import itertools
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from liqcli.core.schemas import DatasetSpec, time_column
from liqcli.core.schemas import dataset as dataset_spec
from liqcli.errors import DataError, LiqError, UsageError
from liqcli.store.lock import try_flock
from liqcli.store.parquet import REASON_COL, Store, WriteResult, first_line, split_storable

log = logging.getLogger(__name__)

JOURNAL_DIR = "_journal"  # a leading "_" keeps Store.scan, pyarrow and DuckDB out of it
_SEGMENT_SUFFIX = ".arrows"
_UNPUBLISHED_SUFFIX = ".arrows.new"  # created and locked, not yet renamed into place
_LEGACY_SUFFIXES = (".jsonl", ".jsonl.new")  # segments of versions that journaled JSON lines
# Whole segments set aside by earlier versions for one bad row: retried, row by row, on open.
_LEGACY_REJECTED = (".arrows.rejected", ".jsonl.rejected")
_REJECTED_ROWS_SUFFIX = ".rows-rejected"  # rows the store refused, with their reason
_DAMAGED_SUFFIX = ".damaged"  # a segment with unreadable bytes, kept for inspection
_FRAME_MAGIC = b"LIQJ"
_FRAME_HEADER = struct.Struct("<4sQ")  # magic, payload length
# Polars reports some damage as a Rust panic, which is a BaseException, not an Exception.
_POLARS_ERRORS = (Exception, pl.exceptions.PanicException)
# Segment numbers are unique per process even with several journals (n in {pid}-{n}.arrows).
_segment_numbers = itertools.count()


@dataclass
class JournalStats:
    appended: int = 0  # rows given to append()
    compacted: int = 0  # rows this journal moved from its segments into Parquet
    recovered_segments: int = 0  # dead writers' segments taken over
    recovered_rows: int = 0
    dropped: int = 0  # rows with a value no column can hold (logged, not kept)
    rejected: int = 0  # rows the store refused, kept in .rows-rejected files
    damaged_segments: int = 0  # segments with unreadable bytes, kept as .damaged
    lost: int = 0  # rows neither written nor kept: memory bound exceeded or disk full at close
    write_failures: int = 0  # failed segment writes (each retried)
    compaction_failures: int = 0


@dataclass
class _Segment:
    path: Path
    fd: int  # held open (and flocked) until the segment's rows are in Parquet
    rows: int = 0
    size: int = 0  # bytes of whole frames written: a failed write is truncated back to this


@dataclass
class _Trouble:
    """A failure repeating at every flush or compaction: said loudly once, then once resolved."""

    what: str
    count: int = 0
    first: str = ""

    def failed(self, exc: BaseException, *, traceback: bool = False) -> None:
        self.count += 1
        if self.count == 1:
            self.first = first_line(exc)
            log.error("%s failed: %s (retrying)", self.what, self.first, exc_info=traceback)
        else:
            log.debug("%s failed again (%d in a row): %s", self.what, self.count, first_line(exc))

    def succeeded(self) -> None:
        if self.count:
            log.warning(
                "%s works again after %d failure(s) (%s)", self.what, self.count, self.first
            )
            self.count = 0


@dataclass
class _Loaded:
    """What a segment's bytes held."""

    rows: pl.DataFrame
    damaged: list[tuple[int, int]] = field(default_factory=list)  # unreadable byte ranges
    torn_tail: int = 0  # bytes of an incomplete last frame (a crash mid-write)


class Journal:
    """Append-only, crash-safe staging of one dataset's live rows. Use as a context manager."""

    def __init__(
        self,
        store: Store,
        dataset: str,
        *,
        flush_interval: float = 0.5,
        compact_interval: float = 60.0,
        compact_rows: int = 250_000,
        max_unwritten_bytes: int = 256 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ):
        if flush_interval <= 0 or compact_interval <= 0 or compact_rows <= 0:
            raise UsageError("journal flush/compact intervals and row count must be positive")
        self.spec = dataset_spec(dataset)
        self.store = store
        self.directory = store.dataset_dir(self.spec.name) / JOURNAL_DIR
        self.stats = JournalStats()
        self._flush_interval = flush_interval
        self._compact_interval = compact_interval
        self._compact_rows = compact_rows
        self._max_unwritten = max_unwritten_bytes
        self._clock = clock
        self._line_schema = _line_schema(self.spec)
        self._buffer: list[Any] = []
        self._pending = 0  # rows appended since the current segment began
        # Encoded frames not yet on disk (a full disk), oldest first: (frame, rows).
        self._unwritten: list[tuple[bytes, int]] = []
        self._unwritten_bytes = 0
        self._buffer_lock = threading.Lock()  # the only lock append() takes
        self._io_lock = threading.Lock()  # the segment file and its replacement
        self._compact_lock = threading.Lock()
        self._segment: _Segment | None = None
        self._is_open = False
        self._last_compact = clock()
        self._stop = threading.Event()
        self._compact_wanted = threading.Event()
        self._threads: list[threading.Thread] = []
        self._retry_orphans = False
        self._write_trouble = _Trouble(f"journal of {self.spec.name}: writing {self.directory}")
        self._compact_trouble = _Trouble(f"journal of {self.spec.name}: compaction")

    @property
    def lost_rows(self) -> int:
        """Rows given to ``append`` that a failing disk kept from the store (services exit
        non-zero). Rows refused for their values are counted apart: ``stats.dropped`` and
        ``stats.rejected``; hostile data is skipped, it does not fail a run."""
        return self.stats.lost

    def raise_if_lost(self) -> None:
        """After ``close``: a one-line DataError (exit 1) if any row was lost, so a run that
        lost data never ends looking like a success."""
        if self.lost_rows:
            raise DataError(
                f"{self.lost_rows} {self.spec.name} row(s) were lost: {self.directory} could not "
                "be written (see the errors above)"
            )

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> int:
        """Recover dead writers' segments into Parquet, start a segment and the background threads.

        Returns the number of rows recovered.
        """
        if self._is_open:
            raise LiqError(f"journal of {self.spec.name} is already open")
        try:
            recovered = self.recover()
            with self._io_lock:
                self._segment = self._new_segment()
        except OSError as exc:
            raise LiqError(
                f"cannot open the {self.spec.name} journal in {self.directory}: {exc}"
            ) from None
        self._last_compact = self._clock()
        self._stop.clear()
        self._is_open = True
        self._threads = [
            threading.Thread(target=self._flush_loop, name="liq-journal-flush", daemon=True),
            threading.Thread(target=self._compact_loop, name="liq-journal-compact", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return recovered

    def close(self) -> None:
        """Flush, move every row into Parquet, stop the background threads."""
        if not self._is_open:
            return
        self._is_open = False
        self._stop.set()
        self._compact_wanted.set()
        for thread in self._threads:
            thread.join()
        self._threads = []
        with self._compact_lock:
            self._settle_segment(self._rotate(start_new=False), closing=True)
        if self.lost_rows:
            log.error(
                "journal of %s: %d row(s) were lost: the disk never took them",
                self.spec.name,
                self.lost_rows,
            )

    def __enter__(self) -> Journal:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ hot path

    def append(self, row: dict) -> None:
        """Queue one row (time fields as int ms)."""
        self.extend((row,))

    def extend(self, rows: Sequence[Any]) -> None:
        """Queue rows (time fields as int ms; the rows are kept, not copied, until flushed):
        dicts, tuples of the dataset's columns in schema order (trailing optional columns may
        be left off: null), or objects whose class has ``journal_columns(objects)`` giving
        those columns (Liquidation), the cheapest for a hot path. Costs one short lock:
        encoding happens in the flush thread, a batch at a time."""
        with self._buffer_lock:
            if not self._is_open:
                raise LiqError(f"journal of {self.spec.name} is not open")
            self._buffer.extend(rows)
            self._pending += len(rows)
            self.stats.appended += len(rows)
        if self._pending >= self._compact_rows and not self._compact_wanted.is_set():
            self._compact_wanted.set()

    def flush(self) -> None:
        """Hand buffered rows to the OS: from then on they survive a kill -9 of this process.
        On a failed write (a full disk) the rows stay in memory and the next flush retries."""
        with self._io_lock:
            self._flush_locked()

    def compact(self) -> WriteResult:
        """Start a new segment, write the old one's rows to Parquet, delete it."""
        with self._compact_lock:
            return self._settle_segment(self._rotate(start_new=True))

    # ------------------------------------------------------------------ recovery

    def recover(self) -> int:
        """Move every segment whose writer is dead into Parquet; returns the rows recovered.
        A segment the store cannot take now (a full disk) stays for a later attempt."""
        if not self.directory.is_dir():
            return 0
        total = 0
        failed = False
        for path in sorted(self.directory.iterdir()):
            if not path.name.endswith(
                (_SEGMENT_SUFFIX, _UNPUBLISHED_SUFFIX, *_LEGACY_SUFFIXES, *_LEGACY_REJECTED)
            ):
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # settled by someone else meanwhile
            try:
                if not try_flock(fd) or not _still_linked(fd, path):
                    continue  # a live writer's, or already settled by whoever held the lock
                if path.name.endswith((_UNPUBLISHED_SUFFIX, _LEGACY_SUFFIXES[1])):
                    path.unlink()  # its writer died before writing a row
                    continue
                try:
                    result = self._store_segment(path)
                except DataError:
                    continue  # set aside and logged by _store_segment
                except LiqError as exc:  # a full disk: the segment stays for a later attempt
                    failed = True
                    self.stats.compaction_failures += 1
                    self._compact_trouble.failed(exc)
                    continue
                total += result.rows_in
                self.stats.recovered_segments += 1
            finally:
                os.close(fd)
        self._retry_orphans = failed
        self.stats.recovered_rows += total
        if total:
            log.info("recovered %d %s rows from dead writers' journals", total, self.spec.name)
        return total

    # ------------------------------------------------------------------ internals

    def _flush_locked(self) -> None:
        segment = self._segment
        if segment is None:
            return  # not open: append() refuses rows, so the buffer is empty
        with self._buffer_lock:
            rows, self._buffer = self._buffer, []
        if rows:
            encoded = self._encode(rows)
            if encoded is not None:
                self._unwritten.append(encoded)
                self._unwritten_bytes += len(encoded[0])
        while self._unwritten:
            data, count = self._unwritten[0]
            try:
                _write_all(segment.fd, data)
            except OSError as exc:
                self.stats.write_failures += 1
                self._write_trouble.failed(exc)
                # Never leave a torn frame: later frames must start where the magic is expected.
                with contextlib.suppress(OSError):
                    os.ftruncate(segment.fd, segment.size)
                self._bound_unwritten()
                return
            self._unwritten.pop(0)
            self._unwritten_bytes -= len(data)
            segment.size += len(data)
            segment.rows += count
            self._write_trouble.succeeded()

    def _bound_unwritten(self) -> None:
        while self._unwritten_bytes > self._max_unwritten and len(self._unwritten) > 1:
            data, count = self._unwritten.pop(0)
            self._unwritten_bytes -= len(data)
            if not self.stats.lost:
                log.error(
                    "journal of %s: over %d MB of rows waiting for the disk; dropping the oldest",
                    self.spec.name,
                    self._max_unwritten // 2**20,
                )
            self.stats.lost += count

    def _encode(self, rows: list[Any]) -> tuple[bytes, int] | None:
        """One segment frame and its row count. A row with a value its column cannot hold is
        dropped, with an error logged: one bad row never costs the batch."""
        kind = type(rows[0])
        frame = None
        if kind is tuple:
            frame = self._frame_from_tuples(rows)
        elif kind is not dict:
            to_columns = getattr(kind, "journal_columns", None)
            if to_columns is not None and all(type(row) is kind for row in rows):
                frame = self._frame_from_columns(to_columns(rows), len(rows))
        if frame is None:  # dicts, a mix, or a value the columns refuse: as dicts
            if any(type(row) is not dict for row in rows):
                rows = self._as_dicts([self._as_tuple(row) for row in rows])
            try:
                frame = pl.DataFrame(rows, schema=self._line_schema, strict=False)
            except _POLARS_ERRORS:
                frame = self._frame_row_by_row(rows)  # type: ignore[arg-type]
        if frame.height == 0:
            return None
        sink = io.BytesIO()
        frame.write_ipc_stream(sink, compression="uncompressed")
        payload = sink.getvalue()
        return _FRAME_HEADER.pack(_FRAME_MAGIC, len(payload)) + payload, frame.height

    def _as_dicts(self, rows: list[dict | tuple]) -> list[dict]:
        names = list(self._line_schema)
        out: list[dict] = []
        for row in rows:
            if type(row) is not tuple:
                out.append(row)  # type: ignore[arg-type]
            elif len(row) <= len(names):
                out.append(dict(zip(names, row, strict=False)))
            else:
                self.stats.dropped += 1
                log.error(
                    "journal of %s: dropped a row of %d values for %d columns: %r",
                    self.spec.name,
                    len(row),
                    len(names),
                    row,
                )
        return out

    @staticmethod
    def _as_tuple(row: Any) -> Any:
        to_columns = getattr(type(row), "journal_columns", None)
        if type(row) is dict or type(row) is tuple or to_columns is None:
            return row
        return tuple(column[0] for column in to_columns([row]))

    def _frame_from_tuples(self, rows: list[Any]) -> pl.DataFrame | None:
        """Tuple rows of one width, column by column (half the cost of dicts, row by row)."""
        width = len(rows[0])
        if not all(type(r) is tuple and len(r) == width for r in rows):
            return None
        return self._frame_from_columns(list(zip(*rows, strict=True)), len(rows))

    def _frame_from_columns(self, values: list[Sequence], height: int) -> pl.DataFrame | None:
        """The leading columns of the dataset (the rest null); None for too many columns or
        for a value its column does not take as it is (strict), which the dict path then
        handles as it handles every row."""
        schema = self._line_schema
        if len(values) > len(schema):
            return None
        try:
            columns = [
                pl.Series(name, column, dtype=dtype)
                for (name, dtype), column in zip(schema.items(), values, strict=False)
            ]
            columns += [
                pl.Series(name, [None] * height, dtype=dtype)
                for name, dtype in list(schema.items())[len(values) :]
            ]
            return pl.DataFrame(columns)
        except _POLARS_ERRORS:
            return None

    def _frame_row_by_row(self, rows: list[dict]) -> pl.DataFrame:
        frames = [pl.DataFrame(schema=self._line_schema)]
        for row in rows:
            try:
                frames.append(pl.DataFrame([row], schema=self._line_schema, strict=False))
            except _POLARS_ERRORS as exc:
                self.stats.dropped += 1
                log.error(
                    "journal of %s: dropped a row that cannot be stored (%s): %r",
                    self.spec.name,
                    first_line(exc),
                    row,
                )
        return pl.concat(frames, how="vertical")

    def _rotate(self, *, start_new: bool) -> _Segment | None:
        """Swap in a new segment (unless closing); returns the old one if it holds rows."""
        with self._io_lock:
            self._flush_locked()
            old = self._segment
            if old is None:
                return None
            if old.rows == 0 and start_new:
                self._last_compact = self._clock()
                return None  # nothing to move: keep writing to the same segment
            new = self._new_segment() if start_new else None
            with self._buffer_lock:
                self._pending = len(self._buffer)
            self._segment = new
        return old

    def _settle_segment(self, segment: _Segment | None, *, closing: bool = False) -> WriteResult:
        extra: list[tuple[bytes, int]] = []
        if closing:
            # Rows the disk never took: straight into Parquet with the segment's, if it can.
            with self._io_lock:
                extra, self._unwritten, self._unwritten_bytes = self._unwritten, [], 0
        try:
            if self._retry_orphans:
                # A failed compaction left a segment behind; its lock is free now.
                self.recover()
            if segment is None and not extra:
                return WriteResult(0, 0, [])
            try:
                result = self._store_segment(segment.path if segment else None, extra)
            except LiqError:
                self.stats.lost += sum(count for _, count in extra)  # only memory held them
                self._retry_orphans = True
                raise
            self.stats.compacted += result.rows_in
            self._compact_trouble.succeeded()
            return result
        finally:
            self._last_compact = self._clock()
            if segment is not None:
                os.close(segment.fd)  # releases the lock only now that the rows are settled

    def _store_segment(
        self, path: Path | None, extra: Sequence[tuple[bytes, int]] = ()
    ) -> WriteResult:
        """Segment -> Parquet -> delete. Rows the store refuses go to ``.rows-rejected`` on their
        own; a segment with unreadable bytes is kept as ``.damaged`` instead of deleted."""
        loaded = (
            _load_segment(path, self.spec, quiet=False)
            if path is not None
            else _Loaded(pl.DataFrame(schema=self._line_schema))
        )
        if extra:
            more = _parse_frames(b"".join(data for data, _ in extra), self._line_schema)
            loaded.rows = pl.concat([loaded.rows, more.rows], how="vertical")
        good, bad = split_storable(self.spec.name, loaded.rows)
        name = path if path is not None else self.directory / f"{os.getpid()}-unwritten"
        if bad.height:
            self._set_rows_aside(name, bad)
        try:
            result = self.store.write(self.spec.name, good)
        except pl.exceptions.PanicException as exc:
            # Not expected once split_storable has run; never let it block every later start.
            if path is not None:
                os.replace(path, path.with_name(path.name + _DAMAGED_SUFFIX))
            self.stats.rejected += good.height
            log.error("journal %s: rows cannot be stored (%s); kept aside", name, first_line(exc))
            raise DataError(f"{self.spec.name}: {first_line(exc)}") from None
        result.rows_in += bad.height
        if path is None:
            return result
        if loaded.damaged:
            self.stats.damaged_segments += 1
            aside = path.with_name(path.name + _DAMAGED_SUFFIX)
            os.replace(path, aside)
            log.error(
                "journal %s: %d damaged byte range(s) skipped (%d bytes); kept as %s",
                path,
                len(loaded.damaged),
                sum(end - start for start, end in loaded.damaged),
                aside,
            )
        else:
            path.unlink(missing_ok=True)
        return result

    def _set_rows_aside(self, path: Path, bad: pl.DataFrame) -> None:
        self.stats.rejected += bad.height
        reasons = bad[REASON_COL].value_counts(sort=True).rows()
        aside = path.with_name(path.name + _REJECTED_ROWS_SUFFIX)
        frame = bad.with_columns(
            pl.col(c).dt.epoch("ms") for c, t in bad.schema.items() if isinstance(t, pl.Datetime)
        )
        sink = io.BytesIO()
        frame.write_ipc_stream(sink, compression="uncompressed")
        payload = sink.getvalue()
        try:
            with open(aside, "ab") as out:
                out.write(_FRAME_HEADER.pack(_FRAME_MAGIC, len(payload)) + payload)
        except OSError as exc:
            log.error("journal %s: cannot keep refused rows in %s: %s", path, aside, exc)
            aside = None
        log.error(
            "journal %s: %d row(s) the store cannot hold (%s)%s",
            path,
            bad.height,
            "; ".join(f"{n} {reason}" for reason, n in reasons),
            f"; kept in {aside}" if aside else "",
        )

    def _new_segment(self) -> _Segment:
        self.directory.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        while True:
            n = next(_segment_numbers)
            final = self.directory / f"{pid}-{n}{_SEGMENT_SUFFIX}"
            unpublished = self.directory / f"{pid}-{n}{_UNPUBLISHED_SUFFIX}"
            try:
                fd = os.open(
                    unpublished,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                    0o644,
                )
            except FileExistsError:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX)
            # Publish under the final name only once locked, so recovery can never take a live
            # segment; link() refuses to replace a dead writer's segment of the same name.
            try:
                os.link(unpublished, final)
            except FileExistsError:
                os.close(fd)
                unpublished.unlink()
                continue
            except BaseException:
                os.close(fd)
                unpublished.unlink(missing_ok=True)
                raise
            unpublished.unlink()
            return _Segment(final, fd)

    def _compaction_due(self) -> bool:
        return (
            self._pending >= self._compact_rows
            or self._clock() - self._last_compact >= self._compact_interval
        )

    def _flush_loop(self) -> None:
        while not self._stop.wait(self._flush_interval):
            try:
                self.flush()
            except _POLARS_ERRORS as exc:  # never die silently: the rows would pile up unseen
                self._write_trouble.failed(exc, traceback=True)
            if self._compaction_due():
                self._compact_wanted.set()

    def _compact_loop(self) -> None:
        while True:
            self._compact_wanted.wait()
            if self._stop.is_set():
                return
            self._compact_wanted.clear()
            try:
                self.compact()
            except DataError:
                pass  # the rows are set aside and logged; the loop goes on
            except _POLARS_ERRORS as exc:  # a full disk, a panic: said once, retried
                self.stats.compaction_failures += 1
                self._compact_trouble.failed(exc, traceback=not isinstance(exc, LiqError))


# ---------------------------------------------------------------------- reading segments


def pending_rows(root: str | Path, dataset: str) -> pl.DataFrame:
    """Rows journaled under ``root`` and not yet compacted, live writers' included, in the
    dataset's schema (what ``Store.scan`` returns), without taking any segment over.

    Reads every segment read-only and takes no lock, so it never delays a writer; a frame being
    written at that moment is skipped. Rows already in Parquet may appear too (a segment is
    deleted only after its rows are stored): ``Store.scan(..., include_journal=True)`` drops
    those.
    """
    spec = dataset_spec(dataset)
    directory = Path(root).expanduser() / spec.name / JOURNAL_DIR
    frames = [pl.DataFrame(schema=_line_schema(spec))]
    try:
        paths = sorted(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        paths = []
    for path in paths:
        if not path.name.endswith((_SEGMENT_SUFFIX, _LEGACY_SUFFIXES[0], *_LEGACY_REJECTED)):
            continue
        try:
            frames.append(_load_segment(path, spec, quiet=True).rows)
        except OSError:
            continue  # settled (deleted) since the listing
    rows = pl.concat(frames, how="vertical")
    good, _ = split_storable(spec.name, rows)
    return good.unique(subset=list(spec.key), keep="last", maintain_order=True)


def _line_schema(spec: DatasetSpec) -> dict[str, pl.DataType]:
    # Time columns travel as epoch ms; the store casts them to Datetime.
    return {
        name: pl.Int64() if isinstance(dtype, pl.Datetime) else dtype
        for name, dtype in spec.schema.items()
    }


def _required(spec: DatasetSpec) -> list[str]:
    return list(dict.fromkeys((*spec.key, *spec.partition_by, time_column(spec))))


def _load_segment(path: Path, spec: DatasetSpec, *, quiet: bool) -> _Loaded:
    """A segment's rows. ``quiet`` (a reader looking at live segments): damage is expected at
    the tail of a frame being written and logged at debug level only."""
    data = path.read_bytes()
    schema = _line_schema(spec)
    warn = log.debug if quiet else log.warning
    if path.name.endswith((".jsonl", ".jsonl.rejected")):
        loaded = _Loaded(_load_lines(path, data, schema, warn))
    else:
        loaded = _parse_frames(data, schema)
        if loaded.torn_tail:
            warn("journal %s: skipped a torn last frame (%d bytes)", path, loaded.torn_tail)
        for start, end in loaded.damaged:
            warn("journal %s: skipped %d unreadable bytes at byte %d", path, end - start, start)
    required = _required(spec)
    incomplete = loaded.rows.select(pl.any_horizontal(pl.col(required).is_null())).to_series()
    if incomplete.any():
        warn(
            "journal %s: skipped %d rows missing one of %s",
            path,
            incomplete.sum(),
            ", ".join(required),
        )
        loaded.rows = loaded.rows.filter(~incomplete)
    return loaded


def _parse_frames(data: bytes, schema: dict[str, pl.DataType]) -> _Loaded:
    """Every readable frame. After damage (a bad magic or length, inserted or lost bytes) the
    reader resynchronises on the next frame magic; a frame whose header alone is damaged is
    still read, up to the next magic."""
    frames = [pl.DataFrame(schema=schema)]
    loaded = _Loaded(frames[0])
    view = memoryview(data)
    size = len(data)
    offset = 0
    header = _FRAME_HEADER.size
    while offset < size:
        start = offset + header
        if start > size and _FRAME_MAGIC.startswith(data[offset : offset + 4]):
            loaded.torn_tail = size - offset  # a header cut short
            break
        if data.startswith(_FRAME_MAGIC, offset):
            (length,) = struct.unpack_from("<Q", data, offset + 4)
            end = start + length
            exact = _read_frame(view[start:end], schema) if end <= size else None
            if exact is not None and (end == size or data.startswith(_FRAME_MAGIC, end)):
                frames.append(exact)
                offset = end
                continue
            # Damage. (Only now is the payload searched for a magic: no extra pass otherwise.)
            next_magic = data.find(_FRAME_MAGIC, start)
            stop = size if next_magic < 0 else next_magic
            if exact is not None:
                # A length too large reads as a whole stream too (Arrow ignores what follows):
                # the frame really ends at a magic inside it only if the stream is whole there.
                upto = _read_frame(view[start:stop], schema) if stop < end else None
                if upto is not None:
                    frames.append(upto)
                    loaded.damaged.append((offset, start))  # its length field
                    offset = stop
                else:
                    frames.append(exact)
                    offset = end  # stray bytes follow: the next round resyncs past them
                continue
            upto = _read_frame(view[start:stop], schema)
            if upto is not None:  # a length too small or too large for the file
                frames.append(upto)
                if end > size and next_magic < 0:
                    loaded.torn_tail = size - offset  # cut short after its rows (no end marker)
                else:
                    loaded.damaged.append((offset, start))  # its length field
                offset = stop
                continue
            if end > size and next_magic < 0:
                loaded.torn_tail = size - offset  # the last write never finished
                break
        else:
            next_magic = data.find(_FRAME_MAGIC, offset + 1)
            stop = size if next_magic < 0 else next_magic
            # A damaged magic where a frame should begin: its length and payload may be intact.
            salvaged = _read_frame(view[start:stop], schema) if start < stop else None
            if salvaged is not None:
                frames.append(salvaged)
                loaded.damaged.append((offset, offset + 4))
                offset = stop
                continue
        loaded.damaged.append((offset, stop))
        offset = stop
    loaded.rows = pl.concat(frames, how="vertical")
    return loaded


def _read_frame(payload: memoryview, schema: dict[str, pl.DataType]) -> pl.DataFrame | None:
    """One frame's rows in today's columns and types (a frame of any version), None if
    unreadable."""
    if len(payload) < 8:
        return None
    try:
        frame = pl.read_ipc_stream(io.BytesIO(payload))
        if not set(schema) & set(frame.columns):
            return None  # readable by chance, but not one of ours
        return frame.select(
            pl.col(name).cast(dtype, strict=False)
            if name in frame.columns
            else pl.lit(None, dtype).alias(name)
            for name, dtype in schema.items()
        )
    except _POLARS_ERRORS:
        return None


def _load_lines(
    path: Path, data: bytes, schema: dict[str, pl.DataType], warn: Callable[..., None]
) -> pl.DataFrame:
    # Every append ends in a newline: anything after the last one is a torn write.
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        warn("journal %s: skipped a torn last line (%d bytes)", path, len(data) - complete)
    data = data[:complete]
    if not data:
        return pl.DataFrame(schema=schema)
    try:
        return pl.read_ndjson(data, schema=schema)
    except _POLARS_ERRORS:
        return _load_lines_leniently(path, data, schema, warn)


def _load_lines_leniently(
    path: Path, data: bytes, schema: dict[str, pl.DataType], warn: Callable[..., None]
) -> pl.DataFrame:
    """Slow path for a damaged segment: keep every line that still parses."""
    frames = [pl.DataFrame(schema=schema)]
    lines = data.splitlines()
    for line in lines:
        with contextlib.suppress(orjson.JSONDecodeError, *_POLARS_ERRORS):
            row = orjson.loads(line)
            if isinstance(row, dict):
                frames.append(pl.DataFrame([row], schema=schema, strict=False))
    skipped = len(lines) - len(frames) + 1
    if skipped:
        warn("journal %s: skipped %d unreadable lines", path, skipped)
    return pl.concat(frames, how="vertical")


def _still_linked(fd: int, path: Path) -> bool:
    """Is ``path`` still the file behind ``fd`` (not deleted or replaced since we opened it)?"""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
