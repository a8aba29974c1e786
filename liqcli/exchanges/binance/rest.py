"""Binance USDⓈ-M futures REST: endpoints, limits, error bodies and row parsers for the seven
market-metrics datasets (EXCHANGES.md).

::

    async with binance_http() as http:                       # LIQ_BINANCE_REST_URL or production
        df = await fetch_page(http, "open_interest", "BTCUSDT", period="5m", limit=30)  # latest 30
        df = await fetch_page(http, "klines", "BTCUSDT", period="1h", start=t0, end=t1)

Every frame returned has exactly the dataset's schema columns (liqcli.core.schemas), ``ts`` as
``Datetime(ms, UTC)`` and ``exchange="binance"``. Numbers may arrive as JSON strings or numbers;
unknown keys are ignored; a malformed row (a missing field, a non-number, NaN/Infinity, a value out
of range) is refused on its own and counted by reason (``refused=``), a response that is not a
list of rows raises DataError naming the endpoint.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import httpx
import polars as pl

from liqcli.core.endpoints import url
from liqcli.core.events import BookSnapshot
from liqcli.core.schemas import TS, dataset
from liqcli.errors import DataError, ExchangeError, LiqError, UnknownSymbolError, UsageError
from liqcli.exchanges.http import RateBudget, VenueHttp
from liqcli.exchanges.parsing import (
    BAD_STRUCTURE,
    MAX_PRICE,
    MAX_TS,
    MIN_PRICE,
    MIN_TS,
    MISSING_FIELD,
    NOT_A_NUMBER,
    NOT_FINITE,
    OUT_OF_RANGE,
    TS_FUTURE,
    TS_PAST,
    Refusals,
)

VENUE = "binance"
DAY_MS = 86_400_000
EXCHANGE_INFO_PATH = "/fapi/v1/exchangeInfo"
FUNDING_PATH = "/fapi/v1/fundingRate"
KLINES_PATH = "/fapi/v1/klines"
FUTURES_DATA_PREFIX = "/futures/data/"
FUTURES_DATA_HISTORY_MS = 30 * DAY_MS  # "Only the data of the latest 30 days is available."


@dataclass(frozen=True)
class DatasetEndpoint:
    dataset: str
    path: str
    page_limit: int  # the endpoint's maximum ``limit``
    history_ms: int | None  # how far back it serves (None: the symbol's whole history)
    partition: str | None  # "period" / "interval" column, None for funding
    on_grid: bool  # rows sit on the period grid (so gaps can be computed), unlike funding


ENDPOINTS: dict[str, DatasetEndpoint] = {
    e.dataset: e
    for e in (
        DatasetEndpoint(
            "taker_ratio",
            "/futures/data/takerlongshortRatio",
            500,
            FUTURES_DATA_HISTORY_MS,
            "period",
            True,
        ),
        DatasetEndpoint(
            "top_position_ratio",
            "/futures/data/topLongShortPositionRatio",
            500,
            FUTURES_DATA_HISTORY_MS,
            "period",
            True,
        ),
        DatasetEndpoint(
            "top_account_ratio",
            "/futures/data/topLongShortAccountRatio",
            500,
            FUTURES_DATA_HISTORY_MS,
            "period",
            True,
        ),
        DatasetEndpoint(
            "global_account_ratio",
            "/futures/data/globalLongShortAccountRatio",
            500,
            FUTURES_DATA_HISTORY_MS,
            "period",
            True,
        ),
        DatasetEndpoint(
            "open_interest",
            "/futures/data/openInterestHist",
            500,
            FUTURES_DATA_HISTORY_MS,
            "period",
            True,
        ),
        DatasetEndpoint("funding", FUNDING_PATH, 1000, None, None, False),
        DatasetEndpoint("klines", KLINES_PATH, 1500, None, "interval", True),
    )
}
FETCH_DATASETS: tuple[str, ...] = tuple(ENDPOINTS)


@dataclass(frozen=True)
class BinanceLimits:
    """Binance's per-IP REST limits (EXCHANGES.md); ``scaled`` shrinks the windows for tests."""

    weight: int = 2400  # REQUEST_WEIGHT per minute (exchangeInfo rateLimits)
    weight_window_s: float = 60.0
    futures_data: int = 1000  # /futures/data/* requests per 5 minutes
    futures_data_window_s: float = 300.0
    funding: int = 500  # fundingRate (+ fundingInfo) requests per 5 minutes
    funding_window_s: float = 300.0

    def scaled(self, factor: float, **overrides: Any) -> BinanceLimits:
        return replace(
            self,
            weight_window_s=self.weight_window_s / factor,
            futures_data_window_s=self.futures_data_window_s / factor,
            funding_window_s=self.funding_window_s / factor,
            **overrides,
        )


def kline_weight(limit: int) -> int:
    """Request weight of ``/fapi/v1/klines`` by ``limit``."""
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


def request_weight(path: str, params: Mapping[str, Any]) -> int:
    if path == KLINES_PATH:
        return kline_weight(int(params.get("limit", 500)))
    if path.startswith(FUTURES_DATA_PREFIX):
        return 0  # weight 0: these have their own request budget instead
    return 1


def binance_budgets(
    limits: BinanceLimits | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Any] = asyncio.sleep,
) -> list[RateBudget]:
    lim = limits or BinanceLimits()
    return [
        RateBudget(
            "weight", lim.weight, lim.weight_window_s, unit="weight", clock=clock, sleep=sleep
        ),
        RateBudget(
            "futures_data",
            lim.futures_data,
            lim.futures_data_window_s,
            paths=(FUTURES_DATA_PREFIX,),
            clock=clock,
            sleep=sleep,
        ),
        RateBudget(
            "funding",
            lim.funding,
            lim.funding_window_s,
            paths=(FUNDING_PATH, "/fapi/v1/fundingInfo"),
            clock=clock,
            sleep=sleep,
        ),
    ]


def parse_error(status: int, payload: Any, path: str, params: Mapping[str, Any]) -> LiqError | None:
    """Binance error bodies (``{"code":-1121,"msg":"Invalid symbol."}``) -> clear exceptions."""
    if not isinstance(payload, dict) or "code" not in payload:
        return None
    code = payload.get("code")
    msg = str(payload.get("msg", "")).strip() or "no message"
    if code == -1121:
        symbol = params.get("symbol", "?")
        return UnknownSymbolError(
            VENUE,
            f"unknown symbol {symbol}: not a USDⓈ-M futures symbol ({msg})",
            code=code,
            status=status,
        )
    return ExchangeError(VENUE, f"{path} refused the request: {msg}", code=code, status=status)


def binance_http(
    base_url: str | None = None,
    *,
    limits: BinanceLimits | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Any] = asyncio.sleep,
    **kwargs: Any,
) -> VenueHttp:
    """The VenueHttp for Binance futures with its limits and error bodies wired in."""
    budgets = binance_budgets(limits, clock=clock, sleep=sleep)
    weight = budgets[0]

    def observe(response: httpx.Response) -> None:
        # Other processes on this IP spend the same weight; the header is the truth.
        used = response.headers.get("X-MBX-USED-WEIGHT-1M")
        if used is not None and used.isdigit():
            weight.observe_used(int(used))

    return VenueHttp(
        VENUE,
        base_url or url("LIQ_BINANCE_REST_URL"),
        budgets=budgets,
        error_parser=parse_error,
        on_response=observe,
        clock=clock,
        sleep=sleep,
        **kwargs,
    )


async def fetch_page(
    http: VenueHttp,
    dataset_name: str,
    symbol: str,
    *,
    period: str = "5m",
    start: int | None = None,
    end: int | None = None,
    limit: int | None = None,
    refused: Refusals | None = None,
) -> pl.DataFrame:
    """One request: rows with ``start <= ts <= end`` (ms, both optional), at most ``limit``
    (default: the endpoint's maximum). ``period`` is the klines interval for ``klines`` and
    ignored by ``funding``. Malformed rows are left out and counted in ``refused`` by reason."""
    endpoint = ENDPOINTS[dataset_name]
    params: dict[str, Any] = {"symbol": symbol}
    if endpoint.partition == "period":
        params["period"] = period
    elif endpoint.partition == "interval":
        params["interval"] = period
    if start is not None:
        params["startTime"] = start
    if end is not None:
        params["endTime"] = end
    params["limit"] = limit or endpoint.page_limit
    payload = await http.get_json(endpoint.path, params, cost=request_weight(endpoint.path, params))
    # Parsed off the event loop, which stays free to serve the other requests in flight; the
    # page's own counter, merged back here, so concurrent pages never share one.
    page_refused = Refusals()
    frame = await asyncio.to_thread(
        parse_rows, dataset_name, payload, symbol=symbol, period=period, refused=page_refused
    )
    if refused is not None and page_refused:
        refused.merge(page_refused)
    return frame


# Field names per dataset: schema column -> Binance key (dict rows) or index (kline arrays).
_DICT_FIELDS: dict[str, tuple[str, dict[str, str]]] = {
    "taker_ratio": (
        "timestamp",
        {"buy_sell_ratio": "buySellRatio", "buy_vol": "buyVol", "sell_vol": "sellVol"},
    ),
    "open_interest": (
        "timestamp",
        {"open_interest": "sumOpenInterest", "open_interest_value": "sumOpenInterestValue"},
    ),
    "funding": ("fundingTime", {"funding_rate": "fundingRate", "mark_price": "markPrice"}),
    **{
        name: (
            "timestamp",
            {
                "long_short_ratio": "longShortRatio",
                "long_share": "longAccount",
                "short_share": "shortAccount",
            },
        )
        for name in ("top_position_ratio", "top_account_ratio", "global_account_ratio")
    },
}
_KLINE_FIELDS = {
    "open": 1,
    "high": 2,
    "low": 3,
    "close": 4,
    "volume": 5,
    "quote_volume": 7,
    "trades": 8,
    "taker_buy_volume": 9,
    "taker_buy_quote_volume": 10,
}
# Optional fields: old funding rows carry markPrice "" (before Binance recorded it).
_NULLABLE = {"mark_price"}
# Value ranges per column (inclusive; None: unbounded). Anything else, or a non-finite value, is
# refused row by row (liqcli.exchanges.parsing reasons), never stored.
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "buy_sell_ratio": (0.0, None),
    "buy_vol": (0.0, None),
    "sell_vol": (0.0, None),
    "long_short_ratio": (0.0, None),
    "long_share": (0.0, 1.0),
    "short_share": (0.0, 1.0),
    "open_interest": (0.0, None),
    "open_interest_value": (0.0, None),
    "funding_rate": (-1.0, 1.0),  # a rate per interval; caps are a few percent
    "mark_price": (MIN_PRICE, MAX_PRICE),
    "open": (MIN_PRICE, MAX_PRICE),
    "high": (MIN_PRICE, MAX_PRICE),
    "low": (MIN_PRICE, MAX_PRICE),
    "close": (MIN_PRICE, MAX_PRICE),
    "volume": (0.0, None),
    "quote_volume": (0.0, None),
    "trades": (0, None),
    "taker_buy_volume": (0.0, None),
    "taker_buy_quote_volume": (0.0, None),
}


def parse_rows(
    dataset_name: str,
    payload: Any,
    *,
    symbol: str,
    period: str = "5m",
    refused: Refusals | None = None,
) -> pl.DataFrame:
    """A decoded Binance response -> a frame with the dataset's schema.

    A response that is not a list of rows raises DataError. A row that is not a row (wrong
    type), lacks a field, holds a non-number (a JSON boolean included), NaN/Infinity, a value out
    of its range (a negative ratio, a share above 1) or a time outside 2010..2100 is refused on
    its own: counted in ``refused`` under its reason and left out; the other rows are kept.
    """
    endpoint = ENDPOINTS[dataset_name]
    spec = dataset(dataset_name)
    if not isinstance(payload, list):
        raise DataError(
            f"{VENUE}: {endpoint.path} returned {type(payload).__name__}, expected a list of rows"
        )
    row_type = list if dataset_name == "klines" else dict
    if not all(type(row) is row_type for row in payload):
        kind = "an array" if row_type is list else "an object"
        bad = [row for row in payload if type(row) is not row_type]
        if refused is not None:
            refused.add(
                BAD_STRUCTURE,
                f"{VENUE}: unexpected row from {endpoint.path}: every row should be {kind}",
                len(bad),
            )
        payload = [row for row in payload if type(row) is row_type]
    # Pick the raw values in Python (one lookup each), convert them in Polars (vectorised).
    if dataset_name == "klines":
        width = max(_KLINE_FIELDS.values()) + 1
        short = sum(1 for row in payload if len(row) < width)
        if short:
            if refused is not None:
                refused.add(
                    MISSING_FIELD,
                    f"{VENUE}: unexpected row from {endpoint.path}: a kline row is too short",
                    short,
                )
            payload = [row for row in payload if len(row) >= width]
        raw: dict[str, list[Any]] = {"ts": [row[0] for row in payload]}
        for name, index in _KLINE_FIELDS.items():
            raw[name] = [row[index] for row in payload]
    else:
        ts_key, fields = _DICT_FIELDS[dataset_name]
        raw = {"ts": [row.get(ts_key) for row in payload]}
        for name, key in fields.items():
            raw[name] = [row.get(key) for row in payload]
    try:
        text = pl.DataFrame(
            [pl.Series(name, values, dtype=pl.String, strict=False) for name, values in raw.items()]
        )
    except (TypeError, pl.exceptions.PolarsError):
        raise DataError(
            f"{VENUE}: unexpected row from {endpoint.path}: a field holds a non-number"
        ) from None
    constants = {"exchange": VENUE, "symbol": symbol}
    if endpoint.partition is not None:
        constants[endpoint.partition] = period
    values = [name for name in spec.schema if name not in constants]
    parsed = text.select(
        _parse_expr(name, pl.Int64 if name == "ts" else spec.schema[name]) for name in values
    )
    reason = _refusal_reason(text, parsed)
    if reason is not None:
        reasons = parsed.select(reason.alias("reason"))["reason"]
        bad = reasons.is_not_null()
        if bad.any():
            if refused is not None:
                counts = reasons.filter(bad).value_counts()
                first = text.filter(bad).row(0, named=True)
                message = f"{VENUE}: refused a row from {endpoint.path}: {_show_row(first)}"
                for why, count in counts.iter_rows():
                    refused.add(why, message, count)
            parsed = parsed.filter(~bad)
    return parsed.select(
        pl.lit(constants[name], pl.String).alias(name)
        if name in constants
        else (pl.col(name).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC").cast(TS))
        if name == "ts"
        else pl.col(name)
        for name in spec.schema
    )


def _parse_expr(name: str, dtype: pl.DataType) -> pl.Expr:
    col = pl.col(name).str.strip_chars()
    if name in _NULLABLE:
        col = pl.when(col == "").then(None).otherwise(col)
    return col.cast(dtype, strict=False).alias(name)


def _refusal_reason(text: pl.DataFrame, parsed: pl.DataFrame) -> pl.Expr | None:
    """One expression giving each row's refusal reason (null: the row is fine), first failing
    check first; None when every row passes (the fast path: one vectorised check)."""
    checks: list[tuple[pl.Expr, str]] = []
    for name in parsed.columns:
        raw = text[name]
        col = pl.col(name)
        if name not in _NULLABLE:
            checks.append((col.is_null() & pl.lit(raw.is_null()), MISSING_FIELD))
        blank = (raw.str.strip_chars() == "") if name in _NULLABLE else pl.lit(False)
        checks.append((col.is_null() & pl.lit(raw.is_not_null()) & ~blank, NOT_A_NUMBER))
    for name, dtype in parsed.schema.items():
        col = pl.col(name)
        if name == "ts":
            checks.append((col > MAX_TS - 1, TS_FUTURE))
            checks.append((col < MIN_TS, TS_PAST))
            continue
        if dtype == pl.Float64:
            checks.append((~col.is_finite(), NOT_FINITE))
        low, high = _RANGES.get(name, (None, None))
        if low is not None:
            checks.append((col < low, OUT_OF_RANGE))
        if high is not None:
            checks.append((col > high, OUT_OF_RANGE))
    if not checks:
        return None
    any_bad = pl.any_horizontal(expr.fill_null(False) for expr, _ in checks)
    if not parsed.select(any_bad).to_series().any():
        return None
    reason = pl.lit(None, pl.String)
    for expr, why in reversed(checks):
        reason = pl.when(expr.fill_null(False)).then(pl.lit(why)).otherwise(reason)
    return reason


def _show_row(row: dict[str, Any]) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in row.items())
    return text if len(text) <= 200 else text[:197] + "..."


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    return "a kline row is too short"


# --- order book snapshot (the base of a locally maintained book, liqcli.trading.book) ---------

DEPTH_PATH = "/fapi/v1/depth"
DEPTH_LIMITS = {5: 2, 10: 2, 20: 2, 50: 2, 100: 5, 500: 10, 1000: 20}  # limit -> request weight


async def depth(http: VenueHttp, symbol: str, limit: int = 1000) -> BookSnapshot:
    """``GET /fapi/v1/depth``: a BookSnapshot (``lastUpdateId``, bids best first; RPI orders are
    not in it). ``limit`` is one of 5, 10, 20, 50, 100, 500, 1000."""
    # Imported here: the stream module loads websockets, which ``liq fetch`` never needs.
    from liqcli.exchanges.binance.stream import parse_depth_snapshot

    if limit not in DEPTH_LIMITS:
        raise UsageError(
            f"binance: depth limit {limit}: choose from {', '.join(map(str, DEPTH_LIMITS))}"
        )
    payload = await http.get_json(
        DEPTH_PATH, {"symbol": symbol.upper(), "limit": limit}, cost=DEPTH_LIMITS[limit]
    )
    return parse_depth_snapshot(payload, symbol)
