"""`liq pressure` end to end: the CLI over a real store (offline) and against the fake Binance server."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import orjson
import polars as pl
import pytest
from typer.testing import CliRunner

from liqcli.analytics.pressure import COMPONENTS, PressureConfig, pressure_at
from liqcli.cli.app import app
from liqcli.core.timeutil import iso_ms, now_ms
from liqcli.services.pressure import load_inputs
from liqcli.store.parquet import Store

STEP = 300_000
runner = CliRunner()


def invoke(data_dir, *args, env=None):
    return runner.invoke(app, ["--data-dir", str(data_dir), "pressure", *args], env=env)


def _ratio_rows(symbol: str, ts: np.ndarray, values: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "exchange": "binance",
            "symbol": symbol,
            "period": "5m",
            "ts": ts,
            "long_short_ratio": values,
            "long_share": values / (1 + values),
            "short_share": 1 / (1 + values),
        }
    )


def store_market(
    store: Store, symbol: str, last: int, steps: int, *, seed: int = 1
) -> dict[str, np.ndarray]:
    """Write every input dataset for ``steps`` 5m periods ending at ``last``, like `liq fetch` does."""
    rng = np.random.default_rng(seed)
    ts = last - np.arange(steps)[::-1] * STEP
    walk = lambda level, sigma: level * np.exp(np.cumsum(rng.normal(0, sigma, steps)))  # noqa: E731
    series = {
        "g": walk(1.8, 0.01),
        "t_account": walk(1.2, 0.01),
        "t_position": walk(0.9, 0.01),
        "taker": np.exp(rng.normal(0, 0.2, steps)),
        "oi": walk(8e4, 0.003),
        "price": walk(6e4, 0.002),
    }
    store.write("global_account_ratio", _ratio_rows(symbol, ts, series["g"]))
    store.write("top_account_ratio", _ratio_rows(symbol, ts, series["t_account"]))
    store.write("top_position_ratio", _ratio_rows(symbol, ts, series["t_position"]))
    common = {"exchange": "binance", "symbol": symbol, "period": "5m", "ts": ts}
    store.write(
        "taker_ratio",
        pl.DataFrame(
            {
                **common,
                "buy_sell_ratio": series["taker"],
                "buy_vol": series["taker"],
                "sell_vol": 1.0,
            }
        ),
    )
    store.write(
        "open_interest",
        pl.DataFrame(
            {
                **common,
                "open_interest": series["oi"],
                "open_interest_value": series["oi"] * series["price"],
            }
        ),
    )
    # Every 8 h settlement from the one at or before the first step: a window of a few hours may
    # hold no settlement at all, depending on the time of day the test runs.
    eight_hours = 8 * 3_600_000
    funding_ts = np.arange(ts[0] - ts[0] % eight_hours, last + 1, eight_hours)
    store.write(
        "funding",
        pl.DataFrame(
            {
                "exchange": "binance",
                "symbol": symbol,
                "ts": funding_ts,
                "funding_rate": rng.normal(1e-4, 1e-4, len(funding_ts)),
                "mark_price": 6e4,
            }
        ),
    )
    return series


def store_liquidations(store: Store, symbol: str, start: int, end: int, n: int = 400) -> None:
    rng = np.random.default_rng(5)
    ts = np.sort(rng.integers(start, end, n))
    for exchange in ("binance", "okx"):
        qty = rng.exponential(0.5, n)
        store.write(
            "liquidations",
            pl.DataFrame(
                {
                    "exchange": exchange,
                    "symbol": symbol,
                    "ts": ts,
                    "side": rng.choice(["long", "short"], n),
                    "price": 6e4,
                    "qty": qty,
                    "notional_usd": qty * 6e4,
                    "venue_symbol": symbol,
                    "received_ts": ts,
                }
            ),
        )


@pytest.fixture
def recent():
    """The newest finished 5m step: what Binance would have published by now."""
    now = now_ms()
    return now - now % STEP - STEP


def test_offline_with_an_empty_store_says_what_to_do(tmp_path):
    result = invoke(tmp_path, "BTCUSDT", "--offline")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "liq: error: no stored 5m data for BTCUSDT: run `liq fetch BTCUSDT --period 5m` first "
        "or drop --offline"
    )
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--weights", "crowding=10,nope=3"], "unknown weight 'nope'"),
        (["--weights", "funding=-2"], "must be a number >= 0"),
        (["--period", "7m"], "invalid period '7m'"),
        (["--lookback", "3"], "at least 5 steps"),
        (["--chart", "x.png"], "need --history"),
        (["--history", "--start", "2026-01-02", "--end", "2026-01-01"], "must be before --end"),
        (["--history", "--chart", "x.jpg"], "name it *.png"),
        (["--history", "--start", "yesterday"], "invalid date 'yesterday'"),
        (["--model", "magic"], "Invalid value"),
    ],
)
def test_usage_errors_exit_2_before_any_network_call(tmp_path, args, message):
    # LIQ_BINANCE_REST_URL points at a closed port (conftest): a network call would exit 1.
    result = invoke(tmp_path, "BTCUSDT", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_offline_panel_is_plain_when_piped(tmp_path, recent):
    store = Store(tmp_path)
    store_market(store, "BTCUSDT", recent, 400)
    store_liquidations(store, "BTCUSDT", recent - 200 * STEP, recent)
    result = invoke(tmp_path, "btcusdt", "--offline")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "\x1b[" not in out  # no colour codes into a pipe
    lines = out.splitlines()
    longs = next(line for line in lines if line.startswith("LONGS"))
    shorts = next(line for line in lines if line.startswith("SHORTS"))
    for line in (longs, shorts):
        bar = line[line.index("[") : line.index("]") + 1]
        assert len(bar) == 12 and set(bar[1:-1]) <= {"█", "-"}
    for text in (
        "OI change (30 x 5m)",
        "Taker buy/sell ratio",
        "OI velocity",
        "Interpretation:",
        "Strategy bias:",
    ):
        assert text in out
    for name in COMPONENTS:
        assert any(line.startswith(name) for line in lines)
    assert "missing" not in out and "renormalised" not in out


def test_offline_json_document_and_renormalisation(tmp_path, recent):
    store = Store(tmp_path)
    store_market(store, "ETHUSDT", recent, 400)
    result = invoke(tmp_path, "ETHUSDT", "--offline", "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = orjson.loads(result.stdout)
    for key in (
        "long_score",
        "short_score",
        "long_level",
        "short_level",
        "bias",
        "bias_confidence",
    ):
        assert key in doc
    assert set(doc["components"]) == set(COMPONENTS)
    for name, comp in doc["components"].items():
        assert {"weight", "long", "short"} <= set(comp), name
    # No liquidations stored: both liquidation components are missing, not estimated.
    assert doc["missing"] == ["force_share", "force_volume"]
    assert doc["components"]["force_share"]["long"] is None
    assert doc["components"]["force_share"]["missing"] is True
    assert doc["weights_renormalised"] is True and doc["weight_used"] == 78
    present = [c for c in doc["components"].values() if not c["missing"]]
    assert sum(c["effective_weight"] for c in present) == pytest.approx(100)
    assert doc["long_score"] == pytest.approx(
        sum(c["weight"] * c["long"] for c in present) / 78 * 100
    )
    assert doc["components"]["crowding"]["g"] > 0 and "g_norm" in doc["components"]["crowding"]
    assert doc["inputs"]["liquidations"]["status"] == "missing"
    assert doc["inputs"]["open_interest"]["status"] == "ok"
    assert "liq: warning: input liquidations is missing" in result.stderr
    # The panel says the same.
    panel = invoke(tmp_path, "ETHUSDT", "--offline").stdout
    assert "weights renormalised over 78 of 100 (missing: force_share, force_volume)" in panel
    assert "force_share" in panel and "no stored liquidations" in panel


def test_offline_reports_stale_inputs_and_scores_the_newest_step(tmp_path, recent):
    store = Store(tmp_path)
    old = recent - 2 * 86_400_000
    store_market(store, "BTCUSDT", old, 100)
    result = invoke(tmp_path, "BTCUSDT", "--offline", "-f", "json")
    assert result.exit_code == 0, result.stderr
    doc = orjson.loads(result.stdout)
    assert doc["ts"].startswith(
        pl.select(pl.lit(old).cast(pl.Datetime("ms", "UTC"))).item().strftime("%Y-%m-%dT%H:%M")
    )
    assert doc["inputs"]["open_interest"]["status"] == "stale"
    assert "liq: warning: input open_interest is stale (newest " in result.stderr
    quiet = invoke(tmp_path, "BTCUSDT", "--offline", "-f", "json", "--quiet")
    assert quiet.stderr == ""


def test_seed_model_through_the_cli_matches_the_analytics(tmp_path, recent):
    store = Store(tmp_path)
    store_market(store, "BTCUSDT", recent, 60)
    csv = invoke(tmp_path, "BTCUSDT", "--offline", "--model", "seed", "-f", "csv")
    assert csv.exit_code == 0, csv.stderr
    header, row = csv.stdout.strip().splitlines()
    values = dict(zip(header.split(","), row.split(","), strict=True))
    config = PressureConfig(model="seed")
    inputs = load_inputs(store, "BTCUSDT", config, recent - 100 * STEP, recent)
    expected = pressure_at(inputs, config, recent)
    assert float(values["long_score"]) == pytest.approx(expected.long_score)
    assert float(values["short_score"]) == pytest.approx(expected.short_score)
    assert values["model"] == "seed"
    # Without stored liquidations the seed estimates them from falling OI, as it always did.
    assert expected.raw["liq_source"] == "estimated"


def test_weights_change_the_result(tmp_path, recent):
    store = Store(tmp_path)
    store_market(store, "BTCUSDT", recent, 60)
    zeros = ",".join(f"{n}=0" for n in COMPONENTS if n != "funding")
    doc = orjson.loads(
        invoke(tmp_path, "BTCUSDT", "--offline", "-f", "json", "-w", f"{zeros},funding=5").stdout
    )
    funding = doc["components"]["funding"]
    assert doc["long_score"] == pytest.approx(100 * funding["long"])
    assert funding["effective_weight"] == pytest.approx(100)


def test_history_offline_stores_rows_and_draws_the_chart(tmp_path, recent):
    store = Store(tmp_path)
    store_market(store, "SOLUSDT", recent, 700)
    store_liquidations(store, "SOLUSDT", recent - 690 * STEP, recent)
    start, end = recent - 300 * STEP, recent
    chart = tmp_path / "sol.png"  # --chart FILE: the directory must exist
    result = invoke(
        tmp_path, "SOLUSDT", "--offline", "--history", "--start", str(start), "--end", str(end),
        "--chart", str(chart), "-f", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    doc = orjson.loads(result.stdout)
    assert doc["stored_rows"] == 301 and len(doc["rows"]) == 301
    assert doc["rows"][0]["ts"].endswith("Z")
    stored = store.read("pressure", symbol="SOLUSDT", period="5m", model="default")
    assert stored.height == 301
    assert stored["ts"].dt.epoch("ms").to_list() == list(range(start, end + 1, STEP))
    # Stored rows equal point computations at sampled steps.
    config = PressureConfig()
    inputs = load_inputs(store, "SOLUSDT", config, start, end)
    for at in (start, start + 17 * STEP, end - 40 * STEP, end):
        row = stored.filter(pl.col("ts").dt.epoch("ms") == at).row(0, named=True)
        snap = pressure_at(inputs, config, at)
        assert row["long_score"] == pytest.approx(snap.long_score)
        assert row["short_score"] == pytest.approx(snap.short_score)
        assert row["long_level"] == snap.long_level and row["bias"] == snap.bias
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 20_000
    # Re-running is idempotent: same keys, no duplicates.
    again = invoke(
        tmp_path, "SOLUSDT", "--offline", "--history", "--start", str(start), "--end", str(end)
    )
    assert again.exit_code == 0 and "long_score" in again.stdout
    assert store.read("pressure", symbol="SOLUSDT").height == 301


def test_liquidations_recorded_before_the_load_range_still_cover_the_window(tmp_path, recent):
    # Recording began 10 days ago (outside what is loaded) and saw one print inside the window:
    # the window is covered, so the liquidation components are readings, not missing.
    store = Store(tmp_path)
    store_market(store, "BTCUSDT", recent, 60)
    store_liquidations(
        store, "BTCUSDT", recent - 10 * 86_400_000, recent - 10 * 86_400_000 + 1, n=1
    )
    store_liquidations(store, "BTCUSDT", recent - 5 * STEP, recent - 5 * STEP + 1, n=1)
    doc = orjson.loads(invoke(tmp_path, "BTCUSDT", "--offline", "-f", "json").stdout)
    assert doc["missing"] == []
    assert math.isclose(doc["weight_used"], 100)
    inside = store.read("liquidations", start=recent - 6 * STEP)["notional_usd"].sum()
    volume = doc["components"]["force_volume"]
    assert volume["long_liq_usd"] + volume["short_liq_usd"] == pytest.approx(inside)


# --------------------------------------------------------------------------- against the fake Binance


@pytest.fixture
def binance():
    from tests.fakes.binance_rest import FakeBinanceRest

    with FakeBinanceRest(symbols=["BTCUSDT", "ETHUSDT"]) as fake:
        yield fake


def test_end_to_end_fetches_stores_and_scores(tmp_path, binance):
    env = {"LIQ_BINANCE_REST_URL": binance.url}
    result = invoke(tmp_path, "BTCUSDT", "-f", "json", env=env)
    assert result.exit_code == 0, result.stderr
    doc = orjson.loads(result.stdout)
    assert doc["fetch_errors"] == []
    for dataset in (
        "global_account_ratio",
        "top_position_ratio",
        "taker_ratio",
        "open_interest",
        "funding",
    ):
        assert doc["inputs"][dataset]["status"] == "ok", dataset
    assert binance.requests_to("/futures/data/") and binance.requests_to("/fapi/v1/fundingRate")
    # The baselines need a week of history: it was fetched and stored.
    store = Store(tmp_path)
    oi = store.read("open_interest", symbol="BTCUSDT", period="5m")
    assert oi.height >= 7 * 288
    assert store.read("top_account_ratio").height == 0  # the default model does not read it
    assert doc["missing"] == ["force_share", "force_volume"]  # `liq watch` never ran here
    assert 0 <= doc["long_score"] <= 100 and 0 <= doc["short_score"] <= 100
    config = PressureConfig()
    at = oi["ts"].dt.epoch("ms").max()
    expected = pressure_at(load_inputs(store, "BTCUSDT", config, at - STEP, at), config, at)
    assert doc["long_score"] == pytest.approx(expected.long_score)

    # Seed model: fetches the account ratio it reads; estimates liquidations from falling OI.
    binance.clear_log()
    seed = invoke(tmp_path, "BTCUSDT", "--model", "seed", "-f", "json", env=env)
    assert seed.exit_code == 0, seed.stderr
    seed_doc = orjson.loads(seed.stdout)
    assert seed_doc["missing"] == []
    assert seed_doc["components"]["force_volume"]["liq_source"] == "estimated"
    assert store.read("top_account_ratio", symbol="BTCUSDT").height > 0
    # Incremental: the datasets already stored are not fetched again from scratch.
    oi_pages = binance.requests_to("/futures/data/openInterestHist")
    assert len(oi_pages) <= 1


def test_end_to_end_history_with_chart(tmp_path, binance):
    env = {"LIQ_BINANCE_REST_URL": binance.url}
    chart = tmp_path / "btc.png"
    result = invoke(
        tmp_path,
        "BTCUSDT",
        "--history",
        "--start",
        "1d",
        "--chart",
        str(chart),
        "-f",
        "csv",
        env=env,
    )
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("ts,") and 280 <= len(lines) - 1 <= 290
    assert chart.read_bytes()[:4] == b"\x89PNG"
    store = Store(tmp_path)
    assert store.read("klines", symbol="BTCUSDT").height > 0  # price for the chart
    assert store.read("pressure", symbol="BTCUSDT", model="default").height == len(lines) - 1


def test_end_to_end_unknown_symbol_is_one_line_exit_2(tmp_path, binance):
    env = {**os.environ, "LIQ_BINANCE_REST_URL": binance.url}
    command = [sys.executable, "-m", "liqcli", "--data-dir", str(tmp_path), "pressure", "NOPEUSDT"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    # Binance's symbol list says so: a usage error, before any data request.
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("liq: error: unknown symbol NOPEUSDT: not listed by Binance")


def test_end_to_end_a_failed_input_is_reported_and_left_out(tmp_path, binance):
    binance.inject(
        "error", path="/fapi/v1/fundingRate", code=-1003, msg="Way too much request weight used."
    )
    result = invoke(tmp_path, "ETHUSDT", "-f", "json", env={"LIQ_BINANCE_REST_URL": binance.url})
    assert result.exit_code == 0, result.stderr
    doc = orjson.loads(result.stdout)
    assert len(doc["fetch_errors"]) == 1 and doc["fetch_errors"][0].startswith("funding: ")
    assert "liq: warning: fetch failed, using stored data: funding: " in result.stderr
    assert doc["inputs"]["funding"]["status"] == "missing"
    assert doc["components"]["funding"]["missing"] is True
    assert doc["weight_used"] == 100 - 15 - 10 - 12  # funding and both liquidation components


def test_panel_is_coloured_on_a_terminal(tmp_path, recent):
    import io

    from rich.console import Console

    from liqcli.render.pressure_panel import panel_text, print_panel

    store = Store(tmp_path)
    store_market(store, "BTCUSDT", recent, 60)
    config = PressureConfig()
    snap = pressure_at(load_inputs(store, "BTCUSDT", config, recent - STEP, recent), config, recent)
    text = panel_text(snap, symbol="BTCUSDT", period="5m", lookback=30)
    tty = io.StringIO()
    print_panel(
        text, Console(file=tty, force_terminal=True, color_system="standard", highlight=False)
    )
    assert "\x1b[" in tty.getvalue()
    piped = io.StringIO()
    print_panel(text, Console(file=piped, highlight=False))
    assert piped.getvalue() == text.plain


def test_history_chart_labels_every_band_and_reads_short_windows_as_clock_times(
    tmp_path, monkeypatch
):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from liqcli.analytics.pressure import LEVELS, LOWEST_LEVEL
    from liqcli.render.pressure_panel import history_chart

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    t0 = 1_790_000_000_000
    history = pl.DataFrame(
        {"ts": [t0 + i * 5_000 for i in range(12)], "long_score": [10.0 + i for i in range(12)],
         "short_score": [50.0] * 12}
    )  # fmt: skip
    history_chart(history, None, tmp_path / "p.png", title="t")
    (fig,) = figures
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert {name for _, name in LEVELS} | {LOWEST_LEVEL} <= texts
    fig.canvas.draw()
    ticks = [t.get_text() for t in fig.axes[1].get_xticklabels() if t.get_text()]
    assert ticks and all(t.count(":") == 2 for t in ticks), ticks  # 03:33:20, not a bare "20"


def test_history_over_a_range_without_data_is_clamped_to_the_store(tmp_path, recent):
    store = Store(tmp_path)
    store_market(store, "BTCUSDT", recent, 200)
    first = recent - 199 * STEP
    result = invoke(tmp_path, "BTCUSDT", "--offline", "--history", "--start", "2020-01-01",
                    "-f", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = orjson.loads(result.stdout)
    assert "history clamped to the stored 5m inputs" in result.stderr
    assert doc["notes"] and doc["start"] == iso_ms(first) and doc["end"] == iso_ms(recent)
    # One row per stored step: none before the data, none for the still-open period.
    assert doc["stored_rows"] == len(doc["rows"]) == 200
    stored = store.read("pressure", symbol="BTCUSDT")
    assert stored["ts"].dt.epoch("ms").to_list() == list(range(first, recent + 1, STEP))
    files = list((tmp_path / "pressure").rglob("*.parquet"))
    assert 1 <= len(files) <= 2  # the months that hold data, not 84 months of nulls


def test_history_never_stores_a_step_without_inputs(tmp_path, recent):
    store = Store(tmp_path)
    store_market(store, "BTCUSDT", recent, 300)
    hole = (pl.col("ts").dt.epoch("ms") >= recent - 150 * STEP) & (
        pl.col("ts").dt.epoch("ms") < recent - 50 * STEP
    )
    for path in (tmp_path).rglob("*.parquet"):
        if "funding" in str(path):
            continue
        frame = pl.read_parquet(path)
        frame.filter(~hole).write_parquet(path)
    start = recent - 250 * STEP
    result = invoke(tmp_path, "BTCUSDT", "--offline", "--history", "--start", str(start),
                    "-f", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    stored = store.read("pressure", symbol="BTCUSDT")
    assert stored.height == orjson.loads(result.stdout)["stored_rows"]
    assert stored.filter(pl.col("weight_used") == 0).height == 0
    # Steps in the hole whose inputs are older than the stale limit are not stored.
    stale_steps = [
        t
        for t in stored["ts"].dt.epoch("ms").to_list()
        if recent - 140 * STEP <= t < recent - 60 * STEP
    ]
    assert stale_steps == []
