"""``liq mm``'s market-making strategy: the seed's parameters and position table, without its
defects. Pure: it sees books and fills, acts through the broker it is given (the SimBroker for
``--paper``, a venue's broker live) and keeps no timers (the engine calls ``on_timer``).

Quotes, every ``interval`` (and at once when the book moves past the refresh tolerance):
- raw levels i = 0..max_orders−1: bid = mid·(1 − s/200·(1+i)), ask = mid·(1 + s/200·(1+i)),
  with s = ``spread`` (full spread, %).
- inventory skew as a fraction of the half-spread (the seed used a fraction of the *price*, which
  could cross the book): both quotes shift by −skew · clamp(pos/max_position, −1, 1) · mid·s/200,
  then a bid is clamped to at most one tick under the best ask and an ask to at least one tick
  over the best bid, so a quote never crosses.
- prices rounded to the tick away from the other side (bids down, asks up), sizes down to the
  step; a level below the minimum size is skipped.
- the hard ``max_position`` is never exceeded by what is held plus what rests: each side's levels
  are sized from the room left (max − pos for bids, max + pos for asks), so all fills together
  stay inside it.
- refresh: a resting order is kept while its price is within ``refresh_tolerance_bps`` of the
  wanted one and it is younger than ``max_order_age_s``; only the others are cancelled and
  re-placed (fewer requests, kept queue position).
- a post-only rejection re-quotes that level one tick further from the book.

Position table (|pos| against ``target_position`` ≥ 0, ``position_threshold``, ``max_position``):
inside target + threshold: nothing; above it: a reduce-only post-only order at the best price
of our side for the excess over target + threshold; above max: a reduce-only market order for
the excess over max. Stop-loss / take-profit on unrealised PnL (quote units; ``stop_loss`` is
negative): cancel all, close at market, continue. Kill switch: PnL (realised + unrealised −
fees) at or below −``max_loss``, cancel all, close, stop quoting for good; a crossed book or one
older than ``stale_book_s``: cancel all and stop quoting until it is fresh again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from liqcli.errors import UsageError
from liqcli.trading.model import Fill, Order, OrderSide, OrderStatus, OrderType
from liqcli.trading.strategy import BaseStrategy, Context


@dataclass(frozen=True)
class MarketRules:
    tick: float
    step: float
    min_qty: float

    def round_price(self, price: float, side: OrderSide) -> float:
        ticks = Decimal(repr(price)) / Decimal(repr(self.tick))
        hair = Decimal("1e-9") if side is OrderSide.BUY else Decimal("-1e-9")
        ticks = (ticks + hair).to_integral_value(
            ROUND_FLOOR if side is OrderSide.BUY else ROUND_CEILING
        )
        return float(ticks * Decimal(repr(self.tick)))

    def round_qty(self, qty: float) -> float:
        # A hair of tolerance: 1.0 - 0.4 - 0.4 is 0.19999999999999996 in floats, and is 0.2.
        steps = (Decimal(repr(qty)) / Decimal(repr(self.step)) + Decimal("1e-9")).to_integral_value(
            ROUND_FLOOR
        )
        return float(steps * Decimal(repr(self.step)))


@dataclass(frozen=True)
class MMParams:
    symbol: str
    spread: float  # full spread, percent
    quantity: float  # per level, base units
    max_orders: int = 1  # levels per side
    target_position: float = 0.0
    max_position: float = 1.0
    position_threshold: float = 0.5
    inventory_skew: float = 0.0  # 0..1 of the half-spread
    stop_loss: float | None = None  # negative, quote units of unrealised PnL
    take_profit: float | None = None
    max_loss: float | None = None  # kill switch, positive quote units
    interval_s: float = 5.0
    refresh_tolerance_bps: float = 5.0
    max_order_age_s: float = 300.0
    stale_book_s: float = 10.0

    def validate(self) -> None:
        problems = []
        if not 0 < self.spread < 50:
            problems.append(f"--spread must be between 0 and 50 (percent), got {self.spread:g}")
        if not self.quantity > 0:
            problems.append(f"--quantity must be positive, got {self.quantity:g}")
        if not 1 <= self.max_orders <= 20:
            problems.append(f"--max-orders must be 1..20, got {self.max_orders}")
        if not self.max_position > 0:
            problems.append(f"--max-position must be positive, got {self.max_position:g}")
        if not 0 <= self.target_position <= self.max_position:
            problems.append("--target-position must be between 0 and --max-position")
        if self.position_threshold < 0:
            problems.append("--position-threshold must be >= 0")
        if not 0 <= self.inventory_skew <= 1:
            problems.append(
                f"--inventory-skew must be between 0 and 1, got {self.inventory_skew:g}"
            )
        if self.stop_loss is not None and self.stop_loss >= 0:
            problems.append(
                f"--stop-loss is a loss: give a negative amount, got {self.stop_loss:g}"
            )
        if self.take_profit is not None and self.take_profit <= 0:
            problems.append(f"--take-profit must be positive, got {self.take_profit:g}")
        if self.max_loss is not None and self.max_loss <= 0:
            problems.append(f"--max-loss must be positive, got {self.max_loss:g}")
        if not self.interval_s > 0:
            problems.append("--interval must be positive")
        if self.refresh_tolerance_bps < 0 or self.max_order_age_s <= 0:
            problems.append("--refresh-tolerance must be >= 0 and --max-order-age positive")
        if problems:
            raise UsageError("; ".join(problems))


@dataclass(slots=True)
class Working:
    order: Order
    level: int
    placed_ts: int
    nudge: int = 0  # ticks away it was placed after post-only rejects


@dataclass
class MMStats:
    submits: int = 0
    cancels: int = 0
    post_only_rejects: int = 0
    reductions: int = 0
    stops: int = 0
    halted: str = ""  # why quoting stopped (kill switch), empty while quoting
    paused: str = ""  # stale or crossed book, quoting resumes when it is fresh
    fills: int = 0
    fees: float = 0.0
    realized: float = 0.0
    records: list[dict] = field(default_factory=list)


class MarketMaker(BaseStrategy):
    def __init__(self, params: MMParams, rules: MarketRules) -> None:
        params.validate()
        self.p = params
        self.rules = rules
        self.timer_ms = int(params.interval_s * 1000)
        self.working: dict[str, Working] = {}
        self.nudge: dict[tuple[OrderSide, int], int] = {}  # ticks away after post-only rejects
        self.stats = MMStats()
        self.last_book_ts: int | None = None

    # -- callbacks ---------------------------------------------------------------------------

    def on_event(self, event: Any, ctx: Context) -> None:
        if getattr(event, "symbol", None) != self.p.symbol:
            return
        kind = type(event).__name__
        if kind in ("BookTop", "BookSnapshot", "BookDelta"):
            self.last_book_ts = ctx.now
            if self.paused_reason(ctx) == "" and self.stats.paused:
                self.stats.paused = ""
            if self._moved_past_tolerance(ctx):
                self.quote(ctx)

    def on_timer(self, ts: int, ctx: Context) -> None:
        self.quote(ctx)

    def on_fill(self, fill: Fill, ctx: Context) -> None:
        if fill.symbol != self.p.symbol:
            return
        self.stats.fills += 1
        self.stats.fees += fill.fee
        self.stats.realized += fill.realized_pnl
        ctx.emit(
            {
                "type": "fill",
                "side": fill.side.value,
                "price": fill.price,
                "qty": fill.qty,
                "fee": fill.fee,
                "liquidity": fill.liquidity.value,
                "order_id": fill.order_id,
            }
        )
        w = self.working.get(fill.order_id)
        if w is not None and not w.order.is_open:
            del self.working[fill.order_id]

    def on_stop(self, ctx: Context) -> None:
        self.cancel_all(ctx, "stop")

    def on_reject(self, order: Order, ctx: Context) -> None:
        """A live broker's late rejection (the SimBroker rejects inside ``submit``): a post-only
        quote that would have crossed is re-quoted one more tick away, at once."""
        w = self.working.pop(order.id, None)
        ctx.emit({"type": "order", "side": order.side.value, "price": order.price, "qty": order.qty,
                  "tag": order.tag, "status": order.status.value, "reason": order.reject_reason})  # fmt: skip
        if w is None or order.tag != "quote" or order.reject_reason != "post_only_would_cross":
            return
        self.stats.post_only_rejects += 1
        self.nudge[(order.side, w.level)] = w.nudge + 1
        self.quote(ctx)

    # -- the decision --------------------------------------------------------------------------

    def paused_reason(self, ctx: Context) -> str:
        book = ctx.market.book(self.p.symbol)
        if book is None or self.last_book_ts is None:
            return "no book yet"
        bids, asks = book.levels("bid", 1), book.levels("ask", 1)
        if not bids or not asks:
            return "one side of the book is empty"
        if bids[0][0] >= asks[0][0]:
            return f"crossed book (bid {bids[0][0]:g} >= ask {asks[0][0]:g})"
        if ctx.now - self.last_book_ts > self.p.stale_book_s * 1000:
            return f"stale book ({(ctx.now - self.last_book_ts) / 1000:.1f}s old)"
        return ""

    def quote(self, ctx: Context) -> None:
        if self.stats.halted:
            return
        self._sync(ctx)
        reason = self.paused_reason(ctx)
        if reason:
            if not self.stats.paused:
                self.stats.paused = reason
                self.cancel_all(ctx, reason)
                ctx.emit({"type": "stop", "reason": reason, "resumable": True})
            return
        if any(w.order.tag in ("close", "reduce_max") for w in self.working.values()):
            return  # a live broker's market close is in flight: decide again once it is done
        pos = ctx.position(self.p.symbol)
        mid = ctx.market.mid(self.p.symbol)
        assert mid is not None
        if self._risk_exits(ctx, pos, mid):
            return
        self._reduce(ctx, pos)
        wanted = self.wanted_quotes(ctx, pos.qty, mid)
        self._apply(ctx, wanted, mid)

    def wanted_quotes(
        self, ctx: Context, pos: float, mid: float
    ) -> dict[tuple[OrderSide, int], tuple[float, float]]:
        """(side, level) -> (price, qty) for this book and position."""
        p, rules = self.p, self.rules
        book = ctx.market.book(p.symbol)
        best_bid = book.levels("bid", 1)[0][0]
        best_ask = book.levels("ask", 1)[0][0]
        half = mid * p.spread / 200
        skew = -p.inventory_skew * max(-1.0, min(1.0, pos / p.max_position)) * half
        out: dict[tuple[OrderSide, int], tuple[float, float]] = {}
        room = {OrderSide.BUY: p.max_position - pos, OrderSide.SELL: p.max_position + pos}
        for side in (OrderSide.BUY, OrderSide.SELL):
            left = room[side]
            for level in range(p.max_orders):
                distance = half * (1 + level)
                raw = mid - distance if side is OrderSide.BUY else mid + distance
                price = raw + skew
                # never cross: at most one tick inside the other side's best price
                if side is OrderSide.BUY:
                    price = min(price, best_ask - rules.tick)
                else:
                    price = max(price, best_bid + rules.tick)
                nudge = self.nudge.get((side, level), 0) * rules.tick
                price = price - nudge if side is OrderSide.BUY else price + nudge
                price = rules.round_price(price, side)
                qty = rules.round_qty(min(p.quantity, max(left, 0.0)))
                if qty < rules.min_qty or price <= 0:
                    continue
                left -= qty
                out[(side, level)] = (price, qty)
        return out

    def _apply(self, ctx: Context, wanted: dict, mid: float) -> None:
        tol = self.p.refresh_tolerance_bps / 10_000
        age_ms = self.p.max_order_age_s * 1000
        keep: set[tuple[OrderSide, int]] = set()
        for oid, w in list(self.working.items()):
            if w.order.tag != "quote":
                continue
            key = (w.order.side, w.level)
            want = wanted.get(key)
            fresh = ctx.now - w.placed_ts < age_ms
            if (
                want is not None
                and key not in keep
                and fresh
                and abs(want[0] - (w.order.price or 0)) <= tol * mid
                and math.isclose(want[1], w.order.remaining, rel_tol=1e-9)
            ):
                keep.add(key)
                continue
            self._cancel(ctx, oid, "refresh")
        for key, (price, qty) in sorted(wanted.items(), key=lambda kv: (kv[0][0].value, kv[0][1])):
            if key in keep:
                continue
            side, level = key
            order = Order(
                self.p.symbol, side, qty, OrderType.LIMIT, price=price, post_only=True, tag="quote"
            )
            self._submit(ctx, order, level)
            if order.status is OrderStatus.REJECTED and order.reject_reason in (
                "post_only_would_cross",
            ):
                self.stats.post_only_rejects += 1
                self.nudge[key] = self.nudge.get(key, 0) + 1
                away = price - self.rules.tick if side is OrderSide.BUY else price + self.rules.tick
                retry = Order(self.p.symbol, side, qty, OrderType.LIMIT,
                              price=self.rules.round_price(away, side), post_only=True, tag="quote")  # fmt: skip
                self._submit(ctx, retry, level)
            elif order.status is not OrderStatus.REJECTED:
                self.nudge.pop(key, None)

    def _reduce(self, ctx: Context, pos: Any) -> None:
        p = self.p
        size = abs(pos.qty)
        if size == 0:
            return
        side = OrderSide.SELL if pos.qty > 0 else OrderSide.BUY
        if size > p.max_position:
            excess = self.rules.round_qty(size - p.max_position)
            if excess >= self.rules.min_qty:
                self.stats.reductions += 1
                self._submit(
                    ctx, Order(p.symbol, side, excess, reduce_only=True, tag="reduce_max"), -1
                )
            return
        limit = p.target_position + p.position_threshold
        if size <= limit:
            self._cancel_tagged(ctx, "reduce")
            return
        excess = self.rules.round_qty(size - limit)
        if excess < self.rules.min_qty:
            return
        book = ctx.market.book(p.symbol)
        best = book.levels("ask" if side is OrderSide.SELL else "bid", 1)[0][0]
        current = [w for w in self.working.values() if w.order.tag == "reduce"]
        if (
            current
            and current[0].order.price == best
            and math.isclose(current[0].order.remaining, excess)
        ):
            return
        self._cancel_tagged(ctx, "reduce")
        self.stats.reductions += 1
        order = Order(
            p.symbol,
            side,
            excess,
            OrderType.LIMIT,
            price=best,
            post_only=True,
            reduce_only=True,
            tag="reduce",
        )
        self._submit(ctx, order, -1)

    def _risk_exits(self, ctx: Context, pos: Any, mid: float) -> bool:
        p = self.p
        unrealized = pos.unrealized(mid) if pos.qty else 0.0
        total = self.stats.realized + unrealized - self.stats.fees
        if p.max_loss is not None and total <= -p.max_loss:
            self.stats.halted = f"max loss: PnL {total:.2f} <= -{p.max_loss:g}"
            self._flatten(ctx, pos, self.stats.halted)
            ctx.emit({"type": "stop", "reason": self.stats.halted, "resumable": False})
            return True
        if pos.qty and p.stop_loss is not None and unrealized <= p.stop_loss:
            self.stats.stops += 1
            self._flatten(ctx, pos, f"stop loss: unrealised {unrealized:.2f} <= {p.stop_loss:g}")
            return True
        if pos.qty and p.take_profit is not None and unrealized >= p.take_profit:
            self.stats.stops += 1
            self._flatten(
                ctx, pos, f"take profit: unrealised {unrealized:.2f} >= {p.take_profit:g}"
            )
            return True
        return False

    def _flatten(self, ctx: Context, pos: Any, reason: str) -> None:
        self.cancel_all(ctx, reason)
        if pos.qty:
            side = OrderSide.SELL if pos.qty > 0 else OrderSide.BUY
            self._submit(
                ctx, Order(self.p.symbol, side, abs(pos.qty), reduce_only=True, tag="close"), -1
            )

    # -- bookkeeping ---------------------------------------------------------------------------

    def _submit(self, ctx: Context, order: Order, level: int) -> Order:
        self.stats.submits += 1
        ctx.submit(order)
        ctx.emit({"type": "order", "side": order.side.value, "price": order.price, "qty": order.qty,
                  "tag": order.tag, "status": order.status.value, "reason": order.reject_reason})  # fmt: skip
        if order.is_open:
            nudge = self.nudge.get((order.side, level), 0)
            self.working[order.id] = Working(order, level, ctx.now, nudge)
        return order

    def _cancel(self, ctx: Context, order_id: str, why: str) -> None:
        w = self.working.pop(order_id, None)
        self.stats.cancels += 1
        ctx.cancel(order_id)
        ctx.emit({"type": "cancel", "order_id": order_id, "reason": why,
                  "price": w.order.price if w else None})  # fmt: skip

    def _cancel_tagged(self, ctx: Context, tag: str) -> None:
        for oid, w in list(self.working.items()):
            if w.order.tag == tag:
                self._cancel(ctx, oid, "position back inside the threshold")

    def cancel_all(self, ctx: Context, why: str) -> None:
        if self.working:
            self.stats.cancels += 1
        ctx.cancel_all(self.p.symbol)
        self.working.clear()
        ctx.emit({"type": "cancel", "order_id": None, "reason": f"all: {why}"})

    def _sync(self, ctx: Context) -> None:
        """The broker is the truth: forget orders it no longer has open (filled, cancelled)."""
        live = {o.id for o in ctx.broker.open_orders(self.p.symbol)}
        for oid in list(self.working):
            if oid not in live:
                del self.working[oid]

    def _moved_past_tolerance(self, ctx: Context) -> bool:
        mid = ctx.market.mid(self.p.symbol)
        if mid is None or not self.working or self.paused_reason(ctx):
            return False
        pos = ctx.position(self.p.symbol).qty
        wanted = self.wanted_quotes(ctx, pos, mid)
        tol = self.p.refresh_tolerance_bps / 10_000 * mid
        for w in self.working.values():
            want = wanted.get((w.order.side, w.level))
            if w.order.tag == "quote" and (
                want is None or abs(want[0] - (w.order.price or 0)) > tol
            ):
                return True
        return False
