"""Orders, fills, positions and the account: the vocabulary every broker and strategy shares.

Quantities are base units, prices quote units per base unit, money in the quote currency.
A position's ``qty`` is signed (long > 0, short < 0); orders carry an unsigned ``qty`` and a side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class OrderSide(StrEnum):
    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        return 1 if self is OrderSide.BUY else -1

    @property
    def opposite(self) -> OrderSide:
        return OrderSide.SELL if self is OrderSide.BUY else OrderSide.BUY


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"  # market once the price reaches ``price``; bar backtests only (trading.bars)


class OrderStatus(StrEnum):
    NEW = "new"  # accepted, resting
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"
    REJECTED = "rejected"

    @property
    def is_open(self) -> bool:
        return self in (OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED)


class Liquidity(StrEnum):
    MAKER = "maker"
    TAKER = "taker"


@dataclass(slots=True)
class Order:
    """An order as a strategy asks for it; the broker fills in id, status and fills."""

    symbol: str
    side: OrderSide
    qty: float
    type: OrderType = OrderType.MARKET
    price: float | None = None  # limit price; None for market orders
    post_only: bool = False
    reduce_only: bool = False
    leverage: float | None = None  # isolated leverage for the position this order opens
    client_id: str = ""
    tag: str = ""  # free text for the strategy's own bookkeeping (e.g. the exit reason)
    id: str = ""
    status: OrderStatus = OrderStatus.NEW
    filled_qty: float = 0.0
    avg_price: float = 0.0
    created_ts: int = 0
    reject_reason: str = ""

    @property
    def remaining(self) -> float:
        return max(self.qty - self.filled_qty, 0.0)

    @property
    def is_open(self) -> bool:
        return self.status.is_open


@dataclass(slots=True)
class Fill:
    """What a broker reports once filled; read-only by convention. Not a frozen dataclass: its
    __init__ would set each of the 12 fields through object.__setattr__, a sixth of the cost of
    a backtest's market order."""

    order_id: str
    symbol: str
    side: OrderSide
    qty: float
    price: float
    fee: float  # quote units, positive = paid
    liquidity: Liquidity
    ts: int
    realized_pnl: float = 0.0  # price PnL realised by this fill (before fees)
    liquidation: bool = False
    client_id: str = ""
    tag: str = ""


@dataclass(slots=True)
class Position:
    """One isolated position. ``margin`` is the isolated margin held for it."""

    symbol: str
    qty: float = 0.0
    entry_price: float = 0.0
    leverage: float = 1.0
    margin: float = 0.0
    opened_ts: int = 0
    realized_pnl: float = 0.0  # price PnL realised while this position was open
    fees: float = 0.0
    funding: float = 0.0  # positive = paid

    @property
    def is_flat(self) -> bool:
        return self.qty == 0.0

    @property
    def side(self) -> str | None:
        return None if self.qty == 0 else ("long" if self.qty > 0 else "short")

    @property
    def notional(self) -> float:
        return abs(self.qty) * self.entry_price

    def unrealized(self, mark: float) -> float:
        return self.qty * (mark - self.entry_price)


@dataclass(slots=True)
class Account:
    """Wallet balance (realised PnL, fees and funding included) and positions by symbol."""

    balance: float
    positions: dict[str, Position] = field(default_factory=dict)

    def position(self, symbol: str) -> Position:
        pos = self.positions.get(symbol)
        if pos is None:
            pos = self.positions[symbol] = Position(symbol)
        return pos

    @property
    def margin_used(self) -> float:
        return sum([p.margin for p in self.positions.values()])  # a list: faster for few

    @property
    def available(self) -> float:
        return self.balance - self.margin_used

    def unrealized(self, marks: dict[str, float]) -> float:
        return sum(
            p.unrealized(marks[s]) for s, p in self.positions.items() if p.qty and s in marks
        )

    def equity(self, marks: dict[str, float]) -> float:
        """Balance plus unrealised PnL at the given marks (fees already in the balance)."""
        return self.balance + self.unrealized(marks)
