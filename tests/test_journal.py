"""liqcli.store.journal: append, background flush and compaction, crash recovery across processes."""

from __future__ import annotations

import io
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

from liqcli.core.events import ROW_COLUMNS
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


def as_values(row: dict) -> tuple:
    return tuple(row[name] for name in ROW_COLUMNS)


def test_liquidation_values_are_its_row_in_the_datasets_column_order() -> None:
    from liqcli.core.events import Liquidation
    from liqcli.core.schemas import dataset

    assert list(dataset("liquidations").schema)[: len(ROW_COLUMNS)] == list(ROW_COLUMNS)
    assert set(dataset("liquidations").schema) - set(ROW_COLUMNS) <= set(
        dataset("liquidations").optional
    )
    for event in (
        Liquidation("okx", "BTCUSDT", "long", 1.5, 2.0, 3.0, T0, "BTC-USDT-SWAP", T0 + 5),
        Liquidation("binance", "ETHUSDT", "short", 1.5, 2.0, 3.0, T0),  # defaults filled in
    ):
        assert event.to_values() == as_values(event.to_row())


def test_tuple_rows_write_the_same_segment_frames_as_dict_rows(tmp_path: Path) -> None:
    journal = Journal(Store(tmp_path), "liquidations")
    dicts = [liquidation(i, f"S{i % 3}USDT") for i in range(500)]
    assert journal._encode([as_values(r) for r in dicts]) == journal._encode(dicts)
    mixed = [as_values(r) if i % 2 else r for i, r in enumerate(dicts)]
    assert journal._encode(mixed) == journal._encode(dicts)


def test_liquidations_journaled_as_events_write_the_same_frames_as_their_rows(
    tmp_path: Path,
) -> None:
    from liqcli.core.events import Liquidation

    journal = Journal(Store(tmp_path), "liquidations")
    events = [
        Liquidation("okx", "BTCUSDT", "long", 1.5 + i, 2.0, 3.0, T0 + i, "BTC-USDT-SWAP", T0 + 9)
        if i % 3
        else Liquidation("binance", f"S{i % 5}USDT", "short", 2.5, 1.0 + i, 4.0, T0 + i)
        for i in range(300)
    ]
    rows = [e.to_row() for e in events]
    assert journal._encode(events) == journal._encode(rows)
    mixed = [e if i % 2 else e.to_row() for i, e in enumerate(events)]
    assert journal._encode(mixed) == journal._encode(rows)
    bad = Liquidation("binance", "BTCUSDT", "long", 1.5, 2.0, 3.0, 2**70)  # ts beyond Int64
    encoded = journal._encode([bad, *events])  # the bad row alone dropped: row by row
    assert encoded is not None and encoded[1] == 300
    decoded = pl.read_ipc_stream(io.BytesIO(encoded[0][12:]))  # after b"LIQJ" and the length
    assert decoded.equals(pl.DataFrame(rows, schema=decoded.schema))
    assert journal.stats.dropped == 1


def test_tuple_rows_reach_parquet_and_a_bad_tuple_costs_only_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path)
    with caplog.at_level(logging.ERROR), Journal(store, "liquidations") as journal:
        journal.extend([as_values(liquidation(i)) for i in range(100)])
        journal.extend([as_values({**liquidation(100), "ts": 2**70}), as_values(liquidation(101))])
        journal.extend([(*as_values(liquidation(102)), 7, "one too many")])
        journal.extend([as_values({**liquidation(103), "qty": "x"}), liquidation(104)])
    assert stored(store).equals(expected([*range(100), 101, 104]))
    assert journal.stats.dropped == 3
    assert caplog.text.count("dropped a row") == 3


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
    try:
        return journal_rows(store.dataset_dir("liquidations") / JOURNAL_DIR)
    except (OSError, AssertionError, pl.exceptions.PolarsError):
        return -1  # read while a frame was being written: not there yet


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
    write_segment(
        store, "4242-0.arrows", frame(rows(range(2))) + frame(rows([2])) + torn[: len(torn) // 2]
    )
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
    assert "unreadable bytes at byte" in caplog.text
    assert "skipped 1 rows missing one of" in caplog.text
    # Damaged, so kept for inspection instead of deleted.
    assert [p.name for p in journal_files(store)] == ["4242-0.arrows.damaged"]
    assert journal.stats.damaged_segments == 1


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


def test_a_bad_row_is_set_aside_alone_and_a_legacy_rejected_segment_is_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path)
    bad_ts = {**liquidation(0), "ts": 2**62}  # past the year 9999: once a Polars panic
    bad_usd = {**liquidation(1), "notional_usd": float("inf")}
    write_segment(store, "4242-0.arrows", frame([bad_ts, *rows(range(2, 5)), bad_usd]))
    # Set aside whole by an earlier version for one odd symbol: its other rows come back now.
    write_segment(
        store, "4242-1.arrows.rejected", frame([liquidation(5, symbol="BTC/USDT"), *rows([6])])
    )
    write_segment(store, "4242-2.jsonl.new", b"")  # a writer that died while creating a segment
    with caplog.at_level(logging.ERROR), Journal(store, "liquidations") as journal:
        assert journal.stats.recovered_rows == 7
    assert journal.stats.rejected == 2
    assert journal.lost_rows == 0
    got = stored(store)
    assert got.filter(pl.col("symbol") == "BTCUSDT").equals(
        expected(range(2, 7)).filter(pl.col("ts") != expected([5])["ts"][0])
    )
    assert got.filter(pl.col("symbol") == "BTC/USDT")["price"].to_list() == [40_005.0]
    assert [p.name for p in journal_files(store)] == ["4242-0.arrows.rows-rejected"]
    aside = segment_rows(journal_files(store)[0])
    assert [(r["ts"], r["reason"]) for r in aside] == [
        (2**62, "ts outside the years 1-9999"),
        (liquidation(1)["ts"], "notional_usd is not a finite number"),
    ]
    assert "2 row(s) the store cannot hold" in caplog.text


ODD_SYMBOLS = ["币安人生USDT", "BTC/USDT", "", "BTC USDT", "..", "../../ETC"]


def test_odd_symbols_are_stored_with_every_other_row_of_their_segment(tmp_path: Path) -> None:
    """One odd symbol once set the whole segment aside: 0 of 2,000 valid events stored."""
    store = Store(tmp_path)
    batch = [liquidation(i) for i in range(2000)]
    batch += [liquidation(2000 + i, symbol=s) for i, s in enumerate(ODD_SYMBOLS)]
    with Journal(store, "liquidations") as journal:
        journal.extend(batch)
        journal.compact()
        journal.extend([liquidation(3000, symbol="币安人生USDT")])
    assert journal.stats.rejected == 0
    got = stored(store)
    assert got.height == 2007
    assert got.filter(pl.col("symbol") == "BTCUSDT").equals(expected(range(2000)))
    assert sorted(set(got["symbol"]) - {"BTCUSDT"}) == sorted(ODD_SYMBOLS)
    assert journal_files(store) == []
    # Nothing was written outside the dataset's directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["liquidations"]


def test_a_row_past_9999_neither_kills_compaction_nor_blocks_the_next_start(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    clock = FakeClock()
    journal = Journal(store, "liquidations", flush_interval=0.01, compact_interval=1, clock=clock)
    journal.open()
    journal.extend([*rows(range(10)), {**liquidation(10), "ts": 2**62}])
    clock.advance(2)
    eventually(lambda: stored(store).height == 10)
    assert all(t.is_alive() for t in journal._threads)  # the compaction thread survived
    journal.extend(rows(range(20, 25)))
    clock.advance(2)
    eventually(lambda: stored(store).height == 15)
    journal.close()
    assert journal.stats.rejected == 1
    # And a dead writer's segment holding such a row is recovered, not a crash at every start.
    write_segment(
        store, "4242-0.arrows", frame([{**liquidation(30), "ts": 2**62}, liquidation(31)])
    )
    with Journal(store, "liquidations") as again:
        assert again.stats.recovered_rows == 2
    assert stored(store).height == 16


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# ---------------------------------------------------------------------- damaged segments


def _three_frames() -> tuple[bytes, list[bytes]]:
    frames = [frame(rows(range(k * 100, k * 100 + 100))) for k in range(5)]
    return b"".join(frames), frames


@pytest.mark.parametrize(
    "damage",
    ["magic", "length_large", "length_small", "inserted", "header_zeroed"],
)
def test_a_damaged_frame_header_costs_at_most_its_frame_and_the_segment_is_kept(
    tmp_path: Path, damage: str
) -> None:
    """One bad header once lost every later frame and the segment was deleted."""
    store = Store(tmp_path)
    _, frames = _three_frames()
    second = bytearray(frames[1])
    if damage == "magic":
        second[0:4] = b"XXXX"
    elif damage == "length_large":
        second[4:12] = (len(second) * 3).to_bytes(8, "little")
    elif damage == "length_small":
        second[4:12] = (len(second) // 2).to_bytes(8, "little")
    elif damage == "header_zeroed":
        second[0:12] = bytes(12)
    data = frames[0] + bytes(second) + b"".join(frames[2:])
    if damage == "inserted":
        data = frames[0] + frames[1] + b"\x00" * 16 + b"".join(frames[2:])
    write_segment(store, "4242-0.arrows", data)
    with Journal(store, "liquidations"):
        pass
    got = stored(store)
    lost = set(range(500)) - set(got["price"].cast(pl.Int64) - 40_000)
    assert len(lost) <= 100, f"{len(lost)} rows lost"
    assert set(range(200, 500)) <= set(got["price"].cast(pl.Int64) - 40_000)
    if damage in ("magic", "length_large", "length_small", "inserted"):
        assert got.height == 500  # the header alone was damaged: the payload is read anyway
    assert [p.name for p in journal_files(store)] == ["4242-0.arrows.damaged"]


def test_readers_and_recovery_resync_after_random_damage(tmp_path: Path) -> None:
    import random

    rng = random.Random(7)
    _, frames = _three_frames()
    for trial in range(20):
        data = bytearray(b"".join(frames))
        at = rng.randrange(len(data))
        data[at : at + rng.randrange(1, 30)] = rng.randbytes(rng.randrange(0, 30))
        root = tmp_path / str(trial)
        store = Store(root)
        write_segment(store, "4242-0.arrows", bytes(data))
        with Journal(store, "liquidations"):
            pass
        # At most the frame holding the damage (and one beside it) is lost.
        assert stored(store).height >= 300, trial


# ---------------------------------------------------------------------- a full disk


class FullDisk:
    """os.write failing with ENOSPC while ``full``, after writing part of the data (a torn
    frame, as a real full disk leaves it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, journal_dir: Path) -> None:
        import errno
        import os as os_module

        self.full = False
        self.failures = 0
        real_write = os_module.write
        self._errno = errno.ENOSPC

        def write(fd: int, data) -> int:
            if self.full and _is_journal_fd(fd, journal_dir):
                self.failures += 1
                if self.failures % 2 and len(data) > 20:
                    return real_write(fd, bytes(data[: len(data) // 3]))  # a short write first
                raise OSError(self._errno, "No space left on device")
            return real_write(fd, data)

        monkeypatch.setattr("liqcli.store.journal.os.write", write)


def _is_journal_fd(fd: int, journal_dir: Path) -> bool:
    import os as os_module

    try:
        return Path(os_module.readlink(f"/proc/self/fd/{fd}")).parent == journal_dir
    except OSError:
        return False


def test_a_full_disk_keeps_rows_in_memory_retries_and_never_tears_a_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path)
    journal_dir = store.dataset_dir("liquidations") / JOURNAL_DIR
    disk = FullDisk(monkeypatch, journal_dir)
    journal = Journal(store, "liquidations", flush_interval=3600, compact_interval=3600)
    journal.open()
    journal.extend(rows(range(100)))
    journal.flush()
    disk.full = True
    with caplog.at_level(logging.DEBUG, logger="liqcli.store.journal"):
        for k in range(1, 11):  # ten flushes while the disk is full
            journal.extend(rows(range(k * 100, k * 100 + 100)))
            journal.flush()
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # said once, not once per flush
    assert "No space left on device" in errors[0].getMessage()
    # The segment holds whole frames only: the first 100 rows, no torn tail.
    (segment,) = journal_dir.glob("*.arrows")
    assert len(segment_rows(segment)) == 100
    disk.full = False  # space is back
    journal.extend(rows(range(1100, 1200)))
    journal.flush()
    assert len(segment_rows(segment)) == 1200
    journal.close()
    assert stored(store).equals(expected(range(1200)))
    assert journal.lost_rows == 0
    assert "works again after" in caplog.text


def test_rows_beyond_the_memory_bound_are_counted_lost_and_so_is_a_full_disk_at_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path)
    journal_dir = store.dataset_dir("liquidations") / JOURNAL_DIR
    disk = FullDisk(monkeypatch, journal_dir)
    journal = Journal(
        store,
        "liquidations",
        flush_interval=3600,
        compact_interval=3600,
        max_unwritten_bytes=len(frame(rows(range(100)))) * 3,
    )
    journal.open()
    disk.full = True
    for k in range(10):
        journal.extend(rows(range(k * 100, k * 100 + 100)))
        journal.flush()
    assert journal.stats.lost > 0
    kept = 1000 - journal.stats.lost
    # Closing while the segment disk is still full: the rows in memory go straight to Parquet.
    journal.close()
    assert stored(store).height == kept
    assert journal.lost_rows == journal.stats.lost == 1000 - kept
    with pytest.raises(LiqError, match=r"^\d+ liquidations row\(s\) were lost: "):
        journal.raise_if_lost()


def test_compaction_on_a_full_disk_keeps_the_segment_and_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import errno

    import liqcli.store.parquet as parquet

    store = Store(tmp_path)
    real = parquet._write_temp
    full = {"on": True}

    def write_temp(df: pl.DataFrame, path: Path) -> Path:
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(df, path)

    monkeypatch.setattr(parquet, "_write_temp", write_temp)
    clock = FakeClock()
    journal = Journal(store, "liquidations", flush_interval=0.01, compact_interval=1, clock=clock)
    with caplog.at_level(logging.WARNING):
        journal.open()
        journal.extend(rows(range(50)))
        for _ in range(5):
            clock.advance(2)
            time.sleep(0.05)
        eventually(lambda: journal.stats.compaction_failures >= 2)
        full["on"] = False
        journal.extend(rows(range(50, 60)))
        clock.advance(2)
        eventually(lambda: stored(store).height == 60)
        journal.close()
    assert stored(store).equals(expected(range(60)))
    assert caplog.text.count("compaction failed:") == 1
    assert journal_files(store) == []


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
        # No flush() call: the child's flusher (every 0.1 s) must get every row to the OS. The
        # wait is generous because encoding 20k rows takes seconds on a loaded 2-core CI machine;
        # the flush interval itself is checked by the mid-stream test below.
        eventually(lambda: segment_lines(Store(tmp_path)) == 20_000, timeout=30.0)
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
