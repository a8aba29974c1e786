"""Every command through bad files and unwritable outputs: one ``liq: error:`` line and exit 1
(or 2 for usage errors), never a traceback.

The tests run as root here, where a read-only directory is still writable: unwritable places are
made so for every user (a path under a plain file, a directory under /proc, a directory in place
of the output file), so the failures are exercised whoever runs the suite.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pytest
from typer.testing import CliRunner

from liqcli.cli.app import app
from liqcli.core.timeutil import now_ms, parse_time
from liqcli.store.parquet import Store
from tests.fakes.archive_server import binance_agg_csv, synthetic_trades, zip_bytes
from tests.test_pressure_cli import STEP, store_liquidations, store_market

runner = CliRunner()
DAY = date(2024, 3, 1)


def liq(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env)


def assert_one_line_error(result, code: int = 1, *needles: str) -> None:
    text = result.output
    assert result.exit_code == code, text
    assert "Traceback" not in text, text
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    errors = [line for line in text.splitlines() if line.startswith("liq: error:")]
    assert len(errors) == 1, text
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture(scope="module")
def csv_bytes() -> bytes:
    return binance_agg_csv(synthetic_trades(400, parse_time(DAY.isoformat()), seed=3))


@pytest.fixture
def blocker(tmp_path) -> Path:
    """A plain file: anything 'under' it cannot be created, not even by root."""
    path = tmp_path / "plain-file"
    path.write_text("x")
    return path


def unwritable_places(tmp_path: Path, blocker: Path) -> dict[str, Path]:
    taken = tmp_path / "taken.png"
    taken.mkdir(exist_ok=True)  # a directory where the PNG should go
    places = {"under_a_file": blocker / "p.png", "a_directory": taken}
    if Path("/proc/self").is_dir():
        places["proc"] = Path("/proc/liq-test-p.png")
    return places


# --------------------------------------------------------------------------- liq map


@pytest.mark.parametrize("cut", [90, 130, 160, 171, 5_000])
def test_map_csv_cut_mid_line_skips_the_bad_row(tmp_path, csv_bytes, cut):
    cut_file = tmp_path / "t.csv"
    cut_file.write_bytes(
        csv_bytes[:cut] if csv_bytes[cut - 1 : cut] != b"\n" else csv_bytes[: cut - 1]
    )
    result = liq("--data-dir", str(tmp_path / "d"), "map", "XRPETH", "--input", str(cut_file))
    assert "Traceback" not in result.output and not isinstance(result.exception, TypeError)
    if result.exit_code == 0:
        assert "malformed trade rows skipped" in result.stderr
        assert "1970" not in result.stdout  # a cut epoch is not read as a time in 1970
    else:
        assert_one_line_error(result, 1, "no trades")


def test_map_file_that_is_not_parquet(tmp_path):
    bad = tmp_path / "b.parquet"
    bad.write_bytes(b"this is not parquet")
    result = liq("--data-dir", str(tmp_path / "d"), "map", "XRPETH", "--input", str(bad))
    assert_one_line_error(result, 1, "b.parquet", "not a readable Parquet file")


PROC_DIR = Path("/proc/liq-test-data")  # exists for nobody, creatable by nobody (not even root)
needs_proc = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")


@needs_proc
def test_map_zip_with_an_unwritable_data_dir_converts_in_a_temp_dir(tmp_path, csv_bytes, caplog):
    day = tmp_path / "day.zip"
    day.write_bytes(zip_bytes("XRPETH-aggTrades-2024-03-01.csv", csv_bytes))
    result = liq("--data-dir", str(PROC_DIR), "map", "XRPETH", "--input", str(day), "-f", "json")
    assert result.exit_code == 0, result.output
    assert "is not writable" in caplog.text and "Traceback" not in result.output
    assert '"trades":400' in result.stdout


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_map_zip_with_a_read_only_data_dir_as_a_normal_user(tmp_path, csv_bytes, caplog):
    day = tmp_path / "day.zip"
    day.write_bytes(zip_bytes("XRPETH-aggTrades-2024-03-01.csv", csv_bytes))
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        result = liq("--data-dir", str(read_only), "map", "XRPETH", "--input", str(day))
    finally:
        read_only.chmod(0o755)
    assert result.exit_code == 0, result.output
    assert "is not writable" in caplog.text


def test_map_zip_when_no_directory_is_writable_is_one_line(tmp_path, csv_bytes, monkeypatch):
    import liqcli.services.liqmap as service

    monkeypatch.setattr(service, "_writable", lambda directory: False)
    day = tmp_path / "day.zip"
    day.write_bytes(zip_bytes("XRPETH-aggTrades-2024-03-01.csv", csv_bytes))
    result = liq("--data-dir", str(tmp_path / "d"), "map", "XRPETH", "--input", str(day))
    assert_one_line_error(result, 1, "day.zip", "no writable directory")


def test_a_data_dir_that_is_a_file_is_a_usage_error(blocker):
    for data_dir in (blocker, blocker / "data"):
        result = liq("--data-dir", str(data_dir), "pressure", "BTCUSDT", "--offline")
        assert_one_line_error(result, 2, "is a file, not a directory")


@needs_proc
def test_map_archive_download_with_an_unwritable_data_dir_fails_before_any_request(tmp_path):
    env = {"LIQ_BINANCE_ARCHIVE_URL": "http://127.0.0.1:9"}  # nothing listens: must not be tried
    result = liq("--data-dir", str(PROC_DIR), "map", "BTCUSDT", "--start", "2024-03-01",
                 "--end", "2024-03-02", env=env)  # fmt: skip
    assert_one_line_error(result, 1, "data dir", "not writable")


def test_map_charts_into_unwritable_places(tmp_path, blocker, csv_bytes):
    good = tmp_path / "ok.csv"
    good.write_bytes(csv_bytes)
    places = unwritable_places(tmp_path, blocker)
    places["a_directory"] = blocker  # --out is a directory: a plain file there is not one
    for name, place in places.items():
        result = liq("--data-dir", str(tmp_path / "d"), "map", "XRPETH", "--input", str(good),
                     "--chart", "map", "--out", str(place))  # fmt: skip
        assert result.exit_code == 1, (name, result.output)
        assert "Traceback" not in result.output, name


# --------------------------------------------------------------------------- liq pressure


@pytest.fixture
def pressure_store(tmp_path) -> Path:
    now = now_ms()
    recent = now - now % STEP - STEP
    store = Store(tmp_path / "data")
    store_market(store, "BTCUSDT", recent, 400)
    store_liquidations(store, "BTCUSDT", recent - 390 * STEP, recent)
    return tmp_path / "data"


def _pressure_chart(data: Path, chart: Path):
    return liq("--data-dir", str(data), "pressure", "BTCUSDT", "--offline", "--history",
               "--start", "1d", "--chart", str(chart))  # fmt: skip


def test_pressure_chart_into_unwritable_places(tmp_path, blocker, pressure_store):
    for name, place in unwritable_places(tmp_path, blocker).items():
        result = _pressure_chart(pressure_store, place)
        code = 1 if name == "proc" else 2  # /proc exists: found only when writing
        assert_one_line_error(result, code, str(place))


def test_pressure_chart_directory_must_exist(tmp_path, pressure_store):
    missing = tmp_path / "nonexistent_dir" / "x.png"
    result = _pressure_chart(pressure_store, missing)
    assert_one_line_error(result, 2, "does not exist")
    assert not missing.parent.exists()
    ok = _pressure_chart(pressure_store, tmp_path / "x.png")
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "x.png").stat().st_size > 10_000
    assert not list(tmp_path.glob(".*.part"))


@needs_proc
def test_pressure_with_an_unwritable_data_dir_fails_before_any_request():
    env = {"LIQ_BINANCE_REST_URL": "http://127.0.0.1:9"}
    result = liq("--data-dir", str(PROC_DIR), "pressure", "BTCUSDT", env=env)
    assert_one_line_error(result, 1, "data dir", "not writable")


# --------------------------------------------------------------------------- every command


@pytest.mark.parametrize(
    "args",
    [
        ["map", "BTCUSDT", "--input", "{bad}"],
        ["map", "BTCUSDT", "--input", "{dir}"],
        ["pressure", "BTCUSDT", "--offline"],
        ["pressure", "BTCUSDT", "--offline", "--history", "--start", "2d"],
        ["fetch", "BTCUSDT", "--since", "1d"],
        ["watch", "--replay", "{bad}", "--format", "jsonl"],
        ["cascade", "BTCUSDT", "--replay", "{bad}", "--format", "jsonl"],
        ["data"],
    ],
)
def test_no_command_prints_a_traceback_on_a_bad_store_or_file(tmp_path, blocker, args):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"\x00garbage\n" * 10)
    argv = [a.format(bad=bad, dir=tmp_path) for a in args]
    env = {
        "LIQ_BINANCE_REST_URL": "http://127.0.0.1:9",
        "LIQ_BINANCE_ARCHIVE_URL": "http://127.0.0.1:9",
    }
    for data_dir in (blocker / "data", tmp_path / "empty", PROC_DIR):
        result = liq("--data-dir", str(data_dir), *argv, env=env)
        assert result.exit_code in (0, 1, 2), (argv, result.output)
        assert "Traceback" not in result.output, (argv, result.output)
        exc = result.exception
        assert exc is None or isinstance(exc, SystemExit), (argv, repr(exc))
        if result.exit_code:
            assert result.output.count("liq: error:") == 1, (argv, result.output)


def test_a_corrupt_parquet_in_the_store_is_one_line(tmp_path):
    now = now_ms()
    recent = now - now % STEP - STEP
    store = Store(tmp_path)
    store_market(store, "BTCUSDT", recent, 50)
    victim = next((tmp_path / "open_interest").rglob("*.parquet"))
    victim.write_bytes(b"PAR1 truncated")
    for argv in (["pressure", "BTCUSDT", "--offline"], ["data"]):
        result = liq("--data-dir", str(tmp_path), *argv)
        assert "Traceback" not in result.output and (
            result.exception is None or isinstance(result.exception, SystemExit)
        ), (argv, repr(result.exception))
        assert result.exit_code in (0, 1), result.output
        if result.exit_code == 1:
            assert str(victim.name) in result.output or "open_interest" in result.output
