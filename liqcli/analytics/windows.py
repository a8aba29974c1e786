"""Rolling liquidation totals (``liq watch``): long/short notional and counts per window, overall,
per exchange and per symbol; top-N symbols; the latest events. Pure: no I/O, injectable clock.

Time is cut into buckets of ``resolution_ms`` (1 s). A window of W covers the buckets
``(now_bucket - W/resolution, now_bucket]`` plus any bucket ahead of the clock (venue clocks run
early), so an event counts while ``ts // res > now // res - W // res``.

Each series (overall, one per exchange, one per symbol) keeps its non-empty buckets in order with
*cumulative* sums, so adding an event touches one bucket (O(1)), and a window total is the
difference between the last cumulative value and the one just before the window's first bucket,
found by a pointer that only moves forward (amortised O(1)). Notional is summed in integer
micro-dollars: totals are exact and independent of arrival order, so a total rebuilt from storage
after a restart equals the one computed live.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import polars as pl

from liqcli.core.events import Liquidation, Side
from liqcli.core.timeutil import duration_ms, now_ms
from liqcli.errors import UsageError

DEFAULT_WINDOWS = "3m,15m,1h,4h,1d"
MICRO = 1_000_000  # notional is accumulated in integer micro-USD
_COMPACT_MIN = 1024
# No single liquidation is near a trillion dollars; above it (or NaN, infinite, negative) an
# event is refused and counted, live and when restored alike (sums stay within Int64 micro-USD).
MAX_EVENT_USD = 1e12
MAX_SYMBOLS = 50_000  # per-symbol series kept; beyond it the least recently active are evicted


@dataclass(frozen=True, slots=True)
class Window:
    label: str
    ms: int


def parse_windows(spec: str | Sequence[str], *, resolution_ms: int = 1000) -> tuple[Window, ...]:
    """``"3m,15m,1h"`` -> windows sorted by length; UsageError on bad, duplicate or sub-second ones."""
    parts = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in s.split(",")]
    labels = [p.strip() for p in parts if p.strip()]
    if not labels:
        raise UsageError("--windows needs at least one window, e.g. 3m,15m,1h,4h,1d")
    windows: dict[int, Window] = {}
    for label in labels:
        try:
            ms = duration_ms(label)
        except UsageError:
            raise UsageError(
                f"invalid window {label!r}: expected e.g. 3m, 15m, 1h, 4h, 1d"
            ) from None
        if ms % resolution_ms:
            raise UsageError(f"invalid window {label!r}: must be a whole number of seconds")
        if ms in windows:
            raise UsageError(f"duplicate window {label!r} (same length as {windows[ms].label!r})")
        windows[ms] = Window(label, ms)
    return tuple(sorted(windows.values(), key=lambda w: w.ms))


@dataclass(frozen=True, slots=True)
class Totals:
    long_usd: float = 0.0
    short_usd: float = 0.0
    long_count: int = 0
    short_count: int = 0

    @property
    def total_usd(self) -> float:
        return self.long_usd + self.short_usd

    @property
    def count(self) -> int:
        return self.long_count + self.short_count

    @property
    def long_share(self) -> float | None:
        total = self.total_usd
        return self.long_usd / total if total > 0 else None

    def to_dict(self) -> dict:
        return {
            "long_usd": self.long_usd,
            "short_usd": self.short_usd,
            "total_usd": self.total_usd,
            "long_count": self.long_count,
            "short_count": self.short_count,
            "count": self.count,
            "long_share": self.long_share,
        }


ZERO = Totals()


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a view counts: symbols and exchanges (empty = all) and a notional floor."""

    symbols: frozenset[str] = frozenset()
    exchanges: frozenset[str] = frozenset()
    min_usd: float = 0.0

    def accepts(self, event: Liquidation) -> bool:
        return (
            event.notional_usd >= self.min_usd
            and (not self.symbols or event.symbol in self.symbols)
            and (not self.exchanges or event.exchange in self.exchanges)
        )

    def expr(self) -> pl.Expr:
        """The same predicate for a frame of the ``liquidations`` dataset."""
        pred = pl.col("notional_usd") >= self.min_usd
        if self.symbols:
            pred &= pl.col("symbol").is_in(sorted(self.symbols))
        if self.exchanges:
            pred &= pl.col("exchange").is_in(sorted(self.exchanges))
        return pred

    def to_dict(self) -> dict:
        return {
            "symbols": sorted(self.symbols),
            "exchanges": sorted(self.exchanges),
            "min_usd": self.min_usd,
        }


class _Series:
    """Non-empty buckets of one key, with cumulative long/short micro-USD and counts."""

    __slots__ = ("base", "keys", "ln", "lu", "next_compact", "ptrs", "sn", "su")

    def __init__(self, n_windows: int) -> None:
        self.keys: list[int] = []
        self.lu: list[int] = []
        self.su: list[int] = []
        self.ln: list[int] = []
        self.sn: list[int] = []
        self.base = (0, 0, 0, 0)  # cumulative sums of buckets already compacted away
        self.ptrs = [0] * n_windows  # first bucket index still inside each window
        self.next_compact = _COMPACT_MIN

    def add(self, bucket: int, lu: int, su: int, ln: int, sn: int, cutoffs: Sequence[int]) -> None:
        keys = self.keys
        if keys and keys[-1] == bucket:
            self.lu[-1] += lu
            self.su[-1] += su
            self.ln[-1] += ln
            self.sn[-1] += sn
        elif not keys or keys[-1] < bucket:
            if keys:
                plu, psu, pln, psn = self.lu[-1], self.su[-1], self.ln[-1], self.sn[-1]
            else:
                plu, psu, pln, psn = self.base
            keys.append(bucket)
            self.lu.append(plu + lu)
            self.su.append(psu + su)
            self.ln.append(pln + ln)
            self.sn.append(psn + sn)
            if len(keys) >= self.next_compact:
                self.compact(cutoffs[-1])
        else:
            self._add_late(bucket, lu, su, ln, sn)

    def _add_late(self, bucket: int, lu: int, su: int, ln: int, sn: int) -> None:
        # Out-of-order event (venues are merged; OKX is unordered): rare and near the tail.
        keys = self.keys
        pos = bisect_left(keys, bucket)
        if keys[pos] != bucket:
            prev = (
                (self.lu[pos - 1], self.su[pos - 1], self.ln[pos - 1], self.sn[pos - 1])
                if pos
                else self.base
            )
            keys.insert(pos, bucket)
            for column, value in zip((self.lu, self.su, self.ln, self.sn), prev, strict=True):
                column.insert(pos, value)
            # A bucket inserted before a window's pointer is already outside that window.
            self.ptrs = [p + 1 if pos < p else p for p in self.ptrs]
        for i in range(pos, len(keys)):
            self.lu[i] += lu
            self.su[i] += su
            self.ln[i] += ln
            self.sn[i] += sn

    def totals(self, window_index: int, cutoff: int) -> Totals:
        keys = self.keys
        p = self.ptrs[window_index]
        n = len(keys)
        while p < n and keys[p] <= cutoff:
            p += 1
        self.ptrs[window_index] = p
        if p == n:
            return ZERO
        if p:
            blu, bsu, bln, bsn = self.lu[p - 1], self.su[p - 1], self.ln[p - 1], self.sn[p - 1]
        else:
            blu, bsu, bln, bsn = self.base
        ln = self.ln[-1] - bln
        sn = self.sn[-1] - bsn
        if not ln and not sn:
            return ZERO
        return Totals(
            (self.lu[-1] - blu) / MICRO if ln else 0.0,
            (self.su[-1] - bsu) / MICRO if sn else 0.0,
            ln,
            sn,
        )

    def compact(self, longest_cutoff: int) -> None:
        """Drop buckets that left the longest window (keeps memory bounded by that window)."""
        drop = bisect_left(self.keys, longest_cutoff + 1)
        if drop:
            i = drop - 1
            self.base = (self.lu[i], self.su[i], self.ln[i], self.sn[i])
            for column in (self.keys, self.lu, self.su, self.ln, self.sn):
                del column[:drop]
            self.ptrs = [max(p - drop, 0) for p in self.ptrs]
        self.next_compact = max(_COMPACT_MIN, 2 * len(self.keys))

    def empty(self) -> bool:
        return not self.keys


@dataclass(frozen=True)
class Snapshot:
    """Everything a dashboard shows, at one instant."""

    now: int
    windows: tuple[str, ...]
    overall: dict[str, Totals]
    by_exchange: dict[str, dict[str, Totals]]
    by_symbol: dict[str, dict[str, Totals]]
    rank_window: str
    top_long: list[tuple[str, Totals]]
    top_short: list[tuple[str, Totals]]
    latest: list[Liquidation]
    events: int
    event_filter: EventFilter = field(default_factory=EventFilter)

    def to_dict(self) -> dict:
        def table(rows: dict[str, Totals]) -> dict:
            return {label: t.to_dict() for label, t in rows.items()}

        return {
            "now": self.now,
            "windows": list(self.windows),
            "overall": table(self.overall),
            "by_exchange": {ex: table(rows) for ex, rows in self.by_exchange.items()},
            "by_symbol": {sym: table(rows) for sym, rows in self.by_symbol.items()},
            "rank_window": self.rank_window,
            "top_long": [{"symbol": s, **t.to_dict()} for s, t in self.top_long],
            "top_short": [{"symbol": s, **t.to_dict()} for s, t in self.top_short],
            "latest": [e.to_dict() for e in self.latest],
            "events": self.events,
            "filter": self.event_filter.to_dict(),
        }


class WindowAggregator:
    """Rolling totals of liquidations. ``add`` is the per-event hot path; ``snapshot`` is for
    dashboards (about once a second)."""

    def __init__(
        self,
        windows: Sequence[Window] | str = DEFAULT_WINDOWS,
        *,
        clock: Callable[[], int] = now_ms,
        latest: int = 20,
        event_filter: EventFilter | None = None,
        resolution_ms: int = 1000,
        rank_window: str | None = None,
        max_symbols: int = MAX_SYMBOLS,
    ) -> None:
        self.windows = (
            parse_windows(windows, resolution_ms=resolution_ms)
            if isinstance(windows, str)
            else tuple(sorted(windows, key=lambda w: w.ms))
        )
        if not self.windows:
            raise UsageError("at least one window is needed")
        labels = [w.label for w in self.windows]
        if rank_window is None:
            rank_window = "1h" if "1h" in labels else labels[-1]
        if rank_window not in labels:
            raise UsageError(f"rank window {rank_window!r} is not one of {', '.join(labels)}")
        self.rank_window = rank_window
        self.clock = clock
        self.filter = event_filter or EventFilter()
        self.resolution_ms = resolution_ms
        self._spans = [w.ms // resolution_ms for w in self.windows]
        self._overall = _Series(len(self.windows))
        self._by_exchange: dict[str, _Series] = {}
        self._by_symbol: dict[str, _Series] = {}
        self._latest: deque[Liquidation] = deque(maxlen=max(latest, 0))
        self._now = -(2**62)
        self._now_bucket = -(2**62)
        self._cutoff_cache: list[int] = []
        self.events = 0  # accepted and counted
        self.expired = 0  # accepted but already older than the longest window
        self.invalid = 0  # refused: a notional that is not a number in [0, MAX_EVENT_USD]
        self.max_symbols = max(max_symbols, 1)
        self.evicted_symbols = 0  # per-symbol series dropped to keep memory bounded

    # -- feeding ---------------------------------------------------------------------------

    def _cutoffs(self, now: int | None = None) -> list[int]:
        """Per window, the last bucket already outside it. The clock never runs backwards for
        the aggregator: an older reading changes nothing."""
        if now is None:
            now = self.clock()
        if now > self._now:
            self._now = now
            bucket = now // self.resolution_ms
            if bucket != self._now_bucket:
                self._now_bucket = bucket
                self._cutoff_cache = [bucket - span for span in self._spans]
        return self._cutoff_cache

    def add(self, event: Liquidation) -> bool:
        """Count one event; False when the filter rejects it or it is older than every window."""
        return self.filter.accepts(event) and self.count(event)

    def count(self, event: Liquidation) -> bool:
        """``add`` for an event the caller has already passed through ``self.filter``."""
        cutoffs = self._cutoffs()
        bucket = event.ts // self.resolution_ms
        if bucket <= cutoffs[-1]:
            self.expired += 1
            return False
        notional = event.notional_usd
        if not 0.0 <= notional <= MAX_EVENT_USD:  # NaN fails too
            self.invalid += 1
            return False
        micro = round(notional * MICRO)
        by_exchange = self._by_exchange.get(event.exchange)
        if by_exchange is None:
            by_exchange = self._by_exchange[event.exchange] = _Series(len(self.windows))
        by_symbol = self._by_symbol.get(event.symbol)
        if by_symbol is None:
            if len(self._by_symbol) >= self.max_symbols:
                self._evict_symbols()
            by_symbol = self._by_symbol[event.symbol] = _Series(len(self.windows))
        # The usual case, inlined (this runs for every event): the event falls in the newest
        # bucket of each series, so only that bucket's sums of its side grow.
        if event.side == "long":
            for series in (self._overall, by_exchange, by_symbol):
                keys = series.keys
                if keys and keys[-1] == bucket:
                    series.lu[-1] += micro
                    series.ln[-1] += 1
                else:
                    series.add(bucket, micro, 0, 1, 0, cutoffs)
        else:
            for series in (self._overall, by_exchange, by_symbol):
                keys = series.keys
                if keys and keys[-1] == bucket:
                    series.su[-1] += micro
                    series.sn[-1] += 1
                else:
                    series.add(bucket, 0, micro, 0, 1, cutoffs)
        self._latest.append(event)
        self.events += 1
        return True

    def add_many(self, events: Iterable[Liquidation]) -> int:
        return sum(1 for e in events if self.add(e))

    def load_frame(self, frame: pl.DataFrame | pl.LazyFrame) -> int:
        """Bulk-load rows of the ``liquidations`` dataset (e.g. the last day from the store).

        Events are pre-aggregated per (key, bucket) with Polars, so a day of history costs one
        group-by, not a Python loop over events. Returns the number of events counted.
        """
        cutoffs = self._cutoffs()
        res = self.resolution_ms
        lazy = frame.lazy() if isinstance(frame, pl.DataFrame) else frame
        ts_ms = (
            pl.col("ts").cast(pl.Datetime("ms", "UTC")).dt.epoch("ms")
            if _is_datetime(lazy, "ts")
            else pl.col("ts").cast(pl.Int64)
        )
        usd = pl.col("notional_usd")
        micro = (usd * MICRO).round().cast(pl.Int64)
        is_long = pl.col("side") == "long"
        valid = usd.is_between(0.0, MAX_EVENT_USD).fill_null(False)  # as count() refuses
        events = (
            lazy.filter(self.filter.expr())
            .with_columns(ts_ms.alias("ts_ms"))
            .with_columns((pl.col("ts_ms") // res).alias("bucket"))
            .filter(pl.col("bucket") > cutoffs[-1])
            .with_columns(valid.alias("valid"))
            .collect()
        )
        refused = events.height - int(events["valid"].sum())
        if refused:
            self.invalid += refused
            events = events.filter(pl.col("valid"))
        events = (
            events.lazy()
            .with_columns(
                pl.when(is_long).then(micro).otherwise(0).alias("lu"),
                pl.when(is_long).then(0).otherwise(micro).alias("su"),
                is_long.cast(pl.Int64).alias("ln"),
                (~is_long).cast(pl.Int64).alias("sn"),
            )
            .collect()
        )
        if events.is_empty():
            return 0
        sums = [pl.col(c).sum() for c in ("lu", "su", "ln", "sn")]
        self._load_groups(events.group_by("bucket").agg(sums), {None: self._overall}, None, cutoffs)
        for key, store in (("exchange", self._by_exchange), ("symbol", self._by_symbol)):
            grouped = events.group_by(key, "bucket").agg(sums)
            self._load_groups(grouped, store, key, cutoffs)
        if len(self._by_symbol) > self.max_symbols:
            self._evict_symbols()
        keep = self._latest.maxlen or 0
        newest = [_event_from_row(r) for r in events.sort("ts_ms").tail(keep).iter_rows(named=True)]
        merged = sorted([*self._latest, *newest], key=lambda e: e.ts)
        self._latest.clear()
        self._latest.extend(merged[-keep:] if keep else [])
        self.events += events.height
        return events.height

    def _load_groups(
        self,
        grouped: pl.DataFrame,
        store: dict,
        key: str | None,
        cutoffs: Sequence[int],
    ) -> None:
        parts = {None: grouped} if key is None else grouped.partition_by(key, as_dict=True)
        for part_key, part in parts.items():
            name = part_key if key is None else part_key[0]
            series = store.get(name)
            if series is None:
                series = store[name] = _Series(len(self.windows))
            part = part.sort("bucket")
            if series.empty():
                # Fresh series: the cumulative columns come straight from Polars.
                cum = part.select(
                    pl.col("bucket"), *(pl.col(c).cum_sum() for c in ("lu", "su", "ln", "sn"))
                )
                series.keys = cum["bucket"].to_list()
                series.lu, series.su, series.ln, series.sn = (
                    cum[c].to_list() for c in ("lu", "su", "ln", "sn")
                )
                series.next_compact = max(_COMPACT_MIN, 2 * len(series.keys))
            else:
                for bucket, lu, su, ln, sn in part.select(
                    "bucket", "lu", "su", "ln", "sn"
                ).iter_rows():
                    series.add(bucket, lu, su, ln, sn, cutoffs)

    def _evict_symbols(self) -> None:
        """Drop the least recently active tenth of the per-symbol series (amortised: one sort
        per ``max_symbols / 10`` new symbols), so memory stays bounded whatever the venues send.
        Overall and per-exchange totals keep every event."""
        target = self.max_symbols - max(self.max_symbols // 10, 1)
        excess = len(self._by_symbol) - target
        if excess <= 0:
            return
        by_age = heapq.nsmallest(
            excess,
            self._by_symbol.items(),
            key=lambda item: item[1].keys[-1] if item[1].keys else -(2**62),
        )
        for symbol, _ in by_age:
            del self._by_symbol[symbol]
        self.evicted_symbols += len(by_age)

    # -- reading ---------------------------------------------------------------------------

    def _window_index(self, window: str | Window | None) -> int:
        label = (
            self.rank_window
            if window is None
            else window
            if isinstance(window, str)
            else window.label
        )
        for i, w in enumerate(self.windows):
            if w.label == label:
                return i
        raise UsageError(
            f"unknown window {label!r}: choose one of {', '.join(w.label for w in self.windows)}"
        )

    def totals(
        self,
        window: str | Window,
        *,
        symbol: str | None = None,
        exchange: str | None = None,
        now: int | None = None,
    ) -> Totals:
        """Totals of one window: overall, or for one symbol or one exchange."""
        if symbol is not None and exchange is not None:
            raise ValueError("totals per symbol or per exchange, not both")
        i = self._window_index(window)
        cutoff = self._cutoffs(now)[i]
        if symbol is not None:
            series = self._by_symbol.get(symbol)
        elif exchange is not None:
            series = self._by_exchange.get(exchange)
        else:
            series = self._overall
        return ZERO if series is None else series.totals(i, cutoff)

    def top(
        self, n: int, side: Side, window: str | None = None, *, now: int | None = None
    ) -> list[tuple[str, Totals]]:
        """The n symbols with the most ``side`` liquidations (notional) in the window."""
        i = self._window_index(window)
        cutoff = self._cutoffs(now)[i]
        rows = ((sym, s.totals(i, cutoff)) for sym, s in self._by_symbol.items())
        attr = "long_usd" if side == "long" else "short_usd"
        ranked = heapq.nlargest(n, rows, key=lambda r: (getattr(r[1], attr), r[0]))
        return [r for r in ranked if getattr(r[1], attr) > 0]

    def latest(self) -> list[Liquidation]:
        """The latest events, newest first."""
        return list(reversed(self._latest))

    @property
    def symbols(self) -> list[str]:
        return sorted(self._by_symbol)

    def snapshot(self, top_n: int = 10, *, now: int | None = None) -> Snapshot:
        cutoffs = self._cutoffs(now)
        labels = tuple(w.label for w in self.windows)

        def table(series: _Series) -> dict[str, Totals]:
            return {label: series.totals(i, cutoffs[i]) for i, label in enumerate(labels)}

        top_long = self.top(top_n, "long", now=now)
        top_short = self.top(top_n, "short", now=now)
        if self.filter.symbols:
            shown = sorted(self.filter.symbols)
        else:
            i = self._window_index(None)
            ranked = heapq.nlargest(
                top_n,
                ((sym, s.totals(i, cutoffs[i]).total_usd) for sym, s in self._by_symbol.items()),
                key=lambda r: (r[1], r[0]),
            )
            shown = [sym for sym, usd in ranked if usd > 0]
        empty = _Series(len(self.windows))
        return Snapshot(
            now=self._now,
            windows=labels,
            overall=table(self._overall),
            by_exchange={ex: table(s) for ex, s in sorted(self._by_exchange.items())},
            by_symbol={sym: table(self._by_symbol.get(sym, empty)) for sym in shown},
            rank_window=self.rank_window,
            top_long=top_long,
            top_short=top_short,
            latest=self.latest(),
            events=self.events,
            event_filter=self.filter,
        )


def _is_datetime(lazy: pl.LazyFrame, column: str) -> bool:
    return isinstance(lazy.collect_schema()[column], pl.Datetime)


def _event_from_row(row: dict) -> Liquidation:
    received = row.get("received_ts")
    if received is not None and not isinstance(received, int):
        received = int(received.timestamp() * 1000)
    venue_symbol = row.get("venue_symbol") or ""
    return Liquidation(
        exchange=row["exchange"],
        symbol=row["symbol"],
        side=row["side"],
        price=float(row["price"]),
        qty=float(row["qty"]),
        notional_usd=float(row["notional_usd"]),
        ts=int(row["ts_ms"]),
        venue_symbol="" if venue_symbol == row["symbol"] else venue_symbol,
        received_ts=received or 0,
    )
