"""``cascade`` mode, the fifth competitor: ``liq cascade``'s detector on the liquidation stream.

The detector (``liqcli.analytics.cascade.LiquidationCascadeDetector``) is fed this symbol's
Liquidation and AggTrade events and ticked at each new second of event time (as
``liq cascade`` does on a replay), so live, recorded and stored runs decide the same.

The rule (evaluated on every liquidation and at each new second):

- **Follow early.** While the 60-s window holds MINOR or more (the seed holds at QUIET and
  BUILDING; the window's total, not the level the detector's hysteresis holds up), an early
  long-liquidation cascade (``follow_short``) opens a SHORT; an early short-liquidation cascade
  (``follow_long``) opens a LONG. One follow entry per cascade.
- **Reverse late.** ``prepare_long_reversal`` (late long cascade: buy the flush) closes a short
  follow position (exit ``reversal``) and opens a LONG; ``prepare_short_reversal`` mirrors it.
  From flat the reversal is taken too. One reversal entry per cascade.
- **Hold** on everything else: two-sided (mixed) liquidations, the mid phase, quiet.
- A follow position still open when its cascade ends is closed (exit ``cascade_end``): the
  move it followed is over. A reversal position runs to its stops.

Size and stops are the seed modes' (``liqcli.trading.signal``): confidence = the detector's
confidence; margin = available balance × size_fraction(confidence) (> 0.8: 0.8, > 0.6: 0.5,
else 0.3), quantity = margin × leverage / price, sized down by the taker fee as the seed modes
do; risk level from VPIN, spread and depth of the shared order-flow features -> SL/TP on the
leveraged ROI net of fees (SAFE 5/8 %, WARNING 8/12 %, DANGER 10/15 %), CRITICAL blocks the
entry; the 2-hour time stop. Default leverage 3 (``--leverage cascade=N``); with
``--dynamic-leverage`` the same advisers as the seed modes size it.

The detector's window is not stored: after a restart the open position and balance resume
(``paper_state``) and the detector starts from an empty window.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from liqcli.analytics.cascade import LiquidationCascadeDetector
from liqcli.analytics.orderflow import OrderFlow
from liqcli.core.events import AggTrade, Liquidation
from liqcli.trading.model import Fill, OrderSide
from liqcli.trading.signal import STOPS, risk_level, size_fraction
from liqcli.trading.strategies.seed import TIME_STOP_MS, ModeStats, SeedMode, _Entry
from liqcli.trading.strategy import Context
from liqcli.trading.wake import Columns

DEFAULT_CASCADE_LEVERAGE = 3.0
FOLLOW = {"follow_short": "SHORT", "follow_long": "LONG"}
REVERSAL = {"prepare_long_reversal": "LONG", "prepare_short_reversal": "SHORT"}


def _first_of_second(cols: Columns) -> np.ndarray:
    """The rows that start a new second of event time (where ``on_event`` ticks the detector);
    the first row of a tape part always (a part may start inside a second: woken for nothing)."""
    sec = cols.ts // 1000
    return np.concatenate(([True], sec[1:] != sec[:-1]))


class CascadeMode(SeedMode):
    """Follows a liquidation cascade early and takes the reversal late. Records (orders, fills,
    closes, blocks) and the stored entry are the seed modes' (inherited ``on_fill``/``_block``)."""

    def __init__(
        self,
        symbol: str,
        flow: OrderFlow,
        *,
        leverage: float | None = None,
        dynamic: str = "off",
        adviser: Any = None,
        detector: LiquidationCascadeDetector | None = None,
        exchange: str | None = "binance",
    ) -> None:
        # Not SeedMode.__init__: no order-flow filters; the same state the records need.
        self.mode = -1
        self.name = "cascade"
        self.symbol = symbol
        self.flow = flow
        self.leverage = float(leverage if leverage is not None else DEFAULT_CASCADE_LEVERAGE)
        self.filters = ()
        self.dynamic = dynamic
        self.adviser = adviser
        self.entry: _Entry | None = None
        self.pending = False
        self.stats = ModeStats()
        self._vpin_ewma = None
        self.closed: list[dict] = []
        # The venue traded on: a replay of a store that `liq watch` also fills holds other
        # venues' liquidations of the same symbol, which the live run never saw.
        self.exchange = exchange
        self.detector = detector or LiquidationCascadeDetector(symbol, clock=lambda: 0)
        self.last_state: dict | None = None  # the detector's latest picture (dashboard)
        self._second = -1
        self._taken: dict[str, set[str]] = {}  # cascade start -> {"follow", "reversal"}
        self._queued: tuple[str, str, float] | None = None  # entry to open once the close fills

    # -- decisions ---------------------------------------------------------------------------

    def on_event(self, event: Any, ctx: Context) -> None:
        det = self.detector
        ts = event.ts
        alerts: tuple[dict, ...] = ()
        new_second = ts // 1000 > self._second
        if new_second:
            self._second = ts // 1000
            alerts = det.tick(ts)
        kind = type(event)
        is_liq = (
            kind is Liquidation
            and event.symbol == self.symbol
            and (self.exchange is None or event.exchange == self.exchange)
        )
        if is_liq or (kind is AggTrade and event.exchange == (self.exchange or event.exchange)):
            alerts += det.feed(event)
        pos = ctx.position(self.symbol)
        if self.pending:
            return
        if not pos.is_flat:
            reason = self._exit_reason(pos, ctx)
            following = self.entry is not None and self.entry.signal in FOLLOW
            if not reason and following and any(a["type"] == "cascade_end" for a in alerts):
                reason = "cascade_end"
            if reason:
                self._close(pos, ctx, reason)
                return
        if not (is_liq or new_second) or not det.active:
            return
        state = self.last_state = det.state()
        action = state["recommended_action"]
        # The window's own total, not the level held up by hysteresis: no entry on a stale level.
        if state["total_usd_60s"] < det.thresholds.minor:
            return
        taken = self._taken.setdefault(state["started_at"] or "", set())
        if action in FOLLOW:
            if pos.is_flat and "follow" not in taken:
                taken.add("follow")
                self._open(FOLLOW[action], action, state["confidence"], ctx)
        elif action in REVERSAL and "reversal" not in taken:
            direction = REVERSAL[action]
            if pos.is_flat:
                taken.add("reversal")
                self._open(direction, action, state["confidence"], ctx)
            elif (pos.qty > 0) != (direction == "LONG"):
                taken.add("reversal")
                self._queued = (direction, action, state["confidence"])
                self._close(pos, ctx, "reversal")

    # -- where this mode can act, for a whole stored tape (``liqcli.trading.wake``) ----------

    def next_wake(self, cols: Columns, start: int, ctx: Context) -> int:
        """The first row ≥ ``start`` at which ``on_event`` could do more than keep the detector
        and the adverse excursion current: while a cascade is active, the first row of the
        next second (the detector's tick: an entry, or the end that closes a follow position);
        a liquidation (a driver steps every one: only they start a cascade); for an open
        position, where its stops on the mid or the time stop may hold; every row while an
        order is in flight."""
        if self.pending or self._queued is not None:
            return start
        pos = ctx.broker.position(self.symbol)
        limit = (
            int(cols.next_where("second", _first_of_second)[start])
            if self.detector.active
            else cols.size
        )
        if pos.qty == 0.0:
            return limit
        return self._exit_row(cols, start, pos, limit=limit)

    def wake_key(self) -> tuple:
        return (*super().wake_key(), self.detector.active, self._queued is not None)

    def skipped_rows(
        self, ts: np.ndarray, is_trade: np.ndarray, price: np.ndarray, exchange: str
    ) -> None:
        """Rows a driver proved idle (``next_wake``) were not fed: the detector still takes
        them as ``on_event`` would, a tick at each new second's first row and that second's
        trades (``feed_second``), so its window, prices and levels stay exact. No alert can
        come of them: ticks are skipped only while no cascade is active (else each second's
        first row is stepped), and within a second the trades only move the price."""
        if not ts.size:
            return
        det = self.detector
        sec = ts // 1000
        firsts = np.flatnonzero(np.concatenate(([True], sec[1:] != sec[:-1])))
        if self.exchange is None or self.exchange == exchange:
            trades = np.flatnonzero(is_trade)
        else:  # on_event feeds only the venue traded on
            trades = np.empty(0, np.int64)
        bounds = np.searchsorted(trades, np.append(firsts, ts.size))
        for g, row in enumerate(firsts.tolist()):
            second = int(sec[row])
            alerts: tuple[dict, ...] = ()
            if second > self._second:
                self._second = second
                alerts = det.tick(int(ts[row]))
            lo, hi = bounds[g], bounds[g + 1]
            if hi > lo:
                f, last = int(trades[lo]), int(trades[hi - 1])
                alerts += det.feed_second(
                    int(ts[f]), float(price[f]), int(ts[last]), float(price[last])
                )
            if alerts:  # a row the mode would have acted on was skipped: never go on quietly
                raise RuntimeError(f"gated feed skipped a cascade alert at {int(ts[row])} ms")

    def _exit_reason(self, pos: Any, ctx: Context) -> str:
        mark = self.flow.snapshot.mid
        entry = self.entry
        if entry is not None and pos.entry_price and mark:
            move = (mark - pos.entry_price) / pos.entry_price * (1 if pos.qty > 0 else -1)
            entry.mae = max(entry.mae, -move)
        if mark:
            roi = (pos.unrealized(mark) - pos.fees - pos.funding) / (pos.margin or 1e-12)
            sl, tp = (entry.stop_loss, entry.take_profit) if entry else STOPS["WARNING"]
            if roi <= -sl:
                return "stop_loss"
            if roi >= tp:
                return "take_profit"
        if ctx.now - pos.opened_ts >= TIME_STOP_MS:
            return "time_stop"
        return ""

    def _close(self, pos: Any, ctx: Context, reason: str) -> None:
        side = OrderSide.SELL if pos.qty > 0 else OrderSide.BUY
        ctx.market_order(self.symbol, side, abs(pos.qty), reduce_only=True, tag=reason)

    def _open(self, direction: str, action: str, confidence: float, ctx: Context) -> None:
        f = self.flow.snapshot
        price = (f.ask if direction == "LONG" else f.bid) or f.mid
        if not price:
            return
        risk = risk_level(f)
        if risk == "CRITICAL":
            self._block(ctx, ["risk CRITICAL"], direction, confidence)
            return
        advice = self._advice(f, confidence, risk)
        lev = advice.leverage if self.dynamic != "off" else self.leverage
        broker = ctx.broker
        balance = broker.account.available if hasattr(broker, "account") else 0.0
        qty = balance * size_fraction(confidence) * lev / price
        taker = getattr(getattr(broker, "fees", None), "taker", 0.0)
        qty /= 1 + lev * taker * 2  # margin plus the taker fee must fit, as in the seed modes
        if qty <= 0:
            return
        sl, tp = STOPS[risk]
        self.entry = _Entry(
            action,
            confidence,
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
        side = OrderSide.BUY if direction == "LONG" else OrderSide.SELL
        order = ctx.market_order(self.symbol, side, qty, leverage=lev, tag="entry")
        ctx.emit(
            {
                "type": "order",
                "mode": self.name,
                "side": side.value,
                "qty": order.qty,
                "leverage": lev,
                "suggested_leverage": advice.leverage,
                "confidence": round(confidence, 4),
                "risk": risk,
                "signal": action,
                "status": order.status.value,
            }
        )
        if order.reject_reason == "leverage_exceeds_bracket":  # the venue would refuse it too
            reason = f"leverage {lev:g}x above its bracket for {qty * price:,.0f} notional"
            self._block(ctx, [reason], direction, confidence)
        if not order.filled_qty:
            self.entry = None

    def on_fill(self, fill: Fill, ctx: Context) -> None:
        super().on_fill(fill, ctx)  # the close record uses the entry it was opened on
        queued = self._queued
        if queued is not None and ctx.position(self.symbol).is_flat:
            self._queued = None
            self._open(*queued, ctx)
