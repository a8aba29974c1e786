"""The gated order-flow feed (only the rows where a strategy can act are stepped) gives exactly
the results of feeding every row: trades, MAE, equity samples, blocks, liquidations, funding."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from liqcli.analytics.orderflow import OrderFlow
from liqcli.services import backtest_flow as svc
from liqcli.store.parquet import Store
from liqcli.trading.engine import MergedBook
from liqcli.trading.wake import first_from, next_true

START = 1_735_689_600_000  # 2025-01-01
HOURS = 6


def write_day(root, seed: int, trades: int = 40_000, funding: bool = True) -> None:
    """Hours of BTCUSDT trades in regimes that lean one way for a few minutes (the modes open,
    ride and close), a top every 3rd trade, sometimes one-sided or wide, funding every 2 h."""
    rng = np.random.default_rng(seed)
    span = HOURS * 3_600_000
    ts = START + np.sort(rng.integers(0, span, trades))
    regimes = rng.choice([-0.8, -0.3, 0.0, 0.0, 0.0, 0.3, 0.8], trades // 400 + 1)
    lean = np.repeat(regimes, 400)[:trades]
    moves = rng.normal(lean * 3e-5, 2.5e-4)
    gaps = rng.choice(trades - 50, 6, replace=False)
    moves[gaps] = rng.choice([-0.06, 0.06], 6)  # gaps a stop cannot catch: liquidations
    moves[gaps + 40] = -moves[gaps]
    price = 60_000 * np.exp(np.cumsum(moves))
    bought = rng.random(trades) < 0.5 + lean / 2.5
    store = Store(root)
    store.write(
        "agg_trades",
        pl.DataFrame(
            {
                "trade_id": np.arange(trades),
                "ts": ts,
                "price": np.round(price, 1),
                "qty": np.round(rng.exponential(0.3, trades), 3) + 0.001,
                "is_buyer_maker": ~bought,
            }
        ).with_columns(
            pl.col("ts").cast(pl.Datetime("ms", "UTC")),
            exchange=pl.lit("binance"),
            symbol=pl.lit("BTCUSDT"),
        ),
    )
    every = np.arange(0, trades, 3)
    m = every.size
    heavy, light = rng.uniform(5, 40, m), rng.uniform(0.2, 5, m)
    leaning = lean[every]
    bid_qty = np.where(leaning > 0, heavy, np.where(leaning < 0, light, heavy))
    ask_qty = np.where(leaning > 0, light, np.where(leaning < 0, heavy, heavy))
    bid_qty[rng.random(m) < 0.01] = 0.0  # a side missing now and then
    spread = rng.choice([0.1, 0.1, 0.2, 80.0], m)
    bid = np.round(price[every] - 0.05, 1)
    store.write(
        "book_tops",
        pl.DataFrame(
            {
                "ts": ts[every],
                "update_id": np.arange(m),
                "bid": bid,
                "bid_qty": np.round(bid_qty, 3),
                "ask": np.round(bid + spread, 1),
                "ask_qty": np.round(ask_qty, 3),
            }
        ).with_columns(
            pl.col("ts").cast(pl.Datetime("ms", "UTC")),
            exchange=pl.lit("binance"),
            symbol=pl.lit("BTCUSDT"),
        ),
    )
    if funding:
        at = START + np.arange(1, HOURS // 2 + 1) * 7_200_000
        store.write(
            "funding",
            pl.DataFrame(
                {
                    "ts": at,
                    "funding_rate": rng.normal(0, 0.002, at.size),
                    "mark_price": np.full(at.size, 60_000.0),
                }
            ).with_columns(
                pl.col("ts").cast(pl.Datetime("ms", "UTC")),
                exchange=pl.lit("binance"),
                symbol=pl.lit("BTCUSDT"),
            ),
        )


def settings(**kw) -> svc.FlowSettings:
    base = dict(
        symbol="BTCUSDT",
        modes=svc.parse_modes("all"),
        start_ms=START,
        end_ms=START + HOURS * 3_600_000,
        data="trades",
        params=(("vpin_bucket_usd", 20_000.0),),
    )
    return svc.FlowSettings(**(base | kw))


def run(store: Store, s: svc.FlowSettings, dynamics, gated: bool, part_rows=None, unit_ms=None):
    """The documents, equity arrays, blocks, events and rows stepped of one feed, the tape in
    parts of ``part_rows`` rows of whole ``unit_ms`` (None: one part)."""
    driver = svc._Driver(s, dynamics)
    rows, parts = svc.tape_parts(
        store, s, warn=False, part_rows=part_rows, unit_ms=unit_ms or svc.HOUR_MS
    )
    if gated:
        assert driver.can_gate([])
        driver.feed_gated(parts, rows=rows)
    else:
        driver.feed_tape(parts, [], rows=rows)
    driver.finish()
    docs = [svc._document(driver, r, m) for r in driver.runs for m in s.modes]
    equity = [d.pop("_equity") for d in docs]
    blocks = [
        (mode.stats.blocks, dict(mode.stats.block_reasons))
        for r in driver.runs
        for mode in r.session.modes.values()
    ]
    # the cascade modes' detectors, whole: windows, per-second closes, levels, the cascade
    detectors = [
        ({k: v for k, v in vars(mode.detector).items() if k != "_clock"}, mode._second)
        for r in driver.runs
        for mode in r.session.modes.values()
        if mode.name == "cascade"
    ]
    return docs, equity, blocks, driver.events, driver.stepped, detectors


def same(fast, slow) -> None:
    docs, equity, blocks, events, _, detectors = fast
    assert docs == slow[0]
    assert detectors == slow[5]
    assert blocks == slow[2]
    assert events == slow[3]
    for (ts, eq, px), (ts0, eq0, px0) in zip(equity, slow[1], strict=True):
        assert np.array_equal(ts, ts0) and np.array_equal(eq, eq0) and np.array_equal(px, px0)


@pytest.mark.parametrize(
    ("seed", "kw", "dynamics"),
    [
        (1, {}, ("off",)),
        (2, {"leverage": 20.0}, ("off", "rules")),  # liquidations by the mark
        (3, {"funding": False}, svc.DYNAMIC),
        (4, {"slippage_bps": 0.0, "capital": 1_000.0}, ("kelly", "vol_target")),
    ],
)
def test_gated_feed_equals_feeding_every_row(tmp_path, seed, kw, dynamics):
    write_day(tmp_path, seed)
    store, s = Store(tmp_path), settings(**kw)
    slow = run(store, s, dynamics, gated=False)
    fast = run(store, s, dynamics, gated=True)
    closed = [t for d in slow[0] for t in d["trades"]]
    reasons = {t["exit_reason"] for t in closed}
    # not vacuous: the modes traded, exited for several reasons, and filters blocked signals
    assert len(closed) >= 20 and len(reasons) >= 3, (len(closed), reasons)
    assert sum(b for b, _ in slow[2]) > 0
    if kw.get("leverage"):
        assert any(d["metrics"]["liquidations"] for d in slow[0])
    if kw.get("funding", True):
        assert any(d["metrics"]["funding"] for d in slow[0])
    same(fast, slow)
    assert fast[4] < slow[3] / 2, (fast[4], slow[3])  # most rows were proved idle, not stepped
    # the tape in parts (a long day's memory bound): ~2,000 rows each, cut at whole minutes,
    # so positions, VPIN buckets, ATR bars, seconds and minutes run across the cuts
    for gated in (True, False):
        parted = run(store, s, dynamics, gated=gated, part_rows=2_000, unit_ms=60_000)
        same(parted, slow)


def test_the_gated_feed_applies_to_every_mode_on_book_tops_only():
    driver = svc._Driver(settings(modes=("0", "cascade")), ("off",))
    assert driver.can_gate([])
    driver = svc._Driver(settings(), ("off",))
    assert driver.can_gate([]) and not driver.can_gate([(START, object())])


def write_liquidations(root, seed: int, bursts: int = 10, singles: int = 600) -> None:
    """One-sided bursts of ~90 s (a cascade each: $1-3M in the detector's minute), some into
    the day's price gaps, and scattered singles too small to start one."""
    rng = np.random.default_rng(seed)
    span = HOURS * 3_600_000
    starts = np.sort(rng.integers(0, span - 120_000, bursts))
    per = rng.integers(25, 60, bursts)
    ts = np.concatenate(
        [s + np.sort(rng.integers(0, 90_000, k)) for s, k in zip(starts, per, strict=True)]
    )
    side = np.concatenate([np.full(k, "long" if j % 3 else "short") for j, k in enumerate(per)])
    usd = rng.lognormal(10.8, 0.6, ts.size)
    ts = np.concatenate([ts, rng.integers(0, span, singles)])
    side = np.concatenate([side, np.where(rng.random(singles) < 0.5, "long", "short")])
    usd = np.concatenate([usd, rng.uniform(1_000, 20_000, singles)])
    Store(root).write(
        "liquidations",
        pl.DataFrame(
            {
                "ts": START + ts,
                "side": side,
                "price": 60_000.0,
                "qty": usd / 60_000.0,
                "notional_usd": np.round(usd, 2),
                "venue_symbol": "BTCUSDT",
                "received_ts": START + ts + 50,
            }
        ).with_columns(
            pl.col("ts", "received_ts").cast(pl.Datetime("ms", "UTC")),
            exchange=pl.lit("binance"),
            symbol=pl.lit("BTCUSDT"),
        ),
    )


@pytest.mark.parametrize(
    ("seed", "modes", "kw", "dynamics"),
    [
        (11, ("cascade",), {}, ("off",)),
        (16, ("0", "cascade"), {"leverage": 25.0}, ("off", "kelly")),  # liquidations by the mark
        (24, ("cascade",), {"funding": False}, svc.DYNAMIC),
    ],
)
def test_the_cascade_mode_gated_equals_feeding_every_row(tmp_path, seed, modes, kw, dynamics):
    write_day(tmp_path, seed, funding=kw.pop("funding", True))
    write_liquidations(tmp_path, seed)
    store, s = Store(tmp_path), settings(modes=modes, **kw)
    slow = run(store, s, dynamics, gated=False)
    fast = run(store, s, dynamics, gated=True)
    cascade = [t for d in slow[0] if d["strategy"] == "cascade" for t in d["trades"]]
    reasons = {t["exit_reason"] for t in cascade}
    # not vacuous: the detector started cascades, the mode followed and reversed them and
    # closed for several reasons, with rows skipped between
    assert len(cascade) >= 8 and len(reasons) >= 2, (len(cascade), reasons)
    if kw.get("leverage"):
        assert "liquidation" in reasons
    same(fast, slow)
    assert fast[4] < slow[3] * 0.7, (fast[4], slow[3])
    # in parts cut at whole minutes: the detector's window and the cascades run across cuts
    same(run(store, s, dynamics, gated=True, part_rows=2_000, unit_ms=60_000), slow)


def test_the_detector_fed_a_second_at_once_equals_it_fed_trade_by_trade():
    from liqcli.analytics.cascade import LiquidationCascadeDetector
    from liqcli.core.events import AggTrade, Liquidation

    def clock() -> int:
        return 0

    rng = np.random.default_rng(3)
    one, batched = (LiquidationCascadeDetector("BTCUSDT", clock=clock) for _ in range(2))
    t, active = START, 0
    for second in range(400):
        t = START + second * 1000
        liqs = rng.random() < 0.3
        if liqs:  # a liquidation opens the second, as a stepped row would
            ev = Liquidation(
                "binance",
                "BTCUSDT",
                "long",
                60_000.0,
                10.0,
                600_000.0 * rng.random(),
                t,
                "",
                second,
            )
            assert one.feed(ev) == batched.feed(ev)
        else:
            assert one.tick(t) == batched.tick(t)
        if rng.random() < 0.2:
            continue  # a second of tops only
        times = np.sort(rng.integers(t + 1, t + 1000, rng.integers(1, 12)))
        prices = 60_000 * (1 + rng.normal(0, 1e-3, times.size))
        for k, (ts, price) in enumerate(zip(times.tolist(), prices.tolist(), strict=True)):
            one.feed(AggTrade("binance", "BTCUSDT", k, ts, price, 0.1, False))
        batched.feed_second(times[0].item(), prices[0].item(), times[-1].item(), prices[-1].item())
        assert vars(one) == vars(batched), second
        active += one.active
    assert 50 < active < 350  # cascades began and ended: the active branch was fed too
    assert one.state() == batched.state()
    with pytest.raises(ValueError):
        batched.feed_second(t - 5_000, 1.0, t - 5_000, 1.0)  # before the last trade fed


def reference_columns(frame: pl.DataFrame, bucket: float) -> dict[str, np.ndarray]:
    """feature_columns by definition: an OrderFlow fed row by row as the engine feeds it."""
    flow = OrderFlow(vpin_bucket_usd=bucket)
    book = MergedBook()
    names = svc.FLOAT_FIELDS
    out = {name: np.full(frame.height, np.nan) for name in names}
    out["ts"] = np.zeros(frame.height, dtype=np.int64)
    for i, (ts, kind, _, a, b, c, d) in enumerate(frame.iter_rows()):
        if kind == svc.TRADE:
            flow.on_trade(ts, a, b, bool(c))
        elif kind == svc.TOP:
            book.top = svc.BookTop("binance", "BTCUSDT", ts, a, b, c, d)
            flow.on_book(ts, book.levels("bid", 20), book.levels("ask", 20))
        s = flow.snapshot
        out["ts"][i] = s.ts
        for name in names:
            value = getattr(s, name)
            out[name][i] = np.nan if value is None else value
    return out


def test_feature_columns_equal_the_incremental_order_flow_bit_for_bit(tmp_path):
    write_day(tmp_path, 6, trades=8_000)
    frame = svc.tape(Store(tmp_path), settings(), warn=False)
    cols = {n: frame[n].cast(pl.Float64).to_numpy() for n in ("a", "b", "c", "d")}
    got = svc.orderflow.feature_columns(
        frame["ts"].to_numpy(),
        frame["kind"].to_numpy(),
        cols["a"],
        cols["b"],
        cols["c"],
        cols["d"],
        trade_kind=svc.TRADE,
        top_kind=svc.TOP,
        vpin_bucket_usd=20_000.0,
    )
    want = reference_columns(frame, 20_000.0)
    for name, column in want.items():
        assert np.array_equal(got[name], column, equal_nan=True), name


def test_next_true_and_first_from():
    mask = np.array([False, True, False, False, True, False])
    assert next_true(mask).tolist() == [1, 1, 4, 4, 4, 6, 6]
    assert next_true(np.zeros(0, bool)).tolist() == [0]
    values = np.arange(10_000)
    assert first_from(0, 10_000, lambda lo, hi: values[lo:hi] >= 9_000, chunk=7) == 9_000
    assert first_from(5, 10_000, lambda lo, hi: values[lo:hi] < 0, chunk=7) == 10_000
    assert first_from(3, 3, lambda lo, hi: values[lo:hi] >= 0) == 3


def test_a_stored_row_missing_a_value_is_skipped_and_counted(tmp_path, caplog):
    write_day(tmp_path / "clean", 7, trades=6_000)
    write_day(tmp_path / "damaged", 7, trades=6_000)
    damaged = Store(tmp_path / "damaged")
    at = pl.lit(START + 3_600_000).cast(pl.Datetime("ms", "UTC"))
    where = {"exchange": pl.lit("binance"), "symbol": pl.lit("BTCUSDT"), "ts": at}
    damaged.write(
        "agg_trades",
        pl.DataFrame({"trade_id": [10**9, 10**9 + 1], "price": [None, 60_000.0],
                      "qty": [0.5, None], "is_buyer_maker": [True, False]},
                     schema_overrides={"price": pl.Float64, "qty": pl.Float64}).with_columns(**where),
    )  # fmt: skip
    damaged.write(
        "book_tops",
        pl.DataFrame({"update_id": [10**9], "bid": [59_000.0], "bid_qty": [None],
                      "ask": [59_000.1], "ask_qty": [3.0]},
                     schema_overrides={"bid_qty": pl.Float64}).with_columns(**where),
    )  # fmt: skip
    s = settings()
    clean = svc.run_flow(Store(tmp_path / "clean"), s, ("off",), warn=False)
    with caplog.at_level("WARNING", logger="liq.backtest"):
        docs = svc.run_flow(damaged, s, ("off",), warn=False)
    for doc in (*clean, *docs):
        doc.pop("_equity")
    assert docs == clean
    assert "skipped 2 stored agg_trades row(s) with a missing value" in caplog.text
    assert "skipped 1 stored book_tops row(s) with a missing value" in caplog.text


def test_active_share_estimates_the_time_in_a_cascade():
    from liqcli.analytics.cascade import active_share

    t0 = START
    none = np.zeros(0, np.int64)
    assert active_share(none, np.zeros(0), 500_000.0, t0, t0 + 1_000_000) == 0.0
    # $600k in one second at 100 s: hot for the window's 60 s, active for 60 s of quiet more
    burst = np.array([t0 + 100_000])
    assert active_share(burst, np.array([600_000.0]), 500_000.0, t0, t0 + 1_000_000) == 0.12
    assert active_share(burst, np.array([400_000.0]), 500_000.0, t0, t0 + 1_000_000) == 0.0
    # a year: coarser slots, about the same answer
    year = 365 * 86_400_000
    share = active_share(burst, np.array([600_000.0]), 500_000.0, t0, t0 + year)
    assert 0 < share < 1e-5


@pytest.mark.parametrize(("bursts", "gated"), [(10, True), (400, False)])
def test_the_command_feeds_a_mostly_cascading_range_in_full(tmp_path, monkeypatch, bursts, gated):
    write_day(tmp_path, 11, trades=4_000)
    write_liquidations(tmp_path, 11, bursts=bursts)
    used = []
    monkeypatch.setattr(svc._Driver, "feed_gated", lambda self, *a: used.append("gated"))
    monkeypatch.setattr(svc._Driver, "feed_tape", lambda self, *a: used.append("full"))
    svc.run_flow(Store(tmp_path), settings(modes=("0", "cascade")), ("off",), warn=False)
    assert used == ["gated" if gated else "full"]
