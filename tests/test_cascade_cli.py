"""``liq cascade`` in-process: usage errors, replay of recorded and stored liquidations, history
listing, per-symbol thresholds from the config file, the REST context poller against the fake
Binance API, the live clock and the terminal view."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from dataclasses import replace

import orjson
import polars as pl
import pytest
from rich.console import Console
from typer.testing import CliRunner

from liqcli.alerts import AlertRouter
from liqcli.analytics.cascade import CascadeMonitor, CascadeThresholds
from liqcli.cli.app import app
from liqcli.core.events import AggTrade, Liquidation
from liqcli.exchanges.binance.rest import binance_http, fetch_page
from liqcli.render.cascade_view import CascadeViewInfo, render_cascade_view, signature_text
from liqcli.services.cascade import (
    CascadeConfig,
    CascadeRecorder,
    CascadeSession,
    ContextPoller,
    run_cascade,
)
from liqcli.sources.clock import EventClock, LiveClock
from liqcli.store.parquet import Store
from tests.fakes.binance_rest import FakeBinanceRest
from tests.fakes.ws_servers import FakeBinance, FakeBybit, FakeOkx

pytestmark = pytest.mark.timeout(30)

runner = CliRunner()
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SCALE = "0.0001"  # BTC: $50 / $100 / $300 / $1,000 / $5,000; ETH half of that


def liq(ts: int, usd: float, side: str = "long", symbol: str = "BTCUSDT", ex: str = "binance"):
    return Liquidation(ex, symbol, side, 100.0, usd / 100.0, usd, ts)  # type: ignore[arg-type]


def write_jsonl(path, events) -> None:
    """As ``liq watch --format jsonl`` prints them."""
    path.write_bytes(b"".join(orjson.dumps(e.to_dict()) + b"\n" for e in events))


def invoke(data_dir, *args, env=None):
    return runner.invoke(app, ["--data-dir", str(data_dir), "cascade", *args], env=env)


def jsonl(output: str) -> list[dict]:
    return [orjson.loads(line) for line in output.splitlines() if line.startswith("{")]


def levels(alerts: list[dict]) -> list[tuple[str, str, str]]:
    return [
        (a["symbol"], a["type"], a["peak_level"] if a["type"] == "cascade_end" else a["level"])
        for a in alerts
    ]


# A long cascade on BTC (peak MAJOR, ends quietly) and a short one on ETH, whose thresholds are
# half of BTC's (peak MAJOR at $600, where BTC's would be SIGNIFICANT).
SESSION = [
    liq(T0 + 1_000, 70),
    liq(T0 + 2_000, 600, "short", "ETHUSDT", "okx"),
    liq(T0 + 3_000, 80, ex="bybit"),
    liq(T0 + 5_000, 250),
    liq(T0 + 6_000, 700, ex="okx"),
    liq(T0 + 8_000, 30, "short"),
    liq(T0 + 300_000, 20),  # event time moves on: both cascades are over
]


@pytest.fixture
def session_file(tmp_path):
    path = tmp_path / "session.jsonl"
    write_jsonl(path, SESSION)
    return path


# ---- usage errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["BTCUSDT", "--min-level", "huge"], "invalid level 'HUGE'"),
        (["BTC/USDT"], "invalid symbol 'BTC/USDT'"),
        (["BTC-USDT-SWAP"], "normalised BASEQUOTE form"),
        ([], "give at least one symbol"),
        (["BTCUSDT", "-e", "kraken"], "unknown exchange kraken"),
        (["BTCUSDT", "--webhook", "ftp://example.com/hook"], "invalid webhook URL"),
        (["BTCUSDT", "--exec", "  "], "--exec needs a command"),
        (["BTCUSDT", "--format", "csv"], "--format csv is for --history"),
        (["--history", "--format", "jsonl"], "--history prints table, json or csv"),
        (["BTCUSDT", "--start", "7d"], "--start and --end need --history"),
        (["BTCUSDT", "--history", "--webhook", "http://x/"], "cannot be combined with --history"),
        (["--history", "--start", "2026-02-01", "--end", "2026-01-01"], "must be before --end"),
        (["--history", "--start", "yesterday"], "invalid date 'yesterday'"),
        (["BTCUSDT", "--threshold-scale", "0"], "--threshold-scale must be > 0"),
        (["BTCUSDT", "--duration", "0"], "--duration must be > 0"),
        (["BTCUSDT", "--exec-timeout", "-1"], "--exec-timeout must be > 0"),
        (["BTCUSDT", "--replay", "missing.jsonl"], "no such file or directory"),
        (["BTCUSDT", "--replay", "store", "--store-trades"], "applies to live runs"),
        (["BTCUSDT", "--no-store", "--store-trades"], "needs storage"),
    ],
)
async def test_usage_errors_exit_2_before_any_network_call(tmp_path, args, message):
    with FakeBinanceRest() as rest:
        async with FakeBinance() as binance, FakeOkx() as okx, FakeBybit() as bybit:
            env = {
                "LIQ_BINANCE_REST_URL": rest.url,
                "LIQ_BINANCE_WS_URL": binance.ws_url,
                "LIQ_OKX_WS_URL": okx.ws_url,
                "LIQ_OKX_REST_URL": okx.rest_url,
                "LIQ_BYBIT_WS_URL": bybit.ws_url,
                "LIQ_BYBIT_REST_URL": bybit.rest_url,
            }
            # The CLI runs its own event loop: give it a thread, keep the fakes serving here.
            result = await asyncio.to_thread(invoke, tmp_path, *args, env=env)
            await asyncio.sleep(0.05)
            connections = binance.connections + okx.connections + bybit.connections
            rest_calls = len(okx.rest.requests) + len(bybit.rest.requests)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert (connections, rest_calls, len(rest.requests)) == (0, 0, 0)


def test_bad_threshold_table_in_the_config_is_a_usage_error(tmp_path, monkeypatch, session_file):
    config = tmp_path / "config.toml"
    config.write_text("[cascade.thresholds]\nBTCUSDT = { building = 100, minor = 50 }\n")
    monkeypatch.setenv("LIQ_CONFIG", str(config))
    result = invoke(tmp_path, "BTCUSDT", "--replay", str(session_file))
    assert result.exit_code == 2
    assert "strictly increasing" in result.stderr


# ---- replay, min-level, many symbols -------------------------------------------------------------


def test_replay_of_a_recording_finds_every_symbols_cascades(tmp_path, session_file):
    result = invoke(
        tmp_path, "BTCUSDT", "ETHUSDT", "--replay", str(session_file),
        "--threshold-scale", SCALE, "--format", "jsonl", "--min-level", "building",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    alerts = jsonl(result.stdout)
    assert levels(alerts) == [
        ("BTCUSDT", "cascade_level", "BUILDING"),  # $70
        ("ETHUSDT", "cascade_level", "MAJOR"),  # $600 >= ETH's $500
        ("BTCUSDT", "cascade_level", "MINOR"),  # $150
        ("BTCUSDT", "cascade_level", "SIGNIFICANT"),  # $400
        ("BTCUSDT", "cascade_level", "MAJOR"),  # $1,100
        ("BTCUSDT", "cascade_end", "MAJOR"),
        ("ETHUSDT", "cascade_end", "MAJOR"),
    ]
    btc_end, eth_end = alerts[-2], alerts[-1]
    assert (btc_end["direction"], btc_end["reason"]) == ("long_liquidation", "quiet")
    assert btc_end["total_usd"] == pytest.approx(1130.0) and btc_end["events"] == 5
    # ETH had no more events: event time moving on ended it, as the live ticks would have.
    assert (eth_end["direction"], eth_end["events"], eth_end["reason"]) == (
        "short_liquidation",
        1,
        "quiet",
    )
    assert eth_end["ts"] == "2026-01-01T00:02:02.000Z"  # below BUILDING at 62 s, + 60 s quiet
    # A replay writes nothing unless asked to.
    assert not (tmp_path / "cascades").exists() and not (tmp_path / "liquidations").exists()
    assert "2 cascade(s)" in result.stderr


def test_min_level_filters_alerts_and_judges_an_end_by_its_peak(tmp_path, session_file):
    result = invoke(
        tmp_path, "BTCUSDT", "ETHUSDT", "--replay", str(session_file),
        "--threshold-scale", SCALE, "--format", "jsonl", "--min-level", "major",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert levels(jsonl(result.stdout)) == [
        ("ETHUSDT", "cascade_level", "MAJOR"),
        ("BTCUSDT", "cascade_level", "MAJOR"),
        ("BTCUSDT", "cascade_end", "MAJOR"),
        ("ETHUSDT", "cascade_end", "MAJOR"),
    ]
    assert "4 alert(s) sent, 3 below MAJOR" in result.stderr


def test_exchange_filter_applies_to_replays(tmp_path, session_file):
    result = invoke(
        tmp_path, "BTCUSDT", "--replay", str(session_file), "-e", "okx",
        "--threshold-scale", SCALE, "--format", "jsonl", "--min-level", "building",
    )  # fmt: skip
    ends = [a for a in jsonl(result.stdout) if a["type"] == "cascade_end"]
    assert [(a["total_usd"], a["events"], a["peak_level"]) for a in ends] == [
        (pytest.approx(700.0), 1, "SIGNIFICANT")
    ]


def test_config_thresholds_per_symbol_and_min_level_default(tmp_path, monkeypatch, session_file):
    config = tmp_path / "config.toml"
    config.write_text(
        '[cascade]\nmin_level = "building"\n'
        "[cascade.thresholds.ETHUSDT]\n"
        "building = 100\nminor = 200\nsignificant = 700\nmajor = 5000\nextreme = 9000\n"
    )
    monkeypatch.setenv("LIQ_CONFIG", str(config))
    result = invoke(tmp_path, "ETHUSDT", "--replay", str(session_file), "-f", "jsonl")
    assert result.exit_code == 0, result.stderr
    # Its own table (not scaled by the default --threshold-scale 1): $600 is MINOR.
    assert levels(jsonl(result.stdout)) == [
        ("ETHUSDT", "cascade_level", "MINOR"),
        ("ETHUSDT", "cascade_end", "MINOR"),
    ]
    result = invoke(
        tmp_path, "ETHUSDT", "--replay", str(session_file), "-f", "jsonl",
        "--threshold-scale", "0.5", "--min-level", "significant",
    )  # fmt: skip
    assert levels(jsonl(result.stdout))[0] == ("ETHUSDT", "cascade_level", "SIGNIFICANT")


def test_a_broken_recording_is_a_one_line_runtime_error(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"exchange": "binance", "symbol": "BTCUSDT"}\n')
    result = invoke(tmp_path, "BTCUSDT", "--replay", str(path))
    assert result.exit_code == 1
    assert result.stdout == ""  # no dashboard frame for a run that never started
    assert result.stderr.startswith("liq: error: ") and "broken.jsonl:1" in result.stderr
    assert result.stderr.count("\n") == 1


def test_duplicate_venue_messages_count_once(tmp_path):
    path = tmp_path / "dupes.jsonl"
    write_jsonl(path, [liq(T0, 200), liq(T0, 200), liq(T0 + 1_000, 50), liq(T0 + 200_000, 1)])
    result = invoke(
        tmp_path, "BTCUSDT", "--replay", str(path), "--threshold-scale", SCALE,
        "-f", "jsonl", "-l", "building",
    )  # fmt: skip
    end = jsonl(result.stdout)[-1]
    assert (end["type"], end["total_usd"], end["events"]) == ("cascade_end", 250.0, 2)


def test_replay_of_the_store_uses_stored_trades_for_prices(tmp_path):
    store = Store(tmp_path)
    liquidations = [liq(T0 + 1_000, 400), liq(T0 + 4_000, 800), liq(T0 + 200_000, 1)]
    store.write("liquidations", pl.DataFrame([e.to_row() for e in liquidations]))
    trades = [
        (T0 - 120_000, 50.0),  # outside the minute before the first liquidation: not read
        (T0 - 30_000, 100.0),
        (T0 + 2_000, 99.0),
        (T0 + 3_500, 98.0),
        (T0 + 9_000, 97.0),
    ]
    store.write(
        "agg_trades",
        pl.DataFrame(
            {
                "exchange": "binance",
                "symbol": "BTCUSDT",
                "trade_id": range(len(trades)),
                "ts": [ts for ts, _ in trades],
                "price": [price for _, price in trades],
                "qty": 1.0,
                "is_buyer_maker": True,
            }
        ),
    )
    result = invoke(
        tmp_path, "BTCUSDT", "--replay", "store", "--threshold-scale", SCALE,
        "-f", "jsonl", "-l", "building",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    first, *_, end = jsonl(result.stdout)
    assert first["price"] == 100.0 and first["level"] == "SIGNIFICANT"
    # Start at 100.0, last liquidation at 98.0.
    assert end["type"] == "cascade_end" and end["price_change_pct"] == pytest.approx(-2.0)


# ---- history ------------------------------------------------------------------------------------


def test_replay_store_flag_writes_cascades_and_history_lists_them(tmp_path, session_file):
    result = invoke(
        tmp_path, "BTCUSDT", "ETHUSDT", "--replay", str(session_file),
        "--threshold-scale", SCALE, "--store", "-f", "jsonl",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert not (tmp_path / "liquidations").exists()  # a replay never re-stores its input

    result = invoke(tmp_path, "--history", "--format", "json")
    assert result.exit_code == 0, result.stderr
    document = orjson.loads(result.stdout)
    assert document["symbols"] == [] and document["start"] is None
    rows = document["cascades"]
    assert [
        (r["symbol"], r["start_ts"], r["end_ts"], r["duration_s"], r["direction"], r["peak_level"])
        for r in rows
    ] == [
        ("BTCUSDT", "2026-01-01T00:00:01.000Z", "2026-01-01T00:00:08.000Z", 7.0,
         "long_liquidation", "MAJOR"),
        ("ETHUSDT", "2026-01-01T00:00:02.000Z", "2026-01-01T00:00:02.000Z", 0.0,
         "short_liquidation", "MAJOR"),
    ]  # fmt: skip
    assert rows[0]["total_usd"] == pytest.approx(1130.0) and rows[0]["events"] == 5
    assert rows[0]["price_change_pct"] is None  # no trades in a liquidations recording

    csv = invoke(tmp_path, "ETHUSDT", "--history", "-f", "csv").stdout.splitlines()
    assert csv[0] == (
        "symbol,start_ts,end_ts,duration_s,direction,peak_level,total_usd,events,price_change_pct"
    )
    assert csv[1:] == [
        "ETHUSDT,2026-01-01T00:00:02.000Z,2026-01-01T00:00:02.000Z,0.0,short_liquidation,"
        "MAJOR,600.0,1,"
    ]

    table = invoke(tmp_path, "BTCUSDT", "--history").stdout.splitlines()
    assert table[0].split() == [
        "symbol", "start_ts", "end_ts", "duration_s", "direction", "peak_level", "total_usd",
        "events", "price_change_pct",
    ]  # fmt: skip
    assert table[2].split() == [
        "BTCUSDT", "2026-01-01T00:00:01.000Z", "2026-01-01T00:00:08.000Z", "7.0",
        "long_liquidation", "MAJOR", "1130", "5",
    ]  # fmt: skip
    assert len(table) == 3

    window = ["--start", "2026-01-01T00:00:02Z", "--end", "2026-01-02"]
    rows = orjson.loads(invoke(tmp_path, "--history", *window, "-f", "json").stdout)["cascades"]
    assert [r["symbol"] for r in rows] == ["ETHUSDT"]

    # Replaying again upserts the same keys: history is unchanged.
    invoke(tmp_path, "BTCUSDT", "ETHUSDT", "--replay", str(session_file),
           "--threshold-scale", SCALE, "--store", "-f", "jsonl")  # fmt: skip
    assert (
        orjson.loads(invoke(tmp_path, "--history", "-f", "json").stdout)["cascades"]
        == (document["cascades"])
    )


async def test_a_rejecting_webhook_never_holds_up_detection(tmp_path, session_file):
    from tests.test_cascade_e2e import Webhook

    async with Webhook(status=404) as hook:
        args = ["BTCUSDT", "--replay", str(session_file), "--threshold-scale", SCALE]
        result = await asyncio.to_thread(
            invoke, tmp_path, *args, "-f", "jsonl", "--webhook", hook.url
        )
        quiet = await asyncio.to_thread(
            invoke, tmp_path, *args, "-f", "jsonl", "--webhook", hook.url, "--quiet"
        )
    assert result.exit_code == 0, result.stderr
    alerts = jsonl(result.stdout)
    assert levels(alerts)[-1] == ("BTCUSDT", "cascade_end", "MAJOR") and len(alerts) == 3
    # both runs posted every alert once (up to 4 in flight: they may arrive in any order)
    key = lambda body: json.dumps(body, sort_keys=True)  # noqa: E731
    assert sorted(map(key, hook.bodies)) == sorted(map(key, alerts + alerts))
    assert f"webhook {hook.url}: 3 alert(s) not delivered" in result.stderr
    assert quiet.exit_code == 0 and quiet.stderr == "" and jsonl(quiet.stdout) == alerts


def test_empty_history(tmp_path):
    result = invoke(tmp_path, "BTCUSDT", "--history")
    assert result.exit_code == 0
    assert result.stdout == "(no rows)\n"


# ---- dashboard ----------------------------------------------------------------------------------


def test_dashboard_replay_prints_one_final_frame(tmp_path, session_file):
    result = invoke(
        tmp_path, "BTCUSDT", "ETHUSDT", "--replay", str(session_file),
        "--threshold-scale", SCALE, "-l", "significant",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "liq cascade" in out and "BTCUSDT, ETHUSDT" in out and "alerts ≥ SIGNIFICANT" in out
    assert "Recent alerts (≥ SIGNIFICANT)" in out
    assert "5 events, quiet" in out and "early, follow_short" in out
    assert "BUILDING" not in out.split("Recent alerts")[1]  # filtered by --min-level


def test_view_shows_level_direction_phase_and_signature_parts():
    state = {
        "symbol": "BTCUSDT",
        "level": "MAJOR",
        "direction": "long_liquidation",
        "total_usd_60s": 12_300_000.0,
        "long_usd_60s": 12_000_000.0,
        "short_usd_60s": 300_000.0,
        "phase": "mid",
        "price": 97_250.5,
        "price_change_pct": -1.2,
        "price_change_30s_pct": -0.61,
        "recommended_action": "hold",
        "action_note": "cascade maturing",
        "confidence": 0.74,
        "signature": {
            "price_move_30s": True,
            "oi_falling": False,
            "taker_ratio": None,
            "funding_flip": True,
        },
    }
    info = CascadeViewInfo(["BTCUSDT"], ["binance"], "MINOR", "live", None, T0)
    context = {"BTCUSDT": {"polled_ms": T0 - 5_000, "oi_change_pct": -0.42, "taker_ratio": 0.61,
                           "funding_rate": -0.0001, "prev_funding_rate": 0.0001, "error": None}}  # fmt: skip
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(render_cascade_view([state], [], {}, context, info, now_ms=T0))
    text = console.file.getvalue()
    for expected in ("MAJOR", "LONGS", "mid", "$12.3M", "-0.61%", "-1.20%", "0.74", "none yet"):
        assert expected in text
    assert "price✓ OI✗ taker? funding✓" in text
    assert (
        "-0.42%" in text and "0.610" in text and "+0.0100% → -0.0100%" in text and "5s ago" in text
    )
    assert signature_text({}).plain == "price? OI? taker? funding?"


# ---- live pieces --------------------------------------------------------------------------------


def test_live_clock_waits_for_events_in_flight():
    wall = [T0]
    clock = LiveClock(lambda: wall[0], lag_ms=2_000)
    assert clock() == T0 - 2_000
    clock.observe(T0 + 500)  # a venue a little ahead of the local clock
    assert clock() == T0 + 500
    wall[0] = T0 + 10_000  # quiet venues: wall time, less the allowance, moves on
    assert clock() == T0 + 8_000
    clock.observe(T0 + 1_000)
    assert clock() == T0 + 8_000


def session_for(symbols, **options) -> tuple[CascadeSession, list[dict], list[dict]]:
    alerts: list[dict] = []
    config = CascadeConfig(symbols=symbols, threshold_scale=0.0001, min_level="BUILDING")
    recorder = CascadeRecorder(None)

    class Collect:
        name = "collect"

        def submit(self, alert):
            alerts.append(alert)

    session = CascadeSession(
        config,
        clock=options.get("clock") or EventClock(),
        router=AlertRouter([Collect()], min_level="BUILDING"),
        recorder=recorder,
    )
    return session, alerts, recorder.records


def test_one_future_dated_event_does_not_break_detection():
    """A liquidation stamped in 2100 (a bad venue clock) is refused: it neither moves the
    detectors' time nor makes every later event "late", so the burst after it still alerts."""
    wall = [T0]
    clock = LiveClock(lambda: wall[0])
    session, alerts, _ = session_for(["BTCUSDT"], clock=clock)
    future = replace(liq(4_102_444_800_000, 1_000), received_ts=T0)
    session.handle_batch([future])
    assert session.counters.future == 1 and session.counters.liquidations == 0
    assert clock() == T0 - clock.lag_ms
    wall[0] = T0 + 1_000
    session.handle_batch([replace(liq(T0 + 500, 400), received_ts=T0 + 1_000)])
    assert [a["level"] for a in alerts] == ["SIGNIFICANT"]
    session.monitor.tick(clock())
    assert session.monitor.detectors["BTCUSDT"].active


def test_session_ignores_other_symbols_and_feeds_prices():
    session, alerts, records = session_for(["BTCUSDT"])
    session.handle(AggTrade("binance", "BTCUSDT", 1, T0, 100.0, 1.0, False))
    session.handle(liq(T0 + 1_000, 500, symbol="SOLUSDT"))
    session.handle(liq(T0 + 1_000, 400))
    assert [(a["level"], a["price"]) for a in alerts] == [("SIGNIFICANT", 100.0)]
    assert session.counters.to_dict() == {
        "liquidations": 1,
        "duplicates": 0,
        "trades": 1,
        "stored": 0,
        "future": 0,
    }
    session.monitor.finish()
    assert [r["total_usd"] for r in records] == [400.0]


async def test_context_poller_feeds_the_signature_from_binance_rest(caplog):
    now = T0 + 3_600_000
    with FakeBinanceRest(now_ms=now) as rest:
        async with binance_http(rest.url, max_retries=0) as http:
            oi = await fetch_page(http, "open_interest", "BTCUSDT", period="5m", limit=2)
            taker = await fetch_page(http, "taker_ratio", "BTCUSDT", period="5m", limit=1)
            funding = await fetch_page(http, "funding", "BTCUSDT", limit=2)
            session, _, _ = session_for(["BTCUSDT", "ETHUSDT"])
            session.clock.observe(now)
            poller = ContextPoller(
                session.monitor,
                ["BTCUSDT", "ETHUSDT"],
                http_factory=lambda: binance_http(rest.url, max_retries=0),
                wall_clock=lambda: now,
            )
            snapshot = await poller.poll(http, "BTCUSDT")

            ois = oi["open_interest"].to_list()
            assert snapshot.oi_change_pct == pytest.approx((ois[1] / ois[0] - 1) * 100)
            assert snapshot.taker_ratio == taker["buy_sell_ratio"][0]
            rates = funding["funding_rate"].to_list()
            assert (snapshot.prev_funding_rate, snapshot.funding_rate) == tuple(rates)
            assert snapshot.error is None

            # The detector judges its signature with it: a short cascade wants OI falling and
            # taker buying.
            signature = session.monitor.detector("BTCUSDT").state()["signature"]
            assert signature["oi_falling"] == (ois[1] < ois[0])
            assert signature["taker_ratio"] == (taker["buy_sell_ratio"][0] < 0.7)

            # One part failing leaves only that part unknown, logged once per failure spell.
            rest.inject("status", path="/futures/data/openInterestHist", status=503, count=2)
            with caplog.at_level(logging.WARNING, logger="liq.cascade"):
                failed = await poller.poll(http, "BTCUSDT")
                again = await poller.poll(http, "BTCUSDT")
            assert failed.oi_change_pct is None and failed.taker_ratio == snapshot.taker_ratio
            assert failed.error.startswith("open interest unknown: ")
            assert again.error == failed.error
            assert len([r for r in caplog.records if "REST context failed" in r.message]) == 1
            assert session.monitor.detector("BTCUSDT").state()["signature"]["oi_falling"] is None
            recovered = await poller.poll(http, "BTCUSDT")
            assert recovered.error is None and recovered.oi_change_pct == snapshot.oi_change_pct

            # An unknown symbol is dropped from polling; the run goes on.
            rest.symbols.discard("ETHUSDT")
            rest.clear_log()
            task = asyncio.create_task(poller.run())
            try:
                while len(rest.requests) < 6:  # BTC's three and ETH's three
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.1)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            assert "ETHUSDT" in poller._disabled
            assert "unknown symbol ETHUSDT" in poller.snapshots["ETHUSDT"].error
            # Once a minute: one poll of each symbol, nothing more in the meantime.
            assert (
                sorted(r.params["symbol"] for r in rest.requests)
                == ["BTCUSDT"] * 3 + ["ETHUSDT"] * 3
            )


async def test_live_run_with_fake_binance_and_okx_renders_the_dashboard(tmp_path, monkeypatch):
    """In-process: the default sources (Binance combined stream + OKX through the merged stream),
    --no-context, a dashboard written to a buffer, journals closed into Parquet."""
    from tests.fakes.venue_rest import okx_instrument
    from tests.test_cascade_e2e import agg_trade, force_order

    now = T0
    okx_push = {
        "arg": {"channel": "liquidation-orders", "instType": "SWAP"},
        "data": [
            {
                "instId": "BTC-USDT-SWAP",
                "instFamily": "BTC-USDT",
                "instType": "SWAP",
                "details": [
                    {
                        "side": "sell",
                        "posSide": "long",
                        "bkPx": "100",
                        "sz": "30",
                        "bkLoss": "0",
                        "ccy": "",
                        "ts": str(now + 2_000),
                    },
                ],
            }
        ],
    }
    binance = FakeBinance([agg_trade(now, 100.0), force_order(now + 1_000, "SELL", 120, 100.0)])
    okx = FakeOkx(
        by_subscription={"SWAP": [okx_push]},
        instruments=[okx_instrument("BTC-USDT-SWAP", ct_val="0.01")],
    )
    async with binance, okx:
        monkeypatch.setenv("LIQ_BINANCE_WS_URL", binance.ws_url)
        monkeypatch.setenv("LIQ_OKX_WS_URL", okx.ws_url)
        monkeypatch.setenv("LIQ_OKX_REST_URL", okx.rest_url)
        out = io.StringIO()
        config = CascadeConfig(
            symbols=["BTCUSDT"],
            exchanges=["binance", "okx"],
            min_level="MINOR",
            threshold_scale=0.0001,
            context=False,
            duration=1.5,
            refresh=0.2,
        )
        result = await run_cascade(config, data_dir=tmp_path, out=out, wall_clock=lambda: now)
    assert result.counters["liquidations"] == 2 and result.counters["trades"] == 1
    assert result.statuses["binance"]["events"] == 2 and result.statuses["okx"]["events"] == 1
    # $120 on Binance, then OKX's 30 contracts x 0.01 BTC x $100 = $30: MINOR, still open.
    assert [(r["peak_level"], r["total_usd"]) for r in result.cascades] == [("MINOR", 150.0)]
    assert result.stored_cascades == 1 and result.alerts_passed == 2
    frame = out.getvalue()
    assert "binance · okx" in frame and "MINOR" in frame and "shutdown" in frame
    assert "connected" in frame or "closed" in frame
    assert Store(tmp_path).read("liquidations")["exchange"].to_list() == ["binance", "okx"]
    assert not (tmp_path / "agg_trades").exists()  # only with --store-trades


def test_thresholds_come_from_config_then_scale():
    config = CascadeConfig(
        symbols=["BTCUSDT", "DOGEUSDT"],
        threshold_scale=2.0,
        thresholds={"DOGEUSDT": CascadeThresholds(1, 2, 3, 4, 5)},
    )
    found = config.detector_thresholds()
    assert found["DOGEUSDT"] == CascadeThresholds(2, 4, 6, 8, 10)
    assert found["BTCUSDT"] == CascadeThresholds().scaled(2.0)
    monitor = CascadeMonitor(["DOGEUSDT"], thresholds=found)
    assert monitor.detector("DOGEUSDT").thresholds == found["DOGEUSDT"]
