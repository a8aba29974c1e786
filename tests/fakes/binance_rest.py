"""A fake Binance USDⓈ-M futures REST API: a real HTTP/1.1 server on 127.0.0.1 (port 0).

It runs its own asyncio loop in a background thread, so both async tests and blocking callers (the
CLI under ``CliRunner``, a subprocess pointed at it with ``LIQ_BINANCE_REST_URL``) can use it, and
it serves many connections at once. Endpoints::

    /futures/data/takerlongshortRatio  topLongShortPositionRatio  topLongShortAccountRatio
    /futures/data/globalLongShortAccountRatio  openInterestHist
    /fapi/v1/fundingRate  /fapi/v1/klines  /fapi/v1/exchangeInfo

Data is synthetic but deterministic: every value is a function of (symbol, timestamp), so a page
asked twice is identical. Behaviour follows Binance's documentation:

- ``startTime``/``endTime`` (inclusive) and ``limit`` with the page caps (500 / 1000 / 1500 and
  their defaults 30 / 100 / 500); ascending order; with no bounds the latest rows; when a range
  holds more than ``limit`` rows the page starts at ``startTime`` (``anchor="end"`` flips that);
- ``/futures/data/*`` only serve the latest 30 days: an older ``startTime`` is refused (-1130);
- futures/data rows exist for finished periods, klines include the candle still open, funding
  every 8 hours (fundingTime a few ms after the hour, as real payloads show);
- unknown symbols answer ``{"code":-1121,"msg":"Invalid symbol."}``;
- limits enforced the way Binance does, per IP, in fixed windows: REQUEST_WEIGHT (2400/min,
  klines weigh 1/2/5/10 by ``limit``), 1000 requests / 5 min for ``/futures/data/*``, 500 / 5 min
  for fundingRate. Over a limit -> 429 with ``Retry-After``; requests that keep coming while limited
  -> an IP ban: 418 with ``Retry-After`` for every endpoint. ``X-MBX-USED-WEIGHT-1M`` on every
  answer. :meth:`Limits.scaled` shrinks the windows so tests run in seconds.

Fault injection (:meth:`FakeBinanceRest.inject`): HTTP status (5xx), slow responses, malformed
JSON, Binance error bodies, dropped connections, explicit 429/418 (``retry_after=None`` with
``omit_retry_after=True``: no header at all), a body trickled a byte every ``delay_s`` ("trickle")
and an oversized body ("huge", ``size`` bytes). Every request is logged
(:attr:`FakeBinanceRest.requests`) for assertions. ``python -m tests.fakes.binance_rest`` runs it
standalone (benchmarks); ``GET /_fake/stats`` then reports its counters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import orjson

MINUTE_MS = 60_000
DAY_MS = 86_400_000
PERIOD_MS = {
    "5m": 5 * MINUTE_MS,
    "15m": 15 * MINUTE_MS,
    "30m": 30 * MINUTE_MS,
    "1h": 60 * MINUTE_MS,
    "2h": 120 * MINUTE_MS,
    "4h": 240 * MINUTE_MS,
    "6h": 360 * MINUTE_MS,
    "12h": 720 * MINUTE_MS,
    "1d": DAY_MS,
}
KLINE_INTERVAL_MS = {"1m": MINUTE_MS, "3m": 3 * MINUTE_MS, **PERIOD_MS, "8h": 480 * MINUTE_MS}
FUNDING_INTERVAL_MS = 8 * 3_600_000
FUTURES_DATA = (
    "takerlongshortRatio",
    "topLongShortPositionRatio",
    "topLongShortAccountRatio",
    "globalLongShortAccountRatio",
    "openInterestHist",
)
DEFAULT_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    418: "I'm a teapot",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass(frozen=True)
class Limits:
    """Binance's per-IP limits (defaults are the real ones)."""

    weight: int = 2400
    weight_window_s: float = 60.0
    futures_data: int = 1000
    futures_data_window_s: float = 300.0
    funding: int = 500
    funding_window_s: float = 300.0
    ban_after: int = 20  # requests tolerated while limited (in-flight ones) before a 418
    ban_s: float = 120.0  # Binance bans for 2 minutes up to 3 days

    def scaled(self, factor: float, **overrides: Any) -> Limits:
        """The same limits with every window (and the ban) ``factor`` times shorter."""
        values = {
            "weight_window_s": self.weight_window_s / factor,
            "futures_data_window_s": self.futures_data_window_s / factor,
            "funding_window_s": self.funding_window_s / factor,
            "ban_s": self.ban_s / factor,
        }
        values.update(overrides)
        return Limits(**{**self.__dict__, **values})


FaultKind = Literal["status", "error", "malformed", "slow", "drop", "429", "418", "trickle", "huge"]


@dataclass
class Fault:
    kind: FaultKind
    path: str | None  # path prefix; None = any
    remaining: int
    status: int = 503
    code: int = -1121
    msg: str = "Invalid symbol."
    delay_s: float = 0.0
    retry_after: float | None = None
    symbol: str | None = None  # only requests for this symbol
    omit_retry_after: bool = False  # 429/418 without a Retry-After header
    size: int = 0  # "huge": body bytes

    def matches(self, path: str, params: dict[str, str]) -> bool:
        if self.path is not None and not path.startswith(self.path):
            return False
        return self.symbol is None or params.get("symbol") == self.symbol


@dataclass
class LoggedRequest:
    method: str
    path: str
    params: dict[str, str]
    status: int  # 0 when the connection was dropped, -1 while still being answered
    t: float  # server clock at arrival


@dataclass
class _Window:
    index: int = -1
    used: int = 0

    def count(self, now: float, window_s: float) -> int:
        index = math.floor(now / window_s)
        if index != self.index:
            self.index, self.used = index, 0
        return self.used


@dataclass
class _Answer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    trickle_s: float = 0.0  # > 0: the body leaves one byte at a time, this far apart


class _BinanceError(Exception):
    def __init__(self, code: int, msg: str, status: int = 400):
        self.code, self.msg, self.status = code, msg, status


class FakeClock:
    """A shared, manually advanced clock: pass it as the server's ``clock`` and as the client's
    ``clock``/``sleep`` so Retry-After waits and rate windows take no real time."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


def _seed(symbol: str) -> int:
    return zlib.crc32(symbol.encode())


def _unit(seed: int, ts: int, salt: int) -> float:
    """A deterministic pseudo-random number in [0, 1) for (symbol, ts, field)."""
    x = (ts // 1000 * 2_654_435_761 + seed * 40_503 + salt * 2_246_822_519) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x2C1B3C6D) & 0xFFFFFFFF
    x ^= x >> 12
    return (x & 0xFFFFFF) / 0x1000000


def _price(seed: int, ts: int) -> float:
    base = 100.0 + seed % 50_000
    return base * (1 + 0.08 * math.sin(ts / 86_400_000 + seed % 97) + 0.01 * _unit(seed, ts, 9))


class FakeBinanceRest:
    """See the module docstring. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        *,
        symbols: tuple[str, ...] | list[str] = DEFAULT_SYMBOLS,
        now_ms: int | Callable[[], int] | None = None,
        clock: Callable[[], float] = time.time,
        limits: Limits | None = None,
        latency_s: float | Callable[[], float] = 0.0,  # arrival to answer, in seconds
        listed_days: int = 400,
        anchor: Literal["start", "end"] = "start",
    ) -> None:
        self.symbols = {s.upper() for s in symbols}
        self.clock = clock
        self._now_ms = now_ms
        self.limits = limits or Limits()
        self.latency_s = latency_s
        self.listed_days = listed_days
        self.anchor = anchor
        self.requests: list[LoggedRequest] = []
        self.status_counts: Counter[int] = Counter()
        self.max_in_flight = 0  # most requests being answered at once (concurrency proof)
        self._in_flight = 0
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._weight = _Window()
        self._futures_data = _Window()
        self._funding = _Window()
        self._limited: dict[str, float] = {}  # budget name -> end of its exhausted window
        self._hammering = 0
        self._banned_until = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeBinanceRest:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name="fake-binance-rest", daemon=True
        )
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1 << 16, backlog=512), loop
        ).result(5)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        assert self._thread is not None
        self._thread.join(5)
        loop.close()
        self._loop = None

    def __enter__(self) -> FakeBinanceRest:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test helpers

    def now_ms(self) -> int:
        if self._now_ms is None:
            return int(self.clock() * 1000)
        return self._now_ms() if callable(self._now_ms) else self._now_ms

    def inject(
        self,
        kind: FaultKind,
        *,
        path: str | None = None,
        count: int = 1,
        status: int | None = None,
        code: int = -1121,
        msg: str = "Invalid symbol.",
        delay_s: float = 0.0,
        retry_after: float | None = None,
        symbol: str | None = None,
        omit_retry_after: bool = False,
        size: int = 0,
    ) -> None:
        """Make the next ``count`` matching requests fail this way (faults apply in order).

        ``status``: the HTTP status of a "status" fault (default 503) or an "error" body (400).
        """
        if status is None:
            status = 400 if kind == "error" else 503
        fault = Fault(
            kind,
            path,
            count,
            status,
            code,
            msg,
            delay_s,
            retry_after,
            symbol,
            omit_retry_after,
            size,
        )
        with self._lock:
            self._faults.append(fault)

    def requests_to(self, path: str) -> list[LoggedRequest]:
        return [r for r in self.requests if r.path.startswith(path)]

    def clear_log(self) -> None:
        self.requests.clear()
        self.status_counts.clear()

    # ------------------------------------------------------------------ HTTP

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                method, target, _version = request_line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                if length := int(headers.get("content-length", "0")):
                    await reader.readexactly(length)
                answer = await self._answer(method, target)
                if answer.drop:
                    return
                encoded = self._encode(answer)
                if answer.trickle_s > 0:
                    head = len(encoded) - len(answer.body)
                    writer.write(encoded[:head])
                    for i in range(len(answer.body)):
                        await writer.drain()
                        await asyncio.sleep(answer.trickle_s)
                        writer.write(answer.body[i : i + 1])
                else:
                    writer.write(encoded)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, asyncio.CancelledError):
            return  # client went away, garbage request, or the server is shutting down
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    def _encode(answer: _Answer) -> bytes:
        head = [f"HTTP/1.1 {answer.status} {_REASONS.get(answer.status, 'Status')}"]
        headers = {"Content-Type": "application/json", **answer.headers}
        headers["Content-Length"] = str(len(answer.body))
        head += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + answer.body

    async def _answer(self, method: str, target: str) -> _Answer:
        parts = urlsplit(target)
        path = parts.path
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        if path == "/_fake/stats":
            stats = {
                "requests": len(self.requests),
                "status": {str(k): v for k, v in self.status_counts.items()},
            }
            return _Answer(200, orjson.dumps(stats))
        arrived = self.clock()
        # Logged on arrival, so a request whose client gave up (timeout) is still seen.
        entry = LoggedRequest(method, path, params, -1, arrived)
        self.requests.append(entry)
        self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            started = time.perf_counter()
            latency = self.latency_s() if callable(self.latency_s) else self.latency_s
            answer = await self._route(method, path, params, arrived)
            # The answer leaves `latency` after the request arrived, however long building it took.
            remaining = latency - (time.perf_counter() - started)
            if remaining > 0:
                await asyncio.sleep(remaining)
        finally:
            self._in_flight -= 1
        entry.status = 0 if answer.drop else answer.status
        self.status_counts[entry.status] += 1
        return answer

    async def _route(self, method: str, path: str, params: dict[str, str], now: float) -> _Answer:
        fault = self._take_fault(path, params)
        if fault is not None and fault.kind != "slow":
            return self._fault_answer(fault, now)
        if fault is not None:
            await asyncio.sleep(fault.delay_s)
        limited = self._rate_limit(path, params, now)
        if limited is not None:
            return limited
        headers = {"X-MBX-USED-WEIGHT-1M": str(self._weight.used)}
        if method != "GET":
            return _Answer(405, b'{"code":-1000,"msg":"Method not allowed."}', headers)
        try:
            payload = self._dispatch(path, params)
        except _BinanceError as exc:
            body = orjson.dumps({"code": exc.code, "msg": exc.msg})
            return _Answer(exc.status, body, headers)
        if payload is None:
            return _Answer(404, b"", headers)
        return _Answer(200, orjson.dumps(payload), headers)

    def _take_fault(self, path: str, params: dict[str, str]) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and fault.matches(path, params):
                    fault.remaining -= 1
                    return fault
        return None

    def _fault_answer(self, fault: Fault, now: float) -> _Answer:
        if fault.kind == "status":
            return _Answer(fault.status, b"<html><body>Service Unavailable</body></html>")
        if fault.kind == "error":
            return _Answer(fault.status, orjson.dumps({"code": fault.code, "msg": fault.msg}))
        if fault.kind == "malformed":
            return _Answer(200, b'[{"buySellRatio":"1.2","buyVol":"3')
        if fault.kind == "drop":
            return _Answer(0, b"", drop=True)
        if fault.kind == "trickle":
            return _Answer(200, b"[" + b" " * 200 + b"]", trickle_s=fault.delay_s)
        if fault.kind == "huge":
            return _Answer(200, b"[" + b" " * max(fault.size - 2, 0) + b"]")
        status = int(fault.kind)
        retry_after = fault.retry_after if fault.retry_after is not None else 1.0
        answer = self._limit_answer(status, retry_after)
        if fault.omit_retry_after:
            del answer.headers["Retry-After"]
        return answer

    # ------------------------------------------------------------------ rate limits

    def _rate_limit(self, path: str, params: dict[str, str], now: float) -> _Answer | None:
        lim = self.limits
        if now < self._banned_until:
            return self._limit_answer(418, self._banned_until - now)
        charges = [("weight", self._weight, lim.weight, lim.weight_window_s, _weight(path, params))]
        if path.startswith("/futures/data/"):
            charges.append(
                ("futures_data", self._futures_data, lim.futures_data, lim.futures_data_window_s, 1)
            )
        elif path == "/fapi/v1/fundingRate":
            charges.append(("funding", self._funding, lim.funding, lim.funding_window_s, 1))
        limited = [
            self._limited[name] for name, *_ in charges if self._limited.get(name, 0.0) > now
        ]
        if limited:
            # Requests that keep coming after a 429 are what gets an IP banned.
            self._hammering += 1
            if self._hammering > lim.ban_after:
                self._banned_until = now + lim.ban_s
                return self._limit_answer(418, lim.ban_s)
            return self._limit_answer(429, max(limited) - now)
        for name, window, limit, window_s, cost in charges:
            if window.count(now, window_s) + cost > limit:
                self._limited[name] = (window.index + 1) * window_s
                self._hammering = 0
                return self._limit_answer(429, self._limited[name] - now)
        for _name, window, _limit, _window_s, cost in charges:
            window.used += cost
        return None

    def _limit_answer(self, status: int, retry_after: float) -> _Answer:
        if status == 418:
            until = int((self.clock() + retry_after) * 1000)
            msg = f"Way too many requests; IP(127.0.0.1) banned until {until}. Please use the websocket for live updates to avoid bans."
        else:
            msg = "Too many requests; current limit of IP(127.0.0.1) is 2400 requests per minute. Please use the websocket for live updates to avoid polling the API."
        # Binance sends whole seconds; sub-second windows (scaled tests) need fractions.
        value = str(math.ceil(retry_after)) if retry_after >= 1 else f"{retry_after:.3f}"
        headers = {"Retry-After": value, "X-MBX-USED-WEIGHT-1M": str(self._weight.used)}
        return _Answer(status, orjson.dumps({"code": -1003, "msg": msg}), headers)

    # ------------------------------------------------------------------ endpoints

    def _dispatch(self, path: str, params: dict[str, str]) -> Any:
        if path == "/fapi/v1/exchangeInfo":
            return self._exchange_info()
        if path.startswith("/futures/data/") and path.rsplit("/", 1)[1] in FUTURES_DATA:
            return self._futures_data_rows(path.rsplit("/", 1)[1], params)
        if path == "/fapi/v1/fundingRate":
            return self._funding_rows(params)
        if path == "/fapi/v1/klines":
            return self._klines(params)
        return None

    def _symbol(self, params: dict[str, str]) -> str:
        symbol = params.get("symbol", "")
        if not symbol:
            raise _BinanceError(
                -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."
            )
        if symbol not in self.symbols:
            raise _BinanceError(-1121, "Invalid symbol.")
        return symbol

    @staticmethod
    def _int(params: dict[str, str], name: str) -> int | None:
        raw = params.get(name)
        if raw is None:
            return None
        if not raw.lstrip("-").isdigit():
            raise _BinanceError(
                -1100,
                f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.",
            )
        return int(raw)

    def _limit(self, params: dict[str, str], default: int, cap: int) -> int:
        limit = self._int(params, "limit")
        if limit is None:
            return default
        if not 1 <= limit <= cap:
            raise _BinanceError(-1130, "Data sent for parameter 'limit' is not valid.")
        return limit

    def _select(
        self,
        first: int,
        last: int,
        step: int,
        params: dict[str, str],
        limit: int,
        anchor: Literal["start", "end"] | None = None,
    ) -> list[int]:
        """Grid timestamps in [first, last] (step apart) matching startTime/endTime/limit."""
        anchor = anchor or self.anchor
        start, end = self._int(params, "startTime"), self._int(params, "endTime")
        lo = first if start is None else max(first, start + (-(start - first) % step))
        hi = last if end is None else min(last, end - ((end - first) % step))
        if hi < lo:
            return []
        count = (hi - lo) // step + 1
        if count > limit:
            if start is not None and (end is None or anchor == "start"):
                hi = lo + (limit - 1) * step
            else:
                lo = hi - (limit - 1) * step
        return list(range(lo, hi + 1, step))

    def _listed_ms(self) -> int:
        now = self.now_ms()
        return now - now % DAY_MS - self.listed_days * DAY_MS

    def _futures_data_rows(self, endpoint: str, params: dict[str, str]) -> list[dict[str, Any]]:
        symbol = self._symbol(params)
        period = params.get("period", "")
        if period not in PERIOD_MS:
            raise _BinanceError(
                -1102, "Mandatory parameter 'period' was not sent, was empty/null, or malformed."
            )
        step = PERIOD_MS[period]
        limit = self._limit(params, 30, 500)
        now = self.now_ms()
        oldest = now - 30 * DAY_MS
        start = self._int(params, "startTime")
        if start is not None and start < oldest:
            raise _BinanceError(-1130, "parameter 'startTime' is invalid.")
        first = oldest + (-oldest % step)
        last = now - now % step - step  # the latest finished period
        seed = _seed(symbol)
        return [
            self._futures_row(endpoint, symbol, seed, ts)
            for ts in self._select(first, last, step, params, limit)
        ]

    @staticmethod
    def _futures_row(endpoint: str, symbol: str, seed: int, ts: int) -> dict[str, Any]:
        if endpoint == "takerlongshortRatio":
            buy = 200 + 400 * _unit(seed, ts, 1)
            sell = 200 + 400 * _unit(seed, ts, 2)
            # Binance's documented example sends the timestamp as a string here.
            return {
                "buySellRatio": f"{buy / sell:.4f}",
                "buyVol": f"{buy:.4f}",
                "sellVol": f"{sell:.4f}",
                "timestamp": str(ts),
            }
        if endpoint == "openInterestHist":
            oi = 50_000 + 20_000 * _unit(seed, ts, 3)
            return {
                "symbol": symbol,
                "sumOpenInterest": f"{oi:.3f}",
                "sumOpenInterestValue": f"{oi * _price(seed, ts):.2f}",
                "CMCCirculatingSupply": "19876543.210",
                "timestamp": ts,
            }
        salt = FUTURES_DATA.index(endpoint) + 10
        long_share = round(0.35 + 0.3 * _unit(seed, ts, salt), 4)
        short_share = round(1 - long_share, 4)
        return {
            "symbol": symbol,
            "longShortRatio": f"{long_share / short_share:.4f}",
            "longAccount": f"{long_share:.4f}",
            "shortAccount": f"{short_share:.4f}",
            "timestamp": ts,
        }

    def _funding_rows(self, params: dict[str, str]) -> list[dict[str, Any]]:
        symbol = self._symbol(params)
        limit = self._limit(params, 100, 1000)
        listed = self._listed_ms()
        now = self.now_ms()
        seed = _seed(symbol)
        start, end = self._int(params, "startTime"), self._int(params, "endTime")
        # fundingTime is a few ms after the hour: select on the hour grid, then shift.
        grid_params = dict(params)
        if start is not None:
            grid_params["startTime"] = str(start - 9)
        if end is not None:
            grid_params["endTime"] = str(end)
        first = listed + (-listed % FUNDING_INTERVAL_MS)
        last = now - now % FUNDING_INTERVAL_MS
        rows = []
        # Documented for fundingRate: more rows than limit in range -> "startTime + limit".
        for hour in self._select(first, last, FUNDING_INTERVAL_MS, grid_params, limit + 1, "start"):
            funding_time = hour + int(_unit(seed, hour, 20) * 10)
            if (start is not None and funding_time < start) or (
                end is not None and funding_time > end
            ):
                continue
            rows.append(
                {
                    "symbol": symbol,
                    "fundingRate": f"{(_unit(seed, hour, 21) - 0.3) * 0.0005:.8f}",
                    "fundingTime": funding_time,
                    "markPrice": f"{_price(seed, hour):.8f}",
                }
            )
        return rows[:limit] if start is not None or end is None else rows[-limit:]

    def _klines(self, params: dict[str, str]) -> list[list[Any]]:
        symbol = self._symbol(params)
        interval = params.get("interval", "")
        if interval not in KLINE_INTERVAL_MS:
            raise _BinanceError(-1120, "Invalid interval.")
        step = KLINE_INTERVAL_MS[interval]
        limit = self._limit(params, 500, 1500)
        listed = self._listed_ms()
        now = self.now_ms()
        seed = _seed(symbol)
        rows = []
        for ts in self._select(listed, now - now % step, step, params, limit):
            open_ = _price(seed, ts)
            close = _price(seed, ts + step)
            high = max(open_, close) * (1 + 0.002 * _unit(seed, ts, 30))
            low = min(open_, close) * (1 - 0.002 * _unit(seed, ts, 31))
            volume = 1000 * _unit(seed, ts, 32) + 1
            taker = volume * _unit(seed, ts, 33)
            rows.append(
                [
                    ts,
                    f"{open_:.2f}",
                    f"{high:.2f}",
                    f"{low:.2f}",
                    f"{close:.2f}",
                    f"{volume:.3f}",
                    ts + step - 1,
                    f"{volume * open_:.4f}",
                    int(100 + 900 * _unit(seed, ts, 34)),
                    f"{taker:.3f}",
                    f"{taker * open_:.4f}",
                    "0",
                ]
            )
        return rows

    def _exchange_info(self) -> dict[str, Any]:
        lim = self.limits
        return {
            "timezone": "UTC",
            "serverTime": self.now_ms(),
            "rateLimits": [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "MINUTE",
                    "intervalNum": 1,
                    "limit": lim.weight,
                },
                {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
            ],
            "symbols": [
                {
                    "symbol": s,
                    "pair": s,
                    "contractType": "PERPETUAL",
                    "status": "TRADING",
                    "baseAsset": s.removesuffix("USDT"),
                    "quoteAsset": "USDT",
                }
                for s in sorted(self.symbols)
            ],
        }


def _weight(path: str, params: dict[str, str]) -> int:
    if path == "/fapi/v1/klines":
        try:
            limit = int(params.get("limit", "500"))
        except ValueError:
            return 1
        return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10
    if path.startswith("/futures/data/"):
        return 0  # documented "Request Weight 0": these count against their own 1000 / 5 min
    return 1


def main(argv: list[str] | None = None) -> None:
    """Serve until stdin closes (or SIGTERM); prints the base URL on the first line of stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--symbols", default=",".join(DEFAULT_SYMBOLS))
    parser.add_argument(
        "--scale", type=float, default=1.0, help="shrink every limit window by this factor"
    )
    args = parser.parse_args(argv)
    limits = Limits().scaled(args.scale) if args.scale != 1.0 else Limits()
    server = FakeBinanceRest(symbols=args.symbols.split(","), latency_s=args.latency, limits=limits)
    with server:
        print(server.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            sys.stdin.read()


if __name__ == "__main__":
    main()
