"""SimBroker: a simulated venue that fills orders against the maintained book and the trade tape.

Rules (documented in the README's trading section):
- Market orders walk the opposite side of the book level by level (slippage from real depth),
  then pay ``slippage_bps`` more (default 2 bps); past the known depth the rest fills at the worst
  known level. With no book, the last trade price (else the mark) is the only level.
- Limit orders that cross the book fill at once as taker up to their price, the rest rests;
  post-only orders that would cross are rejected (``post_only_would_cross``), as venues do.
- A resting order fills as maker at its own price when a trade prints *through* it (fully), or,
  queue-aware, when trades at its price have consumed the quantity that was displayed ahead of it
  at that price when it was placed.
- Isolated margin: each position holds margin = notional / leverage; fees and funding come out of
  the wallet balance (funding also out of the position's margin, as on Binance isolated).
- Leverage by notional: an order that would open or grow a position to a notional whose
  maintenance bracket allows less than its leverage is rejected (``leverage_exceeds_bracket``),
  as Binance refuses it; for the broker's own brackets, else the symbol's known ones
  (``costs.KNOWN_BRACKETS``), at the order's price (a market order: the best opposite level,
  else the last trade, else the mark); a resting order's fill that would do so (other fills
  came first) is refused then and the order cancelled.
- Liquidation: when the mark crosses the position's liquidation price (``costs.liquidation_price``
  with the notional's maintenance bracket), the position closes at that price, its whole isolated
  margin is lost (the remainder is the venue's liquidation fee) and its open orders are cancelled.
- Funding: settled at the venue's funding times from the real rate x mark x signed qty, either from
  mark-price events (rate and next funding time) or explicitly (``settle_funding``, for history).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Protocol

from liqcli.trading.costs import (
    BTCUSDT_BRACKETS,
    KNOWN_BRACKETS,
    Bracket,
    Fees,
    bracket_for,
    funding_payment,
    liquidation_price,
    notional_cap,
)
from liqcli.trading.model import (
    Account,
    Fill,
    Liquidity,
    Order,
    OrderSide,
    OrderStatus,
    OrderType,
    Position,
)

Level = tuple[float, float]  # (price, qty)

# Enum members as module globals: on the order path a class attribute lookup on an Enum costs
# ~5x a global's, and every market order used to make a few dozen of them.
_BUY = OrderSide.BUY
_SELL = OrderSide.SELL
_MARKET = OrderType.MARKET
_LIMIT = OrderType.LIMIT
_STOP = OrderType.STOP
_NEW = OrderStatus.NEW
_PARTIAL = OrderStatus.PARTIALLY_FILLED
_FILLED = OrderStatus.FILLED
_CANCELED = OrderStatus.CANCELED
_REJECTED = OrderStatus.REJECTED
_MAKER = Liquidity.MAKER
_TAKER = Liquidity.TAKER
_isfinite = math.isfinite
_margin_of = attrgetter("margin")
_inf = math.inf


class BookView(Protocol):
    """What the broker needs of a book: levels best first. ``L2Book`` and ``TopOfBook`` have it."""

    def levels(self, side: str, depth: int) -> list[Level]: ...


@dataclass(slots=True)
class TopOfBook:
    """A one-level book from a bookTicker (``BookTop``) event."""

    bid_price: float
    bid_qty: float
    ask_price: float
    ask_qty: float

    def levels(self, side: str, depth: int) -> list[Level]:
        if side == "bid":
            return [(self.bid_price, self.bid_qty)] if self.bid_qty > 0 else []
        return [(self.ask_price, self.ask_qty)] if self.ask_qty > 0 else []


@dataclass(slots=True)
class RoundTrip:
    """A closed trade: from flat to flat (or to a flip), with everything it cost."""

    symbol: str
    side: str  # long | short
    entry_ts: int
    exit_ts: int
    entry_price: float
    exit_price: float
    qty: float  # largest absolute size held
    leverage: float
    pnl: float  # price PnL - fees - funding
    fees: float
    funding: float
    liquidated: bool
    exit_tag: str = ""

    @property
    def gross_pnl(self) -> float:
        return self.pnl + self.fees + self.funding

    @property
    def margin(self) -> float:
        return self.qty * self.entry_price / self.leverage if self.leverage else 0.0

    @property
    def roi(self) -> float:
        """Net PnL over the margin committed (leveraged ROI)."""
        return self.pnl / self.margin if self.margin else 0.0


@dataclass(slots=True)
class _Resting:
    order: Order
    queue_ahead: float  # displayed qty at our price when placed, still ahead of us


@dataclass(slots=True)
class _Open:
    """Bookkeeping of the round trip in progress for one symbol."""

    side: str
    entry_ts: int
    entry_price: float
    leverage: float
    max_qty: float = 0.0
    fees: float = 0.0
    funding: float = 0.0
    close_qty: float = 0.0
    close_notional: float = 0.0
    realized: float = 0.0


@dataclass(slots=True)
class _Market:
    book: BookView | None = None
    last_trade: float | None = None
    mark: float | None = None
    funding_rate: float | None = None
    next_funding_ts: int | None = None
    settled_ts: int | None = None  # the last funding time settled from marks
    resting: dict[str, _Resting] = field(default_factory=dict)


class SimBroker:
    """A simulated broker for one account over any number of symbols."""

    def __init__(
        self,
        balance: float,
        *,
        fees: Fees | None = None,
        slippage_bps: float = 2.0,
        default_leverage: float = 1.0,
        brackets: tuple[Bracket, ...] = BTCUSDT_BRACKETS,
        depth_levels: int = 1000,
    ) -> None:
        if not math.isfinite(balance) or balance <= 0:
            raise ValueError(f"balance must be positive, got {balance!r}")
        self.account = Account(balance)
        self.fees = fees or Fees()
        self.slippage_bps = slippage_bps
        self.default_leverage = default_leverage
        self.brackets = brackets
        self.depth_levels = depth_levels
        self.now = 0
        self.fills: list[Fill] = []  # since the last take_fills()
        self.trades: list[RoundTrip] = []  # since the last take_trades()
        self.rejections = 0
        self.liquidations = 0
        self._markets: dict[str, _Market] = {}
        self._orders: dict[str, Order] = {}
        self._open: dict[str, _Open] = {}
        self._seq = 0
        self._cap_of: tuple[Bracket, ...] | None = None
        self._cap = 0.0
        self._caps: dict[tuple[str, float], float] = {}  # (symbol, leverage) -> notional cap
        # The earliest next_funding_ts of any market (inf: none): until then nothing is due, so
        # advancing the clock skips the per-market funding scan. Kept by _funding_times_changed.
        self._due: float = _inf
        self._liq_prices: dict[str, tuple[tuple, float]] = {}  # symbol: (position state, price)

    # -- the Broker protocol -------------------------------------------------------------------

    def submit(self, order: Order) -> Order:
        self._seq += 1
        if not order.id:
            order.id = f"sim-{self._seq}"
        order.created_ts = self.now
        self._orders[order.id] = order
        problem = self._check(order)
        if problem:
            return self._reject(order, problem)
        market = self._markets[order.symbol]  # _check made it
        if order.type is _MARKET:
            self._take(order, None, market)
            if order.qty - order.filled_qty > 0 and order.status is not _REJECTED:
                order.status = _CANCELED  # IOC: whatever could not fill is gone
            return order
        assert order.price is not None
        crosses = self._crosses(order)
        if order.post_only and crosses:
            return self._reject(order, "post_only_would_cross")
        if crosses:
            self._take(order, order.price, market)
        if order.remaining > 0 and order.status.is_open:
            market.resting[order.id] = _Resting(order, self._displayed_at(order))
        return order

    def cancel(self, order_id: str) -> bool:
        order = self._orders.get(order_id)
        if order is None or not order.is_open:
            return False
        order.status = OrderStatus.CANCELED
        self._market(order.symbol).resting.pop(order_id, None)
        return True

    def cancel_all(self, symbol: str | None = None) -> list[Order]:
        cancelled = [o for o in self.open_orders(symbol) if self.cancel(o.id)]
        return cancelled

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        markets = [self._market(symbol)] if symbol is not None else list(self._markets.values())
        return [r.order for m in markets for r in m.resting.values()]

    def order(self, order_id: str) -> Order | None:
        return self._orders.get(order_id)

    def position(self, symbol: str) -> Position:
        account = self.account  # Account.position's lookup first: strategies ask every event
        return account.positions.get(symbol) or account.position(symbol)

    def take_fills(self) -> list[Fill]:
        fills, self.fills = self.fills, []
        return fills

    def take_trades(self) -> list[RoundTrip]:
        trades, self.trades = self.trades, []
        return trades

    # -- market data ---------------------------------------------------------------------------

    def set_time(self, ts: int) -> None:
        if ts > self.now:
            self.now = ts
            if ts >= self._due:  # else no market's funding time has come (the common case)
                self._settle_due_funding()

    def update_book(self, symbol: str, book: BookView, ts: int | None = None) -> None:
        if ts is not None and ts > self.now:  # set_time(ts), inlined (every book event)
            self.now = ts
            if ts >= self._due:
                self._settle_due_funding()
        (self._markets.get(symbol) or self._market(symbol)).book = book

    def on_trade(
        self, symbol: str, ts: int, price: float, qty: float, is_buyer_maker: bool
    ) -> None:
        """A print on the tape: may fill resting orders (maker)."""
        if ts > self.now:  # set_time(ts), inlined: this runs for every trade of a backtest
            self.now = ts
            if ts >= self._due:
                self._settle_due_funding()
        market = self._markets.get(symbol) or self._market(symbol)
        market.last_trade = price
        if not market.resting:
            return
        for rest in list(market.resting.values()):
            order = rest.order
            assert order.price is not None
            if order.side is OrderSide.BUY:
                through = price < order.price
                at_price_hit = price == order.price and is_buyer_maker  # a seller hit the bid
            else:
                through = price > order.price
                at_price_hit = price == order.price and not is_buyer_maker
            if through:
                self._fill(order, order.remaining, order.price, Liquidity.MAKER)
            elif at_price_hit:
                volume = qty
                if rest.queue_ahead > 0:
                    used = min(rest.queue_ahead, volume)
                    rest.queue_ahead -= used
                    volume -= used
                if volume > 0:
                    self._fill(order, min(order.remaining, volume), order.price, Liquidity.MAKER)
            if not order.is_open:
                market.resting.pop(order.id, None)

    def on_mark(
        self,
        symbol: str,
        ts: int,
        mark: float,
        funding_rate: float | None = None,
        next_funding_ts: int | None = None,
    ) -> None:
        """A mark price (and the venue's current funding rate and next funding time)."""
        market = self._market(symbol)
        self.set_time(ts)  # settles a funding time that passed, at the rate and mark known then
        market.mark = mark
        if funding_rate is not None:
            market.funding_rate = funding_rate
        # Only a later time: a late frame may still name the funding time just settled.
        if (
            next_funding_ts is not None
            and (market.next_funding_ts is None or next_funding_ts > market.next_funding_ts)
            and (market.settled_ts is None or next_funding_ts > market.settled_ts)
        ):
            market.next_funding_ts = next_funding_ts
            self._funding_times_changed()
        self._check_liquidation(symbol, market)

    def settle_funding(self, symbol: str, ts: int, rate: float, mark: float | None = None) -> float:
        """Settle one funding payment now (history: the stored ``funding`` rows). Returns it."""
        market = self._market(symbol)
        price = mark if mark is not None else (market.mark or market.last_trade)
        pos = self.account.positions.get(symbol)
        if pos is None or pos.qty == 0 or price is None:
            return 0.0
        payment = funding_payment(pos.qty, price, rate)
        self.account.balance -= payment
        pos.margin -= payment
        pos.funding += payment
        if symbol in self._open:
            self._open[symbol].funding += payment
        return payment

    def market_state(self, symbol: str) -> dict:
        """What the broker knows of a market besides the book: saved with a paper session."""
        m = self._market(symbol)
        return {
            "mark": m.mark,
            "last_trade": m.last_trade,
            "funding_rate": m.funding_rate,
            "next_funding_ts": m.next_funding_ts,
        }

    def restore_market(self, symbol: str, state: dict) -> None:
        m = self._market(symbol)
        m.mark = state.get("mark")
        m.last_trade = state.get("last_trade")
        m.funding_rate = state.get("funding_rate")
        m.next_funding_ts = state.get("next_funding_ts")
        self._funding_times_changed()

    def restore_position(self, symbol: str, data: dict) -> None:
        """Put back a saved isolated position (a resumed session); the round trip goes on."""
        pos = self.account.position(symbol)
        pos.qty = data["qty"]
        pos.entry_price = data["entry_price"]
        pos.leverage = data["leverage"]
        pos.margin = data["margin"]
        pos.opened_ts = data["opened_ts"]
        pos.fees = data["fees"]
        pos.funding = data["funding"]
        self._open[symbol] = _Open(
            "long" if pos.qty > 0 else "short",
            pos.opened_ts,
            pos.entry_price,
            pos.leverage,
            abs(pos.qty),
            fees=pos.fees,
            funding=pos.funding,
        )

    def mark_price(self, symbol: str) -> float | None:
        m = self._market(symbol)
        return m.mark if m.mark is not None else m.last_trade

    def marks(self) -> dict[str, float]:
        out = {}
        for symbol, m in self._markets.items():
            price = m.mark if m.mark is not None else m.last_trade
            if price is not None:
                out[symbol] = price
        return out

    def equity(self) -> float:
        return self.account.equity(self.marks())

    def liquidation_price(self, symbol: str) -> float | None:
        pos = self.account.positions.get(symbol)
        if pos is None or pos.qty == 0:
            return None
        qty, entry = pos.qty, pos.entry_price
        b = bracket_for(abs(qty) * entry, self.brackets)  # pos.notional, without the property
        return liquidation_price(
            qty=qty, entry_price=entry, margin=pos.margin, mmr=b.mmr, cum=b.cum
        )

    # -- internals ----------------------------------------------------------------------------

    def _market(self, symbol: str) -> _Market:
        m = self._markets.get(symbol)
        if m is None:
            m = self._markets[symbol] = _Market()
        return m

    def _reject(self, order: Order, reason: str) -> Order:
        order.status = OrderStatus.REJECTED
        order.reject_reason = reason
        self.rejections += 1
        return order

    def _check(self, order: Order) -> str:
        qty = order.qty
        if not (_isfinite(qty) and qty > 0):
            return "invalid_qty"
        if order.type is _STOP:  # the bar driver triggers stops itself (trading.bars)
            return "stop_orders_unsupported"
        market_order = order.type is _MARKET
        if not market_order and not (
            order.price is not None and _isfinite(order.price) and order.price > 0
        ):
            return "invalid_price"
        lev = order.leverage
        if lev is not None and not (
            1 <= lev <= (self._cap if self.brackets is self._cap_of else self._max_leverage())
        ):
            return "invalid_leverage"
        symbol = order.symbol
        if order.reduce_only:
            pos = self.account.positions.get(symbol)
            if pos is None or pos.qty == 0 or (pos.qty > 0) == (order.side is _BUY):
                return "reduce_only_would_increase"
            order.qty = min(qty, abs(pos.qty))
        market = self._markets.get(symbol) or self._market(symbol)
        if market_order and market.mark is None and market.last_trade is None:
            book = market.book
            if type(book) is TopOfBook:  # its levels(), inlined: a bar backtest's every order
                if not book.ask_qty > 0:
                    return "no_price"
            elif self._best(symbol, "ask") is None:
                return "no_price"
        # a reduce-only order is never refused for its leverage, as on Binance
        return "" if order.reduce_only else self._check_bracket(order, market)

    def _check_bracket(self, order: Order, market: _Market) -> str:
        """``leverage_exceeds_bracket`` when the order takes the position to a notional whose
        bracket allows less than the position's leverage (the one ``_fill`` would use)."""
        symbol = order.symbol
        buy = order.side is _BUY
        price = order.price
        if price is None:
            book = market.book
            if type(book) is TopOfBook:  # _best, inlined
                if buy:
                    price = book.ask_price if book.ask_qty > 0 else market.last_trade
                else:
                    price = book.bid_price if book.bid_qty > 0 else market.last_trade
            else:
                best = self._best(symbol, "ask" if buy else "bid")
                price = best[0] if best is not None else market.last_trade
            if price is None:
                price = market.mark
        if price is not None and self._over_cap(order, order.qty, price):
            return "leverage_exceeds_bracket"
        return ""

    def _over_cap(self, order: Order, qty: float, price: float) -> bool:
        """Whether filling ``qty`` of ``order`` at ``price`` takes the position to a notional
        its leverage's bracket refuses (a reduction never does)."""
        symbol = order.symbol
        pos = self.account.positions.get(symbol)
        before = pos.qty if pos is not None else 0.0
        after = before + qty if order.side is _BUY else before - qty
        if before and (before > 0) == (after > 0):
            if abs(after) <= abs(before):
                return False  # reduces
            lev = pos.leverage  # adds at the position's leverage (_fill)
        else:
            lev = order.leverage or (pos.leverage if before else None) or self.default_leverage
        cap = self._caps.get((symbol, lev)) if self.brackets is self._cap_of else None
        if cap is None:
            cap = self._notional_cap(symbol, lev)
        return cap != _inf and abs(after) * price >= cap

    def _notional_cap(self, symbol: str, leverage: float) -> float:
        """``costs.notional_cap`` for the symbol's brackets (the broker's own, else the known
        ones; none known: no cap), cached per symbol and leverage for the brackets in use."""
        if self.brackets is not self._cap_of:
            self._max_leverage()  # resets the caches for the new brackets
        key = (symbol, leverage)
        cap = self._caps.get(key)
        if cap is None:
            brackets = (
                self.brackets
                if self.brackets is not BTCUSDT_BRACKETS
                else KNOWN_BRACKETS.get(symbol)
            )
            cap = self._caps[key] = _inf if brackets is None else notional_cap(leverage, brackets)
        return cap

    def _max_leverage(self) -> float:
        """The first bracket's max leverage, cached for the brackets in use (an immutable tuple
        that may be replaced)."""
        brackets = self.brackets
        if brackets is not self._cap_of:
            self._cap_of = brackets
            self._cap = bracket_for(0, brackets).max_leverage
            self._caps = {}
        return self._cap

    def _best(self, symbol: str, side: str) -> Level | None:
        book = self._market(symbol).book
        if book is None:
            return None
        levels = book.levels(side, 1)
        return levels[0] if levels else None

    def _crosses(self, order: Order) -> bool:
        assert order.price is not None
        if order.side is OrderSide.BUY:
            best = self._best(order.symbol, "ask")
            return best is not None and order.price >= best[0]
        best = self._best(order.symbol, "bid")
        return best is not None and order.price <= best[0]

    def _displayed_at(self, order: Order) -> float:
        book = self._market(order.symbol).book
        if book is None:
            return 0.0
        for price, qty in book.levels("bid" if order.side is OrderSide.BUY else "ask", 1000):
            if price == order.price:
                return qty
        return 0.0

    def _take(self, order: Order, limit: float | None, market: _Market | None = None) -> None:
        """Fill as taker against the opposite side, up to ``limit`` when given."""
        if market is None:
            market = self._market(order.symbol)
        buy = order.side is _BUY
        book = market.book
        if type(book) is TopOfBook and limit is None:
            # One level (the bar driver's quote): the loop below for one level, without it.
            top, depth = (book.ask_price, book.ask_qty) if buy else (book.bid_price, book.bid_qty)
            if depth > 0:
                want = order.qty - order.filled_qty  # order.remaining
                if want < 0.0:
                    want = 0.0
                got = depth if depth < want else want  # min(depth, want)
                notional = got * top
                if got < want:  # past the known depth: the rest at that level
                    notional += (want - got) * top
                    got = want
                if got > 0:
                    self._fill_taker(order, got, notional, buy)
                return
        levels = book.levels("ask" if buy else "bid", self.depth_levels) if book is not None else []
        if not levels:
            price = market.last_trade if market.last_trade is not None else market.mark
            if price is None:
                self._reject(order, "no_price")
                return
            levels = [(price, _inf)]
        want = order.qty - order.filled_qty  # order.remaining
        if want < 0.0:
            want = 0.0
        got = notional = 0.0
        worst = levels[0][0]
        for price, qty in levels:
            if limit is not None and (price > limit if buy else price < limit):
                break
            take = min(qty, want - got)
            got += take
            notional += take * price
            worst = price
            if got >= want:
                break
        if got < want and limit is None:
            # Past the known depth: the rest at the worst known level.
            notional += (want - got) * worst
            got = want
        if got > 0:
            self._fill_taker(order, got, notional, buy)

    def _fill_taker(self, order: Order, qty: float, notional: float, buy: bool) -> None:
        """A taker fill of ``qty`` costing ``notional`` at the book: its VWAP, slipped against
        the order."""
        vwap = notional / qty
        slip = self.slippage_bps / 10_000
        self._fill(order, qty, vwap * (1 + slip) if buy else vwap * (1 - slip), _TAKER)

    def _fill(self, order: Order, qty: float, price: float, liquidity: Liquidity) -> None:
        if qty <= 0:
            return
        symbol = order.symbol
        acct = self.account
        pos = acct.positions.get(symbol) or acct.position(symbol)
        before = pos.qty
        lev = order.leverage or (pos.leverage if before else None) or self.default_leverage
        signed = qty if order.side is _BUY else qty * -1
        adds = before == 0 or (before > 0) == (signed > 0)  # opens or grows the position
        maker = liquidity is _MAKER
        fees = self.fees  # fees.fee(qty * price, maker=maker), inlined
        fee = abs(qty * price) * (fees.maker if maker else fees.taker)
        if not order.reduce_only and (adds or qty - abs(before) > 0):  # opening > 0
            opening = qty if adds else qty - abs(before)
            need = opening * price / lev + fee
            # acct.available, without its two properties
            if need > acct.balance - sum(map(_margin_of, acct.positions.values())) + 1e-9:
                if maker:
                    self.cancel(order.id)
                self._reject(order, "insufficient_margin")
                return
            # A resting order was checked against the position when placed: another fill since
            # may make this one cross the bracket (Binance counts open orders; refuse it here).
            if maker and self._over_cap(order, qty, price):
                self.cancel(order.id)
                self._reject(order, "leverage_exceeds_bracket")
                return
        # The position changes by ``signed`` at ``price`` (inlined: a backtest's every fill).
        acct.balance -= fee
        pos.fees += fee
        if adds:
            if before == 0:
                pos.leverage = lev
                pos.opened_ts = self.now
                pos.realized_pnl = pos.fees = pos.funding = 0.0
                pos.fees = fee
            new_qty = before + signed
            pos.entry_price = (pos.entry_price * abs(before) + price * qty) / abs(new_qty)
            pos.margin += qty * price / pos.leverage
            pos.qty = new_qty
            realized = 0.0
        else:
            held = abs(before)
            closing = min(qty, held)
            realized = closing * (price - pos.entry_price) * (1 if before > 0 else -1)
            margin = pos.margin
            release = margin * closing / held
            acct.balance += realized
            pos.realized_pnl += realized
            rest = qty - closing
            if closing >= held - 1e-12:
                pos.qty = 0.0
                pos.margin = 0.0
                pos.entry_price = 0.0
            else:
                pos.qty = before - closing * (1 if before > 0 else -1)
                pos.margin = margin - release
            if rest > 1e-12:  # a flip: the rest opens the other side
                pos.leverage = lev
                pos.opened_ts = self.now
                pos.realized_pnl = pos.funding = 0.0
                pos.fees = 0.0
                pos.qty = rest * (1 if signed > 0 else -1)
                pos.entry_price = price
                pos.margin = rest * price / lev
        filled = order.filled_qty
        total = filled + qty
        order.avg_price = (order.avg_price * filled + price * qty) / total
        order.filled_qty = total
        # order.remaining <= 1e-12, without the property
        order.status = _FILLED if order.qty - total <= 1e-12 else _PARTIAL
        tag = order.tag
        self.fills.append(
            Fill(
                order.id,
                symbol,
                order.side,
                qty,
                price,
                fee,
                liquidity,
                self.now,
                realized,
                False,
                order.client_id,
                tag,
            )
        )
        self._track(symbol, before, pos, qty, price, fee, realized, tag)

    def _track(
        self,
        symbol: str,
        before: float,
        pos: Position,
        qty: float,
        price: float,
        fee: float,
        realized: float,
        tag: str,
        *,
        liquidated: bool = False,
    ) -> None:
        """Round-trip bookkeeping after a fill of ``qty`` at ``price`` took ``before`` to pos.qty."""
        after = pos.qty
        trip = self._open.get(symbol)
        if trip is None or before == 0:
            if after != 0:
                side = "long" if after > 0 else "short"
                self._open[symbol] = _Open(
                    side, self.now, pos.entry_price, pos.leverage, abs(after), fee
                )
            return
        if after != 0 and (after > 0) == (before > 0) and abs(after) > abs(before):
            trip.fees += fee  # added to the position
            trip.max_qty = abs(after)
            trip.entry_price = pos.entry_price
            return
        flipped = after != 0 and (after > 0) != (before > 0)
        closing = abs(before) if flipped else qty
        close_fee = fee * closing / qty if qty else fee
        trip.close_qty += closing
        trip.close_notional += closing * price
        trip.realized += realized
        trip.fees += close_fee
        if after == 0 or flipped:
            self._close_trip(symbol, trip, tag, liquidated)
        if flipped:
            side = "long" if after > 0 else "short"
            self._open[symbol] = _Open(
                side, self.now, pos.entry_price, pos.leverage, abs(after), fee - close_fee
            )

    def _close_trip(self, symbol: str, trip: _Open, tag: str, liquidated: bool) -> None:
        del self._open[symbol]
        exit_price = trip.close_notional / trip.close_qty if trip.close_qty else trip.entry_price
        self.trades.append(
            RoundTrip(  # positional: symbol, side, entry/exit ts, entry/exit price, qty, ...
                symbol,
                trip.side,
                trip.entry_ts,
                self.now,
                trip.entry_price,
                exit_price,
                trip.max_qty,
                trip.leverage,
                trip.realized - trip.fees - trip.funding,  # pnl
                trip.fees,
                trip.funding,
                liquidated,
                tag,
            )
        )

    def _settle_due_funding(self) -> None:
        for symbol, market in self._markets.items():
            due = market.next_funding_ts
            if due is None or self.now < due or market.funding_rate is None:
                continue
            self.settle_funding(symbol, due, market.funding_rate, market.mark)
            market.settled_ts = due
            market.next_funding_ts = None  # the next mark event brings the next time
        self._funding_times_changed()

    def _funding_times_changed(self) -> None:
        """Recompute ``_due`` after any market's ``next_funding_ts`` changed."""
        dues = [m.next_funding_ts for m in self._markets.values() if m.next_funding_ts is not None]
        self._due = min(dues) if dues else _inf

    def _check_liquidation(self, symbol: str, market: _Market) -> None:
        pos = self.account.positions.get(symbol)
        if pos is None or pos.qty == 0 or market.mark is None:
            return
        # liquidation_price(symbol), remembered for the position's state: a backtest checks the
        # mark every second while the position (and its margin) changes far less often.
        key = (pos.qty, pos.entry_price, pos.margin, self.brackets)
        cached = self._liq_prices.get(symbol)
        if cached is not None and cached[0] == key:
            lp = cached[1]
        else:
            lp = self.liquidation_price(symbol)
            if lp is None:
                return
            self._liq_prices[symbol] = (key, lp)
        if (pos.qty > 0 and market.mark <= lp) or (pos.qty < 0 and market.mark >= lp):
            self._liquidate(symbol, pos, lp)

    def _liquidate(self, symbol: str, pos: Position, price: float) -> None:
        for rest in list(self._market(symbol).resting.values()):
            self.cancel(rest.order.id)
        self.liquidations += 1
        before = pos.qty
        qty = abs(pos.qty)
        side = OrderSide.SELL if pos.qty > 0 else OrderSide.BUY
        realized = pos.qty * (price - pos.entry_price)
        clearance = max(pos.margin + realized, 0.0)  # what is left of the margin goes to the venue
        self.account.balance += realized - clearance
        pos.fees += clearance
        pos.realized_pnl += realized
        pos.qty = pos.margin = pos.entry_price = 0.0
        self._seq += 1
        self.fills.append(
            Fill(
                f"liq-{self._seq}",
                symbol,
                side,
                qty,
                price,
                clearance,
                Liquidity.TAKER,
                self.now,
                realized,
                liquidation=True,
                tag="liquidation",
            )
        )
        self._track(
            symbol, before, pos, qty, price, clearance, realized, "liquidation", liquidated=True
        )


def replay_marks(broker: SimBroker, symbol: str, marks: Iterable[tuple[int, float]]) -> None:
    """Feed (ts, mark) pairs, e.g. from history, checking liquidation at each."""
    for ts, mark in marks:
        broker.on_mark(symbol, ts, mark)
