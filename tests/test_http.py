"""The shared HTTP plumbing (liqcli.exchanges.http) against the fake Binance REST server."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter

import httpx
import pytest

from liqcli.errors import DataError, NetworkError, RateLimitError, UnknownSymbolError
from liqcli.exchanges.binance.rest import BinanceLimits, binance_http, fetch_page
from liqcli.exchanges.http import RateBudget, VenueHttp
from liqcli.exchanges.retry import Backoff, RateLimitGate
from tests.fakes.binance_rest import FakeBinanceRest, FakeClock, Limits

OI = "/futures/data/openInterestHist"
OI_PARAMS = {"symbol": "BTCUSDT", "period": "5m", "limit": 1}


# ---------------------------------------------------------------------- RateBudget


async def test_budget_waits_for_the_oldest_request_to_leave_the_window():
    clock = FakeClock(start=1000.0)
    budget = RateBudget("b", 3, 10.0, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        await budget.acquire()
    assert budget.used == 3 and clock.sleeps == []
    await budget.acquire()  # must wait until t=1010, when the first three leave the window
    assert clock.now == pytest.approx(1010.0)
    assert budget.used == 1


async def test_budget_counts_in_flight_requests_until_they_complete():
    clock = FakeClock(start=0.0)
    budget = RateBudget("b", 2, 1.0, clock=clock, sleep=clock.sleep)
    release = asyncio.Event()

    async def slow_request():
        async with budget.hold():
            await release.wait()

    holders = [asyncio.create_task(slow_request()) for _ in range(2)]
    await asyncio.sleep(0)
    third = asyncio.create_task(budget.acquire())
    await asyncio.sleep(0.01)
    assert not third.done()  # both slots are in flight: no window can have started yet
    clock.now = 5.0
    release.set()
    await asyncio.gather(*holders)
    # The in-flight requests' window starts at their completion (t=5), so the third waits to t=6.
    await third
    assert clock.now == pytest.approx(6.0)


async def test_budget_adopts_server_reported_usage():
    clock = FakeClock(start=0.0)
    budget = RateBudget("weight", 100, 60.0, unit="weight", clock=clock, sleep=clock.sleep)
    budget.observe_used(95)  # another process on this IP spent 95
    await budget.acquire(5)
    assert clock.sleeps == []
    await budget.acquire(1)
    assert clock.now == pytest.approx(60.0)


def test_budget_rejects_a_cost_it_can_never_fit():
    budget = RateBudget("b", 10, 1.0)
    with pytest.raises(ValueError):
        asyncio.run(budget.acquire(11))


# ---------------------------------------------------------------------- limits end to end


async def test_burst_of_3000_requests_draws_no_429():
    # Binance's limits with every window shrunk to 0.5 s: the burst needs ~10 windows, so the
    # client must really throttle (the server would refuse it otherwise, see the next test).
    server_limits = Limits(
        weight=300,
        weight_window_s=0.5,
        futures_data=150,
        futures_data_window_s=0.5,
        funding=100,
        funding_window_s=0.5,
    )
    client_limits = BinanceLimits(
        weight=300,
        weight_window_s=0.5,
        futures_data=150,
        futures_data_window_s=0.5,
        funding=100,
        funding_window_s=0.5,
    )
    requests = (
        [(OI, OI_PARAMS)] * 1500
        + [("/fapi/v1/fundingRate", {"symbol": "ETHUSDT", "limit": 1})] * 750
        + [("/fapi/v1/klines", {"symbol": "SOLUSDT", "interval": "5m", "limit": 1})] * 750
    )
    random.Random(7).shuffle(requests)
    with FakeBinanceRest(limits=server_limits) as server:
        async with binance_http(server.url, limits=client_limits) as http:
            results = await asyncio.gather(*(http.get_json(p, q) for p, q in requests))
        assert len(results) == 3000 and all(isinstance(r, list) and len(r) == 1 for r in results)
        assert server.status_counts == Counter({200: 3000})
        assert http.stats.rate_limited == 0 and http.stats.banned == 0
        # The limits were binding: the futures/data requests span at least 9 full windows.
        oi_times = sorted(r.t for r in server.requests_to(OI))
        assert oi_times[-1] - oi_times[0] >= 9 * 0.5


async def test_client_without_budgets_honours_retry_after_and_is_never_banned():
    clock = FakeClock()
    limits = Limits(futures_data=20, futures_data_window_s=10.0, ban_after=20)
    with FakeBinanceRest(clock=clock, limits=limits) as server:
        async with VenueHttp("binance", server.url, clock=clock, sleep=clock.sleep) as http:
            results = await asyncio.gather(*(http.get_json(OI, OI_PARAMS) for _ in range(60)))
    assert len(results) == 60
    assert server.status_counts[200] == 60
    assert server.status_counts[429] >= 1  # the server did enforce its limit...
    assert server.status_counts[418] == 0  # ...and the client backed off instead of hammering
    # Each 10 s window admitted at most 20 requests.
    per_window = Counter(int(r.t // 10) for r in server.requests if r.status == 200)
    assert max(per_window.values()) <= 20 and len(per_window) >= 3


async def test_429_then_418_wait_retry_after_and_the_ban_pauses_every_request():
    clock = FakeClock()
    with FakeBinanceRest(clock=clock) as server:
        server.inject("429", path="/fapi/v1/klines", retry_after=3)
        server.inject("418", path="/fapi/v1/klines", retry_after=60)
        async with binance_http(server.url, clock=clock, sleep=clock.sleep) as http:
            klines = asyncio.create_task(fetch_page(http, "klines", "BTCUSDT", limit=5))
            while http.stats.banned == 0:
                await asyncio.sleep(0.002)
            # Requested after the ban began, to a different endpoint: it must wait too.
            funding = await fetch_page(http, "funding", "BTCUSDT", limit=5)
            rows = await klines
    assert rows.height == 5 and funding.height == 5
    kline_log = server.requests_to("/fapi/v1/klines")
    assert [r.status for r in kline_log] == [429, 418, 200]
    assert kline_log[1].t - kline_log[0].t >= 3
    ban_start = kline_log[1].t
    assert kline_log[2].t - ban_start >= 60
    (funding_request,) = server.requests_to("/fapi/v1/fundingRate")
    assert funding_request.t - ban_start >= 60
    assert http.stats.rate_limited == 1 and http.stats.banned == 1


async def test_a_ban_longer_than_we_wait_is_a_clear_rate_limit_error():
    clock = FakeClock()
    with FakeBinanceRest(clock=clock) as server:
        server.inject("418", retry_after=7200)
        async with binance_http(server.url, clock=clock, sleep=clock.sleep) as http:
            with pytest.raises(RateLimitError, match=r"HTTP 418.*7200s"):
                await fetch_page(http, "klines", "BTCUSDT", limit=5)
    assert clock.sleeps == []  # did not sit out two hours


async def test_during_a_long_ban_further_requests_fail_without_being_sent():
    clock = FakeClock()
    with FakeBinanceRest(clock=clock) as server:
        server.inject("418", retry_after=7200)
        async with binance_http(server.url, clock=clock, sleep=clock.sleep) as http:
            with pytest.raises(RateLimitError):
                await fetch_page(http, "klines", "BTCUSDT", limit=5)
            with pytest.raises(RateLimitError, match="paused for another 7200s"):
                await fetch_page(http, "funding", "ETHUSDT", limit=5)
        assert len(server.requests) == 1  # hammering a ban only makes it longer


# ---------------------------------------------------------------------- retries and errors


async def test_5xx_dropped_connections_and_timeouts_are_retried_for_reads():
    sleeps: list[float] = []

    async def no_wait(seconds: float) -> None:
        sleeps.append(seconds)

    with FakeBinanceRest() as server:
        server.inject("status", path=OI, status=503)
        server.inject("status", path=OI, status=502)
        server.inject("drop", path=OI)
        server.inject("slow", path=OI, delay_s=1.0)
        async with binance_http(
            server.url, timeout=0.2, sleep=no_wait, rng=random.Random(1)
        ) as http:
            rows = await fetch_page(http, "open_interest", "BTCUSDT", limit=3)
    assert rows.height == 3
    assert http.stats.retries == 4 and http.stats.timeouts == 1 and http.stats.transport_errors == 1
    assert http.stats.status[503] == 1 and http.stats.status[502] == 1
    # Exponential backoff with jitter: each step is in [step/2, step] with step = 0.5 * 2**n.
    assert len(sleeps) == 4
    for n, delay in enumerate(sleeps):
        assert 0.25 * 2**n <= delay <= 0.5 * 2**n


async def test_retries_run_out_with_a_network_error_naming_the_endpoint():
    async def no_wait(seconds: float) -> None:
        return None

    with FakeBinanceRest() as server:
        server.inject("status", status=503, count=10)
        async with binance_http(server.url, max_retries=2, sleep=no_wait) as http:
            with pytest.raises(NetworkError, match=r"HTTP 503 from GET /fapi/v1/klines"):
                await fetch_page(http, "klines", "BTCUSDT", limit=5)
        assert len(server.requests) == 3


async def test_writes_are_not_retried_after_a_5xx_or_a_timeout():
    async def no_wait(seconds: float) -> None:
        return None

    with FakeBinanceRest() as server:
        server.inject("status", status=503)
        server.inject("slow", delay_s=1.0)
        async with VenueHttp("binance", server.url, timeout=0.2, sleep=no_wait) as http:
            with pytest.raises(NetworkError, match="HTTP 503"):
                await http.request_json("POST", "/fapi/v1/order", params={"symbol": "BTCUSDT"})
            with pytest.raises(NetworkError, match="timed out"):
                await http.request_json("POST", "/fapi/v1/order", params={"symbol": "BTCUSDT"})
        assert len(server.requests) == 2  # one attempt each: the outcome of a write is unknown


async def test_unknown_symbol_is_a_clear_error_and_not_retried():
    with FakeBinanceRest() as server:
        async with binance_http(server.url) as http:
            with pytest.raises(UnknownSymbolError) as info:
                await fetch_page(http, "funding", "DOGEBTCX")
        assert len(server.requests) == 1
    message = str(info.value)
    assert message.startswith("binance: unknown symbol DOGEBTCX")
    assert "Invalid symbol." in message and "-1121" in message


async def test_venue_error_codes_become_exchange_errors():
    with FakeBinanceRest() as server:
        server.inject("error", code=-1130, msg="Data sent for parameter 'limit' is not valid.")
        async with binance_http(server.url) as http:
            with pytest.raises(
                Exception, match=r"/fapi/v1/klines refused the request: Data sent"
            ) as info:
                await fetch_page(http, "klines", "BTCUSDT")
    assert info.value.code == -1130 and info.value.status == 400


async def test_malformed_json_is_a_data_error_naming_the_endpoint():
    with FakeBinanceRest() as server:
        server.inject("malformed", path="/futures/data/takerlongshortRatio")
        async with binance_http(server.url) as http:
            with pytest.raises(
                DataError, match=r"malformed JSON from GET /futures/data/takerlongshortRatio"
            ):
                await fetch_page(http, "taker_ratio", "BTCUSDT")
        assert len(server.requests) == 1


async def test_unreachable_venue_is_a_network_error_after_retries():
    async def no_wait(seconds: float) -> None:
        return None

    with FakeBinanceRest() as server:
        url = server.url  # the port is closed once the server stops
    async with VenueHttp("binance", url, max_retries=2, sleep=no_wait) as http:
        with pytest.raises(NetworkError, match=r"binance: GET /fapi/v1/ping failed: ConnectError"):
            await http.get_json("/fapi/v1/ping")
    assert http.stats.requests == 3 and http.stats.transport_errors == 3


async def test_mock_transport_seam_error_body_on_http_200():
    # Some venues answer errors with HTTP 200; the body decides.
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"code": -1121, "msg": "Invalid symbol."})

    from liqcli.exchanges.binance.rest import parse_error

    async with VenueHttp(
        "binance",
        "http://venue.invalid",
        error_parser=parse_error,
        transport=httpx.MockTransport(handler),
    ) as http:
        with pytest.raises(UnknownSymbolError, match="unknown symbol XYZUSDT"):
            await http.get_json("/fapi/v1/klines", {"symbol": "XYZUSDT"})


# ---------------------------------------------------------------------- hardening (issues #12, #13)


def _gate(initial: float = 0.05) -> RateLimitGate:
    # Refusals without Retry-After back off from 50 ms here (1 s in production).
    return RateLimitGate("binance", backoff=Backoff(initial, 1.0, rng=random.Random(3)))


def _burst_latency(fast: float, first: int = 10, slow: float = 0.3):
    """The first ``first`` answers are slow, so a burst is surely all in flight at once even on
    a loaded machine; later ones take ``fast``."""
    calls = itertools.count()
    return lambda: slow if next(calls) < first else fast


def _lone(times: list[float], latency: float) -> bool:
    """No two requests arrived closer together than the server's latency: one in flight."""
    return all(b - a >= latency * 0.9 for a, b in itertools.pairwise(times))


async def test_a_trickling_server_hits_the_total_deadline():
    # One byte every 50 ms: each read is quick, so only a total deadline ends the request.
    with FakeBinanceRest() as server:
        server.inject("trickle", path=OI, delay_s=0.05, count=5)
        started = asyncio.get_running_loop().time()
        async with binance_http(server.url, timeout=1.0, deadline=0.3, backoff_s=0.01) as http:
            with pytest.raises(NetworkError, match=r"longer than its 0.3s deadline"):
                await asyncio.wait_for(fetch_page(http, "open_interest", "BTCUSDT"), 5)
        elapsed = asyncio.get_running_loop().time() - started
    assert elapsed < 3.0  # without the deadline: 10 s per attempt
    # Retried once (not max_retries=5 times): a trickling server tends to keep trickling.
    assert http.stats.requests == 2 and http.stats.timeouts == 2


async def test_an_oversized_body_is_refused_with_a_clear_error():
    with FakeBinanceRest() as server:
        server.inject("huge", path=OI, size=5000)
        async with binance_http(server.url, max_body_bytes=4096) as http:
            with pytest.raises(DataError, match=r"answered more than .* MB.*refused"):
                await fetch_page(http, "open_interest", "BTCUSDT")
        assert len(server.requests) == 1  # not retried: the next answer would be as big


async def test_an_endless_body_without_content_length_stops_at_the_cap():
    async def endless():
        while True:
            yield b" " * 1024
            await asyncio.sleep(0)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless())

    async with VenueHttp(
        "binance",
        "http://venue.invalid",
        max_body_bytes=64 * 1024,
        transport=httpx.MockTransport(handler),
    ) as http:
        with pytest.raises(DataError, match="answered more than"):
            await asyncio.wait_for(http.get_json("/fapi/v1/klines"), 5)


async def test_error_body_without_msg_on_http_200_reports_the_code():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"code": -1121})

    async with binance_http("http://venue.invalid", transport=httpx.MockTransport(handler)) as http:
        with pytest.raises(UnknownSymbolError, match=r"unknown symbol XYZUSDT.*-1121"):
            await http.get_json("/fapi/v1/klines", {"symbol": "XYZUSDT"})

    def other(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"code": -2015})

    async with VenueHttp("okx", "http://venue.invalid", transport=httpx.MockTransport(other)) as h:
        with pytest.raises(Exception, match=r"refused the request: no message \(code -2015\)"):
            await h.get_json("/x")


async def test_429_without_retry_after_backs_off_exponentially_one_probe_at_a_time():
    latency = 0.01
    with FakeBinanceRest(latency_s=_burst_latency(latency)) as server:
        # 10 concurrent requests are refused at once (in flight together), then 3 probes.
        server.inject("429", path=OI, count=13, omit_retry_after=True)
        async with binance_http(server.url, gate=_gate()) as http:
            results = await asyncio.gather(*(http.get_json(OI, OI_PARAMS) for _ in range(10)))
    assert len(results) == 10
    log = server.requests_to(OI)
    assert [r.status for r in log[:10]] == [429] * 10
    probes = log[10:14]
    assert [r.status for r in probes] == [429, 429, 429, 200]
    assert len(log) == 23  # 13 refusals, 10 answers: nothing sent beyond one probe at a time
    # Gaps between the burst and each probe grow: >= 25, 50, 100, 200 ms (jitter halves at most).
    times = [log[9].t] + [r.t for r in probes]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for n, gap in enumerate(gaps):
        assert gap >= 0.025 * 2**n * 0.9, gaps
    assert _lone(times, latency)
    assert http.gate.refusals == 4  # the burst's ten refusals count as one


async def test_after_a_418_one_probe_then_everything_resumes():
    latency = 0.02
    with FakeBinanceRest(latency_s=_burst_latency(latency)) as server:
        server.inject("418", path=OI, count=10, retry_after=0.2)
        async with binance_http(server.url, gate=_gate()) as http:
            await asyncio.gather(*(http.get_json(OI, OI_PARAMS) for _ in range(10)))
    log = server.requests_to(OI)
    assert [r.status for r in log] == [418] * 10 + [200] * 10
    probe, rest = log[10], log[11:]
    assert probe.t - log[9].t >= 0.2
    # The probe went alone: the others waited for its answer (issue #12 saw 10 at once).
    assert min(r.t for r in rest) - probe.t >= latency * 0.9
    assert http.gate.bans == 1 and http.gate.stopped is None


@pytest.mark.parametrize("retry_after", [0.1, None])
async def test_a_second_ban_stops_the_venue_for_the_run(retry_after):
    with FakeBinanceRest(latency_s=_burst_latency(0.01)) as server:
        server.inject(
            "418", count=100, retry_after=retry_after, omit_retry_after=retry_after is None
        )
        async with binance_http(server.url, gate=_gate()) as http:
            outcomes = await asyncio.gather(
                *(http.get_json(OI, OI_PARAMS) for _ in range(10)), return_exceptions=True
            )
            assert all(isinstance(o, RateLimitError) for o in outcomes)
            assert "banned again (HTTP 418" in str(outcomes[0])
            assert "no more requests to binance in this run" in str(outcomes[0])
            with pytest.raises(RateLimitError, match="banned again"):
                await fetch_page(http, "funding", "ETHUSDT", limit=5)
        # The burst of 10 (in flight together) and one probe; nothing after the second ban.
        assert [r.status for r in server.requests] == [418] * 11
