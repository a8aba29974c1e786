"""Field parsing and validation shared by the venue parsers.

Venues send numbers as strings or JSON numbers; anything else is refused. Hostile input is normal
input: a venue parser refuses one event (or one row) on its own, counts it under a reason in a
:class:`Refusals` and carries on with the rest of the frame, so a frame parser never raises for
data. The checks are the same on every venue:

- types: a number is a JSON number (not a boolean) or a string that parses as one; a symbol or a
  side is a JSON string; a timestamp is an integer (or an integral string / number);
- values: finite; prices, quantities and sizes > 0; price within
  [:data:`MIN_PRICE`, :data:`MAX_PRICE`]; notional within
  [:data:`MIN_NOTIONAL_USD`, :data:`MAX_NOTIONAL_USD`] (the largest liquidation on record is a few
  hundred million USD; 1e10 also stays far below where a float loses whole dollars, ~9e15, and
  below what every downstream integer conversion can hold);
- time: from :data:`MIN_TS` (2010-01-01) to :data:`TS_WINDOW_MS` (one day) after the receive
  time; without a receive time, within [:data:`MIN_TS`, :data:`MAX_TS`) (2010 .. 2100). A
  future-dated event would move every clock and window forward (one event stamped 2100 blinds
  the cascade detector), so the future is bounded tightly. The past only has the floor: an old
  event (a delayed or replayed push) falls outside every live window and never moves a clock,
  and a window there would turn every recorded test fixture into a time bomb;
- symbols: any non-empty JSON string up to :data:`MAX_SYMBOL_LEN` characters is data (non-ASCII
  included, e.g. ``币安人生USDT``); making it safe for paths and terminals is the store's and the
  renderers' job.

Refusal reasons (the keys of :class:`Refusals`, shown per venue on VenueStatus.rejected and in
the fetch summary) are the ``REASONS`` below.
"""

from __future__ import annotations

import math
from typing import Any

from liqcli.errors import DataError

# -- reasons -------------------------------------------------------------------------------------
BAD_STRUCTURE = "bad_structure"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
NOT_A_NUMBER = "not_a_number"
NOT_FINITE = "not_finite"
NOT_POSITIVE = "not_positive"
PRICE_OUT_OF_RANGE = "price_out_of_range"
NOTIONAL_OUT_OF_RANGE = "notional_out_of_range"
BAD_SYMBOL = "bad_symbol"
BAD_SIDE = "bad_side"
TS_FUTURE = "ts_future"
TS_PAST = "ts_past"
UNKNOWN_INSTRUMENT = "unknown_instrument"
OUT_OF_RANGE = "out_of_range"
MALFORMED = "malformed"
PARSER_ERROR = "parser_error"

REASONS: dict[str, str] = {
    BAD_STRUCTURE: "a frame, event, item or row of the wrong shape (not an object, no data list)",
    MISSING_FIELD: "a required field is absent",
    WRONG_TYPE: "a field of the wrong JSON type (a boolean, null, object or list for a number; "
    "a number, boolean, null or object for a symbol or side)",
    NOT_A_NUMBER: "a string that does not parse as a number (or an integer, for ids and times)",
    NOT_FINITE: "NaN or Infinity",
    NOT_POSITIVE: "a price, quantity or size that is zero or negative (a negative filled "
    "quantity included)",
    PRICE_OUT_OF_RANGE: "a price outside [1e-12, 1e9]",
    NOTIONAL_OUT_OF_RANGE: "a notional outside [1e-6, 1e10] USD (price x quantity overflowing "
    "or underflowing included)",
    BAD_SYMBOL: "an empty, blank or over-long (> 64 characters) symbol",
    BAD_SIDE: "a side that is not one of the venue's values",
    TS_FUTURE: "a timestamp more than a day after the receive time (or from 2100 on)",
    TS_PAST: "a timestamp before 2010-01-01 (-1, 1, seconds instead of milliseconds)",
    UNKNOWN_INSTRUMENT: "an OKX instrument missing from the contract table (even after a refresh)",
    OUT_OF_RANGE: "a REST value outside its range (a negative ratio or volume, a share above 1)",
    MALFORMED: "a DataError from a parser that gives no finer reason",
    PARSER_ERROR: "any other failure inside a parser (a bug: counted, never fatal)",
}

# -- bounds ------------------------------------------------------------------------------------
MIN_PRICE = 1e-12
MAX_PRICE = 1e9
MIN_NOTIONAL_USD = 1e-6
MAX_NOTIONAL_USD = 1e10
TS_WINDOW_MS = 86_400_000  # live events: at most one day after the receive time
MIN_TS = 1_262_304_000_000  # 2010-01-01T00:00:00Z
MAX_TS = 4_102_444_800_000  # 2100-01-01T00:00:00Z (exclusive)
MAX_SYMBOL_LEN = 64


class Refused(DataError):
    """One event or row refused, with the reason it is counted under."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Refusals(dict[str, int]):
    """Refused events per reason (a plain ``{reason: count}`` to JSON), plus the running
    ``total`` and the ``last`` refusal's message."""

    __slots__ = ("last", "total")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.total = sum(self.values())
        self.last: str | None = None

    def add(self, reason: str, message: str, count: int = 1) -> None:
        self[reason] = self.get(reason, 0) + count
        self.total += count
        self.last = message

    def merge(self, other: dict[str, int]) -> None:
        for reason, count in other.items():
            self[reason] = self.get(reason, 0) + count
            self.total += count
        last = getattr(other, "last", None)
        if last is not None:
            self.last = last


def refuse(refused: Refusals | None, exc: BaseException, venue: str = "", count: int = 1) -> None:
    """Count ``exc`` in ``refused``: a Refused under its reason, a KeyError (a parser indexing
    an absent field) as ``missing_field``, anything else as ``parser_error``."""
    if refused is None:
        return
    if isinstance(exc, Refused):
        refused.add(exc.reason, str(exc), count)
    elif type(exc) is KeyError:
        refused.add(MISSING_FIELD, f"{venue}: field {_show(exc.args[0])} is missing", count)
    elif isinstance(exc, DataError):
        refused.add(MALFORMED, str(exc), count)
    else:
        refused.add(PARSER_ERROR, f"{venue}: parser error: {exc!r}"[:300], count)


def refused_error(venue: str, exc: Exception) -> DataError:
    """A single-event parser's failure as the DataError its callers expect."""
    if isinstance(exc, DataError):
        return exc
    counts = Refusals()
    refuse(counts, exc, venue)
    reason = next(iter(counts))
    return Refused(reason, counts.last or reason)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def number(venue: str, value: Any, name: str, *, positive: bool = False) -> float:
    """``value`` (a JSON number or numeric string, never a boolean) as a finite float
    (``positive``: also > 0), else Refused naming venue, field and reason."""
    t = type(value)
    if t is str or t is float or t is int:
        try:
            out = float(value)
        except ValueError:
            raise Refused(
                NOT_A_NUMBER, f"{venue}: field {name!r} is not a number: {_show(value)}"
            ) from None
        except OverflowError:  # an integer beyond float range
            raise Refused(
                NOT_FINITE, f"{venue}: field {name!r} is not finite: {_show(value)}"
            ) from None
    else:
        raise Refused(
            WRONG_TYPE, f"{venue}: field {name!r} is {_kind(value)}, not a number: {_show(value)}"
        )
    if out - out != 0.0:  # NaN or +-inf (one subtraction: the fast finite test)
        raise Refused(NOT_FINITE, f"{venue}: field {name!r} is not finite: {_show(value)}")
    if positive and out <= 0:
        raise Refused(NOT_POSITIVE, f"{venue}: field {name!r} must be positive: {_show(value)}")
    return out


def positive(venue: str, value: Any, name: str) -> float:
    """A finite number > 0 (the fast path of ``number(..., positive=True)``)."""
    if type(value) is str:
        try:
            out = float(value)
        except ValueError:
            return number(venue, value, name, positive=True)
        if 0.0 < out < math.inf:
            return out
    return number(venue, value, name, positive=True)


def price_value(venue: str, value: Any, name: str) -> float:
    """A positive price within [MIN_PRICE, MAX_PRICE]."""
    out = positive(venue, value, name)
    if MIN_PRICE <= out <= MAX_PRICE:
        return out
    raise Refused(PRICE_OUT_OF_RANGE, f"{venue}: {name} {out!r} is outside [1e-12, 1e9]")


def notional(venue: str, value: float) -> float:
    """A notional within [MIN_NOTIONAL_USD, MAX_NOTIONAL_USD] (also catches inf and 0.0)."""
    if MIN_NOTIONAL_USD <= value <= MAX_NOTIONAL_USD:
        return value
    raise Refused(
        NOTIONAL_OUT_OF_RANGE, f"{venue}: notional {value!r} USD is outside [1e-6, 1e10] USD"
    )


def timestamp(venue: str, value: Any, name: str, received_ts: int = 0) -> int:
    """Epoch ms (an integer, or an integral string / JSON number) from MIN_TS up to
    TS_WINDOW_MS after ``received_ts``, or before MAX_TS when no receive time is known (0)."""
    t = type(value)
    if t is int:
        ts = value
    elif t is str:
        try:
            ts = int(value)
        except ValueError:
            raise Refused(
                NOT_A_NUMBER, f"{venue}: {name} is not epoch milliseconds: {_show(value)}"
            ) from None
    elif t is float:
        if not value.is_integer():
            reason = NOT_FINITE if value - value != 0.0 else NOT_A_NUMBER
            raise Refused(reason, f"{venue}: {name} is not epoch milliseconds: {_show(value)}")
        ts = int(value)
    else:
        raise Refused(
            WRONG_TYPE, f"{venue}: {name} is {_kind(value)}, not a timestamp: {_show(value)}"
        )
    high = received_ts + TS_WINDOW_MS if received_ts else MAX_TS - 1
    if MIN_TS <= ts <= high:
        return ts
    if ts > high:
        raise Refused(TS_FUTURE, f"{venue}: {name} {_show(ts)} is too far after the receive time")
    raise Refused(TS_PAST, f"{venue}: {name} {_show(ts)} is before 2010")


def symbol(venue: str, value: Any, name: str = "symbol") -> str:
    """A venue symbol: any non-empty, non-blank JSON string up to MAX_SYMBOL_LEN, upper-cased."""
    if type(value) is not str:
        raise Refused(
            WRONG_TYPE, f"{venue}: {name} is {_kind(value)}, not a string: {_show(value)}"
        )
    if not value or len(value) > MAX_SYMBOL_LEN or value.isspace():
        raise Refused(BAD_SYMBOL, f"{venue}: {name} {_show(value)} is empty or too long")
    return value.upper()


def text(venue: str, value: Any, name: str) -> str:
    """A JSON string field (a side, a venue flag), else Refused(WRONG_TYPE)."""
    if type(value) is str:
        return value
    raise Refused(WRONG_TYPE, f"{venue}: {name} is {_kind(value)}, not a string: {_show(value)}")


def field(venue: str, obj: dict[str, Any], key: str) -> Any:
    """``obj[key]``, else Refused(MISSING_FIELD)."""
    try:
        return obj[key]
    except KeyError:
        raise Refused(MISSING_FIELD, f"{venue}: field {key!r} is missing") from None


def structure(venue: str, what: str, value: Any) -> Refused:
    return Refused(BAD_STRUCTURE, f"{venue}: {what} is {_kind(value)}: {_show(value)}")
