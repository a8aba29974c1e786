"""liqcli.store.journal: append, background flush and compaction, crash recovery across processes."""

from __future__ import annotations

import logging
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import polars as pl
import pytest

from liqcli.errors import LiqError
from liqcli.store import Journal, Store
from liqcli.store.journal import JOURNAL_DIR
from tests.journal_segments import frame, journal_rows, segment_rows

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def liquidation(i: int, symbol: str = "BTCUSDT") -> dict:
    """Row i of a deterministic stream (what Liquidation.to_row() produces)."""
    return {
        "exchange": "binance",
        "symbol": symbol,
        "ts": T0 + i * 250,  # crosses into 2024-01-02 after 345,600 rows
        "side": "long" if i % 2 else "short",
        "price": 40_000.0 + i,
        "qty": 0.001 * (1 + i % 7),
        "notional_usd": (40_000.0 + i) * 0.001 * (1 + i % 7),
        "venue_symbol": symbol,
        "received_ts": T0 + i * 250 + 3,
    }


def expected(indices: range | list[int]) -> pl.DataFrame:
    rows = pl.DataFrame([liquidation(i) for i in indices])
    return rows.with_columns(pl.col("ts", "received_ts").cast(pl.Datetime("ms", "UTC"))).select(
        "exchange",
        "symbol",
        "ts",
        "side",
        "price",
        "qty",
        "notional_usd",
        "venue_symbol",
        "received_ts",
    )


def stored(store: Store) -> pl.DataFrame:
    # ``seq`` is the recorder's column (optional, null here).
    return store.read("liquidations").drop("seq").sort("ts")


def journal_files(store: Store) -> list[Path]:
    directory = store.dataset_dir("liquidations") / JOURNAL_DIR
    return sorted(directory.iterdir()) if directory.exists() else []


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


class Child:
    """A Python subprocess whose stdout lines are read (with receipt times) by a thread."""

    def __init__(self, script: str, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), *args],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.seen: list[tuple[float, str]] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put((time.monotonic(), line.strip()))

    def wait_for(self, expected_line: str, timeout: float = 20.0) -> None:
        while True:
            received = self.lines.get(timeout=timeout)
            self.seen.append(received)
            if received[1] == expected_line:
                return

    def kill9(self) -> float:
        killed_at = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        return killed_at

    def drain(self) -> list[tuple[float, str]]:
        while not self.lines.empty():
            self.seen.append(self.lines.get_nowait())
        return self.seen


# Imported by the child scripts below.
_CHILD_PRELUDE = """
import sys, time
from liqcli.store import Journal, Store
T0 = 1_704_067_200_000
def liquidation(i, symbol="BTCUSDT"):
    return {
        "exchange": "binance", "symbol": symbol, "ts": T0 + i * 250,
        "side": "long" if i % 2 else "short", "price": 40_000.0 + i, "qty": 0.001 * (1 + i % 7),
        "notional_usd": (40_000.0 + i) * 0.001 * (1 + i % 7), "venue_symbol": symbol,
        "received_ts": T0 + i * 250 + 3,
    }
journal = Journal(Store(sys.argv[1]), "liquidations", flush_interval=0.1, compact_interval=3600)
journal.open()
"""


# ---------------------------------------------------------------------- basic path


def test_append_close_moves_every_row_into_parquet(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with Journal(store, "liquidations", flush_interval=0.05) as journal:
        assert journal.stats.recovered_rows == 0
        for i in range(1000):
            journal.append(liquidation(i))
    assert stored(store).equals(expected(range(1000)))
    assert journal.stats.appended == journal.stats.compacted == 1000
    assert journal_files(store) == []  # no segment left behind


def test_append_requires_an_open_journal_and_a_bad_row_costs_only_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path)
    journal = Journal(store, "liquidations")
    with pytest.raises(LiqError, match="journal of liquidations is not open"):
        journal.append(liquidation(0))
    with caplog.at_level(logging.ERROR), journal:
        journal.append(liquidation(0))
        journal.append({**liquidation(1), "price": object()})
        journal.append({**liquidation(2), "qty": "not a number"})
        journal.extend([liquidation(3), liquidation(4)])
    assert stored(store).equals(expected([0, 3, 4]))
    assert journal.stats.dropped == 2
    assert caplog.text.count("dropped a row that cannot be stored") == 2
    with pytest.raises(LiqError, match="not open"):
        journal.append(liquidation(0))


def test_flusher_hands_rows_to_the_os_without_being_asked(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with Journal(store, "liquidations", flush_interval=0.02, compact_interval=3600) as journal:
        for i in range(5):
            journal.append(liquidation(i))
        # No flush() call: the background thread must write the segment.
        eventually(lambda: sum(p.stat().st_size for p in journal_files(store)) > 0)
        rows = [{**liquidation(i), "seq": None} for i in range(5)]  # seq: optional, not given
        assert segment_rows(journal_files(store)[0]) == rows


def test_compaction_after_compact_rows(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with Journal(
        store, "liquidations", flush_interval=0.02, compact_interval=3600, compact_rows=100
    ) as journal:
        for i in range(250):
            journal.append(liquidation(i))
        eventually(lambda: journal.stats.compacted >= 200)
        assert stored(store).equals(expected(range(journal.stats.compacted)))
    assert stored(store).equals(expected(range(250)))


def test_compaction_after_compact_interval_on_the_injected_clock(tmp_path: Path) -> None:
    store = Store(tmp_path)
    now = [1000.0]
    with Journal(
        store, "liquidations", flush_interval=0.02, compact_interval=60, clock=lambda: now[0]
    ) as journal:
        for i in range(10):
            journal.append(liquidation(i))
        time.sleep(0.1)  # several flusher ticks: not due yet on the injected clock
        assert journal.stats.compacted == 0
        now[0] += 61
        eventually(lambda: journal.stats.compacted == 10)
        assert stored(store).equals(expected(range(10)))


def test_compaction_is_idempotent(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with Journal(store, "liquidations", compact_interval=3600) as journal:
        for i in range(100):
            journal.append(liquidation(i))
        first = journal.compact()
        assert (first.rows_in, first.new_rows) == (100, 100)
        assert journal.compact().rows_in == 0  # nothing new: no rotation, no write
        for i in range(50, 120):  # replays overlap what is stored
            journal.append(liquidation(i))
        again = journal.compact()
        assert (again.rows_in, again.new_rows) == (70, 20)
    assert stored(store).equals(expected(range(120)))


@pytest.fixture
def rapid_thread_switching() -> Iterator[None]:
    """Switch threads every few bytecodes, so unguarded buffer handoffs would really lose rows."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


@pytest.mark.usefixtures("rapid_thread_switching")
def test_appends_from_many_threads_during_compactions_land_once(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with Journal(
        store, "liquidations", flush_interval=0.005, compact_interval=3600, compact_rows=1500
    ) as journal:

        def produce(start: int) -> None:
            for i in range(start, start + 5000):
                journal.append(liquidation(i))

        threads = [threading.Thread(target=produce, args=(k * 5000,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert journal.stats.compacted == 20_000
    assert stored(store).equals(expected(range(20_000)))


# ---------------------------------------------------------------------- recovery


def segment_lines(store: Store) -> int:
    return journal_rows(store.dataset_dir("liquidations") / JOURNAL_DIR)


def write_segment(store: Store, name: str, data: bytes) -> Path:
    directory = store.dataset_dir("liquidations") / JOURNAL_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(data)
    return path


def jsonl(indices: range) -> bytes:
    return b"".join(orjson.dumps(liquidation(i)) + b"\n" for i in indices)


def test_recovery_of_a_legacy_jsonl_segment_skips_a_torn_last_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path)
    torn = orjson.dumps(liquidation(3))[:40]
    write_segment(store, "4242-0.jsonl", jsonl(range(3)) + torn)
    journal = Journal(store, "liquidations")
    with caplog.at_level(logging.WARNING):
        assert journal.open() == 3
    journal.close()
    assert stored(store).equals(expected(range(3)))
    assert "torn last line" in caplog.text
    assert journal.stats.recovered_segments == 1
    assert journal_files(store) == []


def test_recovery_keeps_the_readable_lines_of_a_damaged_legacy_segment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path)
    incomplete = orjson.dumps({k: v for k, v in liquidation(3).items() if k != "ts"}) + b"\n"
    write_segment(
        store, "4242-0.jsonl", jsonl(range(2)) + b"\x00garbage\n" + incomplete + jsonl(range(4, 5))
    )
    with caplog.at_level(logging.WARNING), Journal(store, "liquidations") as journal:
        assert journal.stats.recovered_rows == 3
    assert stored(store).equals(expected([0, 1, 4]))
    assert "skipped 1 unreadable lines" in caplog.text
    assert "skipped 1 rows missing one of" in caplog.text


def rows(indices: range | list[int]) -> list[dict]:
    return [liquidation(i) for i in indices]


def test_recovery_skips_a_torn_last_frame(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(tmp_path)
    torn = frame(rows(range(3, 6)))
    write_segment(store, "4242-0.arrows", frame(rows(range(2))) + frame(rows([2])) + torn[:-9])
    journal = Journal(store, "liquidations")
    with caplog.at_level(logging.WARNING):
        assert journal.open() == 3
    journal.close()
    assert stored(store).equals(expected(range(3)))
    assert "torn last frame" in caplog.text
    assert journal.stats.recovered_segments == 1
    assert journal_files(store) == []


def test_recovery_keeps_the_readable_frames_of_a_damaged_segment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path)
    damaged = bytearray(frame(rows([2])))
    damaged[12:40] = b"\xff" * 28  # a valid header, an unreadable Arrow stream
    incomplete = frame([{k: v for k, v in liquidation(3).items() if k != "ts"}])
    data = frame(rows(range(2))) + bytes(damaged) + incomplete + frame(rows([4])) + b"garbage"
    write_segment(store, "4242-0.arrows", data)
    with caplog.at_level(logging.WARNING), Journal(store, "liquidations") as journal:
        assert journal.stats.recovered_rows == 3
    assert stored(store).equals(expected([0, 1, 4]))
    assert "skipped a damaged frame" in caplog.text
    assert "skipped 1 rows missing one of" in caplog.text
    assert "unreadable data at byte" in caplog.text


def test_recovering_rows_already_in_parquet_adds_nothing(tmp_path: Path) -> None:
    """A writer killed after its Parquet write but before deleting its segment."""
    store = Store(tmp_path)
    with Journal(store, "liquidations") as journal:
        for i in range(30):
            journal.append(liquidation(i))
    write_segment(store, "4242-0.jsonl", jsonl(range(30)))
    with Journal(store, "liquidations") as journal:
        assert journal.stats.recovered_rows == 30
    assert stored(store).equals(expected(range(30)))


def test_unstorable_segment_is_set_aside_and_the_rest_recovered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path)
    write_segment(store, "4242-0.jsonl", orjson.dumps(liquidation(0, symbol="BTC/USDT")) + b"\n")
    write_segment(store, "4242-1.jsonl", jsonl(range(1, 3)))
    write_segment(store, "4242-2.jsonl.new", b"")  # a writer that died while creating a segment
    with caplog.at_level(logging.ERROR), Journal(store, "liquidations") as journal:
        assert journal.stats.recovered_rows == 2
    assert stored(store).equals(expected(range(1, 3)))
    assert [p.name for p in journal_files(store)] == ["4242-0.jsonl.rejected"]
    assert "values unfit for a directory name" in caplog.text


_APPEND_THEN_IDLE = (
    _CHILD_PRELUDE
    + """
n = int(sys.argv[2])
for i in range(n):
    journal.append(liquidation(i))
print("appended", flush=True)
time.sleep(60)
"""
)


def test_kill9_after_appending_loses_nothing(tmp_path: Path) -> None:
    child = Child(_APPEND_THEN_IDLE, str(tmp_path), "20000")
    try:
        child.wait_for("appended")
        # No flush() call: the child's flusher (every 0.1 s) must get every row to the OS.
        eventually(lambda: segment_lines(Store(tmp_path)) == 20_000)
    finally:
        child.kill9()
    store = Store(tmp_path)
    assert stored(store).height == 0  # nothing compacted: everything sits in the journal
    with Journal(store, "liquidations") as journal:
        assert journal.stats.recovered_rows == 20_000
    assert stored(store).equals(expected(range(20_000)))
    assert journal_files(store) == []


_APPEND_FOREVER = (
    _CHILD_PRELUDE
    + """
i = 0
while True:
    for _ in range(200):
        journal.append(liquidation(i))
        i += 1
    print(i, flush=True)
    time.sleep(0.005)
"""
)


def test_kill9_mid_stream_recovers_everything_older_than_a_flush_interval(tmp_path: Path) -> None:
    child = Child(_APPEND_FOREVER, str(tmp_path))
    try:
        child.wait_for("200")
        time.sleep(1.0)
    finally:
        killed_at = child.kill9()
    reports = [(at, int(line)) for at, line in child.drain() if line.isdigit()]
    # Rows the child had appended 0.7 s (7 flush intervals) before the kill must be on disk.
    safe = max(count for at, count in reports if at <= killed_at - 0.7)

    store = Store(tmp_path)
    with Journal(store, "liquidations") as journal:
        recovered = journal.stats.recovered_rows
    assert recovered >= safe > 0
    # Exactly the first `recovered` rows of the stream: no gaps, no torn or duplicated rows.
    assert stored(store).equals(expected(range(recovered)))


_APPEND_FLUSH_IDLE = (
    _CHILD_PRELUDE
    + """
for i in range(100):
    journal.append(liquidation(i))
journal.flush()
print("flushed", flush=True)
time.sleep(60)
"""
)


def test_a_live_writers_segment_is_not_stolen(tmp_path: Path) -> None:
    child = Child(_APPEND_FLUSH_IDLE, str(tmp_path))
    store = Store(tmp_path)
    try:
        child.wait_for("flushed")
        (segment,) = journal_files(store)
        with Journal(store, "liquidations") as other:
            assert other.stats.recovered_rows == 0
            assert segment.exists() and segment.stat().st_size > 0
            assert stored(store).height == 0
    finally:
        child.kill9()
    # Once its writer is dead, the segment is fair game.
    with Journal(store, "liquidations") as journal:
        assert journal.stats.recovered_rows == 100
    assert not segment.exists()
    assert stored(store).equals(expected(range(100)))


def test_two_journals_in_one_process_keep_their_own_segments(tmp_path: Path) -> None:
    store = Store(tmp_path)
    first = Journal(store, "liquidations", compact_interval=3600)
    first.open()
    for i in range(10):
        first.append(liquidation(i))
    first.flush()
    with Journal(store, "liquidations") as second:
        assert second.stats.recovered_rows == 0
        second.append(liquidation(10))
    first.close()
    assert stored(store).equals(expected(range(11)))


def test_unwritable_data_dir_fails_open_with_a_liq_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    journal = Journal(Store(not_a_dir), "liquidations")
    with pytest.raises(LiqError, match="cannot open the liquidations journal in"):
        journal.open()
