"""The one normalised event model. Every source (live WebSocket, recorded file, Parquet store)
yields these, so watch, cascade, map and backtests run the same code live and on history.

Timestamps are integer milliseconds since the epoch (UTC); prices and quantities are floats in
base units; ``notional_usd`` is always in USD (inverse contracts included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from liqcli.core.timeutil import iso_ms

Side = Literal["long", "short"]
LONG: Side = "long"
SHORT: Side = "short"


# Liquidation and AggTrade are built for every live event: not frozen, since a frozen dataclass's
# __init__ sets each field through object.__setattr__ (~0.8 µs more per event, benchmarks/watch.py).
# Treat them as immutable all the same (views and the journal share them); they stay hashable.
@dataclass(slots=True, unsafe_hash=True)
class Liquidation:
    """A forced close. ``side`` is the side of the position that was liquidated."""

    exchange: str
    symbol: str  # normalised BASEQUOTE, e.g. BTCUSDT
    side: Side
    price: float
    qty: float  # base units
    notional_usd: float
    ts: int  # venue event time, ms
    venue_symbol: str = ""  # the venue's own name (BTC-USDT-SWAP), empty when equal to symbol
    received_ts: int = 0  # local receive time, ms

    def to_dict(self) -> dict:
        """The jsonl / web representation (CONTRACT.md: ts as ISO-8601 UTC with ms)."""
        return {
            "exchange": self.exchange,
            "symbol": self.symbol,
            "side": self.side,
            "price": self.price,
            "qty": self.qty,
            "notional_usd": self.notional_usd,
            "ts": iso_ms(self.ts),
            "venue_symbol": self.venue_symbol or self.symbol,
            "received_ts": iso_ms(self.received_ts) if self.received_ts else None,
        }

    def to_row(self) -> dict:
        """A row of the ``liquidations`` dataset (ms ints; the store casts to Datetime)."""
        return {
            "exchange": self.exchange,
            "symbol": self.symbol,
            "ts": self.ts,
            "side": self.side,
            "price": self.price,
            "qty": self.qty,
            "notional_usd": self.notional_usd,
            "venue_symbol": self.venue_symbol or self.symbol,
            "received_ts": self.received_ts or self.ts,
        }

    def to_values(self) -> tuple:
        """``to_row()``'s values in the dataset's column order (:data:`ROW_COLUMNS`), the form
        the journal takes cheapest."""
        return (
            self.exchange,
            self.symbol,
            self.ts,
            self.side,
            self.price,
            self.qty,
            self.notional_usd,
            self.venue_symbol or self.symbol,
            self.received_ts or self.ts,
        )

    @staticmethod
    def journal_columns(events: list[Liquidation]) -> list[list]:
        """Many events' ``to_values()`` as columns (:data:`ROW_COLUMNS`): what the journal
        encodes when handed the events themselves. No tuple per event: the journal buffers
        events for up to a flush interval, and a buffered tuple per event costs the garbage
        collector more than it saves."""
        symbols = [e.symbol for e in events]
        ts = [e.ts for e in events]
        return [
            [e.exchange for e in events],
            symbols,
            ts,
            [e.side for e in events],
            [e.price for e in events],
            [e.qty for e in events],
            [e.notional_usd for e in events],
            [e.venue_symbol or s for e, s in zip(events, symbols, strict=True)],
            [e.received_ts or t for e, t in zip(events, ts, strict=True)],
        ]


# The columns of Liquidation.to_values(): the ``liquidations`` dataset's, in order (its optional
# ``seq`` left off). tests/test_journal.py holds them to the dataset's schema.
ROW_COLUMNS = (
    "exchange",
    "symbol",
    "ts",
    "side",
    "price",
    "qty",
    "notional_usd",
    "venue_symbol",
    "received_ts",
)


@dataclass(slots=True, unsafe_hash=True)  # not frozen: see Liquidation
class AggTrade:
    """An aggregate trade. ``is_buyer_maker=True`` means the taker sold."""

    exchange: str
    symbol: str
    trade_id: int
    ts: int
    price: float
    qty: float
    is_buyer_maker: bool

    def to_dict(self) -> dict:
        return {
            "exchange": self.exchange,
            "symbol": self.symbol,
            "trade_id": self.trade_id,
            "ts": iso_ms(self.ts),
            "price": self.price,
            "qty": self.qty,
            "is_buyer_maker": self.is_buyer_maker,
        }


@dataclass(slots=True, unsafe_hash=True)  # not frozen: see Liquidation (a backtest builds 1M+)
class BookTop:
    """Best bid and ask."""

    exchange: str
    symbol: str
    ts: int
    bid_price: float
    bid_qty: float
    ask_price: float
    ask_qty: float
    update_id: int = 0  # the venue's book update id (Binance ``u``), 0 when it sends none
    received_ts: int = 0  # local receive time, ms

    @property
    def mid(self) -> float:
        return (self.bid_price + self.ask_price) / 2


Level = tuple[float, float]  # (price, qty)


@dataclass(slots=True, frozen=True)
class BookSnapshot:
    """A whole (or top-N) order book at ``update_id``: a REST snapshot (Binance
    ``lastUpdateId``) or a recorded top-N picture of a maintained book.

    ``bids`` best (highest) first, ``asks`` best (lowest) first; quantities are absolute.
    """

    exchange: str
    symbol: str
    ts: int  # venue time of the snapshot (Binance ``T``/``E``), ms; 0 when the venue sends none
    update_id: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    received_ts: int = 0


@dataclass(slots=True, frozen=True)
class BookDelta:
    """A depth diff: absolute quantities per price, qty 0 deletes the level.

    ``first_update_id``..``update_id`` is the range of book updates it folds in (Binance ``U``,
    ``u``); ``prev_update_id`` is the ``u`` of the venue's previous diff (Binance futures ``pu``),
    -1 where the venue sends none (spot-style contiguous ids instead).
    """

    exchange: str
    symbol: str
    ts: int  # venue event time, ms
    first_update_id: int
    update_id: int
    prev_update_id: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    received_ts: int = 0


@dataclass(slots=True, frozen=True)
class MarkPrice:
    """Mark and index price with the current funding rate (Binance ``markPriceUpdate``)."""

    exchange: str
    symbol: str
    ts: int  # venue event time, ms
    mark_price: float
    index_price: float
    funding_rate: float  # the rate to be paid at ``next_funding_ts``, as a fraction (0.0001)
    next_funding_ts: int  # ms
    received_ts: int = 0


Event = Liquidation | AggTrade | BookTop | BookSnapshot | BookDelta | MarkPrice
