"""The exception types every layer raises; the CLI maps them to CONTRACT.md exit codes."""

from __future__ import annotations


class LiqError(Exception):
    """An expected runtime failure: network, exchange error, bad data (exit 1, one line)."""

    exit_code = 1


class UsageError(LiqError):
    """Bad flag, symbol, date or threshold, detected before any network call (exit 2)."""

    exit_code = 2


class ExchangeError(LiqError):
    """The venue answered with an error body, e.g. Binance ``{"code":-1121,"msg":"Invalid symbol."}``."""

    def __init__(
        self, venue: str, message: str, *, code: int | str | None = None, status: int | None = None
    ):
        self.venue = venue
        self.code = code
        self.status = status
        detail = f" (code {code})" if code is not None else ""
        super().__init__(f"{venue}: {message}{detail}")


class UnknownSymbolError(ExchangeError):
    """The venue does not list the symbol."""


class RateLimitError(ExchangeError):
    """HTTP 429/418 that outlived the retry policy."""


class NetworkError(LiqError):
    """Timeouts, refused connections and 5xx that outlived the retry policy."""


class DataError(LiqError):
    """A response or file that cannot be parsed (malformed JSON, wrong columns, bad checksum)."""
