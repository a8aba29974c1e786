"""Cached, checksum-verified downloads of venue archive files (data.binance.vision, public.bybit.com).

API::

    async with ArchiveClient(base_url, cache_dir, venue="binance") as client:
        path = await client.fetch("data/futures/um/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2024-01-01.zip",
                                  checksum_path="data/futures/.../BTCUSDT-aggTrades-2024-01-01.zip.CHECKSUM")
        paths = await client.fetch_many([(path, checksum_path), ...])   # bounded concurrency, order kept

    archive_cache_dir(data_dir, venue) -> Path        # {data_dir}/_archive/{venue}
    parse_checksum(text) -> str                        # "sha256  filename" -> sha256 hex

Behaviour:

- The file lands at ``cache_dir / path``. A file already there is returned without any request:
  only verified files are ever moved into place (download to a temp file, hash while writing,
  compare, then ``os.replace``), so an interrupted or concurrent download never leaves a torn file.
- ``checksum_path`` given: the venue's ``.CHECKSUM`` (``sha256  filename``) is fetched first; a
  mismatch raises DataError and caches nothing. A missing checksum file (404) downloads the data
  unverified with a warning.
- 404 on the data file -> ``None`` and a warning (missing days are normal), never an exception.
- Timeouts, connection errors and 5xx are retried with exponential backoff and jitter
  (:class:`~liqcli.exchanges.retry.Backoff`). 429/418 go through the venue's
  :class:`~liqcli.exchanges.retry.RateLimitGate`: every download waits out ``Retry-After`` (else a
  growing backoff), one probes, and a second 418 stops the venue. What outlives the retries raises
  NetworkError / RateLimitError. Other 4xx raise ExchangeError.
- Every attempt has a total ``deadline`` (httpx's ``timeout`` is per read: a server trickling a
  byte at a time would otherwise never end).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import re
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType

import httpx

from liqcli.errors import DataError, ExchangeError, LiqError, NetworkError, RateLimitError
from liqcli.exchanges.retry import Backoff, RateLimitGate, retry_after

log = logging.getLogger("liq")

_SHA256_RE = re.compile(r"\b([0-9a-fA-F]{64})\b")
_CHUNK = 1 << 20


def archive_cache_dir(data_dir: Path, venue: str) -> Path:
    """Directories starting with ``_`` are never datasets, so the store ignores this cache."""
    return Path(data_dir) / "_archive" / venue


def parse_checksum(text: str) -> str:
    """The sha256 hex digest in a ``.CHECKSUM`` file (``<sha256>  <filename>``)."""
    match = _SHA256_RE.search(text)
    if not match:
        raise DataError(f"checksum file has no sha256 digest: {text[:80]!r}")
    return match.group(1).lower()


class _NotFound(Exception):
    pass


class _Refused(Exception):
    """HTTP 429/418: the venue's gate decides the wait."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.retry_after = retry_after(response.headers)


class ArchiveClient:
    """Downloads archive files into a local cache; see the module docstring."""

    def __init__(
        self,
        base_url: str,
        cache_dir: Path,
        *,
        venue: str = "archive",
        timeout: float = 30.0,
        deadline: float = 900.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_retry_after: float = 300.0,
        concurrency: int = 4,
        client: httpx.AsyncClient | None = None,
        gate: RateLimitGate | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.cache_dir = Path(cache_dir)
        self.venue = venue
        self.deadline = deadline
        self.max_retries = max_retries
        self._backoff = Backoff(backoff, max_backoff, rng=rng or random.Random())
        self._sleep = sleep
        self.gate = gate or RateLimitGate(
            venue,
            max_wait_s=max_retry_after,
            backoff=Backoff(max(backoff, 1.0), max(max_backoff, 1.0), rng=rng or random.Random()),
            clock=clock,
            sleep=sleep,
        )
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout), follow_redirects=True
        )
        self._slots = asyncio.Semaphore(concurrency)
        self.downloads = 0  # files fetched over the network (cache hits excluded)
        self.retries = 0

    async def __aenter__(self) -> ArchiveClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    def cached_path(self, path: str) -> Path:
        return self.cache_dir / path.lstrip("/")

    async def fetch(self, path: str, checksum_path: str | None = None) -> Path | None:
        """The cached local copy of ``path``, downloading (and verifying) it if needed."""
        target = self.cached_path(path)
        if target.is_file():
            return target
        async with self._slots:
            if target.is_file():  # a concurrent fetch of the same path finished meanwhile
                return target
            expected, unverified = None, False
            if checksum_path is not None:
                try:
                    text = (await self._get_bytes(checksum_path)).decode(errors="replace")
                    expected = parse_checksum(text)
                except _NotFound:
                    unverified = True
            try:
                await self._download(path, target, expected)
            except _NotFound:
                log.warning("%s: %s not in the archive (404), skipped", self.venue, path)
                return None
            if unverified:
                log.warning("%s: no checksum published for %s; not verified", self.venue, path)
            self.downloads += 1
            return target

    async def fetch_many(self, items: Sequence[tuple[str, str | None]]) -> list[Path | None]:
        """Fetch ``(path, checksum_path)`` pairs concurrently (bounded); results in input order."""
        tasks = [asyncio.ensure_future(self.fetch(p, c)) for p, c in items]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            # One failure (e.g. a bad checksum) stops the rest before the client closes.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    def _url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    async def _get_bytes(self, path: str) -> bytes:
        async def once() -> bytes:
            response = await self._client.get(self._url(path))
            self._check(response, path)
            return response.content

        return await self._retrying(once, path)

    async def _download(self, path: str, target: Path, expected_sha256: str | None) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)

        async def once() -> None:
            fd, tmp_name = tempfile.mkstemp(
                prefix=f".{target.name}.", suffix=".part", dir=target.parent
            )
            tmp = Path(tmp_name)
            try:
                digest = hashlib.sha256()
                with os.fdopen(fd, "wb") as out:
                    async with self._client.stream("GET", self._url(path)) as response:
                        if response.status_code >= 400:
                            await response.aread()
                            self._check(response, path)
                        async for chunk in response.aiter_bytes(_CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
                actual = digest.hexdigest()
                if expected_sha256 is not None and actual != expected_sha256:
                    raise DataError(
                        f"{self.venue}: checksum mismatch for {path}: expected sha256 "
                        f"{expected_sha256}, got {actual}; file discarded"
                    )
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)

        await self._retrying(once, path)

    def _check(self, response: httpx.Response, path: str) -> None:
        status = response.status_code
        if status == 404:
            raise _NotFound(path)
        if status in (429, 418):
            raise _Refused(response)
        if status >= 500:
            raise httpx.HTTPStatusError(
                f"HTTP {status}", request=response.request, response=response
            )
        if status >= 400:
            raise ExchangeError(self.venue, f"HTTP {status} for {path}", status=status)

    async def _retrying(self, attempt: Callable[[], Awaitable[object]], path: str):
        tries = 0
        while True:
            async with self.gate.admit() as ticket:
                try:
                    async with asyncio.timeout(self.deadline):
                        result = await attempt()
                except _Refused as refused:
                    # May raise RateLimitError: a second ban, or a pause longer than we wait.
                    self.gate.refused(ticket, refused.status, refused.retry_after)
                    what = "banned" if refused.status == 418 else "rate limited"
                    final: LiqError = RateLimitError(
                        self.venue,
                        f"{what} (HTTP {refused.status}) fetching {path}",
                        status=refused.status,
                    )
                    delay = 0.0  # the gate holds every download until the pause is over
                except TimeoutError:
                    final = NetworkError(
                        f"{self.venue}: fetching {self._url(path)} took longer than its "
                        f"{self.deadline:g}s deadline ({tries + 1} attempts)"
                    )
                    delay = self._backoff.delay(tries)
                except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                    response = getattr(exc, "response", None)
                    status = response.status_code if response is not None else None
                    what = f"HTTP {status}" if status else type(exc).__name__
                    final = NetworkError(
                        f"{self.venue}: {what} fetching {self._url(path)} after {tries + 1} attempts"
                    )
                    delay = self._backoff.delay(tries)
                except (_NotFound, LiqError):
                    self.gate.succeeded(ticket)  # an answer, not a refusal
                    raise
                else:
                    self.gate.succeeded(ticket)
                    return result
            if tries >= self.max_retries:
                raise final
            tries += 1
            self.retries += 1
            await self._sleep(delay)
