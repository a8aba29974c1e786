"""The cascade detector driven by synthetic streams: event time is the clock, no sleeping."""

from __future__ import annotations

import asyncio
import random
from dataclasses import astuple

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liqcli.analytics.cascade import (
    LEVELS,
    CascadeMonitor,
    CascadeThresholds,
    LiquidationCascadeDetector,
    base_asset,
    level_index,
    scale_factor,
    thresholds_for,
)
from liqcli.core.events import AggTrade, BookTop, Liquidation
from liqcli.core.schemas import dataset
from liqcli.core.timeutil import iso_ms
from liqcli.errors import UsageError
from liqcli.sources.clock import Ticker

T0 = 1_700_000_000_000  # a whole second
BTC = CascadeThresholds()


def liq(ts: int, usd: float, side: str = "long", symbol: str = "BTCUSDT") -> Liquidation:
    return Liquidation("binance", symbol, side, 100.0, usd / 100.0, usd, ts)


def trade(ts: int, price: float, symbol: str = "BTCUSDT") -> AggTrade:
    return AggTrade("binance", symbol, ts, ts, price, 1.0, False)


def detector(**options) -> tuple[LiquidationCascadeDetector, list[dict], list[dict]]:
    alerts: list[dict] = []
    records: list[dict] = []
    options.setdefault("clock", lambda: T0)
    found = LiquidationCascadeDetector(
        "BTCUSDT", alerts.append, record_callback=records.append, **options
    )
    return found, alerts, records


# ---- levels ---------------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(5))
def test_level_boundaries_just_below_and_at_threshold(index):
    threshold = astuple(BTC)[index]
    below, below_alerts, _ = detector()
    assert below.feed(liq(T0, threshold - 0.01)) == tuple(below_alerts)
    assert below.level == LEVELS[index]
    assert [a["level"] for a in below_alerts] == ([LEVELS[index]] if index else [])

    at, at_alerts, _ = detector()
    at.feed(liq(T0, threshold))
    assert at.level == LEVELS[index + 1]
    # Jumping straight to a level alerts once, at that level, not once per level skipped.
    assert [(a["type"], a["level"]) for a in at_alerts] == [("cascade_level", LEVELS[index + 1])]
    assert at_alerts[0]["total_usd_60s"] == threshold


def test_escalation_alerts_each_level_once_in_order():
    d, alerts, _ = detector()
    for i, usd in enumerate((500_000, 500_000, 2_000_000, 7_000_000, 40_000_000)):
        d.feed(liq(T0 + i * 1000, usd))
    assert [a["level"] for a in alerts] == list(LEVELS[1:])
    assert [a["total_usd_60s"] for a in alerts] == [5e5, 1e6, 3e6, 1e7, 5e7]
    assert all(a["started_at"] == iso_ms(T0) for a in alerts)
    assert alerts[-1]["ts"] == iso_ms(T0 + 4000)


def test_window_is_sixty_seconds_of_event_time():
    d, alerts, _ = detector()
    d.feed(liq(T0, 300_000))
    d.feed(liq(T0 + 59_999, 200_000))  # second 59: the first still counts
    assert d.total_usd_60s == 500_000 and alerts[-1]["level"] == "BUILDING"
    d.tick(T0 + 60_000)  # second 60: the first one left the window
    assert d.total_usd_60s == 200_000


def test_late_events_count_inside_the_window_and_are_dropped_outside():
    d, _, _ = detector()
    d.feed(liq(T0 + 100_000, 1_000))
    d.feed(liq(T0 + 41_000, 2_000))  # 59 s before the newest second: inside
    d.feed(liq(T0 + 40_999, 4_000))  # 60 s before: outside
    assert d.total_usd_60s == 3_000
    assert d.late_dropped == 1


def test_state_without_a_cascade():
    d, _, _ = detector()
    d.feed(liq(T0, 1_000, "short"))
    state = d.state()
    assert (state["phase"], state["recommended_action"], state["confidence"]) == (
        "quiet",
        "hold",
        0,
    )
    assert state["started_at"] is None and state["direction"] == "short_liquidation"


def test_other_symbols_and_other_event_types_are_ignored():
    d, alerts, _ = detector()
    d.feed(liq(T0, 900_000, symbol="ETHUSDT"))
    d.feed(BookTop("binance", "BTCUSDT", T0, 1.0, 1.0, 2.0, 1.0))
    d.feed(liq(T0, 0.0))
    d.feed(liq(T0, float("nan")))
    assert d.total_usd_60s == 0 and not alerts


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(-70_000, 4_000),  # ms after the newest event; negative = late
            st.floats(1, 1e6),
            st.sampled_from(["long", "short"]),
        ),
        min_size=1,
        max_size=200,
    )
)
def test_rolling_total_matches_brute_force(steps):
    d, _, _ = detector()
    newest = T0
    kept: list[tuple[int, float, str]] = []
    for offset, usd, side in steps:
        ts = max(T0, newest + offset)
        newest = max(newest, ts)
        if ts // 1000 > newest // 1000 - 60:
            kept.append((ts, usd, side))
        d.feed(liq(ts, usd, side))
        window = [(u, s) for t, u, s in kept if t // 1000 > newest // 1000 - 60]
        state = d.state()
        assert d.total_usd_60s == pytest.approx(sum(u for u, _ in window), rel=1e-9, abs=1e-6)
        longs = sum(u for u, s in window if s == "long")
        assert state["long_usd_60s"] == pytest.approx(longs, rel=1e-9, abs=0.01)


# ---- direction, phase, action ---------------------------------------------------------------


def test_long_liquidation_cascade_follows_down():
    d, alerts, _ = detector()
    d.feed(liq(T0, 600_000, "long"))
    (alert,) = alerts
    assert alert["direction"] == "long_liquidation"
    assert alert["phase"] == "early"
    assert alert["recommended_action"] == "follow_short"


def test_short_liquidation_cascade_follows_up():
    d, alerts, _ = detector()
    d.feed(liq(T0, 100_000, "long"))
    d.feed(liq(T0, 500_000, "short"))
    (alert,) = alerts
    assert alert["direction"] == "short_liquidation"
    assert alert["dominant_share"] == pytest.approx(5 / 6, abs=1e-4)
    assert alert["recommended_action"] == "follow_long"


def test_two_sided_flow_recommends_holding():
    d, alerts, _ = detector()
    d.feed(liq(T0, 300_000, "long"))
    d.feed(liq(T0, 250_000, "short"))
    assert alerts[0]["direction"] == "long_liquidation"
    assert alerts[0]["recommended_action"] == "hold"


def test_phase_by_time_since_start():
    d, _, _ = detector()
    d.feed(liq(T0, 600_000))
    phases = {}
    for at in (29_999, 30_000, 60_000, 60_001):
        d.tick(T0 + at)
        phases[at] = (d.state()["phase"], d.state()["recommended_action"])
    assert phases == {
        29_999: ("early", "follow_short"),
        30_000: ("mid", "hold"),
        60_000: ("mid", "hold"),
        60_001: ("late", "prepare_long_reversal"),
    }
    assert d.active  # still inside the quiet period


@pytest.mark.parametrize(("price", "phase"), [(99.1, "early"), (98.9, "late"), (101.1, "late")])
def test_phase_turns_late_on_a_move_over_one_percent(price, phase):
    d, _, _ = detector()
    d.feed(trade(T0 - 500, 100.0))
    d.feed(liq(T0, 600_000))
    d.feed(trade(T0 + 2_000, price))
    state = d.state()
    assert state["phase"] == phase
    assert state["price_change_pct"] == pytest.approx((price / 100 - 1) * 100, abs=1e-4)


def test_price_change_over_last_30_seconds():
    d, _, _ = detector()
    d.feed(trade(T0 - 30_000, 200.0))
    d.feed(trade(T0 - 29_000, 150.0))
    d.feed(trade(T0, 198.0))
    assert d.state()["price_change_30s_pct"] == pytest.approx(-1.0)
    assert d.state()["price"] == 198.0


def test_without_trades_prices_are_unknown():
    d, alerts, _ = detector()
    d.feed(liq(T0, 600_000))
    assert alerts[0]["price_change_pct"] is None
    assert alerts[0]["price_change_30s_pct"] is None
    assert alerts[0]["signature"]["price_move_30s"] is None


# ---- signature ------------------------------------------------------------------------------


def test_full_long_signature():
    d, alerts, _ = detector()
    d.feed(trade(T0 - 30_000, 100.0))
    d.feed(trade(T0, 99.4))  # -0.6 % in 30 s
    d.update_context(
        oi_change_pct=-1.5, taker_ratio=0.6, funding_rate=-0.0001, prev_funding_rate=0.0001, ts=T0
    )
    d.feed(liq(T0, 600_000))
    assert alerts[0]["signature"] == {
        "price_move_30s": True,
        "oi_falling": True,
        "taker_ratio": True,
        "funding_flip": True,
    }
    assert alerts[0]["signature_matched"] == 4
    assert alerts[0]["confidence"] == pytest.approx(0.2 + 0.1 + 0.2)


def test_full_short_signature_is_mirrored():
    d, alerts, _ = detector()
    d.feed(trade(T0 - 30_000, 100.0))
    d.feed(trade(T0, 100.6))
    d.update_context(
        oi_change_pct=-0.4, taker_ratio=1.5, funding_rate=0.0001, prev_funding_rate=-0.0001, ts=T0
    )
    d.feed(liq(T0, 600_000, "short"))
    assert alerts[0]["signature"] == {
        "price_move_30s": True,
        "oi_falling": True,
        "taker_ratio": True,
        "funding_flip": True,
    }


def test_partial_signature_shows_which_parts_are_missing():
    d, alerts, _ = detector()
    d.feed(trade(T0 - 30_000, 100.0))
    d.feed(trade(T0, 99.8))  # only -0.2 %
    d.update_context(oi_change_pct=0.3, taker_ratio=0.65, funding_rate=-0.0002, ts=T0)
    d.feed(liq(T0, 600_000))
    assert alerts[0]["signature"] == {
        "price_move_30s": False,
        "oi_falling": False,
        "taker_ratio": True,
        "funding_flip": None,  # no previous funding rate: a flip is unknown
    }
    assert alerts[0]["signature_matched"] == 1


def test_stale_context_is_unknown():
    d, alerts, _ = detector()
    d.update_context(oi_change_pct=-2, taker_ratio=0.5, ts=T0 - 180_001)
    d.feed(liq(T0, 600_000))
    assert alerts[0]["signature"]["oi_falling"] is None
    assert alerts[0]["signature"]["taker_ratio"] is None


def test_funding_already_negative_is_not_a_flip():
    d, alerts, _ = detector()
    d.update_context(funding_rate=-0.0002, prev_funding_rate=-0.0001, ts=T0)
    d.feed(liq(T0, 600_000))
    assert alerts[0]["signature"]["funding_flip"] is False


# ---- hysteresis -----------------------------------------------------------------------------


def drive_to(d: LiquidationCascadeDetector, ts: int, target_usd: float) -> None:
    """Expire what leaves the window at ``ts``, then top the 60-s total up to ``target_usd``."""
    d.tick(ts)
    assert target_usd > d.total_usd_60s, "schedule error: the window already holds more"
    d.feed(liq(ts, target_usd - d.total_usd_60s))


def test_flapping_within_the_margin_keeps_the_level_and_alerts_once():
    d, alerts, _ = detector()
    drive_to(d, T0, 950_000)
    for cycle in range(8):
        drive_to(d, T0 + (cycle * 60 + 30) * 1000, 1_050_000)
        assert d.level == "MINOR"
        drive_to(d, T0 + (cycle * 60 + 60) * 1000, 950_000)  # below 1M, within 10 %
        d.tick(T0 + (cycle * 60 + 89) * 1000)  # for far longer than decay_ms
        assert d.level == "MINOR"
    assert [a["level"] for a in alerts] == ["BUILDING", "MINOR"]


def test_flapping_past_the_margin_decays_but_does_not_realert():
    d, alerts, _ = detector()
    drive_to(d, T0, 850_000)
    levels = []
    for cycle in range(4):
        drive_to(d, T0 + (cycle * 60 + 10) * 1000, 1_050_000)
        levels.append(d.level)
        drive_to(d, T0 + (cycle * 60 + 60) * 1000, 850_000)
        d.tick(T0 + (cycle * 60 + 60) * 1000 + 4_999)
        levels.append(d.level)  # below by more than the margin, not yet for decay_ms
        d.tick(T0 + (cycle * 60 + 65) * 1000)
        levels.append(d.level)
    assert levels == ["MINOR", "MINOR", "BUILDING"] * 4
    assert [a["level"] for a in alerts] == ["BUILDING", "MINOR"]
    assert d.active


# ---- cascade end ----------------------------------------------------------------------------


def test_cascade_end_record_and_alert():
    d, alerts, records = detector()
    d.feed(trade(T0 - 1_000, 100.0))
    for i in range(10):
        d.feed(trade(T0 + i * 1000, 100.0 - 0.2 * i))
        d.feed(liq(T0 + i * 1000, 400_000, "long" if i % 4 else "short"))
    last = T0 + 9_000
    # The 60-s total drops below BUILDING when second 8 leaves the window (at second 68).
    below_since = T0 + 68_000
    assert not d.tick(below_since + 60_000 - 1)
    assert d.active
    (end,) = d.tick(below_since + 60_000)
    assert not d.active and d.level == "QUIET"
    assert records == [
        {
            "exchange": "all",
            "symbol": "BTCUSDT",
            "start_ts": T0 + 1_000,  # the second liquidation lifted the total to BUILDING
            "end_ts": last,
            "direction": "long_liquidation",
            "peak_level": "SIGNIFICANT",
            "total_usd": 4_000_000.0,
            "events": 10,
            "price_change_pct": pytest.approx((98.2 / 99.8 - 1) * 100, abs=1e-4),
        }
    ]
    assert set(records[0]) == set(dataset("cascades").schema)
    frame = pl.DataFrame(records, schema=dataset("cascades").pl_schema)
    assert frame["start_ts"].dt.epoch("ms").to_list() == [T0 + 1_000]
    assert end["type"] == "cascade_end"
    assert end["ts"] == iso_ms(below_since + 60_000)
    assert end["started_at"] == iso_ms(T0 + 1_000)
    assert end["ended_at"] == iso_ms(last)
    assert end["duration_s"] == 8.0
    assert end["peak_level"] == "SIGNIFICANT"
    assert end["total_usd"] == 4_000_000.0
    assert end["events"] == 10
    assert end["phase"] == "ended"
    assert end["level"] == "QUIET"
    assert [a["level"] for a in alerts[:-1]] == ["BUILDING", "MINOR", "SIGNIFICANT"]


def test_renewed_liquidations_in_the_quiet_period_continue_the_cascade():
    d, alerts, records = detector()
    d.feed(liq(T0, 600_000))
    d.tick(T0 + 60_000)  # total below BUILDING from here
    d.feed(liq(T0 + 100_000, 700_000))  # 40 s into the quiet period
    assert d.active and not records
    d.tick(T0 + 160_000 + 60_000)
    assert [a["type"] for a in alerts] == ["cascade_level", "cascade_end"]
    assert records[0]["total_usd"] == 1_300_000 and records[0]["events"] == 2
    assert records[0]["end_ts"] == T0 + 100_000


def test_end_does_not_depend_on_how_often_evaluation_runs():
    rng = random.Random(7)
    events = []
    ts = T0
    for _ in range(3_000):
        ts += rng.choice((50, 300, 1_000, 20_000, 200_000))
        events.append(trade(ts, 100 + rng.uniform(-3, 3)))
        events.append(liq(ts, rng.expovariate(1 / 120_000), rng.choice(("long", "short"))))
    replay, replay_alerts, replay_records = detector()
    for event in events:
        replay.feed(event)
    replay.tick(ts + 300_000)
    live, live_alerts, live_records = detector()
    next_tick = T0
    for event in events:
        while next_tick < event.ts:
            live.tick(next_tick)
            next_tick += 1_000
        live.feed(event)
    live.tick(ts + 300_000)
    assert len(replay_records) > 10
    assert live_records == replay_records
    assert [a["ts"] for a in live_alerts if a["type"] == "cascade_end"] == [
        a["ts"] for a in replay_alerts if a["type"] == "cascade_end"
    ]


def test_finish_closes_an_open_cascade():
    d, _, records = detector()
    d.feed(liq(T0, 2_000_000))
    (end,) = d.finish()
    assert end["type"] == "cascade_end" and end["reason"] == "shutdown"
    assert records[0]["peak_level"] == "MINOR"
    assert not d.finish()


# ---- thresholds and the scaling rule --------------------------------------------------------


def test_scaling_rule():
    assert base_asset("BTCUSDT") == "BTC" and base_asset("1000PEPEUSDC") == "1000PEPE"
    assert base_asset("ETHUSD") == "ETH" and base_asset("USDT") == "USDT"
    assert thresholds_for("BTCUSDT") == BTC
    assert thresholds_for("ETHUSDT") == BTC.scaled(0.5)
    assert thresholds_for("SOLUSDT").building == 50_000
    assert scale_factor("SOLUSDT", reference_usd_1m=2_000_000) == pytest.approx(0.2)
    assert scale_factor("SHIBUSDT", reference_usd_1m=1_000) == 0.01  # floor
    own = CascadeThresholds(1e5, 2e5, 3e5, 4e5, 5e5)
    assert thresholds_for("dogeusdt", overrides={"DOGEUSDT": own}) == own


def test_thresholds_are_validated():
    with pytest.raises(UsageError, match="strictly increasing"):
        CascadeThresholds(building=2e6)
    with pytest.raises(UsageError, match="unknown cascade threshold 'big'"):
        CascadeThresholds.from_mapping({"big": 1})
    with pytest.raises(UsageError, match="must be numbers"):
        CascadeThresholds.from_mapping({"building": "lots"})
    assert CascadeThresholds.from_mapping({"building": 1e5}).minor == 1e6
    with pytest.raises(UsageError, match="invalid level 'HUGE'"):
        level_index("HUGE")
    with pytest.raises(UsageError, match="positive"):
        scale_factor("BTCUSDT", reference_usd_1m=0)
    with pytest.raises(UsageError):
        LiquidationCascadeDetector(" ")


def test_monitor_routes_by_symbol_with_per_symbol_thresholds():
    alerts: list[dict] = []
    monitor = CascadeMonitor(
        ["BTCUSDT", "SOLUSDT", "DOGEUSDT", "XRPUSDT"],
        cascade_callback=alerts.append,
        thresholds={"dogeusdt": CascadeThresholds(1e4, 2e4, 3e4, 4e4, 5e4)},
        reference_usd_1m={"XRPUSDT": 20_000_000},
        clock=lambda: T0,
    )
    for symbol in ("BTCUSDT", "SOLUSDT", "DOGEUSDT", "XRPUSDT", "ADAUSDT"):
        monitor.feed(liq(T0, 60_000, symbol=symbol))
    assert {a["symbol"]: a["level"] for a in alerts} == {
        "SOLUSDT": "BUILDING",
        "DOGEUSDT": "EXTREME",
    }
    assert "ADAUSDT" not in monitor.detectors
    assert monitor.detectors["XRPUSDT"].thresholds == BTC.scaled(2.0)
    monitor.feed(liq(T0, 1_000_000, symbol="XRPUSDT"))
    assert alerts[-1]["symbol"] == "XRPUSDT" and alerts[-1]["level"] == "BUILDING"
    ends = monitor.tick(T0 + 200_000)
    assert sorted(a["symbol"] for a in ends) == ["DOGEUSDT", "SOLUSDT", "XRPUSDT"]


def test_open_monitor_creates_detectors_on_first_sight():
    records: list[dict] = []
    monitor = CascadeMonitor(record_callback=records.append, clock=lambda: T0)
    monitor.feed(trade(T0, 1.0, symbol="PEPEUSDT"))
    monitor.feed(BookTop("binance", "NEWUSDT", T0, 1.0, 1.0, 2.0, 1.0))
    monitor.update_context("pepeusdt", taker_ratio=0.5, ts=T0)
    (alert,) = monitor.feed(liq(T0, 60_000, symbol="PEPEUSDT"))
    assert set(monitor.detectors) == {"PEPEUSDT"}
    assert alert["signature"]["taker_ratio"] is True
    monitor.finish()
    assert records[0]["symbol"] == "PEPEUSDT"
    with pytest.raises(UsageError):
        CascadeMonitor([])


# ---- live mode ------------------------------------------------------------------------------


async def wait_until(condition, timeout_s: float = 2.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.002)


async def test_live_detector_decays_and_ends_without_new_events():
    """Live, the detector owns no timer: a Ticker on the source's clock ticks it."""
    clock = [T0]
    alerts: list[dict] = []
    d = LiquidationCascadeDetector("BTCUSDT", alerts.append, clock=lambda: clock[0])
    ticker = Ticker(lambda: clock[0], 0.005, d.tick).start()
    d.feed(liq(T0, 2_000_000))
    assert d.level == "MINOR"
    clock[0] = T0 + 70_000
    await wait_until(lambda: d.level == "QUIET")
    assert d.active
    clock[0] = T0 + 120_000
    await wait_until(lambda: not d.active)
    await ticker.stop()
    assert [a["type"] for a in alerts] == ["cascade_level", "cascade_end"]
    assert alerts[-1]["ts"] == iso_ms(T0 + 120_000)


async def test_live_evaluation_survives_a_failing_callback(caplog):
    clock = [T0]
    calls: list[dict] = []

    def flaky(alert: dict) -> None:
        calls.append(alert)
        raise RuntimeError("sink bug")

    monitor = CascadeMonitor(
        ["BTCUSDT", "ETHUSDT"],
        cascade_callback=flaky,
        clock=lambda: clock[0],
    )
    ticker = Ticker(lambda: clock[0], 0.005, monitor.tick).start()
    for symbol in ("BTCUSDT", "ETHUSDT"):
        with pytest.raises(RuntimeError):
            monitor.feed(liq(T0, 600_000, symbol=symbol))
    clock[0] = T0 + 200_000
    await wait_until(lambda: not any(d.active for d in monitor.detectors.values()))
    await ticker.stop()
    assert [a["type"] for a in calls].count("cascade_end") == 2
    assert "cascade evaluation for ETHUSDT failed" in caplog.text
