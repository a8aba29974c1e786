"""Binance USDⓈ-M futures REST: endpoints, limits, error bodies and row parsers for the seven
market-metrics datasets (EXCHANGES.md).

::

    async with binance_http() as http:                       # LIQ_BINANCE_REST_URL or production
        df = await fetch_page(http, "open_interest", "BTCUSDT", period="5m", limit=30)  # latest 30
        df = await fetch_page(http, "klines", "BTCUSDT", period="1h", start=t0, end=t1)

Every frame returned has exactly the dataset's schema columns (liqcli.core.schemas), ``ts`` as
``Datetime(ms, UTC)`` and ``exchange="binance"``. Numbers may arrive as JSON strings or numbers;
unknown keys are ignored; a row that lacks a field raises DataError naming the endpoint.
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
from liqcli.core.schemas import TS, DatasetSpec, dataset
from liqcli.errors import DataError, ExchangeError, LiqError, UnknownSymbolError, UsageError
from liqcli.exchanges.http import RateBudget, VenueHttp

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
) -> pl.DataFrame:
    """One request: rows with ``start <= ts <= end`` (ms, both optional), at most ``limit``
    (default: the endpoint's maximum). ``period`` is the klines interval for ``klines`` and
    ignored by ``funding``."""
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
    # Parsed off the event loop, which stays free to serve the other requests in flight.
    return await asyncio.to_thread(parse_rows, dataset_name, payload, symbol=symbol, period=period)


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


def parse_rows(dataset_name: str, payload: Any, *, symbol: str, period: str = "5m") -> pl.DataFrame:
    """A decoded Binance response -> a frame with the dataset's schema."""
    endpoint = ENDPOINTS[dataset_name]
    spec = dataset(dataset_name)
    if not isinstance(payload, list):
        raise DataError(
            f"{VENUE}: {endpoint.path} returned {type(payload).__name__}, expected a list of rows"
        )
    row_type = list if dataset_name == "klines" else dict
    if not all(isinstance(row, row_type) for row in payload):
        kind = "an array" if row_type is list else "an object"
        raise DataError(f"{VENUE}: unexpected row from {endpoint.path}: every row should be {kind}")
    # Pick the raw values in Python (one lookup each), convert them in Polars (vectorised).
    try:
        if dataset_name == "klines":
            raw: dict[str, list[Any]] = {"ts": [row[0] for row in payload]}
            for name, index in _KLINE_FIELDS.items():
                raw[name] = [row[index] for row in payload]
        else:
            ts_key, fields = _DICT_FIELDS[dataset_name]
            raw = {"ts": [row[ts_key] for row in payload]}
            for name, key in fields.items():
                raw[name] = [row.get(key) if name in _NULLABLE else row[key] for row in payload]
    except (KeyError, IndexError) as exc:
        raise DataError(f"{VENUE}: unexpected row from {endpoint.path}: {_describe(exc)}") from None
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
    exprs = [
        pl.lit(constants[name], pl.String).alias(name)
        if name in constants
        else _parse_expr(name, pl.Int64 if name == "ts" else dtype)
        for name, dtype in spec.schema.items()
    ]
    # One vectorised pass; strict casts turn any unparseable value into an error.
    try:
        frame = text.select(exprs)
    except pl.exceptions.PolarsError:
        raise DataError(
            f"{VENUE}: unexpected row from {endpoint.path}: {_first_bad(text, spec)}"
        ) from None
    nulls = {
        n: c for n, c in frame.null_count().row(0, named=True).items() if c and n not in _NULLABLE
    }
    if nulls:
        name = next(iter(nulls))
        raise DataError(
            f"{VENUE}: unexpected row from {endpoint.path}: {name} None is not a number"
        )
    return frame


def _parse_expr(name: str, dtype: pl.DataType) -> pl.Expr:
    col = pl.col(name).str.strip_chars()
    if name in _NULLABLE:
        col = pl.when(col == "").then(None).otherwise(col)
    col = col.cast(dtype, strict=True)
    if name == "ts":
        col = col.cast(pl.Datetime("ms")).dt.replace_time_zone("UTC").cast(TS)
    return col.alias(name)


def _first_bad(text: pl.DataFrame, spec: DatasetSpec) -> str:
    """The first value a strict cast refused (the slow path, only when a page is bad)."""
    for name in text.columns:
        dtype = pl.Int64 if name == "ts" else spec.schema[name]
        values = text[name].str.strip_chars()
        parsed = values.cast(dtype, strict=False)
        bad = parsed.is_null() & values.is_not_null() & ~((values == "") & (name in _NULLABLE))
        if bad.any():
            what = "epoch milliseconds" if name == "ts" else "a number"
            return f"{name} {values.filter(bad)[0]!r} is not {what}"
    return "a value cannot be parsed"


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
