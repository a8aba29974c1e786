"""The one async HTTP client every venue's REST calls go through.

:class:`VenueHttp` wraps ``httpx.AsyncClient`` with what exchanges need:

- client-side request budgets (:class:`RateBudget`) so normal use never draws a 429;
- 429 and 418 go through the venue's :class:`~liqcli.exchanges.retry.RateLimitGate`: the pause is
  *venue-wide* (``Retry-After``, else a backoff that grows with each refusal), then one request
  probes at a time until one succeeds; a second 418 (ban) stops the venue for the run;
- reads (GET) are retried with exponential backoff and jitter on timeouts, dropped connections and
  5xx; writes only when the request provably never left (connect errors) or was refused by a
  rate limit, since a 5xx or a timeout leaves a write's outcome unknown;
- every attempt has a total ``deadline`` (httpx's ``timeout`` is per read, so a server trickling
  a byte at a time would never time out; an overrun is retried once, not ``max_retries`` times),
  and bodies over ``max_body_bytes`` are refused;
- venue error bodies become :class:`~liqcli.errors.ExchangeError` (or a subclass) through the
  venue's ``error_parser``, also on HTTP 200 (``{"code": -1121}``, with or without ``msg``);
  malformed JSON becomes :class:`~liqcli.errors.DataError` naming the endpoint;
- an injectable clock, sleep and random source, so tests never wait for real.

Budgets count a request from the moment it is reserved until it completes, and only then start
its window: the server sees each request at some instant between send and response, so an
in-flight request can never be the one that slips into a window the client thought was free.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import orjson

from liqcli.errors import DataError, ExchangeError, LiqError, NetworkError, RateLimitError
from liqcli.exchanges.retry import Backoff, RateLimitGate, Ticket, retry_after

log = logging.getLogger("liq.http")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
# (status, decoded body or None, path, params) -> the error to raise, or None when not an error body.
ErrorParser = Callable[[int, Any, str, Mapping[str, Any]], LiqError | None]

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_BODY_BYTES = 50 * 2**20  # no REST answer a venue sends is near this; a bigger one is an error


class RateBudget:
    """A sliding-window budget: at most ``limit`` units in any ``window_s`` seconds.

    ``unit="requests"`` charges 1 per request; ``unit="weight"`` charges the request's cost
    (Binance's REQUEST_WEIGHT). ``paths`` restricts the budget to path prefixes (None = every
    request of the venue).
    """

    def __init__(
        self,
        name: str,
        limit: int,
        window_s: float,
        *,
        paths: Sequence[str] | None = None,
        unit: Literal["requests", "weight"] = "requests",
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if limit <= 0 or window_s <= 0:
            raise ValueError("a budget needs a positive limit and window")
        self.name = name
        self.limit = limit
        self.window_s = window_s
        self.paths = tuple(paths) if paths is not None else None
        self.unit = unit
        self._clock = clock
        self._sleep = sleep
        self._done: deque[tuple[float, int]] = deque()  # (completion time, cost), time-ordered
        self._done_total = 0
        self._pending = 0  # reserved, not yet completed: counts until it completes
        self._lock = asyncio.Lock()  # FIFO: waiters are served in arrival order
        self._settled = asyncio.Event()

    def applies_to(self, path: str) -> bool:
        return self.paths is None or path.startswith(self.paths)

    def cost_of(self, cost: int) -> int:
        return 1 if self.unit == "requests" else cost

    @property
    def used(self) -> int:
        """Units counted in the current window (pending included)."""
        self._expire(self._clock())
        return self._pending + self._done_total

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        while self._done and self._done[0][0] <= horizon:
            self._done_total -= self._done.popleft()[1]

    async def _reserve(self, cost: int) -> None:
        if cost > self.limit:
            raise ValueError(f"{self.name}: a cost of {cost} exceeds the budget of {self.limit}")
        async with self._lock:
            while True:
                now = self._clock()
                self._expire(now)
                if self._pending + self._done_total + cost <= self.limit:
                    self._pending += cost
                    return
                if self._done:
                    wait = max(self._done[0][0] + self.window_s - now, 0.0)
                    if wait >= 5:
                        log.warning(
                            "%s budget (%d per %gs) spent; waiting %.0fs",
                            self.name,
                            self.limit,
                            self.window_s,
                            wait,
                        )
                    await self._sleep(wait)
                else:
                    # Everything counted is still in flight: only a completion can start a window.
                    self._settled.clear()
                    await self._settled.wait()

    def _complete(self, cost: int) -> None:
        self._pending -= cost
        self._done.append((self._clock(), cost))
        self._done_total += cost
        self._settled.set()

    async def acquire(self, cost: int = 1) -> None:
        """Wait until ``cost`` units fit, then count them as used now."""
        await self._reserve(cost)
        self._complete(cost)

    @asynccontextmanager
    async def hold(self, cost: int = 1):
        """Reserve ``cost`` units for the duration of one request; its window starts at the end."""
        await self._reserve(cost)
        try:
            yield
        finally:
            self._complete(cost)

    def observe_used(self, used: int) -> None:
        """Align with a server-reported usage (e.g. ``X-MBX-USED-WEIGHT-1M``): other processes on
        the same IP spend the same budget."""
        now = self._clock()
        self._expire(now)
        extra = used - (self._pending + self._done_total)
        if extra > 0:
            self._done.append((now, extra))
            self._done_total += extra


@dataclass
class HttpStats:
    requests: int = 0  # attempts sent
    retries: int = 0
    timeouts: int = 0
    transport_errors: int = 0  # refused / dropped connections
    status: Counter = field(default_factory=Counter)
    rate_limit_wait_s: float = 0.0  # seconds requests spent honouring Retry-After (summed)

    @property
    def rate_limited(self) -> int:
        return self.status[429]

    @property
    def banned(self) -> int:
        return self.status[418]

    @property
    def server_errors(self) -> int:
        return sum(n for code, n in self.status.items() if code >= 500)


class _Retry(Exception):
    """One attempt failed in a way worth retrying; ``final`` is raised once retries run out."""

    def __init__(self, final: LiqError, delay: float | None = None, *, overran: bool = False):
        self.final = final
        self.delay = delay  # None: use backoff
        self.overran = overran  # the attempt hit its total deadline


class VenueHttp:
    """Async JSON-over-HTTP client for one venue; see the module docstring."""

    def __init__(
        self,
        venue: str,
        base_url: str,
        *,
        budgets: Sequence[RateBudget] | None = None,
        error_parser: ErrorParser | None = None,
        on_response: Callable[[httpx.Response], None] | None = None,
        timeout: float = 10.0,
        deadline: float = 30.0,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        max_retry_after_s: float = 300.0,
        max_concurrency: int = 10,
        headers: Mapping[str, str] | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        gate: RateLimitGate | None = None,
    ) -> None:
        self.venue = venue
        self.base_url = base_url.rstrip("/")
        self.budgets = list(budgets or [])
        self.error_parser = error_parser
        self.on_response = on_response
        self.timeout = timeout
        self.deadline = deadline
        self.max_body_bytes = max_body_bytes
        self.max_retries = max_retries
        self.max_retry_after_s = max_retry_after_s
        self.stats = HttpStats()
        self._clock = clock
        self._sleep = sleep
        self._retry_backoff = Backoff(backoff_s, max_backoff_s, rng=rng or random.Random())
        # Venue-wide pause after a 429/418; refusals without Retry-After back off from 1 s.
        self.gate = gate or RateLimitGate(
            venue,
            max_wait_s=max_retry_after_s,
            backoff=Backoff(1.0, max(max_backoff_s, 1.0), rng=rng or random.Random()),
            clock=clock,
            sleep=sleep,
        )
        self._slots = asyncio.Semaphore(max_concurrency)
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(
                max_connections=max_concurrency, max_keepalive_connections=max_concurrency
            ),
            headers={"User-Agent": "liq", **(headers or {})},
            transport=transport,
        )

    async def __aenter__(self) -> VenueHttp:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get_json(
        self, path: str, params: Mapping[str, Any] | None = None, *, cost: int = 1
    ) -> Any:
        return await self.request_json("GET", path, params=params, cost=cost)

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        cost: int = 1,
    ) -> Any:
        method = method.upper()
        params = dict(params or {})
        failures = overruns = 0
        while True:
            try:
                return await self._attempt(method, path, params, json, headers, cost)
            except _Retry as retry:
                overruns += retry.overran
                # A server that trickles once likely trickles again: one more try, not five,
                # so a cron job ends in about two deadlines instead of piling up.
                if failures >= self.max_retries or overruns >= 2:
                    raise retry.final from None
                failures += 1
                self.stats.retries += 1
                delay = retry.delay if retry.delay is not None else self._backoff(failures)
                log.info(
                    "%s %s %s: %s; retrying in %.2fs", self.venue, method, path, retry.final, delay
                )
                await self._sleep(delay)

    def _backoff(self, failures: int) -> float:
        return self._retry_backoff.delay(failures - 1)

    async def _attempt(
        self,
        method: str,
        path: str,
        params: dict[str, Any],
        json: Any,
        headers: Mapping[str, str] | None,
        cost: int,
    ) -> Any:
        read = method in READ_METHODS
        async with AsyncExitStack() as budgets:
            for budget in self.budgets:
                if budget.applies_to(path):
                    await budgets.enter_async_context(budget.hold(budget.cost_of(cost)))
            async with self._slots, self.gate.admit() as ticket:
                self.stats.rate_limit_wait_s = self.gate.waited_s
                self.stats.requests += 1
                try:
                    async with asyncio.timeout(self.deadline):
                        response, body = await self._send(method, path, params, json, headers)
                except (httpx.TimeoutException, TimeoutError) as exc:
                    self.stats.timeouts += 1
                    limit = (
                        f"timed out after {self.timeout:g}s"
                        if isinstance(exc, httpx.TimeoutException)
                        else f"took longer than its {self.deadline:g}s deadline"
                    )
                    error = NetworkError(f"{self.venue}: {method} {path} {limit}")
                    if read or isinstance(exc, httpx.ConnectTimeout):
                        raise _Retry(error, overran=isinstance(exc, TimeoutError)) from None
                    raise error from None
                except httpx.TransportError as exc:
                    self.stats.transport_errors += 1
                    error = NetworkError(
                        f"{self.venue}: {method} {path} failed: {_describe(exc)} ({self.base_url})"
                    )
                    if read or isinstance(exc, httpx.ConnectError):
                        raise _Retry(error) from None
                    raise error from None
                self._refused_or_ok(response, ticket, path)
        return self._handle(response, body, method, path, params, read)

    async def _send(
        self,
        method: str,
        path: str,
        params: dict[str, Any],
        json: Any,
        headers: Mapping[str, str] | None,
    ) -> tuple[httpx.Response, bytes]:
        """One exchange, the body read in chunks so an oversized one is refused early."""
        limit = self.max_body_bytes
        async with self._client.stream(
            method, path, params=params, json=json, headers=headers
        ) as response:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > limit:
                raise self._too_large(method, path, int(declared))
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise self._too_large(method, path, size)
                chunks.append(chunk)
        return response, b"".join(chunks)

    def _too_large(self, method: str, path: str, size: int) -> DataError:
        return DataError(
            f"{self.venue}: {method} {path} answered more than {self.max_body_bytes / 2**20:g} MB "
            f"({size:,} bytes so far); refused (max_body_bytes)"
        )

    def _refused_or_ok(self, response: httpx.Response, ticket: Ticket, path: str) -> None:
        """Tell the gate how the attempt went while still admitted: a probe's outcome must be
        known before the next request may go."""
        status = response.status_code
        if status not in (429, 418):
            self.gate.succeeded(ticket)
            return
        self.stats.status[status] += 1
        if self.on_response is not None:
            self.on_response(response)
        what = "banned this IP" if status == 418 else "rate limit hit"
        echo = ticket.epoch != self.gate.epoch  # in flight when an earlier refusal came
        wait = self.gate.refused(ticket, status, retry_after(response.headers))  # may raise
        log.log(
            logging.INFO if echo else logging.WARNING,
            "%s: %s (HTTP %d) on %s; pausing all requests %.1fs, then one at a time",
            self.venue,
            what,
            status,
            path,
            wait,
        )
        # Refused requests were not executed, so even writes are safe to resend.
        raise _Retry(
            RateLimitError(self.venue, f"{what} (HTTP {status}) on {path}", status=status),
            delay=0.0,
        )

    def _handle(
        self,
        response: httpx.Response,
        body: bytes,
        method: str,
        path: str,
        params: dict[str, Any],
        read: bool,
    ) -> Any:
        status = response.status_code
        self.stats.status[status] += 1
        if self.on_response is not None:
            self.on_response(response)
        payload, decode_error = _decode(body)
        error_body = _is_error_body(payload)
        if status >= 400 or error_body:
            error = self.error_parser(status, payload, path, params) if self.error_parser else None
            if status >= 500:
                final = error or NetworkError(
                    f"{self.venue}: HTTP {status} from {method} {path}: {_snippet(body)}"
                )
                if read:
                    raise _Retry(final)
                raise final
            if error is not None:
                raise error
            if status >= 400:
                hint = " (blocked by the venue's firewall)" if status == 403 else ""
                raise ExchangeError(
                    self.venue,
                    f"HTTP {status}{hint} from {method} {path}: {_snippet(body)}",
                    status=status,
                )
            raise ExchangeError(
                self.venue,
                f"{method} {path} refused the request: {payload.get('msg') or 'no message'}",
                code=payload["code"],
                status=status,
            )
        if decode_error is not None:
            raise DataError(
                f"{self.venue}: malformed JSON from {method} {path} (HTTP {status}): {decode_error}"
            )
        return payload


def _decode(body: bytes) -> tuple[Any, str | None]:
    if not body:
        return None, "empty body"
    try:
        return orjson.loads(body), None
    except orjson.JSONDecodeError as exc:
        return None, f"{exc}; body starts {body[:60]!r}"


def _is_error_body(payload: Any) -> bool:
    # Some venues answer errors with HTTP 200 and a {"code": <negative>, "msg": ...} body; the
    # message is sometimes missing ({"code": -1121}), the code is what tells.
    return isinstance(payload, dict) and type(payload.get("code")) is int and payload["code"] < 0


def _snippet(body: bytes) -> str:
    text = body[:400].decode(errors="replace").strip().replace("\n", " ")
    return text[:200] or "(empty body)"


def _describe(exc: httpx.TransportError) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
