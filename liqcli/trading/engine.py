"""One Engine loop: events in, market state updated once, then each broker and strategy.

Several (strategy, broker) slots may share one engine: ``liq paper``'s modes compete on the same
events, each with its own balance. The clock is the events' own time (``event.ts``), so the same
loop runs live, on a recording and on history at full speed with the same decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from liqcli.core.events import AggTrade, BookSnapshot, BookTop, Level, MarkPrice
from liqcli.trading.sim import BookView, SimBroker
from liqcli.trading.strategy import Context, Strategy


@dataclass(slots=True)
class MergedBook:
    """The freshest view of one symbol's book: the latest best bid/ask (bookTicker, real time)
    on top of the latest depth snapshot (top-N every second), whose levels are kept only beyond
    the best prices. Built from recorded events alone, so a replay sees exactly what live saw."""

    top: BookTop | None = None
    depth: BookSnapshot | None = None

    def levels(self, side: str, depth: int) -> list[Level]:
        top = self.top
        snap = self.depth
        if side == "bid":
            best = (top.bid_price, top.bid_qty) if top is not None and top.bid_qty > 0 else None
            deeper = snap.bids if snap is not None else ()
            if not deeper:  # tops only (the common case of a trades backtest)
                return [best][:depth] if best is not None else []
            keep = [lv for lv in deeper if best is None or lv[0] < best[0]]
        else:
            best = (top.ask_price, top.ask_qty) if top is not None and top.ask_qty > 0 else None
            deeper = snap.asks if snap is not None else ()
            if not deeper:
                return [best][:depth] if best is not None else []
            keep = [lv for lv in deeper if best is None or lv[0] > best[0]]
        out = ([best] if best is not None else []) + keep
        return out[:depth]


@dataclass(slots=True)
class MarketState:
    """What every slot sees: the book, last trade and mark per symbol."""

    books: dict[str, BookView] = field(default_factory=dict)
    last_price: dict[str, float] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)

    def book(self, symbol: str) -> BookView | None:
        return self.books.get(symbol)

    def mid(self, symbol: str) -> float | None:
        book = self.books.get(symbol)
        if book is None:
            return self.last_price.get(symbol)
        bids, asks = book.levels("bid", 1), book.levels("ask", 1)
        if bids and asks:
            return (bids[0][0] + asks[0][0]) / 2
        return self.last_price.get(symbol)


@dataclass(slots=True)
class Slot:
    strategy: Strategy
    broker: Any
    ctx: Context
    next_timer: int | None = None
    # Fast path: the broker holds its pending fills in ``fills`` and reports no asynchronous
    # rejections to this strategy, so an empty ``fills`` means nothing to drain.
    plain: bool = False

    def __post_init__(self) -> None:
        rejects = getattr(self.broker, "take_rejections", None) is not None
        hook = getattr(self.strategy, "on_reject", None) is not None
        self.plain = hasattr(self.broker, "fills") and not (rejects and hook)


# Each market-data event type maps to how it updates the shared state and a SimBroker.
# Book snapshots/diffs and mark prices register here too (``register_event``).
MarketHandler = Callable[[Any, MarketState, list[Slot]], None]
_HANDLERS: dict[type, MarketHandler] = {}


def register_event(kind: type, handler: MarketHandler) -> None:
    global _DEFAULT_TRADES, _DEFAULT_TOPS
    _HANDLERS[kind] = handler
    _DEFAULT_TRADES = _HANDLERS.get(AggTrade) is _on_trade
    _DEFAULT_TOPS = _HANDLERS.get(BookTop) is _on_book_top


# AggTrade's and BookTop's handlers are the ones below (Engine.step inlines them then)
_DEFAULT_TRADES = _DEFAULT_TOPS = False


def _on_trade(event: AggTrade, market: MarketState, slots: list[Slot]) -> None:
    symbol, price = event.symbol, event.price
    market.last_price[symbol] = price
    for slot in slots:
        broker = slot.broker
        if isinstance(broker, SimBroker):
            broker.on_trade(symbol, event.ts, price, event.qty, event.is_buyer_maker)


def _merged(market: MarketState, symbol: str) -> MergedBook:
    book = market.books.get(symbol)
    if not isinstance(book, MergedBook):
        book = market.books[symbol] = MergedBook()
    return book


def _share_book(symbol: str, ts: int, market: MarketState, slots: list[Slot]) -> None:
    book = market.books[symbol]
    for slot in slots:
        if isinstance(slot.broker, SimBroker):
            slot.broker.update_book(symbol, book, ts)


def _on_book_top(event: BookTop, market: MarketState, slots: list[Slot]) -> None:
    _merged(market, event.symbol).top = event
    _share_book(event.symbol, event.ts, market, slots)


def _on_book_snapshot(event: BookSnapshot, market: MarketState, slots: list[Slot]) -> None:
    book = _merged(market, event.symbol)
    book.depth = event
    top = book.top
    # A snapshot newer than the last bookTicker replaces its top too.
    if top is None or (event.update_id and top.update_id and event.update_id > top.update_id):
        bid = event.bids[0] if event.bids else (0.0, 0.0)
        ask = event.asks[0] if event.asks else (0.0, 0.0)
        book.top = BookTop(event.exchange, event.symbol, event.ts, *bid, *ask, event.update_id)
    _share_book(event.symbol, event.ts, market, slots)


def _on_mark(event: MarkPrice, market: MarketState, slots: list[Slot]) -> None:
    market.marks[event.symbol] = event.mark_price
    for slot in slots:
        if isinstance(slot.broker, SimBroker):
            slot.broker.on_mark(
                event.symbol, event.ts, event.mark_price, event.funding_rate, event.next_funding_ts
            )


register_event(AggTrade, _on_trade)
register_event(BookTop, _on_book_top)
register_event(BookSnapshot, _on_book_snapshot)
register_event(MarkPrice, _on_mark)


class Engine:
    """Drive strategies from any iterable of events (or one at a time with ``step``)."""

    def __init__(self, *, emit: Callable[[dict], None] | None = None) -> None:
        self.market = MarketState()
        self.slots: list[Slot] = []
        self.emit = emit
        # Called with (event, market) after the market state is updated and before strategies:
        # shared features (e.g. one OrderFlow for every competing mode) are computed once here.
        self.observers: list[Callable[[Any, MarketState], None]] = []
        self.now = 0
        self.events = 0
        self._started = False
        self._timed: list[Slot] = []  # the slots whose strategy asks for timers
        self._sim_trades: list = []
        self._sim_books: list = []
        self._solo: Slot | None = None

    def _plan(self) -> None:
        # ``timer_ms`` is read here, after ``on_start`` (a strategy may set it there).
        self._timed = [s for s in self.slots if getattr(s.strategy, "timer_ms", None)]
        # What step's shortcuts need: the SimBrokers' on_trade (what _on_trade calls), and the
        # slot when there is only one and it is plain.
        sims = [s.broker for s in self.slots if isinstance(s.broker, SimBroker)]
        self._sim_trades = [b.on_trade for b in sims]
        self._sim_books = [b.update_book for b in sims]
        self._solo = self.slots[0] if len(self.slots) == 1 and self.slots[0].plain else None

    def add(
        self,
        strategy: Strategy,
        broker: Any,
        *,
        name: str = "",
        emit: Callable[[dict], None] | None = None,
    ) -> Context:
        """``emit``: where this slot's records go (default: the engine's ``emit``)."""
        ctx = Context(broker, self.market, name=name, emit=emit if emit is not None else self.emit)
        self.slots.append(Slot(strategy, broker, ctx))
        self._plan()
        return ctx

    def start(self, ts: int = 0) -> None:
        self.now = ts
        for slot in self.slots:
            slot.ctx.now = ts
            slot.strategy.on_start(slot.ctx)
            self._drain(slot)
            timer = getattr(slot.strategy, "timer_ms", None)
            slot.next_timer = (ts + timer) if timer and ts else None
        self._plan()
        self._started = True

    def step(self, event: Any) -> None:
        if not self._started:
            self.start(getattr(event, "ts", 0))
        now = self.now
        ts = getattr(event, "ts", now)
        if self._timed:
            for slot in self._timed:
                self._timers(slot, ts)  # timers due by now fire on the market as it was then
            now = self.now
        if ts > now:
            self.now = now = ts
        self.events += 1
        market = self.market
        kind = type(event)
        if kind is AggTrade and _DEFAULT_TRADES:  # the commonest event: _on_trade, inlined
            symbol, price = event.symbol, event.price
            market.last_price[symbol] = price
            for on_trade in self._sim_trades:
                on_trade(symbol, ts, price, event.qty, event.is_buyer_maker)
        elif kind is BookTop and _DEFAULT_TOPS:  # _on_book_top, inlined
            symbol = event.symbol
            book = market.books.get(symbol)
            if type(book) is not MergedBook:
                book = _merged(market, symbol)
            book.top = event
            for update_book in self._sim_books:
                update_book(symbol, book, ts)
        else:
            handler = _HANDLERS.get(kind)
            if handler is not None:
                handler(event, market, self.slots)
        for observe in self.observers:
            observe(event, market)
        solo = self._solo
        if solo is not None:  # one plain slot: the loop below, unrolled
            ctx = solo.ctx
            ctx.now = now
            fills = solo.broker.fills
            if fills:
                self._drain(solo)  # fills caused by this market data
            solo.strategy.on_event(event, ctx)
            if solo.broker.fills:
                self._drain(solo)  # fills of orders the strategy just sent
            return
        drain = self._drain
        for slot in self.slots:
            ctx = slot.ctx
            ctx.now = now
            if slot.plain:  # the hot path: drain only when there is something to drain
                broker = slot.broker
                if broker.fills:
                    drain(slot)  # fills caused by this market data
                slot.strategy.on_event(event, ctx)
                if broker.fills:
                    drain(slot)  # fills of orders the strategy just sent
            else:
                drain(slot)
                slot.strategy.on_event(event, ctx)
                drain(slot)

    def run(self, events: Iterable[Any]) -> int:
        for event in events:
            self.step(event)
        return self.events

    def stop(self) -> None:
        for slot in self.slots:
            slot.ctx.now = self.now
            slot.strategy.on_stop(slot.ctx)
            self._drain(slot)

    def _timers(self, slot: Slot, until: int) -> None:
        interval = getattr(slot.strategy, "timer_ms", None)
        if not interval:
            return
        if slot.next_timer is None:
            slot.next_timer = until + interval
            return
        while slot.next_timer <= until:
            at = slot.next_timer
            slot.ctx.now = at
            set_time = getattr(slot.broker, "set_time", None)
            if set_time is not None:
                set_time(at)
            slot.strategy.on_timer(at, slot.ctx)
            self._drain(slot)
            slot.next_timer += interval

    @staticmethod
    def _drain(slot: Slot) -> None:
        # A live broker answers asynchronously: rejections it learnt of since the last step.
        rejects = getattr(slot.broker, "take_rejections", None)
        on_reject = getattr(slot.strategy, "on_reject", None)
        if rejects is not None and on_reject is not None:
            for order in rejects():
                on_reject(order, slot.ctx)
        if not getattr(slot.broker, "fills", True):  # SimBroker's pending fills: none (fast path)
            return
        take = getattr(slot.broker, "take_fills", None)
        if take is None:
            return
        for _ in range(100):  # on_fill may send orders that fill at once
            fills = take()
            if not fills:
                return
            for fill in fills:
                slot.strategy.on_fill(fill, slot.ctx)
