"""The one retry policy (liqcli.exchanges.retry): Backoff, retry_after, RateLimitGate."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest

from liqcli.errors import RateLimitError
from liqcli.exchanges.retry import Backoff, RateLimitGate, exponential_delay, retry_after
from tests.fakes.binance_rest import FakeClock


def test_backoff_grows_caps_jitters_and_resets():
    backoff = Backoff(1.0, 8.0, rng=random.Random(1))
    delays = [backoff.next() for _ in range(6)]
    for n, delay in enumerate(delays):
        step = min(8.0, 2.0**n)
        assert step / 2 <= delay <= step
    assert backoff.attempts == 6
    backoff.reset()
    assert backoff.attempts == 0 and backoff.next() <= 1.0
    exact = Backoff(0.5, 60.0, jitter=0.0)
    assert [exact.next() for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert exponential_delay(10_000, initial=1.0, maximum=30.0, jitter=0.0) == 30.0  # no overflow


async def test_backoff_wait_sleeps_through_the_injected_sleep():
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    backoff = Backoff(2.0, 10.0, jitter=0.0, sleep=sleep)
    assert await backoff.wait() == 2.0 and await backoff.wait() == 4.0
    assert slept == [2.0, 4.0]


def test_backoff_rejects_nonsense():
    with pytest.raises(ValueError):
        Backoff(1.0, 5.0, jitter=2.0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("120", 120.0), (" 0.25 ", 0.25), ("0", 0.0), ("-3", None), ("nan", None), ("soon", None)],
)
def test_retry_after_delta_seconds(value, expected):
    assert retry_after(value) == expected
    assert retry_after({"Retry-After": value}) == expected
    assert retry_after({"retry-after": value}) == expected


def test_retry_after_http_date_and_absence():
    now = 1_790_000_000.0
    assert retry_after(formatdate(now + 90, usegmt=True), now=now) == pytest.approx(90, abs=1)
    assert retry_after(formatdate(now - 90, usegmt=True), now=now) == 0.0  # already past
    assert retry_after({}) is None and retry_after(None) is None


async def test_gate_counts_an_in_flight_burst_once_and_stops_at_the_second_ban():
    clock = FakeClock(start=0.0)
    gate = RateLimitGate("binance", clock=clock, sleep=clock.sleep)
    tickets = [await gate.admit().__aenter__() for _ in range(3)]  # three sent at once
    for ticket in tickets:
        gate.refused(ticket, 418, 60.0)
    assert gate.bans == 1 and gate.probing and gate.blocked_for == pytest.approx(60.0)
    async with gate.admit() as probe:  # waits out the ban, then probes alone
        assert probe.probe and clock.now == pytest.approx(60.0)
        with pytest.raises(RateLimitError, match="banned again"):
            gate.refused(probe, 418, 120.0)
    with pytest.raises(RateLimitError, match="banned again"):
        async with gate.admit():
            pass


async def test_gate_probe_success_reopens_and_resets_the_backoff():
    clock = FakeClock(start=0.0)
    gate = RateLimitGate(
        "okx", backoff=Backoff(1.0, 60.0, jitter=0.0), clock=clock, sleep=clock.sleep
    )
    async with gate.admit() as first:
        assert gate.refused(first, 429, None) == 1.0
    async with gate.admit() as probe:
        assert gate.refused(probe, 429, None) == 2.0  # no Retry-After: it grows
    async with gate.admit() as probe:
        gate.succeeded(probe)
    assert not gate.probing and gate.backoff.attempts == 0
    async with gate.admit() as normal:
        assert not normal.probe


async def test_gate_refuses_to_wait_longer_than_its_limit():
    gate = RateLimitGate("binance", max_wait_s=30)
    async with gate.admit() as ticket:
        with pytest.raises(RateLimitError, match="longer than the 30s"):
            gate.refused(ticket, 429, 600.0)
    with pytest.raises(RateLimitError, match="paused for another"):
        async with gate.admit():
            pass
