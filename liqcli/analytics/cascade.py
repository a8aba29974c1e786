"""Liquidation-cascade detector: a pure state machine over Liquidation and AggTrade events.

The same object runs live and on history: ``feed(event)`` per event, and ``tick(now)`` whenever
time moves on without events (the caller ticks it from its source's clock: once a second of
wall time live, at each new second of event time on a replay), so levels decay and cascades end.
It owns no timers, sockets or files: alerts go to ``cascade_callback``, finished cascades to
``record_callback`` as rows of the ``cascades`` dataset.

Model (all times are event time, ms):

- Rolling 60-second liquidated notional from per-second buckets in a ring, so each event is O(1).
  The window holds the current second and the 59 before it.
- Level from the 60-s total against the symbol's thresholds (``CascadeThresholds``); rising is
  immediate, falling waits until the total is ``hysteresis`` below the current level's threshold
  for ``decay_ms``.
- A cascade begins when the total reaches BUILDING (``start_ts`` is that moment; its ``total_usd``
  and ``events`` include the 60-s window that built it up) and ends once the total has stayed
  below BUILDING for ``quiet_ms``. ``end_ts`` is its last liquidation.
- ``cascade_level`` alerts fire only when the level is higher than any already alerted in this
  cascade, so a total flapping around a threshold alerts once; ``cascade_end`` closes it.
- Direction is the dominant side (ties count as long). Phase: early (< 30 s since start), mid,
  late (> 60 s or |price move since start| > 1 %). Price comes from aggTrades only (liquidation
  prices are bankruptcy prices on some venues); without trades price fields are ``None``.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import astuple, dataclass, fields
from itertools import pairwise

import numpy as np

from liqcli.core.events import LONG, AggTrade, Liquidation
from liqcli.core.timeutil import iso_ms, now_ms
from liqcli.errors import UsageError

log = logging.getLogger(__name__)

LEVELS = ("QUIET", "BUILDING", "MINOR", "SIGNIFICANT", "MAJOR", "EXTREME")
QUIET, BUILDING = 0, 1
LONG_LIQUIDATION = "long_liquidation"
SHORT_LIQUIDATION = "short_liquidation"

WINDOW_S = 60
_PRICE_SLOTS = 64  # more than the window, so prices 30 s back are always still in the ring
EARLY_MS = 30_000
LATE_MS = 60_000
LATE_MOVE_PCT = 1.0
SIGNATURE_MOVE_PCT = 0.5  # a long cascade moves price at least -0.5 % in 30 s
SIGNATURE_TAKER_RATIO = 0.7  # taker buy/sell below this for longs, above 1/0.7 for shorts
TWO_SIDED_SHARE = 0.6  # below this dominant share the flow is two-sided: no directional call

# Scaling rule for symbols without their own thresholds: the defaults are calibrated on BTC; a
# caller that knows the symbol's typical 1-minute traded notional scales by it against BTC's
# (about $10M a minute on the big venues); otherwise ETH gets half and every other coin a tenth.
BTC_REFERENCE_USD_1M = 10_000_000.0
ASSET_SCALE = {"BTC": 1.0, "XBT": 1.0, "ETH": 0.5}
OTHER_ASSET_SCALE = 0.1
MIN_SCALE = 0.01  # keeps BUILDING at $5k or more: below that single liquidations are noise
_QUOTES = ("FDUSD", "BUSD", "USDT", "USDC", "USD")

_LEVEL_CONFIDENCE = (0.0, 0.2, 0.35, 0.5, 0.65, 0.75)
_NO_ALERTS: tuple[dict, ...] = ()

AlertCallback = Callable[[dict], object]
Clock = Callable[[], int]


def level_index(name: str) -> int:
    """``'significant'`` -> 3. Raises UsageError for anything that is not a level."""
    key = str(name).strip().upper()
    if key not in LEVELS:
        raise UsageError(f"invalid level {name!r}: choose one of {', '.join(LEVELS)}")
    return LEVELS.index(key)


@dataclass(frozen=True)
class CascadeThresholds:
    """Lower bounds (USD liquidated in 60 s) of BUILDING, MINOR, SIGNIFICANT, MAJOR, EXTREME."""

    building: float = 500_000.0
    minor: float = 1_000_000.0
    significant: float = 3_000_000.0
    major: float = 10_000_000.0
    extreme: float = 50_000_000.0

    def __post_init__(self) -> None:
        values = astuple(self)
        if not all(v > 0 for v in values) or any(a >= b for a, b in pairwise(values)):
            raise UsageError(
                "cascade thresholds must be positive and strictly increasing "
                f"(building < minor < significant < major < extreme), got {values}"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, float]) -> CascadeThresholds:
        """From a config table such as ``{building = 50000, minor = 100000}``; the rest default."""
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise UsageError(
                f"unknown cascade threshold {sorted(unknown)[0]!r}: choose from {', '.join(names)}"
            )
        try:
            return cls(**{k: float(v) for k, v in values.items()})
        except (TypeError, ValueError):
            raise UsageError(f"cascade thresholds must be numbers, got {dict(values)}") from None

    def scaled(self, factor: float) -> CascadeThresholds:
        return CascadeThresholds(*(v * factor for v in astuple(self)))


def base_asset(symbol: str) -> str:
    """``BTCUSDT`` -> ``BTC`` (normalised BASEQUOTE symbols)."""
    upper = symbol.upper()
    for quote in _QUOTES:
        if upper.endswith(quote) and len(upper) > len(quote):
            return upper[: -len(quote)]
    return upper


def scale_factor(symbol: str, reference_usd_1m: float | None = None) -> float:
    """How big a symbol's cascades are relative to BTC's (see the rule above)."""
    if reference_usd_1m is not None:
        if not reference_usd_1m > 0:
            raise UsageError(
                f"reference 1-minute notional must be positive, got {reference_usd_1m}"
            )
        return max(MIN_SCALE, reference_usd_1m / BTC_REFERENCE_USD_1M)
    return ASSET_SCALE.get(base_asset(symbol), OTHER_ASSET_SCALE)


def thresholds_for(
    symbol: str,
    *,
    overrides: Mapping[str, CascadeThresholds] | None = None,
    reference_usd_1m: float | None = None,
) -> CascadeThresholds:
    """The symbol's own thresholds if configured, else the BTC defaults scaled for it."""
    if overrides and symbol.upper() in overrides:
        return overrides[symbol.upper()]
    return CascadeThresholds().scaled(scale_factor(symbol, reference_usd_1m))


def recommend(phase: str, direction: str, dominant_share: float) -> tuple[str, str]:
    """(action code, one-line reason) for a cascade in ``phase``."""
    if phase == "ended":
        return "hold", "cascade over"
    if phase == "quiet":
        return "hold", "no cascade"
    if dominant_share < TWO_SIDED_SHARE:
        return "hold", "two-sided liquidations: volatile, reduce size"
    longs = direction == LONG_LIQUIDATION
    if phase == "early":
        if longs:
            return "follow_short", "longs are being liquidated: follow the move down, tight stop"
        return "follow_long", "shorts are being liquidated: follow the squeeze up, tight stop"
    if phase == "late":
        if longs:
            return "prepare_long_reversal", "late long cascade: prepare to buy the flush"
        return "prepare_short_reversal", "late short squeeze: prepare to short the top"
    return "hold", "cascade maturing: no new entry, tighten stops"


def _pct(new: float | None, old: float | None) -> float | None:
    if new is None or not old:
        return None
    return round((new / old - 1.0) * 100.0, 4)


def active_share(
    ts_ms: np.ndarray,
    notional_usd: np.ndarray,
    building: float,
    start_ms: int,
    end_ms: int,
    quiet_ms: int = 60_000,
) -> float:
    """About the share of [start_ms, end_ms) a detector fed these liquidations spends in a
    cascade: the seconds whose trailing window holds ``building`` or more, each with the
    ``quiet_ms`` after it (a cascade ends once quiet that long). An estimate, for choosing how
    to feed a stored tape (the results are the same either way); coarser than a second over a
    long range, so its arrays stay a few MB."""
    span_s = max(1, (end_ms - start_ms + 999) // 1000)
    if not ts_ms.size:
        return 0.0
    unit = max(1, -(-span_s // 2_000_000))  # seconds per slot
    n = -(-span_s // unit)
    slot = ((ts_ms - start_ms) // 1000 // unit).clip(0, n - 1)
    per = np.bincount(slot, weights=notional_usd, minlength=n)
    cum = np.concatenate(([0.0], np.cumsum(per)))
    end = np.arange(1, n + 1)
    window = max(1, WINDOW_S // unit)
    hot = (cum[end] - cum[np.maximum(end - window, 0)]) >= building
    after = np.concatenate(([0], np.cumsum(hot)))
    quiet = max(1, quiet_ms // 1000 // unit)
    return float(((after[end] - after[np.maximum(end - 1 - quiet, 0)]) > 0).mean())


class LiquidationCascadeDetector:
    """One symbol's cascade state machine. See the module docstring for the model."""

    def __init__(
        self,
        symbol: str,
        cascade_callback: AlertCallback | None = None,
        *,
        thresholds: CascadeThresholds | None = None,
        reference_usd_1m: float | None = None,
        record_callback: AlertCallback | None = None,
        clock: Clock = now_ms,
        quiet_ms: int = 60_000,
        decay_ms: int = 5_000,
        hysteresis: float = 0.1,
        context_max_age_ms: int = 180_000,
    ) -> None:
        if not symbol or not str(symbol).strip():
            raise UsageError("cascade detector needs a symbol")
        if quiet_ms <= 0 or decay_ms < 0 or context_max_age_ms <= 0:
            raise UsageError(
                "quiet_ms and context_max_age_ms must be positive, decay_ms not negative"
            )
        if not 0 <= hysteresis < 1:
            raise UsageError(f"hysteresis must be in [0, 1), got {hysteresis}")
        self.symbol = str(symbol).strip().upper()
        self.thresholds = thresholds or thresholds_for(
            self.symbol, reference_usd_1m=reference_usd_1m
        )
        self.cascade_callback = cascade_callback
        self.record_callback = record_callback
        self.quiet_ms = quiet_ms
        self.decay_ms = decay_ms
        self.hysteresis = hysteresis
        self.context_max_age_ms = context_max_age_ms
        self._clock = clock
        self._bounds = astuple(self.thresholds)
        self._out: list[dict] = []
        self.late_dropped = 0  # liquidations older than the window when they arrived

        # Rolling window: one slot per second, second s lives in slot s % WINDOW_S.
        self._long_b = [0.0] * WINDOW_S
        self._short_b = [0.0] * WINDOW_S
        self._count_b = [0] * WINDOW_S
        self._long = 0.0
        self._short = 0.0
        self._count = 0
        self._sec = -1  # newest second seen
        self._now = 0  # newest time seen (event or clock), ms

        # Price: last trade, and the close of each recent second for "30 s ago".
        self._price: float | None = None
        self._price_ts = -1
        self._close = [0.0] * _PRICE_SLOTS
        self._close_sec = [-1] * _PRICE_SLOTS
        self._first_price: float | None = None  # the first trade: the 30-s move's reference
        self._first_price_ts = -1  # until 30 s of prices are known

        # Level with hysteresis and the current cascade, if any.
        self._level = QUIET
        self._drop_since: int | None = None
        self._active = False
        self._below_since: int | None = None
        self._alerted = QUIET
        self._start_ts = 0
        self._start_price: float | None = None
        self._end_ts = 0
        self._end_price: float | None = None
        self._peak = QUIET
        self._c_long = 0.0
        self._c_short = 0.0
        self._c_events = 0

        self._ctx_ts: int | None = None
        self._oi_change_pct: float | None = None
        self._taker_ratio: float | None = None
        self._funding: float | None = None
        self._prev_funding: float | None = None

    # ---- inputs -------------------------------------------------------------------------

    def feed(self, event: object) -> tuple[dict, ...]:
        """Process one event; returns (and passes to the callbacks) the alerts it caused.

        Liquidations and aggTrades of this symbol count; anything else is ignored.
        """
        kind = type(event)
        if kind is AggTrade:
            ts = event.ts
            if event.symbol == self.symbol and ts >= self._price_ts:
                if ts > self._now:
                    # Within the current second only the time moves: skip the call.
                    if ts // 1000 > self._sec:
                        self._advance(ts)
                    else:
                        self._now = ts
                if self._price is None:
                    self._first_price, self._first_price_ts = event.price, ts
                self._price = event.price
                self._price_ts = ts
                if self._active and self._start_price is None:
                    self._start_price = event.price
        elif kind is Liquidation and event.symbol == self.symbol:
            self._add_liquidation(event)
        return self._flush() if self._out else _NO_ALERTS

    def feed_second(
        self, first_ts: int, first_price: float, last_ts: int, last_price: float
    ) -> tuple[dict, ...]:
        """As ``feed`` of this symbol's trades of one second in time order, given the first and
        the last of them: the trades between move nothing ``feed`` keeps (the time within the
        second, the price until the last). For a driver that skips rows it proved idle; the
        trades come in time order, none before the last one fed (a stored tape's)."""
        if first_ts < self._price_ts or last_ts // 1000 != first_ts // 1000:
            raise ValueError("feed_second: one second of trades, none before the last fed")
        if first_ts > self._now:
            if first_ts // 1000 > self._sec:
                self._advance(first_ts)
            else:
                self._now = first_ts
        if self._price is None:
            self._first_price, self._first_price_ts = first_price, first_ts
        if self._active and self._start_price is None:
            self._start_price = first_price
        if last_ts > self._now:
            self._now = last_ts
        self._price, self._price_ts = last_price, last_ts
        return self._flush() if self._out else _NO_ALERTS

    def tick(self, now: int | None = None) -> tuple[dict, ...]:
        """Evaluate at ``now`` (default: the clock) so levels decay and quiet cascades end."""
        self._advance(self._clock() if now is None else now)
        self._evaluate()
        return self._flush()

    def update_context(
        self,
        *,
        oi_change_pct: float | None = None,
        taker_ratio: float | None = None,
        funding_rate: float | None = None,
        prev_funding_rate: float | None = None,
        ts: int | None = None,
    ) -> None:
        """The latest REST context (polled by the caller at most once a minute).

        Each call replaces the previous snapshot; ``None`` means unknown. The snapshot counts
        for ``context_max_age_ms`` after ``ts``.
        """
        self._ctx_ts = self._clock() if ts is None else ts
        self._oi_change_pct = oi_change_pct
        self._taker_ratio = taker_ratio
        self._funding = funding_rate
        self._prev_funding = prev_funding_rate

    def finish(self, now: int | None = None) -> tuple[dict, ...]:
        """End an open cascade now (shutdown, end of a replay), emitting its ``cascade_end``."""
        if now is not None:
            self._advance(now)
        if self._active:
            self._end(self._now, reason="shutdown")
        return self._flush()

    # ---- state --------------------------------------------------------------------------

    @property
    def level(self) -> str:
        return LEVELS[self._level]

    @property
    def active(self) -> bool:
        return self._active

    @property
    def total_usd_60s(self) -> float:
        return self._long + self._short

    def state(self) -> dict:
        """The current picture (for dashboards): the fields of a ``cascade_level`` alert."""
        return self._describe(self._now)

    # ---- internals ----------------------------------------------------------------------

    def _add_liquidation(self, event: Liquidation) -> None:
        notional = event.notional_usd
        if not notional > 0:  # also rejects NaN
            return
        ts = event.ts
        sec = ts // 1000
        if sec > self._sec:
            self._advance(ts)
        elif ts > self._now:
            self._now = ts
        elif sec <= self._sec - WINDOW_S:
            self.late_dropped += 1
            return
        slot = sec % WINDOW_S
        is_long = event.side == LONG
        if is_long:
            self._long_b[slot] += notional
            self._long += notional
        else:
            self._short_b[slot] += notional
            self._short += notional
        self._count_b[slot] += 1
        self._count += 1
        if self._active:
            if is_long:
                self._c_long += notional
            else:
                self._c_short += notional
            self._c_events += 1
            if ts >= self._end_ts:
                self._end_ts = ts
                self._end_price = self._price
        self._evaluate()

    def _advance(self, ts: int) -> None:
        """Move the clock to ``ts``: expire buckets and note when totals fell below a line."""
        if ts <= self._now:
            return
        sec = ts // 1000
        cur = self._sec
        self._now = ts
        if sec <= cur:
            return
        self._sec = sec
        if cur < 0:
            return
        price = self._price
        if price is not None:
            for s in range(max(cur, sec - _PRICE_SLOTS), sec):
                slot = s % _PRICE_SLOTS
                self._close[slot] = price
                self._close_sec[slot] = s
        bounds = self._bounds
        drop_line = bounds[self._level - 1] * (1.0 - self.hysteresis) if self._level else 0.0
        # Slot s % WINDOW_S held second s - WINDOW_S, which leaves the window at second s; after
        # WINDOW_S new seconds every slot has been emptied once.
        for s in range(cur + 1, min(sec, cur + WINDOW_S) + 1):
            slot = s % WINDOW_S
            if self._count_b[slot]:
                self._long -= self._long_b[slot]
                self._short -= self._short_b[slot]
                self._count -= self._count_b[slot]
                self._long_b[slot] = self._short_b[slot] = 0.0
                self._count_b[slot] = 0
                if not self._count:  # forget float residue once the window is empty
                    self._long = self._short = 0.0
            total = self._long + self._short
            # Totals only fall here, at second boundaries: stamp those moments exactly so
            # replay results do not depend on how often evaluation runs.
            if self._active and self._below_since is None and total < bounds[0]:
                self._below_since = s * 1000
            if self._drop_since is None and total < drop_line:
                self._drop_since = s * 1000
        self._evaluate()

    def _evaluate(self) -> None:
        now = self._now
        total = self._long + self._short
        raw = bisect_right(self._bounds, total)
        level = self._level
        if raw > level:
            self._level = level = raw
            self._drop_since = None
        elif raw < level:
            if total >= self._bounds[level - 1] * (1.0 - self.hysteresis):
                self._drop_since = None
            elif self._drop_since is not None and now - self._drop_since >= self.decay_ms:
                self._level = level = raw
                self._drop_since = None
        else:
            self._drop_since = None

        if self._active:
            if raw >= BUILDING:
                self._below_since = None
            elif self._below_since is not None and now - self._below_since >= self.quiet_ms:
                self._end(self._below_since + self.quiet_ms, reason="quiet")
                return
        elif raw >= BUILDING:
            self._begin(now)

        if self._active:
            if level > self._peak:
                self._peak = level
            if level > self._alerted:
                self._alerted = level
                self._out.append(self._describe(now, "cascade_level"))

    def _begin(self, now: int) -> None:
        self._active = True
        self._start_ts = now
        self._start_price = self._price
        self._end_ts = now
        self._end_price = self._price
        self._c_long = self._long
        self._c_short = self._short
        self._c_events = self._count
        self._peak = QUIET
        self._alerted = QUIET
        self._below_since = None

    def _end(self, at: int, *, reason: str) -> None:
        direction = LONG_LIQUIDATION if self._c_long >= self._c_short else SHORT_LIQUIDATION
        change = _pct(self._end_price, self._start_price)
        total = self._c_long + self._c_short
        self._active = False
        self._level = bisect_right(self._bounds, self._long + self._short)
        self._drop_since = None
        self._below_since = None
        alert = self._describe(at, "cascade_end", active=False)
        share = max(self._c_long, self._c_short) / total if total else 0.5
        action, note = recommend("ended", direction, share)
        alert.update(
            direction=direction,
            dominant_share=round(share, 4),
            phase="ended",
            price_change_pct=change,
            recommended_action=action,
            action_note=note,
            ended_at=iso_ms(self._end_ts),
            duration_s=round((self._end_ts - self._start_ts) / 1000.0, 3),
            peak_level=LEVELS[self._peak],
            total_usd=round(total, 2),
            events=self._c_events,
            reason=reason,
        )
        self._out.append(alert)
        if self.record_callback is not None:
            self.record_callback(
                {
                    "exchange": "all",
                    "symbol": self.symbol,
                    "start_ts": self._start_ts,
                    "end_ts": self._end_ts,
                    "direction": direction,
                    "peak_level": LEVELS[self._peak],
                    "total_usd": total,
                    "events": self._c_events,
                    "price_change_pct": change,
                }
            )

    def _flush(self) -> tuple[dict, ...]:
        # Callbacks run after the state is consistent, so one that raises loses nothing.
        alerts = tuple(self._out)
        self._out.clear()
        if self.cascade_callback is not None:
            for alert in alerts:
                self.cascade_callback(alert)
        return alerts

    def _price_as_of(self, sec: int) -> float | None:
        slot = sec % _PRICE_SLOTS
        return self._close[slot] if self._close_sec[slot] == sec else None

    def _move_30s(self, now: int) -> tuple[float | None, float | None]:
        """(% price change over the last 30 s, seconds it covers). Before 30 s of prices are
        known (a run that just started) the change is since the first trade, and the span says
        how far back that is: a 0.95 % drop in the first 4 s is a drop, not an unknown."""
        price = self._price
        move = _pct(price, self._price_as_of(now // 1000 - 30))
        if move is not None:
            return move, 30.0
        if price is None or self._first_price_ts < 0 or now - self._first_price_ts >= 30_000:
            return None, None
        return _pct(price, self._first_price), round(max(now - self._first_price_ts, 0) / 1000, 3)

    def _signature(self, direction: str, move_30s: float | None, now: int) -> dict:
        """Which parts of the cascade signature are present (None: not known)."""
        longs = direction == LONG_LIQUIDATION
        fresh = self._ctx_ts is not None and now - self._ctx_ts <= self.context_max_age_ms
        price = None
        if move_30s is not None:
            price = move_30s <= -SIGNATURE_MOVE_PCT if longs else move_30s >= SIGNATURE_MOVE_PCT
        oi = taker = funding = None
        if fresh and self._oi_change_pct is not None:
            oi = self._oi_change_pct < 0  # liquidations close positions on either side
        if fresh and self._taker_ratio is not None:
            ratio = self._taker_ratio
            taker = ratio < SIGNATURE_TAKER_RATIO if longs else ratio > 1 / SIGNATURE_TAKER_RATIO
        if fresh and self._funding is not None and self._prev_funding is not None:
            if longs:
                funding = self._prev_funding >= 0 > self._funding
            else:
                funding = self._prev_funding <= 0 < self._funding
        return {
            "price_move_30s": price,
            "oi_falling": oi,
            "taker_ratio": taker,
            "funding_flip": funding,
        }

    def _describe(self, now: int, kind: str | None = None, *, active: bool | None = None) -> dict:
        active = self._active if active is None else active
        long_usd, short_usd = self._long, self._short
        total = long_usd + short_usd
        # An empty window inside the quiet period keeps the cascade's own direction.
        side_long, side_short = (
            (long_usd, short_usd) if total or not active else (self._c_long, self._c_short)
        )
        direction = LONG_LIQUIDATION if side_long >= side_short else SHORT_LIQUIDATION
        both = side_long + side_short
        share = max(side_long, side_short) / both if both else 0.5
        price = self._price
        move_30s, span_30s = self._move_30s(now)
        move = _pct(price, self._start_price) if active else None
        if not active:
            phase = "quiet"
        elif now - self._start_ts > LATE_MS or (move is not None and abs(move) > LATE_MOVE_PCT):
            phase = "late"
        elif now - self._start_ts < EARLY_MS:
            phase = "early"
        else:
            phase = "mid"
        signature = self._signature(direction, move_30s, now)
        matched = sum(1 for v in signature.values() if v)
        action, note = recommend(phase, direction, share)
        confidence = (
            _LEVEL_CONFIDENCE[self._level] + (share - 0.5) * 0.2 + 0.05 * matched if active else 0.0
        )
        alert = {
            "type": kind or "state",
            "symbol": self.symbol,
            "level": LEVELS[self._level],
            "direction": direction,
            "total_usd_60s": round(total, 2),
            "long_usd_60s": round(long_usd, 2),
            "short_usd_60s": round(short_usd, 2),
            "dominant_share": round(share, 4),
            "phase": phase,
            "price": price,
            "price_change_pct": move,
            "price_change_30s_pct": move_30s,
            "price_change_30s_span_s": span_30s,
            "recommended_action": action,
            "action_note": note,
            "confidence": round(min(confidence, 0.99), 2),
            "signature": signature,
            "signature_matched": matched,
            "started_at": iso_ms(self._start_ts) if active or kind else None,
            "ts": iso_ms(now),
        }
        return alert


class CascadeMonitor:
    """Routes events of many symbols to one detector each; ``tick(now)`` ticks them all.

    ``symbols=None`` watches every symbol it sees, creating detectors on first sight;
    otherwise events of other symbols are ignored. ``thresholds`` maps symbols to their own
    settings and ``reference_usd_1m`` to their typical 1-minute notional (the scaling rule);
    the remaining keyword options go to every detector.
    """

    def __init__(
        self,
        symbols: Iterable[str] | None = None,
        *,
        cascade_callback: AlertCallback | None = None,
        record_callback: AlertCallback | None = None,
        thresholds: Mapping[str, CascadeThresholds] | None = None,
        reference_usd_1m: Mapping[str, float] | None = None,
        clock: Clock = now_ms,
        **detector_options: object,
    ) -> None:
        self.cascade_callback = cascade_callback
        self.record_callback = record_callback
        self.thresholds = {k.upper(): v for k, v in (thresholds or {}).items()}
        self.reference_usd_1m = {k.upper(): v for k, v in (reference_usd_1m or {}).items()}
        self._clock = clock
        self._options = detector_options
        self._open = symbols is None
        self.detectors: dict[str, LiquidationCascadeDetector] = {}
        for symbol in symbols or ():
            self.detector(symbol)
        if not self._open and not self.detectors:
            raise UsageError("cascade monitor needs at least one symbol")

    def detector(self, symbol: str) -> LiquidationCascadeDetector:
        """The symbol's detector, created on first use."""
        key = symbol.upper()
        found = self.detectors.get(key)
        if found is None:
            found = LiquidationCascadeDetector(
                key,
                self.cascade_callback,
                thresholds=thresholds_for(
                    key, overrides=self.thresholds, reference_usd_1m=self.reference_usd_1m.get(key)
                ),
                record_callback=self.record_callback,
                clock=self._clock,
                **self._options,
            )
            self.detectors[key] = found
        return found

    def feed(self, event: object) -> tuple[dict, ...]:
        symbol = getattr(event, "symbol", None)
        if symbol is None:
            return _NO_ALERTS
        detector = self.detectors.get(symbol)
        if detector is None:
            if not self._open or type(event) not in (Liquidation, AggTrade):
                return _NO_ALERTS
            detector = self.detector(symbol)
        return detector.feed(event)

    def update_context(self, symbol: str, **context: float | int | None) -> None:
        self.detector(symbol).update_context(**context)

    def tick(self, now: int | None = None) -> list[dict]:
        """Tick every detector at ``now`` (default: the clock). One failing (its callback
        raised) is logged and the others still tick: a bad alert sink must not stop detection."""
        at = self._clock() if now is None else now
        alerts: list[dict] = []
        for detector in list(self.detectors.values()):
            try:
                alerts.extend(detector.tick(at))
            except Exception:
                log.exception("cascade evaluation for %s failed", detector.symbol)
        return alerts

    def finish(self, now: int | None = None) -> list[dict]:
        return [alert for d in self.detectors.values() for alert in d.finish(now)]
