"""The seed's four order-flow modes, each a Strategy with its own broker (balance).

mode 0: no filter (5x) · mode 1: VPIN filter (block if VPIN > 0.7; 3x) · mode 2: liquidity
filter (adaptive VPIN filter, then block if spread > 10 bps or top-of-book depth < 3; 3x) ·
mode 3: all filters (5x). Signal, risk, sizing and leverage rules: ``liqcli.trading.signal``.

Exits, checked on every event while a position is open: stop-loss and take-profit on the
leveraged ROI (net of fees paid so far), VPIN > 0.8 while in profit, a 2-hour time stop, and a
strong reverse signal (the opposite side scoring > 0.7). Positions are opened with market orders
sized as balance × fraction(confidence) × leverage; a "block" is recorded only for a signal that
a filter actually stopped (the seed marked every order blocked).

Post-only entries (``entry="post-only"``, beyond the seed): the same size as a limit order at the
touch on the mode's own side (the best bid for a long), improved toward the mid by
``entry_offset_bps`` (0 = join the touch). A price that would cross (an offset wider than the
spread) is rejected by the broker, as venues do, and recorded as a block ("post-only would
cross"). A working entry fills as maker when trades print through it; while it works the mode
neither exits nor opens anything; still unfilled (or partly filled) ``entry_timeout_ms`` of event
time after it was placed (default 10 s), its rest is cancelled at the next event; at the session's
end (``on_stop``) at once. Exits stay market orders.

The adaptive VPIN filter (the seed names it, liq defines it): block when VPIN exceeds
clamp(EWMA of VPIN at decision points (α = 0.05) + 0.15, 0.5, 0.7).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from liqcli.analytics.orderflow import FeatureSnapshot, OrderFlow
from liqcli.core.events import AggTrade, Liquidation
from liqcli.trading.model import Fill, Order, OrderSide, OrderStatus
from liqcli.trading.signal import (
    ENTRY_SCORE,
    STOPS,
    STRONG_REVERSE_SCORE,
    KellyAdviser,
    LeverageAdvice,
    SignalCache,
    optimal_leverage,
    risk_level,
    rules_leverage,
    size_fraction,
)
from liqcli.trading.strategy import BaseStrategy, Context
from liqcli.trading.wake import SLACK, Columns, first_from

TIME_STOP_MS = 2 * 3_600_000
DEFAULT_LEVERAGE = {0: 5.0, 1: 3.0, 2: 3.0, 3: 5.0}
FILTERS = {0: (), 1: ("vpin",), 2: ("adaptive_vpin", "liquidity"), 3: ("vpin", "adaptive_vpin", "liquidity")}  # fmt: skip
VPIN_BLOCK = 0.7
VPIN_EXIT = 0.8
MAX_SPREAD_BPS = 10.0
MIN_DEPTH = 3.0
ENTRY_TYPES = ("market", "post-only")
ENTRY_TIMEOUT_MS = 10_000  # a post-only entry still unfilled after this much event time: cancelled


_SIGNALS = SignalCache()  # the modes share one snapshot: its signal is computed once


def shared_signal(f: FeatureSnapshot) -> Any:
    """``signal(f)``, computed once per feature state however many modes ask for it."""
    return _SIGNALS.signal(f)


@dataclass(slots=True)
class _Entry:
    """What a position was opened on: recorded with the trade when it closes."""

    signal: str
    confidence: float
    risk: str
    vpin: float | None
    spread_bps: float | None
    depth: float | None
    leverage: float
    suggested_leverage: float
    leverage_reason: str
    stop_loss: float
    take_profit: float
    ts: int
    price: float = 0.0
    mae: float = 0.0  # maximum adverse excursion so far, as a fraction of the entry price


@dataclass(slots=True)
class _Working:
    """A post-only entry resting on the book, with the inputs it was sized on."""

    order: Order
    entry: _Entry | None
    ts: int


def post_only_price(side: OrderSide, bid: float, ask: float, offset_bps: float) -> float:
    """The touch on ``side``'s own side, improved toward the mid by ``offset_bps`` of it."""
    if side is OrderSide.BUY:
        return bid * (1 + offset_bps / 10_000)
    return ask * (1 - offset_bps / 10_000)


@dataclass(slots=True)
class ModeStats:
    blocks: int = 0
    last_block: str = ""
    block_reasons: dict[str, int] = field(default_factory=dict)


def order_flow_observer(symbol: str, flow: OrderFlow, depth: int = 20):
    """An Engine observer that feeds one symbol's book readings and trades into ``flow``."""

    on_trade, on_book = flow.on_trade, flow.on_book

    def observe(event: Any, market: Any) -> None:
        if type(event) is AggTrade or isinstance(event, AggTrade):
            if event.symbol == symbol:
                on_trade(event.ts, event.price, event.qty, event.is_buyer_maker)
            return
        if getattr(event, "symbol", None) != symbol:
            return
        book = market.book(symbol)
        if book is not None and not isinstance(event, Liquidation):
            on_book(event.ts, book.levels("bid", depth), book.levels("ask", depth))

    return observe


def _may_enter(cols: Columns) -> np.ndarray:
    """Rows where the signal may clear the entry threshold (a book has been read)."""
    threshold = ENTRY_SCORE - SLACK
    return ~np.isnan(cols.features["obi"]) & ((cols.long > threshold) | (cols.short > threshold))


class SeedMode(BaseStrategy):
    """One competitor. ``flow`` is the shared feature state, updated before strategies run."""

    # Entry order type (class defaults: subclasses that skip __init__ keep market entries).
    entry_type = "market"
    entry_offset_bps = 0.0
    entry_timeout_ms = ENTRY_TIMEOUT_MS
    working: _Working | None = None  # the post-only entry resting on the book

    def __init__(
        self,
        mode: int,
        symbol: str,
        flow: OrderFlow,
        *,
        leverage: float | None = None,
        dynamic: str = "off",
        adviser: Any = None,
        entry: str = "market",
        entry_offset_bps: float = 0.0,
        entry_timeout_ms: int = ENTRY_TIMEOUT_MS,
    ) -> None:
        if mode not in FILTERS:
            raise ValueError(f"unknown mode {mode!r}")
        if entry not in ENTRY_TYPES:
            raise ValueError(f"unknown entry type {entry!r}")
        self.entry_type = entry
        self.entry_offset_bps = entry_offset_bps
        self.entry_timeout_ms = entry_timeout_ms
        self.working = None  # on the instance: on_event reads it on every event
        self.mode = mode
        self.name = str(mode)
        self.symbol = symbol
        self.flow = flow
        self.leverage = float(leverage if leverage is not None else DEFAULT_LEVERAGE[mode])
        self.filters = FILTERS[mode]
        self.dynamic = dynamic
        self.adviser = adviser  # kelly / vol_target engines: .advise(features, signal, risk)
        self.entry: _Entry | None = None
        self.pending = False  # an order is in flight (live brokers answer later)
        self.stats = ModeStats()
        self._vpin_ewma: float | None = None
        self.closed: list[dict] = []

    # -- decisions ---------------------------------------------------------------------------

    def on_event(self, event: Any, ctx: Context) -> None:
        if self.working is not None and self._tend_working(ctx):
            return  # a post-only entry is working
        f = self.flow.snapshot
        if self.pending or f.obi is None:
            return
        bid, ask = f.bid, f.ask  # f.mid, inlined (every event)
        mid = f.last_price if bid is None or ask is None else (bid + ask) / 2
        if mid is None:
            return
        pos = ctx.broker.position(self.symbol)
        qty = pos.qty
        if qty != 0.0:  # open: the exits
            entry, price = self.entry, pos.entry_price
            if entry is not None and price:
                adverse = -((mid - price) / price * (1 if qty > 0 else -1))
                if adverse > entry.mae:  # max(mae, adverse)
                    entry.mae = adverse
            reason = self._exit_reason(f, pos, ctx, mid)
            if reason:
                self.pending = True
                side = OrderSide.SELL if pos.qty > 0 else OrderSide.BUY
                ctx.market_order(self.symbol, side, abs(pos.qty), reduce_only=True, tag=reason)
                self.pending = False
            return
        sig = shared_signal(f)
        if sig.direction == "NEUTRAL":
            return
        blocked = self._blocked(f)
        if blocked:
            self._block(ctx, blocked, sig.direction, sig.confidence)
            return
        risk = risk_level(f)
        if risk == "CRITICAL":
            self._block(ctx, ["risk CRITICAL"], sig.direction, sig.confidence)
            return
        advice = self._advice(f, sig.confidence, risk)
        lev = advice.leverage if self.dynamic != "off" else self.leverage
        broker = ctx.broker
        balance = broker.account.available if hasattr(broker, "account") else 0.0
        price = f.ask if sig.direction == "LONG" else f.bid
        price = price or f.mid
        margin = balance * size_fraction(sig.confidence)
        qty = margin * lev / price
        if qty <= 0:
            return
        sl, tp = STOPS[risk]
        self.entry = _Entry(
            sig.direction,
            sig.confidence,
            risk,
            f.vpin,
            f.spread_bps,
            f.top_depth,
            lev,
            advice.leverage,
            advice.reason,
            sl,
            tp,
            ctx.now,
        )
        side = OrderSide.BUY if sig.direction == "LONG" else OrderSide.SELL
        # Margin plus the taker fee must fit: size down by the fee so the order is not refused.
        taker = getattr(getattr(broker, "fees", None), "taker", 0.0)
        qty /= 1 + lev * taker * 2
        order = self._place_entry(ctx, side, qty, lev, f)
        ctx.emit(
            {
                "type": "order",
                "mode": self.name,
                "side": side.value,
                "qty": order.qty,
                "leverage": lev,
                "suggested_leverage": advice.leverage,
                "confidence": round(sig.confidence, 4),
                "risk": risk,
                "status": order.status.value,
            }
            | ({"price": order.price, "post_only": True} if order.post_only else {})
        )
        if order.reject_reason == "leverage_exceeds_bracket":  # the venue would refuse it too
            reason = f"leverage {lev:g}x above its bracket for {qty * price:,.0f} notional"
            self._block(ctx, [reason], sig.direction, sig.confidence)
        if not order.filled_qty:
            self.entry = None

    def _place_entry(
        self, ctx: Context, side: OrderSide, qty: float, lev: float, f: FeatureSnapshot
    ) -> Order:
        """The entry: a market order (the seed's) or a post-only limit (``entry_type``)."""
        if self.entry_type != "post-only" or f.bid is None or f.ask is None:
            return ctx.market_order(self.symbol, side, qty, leverage=lev, tag="entry")
        price = post_only_price(side, f.bid, f.ask, self.entry_offset_bps)
        order = ctx.limit_order(
            self.symbol, side, qty, price, post_only=True, leverage=lev, tag="entry"
        )
        entry = self.entry
        if order.status is OrderStatus.REJECTED and order.reject_reason == "post_only_would_cross":
            direction = "LONG" if side is OrderSide.BUY else "SHORT"
            self._block(ctx, ["post-only would cross"], direction, entry.confidence if entry else 0)
        elif order.is_open:
            self.working = _Working(order, entry, ctx.now)
        return order

    def _tend_working(self, ctx: Context, reason: str = "") -> bool:
        """Cancel a post-only entry past its timeout (or now, given a ``reason``); True while it
        still works."""
        working = self.working
        assert working is not None
        order = working.order
        if order.is_open and (reason or ctx.now - working.ts >= self.entry_timeout_ms):
            ctx.cancel(order.id)
            ctx.emit(
                {
                    "type": "cancel",
                    "mode": self.name,
                    "side": order.side.value,
                    "qty": order.remaining,
                    "price": order.price,
                    "filled_qty": order.filled_qty,
                    "reason": reason
                    or f"post-only entry not filled in {self.entry_timeout_ms / 1000:g} s",
                }
            )
        if order.is_open:
            return True
        self.working = None
        if not order.filled_qty:
            self.entry = None
        return False

    def on_stop(self, ctx: Context) -> None:
        # No order outlives the session: a post-only entry still working is cancelled.
        if self.working is not None:
            self._tend_working(ctx, "session ended")

    # -- where this mode can act, for a whole stored tape (``liqcli.trading.wake``) ----------

    def next_wake(self, cols: Columns, start: int, ctx: Context) -> int:
        """The first row ≥ ``start`` of ``cols`` at which ``on_event`` could do more than mark
        the open position's adverse excursion: open (the signal may clear ``ENTRY_SCORE``) or
        close (an exit condition of ``_exit_reason`` may hold). ``start`` itself while an order
        works or is in flight: every event matters then."""
        if self.working is not None or self.pending:
            return start
        pos = ctx.broker.position(self.symbol)
        if pos.qty == 0.0:
            rows = cols.next_where("entry", _may_enter)
            return int(rows[start])
        vpin = cols.vpin
        against = cols.short if pos.qty > 0 else cols.long  # a strong reverse signal's side

        def more(lo: int, hi: int, roi: np.ndarray) -> np.ndarray:
            return ((vpin[lo:hi] > VPIN_EXIT) & (roi > -SLACK)) | (
                against[lo:hi] > STRONG_REVERSE_SCORE - SLACK
            )

        return self._exit_row(cols, start, pos, more)

    def wake_key(self) -> tuple:
        """What ``next_wake``'s answer depends on besides the position (a driver asks again
        when it changes)."""
        return (id(self.entry), self.working is None, self.pending)

    def _exit_row(
        self, cols: Columns, start: int, pos: Any, more: Any = None, limit: int | None = None
    ) -> int:
        """The first row ≥ ``start`` where the stop-loss or take-profit (``_exit_reason``'s ROI
        on the mid) or the time stop may close ``pos``, or ``more(lo, hi, roi)`` holds; at most
        ``limit`` (a row woken anyway: no need to look further)."""
        n = cols.size if limit is None else limit
        # ctx.now is the event's time (the tape is in time order): the time stop's row
        stop = int(np.searchsorted(cols.ts, pos.opened_ts + TIME_STOP_MS, side="left"))
        end = max(start, min(n, stop))
        entry = self.entry
        sl, tp = (entry.stop_loss, entry.take_profit) if entry else STOPS["WARNING"]
        qty, price, fees, funding = pos.qty, pos.entry_price, pos.fees, pos.funding
        margin = pos.margin or 1e-12
        mid = cols.mid

        def exits(lo: int, hi: int) -> np.ndarray:
            roi = (qty * (mid[lo:hi] - price) - fees - funding) / margin  # _exit_reason's
            hit = (roi <= -sl + SLACK) | (roi >= tp - SLACK)
            return hit if more is None else hit | more(lo, hi, roi)

        return first_from(start, end, exits)

    def skipped(self, ctx: Context, lowest_mid: float, highest_mid: float) -> None:
        """Events a driver proved idle (``next_wake``) were not fed: their extreme mids, for the
        open position's maximum adverse excursion (a long's is at the low, a short's at the
        high: the adverse move is monotonic in the mid, rounding included)."""
        entry = self.entry
        pos = ctx.broker.position(self.symbol)
        price = pos.entry_price
        if entry is None or not price or pos.qty == 0.0:
            return
        long = pos.qty > 0
        mid = lowest_mid if long else highest_mid
        adverse = -((mid - price) / price * (1 if long else -1))  # on_event's
        if adverse > entry.mae:
            entry.mae = adverse

    def _exit_reason(
        self, f: FeatureSnapshot, pos: Any, ctx: Context, mark: float | None = None
    ) -> str:
        if mark is None:
            mark = f.mid
        margin = pos.margin or 1e-12
        roi = (pos.qty * (mark - pos.entry_price) - pos.fees - pos.funding) / margin
        entry = self.entry
        sl, tp = (entry.stop_loss, entry.take_profit) if entry else STOPS["WARNING"]
        if roi <= -sl:
            return "stop_loss"
        if roi >= tp:
            return "take_profit"
        if (f.vpin or 0.0) > VPIN_EXIT and roi > 0:
            return "vpin_exit"
        if ctx.now - pos.opened_ts >= TIME_STOP_MS:
            return "time_stop"
        if _SIGNALS.reverses(f, pos.qty > 0):
            return "reverse_signal"
        return ""

    def _blocked(self, f: FeatureSnapshot) -> list[str]:
        reasons = []
        vpin = f.vpin
        if "vpin" in self.filters and vpin is not None and vpin > VPIN_BLOCK:
            reasons.append(f"VPIN {vpin:.2f} > {VPIN_BLOCK}")
        if "adaptive_vpin" in self.filters and vpin is not None:
            limit = self._adaptive_limit(vpin)
            if vpin > limit:
                reasons.append(f"VPIN {vpin:.2f} > adaptive {limit:.2f}")
        if "liquidity" in self.filters:
            if f.spread_bps is not None and f.spread_bps > MAX_SPREAD_BPS:
                reasons.append(f"spread {f.spread_bps:.1f} bps > {MAX_SPREAD_BPS:g}")
            if f.top_depth is not None and f.top_depth < MIN_DEPTH:
                reasons.append(f"depth {f.top_depth:.2f} < {MIN_DEPTH:g}")
        return reasons

    def _adaptive_limit(self, vpin: float) -> float:
        self._vpin_ewma = vpin if self._vpin_ewma is None else 0.95 * self._vpin_ewma + 0.05 * vpin
        return min(VPIN_BLOCK, max(0.5, self._vpin_ewma + 0.15))

    def _advice(self, f: FeatureSnapshot, confidence: float, risk: str) -> LeverageAdvice:
        if self.dynamic in ("kelly", "vol_target") and self.adviser is not None:
            return self.adviser.advise(f, confidence, risk)
        return rules_leverage(confidence, risk, f.vpin, f.atr_ratio)

    def _block(self, ctx: Context, reasons: list[str], direction: str, confidence: float) -> None:
        self.stats.blocks += 1
        self.stats.last_block = "; ".join(reasons)
        for r in reasons:
            key = r.split(" ")[0]
            self.stats.block_reasons[key] = self.stats.block_reasons.get(key, 0) + 1
        ctx.emit(
            {
                "type": "block",
                "mode": self.name,
                "direction": direction,
                "confidence": round(confidence, 4),
                "reasons": reasons,
            }
        )

    # -- records -----------------------------------------------------------------------------

    def on_fill(self, fill: Fill, ctx: Context) -> None:
        working = self.working
        if working is not None and fill.order_id == working.order.id:
            self.entry = working.entry  # the post-only entry filled: its inputs go with the trade
        ctx.emit(
            {
                "type": "fill",
                "mode": self.name,
                "side": fill.side.value,
                "qty": fill.qty,
                "price": fill.price,
                "fee": fill.fee,
                "liquidity": fill.liquidity.value,
                "reason": fill.tag,
            }
        )
        take = getattr(ctx.broker, "take_trades", None)
        if take is None:
            return
        for trip in take():
            e = self.entry
            record = {
                "type": "close",
                "mode": self.name,
                "symbol": trip.symbol,
                "side": trip.side,
                "entry_ts": trip.entry_ts,
                "exit_ts": trip.exit_ts,
                "entry_price": trip.entry_price,
                "exit_price": trip.exit_price,
                "qty": trip.qty,
                "leverage": trip.leverage,
                "suggested_leverage": e.suggested_leverage if e else trip.leverage,
                "leverage_reason": e.leverage_reason if e else "",
                "fees": trip.fees,
                "funding": trip.funding,
                "pnl": trip.pnl,
                "roi": trip.roi,
                "optimal_leverage": optimal_leverage(
                    trip.pnl, e.mae if e else 0.0, e.stop_loss if e else 0.08
                ),
                "mae": e.mae if e else None,
                "exit_reason": "liquidation" if trip.liquidated else trip.exit_tag,
                "signal": e.signal if e else "",
                "confidence": e.confidence if e else None,
                "risk_level": e.risk if e else "",
                "vpin": e.vpin if e else None,
                "spread_bps": e.spread_bps if e else None,
                "depth": e.depth if e else None,
            }
            if isinstance(self.adviser, KellyAdviser):
                self.adviser.record(trip.pnl, trip.qty * trip.entry_price)
            self.closed.append(record)
            ctx.emit(record)
            self.entry = None
