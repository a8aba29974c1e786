"""The Strategy protocol and the Context a strategy acts through.

A strategy never knows whether it runs live, on a recording or on history: it sees events, its
fills and timer ticks in event time, and acts through ``ctx`` (orders, positions, books, records).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from liqcli.trading.model import Fill, Order, OrderSide, OrderType, Position


@runtime_checkable
class Broker(Protocol):
    """What a strategy may ask of a broker: SimBroker (paper, backtest, mm --paper) or a venue's."""

    def submit(self, order: Order) -> Order: ...
    def cancel(self, order_id: str) -> bool: ...
    def cancel_all(self, symbol: str | None = None) -> list[Order]: ...
    def open_orders(self, symbol: str | None = None) -> list[Order]: ...
    def position(self, symbol: str) -> Position: ...


class Context:
    """A strategy's handle on the world: time, market state, its broker and its record stream."""

    def __init__(
        self,
        broker: Broker,
        market: Any,
        *,
        name: str = "",
        emit: Callable[[dict], None] | None = None,
    ) -> None:
        self.broker = broker
        self.market = market  # MarketState: books, last prices, marks
        self.name = name
        self._emit = emit
        self.now = 0

    # orders
    def submit(self, order: Order) -> Order:
        return self.broker.submit(order)

    def market_order(self, symbol: str, side: OrderSide, qty: float, **kw: Any) -> Order:
        return self.broker.submit(Order(symbol, side, qty, OrderType.MARKET, **kw))

    def limit_order(
        self, symbol: str, side: OrderSide, qty: float, price: float, **kw: Any
    ) -> Order:
        return self.broker.submit(Order(symbol, side, qty, OrderType.LIMIT, price=price, **kw))

    def stop_order(
        self, symbol: str, side: OrderSide, qty: float, trigger: float, **kw: Any
    ) -> Order:
        """A market order once the price reaches ``trigger`` (bar backtests: inside the bar)."""
        return self.broker.submit(Order(symbol, side, qty, OrderType.STOP, price=trigger, **kw))

    def cancel(self, order_id: str) -> bool:
        return self.broker.cancel(order_id)

    def cancel_all(self, symbol: str | None = None) -> list[Order]:
        return self.broker.cancel_all(symbol)

    def position(self, symbol: str) -> Position:
        return self.broker.position(symbol)

    # records (jsonl lines, dashboards, datasets)
    def emit(self, record: dict) -> None:
        if self._emit is not None:
            self._emit({"ts": self.now, "strategy": self.name, **record})


class Strategy(Protocol):
    """Implement the callbacks you need; the engine calls each with the same Context."""

    def on_start(self, ctx: Context) -> None: ...
    def on_event(self, event: Any, ctx: Context) -> None: ...
    def on_fill(self, fill: Fill, ctx: Context) -> None: ...
    def on_timer(self, ts: int, ctx: Context) -> None: ...
    def on_stop(self, ctx: Context) -> None: ...


class BaseStrategy:
    """Do-nothing callbacks, so a strategy overrides only what it uses."""

    timer_ms: int | None = None  # ask the engine for on_timer every this many ms of event time

    def on_start(self, ctx: Context) -> None:
        pass

    def on_event(self, event: Any, ctx: Context) -> None:
        pass

    def on_fill(self, fill: Fill, ctx: Context) -> None:
        pass

    def on_timer(self, ts: int, ctx: Context) -> None:
        pass

    def on_stop(self, ctx: Context) -> None:
        pass
