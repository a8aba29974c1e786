"""The streaming append path for live events (e.g. liquidations seen by ``liq watch``).

Rows go to a segment ``{root}/{dataset}/_journal/{pid}-{n}.arrows`` first and reach Parquet in
batches ("compaction"), because rewriting a Parquet file per event would be far too slow.
``append`` only queues the row; a background thread turns the queue into one Arrow IPC stream at
least every ``flush_interval`` seconds and hands it to the OS, so a ``kill -9`` loses at most that
much. (Columnar batches cost a tenth of a JSON line per row to write and to read back.) A second
thread compacts every ``compact_interval`` seconds or ``compact_rows`` rows, without blocking
``append``.

Segment format: frames of ``b"LIQJ"``, the payload length (8 bytes, little-endian) and the payload,
a complete Arrow IPC stream of the dataset's columns (time columns as epoch-ms Int64). A torn last
frame (a crash mid-write) or a damaged one is skipped with a warning; JSON-lines segments
(``.jsonl``) left by earlier versions are still recovered.

Each live segment is held under an exclusive ``flock``; the kernel drops it when its writer dies.
``open()`` therefore recovers exactly the segments of dead writers (whatever their pid is now used
for) and never a live one. Store writes are idempotent upserts, so a segment recovered twice (a
crash between its Parquet write and its deletion) never duplicates a row.
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
from dataclasses import dataclass
from pathlib import Path

import orjson
import polars as pl

from liqcli.core.schemas import dataset as dataset_spec
from liqcli.core.schemas import time_column
from liqcli.errors import DataError, LiqError, UsageError
from liqcli.store.lock import try_flock
from liqcli.store.parquet import Store, WriteResult, first_line

log = logging.getLogger(__name__)

JOURNAL_DIR = "_journal"  # a leading "_" keeps Store.scan, pyarrow and DuckDB out of it
_SEGMENT_SUFFIX = ".arrows"
_UNPUBLISHED_SUFFIX = ".arrows.new"  # created and locked, not yet renamed into place
_LEGACY_SUFFIXES = (".jsonl", ".jsonl.new")  # segments of versions that journaled JSON lines
_REJECTED_SUFFIX = ".rejected"
_FRAME_MAGIC = b"LIQJ"
_FRAME_HEADER = struct.Struct("<4sQ")  # magic, payload length
# Segment numbers are unique per process even with several journals (n in {pid}-{n}.arrows).
_segment_numbers = itertools.count()


@dataclass
class JournalStats:
    appended: int = 0  # rows given to append()
    compacted: int = 0  # rows this journal moved from its segments into Parquet
    recovered_segments: int = 0  # dead writers' segments taken over
    recovered_rows: int = 0
    dropped: int = 0  # rows with a value no column can hold (logged)


@dataclass
class _Segment:
    path: Path
    fd: int  # held open (and flocked) until the segment's rows are in Parquet
    rows: int = 0


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
        self._clock = clock
        # Time columns travel as epoch ms; the store casts them to Datetime.
        self._line_schema = {
            name: pl.Int64() if isinstance(dtype, pl.Datetime) else dtype
            for name, dtype in self.spec.schema.items()
        }
        self._required = list(
            dict.fromkeys((*self.spec.key, *self.spec.partition_by, time_column(self.spec)))
        )
        self._buffer: list[dict] = []
        self._pending = 0  # rows appended since the current segment began
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
            self._settle_segment(self._rotate(start_new=False))

    def __enter__(self) -> Journal:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ hot path

    def append(self, row: dict) -> None:
        """Queue one row (time fields as int ms)."""
        self.extend((row,))

    def extend(self, rows: Sequence[dict]) -> None:
        """Queue rows (time fields as int ms; the dicts are kept, not copied, until flushed).
        Costs one short lock: encoding happens in the flush thread, a batch at a time."""
        with self._buffer_lock:
            if not self._is_open:
                raise LiqError(f"journal of {self.spec.name} is not open")
            self._buffer.extend(rows)
            self._pending += len(rows)
            self.stats.appended += len(rows)
        if self._pending >= self._compact_rows and not self._compact_wanted.is_set():
            self._compact_wanted.set()

    def flush(self) -> None:
        """Hand buffered rows to the OS: from then on they survive a kill -9 of this process."""
        with self._io_lock:
            self._flush_locked()

    def compact(self) -> WriteResult:
        """Start a new segment, write the old one's rows to Parquet, delete it."""
        with self._compact_lock:
            return self._settle_segment(self._rotate(start_new=True))

    # ------------------------------------------------------------------ recovery

    def recover(self) -> int:
        """Move every segment whose writer is dead into Parquet; returns the rows recovered."""
        if not self.directory.is_dir():
            return 0
        total = 0
        for path in sorted(self.directory.iterdir()):
            if not path.name.endswith((_SEGMENT_SUFFIX, _UNPUBLISHED_SUFFIX, *_LEGACY_SUFFIXES)):
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
                total += result.rows_in
                self.stats.recovered_segments += 1
            finally:
                os.close(fd)
        self.stats.recovered_rows += total
        if total:
            log.info("recovered %d %s rows from dead writers' journals", total, self.spec.name)
        return total

    # ------------------------------------------------------------------ internals

    def _flush_locked(self) -> None:
        if self._segment is None:
            return  # not open: append() refuses rows, so the buffer is empty
        with self._buffer_lock:
            if not self._buffer:
                return
            rows, self._buffer = self._buffer, []
        _write_all(self._segment.fd, self._encode(rows))
        self._segment.rows += len(rows)

    def _encode(self, rows: list[dict]) -> bytes:
        """One segment frame. A row with a value its column cannot hold is dropped, with an
        error logged: one bad row never costs the batch."""
        try:
            frame = pl.DataFrame(rows, schema=self._line_schema, strict=False)
        except (pl.exceptions.PolarsError, TypeError, ValueError):
            frame = self._frame_row_by_row(rows)
        sink = io.BytesIO()
        frame.write_ipc_stream(sink, compression="uncompressed")
        payload = sink.getvalue()
        return _FRAME_HEADER.pack(_FRAME_MAGIC, len(payload)) + payload

    def _frame_row_by_row(self, rows: list[dict]) -> pl.DataFrame:
        frames = [pl.DataFrame(schema=self._line_schema)]
        for row in rows:
            try:
                frames.append(pl.DataFrame([row], schema=self._line_schema, strict=False))
            except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
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
            with self._buffer_lock:
                self._pending = len(self._buffer)
            self._segment = self._new_segment() if start_new else None
        return old

    def _settle_segment(self, segment: _Segment | None) -> WriteResult:
        try:
            if self._retry_orphans:
                # A failed compaction left a segment behind; its lock is free now.
                self._retry_orphans = False
                self.recover()
            if segment is None:
                return WriteResult(0, 0, [])
            try:
                result = self._store_segment(segment.path)
            except LiqError:
                self._retry_orphans = True
                raise
            self.stats.compacted += result.rows_in
            return result
        finally:
            self._last_compact = self._clock()
            if segment is not None:
                os.close(segment.fd)  # releases the lock only now that the rows are settled

    def _store_segment(self, path: Path) -> WriteResult:
        """Segment -> Parquet -> delete. Unstorable rows set the segment aside as ``.rejected``."""
        df = self._load_segment(path)
        try:
            result = self.store.write(self.spec.name, df)
        except DataError as exc:
            rejected = path.with_name(path.name + _REJECTED_SUFFIX)
            os.replace(path, rejected)
            log.error("journal %s: rows rejected (%s); kept in %s", path, exc, rejected)
            raise
        path.unlink(missing_ok=True)
        return result

    def _load_segment(self, path: Path) -> pl.DataFrame:
        data = path.read_bytes()
        if path.name.endswith(_LEGACY_SUFFIXES):
            df = self._load_lines(path, data)
        else:
            df = self._load_frames(path, data)
        incomplete = df.select(pl.any_horizontal(pl.col(self._required).is_null())).to_series()
        if incomplete.any():
            log.warning(
                "journal %s: skipped %d rows missing one of %s",
                path,
                incomplete.sum(),
                ", ".join(self._required),
            )
            df = df.filter(~incomplete)
        return df

    def _load_frames(self, path: Path, data: bytes) -> pl.DataFrame:
        frames = [pl.DataFrame(schema=self._line_schema)]
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            start = offset + _FRAME_HEADER.size
            if start > len(data):
                magic, length = b"", 0
            else:
                magic, length = _FRAME_HEADER.unpack_from(view, offset)
            if magic != _FRAME_MAGIC:
                log.warning(
                    "journal %s: unreadable data at byte %d; skipped the rest", path, offset
                )
                break
            if start + length > len(data):
                log.warning(
                    "journal %s: skipped a torn last frame (%d bytes)", path, len(data) - offset
                )
                break
            try:
                frame = pl.read_ipc_stream(io.BytesIO(view[start : start + length]))
                frames.append(self._conform_frame(frame))
            except (pl.exceptions.PolarsError, pl.exceptions.PanicException, OSError) as exc:
                log.warning(
                    "journal %s: skipped a damaged frame at byte %d (%s)",
                    path,
                    offset,
                    first_line(exc),
                )
            offset = start + length
        return pl.concat(frames, how="vertical")

    def _conform_frame(self, frame: pl.DataFrame) -> pl.DataFrame:
        """A frame written by this or another version: today's columns and types."""
        return frame.select(
            pl.col(name).cast(dtype, strict=False)
            if name in frame.columns
            else pl.lit(None, dtype).alias(name)
            for name, dtype in self._line_schema.items()
        )

    def _load_lines(self, path: Path, data: bytes) -> pl.DataFrame:
        # Every append ends in a newline: anything after the last one is a torn write.
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            log.warning(
                "journal %s: skipped a torn last line (%d bytes)", path, len(data) - complete
            )
        data = data[:complete]
        if not data:
            return pl.DataFrame(schema=self._line_schema)
        try:
            return pl.read_ndjson(data, schema=self._line_schema)
        except pl.exceptions.PolarsError:
            return self._load_lines_leniently(path, data)

    def _load_lines_leniently(self, path: Path, data: bytes) -> pl.DataFrame:
        """Slow path for a damaged segment: keep every line that still parses."""
        rows = []
        for line in data.splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                row = orjson.loads(line)
                if isinstance(row, dict):
                    rows.append(row)
        skipped = len(data.splitlines()) - len(rows)
        if skipped:
            log.warning("journal %s: skipped %d unreadable lines", path, skipped)
        return pl.DataFrame(rows, schema=self._line_schema, strict=False)

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
            except Exception:
                log.exception("journal of %s: flush failed", self.spec.name)
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
            except LiqError as exc:
                log.error("journal of %s: compaction failed: %s", self.spec.name, exc)
            except Exception:
                log.exception("journal of %s: compaction failed", self.spec.name)


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
