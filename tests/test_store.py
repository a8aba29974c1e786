"""liqcli.store.parquet and liqcli.store.lock: layout, keyed upserts, crash safety, concurrency, scans."""

from __future__ import annotations

import logging
import queue
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liqcli.core.schemas import dataset
from liqcli.errors import DataError, LiqError, UsageError
from liqcli.store import Store, file_lock

JAN_1 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
FEB_1 = 1_706_745_600_000
MAR_1 = 1_709_251_200_000
APR_1 = 1_711_929_600_000
HOUR = 3_600_000


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def funding(
    symbol: str, ts: list[int], rate: float = 0.0001, exchange: str = "binance"
) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "exchange": exchange,
            "symbol": symbol,
            "ts": ts,
            "funding_rate": [rate] * len(ts),
            "mark_price": [100.0 + i for i in range(len(ts))],
        }
    )


def taker(exchange: str, symbol: str, period: str, ts: list[int]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "exchange": exchange,
            "symbol": symbol,
            "period": period,
            "ts": ts,
            "buy_sell_ratio": [1.0 + i for i in range(len(ts))],
            "buy_vol": [10.0] * len(ts),
            "sell_vol": [5.0] * len(ts),
        }
    )


def epoch_ms(df: pl.DataFrame, column: str = "ts") -> list[int]:
    return df[column].dt.epoch("ms").to_list()


class LineReader:
    """Lines of a subprocess's stdout, read by a thread so waits can time out."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(proc,), daemon=True).start()

    def _pump(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.lines.put(line.strip())

    def wait_for(self, expected: str, timeout: float = 20.0) -> None:
        while True:
            line = self.lines.get(timeout=timeout)
            if line == expected:
                return


def spawn(script: str, *args: str) -> tuple[subprocess.Popen, LineReader]:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    return proc, LineReader(proc)


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


# ---------------------------------------------------------------------- layout and types


def test_layout_file_contents_and_external_hive_read(tmp_path: Path) -> None:
    store = Store(tmp_path)
    rows = taker("binance", "BTCUSDT", "5m", [FEB_1 + 300_000, FEB_1 - 300_000, FEB_1])
    result = store.write("taker_ratio", rows)

    base = tmp_path / "taker_ratio" / "exchange=binance" / "symbol=BTCUSDT" / "period=5m"
    assert sorted(result.files) == [base / "2024-01.parquet", base / "2024-02.parquet"]
    assert (result.rows_in, result.new_rows) == (3, 3)

    feb = pl.read_parquet(base / "2024-02.parquet")
    assert feb.columns == ["ts", "buy_sell_ratio", "buy_vol", "sell_vol"]  # no partition columns
    assert feb.schema["ts"] == pl.Datetime("ms", "UTC")
    assert epoch_ms(feb) == [FEB_1, FEB_1 + 300_000]  # sorted by key

    hive = pl.scan_parquet(tmp_path / "taker_ratio" / "**" / "*.parquet", hive_partitioning=True)
    got = hive.collect().sort("ts")
    assert got["symbol"].to_list() == ["BTCUSDT"] * 3
    assert epoch_ms(got) == [FEB_1 - 300_000, FEB_1, FEB_1 + 300_000]


def test_day_files_for_day_datasets(tmp_path: Path) -> None:
    store = Store(tmp_path)
    trades = pl.DataFrame(
        {
            "exchange": "binance",
            "symbol": "BTCUSDT",
            "trade_id": [1, 2],
            "ts": [ms("2024-03-09T23:59:59.999"), ms("2024-03-10T00:00:00")],
            "price": [1.0, 2.0],
            "qty": [1.0, 1.0],
            "is_buyer_maker": [True, False],
        }
    )
    result = store.write("agg_trades", trades)
    assert [p.name for p in sorted(result.files)] == ["2024-03-09.parquet", "2024-03-10.parquet"]


def test_time_column_casts_from_any_unit_and_zone(tmp_path: Path) -> None:
    store = Store(tmp_path)
    instant = ms("2024-01-31T20:00:00.123")  # 05:00:00.123 on Feb 1 in Tokyo: a January row in UTC
    base = funding("BTCUSDT", [instant])
    tokyo = base.with_columns(
        pl.col("ts")
        .cast(pl.Datetime("ms", "UTC"))
        .dt.convert_time_zone("Asia/Tokyo")
        .dt.cast_time_unit("us")
    )
    naive_ns = funding("ETHUSDT", [instant]).with_columns(
        pl.col("ts").cast(pl.Datetime("ms")).dt.cast_time_unit("ns")
    )
    store.write("funding", tokyo)
    store.write("funding", naive_ns)
    got = store.read("funding")
    assert got.schema["ts"] == pl.Datetime("ms", "UTC")
    assert epoch_ms(got) == [instant, instant]
    assert (
        sorted(p.name for p in (tmp_path / "funding").rglob("*.parquet")) == ["2024-01.parquet"] * 2
    )


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (funding("BTCUSDT", [JAN_1]).drop("mark_price"), "funding: missing column(s) mark_price"),
        (
            funding("BTCUSDT", [JAN_1]).with_columns(funding_rate=pl.lit("abc")),
            "funding: column 'funding_rate' (String) cannot be stored as Float64",
        ),
        (
            funding("BTCUSDT", [JAN_1]).with_columns(ts=pl.lit("2024-01-01")),
            "funding: column 'ts' (String) cannot be stored as Datetime",
        ),
        (
            funding("BTCUSDT", [JAN_1, None]),
            "funding: column 'ts' has 1 null value(s)",
        ),
        (
            funding("X" * 201, [JAN_1]),
            "funding: 1 row(s) cannot be stored: symbol too long for a directory name",
        ),
        (
            funding("BTCUSDT", [2**62]),
            "funding: 1 row(s) cannot be stored: ts outside the years 1-9999",
        ),
    ],
)
def test_bad_frames_raise_data_error_naming_dataset_and_column(
    tmp_path: Path, frame: pl.DataFrame, message: str
) -> None:
    store = Store(tmp_path)
    with pytest.raises(DataError) as err:
        store.write("funding", frame)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)
    assert not list(tmp_path.rglob("*.parquet"))


def test_unknown_dataset_and_empty_frame(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(UsageError, match="unknown dataset 'nope'"):
        store.write("nope", funding("BTCUSDT", [JAN_1]))
    assert store.write("funding", funding("BTCUSDT", [])).files == []
    assert not (tmp_path / "funding").exists()


# ---------------------------------------------------------------------- upsert semantics


def test_upsert_later_wins_and_counts_new_keys(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write("funding", funding("BTCUSDT", [JAN_1, JAN_1 + HOUR], rate=0.1))
    result = store.write("funding", funding("BTCUSDT", [JAN_1 + HOUR, JAN_1 + 2 * HOUR], rate=0.2))
    assert result.new_rows == 1
    got = store.read("funding")
    assert epoch_ms(got) == [JAN_1, JAN_1 + HOUR, JAN_1 + 2 * HOUR]
    assert got["funding_rate"].to_list() == [0.1, 0.2, 0.2]

    # Within one batch the later duplicate wins too.
    dupes = pl.concat(
        [funding("BTCUSDT", [JAN_1], rate=0.3), funding("BTCUSDT", [JAN_1], rate=0.4)]
    )
    assert store.write("funding", dupes).new_rows == 0
    assert store.read("funding")["funding_rate"].to_list() == [0.4, 0.2, 0.2]


def test_a_later_write_without_an_optional_column_keeps_the_stored_value(tmp_path: Path) -> None:
    """liq paper --record stores a liquidation with its delivery `seq`; liq watch on the same data
    dir stores the same event (same key) without one: the recorded order must survive."""
    store = Store(tmp_path)

    def liquidation(ts: int, seq: int | None) -> pl.DataFrame:
        row = {"exchange": "binance", "symbol": "BTCUSDT", "ts": ts, "side": "SELL"}
        row |= {"price": 100.0, "qty": 1.0, "notional_usd": 100.0, "venue_symbol": "BTCUSDT"}
        row |= {"received_ts": ts + 5}
        if seq is not None:
            row["seq"] = seq
        return pl.DataFrame([row]).with_columns(pl.col("ts", "received_ts").cast(pl.Datetime("ms")))

    store.write("liquidations", pl.concat([liquidation(JAN_1, 7), liquidation(JAN_1 + 1, 8)]))
    store.write("liquidations", liquidation(JAN_1, None))  # watch's copy of the first, no seq
    assert store.read("liquidations")["seq"].to_list() == [7, 8]
    store.write("liquidations", liquidation(JAN_1 + 1, 9))  # a value still replaces a value
    assert store.read("liquidations")["seq"].to_list() == [7, 9]


def test_appending_later_rows_keeps_the_file_sorted_and_counts_them(tmp_path: Path) -> None:
    """The append fast path (every new row later than every stored one: no key can match)."""
    store = Store(tmp_path)
    store.write("funding", funding("BTCUSDT", [JAN_1 + HOUR, JAN_1], rate=0.1))
    later = [JAN_1 + 4 * HOUR, JAN_1 + 2 * HOUR, JAN_1 + 3 * HOUR]
    result = store.write("funding", funding("BTCUSDT", later, rate=0.2))
    assert (result.new_rows, len(result.files)) == (3, 1)
    stored = pl.read_parquet(result.files[0])  # the file itself, not a sorted read
    assert epoch_ms(stored) == [JAN_1 + h * HOUR for h in range(5)]
    assert stored["funding_rate"].to_list() == [0.1, 0.1, 0.2, 0.2, 0.2]


def test_rewriting_identical_rows_leaves_files_untouched(tmp_path: Path) -> None:
    store = Store(tmp_path)
    rows = funding("BTCUSDT", [JAN_1, FEB_1])
    store.write("funding", rows)
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.parquet")}
    again = store.write("funding", rows)
    assert (again.new_rows, again.files) == (0, [])
    assert mtimes == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.parquet")}


# Timestamps straddle three month boundaries so batches span several files.
BOUNDARY_TS = st.sampled_from([JAN_1, FEB_1, MAR_1]).flatmap(
    lambda boundary: st.integers(-3, 3).map(lambda h: boundary + h * HOUR)
)
ROWS = st.lists(
    st.tuples(st.sampled_from(["BTCUSDT", "ETHUSDT"]), BOUNDARY_TS, st.integers(-1000, 1000)),
    max_size=25,
)


def rows_frame(rows: list[tuple[str, int, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "exchange": ["binance"] * len(rows),
            "symbol": [r[0] for r in rows],
            "ts": [r[1] for r in rows],
            "funding_rate": [r[2] / 1e6 for r in rows],
            "mark_price": [float(r[2]) for r in rows],
        },
        schema_overrides={"symbol": pl.String, "exchange": pl.String, "ts": pl.Int64},
    )


def expected_frame(rows: list[tuple[str, int, int]]) -> pl.DataFrame:
    """The keyed-upsert model: a dict keyed by (exchange, symbol, ts), later rows winning."""
    latest = {("binance", symbol, ts): value for symbol, ts, value in rows}
    ordered = [(symbol, ts, value) for (_, symbol, ts), value in sorted(latest.items())]
    return rows_frame(ordered).with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC")))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=ROWS)
def test_property_writing_twice_equals_writing_once(batch: list[tuple[str, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as root:
        store = Store(root)
        first = store.write("funding", rows_frame(batch))
        once = store.read("funding")
        second = store.write("funding", rows_frame(batch))
        assert store.read("funding").equals(once)
        assert once.equals(expected_frame(batch))
        assert first.new_rows == once.height
        assert (second.new_rows, second.files) == (0, [])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(ROWS, min_size=1, max_size=4))
def test_property_any_split_equals_the_union(batches: list[list[tuple[str, int, int]]]) -> None:
    union = [row for batch in batches for row in batch]
    with tempfile.TemporaryDirectory() as split_root, tempfile.TemporaryDirectory() as union_root:
        split_store, union_store = Store(split_root), Store(union_root)
        new_rows = sum(split_store.write("funding", rows_frame(b)).new_rows for b in batches)
        union_store.write("funding", rows_frame(union))
        split = split_store.read("funding")
        assert split.equals(union_store.read("funding"))
        assert split.equals(expected_frame(union))
        assert new_rows == split.height


# ---------------------------------------------------------------------- crash safety


def _record_syncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """What a write syncs and publishes, in order: ("fsync", name), ("syncfs", dir),
    ("publish", target), ("sync-check", target) when a published file was already on disk."""
    import liqcli.store.parquet as parquet

    calls: list[tuple[str, str]] = []
    synced: set[str] = set()
    real_fsync, real_syncfs, real_publish = parquet._fsync_path, parquet._syncfs, parquet._publish

    def fsync_path(path: Path, flags: int) -> None:
        real_fsync(path, flags)
        synced.add(str(path))
        calls.append(("fsync", path.name))

    def syncfs(directory: Path) -> None:
        real_syncfs(directory)
        synced.add("*")  # every temp file written so far
        calls.append(("syncfs", directory.name))

    def publish(tmp: Path, path: Path) -> None:
        assert "*" in synced or str(tmp) in synced, f"{tmp.name} renamed before it was synced"
        real_publish(tmp, path)
        calls.append(("publish", path.parent.name + "/" + path.name))

    monkeypatch.setattr(parquet, "_fsync_path", fsync_path)
    monkeypatch.setattr(parquet, "_syncfs", syncfs)
    monkeypatch.setattr(parquet, "_publish", publish)
    return calls


def test_a_small_write_fsyncs_each_file_before_its_rename_and_each_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _record_syncs(monkeypatch)
    store = Store(tmp_path)
    # Two months of one symbol (two files in one directory) and one more symbol.
    df = pl.concat([funding("BTCUSDT", [JAN_1, FEB_1]), funding("ETHUSDT", [JAN_1])])
    result = store.write("funding", df)
    kinds = [kind for kind, _ in calls]
    assert kinds == ["fsync"] * 3 + ["publish"] * 3 + ["fsync"] * 2  # files, renames, 2 dirs
    assert [name for _, name in calls[-2:]] == ["symbol=BTCUSDT", "symbol=ETHUSDT"]
    assert len(result.files) == 3 and result.new_rows == 3
    assert store.read("funding").height == 3
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.skipif(sys.platform != "linux", reason="syncfs is Linux's")
def test_a_write_of_many_files_syncs_the_filesystem_before_any_rename_and_after_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _record_syncs(monkeypatch)
    store = Store(tmp_path)
    symbols = [f"C{i}USDT" for i in range(12)]
    # Every symbol in two months: 24 files in 12 directories, one write.
    df = pl.concat([funding(s, [JAN_1, JAN_1 + 1000, FEB_1]) for s in symbols])
    result = store.write("funding", df)
    kinds = [kind for kind, _ in calls]
    assert kinds == ["syncfs"] + ["publish"] * 24 + ["syncfs"]
    assert len(result.files) == 24 and result.new_rows == 36
    assert store.read("funding").sort("symbol", "ts").equals(store.read("funding"))
    assert store.read("funding").height == 36
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_write_failing_part_way_publishes_nothing_unsynced_and_leaves_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import liqcli.store.parquet as parquet

    store = Store(tmp_path)
    before = pl.concat([funding(f"C{i}USDT", [JAN_1]) for i in range(10)])
    store.write("funding", before)
    expected = store.read("funding")
    real, written = parquet._write_temp, []

    def write_temp(df: pl.DataFrame, path: Path) -> Path:
        if len(written) == 9:  # the last file's temp cannot be written
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)
        return real(df, path)

    monkeypatch.setattr(parquet, "_write_temp", write_temp)
    with pytest.raises(LiqError, match="No space left"):
        store.write("funding", pl.concat([funding(f"C{i}USDT", [JAN_1 + 1000]) for i in range(10)]))
    assert len(written) == 9
    assert store.read("funding").equals(expected)  # the nine written temp files were not published
    assert not list(tmp_path.rglob("*.tmp"))


_SLOW_PUBLISH = """
import sys, time
import polars as pl
import liqcli.store.parquet as parquet
from liqcli.store import Store

def stalled_publish(tmp, path):
    print("temp-written", flush=True)
    time.sleep(60)

parquet._publish = stalled_publish
n = 50_000
rows = pl.DataFrame({
    "exchange": "binance", "symbol": "BTCUSDT",
    "ts": [1_704_067_200_000 + i * 1000 for i in range(n)],
    "funding_rate": [0.5] * n, "mark_price": [1.0] * n,
})
Store(sys.argv[1]).write("funding", rows)
"""


def test_write_killed_between_temp_file_and_rename_keeps_previous_data(tmp_path: Path) -> None:
    store = Store(tmp_path)
    before = funding("BTCUSDT", [JAN_1, JAN_1 + 1000], rate=0.1)
    store.write("funding", before)
    expected = store.read("funding")

    proc, lines = spawn(_SLOW_PUBLISH, str(tmp_path))
    try:
        lines.wait_for("temp-written")
    finally:
        kill9(proc)

    directory = tmp_path / "funding" / "exchange=binance" / "symbol=BTCUSDT"
    leftovers = list(directory.glob(".*.tmp"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0  # the new file was fully written
    assert store.read("funding").equals(expected)
    assert store.corrupt_files == []

    # The next writer (the dead one's lock is gone) succeeds and clears the leftover.
    store.write("funding", funding("BTCUSDT", [JAN_1 + 2000], rate=0.2), lock_timeout=5)
    assert not list(directory.glob(".*.tmp"))
    assert store.read("funding").height == 3


_WRITE_FOREVER = """
import sys
import polars as pl
from liqcli.store import Store

store = Store(sys.argv[1])
n = 30_000
ts = [1_704_067_200_000 + i * 60_000 * 3 for i in range(n)]  # 2024-01-01 .. 2024-03-04
print("ready", flush=True)
version = 1
while True:
    version += 1
    store.write("funding", pl.DataFrame({
        "exchange": "binance", "symbol": "BTCUSDT", "ts": ts,
        "funding_rate": [float(version)] * n, "mark_price": [float(version)] * n,
    }))
"""


def test_writes_killed_at_random_points_leave_every_file_whole(tmp_path: Path) -> None:
    store = Store(tmp_path)
    n = 30_000
    ts = [JAN_1 + i * 180_000 for i in range(n)]
    store.write("funding", funding("BTCUSDT", ts, rate=1.0))
    expected_counts = store.read("funding").group_by(pl.col("ts").dt.month()).len()
    rng = random.Random(7)
    for _ in range(5):
        proc, lines = spawn(_WRITE_FOREVER, str(tmp_path))
        try:
            lines.wait_for("ready")
            time.sleep(rng.uniform(0.05, 0.35))  # a random point in some write
        finally:
            kill9(proc)
        files = sorted(tmp_path.rglob("*.parquet"))
        assert [f.name for f in files] == ["2024-01.parquet", "2024-02.parquet", "2024-03.parquet"]
        for f in files:
            content = pl.read_parquet(f)  # readable: never a half-written file
            assert content["funding_rate"].n_unique() == 1  # one write's version, whole
        got = store.read("funding")
        assert store.corrupt_files == []
        assert got["ts"].is_unique().all()
        assert (
            got.group_by(pl.col("ts").dt.month())
            .len()
            .sort("ts")
            .equals(expected_counts.sort("ts"))
        )


# ---------------------------------------------------------------------- concurrency and locks

_OVERLAPPING_WRITER = """
import sys, time
from pathlib import Path
import polars as pl
from liqcli.store import Store

root, first, tag = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
store = Store(root)
print("ready", flush=True)
while not (Path(root) / "go").exists():
    time.sleep(0.005)
for batch in range(10):
    ids = range(first + batch * 100, first + batch * 100 + 100)
    store.write("funding", pl.DataFrame({
        "exchange": "binance", "symbol": "BTCUSDT",
        "ts": [1_704_067_200_000 + i * 1000 for i in ids],
        "funding_rate": [tag] * 100, "mark_price": [float(i) for i in ids],
    }))
print("done", flush=True)
"""


def test_two_processes_writing_overlapping_batches_end_with_the_union(tmp_path: Path) -> None:
    writers = [
        spawn(_OVERLAPPING_WRITER, str(tmp_path), str(first), tag)
        for first, tag in ((0, "1"), (500, "2"))
    ]
    for _, lines in writers:
        lines.wait_for("ready")
    (tmp_path / "go").touch()
    for proc, lines in writers:
        lines.wait_for("done")
        assert proc.wait(timeout=20) == 0

    got = Store(tmp_path).read("funding")
    assert epoch_ms(got) == [JAN_1 + i * 1000 for i in range(1500)]  # union, sorted, no duplicates
    assert got["mark_price"].to_list() == [float(i) for i in range(1500)]
    assert set(got.filter(pl.col("mark_price") < 500)["funding_rate"]) == {1.0}
    assert set(got.filter(pl.col("mark_price") >= 1000)["funding_rate"]) == {2.0}


def test_file_lock_times_out_naming_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "sub" / "x.lock"
    with file_lock(lock, timeout=1):
        with (
            pytest.raises(
                LiqError, match=r"waiting for lock .*x\.lock: another liq process holds it"
            ),
            file_lock(lock, timeout=0.05),
        ):
            pass
        # Shared locks exclude the exclusive holder too.
        with pytest.raises(LiqError), file_lock(lock, timeout=0, shared=True):
            pass
    with file_lock(lock, timeout=0, shared=True), file_lock(lock, timeout=0, shared=True):
        pass  # readers share


def test_store_write_waits_for_the_dataset_lock(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with (
        file_lock(tmp_path / "funding" / ".lock"),
        pytest.raises(LiqError, match="another liq process holds it"),
    ):
        store.write("funding", funding("BTCUSDT", [JAN_1]), lock_timeout=0.05)
    assert store.write("funding", funding("BTCUSDT", [JAN_1]), lock_timeout=0.05).new_rows == 1


_HOLD_LOCK = """
import sys, time
from liqcli.store import file_lock
with file_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_lock_held_by_another_process_is_released_when_it_dies(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    proc, lines = spawn(_HOLD_LOCK, str(lock))
    try:
        lines.wait_for("locked")
        with pytest.raises(LiqError, match="another liq process"), file_lock(lock, timeout=0.05):
            pass
    finally:
        kill9(proc)
    with file_lock(lock, timeout=1):
        pass


# ---------------------------------------------------------------------- scans


@pytest.fixture
def market(tmp_path: Path) -> Store:
    """taker_ratio for 2 exchanges x 2 symbols x 2 periods, one row at the start of Jan, Feb, Mar."""
    store = Store(tmp_path)
    frames = [
        taker(exchange, symbol, period, [JAN_1, FEB_1, MAR_1])
        for exchange in ("binance", "okx")
        for symbol in ("BTCUSDT", "ETHUSDT")
        for period in ("5m", "1h")
    ]
    store.write("taker_ratio", pl.concat(frames))
    return store


def partition_file(store: Store, exchange: str, symbol: str, period: str, month: str) -> Path:
    return (
        store.root
        / "taker_ratio"
        / f"exchange={exchange}"
        / f"symbol={symbol}"
        / f"period={period}"
        / f"{month}.parquet"
    )


def corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_scan_returns_all_schema_columns_typed(market: Store) -> None:
    lf = market.scan("taker_ratio")
    assert isinstance(lf, pl.LazyFrame)
    assert lf.collect_schema() == dataset("taker_ratio").pl_schema
    assert market.read("taker_ratio").height == 24


def test_scan_filters_by_partition_values(market: Store) -> None:
    btc = market.read("taker_ratio", symbol="BTCUSDT")
    assert set(btc["symbol"]) == {"BTCUSDT"} and btc.height == 12
    assert set(btc["exchange"]) == {"binance", "okx"}

    some = market.read("taker_ratio", exchange="okx", symbol=["BTCUSDT", "ETHUSDT"], period="5m")
    assert some.select("exchange", "symbol", "period").unique().sort("symbol").rows() == [
        ("okx", "BTCUSDT", "5m"),
        ("okx", "ETHUSDT", "5m"),
    ]
    assert some.height == 6
    assert market.read("taker_ratio", symbol="SOLUSDT").height == 0


def test_scan_time_range_is_half_open(market: Store) -> None:
    got = market.read(
        "taker_ratio", exchange="binance", symbol="BTCUSDT", period="5m", start=FEB_1, end=MAR_1
    )
    assert epoch_ms(got) == [FEB_1]
    got = market.read(
        "taker_ratio", exchange="binance", symbol="BTCUSDT", period="5m", start=FEB_1 + 1
    )
    assert epoch_ms(got) == [MAR_1]
    got = market.read(
        "taker_ratio", exchange="binance", symbol="BTCUSDT", period="5m", end=FEB_1 + 1
    )
    assert epoch_ms(got) == [JAN_1, FEB_1]


def test_scan_prunes_other_partitions_and_months(
    market: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # Damage files the filtered scans must not open: reading them would log and record them.
    corrupt(partition_file(market, "binance", "ETHUSDT", "5m", "2024-03"))
    corrupt(partition_file(market, "binance", "BTCUSDT", "5m", "2024-01"))
    with caplog.at_level(logging.WARNING):
        assert market.read("taker_ratio", symbol="BTCUSDT", period="5m", start=FEB_1).height == 4
        assert market.read("taker_ratio", symbol="ETHUSDT", end=MAR_1).height == 8
    assert market.corrupt_files == []
    assert caplog.records == []


def test_corrupt_file_is_named_skipped_and_the_rest_stays_readable(
    market: Store, caplog: pytest.LogCaptureFixture
) -> None:
    bad = partition_file(market, "okx", "BTCUSDT", "1h", "2024-02")
    corrupt(bad)
    with caplog.at_level(logging.WARNING, logger="liqcli.store.parquet"):
        got = market.read("taker_ratio")
    assert got.height == 23
    assert market.corrupt_files == [bad]
    assert any(str(bad) in r.getMessage() for r in caplog.records)

    # Next scan starts afresh.
    market.read("taker_ratio", exchange="binance")
    assert market.corrupt_files == []


def test_damaged_pages_behind_an_intact_footer_are_found_by_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path)
    n = 20_000
    store.write(
        "funding",
        pl.concat(
            [funding(s, [JAN_1 + i * 1000 for i in range(n)]) for s in ("BTCUSDT", "ETHUSDT")]
        ),
    )
    bad = tmp_path / "funding" / "exchange=binance" / "symbol=BTCUSDT" / "2024-01.parquet"
    data = bytearray(bad.read_bytes())
    for i in range(100, len(data) // 2, 7):
        data[i] ^= 0xFF
    bad.write_bytes(bytes(data))
    pl.read_parquet_schema(bad)  # the footer still parses

    with caplog.at_level(logging.WARNING):
        got = store.read("funding")
    assert set(got["symbol"]) == {"ETHUSDT"} and got.height == n
    assert store.corrupt_files == [bad]


def test_write_over_a_corrupt_file_sets_it_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path)
    store.write("funding", funding("BTCUSDT", [JAN_1, JAN_1 + HOUR]))
    path = tmp_path / "funding" / "exchange=binance" / "symbol=BTCUSDT" / "2024-01.parquet"
    corrupt(path)
    with caplog.at_level(logging.WARNING):
        result = store.write("funding", funding("BTCUSDT", [JAN_1 + 2 * HOUR]))
    assert result.new_rows == 1 and store.corrupt_files == [path]
    assert [p.name.startswith("2024-01.parquet.corrupt-") for p in path.parent.iterdir()].count(
        True
    ) == 1
    assert epoch_ms(store.read("funding")) == [JAN_1 + 2 * HOUR]


def test_empty_dataset_scans_to_an_empty_frame_with_the_schema(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for df in (store.read("klines"), store.scan("klines", symbol="BTCUSDT", start=JAN_1).collect()):
        assert df.height == 0
        assert df.schema == dataset("klines").pl_schema


def test_scan_ignores_journal_and_temp_files(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write("funding", funding("BTCUSDT", [JAN_1]))
    journal = tmp_path / "funding" / "_journal"
    journal.mkdir()
    (journal / "1-0.jsonl").write_text('{"not": "parquet"}\n')
    (
        tmp_path / "funding" / "exchange=binance" / "symbol=BTCUSDT" / ".2024-02.parquet.1.ab.tmp"
    ).write_bytes(b"junk")
    assert store.read("funding").height == 1
    assert store.partitions("funding") == [{"exchange": "binance", "symbol": "BTCUSDT"}]
    assert store.corrupt_files == []


def test_scan_rejects_unknown_partitions_and_escapes_any_value(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(UsageError, match="funding is partitioned by exchange, symbol, not period"):
        store.scan("funding", period="5m")
    # A value that looks like a path names an escaped directory, never another one.
    (tmp_path / "x" / "exchange=binance").mkdir(parents=True)
    store.write("funding", funding("BTCUSDT", [JAN_1]))
    assert store.scan("funding", symbol="../x").collect().height == 0
    assert store.scan("funding", exchange="..", symbol="..").collect().height == 0
    with pytest.raises(UsageError, match="invalid symbol 3"):
        store.scan("funding", symbol=[3])  # type: ignore[list-item]


ODD_SYMBOLS = ["币安人生USDT", "BTC/USDT", "", "BTC USDT", "..", ".", "../../ETC", "%41", "a\x00b"]


def test_any_symbol_is_stored_under_an_escaped_directory_and_read_back(tmp_path: Path) -> None:
    store = Store(tmp_path)
    rows = pl.concat([funding(symbol, [JAN_1 + i * HOUR]) for i, symbol in enumerate(ODD_SYMBOLS)])
    store.write("funding", rows)
    store.write("funding", rows)  # idempotent: the escaped directory is found again
    directories = sorted(p.name for p in (tmp_path / "funding" / "exchange=binance").iterdir())
    assert directories == sorted(
        [
            "symbol=%E5%B8%81%E5%AE%89%E4%BA%BA%E7%94%9FUSDT",
            "symbol=BTC%2FUSDT",
            "symbol=",
            "symbol=BTC%20USDT",
            "symbol=%2E%2E",
            "symbol=%2E",
            "symbol=..%2F..%2FETC",
            "symbol=%2541",
            "symbol=a%00b",
        ]
    )
    # Nothing outside the dataset's own tree was created.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["funding"]
    got = store.read("funding")
    assert sorted(got["symbol"].to_list()) == sorted(ODD_SYMBOLS)
    assert store.read("funding", symbol="币安人生USDT")["symbol"].to_list() == ["币安人生USDT"]
    assert store.read("funding", symbol="")["symbol"].to_list() == [""]
    assert {p["symbol"] for p in store.partitions("funding")} == set(ODD_SYMBOLS)
    assert store.last_ts("funding", symbol="BTC/USDT") == JAN_1 + HOUR
    # External hive readers decode the escapes too.
    external = pl.scan_parquet(
        tmp_path / "funding" / "**" / "*.parquet", hive_partitioning=True
    ).collect()
    decoded = set(external["symbol"].fill_null("").to_list())
    assert {"币安人生USDT", "BTC/USDT", "BTC USDT", "..", "../../ETC", "%41"} <= decoded


def test_split_storable_sets_each_bad_row_aside_with_its_reason(tmp_path: Path) -> None:
    from liqcli.store.parquet import split_storable

    rows = pl.concat(
        [
            funding("BTCUSDT", [JAN_1, JAN_1 + HOUR]),
            funding("币安人生USDT", [JAN_1]),
            funding("BTCUSDT", [2**62]),
            funding("BTCUSDT", [JAN_1 + 2 * HOUR], rate=float("inf")),
            funding("X" * 300, [JAN_1]),
            funding("BTCUSDT", [None]),  # type: ignore[list-item]
        ]
    )
    good, bad = split_storable("funding", rows)
    assert good["symbol"].to_list() == ["BTCUSDT", "BTCUSDT", "币安人生USDT"]
    assert bad["reason"].to_list() == [
        "ts outside the years 1-9999",
        "funding_rate is not a finite number",
        "symbol too long for a directory name",
        "no ts",
    ]
    Store(tmp_path).write("funding", good)
    assert Store(tmp_path).read("funding").height == 3


# ---------------------------------------------------------------------- first/last ts, partitions


def test_first_and_last_ts(market: Store) -> None:
    market.write("taker_ratio", taker("okx", "BTCUSDT", "5m", [MAR_1 + 3 * HOUR, JAN_1 - HOUR]))
    assert (
        market.last_ts("taker_ratio", exchange="okx", symbol="BTCUSDT", period="5m")
        == MAR_1 + 3 * HOUR
    )
    assert (
        market.first_ts("taker_ratio", exchange="okx", symbol="BTCUSDT", period="5m")
        == JAN_1 - HOUR
    )
    assert market.last_ts("taker_ratio", exchange="binance", symbol="BTCUSDT", period="5m") == MAR_1
    assert market.last_ts("taker_ratio", symbol="BTCUSDT") == MAR_1 + 3 * HOUR  # across partitions
    assert market.first_ts("taker_ratio") == JAN_1 - HOUR
    assert market.last_ts("taker_ratio", symbol="SOLUSDT") is None
    assert Store(market.root / "elsewhere").last_ts("funding") is None


def test_last_ts_reads_only_the_newest_file(market: Store) -> None:
    older = partition_file(market, "binance", "BTCUSDT", "5m", "2024-01")
    corrupt(older)
    assert market.last_ts("taker_ratio", exchange="binance", symbol="BTCUSDT", period="5m") == MAR_1
    assert market.corrupt_files == []  # never opened

    newest = partition_file(market, "binance", "BTCUSDT", "5m", "2024-03")
    corrupt(newest)
    assert market.last_ts("taker_ratio", exchange="binance", symbol="BTCUSDT", period="5m") == FEB_1
    assert market.corrupt_files == [newest]


def test_partitions_lists_every_stored_partition(market: Store) -> None:
    parts = market.partitions("taker_ratio")
    assert len(parts) == 8
    assert parts[0] == {"exchange": "binance", "symbol": "BTCUSDT", "period": "1h"}
    assert {tuple(p.values()) for p in parts} == {
        (e, s, p) for e in ("binance", "okx") for s in ("BTCUSDT", "ETHUSDT") for p in ("5m", "1h")
    }
    assert Store(market.root).partitions("funding") == []


def test_store_root_expands_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Store("~/data").root == tmp_path / "data"
    assert Store("~/data").dataset_dir("funding") == tmp_path / "data" / "funding"


def test_unwritable_data_dir_is_a_one_line_liq_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(LiqError, match=r"^funding: cannot write under .*file: ") as err:
        Store(not_a_dir).write("funding", funding("BTCUSDT", [JAN_1]))
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------- damaged values


def _liquidations(n: int, t0: int = JAN_1) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "exchange": "binance",
            "symbol": "BTCUSDT",
            "ts": [t0 + i * 1000 for i in range(n)],
            "side": ["long", "short"] * (n // 2),
            "price": [40_000.0 + i for i in range(n)],
            "qty": [0.5] * n,
            "notional_usd": [20_000.0 + i / 2 for i in range(n)],
            "venue_symbol": "BTCUSDT",
            "received_ts": [t0 + i * 1000 + 5 for i in range(n)],
        }
    )


def test_impossible_values_read_back_are_skipped_and_their_file_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A flipped bit in a page once replayed as a notional of -4.7e184."""
    store = Store(tmp_path)
    store.write("liquidations", _liquidations(10))
    (path,) = (tmp_path / "liquidations").rglob("*.parquet")
    # What a damaged page decodes to: an exponent flip, a sign flip, NaN, a time past 9999.
    damaged = pl.read_parquet(path).with_columns(
        notional_usd=pl.when(pl.int_range(pl.len()) == 1)
        .then(-4.7e184)
        .when(pl.int_range(pl.len()) == 2)
        .then(float("nan"))
        .otherwise(pl.col("notional_usd")),
        qty=pl.when(pl.int_range(pl.len()) == 3).then(-0.5).otherwise(pl.col("qty")),
        received_ts=pl.when(pl.int_range(pl.len()) == 4)
        .then(pl.lit(2**62).cast(pl.Datetime("ms", "UTC")))
        .otherwise(pl.col("received_ts")),
    )
    damaged.write_parquet(path)
    with caplog.at_level(logging.WARNING):
        got = store.read("liquidations")
    assert got.height == 6
    assert store.implausible_rows == 4
    assert f"skipping 4 row(s) with impossible values in {path}" in caplog.text
    scanned = store.scan("liquidations").collect()
    assert scanned.height == 6
    assert scanned["notional_usd"].max() < 1e6


def test_random_bit_flips_never_crash_a_read_nor_return_impossible_values(tmp_path: Path) -> None:
    rng = random.Random(3)
    original = _liquidations(2_000)
    for trial in range(30):
        store = Store(tmp_path / str(trial))
        store.write("liquidations", original)
        (path,) = (tmp_path / str(trial) / "liquidations").rglob("*.parquet")
        data = bytearray(path.read_bytes())
        for _ in range(3):
            at = rng.randrange(4, len(data) - 8)  # not the magic: the footer may be hit
            data[at] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        got = store.read("liquidations")
        assert got.height <= 2_000
        if got.height:
            assert got["notional_usd"].is_between(0, 1e18).all()
            assert got["price"].is_between(0, 1e18).all()
