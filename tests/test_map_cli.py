"""``liq map`` end to end: file inputs of every kind, downloads from a fake archive server,
output formats, PNGs that show the data, usage errors, and --live from a fake Binance stream."""

from __future__ import annotations

import asyncio
import gzip
import os
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import orjson
import polars as pl
import pytest
from typer.testing import CliRunner

from liqcli.cli.app import app
from liqcli.core.timeutil import now_ms, parse_time
from liqcli.services.liqmap import LiveTrades
from tests.fakes.archive_server import (
    FakeArchiveServer,
    binance_agg_csv,
    bybit_csv_gz,
    synthetic_trades,
    zip_bytes,
)
from tests.fakes.ws_servers import FakeBinance

runner = CliRunner()
DAY1, DAY2, DAY3 = date(2024, 3, 1), date(2024, 3, 2), date(2024, 3, 3)


def day_trades(day: date, n: int = 3_000, seed: int = 1) -> pl.DataFrame:
    return synthetic_trades(n, parse_time(day.isoformat()), seed=seed, step_ms=25_000)


def liq(tmp_path, *args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, ["--data-dir", str(tmp_path / "data"), "map", *args], env=env)


def document(result) -> dict:
    assert result.exit_code == 0, result.output
    return orjson.loads(result.stdout)


@pytest.fixture(scope="module")
def tape() -> pl.DataFrame:
    return day_trades(DAY1)


@pytest.fixture
def inputs(tmp_path, tape):
    """The same trades as every supported input kind."""
    files = {
        "csv_header": tmp_path / "a.csv",
        "zip_no_header_us": tmp_path / "BTCUSDT-aggTrades-2024-03-01.zip",
        "bybit_gz": tmp_path / "BTCUSDT2024-03-01.csv.gz",
        "parquet": tmp_path / "t.parquet",
    }
    files["csv_header"].write_bytes(binance_agg_csv(tape))
    files["zip_no_header_us"].write_bytes(
        zip_bytes(
            "BTCUSDT-aggTrades-2024-03-01.csv", binance_agg_csv(tape, header=False, micros=True)
        )
    )
    files["bybit_gz"].write_bytes(bybit_csv_gz(tape, "BTCUSDT"))
    tape.with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC"))).write_parquet(files["parquet"])
    return files


def test_every_input_kind_gives_the_same_map(tmp_path, inputs):
    docs = {
        kind: document(
            liq(
                tmp_path,
                "BTCUSDT",
                "--input",
                str(path),
                "--mode",
                "top_n",
                "--threshold",
                "40",
                "-f",
                "json",
            )
        )
        for kind, path in inputs.items()
    }
    first = docs["csv_header"]
    assert first["symbol"] == "BTCUSDT" and first["mode"] == "top_n" and first["threshold"] == 40
    assert first["model"] == "default" and first["bin_size"] > 0 and first["selected_trades"] == 80
    assert first["bins"] and set(first["bins"][0]) == {
        "price_low",
        "price_high",
        "side",
        "tier",
        "amount_usd",
    }
    for kind, doc in docs.items():
        assert doc["bins"] == first["bins"], kind
        assert doc["current_price"] == first["current_price"], kind
    # Bins hold exactly the notional of the levels still standing (the document's totals).
    longs = sum(b["amount_usd"] for b in first["bins"] if b["side"] == "long")
    assert longs == pytest.approx(first["active_usd"]["long"])


def test_several_inputs_and_files_after_the_symbol(tmp_path, tape):
    half = tape.height // 2
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_bytes(binance_agg_csv(tape[:half]))
    b.write_bytes(binance_agg_csv(tape[half:], header=False))
    whole = tmp_path / "whole.csv"
    whole.write_bytes(binance_agg_csv(tape))
    split = document(
        liq(tmp_path, "BTCUSDT", "--input", str(a), str(b), "-f", "json", "--threshold", "5000")
    )
    one = document(
        liq(tmp_path, "BTCUSDT", "--input", str(whole), "-f", "json", "--threshold", "5000")
    )
    assert split["bins"] == one["bins"] and split["trades"] == tape.height


def test_csv_and_table_output(tmp_path, inputs):
    path = str(inputs["csv_header"])
    csv = liq(
        tmp_path,
        "BTCUSDT",
        "--input",
        path,
        "--model",
        "compat",
        "-f",
        "csv",
        "--threshold",
        "3000",
    )
    assert csv.exit_code == 0, csv.output
    lines = csv.stdout.splitlines()
    assert lines[0] == "price_low,price_high,side,tier,amount_usd"
    frame = pl.read_csv(csv.stdout.encode())
    assert set(frame["tier"]) <= {"10x", "25x", "50x", "100x"} and frame["amount_usd"].min() > 0
    table = liq(tmp_path, "BTCUSDT", "--input", path, "--model", "compat", "--threshold", "3000")
    assert table.exit_code == 0, table.output
    assert "BTCUSDT liquidation map" in table.stdout and "cum_long_usd" in table.stdout
    assert "model compat" in table.stdout


def _png_pixels(path) -> np.ndarray:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(path)[..., :3]


def test_charts_are_written_and_show_the_data(tmp_path, inputs):
    out = tmp_path / "charts"
    result = liq(
        tmp_path, "BTCUSDT", "--input", str(inputs["parquet"]), "--mode", "top_n", "--threshold", "60",
        "--chart", "all", "--out", str(out), "-f", "json",
    )  # fmt: skip
    doc = document(result)
    pngs = sorted(out.glob("*.png"))
    assert [p.name.rsplit("_", 1)[-1] for p in pngs] == ["depth.png", "heatmap.png", "map.png"]
    assert sorted(doc["charts"]) == [str(p) for p in pngs]
    assert "wrote" in result.stderr
    for png in pngs:
        pixels = _png_pixels(png)
        assert pixels.shape[0] >= 700 and pixels.shape[1] >= 1300
        # Not blank: plenty of non-background pixels and many distinct colours.
        assert (pixels.sum(axis=2) < 2.9).mean() > 0.05, png.name
        packed = (pixels * 255).astype(np.int64) @ np.array([1 << 16, 1 << 8, 1])
        assert len(np.unique(packed)) > 200, png.name
    # The bars are drawn in the tier colours (plasma): yellow-orange 100x bars are present.
    bars = _png_pixels(next(p for p in pngs if p.name.endswith("_map.png")))
    from matplotlib import colormaps

    tier_100x = np.array(colormaps["plasma"](0.85)[:3])
    assert (np.abs(bars - tier_100x).sum(axis=2) < 0.02).sum() > 100


def test_an_empty_map_still_draws(tmp_path, inputs):
    out = tmp_path / "empty"
    result = liq(
        tmp_path, "BTCUSDT", "--input", str(inputs["csv_header"]), "--threshold", "1e12",
        "--chart", "map", "--chart", "depth", "--out", str(out), "-f", "json",
    )  # fmt: skip
    doc = document(result)
    assert doc["bins"] == [] and doc["selected_trades"] == 0
    assert len(list(out.glob("*.png"))) == 2


def _archive_env(server) -> dict[str, str]:
    return {"LIQ_BINANCE_ARCHIVE_URL": server.url, "LIQ_BYBIT_ARCHIVE_URL": server.url}


def test_downloads_from_the_archive_with_a_missing_day(tmp_path, caplog):
    day1, day3 = day_trades(DAY1, seed=1), day_trades(DAY3, seed=3)
    with FakeArchiveServer() as server:
        server.add_binance_agg_trades("BTCUSDT", DAY1, day1)
        server.add_binance_agg_trades("BTCUSDT", DAY3, day3, header=False)
        args = [
            "BTCUSDT",
            "--start",
            "2024-03-01",
            "--end",
            "2024-03-04",
            "--mode",
            "top_n",
            "-f",
            "json",
        ]
        result = liq(tmp_path, *args, env=_archive_env(server))
        doc = document(result)
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and "2024-03-02" in warnings[0] and "404" in warnings[0]
        assert doc["trades"] == day1.height + day3.height
        assert doc["start"].startswith("2024-03-01") and doc["end"].startswith("2024-03-03")
        data_hits = sum(n for p, n in server.hits.items() if p.endswith(".zip"))
        again = document(liq(tmp_path, *args, env=_archive_env(server)))
        # Cached: only the missing day is asked for again.
        assert sum(n for p, n in server.hits.items() if p.endswith(".zip")) == data_hits + 1
        assert again["bins"] == doc["bins"]
    cache = tmp_path / "data" / "_archive" / "binance" / "data/futures/um/daily/aggTrades/BTCUSDT"
    assert sorted(p.name for p in cache.glob("*.zip")) == [
        "BTCUSDT-aggTrades-2024-03-01.zip",
        "BTCUSDT-aggTrades-2024-03-03.zip",
    ]


def test_checksum_mismatch_fails_with_one_line(tmp_path):
    with FakeArchiveServer() as server:
        server.add_binance_agg_trades("BTCUSDT", DAY1, day_trades(DAY1), corrupt_checksum=True)
        result = liq(
            tmp_path,
            "BTCUSDT",
            "--start",
            "2024-03-01",
            "--end",
            "2024-03-02",
            env=_archive_env(server),
        )
    assert result.exit_code == 1
    assert result.output.strip().startswith("liq: error: binance: checksum mismatch")
    assert "Traceback" not in result.output


def test_no_archive_files_at_all_is_a_clear_error(tmp_path):
    with FakeArchiveServer() as server:
        result = liq(
            tmp_path,
            "BTCUSDT",
            "--start",
            "2024-03-01",
            "--end",
            "2024-03-03",
            env=_archive_env(server),
        )
    assert result.exit_code == 1
    assert "no archive files for BTCUSDT" in result.output


def test_bybit_archive(tmp_path):
    trades = day_trades(DAY2)
    with FakeArchiveServer() as server:
        server.add_bybit_trades("BTCUSDT", DAY2, trades)
        result = liq(
            tmp_path, "BTCUSDT", "--exchange", "bybit", "--start", "2024-03-02", "--end", "2024-03-03",
            "--model", "compat", "-f", "json", env=_archive_env(server),
        )  # fmt: skip
    doc = document(result)
    assert doc["trades"] == trades.height and doc["model"] == "compat" and doc["bins"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "top_n", "--threshold", "2.5"], "whole number"),
        (["--mode", "portion", "--threshold", "2"], "fraction"),
        (["--start", "2024-13-01"], "invalid date"),
        (["--start", "2024-03-02", "--end", "2024-03-01"], "before --end"),
        (["--model", "compat", "--tiers", "10:1"], "fixed tiers"),
        (["--tiers", "10:0.5,10:0.5"], "appears twice"),
        (["--bin-size", "-5"], "bin size"),
        (["--input", "no-such-file.zip"], "no such file"),
        (["extra.csv"], "unexpected extra argument"),
        (["--live", "--input", "x.csv"], "--live reads the stream"),
        (["--live", "--exchange", "bybit"], "Binance aggTrade stream"),
        (["--mode", "biggest"], "biggest"),
    ],
)
def test_usage_errors_exit_2_before_any_network_call(tmp_path, args, message):
    result = liq(tmp_path, "BTCUSDT", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "data" / "_archive").exists()


def test_unwritable_chart_dir_is_a_one_line_error(tmp_path, inputs):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = liq(
        tmp_path,
        "BTCUSDT",
        "--input",
        str(inputs["csv_header"]),
        "--chart",
        "map",
        "--out",
        str(blocker / "sub"),
    )
    assert result.exit_code == 1
    assert "cannot write charts" in result.output and "Traceback" not in result.output


def test_live_trades_window():
    from liqcli.core.events import AggTrade

    window = LiveTrades(window_ms=10_000)
    for i in range(30):
        window.add(AggTrade("binance", "BTCUSDT", i, 1_000 * i, 100.0 + i, 1.0, False))
        if i % 10 == 9:
            window.frame(1_000 * i)  # a refresh: pending trades become a chunk
    frame = window.frame(29_000)
    assert frame["ts"].to_list() == [1_000 * i for i in range(19, 30)]
    assert window.received == 30


def _agg_frame(trade_id: int, ts: int, price: float, qty: float, sell: bool) -> dict:
    return {
        "e": "aggTrade", "E": ts + 2, "s": "BTCUSDT", "a": trade_id, "p": f"{price}", "q": f"{qty}",
        "f": trade_id, "l": trade_id, "T": ts, "m": sell,
    }  # fmt: skip


async def test_live_map_from_the_binance_stream(tmp_path):
    now = now_ms()
    rng = np.random.default_rng(4)
    frames = [
        _agg_frame(
            i,
            now - 60_000 + i * 100,
            round(60_000 + float(rng.normal(0, 30)), 1),
            round(float(rng.lognormal(-2, 1)), 3),
            bool(i % 2),
        )
        for i in range(200)
    ]
    async with FakeBinance(by_subscription={"btcusdt@aggTrade": frames}) as binance:
        env = {**os.environ, "LIQ_BINANCE_WS_URL": binance.ws_url}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "liqcli", "--data-dir", str(tmp_path / "data"), "map", "BTCUSDT", "--live",
            "--duration", "1.5", "--refresh", "0.3", "--mode", "top_n", "--threshold", "5", "-f", "json",
            "--chart", "map", "--out", str(tmp_path / "live"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, err.decode()
    docs = [orjson.loads(line) for line in out.decode().splitlines()]
    assert len(docs) >= 2  # refreshed while running, and once at the end
    last = docs[-1]
    assert last["trades"] == 200 and last["selected_trades"] == 10 and last["bins"]
    assert "200 trades received" in err.decode()
    charts = list((tmp_path / "live").glob("*.png"))
    assert [p.name for p in charts] == ["BTCUSDT_live_top_n_5_default_map.png"]


def test_gzip_input_that_is_not_gzip_is_a_data_error(tmp_path):
    bad = tmp_path / "x.csv.gz"
    bad.write_bytes(b"plain text")
    result = liq(tmp_path, "BTCUSDT", "--input", str(bad))
    assert result.exit_code == 1 and "not a readable gzip" in result.output
    good = tmp_path / "y.csv.gz"
    good.write_bytes(gzip.compress(b"1,2,3\n"))
    result = liq(tmp_path, "BTCUSDT", "--input", str(good))
    assert result.exit_code == 1 and "3 columns" in result.output


def test_a_malformed_row_is_counted_and_skipped(tmp_path, tape):
    good = tmp_path / "good.csv"
    good.write_bytes(binance_agg_csv(tape))
    bad = tmp_path / "bad.csv"
    bad.write_bytes(
        binance_agg_csv(tape)
        + b"12,not-a-price,1,1,1,1709251200000,true\n"
        + b"13,30000.5,1,1,1,1709251200000,maybe\n"
    )
    clean = document(liq(tmp_path, "BTCUSDT", "--input", str(good), "-f", "json"))
    result = liq(tmp_path, "BTCUSDT", "--input", str(bad), "-f", "json")
    dirty = document(result)
    assert dirty["skipped_rows"] == 2 and dirty["trades"] == clean["trades"] == tape.height
    assert dirty["bins"] == clean["bins"]
    assert "Traceback" not in result.output


def test_a_failing_chart_renderer_is_reported(tmp_path, inputs):
    out = tmp_path / "charts"
    args = ["BTCUSDT", "--input", str(inputs["parquet"]), "--chart", "map", "--chart", "depth"]
    first = liq(tmp_path, *args, "--out", str(out))
    assert first.exit_code == 0, first.output
    depth = next(out.glob("*_depth.png"))
    depth.unlink()
    depth.mkdir()  # the forked depth renderer cannot replace a directory
    second = liq(tmp_path, *args, "--out", str(out))
    assert second.exit_code == 1
    assert second.output.startswith("liq: error: cannot draw charts: cannot write")
    assert next(out.glob("*_map.png")).stat().st_size > 10_000
    # The first chart is drawn by the chart worker itself (the others by its children).
    map_png = next(out.glob("*_map.png"))
    map_png.unlink()
    map_png.mkdir()
    depth.rmdir()
    third = liq(tmp_path, *args, "--out", str(out))
    assert third.exit_code == 1
    assert third.output.startswith("liq: error: cannot draw charts: cannot write")
    assert map_png.name in third.output
    assert depth.stat().st_size > 10_000


def test_the_executable_writes_everything_before_its_quick_exit(tmp_path, inputs):
    """``liq map`` ends without the interpreter's teardown (os._exit after flushing): the real
    executable's stdout, stderr and PNGs are complete, and failures still exit normally."""
    import subprocess

    out = tmp_path / "charts"
    base = [sys.executable, "-m", "liqcli", "--data-dir", str(tmp_path / "data"), "map", "BTCUSDT"]
    args = [*base, "--input", str(inputs["csv_header"]), "--threshold", "3000"]
    run = subprocess.run(
        [*args, "--chart", "map", "--chart", "depth", "--out", str(out), "-f", "json"],
        capture_output=True,
    )
    assert run.returncode == 0, run.stderr
    doc = orjson.loads(run.stdout)
    assert doc["bins"] and len(doc["charts"]) == 2
    assert run.stderr.decode().count("liq: wrote") == 2
    assert all(Path(p).read_bytes()[-8:] == b"IEND\xaeB`\x82" for p in doc["charts"])
    table = subprocess.run(args, capture_output=True, text=True)
    in_process = liq(tmp_path, *args[len(base) - 1 :])
    assert table.returncode == 0 and table.stdout == in_process.stdout
    assert "cum_long_usd" in table.stdout
    failed = subprocess.run([*base, "--input", str(tmp_path / "nope.csv")], capture_output=True)
    assert failed.returncode == 2 and b"no such file" in failed.stderr


def _children() -> list[int]:
    """This process's live child processes (zombies included, so an unreaped worker shows)."""
    tasks = f"/proc/{os.getpid()}/task"
    return sorted(
        int(pid)
        for task in os.listdir(tasks)
        for pid in Path(f"{tasks}/{task}/children").read_text().split()
    )


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--start", "2030-01-01", "--end", "2030-01-02"], 1, "no trades"),
        (["--tiers", "10:x"], 2, "invalid tier"),
    ],
)
def test_the_chart_worker_ends_when_the_command_fails(tmp_path, inputs, args, code, message):
    """The chart worker is started first; a usage error or a map that fails leaves no process
    behind."""
    before = _children()
    result = liq(
        tmp_path, "BTCUSDT", "--input", str(inputs["parquet"]), *args,
        "--chart", "map", "--chart", "depth", "--out", str(tmp_path / "c"),
    )  # fmt: skip
    assert result.exit_code == code and message in result.output
    assert _children() == before
    assert not (tmp_path / "c").exists()


# --------------------------------------------------------------------------- currency and hints


@pytest.fixture
def xrpeth(tmp_path, tape) -> Path:
    """XRP priced in ETH: ~0.0003 ETH a coin, trades of a few ETH."""
    path = tmp_path / "xrpeth.parquet"
    tape.with_columns(
        pl.col("ts").cast(pl.Datetime("ms", "UTC")),
        pl.col("price") * 1e-8,
        pl.col("qty") * 1e5,
    ).write_parquet(path)
    return path


def test_amounts_are_labelled_in_the_quote_currency(tmp_path, xrpeth):
    table = liq(tmp_path, "XRPETH", "--input", str(xrpeth), "--mode", "top_n")
    assert table.exit_code == 0, table.output
    assert "$" not in table.stdout and "USD" not in table.stdout
    assert "long_ETH" in table.stdout and "ETH below" in table.stdout
    doc = document(liq(tmp_path, "XRPETH", "--input", str(xrpeth), "--mode", "top_n", "-f", "json"))
    assert doc["quote"] == "ETH" and doc["currency"] == "ETH"
    assert "amount_usd" in doc["bins"][0]  # the contract's column name stays
    usdt = document(liq(tmp_path, "BTCUSDT", "--input", str(xrpeth), "-f", "json"))
    assert usdt["quote"] == "USDT" and usdt["currency"] == "USD"


def test_an_empty_selection_says_why(tmp_path, xrpeth):
    result = liq(tmp_path, "XRPETH", "--input", str(xrpeth))
    assert result.exit_code == 0, result.output
    assert "0 selected (trades >= 100.0k ETH)" in result.stdout
    hint = [line for line in result.stderr.splitlines() if line.startswith("liq: warning:")]
    assert len(hint) == 1 and "no trade reached --threshold 100,000 ETH" in hint[0]
    assert "the largest of the 3,000 trades was" in hint[0] and "ETH" in hint[0]


def test_map_charts_in_eth_and_a_short_window(tmp_path, tape):
    """A 46-second input: the title shows seconds, the time axis reads as clock times."""
    short = tmp_path / "short.parquet"
    tape.head(300).with_columns(
        (pl.col("ts") - pl.col("ts").min()) * 2 // 325 + pl.col("ts").min(),
        pl.col("price") * 1e-8,
        pl.col("qty") * 1e5,
    ).with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC"))).write_parquet(short)
    out = tmp_path / "charts"
    result = liq(tmp_path, "XRPETH", "--input", str(short), "--mode", "top_n", "--threshold", "20",
                 "--chart", "all", "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2024-03-01 00:00:00 -> 00:00:46 UTC" in result.stdout
    assert len(list(out.glob("*.png"))) == 3


def test_map_chart_labels_never_overlap_the_last_price(tmp_path, monkeypatch):
    """A falling --live window ends at its lowest price: the last-price label sits at the bottom
    of the bars, where "long liquidations below" used to be drawn."""
    from liqcli.analytics.liqmap import MapSpec, build_map, parse_tiers
    from liqcli.render import charts

    n = 400
    frame = pl.DataFrame(
        {
            "ts": [1_709_251_200_000 + 500 * i for i in range(n)],
            "price": [60_000.0 - 45 * i for i in range(n)],  # -30 %
            "qty": [0.5 + (i % 7) / 10 for i in range(n)],
            "is_buyer_maker": [bool(i % 2) for i in range(n)],
        }
    )
    spec = MapSpec(mode="top_n", threshold=50, tiers=parse_tiers("100:1"))  # levels 0.6 % away
    liqmap = build_map(frame.lazy(), spec, symbol="BTCUSDT")
    assert liqmap.current_price == frame["price"].min()
    figures = []
    real_save = charts._save
    monkeypatch.setattr(
        charts, "_save", lambda mpl, fig, path: (figures.append(fig), real_save(mpl, fig, path))[1]
    )
    charts.draw_map(charts.chart_data(liqmap, ["map"]), tmp_path / "live.png")
    (fig,) = figures
    renderer = fig.canvas.get_renderer()
    texts = [t for ax in fig.axes for t in [*ax.texts] if t.get_text()]
    last = next(t for t in texts if t.get_text().startswith("last "))
    others = [t for t in texts if t is not last]
    box = last.get_window_extent(renderer)
    for other in others:
        assert not box.overlaps(other.get_window_extent(renderer)), other.get_text()
    assert {t.get_text() for t in others} >= {
        "short liquidations above the last price",
        "long liquidations below it",
    }


def test_today_is_never_asked_of_the_archive(tmp_path, caplog):
    today = datetime.fromtimestamp(now_ms() // 1000, UTC).date()
    yesterday = date.fromordinal(today.toordinal() - 1)
    with FakeArchiveServer() as server:
        server.add_binance_agg_trades("BTCUSDT", yesterday, day_trades(yesterday))
        env = _archive_env(server)
        result = liq(
            tmp_path,
            "BTCUSDT",
            "--start",
            yesterday.isoformat(),
            "--end",
            "now",
            "-f",
            "json",
            env=env,
        )
        asked = [p for p in server.hits if p.endswith(".zip")]
        only_today = liq(tmp_path, "BTCUSDT", "--start", today.isoformat(), "--end", "now", env=env)
        asked_after = [p for p in server.hits if p.endswith(".zip")]
    assert result.exit_code == 0, result.output
    assert asked == [next(p for p in asked if yesterday.isoformat() in p)]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("not archived yet" in w for w in warnings) and not any("404" in w for w in warnings)
    assert only_today.exit_code == 1 and "nothing archived yet" in only_today.output
    assert asked_after == asked


def test_small_amounts_keep_their_decimals_in_the_table(tmp_path, tape):
    tiny = tmp_path / "tiny.parquet"
    tape.with_columns(
        pl.col("ts").cast(pl.Datetime("ms", "UTC")), pl.col("price") * 1e-8, pl.col("qty") * 10
    ).write_parquet(tiny)  # trades of ~0.0001 ETH
    result = liq(tmp_path, "XRPETH", "--input", str(tiny), "--mode", "top_n")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()[5:] if line.strip()]
    amounts = [cell for row in rows for cell in row[3:] if cell[0].isdigit()]
    assert amounts and all("." in a for a in amounts) and not all(float(a) == 0 for a in amounts)
