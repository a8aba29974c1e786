"""``liq backtest`` of the seed's order-flow modes: the same ``PaperSession`` (Engine, one shared
OrderFlow, one SeedMode and SimBroker per mode) as ``liq paper``, driven by stored events.

Data (``--data``):
- ``session:NAME``: the market data a ``liq paper --record --session NAME`` run consumed, over
  the session's time range (its ``paper_state`` rows), replayed in delivery order
  (``recorded_events``): the same trades as the live run. Funding comes, as live, from the
  recorded mark prices.
- ``trades``: stored ``agg_trades`` merged in time order with stored ``book_tops`` (archive
  bookTicker or recorded), ``book_depth`` (snapshots recorded live, else the archive's depth
  bands as levels: ``archive_snapshots``) and, with
  ``--funding on``, the stored ``funding`` rows, settled at their real times
  (``SimBroker.settle_funding``: rate x the row's mark x signed qty). Without mark prices in the
  tape, the broker's mark is the last trade price, checked for liquidation once per second of
  event time. For the ``cascade`` mode, the stored ``liquidations`` of the venue traded on
  (``--exchange``, as live: ``liq paper``'s cascade mode hears that venue's forceOrder stream),
  journaled rows included, join the tape after the trades of their millisecond (the price
  first, as ``liq cascade --replay`` orders them).

How ``--data trades`` is fed (``_Driver.feed_gated``): the features of every row are computed
at once with numpy (``orderflow.feature_columns``, bit for bit what the incremental
``OrderFlow`` holds after each row), and the Engine, modes and brokers are stepped only at the
rows where a mode could act (``SeedMode.next_wake``: the signal may clear the entry score, an
exit condition may hold, a mark may reach a liquidation price), at funding rows and at the
first row of each minute; the rows between are caught up exactly (latest book top, trade and
mark; the open positions' adverse excursion; the cascade mode's detector takes the skipped
trades a second at a time, ``CascadeMode.skipped_rows``, and the mode wakes at every liquidation
and, during a cascade, at each new second). The results equal feeding every row (``feed_tape``,
which runs when the book has depth snapshots, or when the stored liquidations would keep the
cascade mode's detector in a cascade for most of the range: then nearly every row is woken and
the full feed is cheaper; tests/test_gated_feed.py).

Equity (balance + unrealised PnL at the broker's mark) is sampled once per minute of event
time; the metrics are computed from that series (``liqcli.analytics.metrics``), plus
``sharpe_1m``: mean / std of the 1-minute returns x sqrt(525,600), for runs too short for daily
returns. Open positions at the end stay open (their PnL is in the final equity, not a trade).
"""

from __future__ import annotations

import itertools
import logging
import statistics
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Protocol

import numpy as np
import polars as pl

from liqcli.analytics import metrics, orderflow
from liqcli.analytics.cascade import active_share, thresholds_for
from liqcli.analytics.orderflow import FLOAT_FIELDS, OrderFlow, toxicity
from liqcli.core.events import AggTrade, BookSnapshot, BookTop, Liquidation
from liqcli.core.timeutil import iso_ms
from liqcli.errors import LiqError, UsageError
from liqcli.services.paper import DYNAMIC, MODES, PaperConfig, PaperSession
from liqcli.sources.recorder import _EVENTS_OF, LIVE, recorded_events
from liqcli.trading.costs import Fees
from liqcli.trading.engine import Engine
from liqcli.trading.sim import SimBroker
from liqcli.trading.wake import Columns, first_from, next_true

log = logging.getLogger("liq.backtest")

MINUTE_MS = 60_000
MARK_EVERY_MS = 1_000
DEFAULT_SLIPPAGE_BPS = 2.0  # liq paper's
FLOW_PARAMS = {"vpin_bucket_usd": 50_000.0}
# The seed's success criteria for a dynamic engine against fixed leverage.
SHARPE_GAIN = 0.10
DRAWDOWN_CUT = 0.20


@dataclass(frozen=True)
class FlowSettings:
    symbol: str
    modes: tuple[str, ...]
    start_ms: int
    end_ms: int
    data: str  # "trades" | "session:NAME"
    exchange: str = "binance"
    capital: float = 10_000.0
    leverage: float | None = None  # None: each mode's default (5/3/3/5)
    fees: Fees = field(default_factory=lambda: Fees(0.0002, 0.0005))
    slippage_bps: float = DEFAULT_SLIPPAGE_BPS
    funding: bool = True
    params: tuple[tuple[str, Any], ...] = ()

    def param(self, name: str) -> Any:
        return dict(self.params).get(name, FLOW_PARAMS[name])


def check_params(params: dict[str, Any]) -> None:
    unknown = set(params) - set(FLOW_PARAMS)
    if unknown:
        raise UsageError(
            f"the order-flow modes have no parameter {sorted(unknown)[0]!r}: "
            f"{', '.join(FLOW_PARAMS)} (leverage: --leverage, --dynamic-leverage)"
        )
    bucket = params.get("vpin_bucket_usd", 1.0)
    if not isinstance(bucket, int | float) or not bucket > 0:
        raise UsageError(f"--param vpin_bucket_usd must be a positive number, got {bucket!r}")


def parse_modes(strategy: str) -> tuple[str, ...]:
    """``0``, ``cascade``, ``all`` (the seed's four: no liquidations needed) or a list such as
    ``0,1,cascade`` / ``all,cascade``."""
    modes: list[str] = []
    for name in (m.strip() for m in strategy.split(",")):
        if name == "all":
            modes += [m for m in MODES if m != "cascade"]
        elif name in MODES:
            modes.append(name)
        else:
            raise UsageError(f"unknown order-flow mode {name!r}: 0, 1, 2, 3, cascade or all")
    if len(set(modes)) != len(modes):
        raise UsageError(f"mode list {strategy!r}: give each mode once, e.g. 0,1,cascade")
    return tuple(modes)


def parse_dynamic(text: str) -> str:
    if text not in DYNAMIC:
        raise UsageError(f"invalid --dynamic-leverage {text!r}: {', '.join(DYNAMIC)}")
    return text


# ------------------------------------------------------------------------------ data


def session_events(store: Any, settings: FlowSettings) -> Iterator[Any]:
    name = settings.data.split(":", 1)[1]
    if "cascade" in settings.modes:
        recorded = (
            store.scan(
                "liquidations", start=settings.start_ms, end=settings.end_ms, symbol=settings.symbol
            )
            .filter(pl.col("seq").is_not_null())
            .select(pl.len())
            .collect()
            .item()
        )
        if not recorded:
            raise LiqError(
                f"session {name!r} recorded no liquidations for {settings.symbol} (the cascade "
                f"mode reads them): record one with the cascade mode, `liq paper "
                f"{settings.symbol} --modes 0,1,2,3,cascade --session NAME --record`"
            )
    events = recorded_events(
        store, symbols=[settings.symbol], start=settings.start_ms, end=settings.end_ms
    )
    first = next(events, None)
    if first is None:
        raise LiqError(
            f"session {name!r} has no recorded market data for {settings.symbol}: "
            f"it ran without --record (`liq paper {settings.symbol} --session NAME --record`)"
        )
    yield first
    yield from events


# A run of idle rows this short is stepped row by row: catching it up costs a dozen numpy
# calls, about as much as stepping 5-10 rows (measured on a cascade mode's day, where the
# gaps are the rows within each second of a cascade); exact either way (the rows are idle).
STEP_IDLE_BELOW = 8


def _days(settings: FlowSettings) -> str:
    from liqcli.services.backtest import fetch_range  # whole days covering the range

    return fetch_range(settings.start_ms, settings.end_ms)


def _scan(
    store: Any, name: str, settings: FlowSettings, window: tuple[int, int] | None = None, **extra
) -> pl.LazyFrame:
    start, end = window if window is not None else (settings.start_ms, settings.end_ms)
    return store.scan(
        name, start=start, end=end, exchange=settings.exchange, symbol=settings.symbol, **extra
    ).with_columns(pl.col(pl.Datetime).dt.epoch("ms"))


# Kinds of the merged tape, in the order they are applied within one millisecond.
FUNDING, DEPTH, TOP, TRADE, LIQUIDATION = 0, 1, 2, 3, 4

# The gated feed takes a long tape in parts of about this many rows (whole hours of it): its
# feature columns cost ~300 bytes a row, and a day of BTCUSDT bookTicker can be 20-40M rows.
# Measured on 3.75M rows: one part 1.2 GB peak RSS; parts of 2^20 rows 0.48 GB, ~5 % more CPU;
# of 2^19, 0.32 GB but ~25 % more CPU (each part's scans and merge).
PART_ROWS = 1 << 20
HOUR_MS = 3_600_000


def _parts(store: Any, settings: FlowSettings, window: tuple[int, int]) -> list[pl.LazyFrame]:
    """The tape's datasets over ``window`` as tape rows (ts, kind, id, a, b, c, d)."""
    trades = _scan(store, "agg_trades", settings, window).select(
        "ts",
        pl.lit(TRADE, pl.Int8).alias("kind"),
        pl.col("trade_id").alias("id"),
        pl.col("price").alias("a"),
        pl.col("qty").alias("b"),
        pl.col("is_buyer_maker").cast(pl.Float64).alias("c"),
        pl.lit(None, pl.Float64).alias("d"),
    )
    tops = _scan(store, "book_tops", settings, window).select(
        "ts",
        pl.lit(TOP, pl.Int8).alias("kind"),
        pl.col("update_id").fill_null(0).alias("id"),
        pl.col("bid").alias("a"),
        pl.col("bid_qty").alias("b"),
        pl.col("ask").alias("c"),
        pl.col("ask_qty").alias("d"),
    )
    parts = [trades, tops]
    if settings.funding:
        parts.append(
            _scan(store, "funding", settings, window).select(
                "ts",
                pl.lit(FUNDING, pl.Int8).alias("kind"),
                pl.lit(0, pl.Int64).alias("id"),
                pl.col("funding_rate").alias("a"),
                pl.col("mark_price").alias("b"),
                pl.lit(None, pl.Float64).alias("c"),
                pl.lit(None, pl.Float64).alias("d"),
            )
        )
    if "cascade" in settings.modes:
        parts.append(liquidation_rows(store, settings, window))
    return parts


def tape(store: Any, settings: FlowSettings, *, warn: bool = True) -> pl.DataFrame:
    """agg_trades + book_tops (+ funding) as one frame sorted by (ts, kind): Polars does the
    merge. Book snapshots recorded live come separately (``depth_snapshots``). ``warn``: a
    warning when no funding is stored (``--quiet`` turns it off)."""
    _, parts = tape_parts(store, settings, warn=warn, part_rows=None)
    (frame,) = parts
    return frame


def tape_parts(
    store: Any,
    settings: FlowSettings,
    *,
    warn: bool = True,
    part_rows: int | None = PART_ROWS,
    unit_ms: int = HOUR_MS,
) -> tuple[int, Iterator[pl.DataFrame]]:
    """``tape`` in parts of whole hours (``unit_ms``), each of about ``part_rows`` rows at most
    (an hour with more is a part alone; None: one part), read one at a time: (the rows stored,
    the parts).
    The datasets the modes need are checked first (a missing one is a one-line error naming
    the command that gets it); rows missing a needed value are skipped and counted in one
    warning once every part has been read."""
    counts = [
        lf.select((pl.col("ts") // unit_ms).alias("hour")).group_by("hour").len()
        for lf in _parts(store, settings, (settings.start_ms, settings.end_ms))
    ]
    counts = pl.collect_all(counts)
    stored = [int(c["len"].sum()) for c in counts]
    _check_stored(settings, stored, warn)
    rows = sum(stored)
    if part_rows is None:
        windows = [(settings.start_ms, settings.end_ms)]
    else:
        hourly = pl.concat(counts).group_by("hour").agg(pl.col("len").sum()).sort("hour")
        windows = _windows(
            hourly["hour"].to_list(), hourly["len"].to_list(), part_rows, unit_ms, settings
        )
    return rows, _read_parts(store, settings, windows)


def _windows(
    hours: list[int], counts: list[int], part_rows: int, unit_ms: int, settings: FlowSettings
) -> list[tuple[int, int]]:
    """Consecutive hours (of ``unit_ms``) grouped into [start, end) windows of at most
    ``part_rows`` rows (an hour with more alone), covering the range."""
    edges = [settings.start_ms]
    rows = 0
    for hour, count in zip(hours, counts, strict=True):
        if rows and rows + count > part_rows:
            edges.append(max(hour * unit_ms, settings.start_ms))
            rows = 0
        rows += count
    edges.append(settings.end_ms)
    return list(itertools.pairwise(edges))


def _read_parts(
    store: Any, settings: FlowSettings, windows: list[tuple[int, int]]
) -> Iterator[pl.DataFrame]:
    skipped = {"agg_trades": 0, "book_tops": 0}
    for window in windows:
        frames = [_in_order(f) for f in pl.collect_all(_parts(store, settings, window))]
        # a row missing a value the engine needs is skipped and counted, never the whole run
        frames[0], dropped = _complete(frames[0], ("ts", "a", "b", "c"))
        skipped["agg_trades"] += dropped
        frames[1], dropped = _complete(frames[1], ("ts", "a", "b", "c", "d"))
        skipped["book_tops"] += dropped
        yield _merge(frames)
    for dataset, count in skipped.items():
        if count:
            log.warning(
                "skipped %d stored %s row(s) with a missing value (damaged data?)", count, dataset
            )


def _check_stored(settings: FlowSettings, counts: list[int], warn: bool) -> None:
    """The rows stored of each dataset ``_parts`` reads, in its order: a missing one the modes
    need is a one-line error naming how to get it; missing funding a warning (``warn``)."""
    from liqcli.services.backtest import how_to_get

    sym, venue = settings.symbol, settings.exchange
    on = "" if venue == "binance" else f" on {venue}"
    if counts[0] == 0:
        raise LiqError(
            f"no agg_trades stored for {sym}{on} in the range: "
            + how_to_get(
                venue,
                sym,
                "agg_trades",
                f"liq fetch {sym} --dataset agg_trades --archive {_days(settings)}",
            )
        )
    if counts[1] == 0:
        hint = how_to_get(
            venue,
            sym,
            "book_tops",
            f"liq fetch {sym} --dataset book_ticker --archive {_days(settings)}",
        )
        if venue == "binance":
            hint += f" or record them with `liq paper {sym} --record`"
        raise LiqError(
            f"no book_tops stored for {sym}{on} in the range (the modes read the book): {hint}"
        )
    if warn and settings.funding and counts[2] == 0:
        command = f"liq fetch {sym} --dataset funding {_days(settings)}"
        log.warning(
            "no funding stored for %s%s in the range: none is charged (%s, or --funding off)",
            sym,
            on,
            f"`{command}`" if venue == "binance" else how_to_get(venue, sym, "funding", command),
        )
    if "cascade" in settings.modes and counts[-1] == 0:
        raise LiqError(
            f"no {settings.exchange} liquidations stored for {settings.symbol} in the range "
            f"(the cascade mode reads them; liq fetch cannot get them, the venues publish no "
            f"history): record them live with `liq watch {settings.symbol} -e "
            f"{settings.exchange}` (or `liq paper {settings.symbol} --record`)"
        )


def _complete(frame: pl.DataFrame, needed: tuple[str, ...]) -> tuple[pl.DataFrame, int]:
    """The rows with every ``needed`` value, and how many were not."""
    kept = frame.drop_nulls(list(needed))
    return kept, frame.height - kept.height


def _in_order(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` sorted by (ts, id); stored data usually is already, and checking is far cheaper
    than sorting millions of rows again."""
    step, same = pl.col("ts").diff(), pl.col("id").diff()
    ordered = frame.select(((step > 0) | ((step == 0) & (same >= 0))).all()).item()
    return frame if ordered else frame.sort("ts", "id")


def _merge(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Frames each sorted by (ts, id), of one kind each, merged into one sorted by (ts, kind)
    with each frame's order kept within a (ts, kind): a merge on ts·8 + kind, not a sort."""
    keyed = [
        f.with_columns(pl.col(pl.Float32).cast(pl.Float64), _key=pl.col("ts") * 8 + pl.col("kind"))
        for f in frames
        if f.height
    ]
    if not keyed:
        return pl.concat(frames, how="vertical_relaxed")
    merged = keyed[0]
    for f in keyed[1:]:
        merged = merged.merge_sorted(f.cast(merged.schema), key="_key")
    return merged.drop("_key")


def liquidation_rows(
    store: Any, settings: FlowSettings, window: tuple[int, int] | None = None
) -> pl.LazyFrame:
    """Stored (and journaled: ``liq watch`` may be running) liquidations of the venue traded on
    as tape rows: id = received_ts, a = price, b = qty, c = 1.0 for a long liquidated, else
    0.0, d = notional_usd."""
    return _scan(store, "liquidations", settings, window, include_journal=True).select(
        "ts",
        pl.lit(LIQUIDATION, pl.Int8).alias("kind"),
        pl.col("received_ts").fill_null(0).cast(pl.Int64).alias("id"),
        pl.col("price").alias("a"),
        pl.col("qty").alias("b"),
        (pl.col("side") == "long").cast(pl.Float64).alias("c"),
        pl.col("notional_usd").alias("d"),
    )


def depth_snapshots(store: Any, settings: FlowSettings) -> list[tuple[int, Any]]:
    """(ts, BookSnapshot) in time order: the snapshots recorded live when there are any, else
    the archive's depth bands (``archive_snapshots``)."""
    live = live_snapshots(store, settings)
    return live if live else archive_snapshots(store, settings)


def archive_snapshots(store: Any, settings: FlowSettings) -> list[tuple[int, Any]]:
    """data.binance.vision bookDepth bands as book levels: the band between k-1 % and k % from
    mid becomes one level, its qty the band's depth (depth_k - depth_k-1, the archive's depth is
    cumulative) at its average price (notional over depth of the band). ``update_id`` 0: the
    bookTicker stays the best bid/ask, these are the deeper levels (engine.MergedBook)."""
    frame = (
        _scan(store, "book_depth", settings, source="archive")
        .select("ts", "side", "level", "depth", "notional")
        .drop_nulls()
        .sort("ts", "side", "level")
        .with_columns(
            dq=pl.col("depth").diff().over("ts", "side").fill_null(pl.col("depth")),
            dn=pl.col("notional").diff().over("ts", "side").fill_null(pl.col("notional")),
        )
        .filter(pl.col("dq") > 0)
        .with_columns(price=pl.col("dn") / pl.col("dq"))
        .collect()
    )
    out: list[tuple[int, Any]] = []
    book: dict[str, list] = {"bid": [], "ask": []}
    current = None
    for ts, side, price, qty in frame.select("ts", "side", "price", "dq").iter_rows():
        if ts != current and current is not None:
            out.append((current, _band_snapshot(settings, current, book)))
            book = {"bid": [], "ask": []}
        current = ts
        book[side].append((price, qty))
    if current is not None:
        out.append((current, _band_snapshot(settings, current, book)))
    return out


def _band_snapshot(settings: FlowSettings, ts: int, book: dict[str, list]) -> BookSnapshot:
    return BookSnapshot(
        settings.exchange, settings.symbol, ts, 0, tuple(book["bid"]), tuple(book["ask"])
    )


def live_snapshots(store: Any, settings: FlowSettings) -> list[tuple[int, Any]]:
    frame = (
        _scan(store, "book_depth", settings, source=LIVE)
        .filter(pl.col("seq").is_not_null())
        .sort("seq", "side", "level", maintain_order=True)
        .collect()
    )
    if frame.height == 0:
        return []
    return sorted(((e.ts, e) for _, e in _EVENTS_OF["book_depth"](frame)), key=lambda p: p[0])


# ------------------------------------------------------------------------------ running


class _Run:
    """One PaperSession (one dynamic-leverage engine) and its per-minute equity samples."""

    def __init__(
        self, settings: FlowSettings, dynamic: str, engine: Engine, flow: OrderFlow | None
    ) -> None:
        leverage = {m: settings.leverage for m in settings.modes} if settings.leverage else {}
        config = PaperConfig(
            symbol=settings.symbol,
            modes=settings.modes,
            capital=settings.capital,
            leverage=leverage,
            dynamic=dynamic,
            fees=settings.fees,
            slippage_bps=settings.slippage_bps,
            session=f"backtest-{dynamic}",
            vpin_bucket_usd=float(settings.param("vpin_bucket_usd")),
        )
        config.validate()
        self.dynamic = dynamic
        self.session = PaperSession(config, engine=engine, flow=flow)
        self.brokers = list(self.session.brokers.items())
        self.closed: dict[str, list[dict]] = {m: [] for m in settings.modes}
        self.ts: list[int] = []
        self.equity: dict[str, list[float]] = {m: [] for m in settings.modes}
        self.exposed: dict[str, int] = dict.fromkeys(settings.modes, 0)

    def sample(self, ts: int, symbol: str) -> None:
        self.ts.append(ts)
        for mode, broker in self.brokers:
            self.equity[mode].append(broker.equity())
            if broker.position(symbol).qty:
                self.exposed[mode] += 1
        for record in self.session.take_closed():
            self.closed[record["mode"]].append(record)


def _rows(
    frame: pl.DataFrame, chunk: int = 65_536, done: Callable[[int], None] | None = None
) -> Iterator[tuple]:
    """The frame's rows as tuples, built from its columns a chunk at a time (Python lists
    zipped: much cheaper per row than ``iter_rows``, and memory bounded by the chunk).
    ``done(n)`` hears of each chunk once its rows are consumed (progress, no per-row cost)."""
    names = frame.columns
    for offset in range(0, frame.height, chunk):
        part = frame.slice(offset, chunk)
        yield from zip(*(part.get_column(name).to_list() for name in names), strict=True)
        if done is not None:
            done(part.height)


class FeedProgress(Protocol):
    """What a long feed reports as it goes (the CLI draws it on stderr): ``stage`` names the
    step under way before the events are fed (reading the tape, computing the features: most
    of a gated run's time; ``lasting``: shown only where it can vanish, e.g. a terminal's
    bar, not a log a failure would then not end in one line), then ``planned`` and ``advance``
    count the events fed."""

    def stage(self, text: str, *, lasting: bool = True) -> None: ...
    def planned(self, runs: int) -> None: ...
    def advance(self, n: int) -> None: ...


class _Driver:
    """Feeds one event stream to every run, samples equity each minute of event time.

    Every run (dynamic-leverage engine) is a PaperSession on one shared Engine and OrderFlow:
    the book view and the features depend on the market events alone, so they are computed
    once per event, not once per run; each run keeps its own strategies and brokers, stepped
    in the same order on the same state as alone (the results are bit-identical)."""

    def __init__(self, settings: FlowSettings, dynamics: Sequence[str]) -> None:
        self.settings = settings
        self.engine = Engine()
        self.runs: list[_Run] = []
        for d in dynamics:
            flow = self.runs[0].session.flow if self.runs else None
            self.runs.append(_Run(settings, d, self.engine, flow))
        self.steps = [self.engine.step]
        self.events = 0
        self.stepped = 0  # rows the gated feed stepped (the others it proved idle)
        self.first_ts: int | None = None
        self.last_ts = 0
        self.first_price: float | None = None
        self.last_price: float | None = None
        self.prices: list[float] = []
        self._next_sample = 0
        self._next_mark = 0
        self._row_hooks: list[Any] = []  # the gated feed's strategies that see skipped rows

    def _tick(self, ts: int) -> None:
        if self.first_ts is None:
            self.first_ts = ts
            self._next_sample = ts - ts % MINUTE_MS + MINUTE_MS
        if ts >= self._next_sample:
            self._sample()
            self._next_sample = ts - ts % MINUTE_MS + MINUTE_MS
        if ts > self.last_ts:
            self.last_ts = ts

    def _sample(self) -> None:
        for run in self.runs:
            run.sample(self.last_ts or self.first_ts or 0, self.settings.symbol)
        self.prices.append(self.last_price or self.first_price or 0.0)

    def feed(self, events: Iterable[Any]) -> None:
        """Recorded events, exactly as delivered (session replays)."""
        steps = self.steps
        for event in events:
            if self.first_ts is None:
                for run in self.runs:
                    run.session.started_ts = event.ts  # what PaperSession.step would set
            self._tick(event.ts)
            price = getattr(event, "price", None)
            if type(event) is AggTrade:
                self.last_price = price
                if self.first_price is None:
                    self.first_price = price
            for step in steps:
                step(event)
            self.events += 1

    def feed_tape(
        self,
        parts: Iterable[pl.DataFrame],
        snapshots: list[tuple[int, Any]],
        progress: FeedProgress | None = None,
        rows: int | None = None,
    ) -> None:
        """The merged stored tape (``tape``, or its consecutive parts: ``tape_parts``, ``rows``
        in all) with the book snapshots; funding rows and the per-second trade mark go to the
        brokers directly (they are not market events the strategies decide on). The hot loop:
        per-event bookkeeping inlined, each run's Engine stepped directly."""
        parts = iter(parts)
        head = next((f for f in parts if f.height), None)
        if head is None:
            return
        symbol, exchange = self.settings.symbol, self.settings.exchange
        first = int(head["ts"][0])
        trades = head.filter(pl.col("kind") == TRADE)["a"]
        self.first_price = float(trades[0]) if len(trades) else None
        first_price = self.first_price
        for run in self.runs:
            run.session.started_ts = first  # what PaperSession.step would set
        self._tick(first)
        steps = self.steps
        one = steps[0] if len(steps) == 1 else None
        brokers = [b for run in self.runs for _, b in run.brokers]
        snaps = iter(snapshots)
        snap = next(snaps, (None, None))
        snap_ts = snap[0] if snap[0] is not None else 1 << 62
        next_sample, next_mark = self._next_sample, self._next_mark
        last_ts = self.last_ts
        events = 0
        last_price = self.last_price
        done = progress.advance if progress is not None else None
        if progress is not None:  # the tape's length, in events
            progress.planned(len(snapshots) + (rows if rows is not None else 0))

        def tape_rows(head: pl.DataFrame | None) -> Iterator[tuple]:
            for frame in itertools.chain((head,), parts):
                head = None  # a part is let go once its rows are fed
                if progress is not None and rows is None:
                    progress.planned(frame.height)
                yield from _rows(frame, done=done)

        feed, head = tape_rows(head), None
        for ts, kind, id_, a, b, c, d in feed:
            while snap_ts <= ts:
                self.last_ts, self.last_price = last_ts, last_price
                self._tick(snap_ts)
                next_sample, last_ts = self._next_sample, self.last_ts
                for step in steps:
                    step(snap[1])
                events += 1
                snap = next(snaps, (None, None))
                snap_ts = snap[0] if snap[0] is not None else 1 << 62
            if ts >= next_sample:
                self.last_ts, self.last_price = last_ts, last_price
                self._sample()
                next_sample = ts - ts % MINUTE_MS + MINUTE_MS
            if ts > last_ts:
                last_ts = ts
            if kind == TRADE:
                event: Any = AggTrade(exchange, symbol, id_, ts, a, b, bool(c))
                last_price = a
                if first_price is None:  # the first part had no trade
                    first_price = self.first_price = a
                if ts >= next_mark:
                    next_mark = ts - ts % MARK_EVERY_MS + MARK_EVERY_MS
                    for broker in brokers:
                        broker.on_mark(symbol, ts, a)
            elif kind == TOP:
                event = BookTop(exchange, symbol, ts, a, b, c, d, id_)
            elif kind == LIQUIDATION:
                event = Liquidation(
                    exchange, symbol, "long" if c else "short", a, b, d, ts, "", id_
                )
            else:  # FUNDING: rate a, mark b
                for broker in brokers:
                    broker.settle_funding(symbol, ts, a, b)
                continue
            if one is not None:
                one(event)
            else:
                for step in steps:
                    step(event)
            events += 1
        self.last_ts, self.last_price = last_ts, last_price
        self._next_sample, self._next_mark = next_sample, next_mark
        while snap[0] is not None:
            self._tick(snap[0])
            for step in steps:
                step(snap[1])
            events += 1
            snap = next(snaps, (None, None))
        self.events += events
        if progress is not None:
            progress.advance(len(snapshots))

    # -- the gated feed: only the events where a strategy can act ----------------------------

    def can_gate(self, snapshots: Sequence[Any]) -> bool:
        """Whether ``feed_gated`` applies: every strategy names where it can act
        (``next_wake``) and the book is tops only (the features of depth snapshots are not
        vectorised: OBI over merged levels)."""
        return not snapshots and all(
            getattr(slot.strategy, "next_wake", None) is not None for slot in self.engine.slots
        )

    def feed_gated(
        self,
        parts: Iterable[pl.DataFrame],
        progress: FeedProgress | None = None,
        rows: int | None = None,
    ) -> None:
        """``feed_tape``'s results, bit for bit, from stepping only the rows where something
        can happen; the tape comes in consecutive parts (``tape_parts``: memory bounded by a
        part, not the day), ``rows`` of them in all (progress). The features of every row of a
        part are computed at once (``orderflow.feature_columns``, carried on from the previous
        part); each strategy names the next row at which it could act (``next_wake``), each
        broker with a position the next mark that could liquidate it; funding rows and the
        first row of each minute (the equity sample) are always stepped. Before a stepped row,
        and at a part's end, the rows skipped since the last one are caught up: the latest
        book top and trade are stepped (provably idle for every strategy, they leave the
        engine, book and brokers as all the rows would), the latest per-second mark is given
        to the brokers, and each open position's adverse excursion takes the skipped extremes
        of the mid (``SeedMode.skipped``); a strategy whose own state reads every trade (the
        cascade mode's detector) is given the skipped rows' times and trade prices
        (``skipped_rows``) before the latest top and trade are stepped."""
        # the features' state from one part to the next (the session's OrderFlow is not fed:
        # its snapshot takes each stepped row's features, ``_load_features``)
        carried = OrderFlow(vpin_bucket_usd=float(self.settings.param("vpin_bucket_usd")))
        self.engine.observers[:] = [self._load_features]  # the columns replace OrderFlow
        gates = [
            (slot.strategy, slot.broker, slot.ctx)
            for slot in self.engine.slots
            if isinstance(slot.broker, SimBroker)
        ]
        self._row_hooks = [s.skipped_rows for s, _, _ in gates if hasattr(s, "skipped_rows")]
        if progress is not None and rows is not None:
            progress.planned(rows)
        edge: tuple[int, int] | None = None  # the last row's minute and last trade's second
        for frame in parts:
            if progress is not None and edge is None:  # then the events fed show the way
                total = rows if rows is not None else frame.height
                parted = ", a part at a time" if frame.height < total else ""
                progress.stage(f"computing the features of {total:,} events{parted}")
            if progress is not None and rows is None:
                progress.planned(frame.height)
            edge = self._feed_part(frame, carried, gates, edge, progress)
            # one part in memory at a time: nothing of this one is held while the next is read
            frame = self._tape = self._cols = self._marks = None

    def _feed_part(
        self,
        frame: pl.DataFrame,
        carried: OrderFlow,
        gates: list[tuple],
        edge: tuple[int, int] | None,
        progress: FeedProgress | None,
    ) -> tuple[int, int] | None:
        """One part of the tape through the gated feed; returns the minute of its last row and
        the second of the last trade so far (where the next part's first sample and mark are)."""
        n = frame.height
        if n == 0:
            return edge
        symbol = self.settings.symbol
        ts = frame["ts"].to_numpy()
        kind = frame["kind"].to_numpy()
        ids = frame["id"].to_numpy()
        a, b, c, d = (frame[name].cast(pl.Float64).to_numpy() for name in ("a", "b", "c", "d"))
        features = orderflow.feature_columns(
            ts, kind, a, b, c, d, trade_kind=TRADE, top_kind=TOP, flow=carried
        )
        cols = Columns(ts, features)
        self._tape = (ts, kind, ids, a, b, c, d)
        self._cols = cols
        self._row = 0
        trade_rows = np.flatnonzero(kind == TRADE)
        second = ts[trade_rows] // MARK_EVERY_MS
        new_second = np.empty(second.size, bool)
        if second.size:
            new_second[0] = edge is None or int(second[0]) != edge[1]
            np.not_equal(second[1:], second[:-1], out=new_second[1:])
        marks = trade_rows[new_second]
        self._marks = (marks, a[marks])
        minute = ts // MINUTE_MS
        always = (kind != TRADE) & (kind != TOP)
        always[1:] |= minute[1:] != minute[:-1]  # the row that samples the equity
        if edge is not None:
            always[0] |= int(minute[0]) != edge[0]
        always_next = next_true(always)
        woken: list[tuple | None] = [None] * len(gates)  # row numbers of this part
        liquidates: list[tuple | None] = [None] * len(gates)  # each position's liquidation row
        trades = a[trade_rows]
        if self.first_price is None and trades.size:
            self.first_price = float(trades[0])
        if edge is None:  # the tape's first row
            first = int(ts[0])
            for run in self.runs:
                run.session.started_ts = first
            self._tick(first)
        reported = 0
        i = 0
        while i < n:
            w = int(always_next[i])
            for g, (strategy, broker, ctx) in enumerate(gates):
                pos = broker.position(symbol)
                key = (
                    pos.qty,
                    pos.entry_price,
                    pos.margin,
                    pos.fees,
                    pos.funding,
                    strategy.wake_key(),
                )
                cached = woken[g]
                if cached is None or cached[0] != key or cached[1] < i:
                    at = strategy.next_wake(cols, i, ctx)
                    if pos.qty != 0.0 and at > i:
                        # found once per position (a cascade asks every second)
                        liq = liquidates[g]
                        if liq is None or liq[0] != key[:5] or liq[1] < i:
                            liq = liquidates[g] = (key[:5], self._liquidation_row(broker, i, n))
                        at = min(at, liq[1])
                    cached = woken[g] = (key, at)
                if cached[1] < w:
                    w = cached[1]
            if w > i:
                self._catch_up(i, min(w, n), gates)
            if w >= n:
                break
            self._feed_row(w)
            i = w + 1
            if progress is not None and i - reported >= 65_536:
                progress.advance(i - reported)
                reported = i
        if progress is not None:
            progress.advance(n - reported)
        last_second = int(second[-1]) if second.size else (edge[1] if edge is not None else -1)
        return int(minute[-1]), last_second

    def _liquidation_row(self, broker: SimBroker, start: int, end: int) -> int:
        """The first mark row in [start, end) at which ``broker``'s position is liquidated."""
        price = broker.liquidation_price(self.settings.symbol)
        if price is None:
            return end
        rows, marks = self._marks
        lo, hi = np.searchsorted(rows, [start, end])
        long = broker.position(self.settings.symbol).qty > 0
        k = first_from(
            int(lo),
            int(hi),
            lambda x, y: marks[x:y] <= price if long else marks[x:y] >= price,
        )
        return int(rows[k]) if k < hi else end

    def _catch_up(self, start: int, end: int, gates: list[tuple]) -> None:
        """Rows [start, end) were proved idle: leave everything as feeding them would."""
        if end - start <= STEP_IDLE_BELOW:  # cheaper stepped than caught up with numpy
            for row in range(start, end):
                self._feed_row(row)
            return
        ts, kind, *_ = self._tape
        part = kind[start:end]
        tops = np.flatnonzero(part == TOP)
        trades = np.flatnonzero(part == TRADE)
        last_top = start + int(tops[-1]) if tops.size else None
        last_trade = start + int(trades[-1]) if trades.size else None
        symbol = self.settings.symbol
        rows, marks = self._marks
        k = int(np.searchsorted(rows, end)) - 1
        if k >= 0 and rows[k] >= start and rows[k] != last_trade:
            at = int(ts[rows[k]])  # the last mark of the rows, given now (its trade is idle)
            self._next_mark = at - at % MARK_EVERY_MS + MARK_EVERY_MS
            for run in self.runs:
                for _, broker in run.brokers:
                    broker.on_mark(symbol, at, float(marks[k]))
        if self._row_hooks:  # strategies whose own state reads every trade (the cascade mode)
            is_trade = part == TRADE
            for hook in self._row_hooks:
                hook(ts[start:end], is_trade, self._tape[3][start:end], self.settings.exchange)
        lowest = highest = None
        for strategy, broker, ctx in gates:
            if broker.position(symbol).qty != 0.0:
                if lowest is None:
                    mid = self._cols.mid[start:end]
                    lowest, highest = float(mid.min()), float(mid.max())
                strategy.skipped(ctx, lowest, highest)
        synced = sorted(r for r in (last_top, last_trade) if r is not None)
        skipped = end - start - len(synced)
        self.events += skipped
        self.engine.events += skipped
        for row in synced:
            self._feed_row(row)

    def _feed_row(self, row: int) -> None:
        """One row of the tape, as ``feed_tape`` applies it."""
        ts_, kind_, ids, a_, b_, c_, d_ = self._tape
        ts, kind, id_ = int(ts_[row]), int(kind_[row]), int(ids[row])
        a, b, c, d = float(a_[row]), float(b_[row]), float(c_[row]), float(d_[row])
        symbol, exchange = self.settings.symbol, self.settings.exchange
        if ts >= self._next_sample:
            self._sample()
            self._next_sample = ts - ts % MINUTE_MS + MINUTE_MS
        if ts > self.last_ts:
            self.last_ts = ts
        if kind == TRADE:
            event: Any = AggTrade(exchange, symbol, id_, ts, a, b, bool(c))
            self.last_price = a
            if ts >= self._next_mark:
                self._next_mark = ts - ts % MARK_EVERY_MS + MARK_EVERY_MS
                for run in self.runs:
                    for _, broker in run.brokers:
                        broker.on_mark(symbol, ts, a)
        elif kind == TOP:
            event = BookTop(exchange, symbol, ts, a, b, c, d, id_)
        elif kind == LIQUIDATION:
            event = Liquidation(exchange, symbol, "long" if c else "short", a, b, d, ts, "", id_)
        else:  # FUNDING: rate a, mark b
            for run in self.runs:
                for _, broker in run.brokers:
                    broker.settle_funding(symbol, ts, a, b)
            return
        self._row = row
        for step in self.steps:
            step(event)
        self.events += 1
        self.stepped += 1

    def _load_features(self, event: Any, market: Any) -> None:
        """The engine observer of the gated feed: the shared snapshot takes the row's
        features (what ``OrderFlow`` would hold after it)."""
        row, features = self._row, self._cols.features
        s = self.runs[0].session.flow.snapshot
        s.ts = int(features["ts"][row])
        for name in FLOAT_FIELDS:
            value = float(features[name][row])
            setattr(s, name, None if value != value else value)
        s.toxicity = toxicity(s.vpin)

    def finish(self) -> None:
        if self.first_ts is not None:
            self._sample()


def run_flow(
    store: Any,
    settings: FlowSettings,
    dynamics: Sequence[str],
    *,
    progress: FeedProgress | None = None,
    warn: bool = True,
) -> list[dict]:
    """Every (dynamic engine, mode) on the same events; one result document each, in order.
    ``progress`` counts the stored tape's events fed (--data trades); ``warn``: data warnings."""
    driver = _Driver(settings, dynamics)
    if settings.data.startswith("session:"):
        driver.feed(session_events(store, settings))
    else:
        if progress is not None:
            progress.stage("reading the stored trades and book tops", lasting=False)
        snapshots = depth_snapshots(store, settings)
        if driver.can_gate(snapshots) and not _mostly_cascading(store, settings):
            rows, parts = tape_parts(store, settings, warn=warn)
            driver.feed_gated(parts, progress, rows)
        else:
            rows, parts = tape_parts(store, settings, warn=warn)
            driver.feed_tape(parts, snapshots, progress, rows)
    driver.finish()
    docs = []
    for run in driver.runs:
        for mode in settings.modes:
            docs.append(_document(driver, run, mode))
    return docs


# Above this share of the range in a cascade the cascade mode is woken at nearly every row, and
# the full feed is cheaper than the gated one (which adds every row's features and its gates):
# one stored day, 1M trades, the detector in a cascade ~80 % of it: gated 14.3 s, full 10.5 s;
# with a tenth of the liquidations, ~10 %: gated 3.9 s, full 9.5 s.
GATE_MAX_CASCADING = 0.5


def _mostly_cascading(store: Any, settings: FlowSettings) -> bool:
    """Whether the cascade mode's detector would spend most of the range in a cascade (an
    estimate from the stored liquidations: which feed is faster, never what it gives)."""
    if "cascade" not in settings.modes:
        return False
    liqs = liquidation_rows(store, settings).select("ts", "d").collect()
    share = active_share(
        liqs["ts"].to_numpy(),
        liqs["d"].fill_null(0.0).to_numpy(),
        thresholds_for(settings.symbol).building,
        settings.start_ms,
        settings.end_ms,
    )
    return share > GATE_MAX_CASCADING


def _document(driver: _Driver, run: _Run, mode: str) -> dict:
    settings = driver.settings
    ts = np.asarray(run.ts, dtype=np.int64)
    equity = np.asarray(run.equity[mode], dtype=np.float64)
    closed = run.closed[mode]
    broker = run.session.brokers[mode]
    pos = broker.position(settings.symbol)
    m = metrics.compute(
        ts=ts,
        equity=equity,
        capital=settings.capital,
        trades=[SimpleNamespace(pnl=t["pnl"]) for t in closed],
        fees=sum(t["fees"] for t in closed) + (pos.fees if pos.qty else 0.0),
        funding=sum(t["funding"] for t in closed) + (pos.funding if pos.qty else 0.0),
        liquidations=broker.liquidations,
        exposure=run.exposed[mode] / ts.size if ts.size else 0.0,
        first_open=driver.first_price,
        last_close=driver.last_price,
    )
    m["sharpe_1m"] = sharpe_per_minute(equity, settings.capital)
    used = [t["leverage"] for t in closed]
    optimal = [t["optimal_leverage"] for t in closed]
    strategy = run.session.modes[mode]
    return {
        "strategy": mode,
        "symbol": settings.symbol,
        "params": {
            "leverage": strategy.leverage,
            "dynamic_leverage": run.dynamic,
            "vpin_bucket_usd": float(settings.param("vpin_bucket_usd")),
        },
        "data": settings.data,
        "start": iso_ms(driver.first_ts) if driver.first_ts is not None else None,
        "end": iso_ms(driver.last_ts) if driver.first_ts is not None else None,
        "bars": driver.events,
        "metrics": m,
        "optimal_leverage": {
            "trades": len(closed),
            "mean_used": statistics.fmean(used) if used else None,
            "median_used": statistics.median(used) if used else None,
            "mean_optimal": statistics.fmean(optimal) if optimal else None,
            "median_optimal": statistics.median(optimal) if optimal else None,
        },
        "open_position": None
        if not pos.qty
        else {"side": pos.side, "qty": abs(pos.qty), "entry_price": pos.entry_price},
        "trades": [
            {
                "side": t["side"],
                "entry_ts": iso_ms(t["entry_ts"]),
                "entry_price": t["entry_price"],
                "exit_ts": iso_ms(t["exit_ts"]),
                "exit_price": t["exit_price"],
                "qty": t["qty"],
                "leverage": t["leverage"],
                "suggested_leverage": t["suggested_leverage"],
                "optimal_leverage": t["optimal_leverage"],
                "mae": t["mae"],
                "pnl": t["pnl"],
                "fees": t["fees"],
                "funding": t["funding"],
                "liquidated": t["exit_reason"] == "liquidation",
                "exit_reason": t["exit_reason"],
            }
            for t in closed
        ],
        "_equity": (ts, equity, np.asarray(driver.prices, dtype=np.float64)),
    }


def sharpe_per_minute(equity: np.ndarray, capital: float) -> float | None:
    """mean / std (ddof 1) of the per-sample (1-minute) returns x sqrt(525,600); rf = 0."""
    if equity.size < 2:
        return None
    series = np.concatenate(([capital], equity))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(series[:-1] > 0, series[1:] / series[:-1] - 1, 0.0)
    sd = float(np.std(r, ddof=1))
    return float(np.mean(r)) / sd * float(np.sqrt(525_600)) if sd > 0 else None


# ------------------------------------------------------------------------------ the experiment


def compare(docs: list[dict]) -> list[dict]:
    """Each dynamic engine against fixed leverage (``off``), per mode, on the seed's criteria:
    Sharpe +10 % and max drawdown -20 %. Sharpe from daily returns when both runs have it, else
    ``sharpe_1m``."""
    fixed = {d["strategy"]: d for d in docs if d["params"]["dynamic_leverage"] == "off"}
    rows = []
    for doc in docs:
        base = fixed.get(doc["strategy"])
        if base is None or doc is base:
            continue
        m, b = doc["metrics"], base["metrics"]
        key = "sharpe" if m["sharpe"] is not None and b["sharpe"] is not None else "sharpe_1m"
        s, s0 = m[key], b[key]
        sharpe_change = (s - s0) / abs(s0) if s is not None and s0 not in (None, 0) else None
        dd, dd0 = m["max_drawdown"], b["max_drawdown"]
        dd_change = (dd - dd0) / dd0 if dd0 > 0 else None
        opt = doc["optimal_leverage"]
        rows.append(
            {
                "mode": doc["strategy"],
                "engine": doc["params"]["dynamic_leverage"],
                "sharpe_used": key,
                "sharpe": s,
                "sharpe_fixed": s0,
                "sharpe_change": sharpe_change,
                "sharpe_ok": sharpe_change is not None and sharpe_change >= SHARPE_GAIN,
                "max_drawdown": dd,
                "max_drawdown_fixed": dd0,
                "max_drawdown_change": dd_change,
                "drawdown_ok": dd_change is not None and dd_change <= -DRAWDOWN_CUT,
                "total_return": m["total_return"],
                "total_return_fixed": b["total_return"],
                "trades": m["trades"],
                "mean_used": opt["mean_used"],
                "mean_optimal": opt["mean_optimal"],
                "median_optimal": opt["median_optimal"],
            }
        )
        rows[-1]["meets_criteria"] = rows[-1]["sharpe_ok"] and rows[-1]["drawdown_ok"]
    return rows
