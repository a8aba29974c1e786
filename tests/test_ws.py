"""ReconnectingWebSocket against real fake venue servers on 127.0.0.1: reconnects, exactly-once
delivery after a drop, garbage, staleness, pings, venue notices, lifetime, clean shutdown."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from liqcli.errors import UsageError
from liqcli.exchanges import okx
from liqcli.exchanges.binance import stream as binance
from liqcli.exchanges.bybit import stream as bybit
from liqcli.exchanges.ws import (
    FrameKind,
    ReconnectingWebSocket,
    WsProtocol,
    WsTimings,
    backoff_delay,
)
from tests.fakes.ws_servers import (
    DROP,
    Drop,
    FakeBinance,
    FakeBybit,
    FakeOkx,
    Garbage,
    Pause,
    Silence,
    okx_notice,
)

pytestmark = pytest.mark.timeout(20)

FAST = WsTimings(
    stale_timeout=2.0, backoff_initial=0.01, backoff_max=0.05, open_timeout=2.0, close_timeout=0.2
)
TOPIC = "allLiquidation.BTCUSDT"


def bybit_push(seq: int) -> dict[str, Any]:
    return {
        "topic": TOPIC,
        "type": "snapshot",
        "ts": 1_700_000_000_000 + seq,
        "data": [
            {"T": 1_700_000_000_000 + seq, "s": "BTCUSDT", "S": "Buy", "v": "0.1", "p": "30000"}
        ],
        "seq": seq,
    }


def force_order(seq: int) -> dict[str, Any]:
    return {
        "e": "forceOrder",
        "E": 1_700_000_000_000 + seq,
        "o": {
            "s": "BTCUSDT",
            "S": "SELL",
            "q": "0.1",
            "p": "30000",
            "ap": "30000",
            "z": "0.1",
            "T": 1_700_000_000_000 + seq,
        },
        "seq": seq,
    }


def seq_of(message: dict[str, Any]) -> int:
    return message["data"]["seq"] if "data" in message and "stream" in message else message["seq"]


async def collect(ws: ReconnectingWebSocket, n: int, timeout: float = 10.0) -> list[Any]:
    out: list[Any] = []

    async def run() -> None:
        async for message in ws:
            out.append(message)
            if len(out) == n:
                return

    await asyncio.wait_for(run(), timeout)
    return out


async def run_in_background(ws: ReconnectingWebSocket, sink: list[Any]) -> asyncio.Task[None]:
    async def run() -> None:
        async for message in ws:
            sink.append(message)

    return asyncio.create_task(run())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def bybit_ws(server: FakeBybit, timings: WsTimings = FAST, topics: Sequence[str] = (TOPIC,)):
    proto = bybit.protocol(list(topics), base_url=server.ws_url)
    return ReconnectingWebSocket(proto, timings=timings, rng=random.Random(1))


def test_backoff_grows_exponentially_is_capped_and_jittered_down() -> None:
    timings = WsTimings(backoff_initial=1.0, backoff_max=8.0, backoff_factor=2.0, jitter=0.5)
    rng = random.Random(3)
    delays = [[backoff_delay(a, timings, rng) for _ in range(200)] for a in range(6)]
    for attempt, samples in enumerate(delays):
        base = min(8.0, 2.0**attempt)
        assert all(base * 0.5 <= d <= base for d in samples)
        assert max(samples) - min(samples) > base * 0.3  # really jittered
    no_jitter = WsTimings(backoff_initial=0.5, backoff_max=60.0, jitter=0.0)
    assert [backoff_delay(a, no_jitter, rng) for a in range(4)] == [0.5, 1.0, 2.0, 4.0]


async def test_reconnects_resubscribes_and_delivers_every_frame_once() -> None:
    frames = [bybit_push(i) for i in range(30)]
    script = [*frames[:10], DROP, *frames[10:20], Drop(abort=False), *frames[20:]]
    async with FakeBybit(by_subscription={TOPIC: script}) as server:
        async with bybit_ws(server) as ws:
            got = await collect(ws, 30)
            status = ws.status
            assert [m["seq"] for m in got] == list(range(30))
            assert server.connections == 3
            # Every connection subscribed again, with the same request.
            subscribe_frames = [t for _, t in server.received if '"subscribe"' in t]
            assert [c for c, _ in server.subscriptions] == [0, 1, 2]
            assert len(set(subscribe_frames)) == 1 and len(subscribe_frames) == 3
            assert status.reconnects == 2 and status.gaps == 2
            assert status.messages == 30 and status.state == "connected"
        assert status.state == "closed"


async def test_frames_after_reconnect_arrive_exactly_once_when_server_drops_mid_stream() -> None:
    async with FakeBinance() as server:
        proto = binance.protocol(["btcusdt@forceOrder"], base_url=server.ws_url)
        async with ReconnectingWebSocket(proto, timings=FAST) as ws:
            sink: list[Any] = []
            task = await run_in_background(ws, sink)
            server.push_to("btcusdt@forceOrder", *[force_order(i) for i in range(5)])
            await server.wait_until(lambda: len(sink) == 5)
            await server.drop_all()
            await server.wait_until(lambda: server.connections == 2 and len(server._live) == 1)
            server.push_to("btcusdt@forceOrder", *[force_order(i) for i in range(5, 25)])
            await server.wait_until(lambda: len(sink) == 25)
            await asyncio.sleep(0.05)  # nothing more may arrive
            await stop(task)
            assert [seq_of(m) for m in sink] == list(range(25))
            assert ws.status.reconnects == 1


async def test_garbage_frames_are_counted_and_skipped_without_reconnecting() -> None:
    script = [bybit_push(0), Garbage(), bybit_push(1), Garbage(b"\x00\xff binary"), bybit_push(2)]
    async with FakeBybit(by_subscription={TOPIC: script}) as server, bybit_ws(server) as ws:
        got = await collect(ws, 3)
        assert [m["seq"] for m in got] == [0, 1, 2]
        assert ws.status.garbage == 2
        assert server.connections == 1 and ws.status.reconnects == 0


async def test_silent_connection_is_detected_as_stale_and_replaced() -> None:
    timings = WsTimings(
        stale_timeout=0.3, backoff_initial=0.01, backoff_max=0.02, close_timeout=0.1
    )
    script = [force_order(0), force_order(1), Silence(None), force_order(2), force_order(3)]
    async with FakeBinance(by_subscription={"btcusdt@forceOrder": script}) as server:
        proto = binance.protocol(["btcusdt@forceOrder"], base_url=server.ws_url)
        async with ReconnectingWebSocket(proto, timings=timings) as ws:
            loop = asyncio.get_running_loop()
            started = loop.time()
            got = await collect(ws, 4)
            elapsed = loop.time() - started
            assert [seq_of(m) for m in got] == [0, 1, 2, 3]
            assert server.connections == 2 and ws.status.gaps == 1
            assert 0.3 <= elapsed < 3.0


async def test_quiet_but_healthy_connection_is_kept_alive_by_protocol_pings() -> None:
    # Binance has no application ping: protocol pongs prove the link is alive between pushes.
    timings = WsTimings(stale_timeout=0.3, backoff_initial=0.01, close_timeout=0.1)
    script = [force_order(0), Pause(1.0), force_order(1)]
    async with FakeBinance(by_subscription={"btcusdt@forceOrder": script}) as server:
        proto = binance.protocol(["btcusdt@forceOrder"], base_url=server.ws_url)
        async with ReconnectingWebSocket(proto, timings=timings) as ws:
            got = await collect(ws, 2)
            assert [seq_of(m) for m in got] == [0, 1]
            assert server.connections == 1 and ws.status.reconnects == 0


async def test_okx_sends_text_ping_and_swallows_pong_and_acks() -> None:
    timings = WsTimings(stale_timeout=2.0, ping_interval=0.05, close_timeout=0.1)
    async with FakeOkx() as server:
        ws = ReconnectingWebSocket(okx.protocol(base_url=server.ws_url), timings=timings)
        sink: list[Any] = []
        task = await run_in_background(ws, sink)
        await server.wait_until(lambda: server.pings >= 3)
        await stop(task)
        assert sink == []  # the subscribe acks and "pong" frames are control frames
        assert ws.status.garbage == 0 and ws.status.errors == 0
        assert [key for _, key in server.subscriptions] == ["SWAP", "FUTURES"]
        assert "ping" in {text for _, text in server.received}


async def test_bybit_sends_op_ping_and_swallows_json_pong() -> None:
    timings = WsTimings(stale_timeout=2.0, ping_interval=0.05, close_timeout=0.1)
    async with FakeBybit() as server, bybit_ws(server, timings) as ws:
        sink: list[Any] = []
        task = await run_in_background(ws, sink)
        await server.wait_until(lambda: server.pings >= 3)
        await stop(task)
        assert sink == []
        pings = [orjson.loads(t) for _, t in server.received if "ping" in t]
        assert pings and all(p == {"op": "ping"} for p in pings)


async def publish_every(server, key: str, frames: Sequence[Any], interval: float):
    """A venue's steady stream: each frame to every connection subscribed at that moment."""

    async def run() -> None:
        for frame in frames:
            await server.publish(key, frame)
            await asyncio.sleep(interval)

    return asyncio.create_task(run())


async def test_okx_64008_notice_switches_without_losing_or_repeating_frames() -> None:
    def push(i: int) -> dict[str, Any]:
        return {"arg": {"channel": "liquidation-orders", "instType": "SWAP"}, "data": [], "seq": i}

    async with FakeOkx() as server:
        proto = okx.protocol(["SWAP"], base_url=server.ws_url)
        slow_backoff = WsTimings(backoff_initial=5.0, backoff_max=5.0, close_timeout=0.2)
        async with ReconnectingWebSocket(proto, timings=slow_backoff) as ws:
            sink: list[Any] = []
            task = await run_in_background(ws, sink)
            await server.wait_until(lambda: "SWAP" in {k for _, k in server.subscriptions})
            await server.publish("SWAP", push(0), push(1))
            await server.wait_until(lambda: len(sink) == 2)
            await server.notify(okx_notice())
            # The old connection keeps delivering while the new one opens (would back off 5 s
            # if the notice were treated as a failure).
            publisher = await publish_every(server, "SWAP", [push(i) for i in range(2, 40)], 0.005)
            await server.wait_until(lambda: len(sink) == 40, timeout=3.0)
            await publisher
            await asyncio.sleep(0.05)  # nothing more may arrive
            await stop(task)
            assert [m["seq"] for m in sink] == list(range(40))
            assert server.connections == 2 and ws.status.reconnects == 1
            assert ws.status.gaps == 0


@pytest.mark.parametrize("venue", ["binance", "bybit"])
async def test_max_lifetime_make_before_break_loses_and_repeats_nothing(venue: str) -> None:
    # Frames published every 5 ms to whichever connections are subscribed at that moment: a
    # break-before-make reconnect leaves a window where no connection is, and loses frames.
    timings = WsTimings(max_lifetime=0.15, backoff_initial=5.0, close_timeout=0.2)
    n = 150
    if venue == "binance":
        server_cm, key = FakeBinance(), "btcusdt@forceOrder"
        frames = [force_order(i) for i in range(n)]
    else:
        server_cm, key = FakeBybit(), TOPIC
        frames = [bybit_push(i) for i in range(n)]
    async with server_cm as server:
        if venue == "binance":
            proto = binance.protocol([key], base_url=server.ws_url)
        else:
            proto = bybit.protocol([key], base_url=server.ws_url)
        async with ReconnectingWebSocket(proto, timings=timings) as ws:
            sink: list[Any] = []
            task = await run_in_background(ws, sink)
            await server.wait_until(lambda: key in {k for _, k in server.subscriptions})
            publisher = await publish_every(server, key, frames, 0.005)
            await publisher
            await server.wait_until(lambda: len(sink) >= n)
            await asyncio.sleep(0.05)
            await stop(task)
            assert [seq_of(m) for m in sink] == list(range(n))
            assert server.connections >= 3
            # (the last successor may still be opening when the test stops)
            assert server.connections - 2 <= ws.status.reconnects <= server.connections - 1
            assert ws.status.gaps == 0
            # The connections overlapped (both delivered) and the copies were dropped.
            assert ws.status.overlap_duplicates > 0


async def test_handover_on_a_quiet_stream_switches_after_the_timeout() -> None:
    timings = WsTimings(
        max_lifetime=0.1, handover_timeout=0.1, backoff_initial=5.0, close_timeout=0.2
    )
    key = "btcusdt@forceOrder"
    async with FakeBinance() as server:
        proto = binance.protocol([key], base_url=server.ws_url)
        async with ReconnectingWebSocket(proto, timings=timings) as ws:
            sink: list[Any] = []
            task = await run_in_background(ws, sink)
            await server.wait_until(lambda: server.connections >= 3)  # no data, still switching
            assert len(server._live) <= 2  # old ones closed, not piling up
            await server.publish(key, force_order(0), force_order(1))
            await server.wait_until(lambda: len(sink) == 2)
            await asyncio.sleep(0.05)
            await stop(task)
            assert [seq_of(m) for m in sink] == [0, 1] and ws.status.gaps == 0


async def test_server_closing_after_each_frame_gets_a_growing_backoff() -> None:
    # Issue #13: a server that closes right after sending data was reconnected every 0.5-1 s
    # forever: delivering data is not enough to reset the backoff, staying up is.
    timings = WsTimings(
        backoff_initial=0.02, backoff_max=1.0, jitter=0.0, healthy_after=5.0, close_timeout=0.1
    )
    script: list[Any] = []
    for i in range(6):
        script += [bybit_push(i), DROP]
    async with (
        FakeBybit(by_subscription={TOPIC: script}) as server,
        bybit_ws(server, timings) as ws,
    ):
        loop = asyncio.get_running_loop()
        arrivals: list[float] = []
        async for _ in ws:
            arrivals.append(loop.time())
            if len(arrivals) == 6:
                break
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # 20, 40, 80, 160, 320 ms: doubling (reset after each frame it would stay at 20 ms).
    for n, gap in enumerate(gaps):
        assert gap >= 0.02 * 2**n * 0.9, gaps
    assert ws.status.gaps == 5


async def test_repeated_venue_error_acks_are_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    error = {"success": False, "ret_msg": "error:handler not found", "op": "subscribe"}
    script = [error] * 50 + [bybit_push(0)]
    async with FakeBybit(script=script) as server, bybit_ws(server) as ws:
        with caplog.at_level(logging.DEBUG, logger="liq.ws"):
            got = await collect(ws, 1)
    assert got[0]["seq"] == 0 and ws.status.errors == 50
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "handler not found" in warnings[0].getMessage()


async def test_venue_error_ack_is_counted_not_yielded() -> None:
    async with FakeBybit(known_symbols=["BTCUSDT"]) as server:
        proto = bybit.protocol(["allLiquidation.NOPEUSDT"], base_url=server.ws_url)
        async with ReconnectingWebSocket(proto, timings=FAST) as ws:
            sink: list[Any] = []
            task = await run_in_background(ws, sink)
            await server.wait_until(lambda: ws.status.errors == 1)
            await stop(task)
            assert sink == []
            assert "handler not found" in (ws.status.last_error or "")


async def test_refused_handshake_marks_venue_down_and_retries() -> None:
    async with FakeBybit() as server:
        proto = WsProtocol(venue="bybit", url=f"ws://127.0.0.1:{server.port}/wrong/path")
        ws = ReconnectingWebSocket(proto, timings=FAST)
        task = await run_in_background(ws, [])
        await server.wait_until(
            lambda: ws.status.state == "down" and "404" in (ws.status.last_error or "")
        )
        await server.wait_until(lambda: server.connections == 0 and ws.status.reconnects == 0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ws.status.state == "closed"


async def test_first_failure_in_a_row_is_a_warning_and_its_retries_are_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with FakeBybit() as server:
        proto = WsProtocol(venue="bybit", url=f"ws://127.0.0.1:{server.port}/wrong/path")
        ws = ReconnectingWebSocket(proto, timings=FAST)
        with caplog.at_level(logging.INFO, logger="liq.ws"):
            task = await run_in_background(ws, [])
            await server.wait_until(lambda: len(caplog.records) >= 3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    levels = [r.levelno for r in caplog.records if "connect failed" in r.getMessage()]
    assert levels[0] == logging.WARNING
    assert set(levels[1:]) == {logging.INFO}


async def test_invalid_url_is_a_usage_error() -> None:
    ws = ReconnectingWebSocket(WsProtocol(venue="okx", url="not a url"), timings=FAST)
    with pytest.raises(UsageError, match="invalid WebSocket URL"):
        await collect(ws, 1)


async def test_cancellation_closes_the_socket_and_leaves_no_tasks() -> None:
    async with FakeOkx() as server:
        ws = ReconnectingWebSocket(okx.protocol(base_url=server.ws_url), timings=FAST)
        before = asyncio.all_tasks()
        task = await run_in_background(ws, [])
        await server.wait_until(lambda: ws.status.state == "connected" and server.connections == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ws.status.state == "closed"
        await server.wait_until(lambda: not server._live)  # the server saw the socket close
        await asyncio.sleep(0)
        leftover = {t for t in asyncio.all_tasks() - before if not t.done()}
        leftover = {t for t in leftover if "_handle" not in repr(t.get_coro())}
        assert leftover == set()


def test_classifiers_sort_control_from_data() -> None:
    assert okx.classify({"event": "subscribe", "arg": {}}) is FrameKind.CONTROL
    assert okx.classify({"event": "error", "code": "60018"}) is FrameKind.ERROR
    assert okx.classify(okx_notice()) is FrameKind.RECONNECT
    assert okx.classify({"event": "notice", "code": "64009"}) is FrameKind.CONTROL
    assert okx.classify({"arg": {}, "data": []}) is FrameKind.DATA
    assert bybit.classify({"success": True, "ret_msg": "pong", "op": "ping"}) is FrameKind.CONTROL
    assert bybit.classify({"success": False, "ret_msg": "x", "op": "subscribe"}) is FrameKind.ERROR
    assert bybit.classify(bybit_push(0)) is FrameKind.DATA
    assert binance.classify({"result": None, "id": 1}) is FrameKind.CONTROL
    assert binance.classify({"stream": "x", "data": {}}) is FrameKind.DATA


async def test_aclose_from_another_task_ends_the_consumers_loop() -> None:
    async with FakeBybit(by_subscription={TOPIC: [bybit_push(0)]}) as server:
        ws = bybit_ws(server)
        sink: list[Any] = []
        task = await run_in_background(ws, sink)
        await server.wait_until(lambda: len(sink) == 1)
        await ws.aclose()
        await asyncio.wait_for(task, 2.0)  # the consumer's `async for` simply ends
        assert ws.status.state == "closed" and server.connections == 1
