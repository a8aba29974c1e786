"""Amounts for people, in the currency they are in: a map of XRPETH trades sums ETH, not USD.

Polars-free (the chart worker formats axis ticks with it).
"""

from __future__ import annotations

# Quote assets recognised at the end of a symbol, longest first (FDUSD before USD).
QUOTES: tuple[str, ...] = (
    "FDUSD",
    "USDT",
    "USDC",
    "BUSD",
    "TUSD",
    "USD",
    "BTC",
    "ETH",
    "BNB",
    "EUR",
)
USD_QUOTES: frozenset[str] = frozenset({"USD", "USDT", "USDC"})


def quote_of(symbol: str) -> str:
    """The quote asset of ``BASEQUOTE`` (XRPETH -> ETH), or ``quote`` when it is not known."""
    for quote in QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return quote
    return "quote"


def currency_of(symbol: str) -> str:
    """What the amounts (price x qty) are in: USD for USD/USDT/USDC quotes, else the quote."""
    quote = quote_of(symbol)
    return "USD" if quote in USD_QUOTES else quote


def money(value: float, currency: str, *, compact: bool = False) -> str:
    """An amount for people: ``$1,234`` / ``$1.2M`` in USD, ``1,234 ETH`` / ``1.2M ETH`` else."""
    text = f"{value:,.0f}" if abs(value) >= 100 or not value else f"{value:.4g}"
    if compact:
        size = abs(value)
        text = f"{value:.0f}" if size < 1e3 else text
        for limit, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
            if size >= limit:
                text = f"{value / limit:.1f}{suffix}"
                break
        if size < 10 and value:
            text = f"{value:.3g}"
    return f"${text}" if currency == "USD" else f"{text} {currency}"
