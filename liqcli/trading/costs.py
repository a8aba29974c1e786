"""Fees, funding, maintenance margin and the liquidation price: one set of formulas.

The liquidation price is Binance USDⓈ-M's isolated-margin formula (one-way mode, one position):

    LP = (WB + cum - side * Q * EP) / (Q * mmr - side * Q)

with WB the isolated wallet balance (margin), Q the absolute size, EP the entry price, side +1
for long and -1 for short, and ``mmr``/``cum`` the maintenance-margin rate and maintenance amount
of the notional's bracket. With WB = Q * EP / L and cum = 0 this is

    long:  EP * (1 - 1/L) / (1 - mmr)        short: EP * (1 + 1/L) / (1 + mmr)

``liquidation_price_for_leverage`` is written with plain arithmetic, so it accepts floats and
Polars expressions alike: ``liq map``'s default model uses the same function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from liqcli.errors import UsageError


@dataclass(frozen=True, slots=True)
class Fees:
    """Maker and taker rates as fractions (0.0002 = 0.02 %). A negative maker rate is a rebate."""

    maker: float = 0.0002
    taker: float = 0.0005

    def __post_init__(self) -> None:
        if not (-0.01 < self.maker < 0.01 and 0 <= self.taker < 0.01):
            raise UsageError(
                f"implausible fees maker={self.maker} taker={self.taker}: "
                "give fractions, e.g. 0.0002,0.0005"
            )

    def fee(self, notional: float, *, maker: bool) -> float:  # SimBroker._fill inlines it
        return abs(notional) * (self.maker if maker else self.taker)


def parse_fees(text: str) -> Fees:
    """``'0.02%,0.05%'`` or ``'0.0002,0.0005'`` -> Fees (maker, taker)."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 2:
        raise UsageError(f"invalid --fees {text!r}: expected MAKER,TAKER, e.g. 0.02%,0.05%")
    rates = []
    for part in parts:
        try:
            rates.append(float(part[:-1]) / 100 if part.endswith("%") else float(part))
        except ValueError:
            raise UsageError(f"invalid --fees {text!r}: {part!r} is not a number") from None
    return Fees(rates[0], rates[1])


@dataclass(frozen=True, slots=True)
class Bracket:
    """Maintenance-margin bracket: applies to notionals from ``floor`` (inclusive) up."""

    floor: float
    mmr: float
    max_leverage: float
    cum: float = 0.0  # maintenance amount, derived from the brackets below


def make_brackets(rows: list[tuple[float, float, float]]) -> tuple[Bracket, ...]:
    """Brackets from (floor, mmr, max_leverage) rows; ``cum`` is derived as Binance does:
    cum_i = cum_{i-1} + floor_i * (mmr_i - mmr_{i-1}), which keeps maintenance margin continuous."""
    out: list[Bracket] = []
    cum = 0.0
    prev_mmr = None
    for floor, mmr, lev in sorted(rows):
        if prev_mmr is not None:
            cum += floor * (mmr - prev_mmr)
        out.append(Bracket(floor, mmr, lev, cum))
        prev_mmr = mmr
    return tuple(out)


# Binance USDⓈ-M BTCUSDT notional brackets (floor in USDT, maintenance margin rate, max leverage)
# as published in 2024-2025; other symbols have smaller brackets. Configurable per broker.
BTCUSDT_BRACKETS = make_brackets(
    [
        (0, 0.004, 125),
        (50_000, 0.005, 100),
        (500_000, 0.01, 50),
        (8_000_000, 0.025, 20),
        (50_000_000, 0.05, 10),
        (80_000_000, 0.1, 5),
        (100_000_000, 0.125, 4),
        (200_000_000, 0.15, 3),
        (300_000_000, 0.25, 2),
        (500_000_000, 0.5, 1),
    ]
)


# The symbols whose brackets are known here: a SimBroker given no brackets of its own caps
# leverage by notional only for these (another symbol's table may be far smaller).
KNOWN_BRACKETS: dict[str, tuple[Bracket, ...]] = {"BTCUSDT": BTCUSDT_BRACKETS}


def notional_cap(leverage: float, brackets: tuple[Bracket, ...] = BTCUSDT_BRACKETS) -> float:
    """The position notional from which ``leverage`` is no longer allowed: the floor of the first
    bracket whose max leverage is below it (``inf`` when none is). Brackets apply from their floor
    up (``bracket_for``), so a notional at the cap is already in the bracket that refuses it:
    BTCUSDT at 125x allows notionals below 50,000, at 50x below 8,000,000, at 1x any."""
    for b in brackets:
        if b.max_leverage < leverage:
            return b.floor
    return math.inf


def bracket_for(notional: float, brackets: tuple[Bracket, ...] = BTCUSDT_BRACKETS) -> Bracket:
    chosen = brackets[0]
    for b in brackets:
        if abs(notional) >= b.floor:
            chosen = b
        else:
            break
    return chosen


def liquidation_price(
    *, qty: float, entry_price: float, margin: float, mmr: float, cum: float = 0.0
) -> float:
    """Isolated liquidation price of a signed position ``qty`` holding ``margin``.

    Returns 0.0 for a long that cannot be liquidated (margin covers the whole notional) and
    ``inf`` never: a short's price is always finite."""
    if qty == 0:
        return 0.0
    side = 1.0 if qty > 0 else -1.0
    size = abs(qty)
    price = (margin + cum - side * size * entry_price) / (size * mmr - side * size)
    return max(price, 0.0)


def liquidation_price_for_leverage(entry_price: Any, leverage: Any, *, long: bool, mmr: Any) -> Any:
    """The same formula for a position opened with margin = notional / leverage and cum = 0.

    Plain arithmetic: ``entry_price``/``leverage`` may be floats or Polars expressions."""
    if long:
        return entry_price * (1 - 1 / leverage) / (1 - mmr)
    return entry_price * (1 + 1 / leverage) / (1 + mmr)


def maintenance_margin(notional: float, brackets: tuple[Bracket, ...] = BTCUSDT_BRACKETS) -> float:
    b = bracket_for(notional, brackets)
    return abs(notional) * b.mmr - b.cum


def funding_payment(qty: float, mark_price: float, rate: float) -> float:
    """What the position pays at a funding settlement (negative = receives).

    Longs pay shorts when the rate is positive: payment = qty * mark * rate with signed qty."""
    return qty * mark_price * rate
