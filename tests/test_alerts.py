"""Alert sinks against a real HTTP server on 127.0.0.1 and real subprocesses."""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from liqcli.alerts import AlertRouter, ExecSink, WebhookSink, alert_json
from liqcli.analytics.cascade import LiquidationCascadeDetector
from liqcli.core.events import Liquidation
from liqcli.errors import UsageError

T0 = 1_700_000_000_000


def liq(ts: int, usd: float, symbol: str = "BTCUSDT") -> Liquidation:
    return Liquidation("binance", symbol, "long", 100.0, usd / 100.0, usd, ts)


def alert(level: str = "SIGNIFICANT", kind: str = "cascade_level", **extra) -> dict:
    return {"type": kind, "symbol": "BTCUSDT", "level": level, **extra}


class FakeWebhook:
    """A minimal HTTP/1.1 server: answers each POST with the next scripted status (then 200);
    ``hang=True`` holds every request until ``release`` is set, ``hang_first=n`` only the first
    n; ``trickle_s`` sends the answer's body a byte at a time, that far apart."""

    def __init__(
        self,
        statuses: tuple[int, ...] = (),
        *,
        hang: bool = False,
        hang_first: int = 0,
        trickle_s: float = 0.0,
    ) -> None:
        self.statuses = list(statuses)
        self.hang = hang
        self.hang_first = hang_first
        self.trickle_s = trickle_s
        self.release = asyncio.Event()
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.accepted: list[dict] = []
        self.arrived = asyncio.Condition()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> FakeWebhook:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        self.server.close()
        for writer in self._writers:
            writer.close()
        await self.server.wait_closed()

    async def wait_for_requests(self, count: int, timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s), self.arrived:
            await self.arrived.wait_for(lambda: len(self.requests) >= count)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            while request_line := await reader.readline():
                headers: dict[str, str] = {}
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                async with self.arrived:
                    self.requests.append((request_line.decode().strip(), headers, body))
                    self.arrived.notify_all()
                if self.hang or len(self.requests) <= self.hang_first:
                    await self.release.wait()
                status = self.statuses.pop(0) if self.statuses else 200
                extra = "Retry-After: 0.05\r\n" if status == 429 else ""
                answer = b"ok" * 50 if self.trickle_s else b""
                head = f"HTTP/1.1 {status} X\r\n{extra}Content-Length: {len(answer)}\r\n\r\n"
                writer.write(head.encode())
                for i in range(len(answer)):
                    await writer.drain()
                    await asyncio.sleep(self.trickle_s)
                    writer.write(answer[i : i + 1])
                await writer.drain()
                if status < 300:
                    self.accepted.append(orjson.loads(body))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


class RecordingSleep:
    """Backoff delays are recorded, not slept, so retry tests take no wall-clock time."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.delays: list[float] = []
        self.clock = clock

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if self.clock is not None:
            self.clock.now += seconds


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# ---- webhook --------------------------------------------------------------------------------


async def test_webhook_posts_the_alert_as_json():
    async with FakeWebhook() as hook:
        sink = WebhookSink(hook.url)
        await sink.start()
        sent = alert(total_usd_60s=3_000_000.5, signature={"oi_falling": None})
        sink.submit(sent)
        await sink.aclose()
    line, headers, body = hook.requests[0]
    assert line == "POST /hook HTTP/1.1"
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body) == sent and body == alert_json(sent)
    assert (sink.delivered, sink.failed, sink.retries) == (1, 0, 0)


async def test_webhook_retries_failures_with_backoff_then_succeeds():
    sleep = RecordingSleep()
    async with FakeWebhook((500, 503, 429)) as hook:
        sink = WebhookSink(hook.url, backoff_s=0.5, sleep=sleep)
        await sink.start()
        sink.submit(alert())
        await sink.aclose()
    assert len(hook.requests) == 4
    assert hook.accepted == [alert()]
    assert sleep.delays == [0.5, 1.0, 0.05]  # doubling, then the server's Retry-After
    assert (sink.delivered, sink.failed, sink.retries) == (1, 0, 3)


async def test_webhook_gives_up_after_max_attempts_and_keeps_going(caplog):
    sleep = RecordingSleep()
    async with FakeWebhook((502, 502, 502)) as hook:
        # One at a time: the scripted 502s all go to the first alert.
        sink = WebhookSink(hook.url, max_attempts=3, max_in_flight=1, sleep=sleep)
        await sink.start()
        sink.submit(alert("MAJOR"))
        sink.submit(alert("EXTREME"))
        await sink.aclose()
    assert [a["level"] for a in hook.accepted] == ["EXTREME"]
    assert (sink.delivered, sink.failed) == (1, 1)
    assert "gave up on an alert after 3 attempts (HTTP 502)" in caplog.text


async def test_webhook_client_errors_are_not_retried(caplog):
    async with FakeWebhook((404,)) as hook:
        sink = WebhookSink(hook.url, sleep=RecordingSleep())
        await sink.start()
        sink.submit(alert())
        await sink.aclose()
    assert len(hook.requests) == 1 and sink.failed == 1
    assert "rejected an alert: HTTP 404" in caplog.text


async def test_webhook_connection_refused_is_logged_not_raised(caplog):
    async with FakeWebhook() as hook:
        url = hook.url  # the port is closed once the server is gone
    sink = WebhookSink(url, max_attempts=2, sleep=RecordingSleep())
    await sink.start()
    sink.submit(alert())
    await sink.aclose()
    assert (sink.delivered, sink.failed, sink.retries) == (0, 1, 1)
    assert "ConnectError" in caplog.text


async def test_hung_webhook_does_not_block_detection():
    async with FakeWebhook(hang=True) as hook:
        sink = WebhookSink(hook.url, queue_size=3, timeout_s=30, max_in_flight=1)
        router = AlertRouter([sink])
        await router.start()
        detector = LiquidationCascadeDetector("BTCUSDT", router, clock=lambda: T0)
        detector.feed(liq(T0, 600_000))  # BUILDING: the worker takes it to the hung server
        await hook.wait_for_requests(1)

        # Everything below runs while that request hangs: alerts keep coming, the queue
        # stays bounded and the oldest queued alerts make room for the newest.
        produced = []
        for i, usd in enumerate((500_000, 2_000_000, 7_000_000, 40_000_000), start=1):
            produced += detector.feed(liq(T0 + i * 1000, usd))
        produced += detector.tick(T0 + 200_000)
        assert [a["level"] for a in produced[:4]] == ["MINOR", "SIGNIFICANT", "MAJOR", "EXTREME"]
        assert produced[4]["type"] == "cascade_end"
        assert len(hook.requests) == 1
        assert (sink.pending, sink.dropped) == (3, 2)

        hook.release.set()
        await router.aclose()
    assert [(a["type"], a["level"]) for a in hook.accepted] == [
        ("cascade_level", "BUILDING"),
        ("cascade_level", "MAJOR"),
        ("cascade_level", "EXTREME"),
        ("cascade_end", "QUIET"),
    ]
    assert sink.delivered == 4


async def test_hung_webhook_times_out_and_close_does_not_wait_forever():
    async with FakeWebhook(hang=True) as hook:
        sink = WebhookSink(
            hook.url, timeout_s=0.1, max_attempts=2, max_in_flight=1, sleep=RecordingSleep()
        )
        await sink.start()
        sink.submit(alert())
        sink.submit(alert())
        await hook.wait_for_requests(2)  # the first attempt timed out and was retried
        await sink.aclose(drain_timeout_s=0.05)
    assert sink.retries >= 1 and sink.delivered == 0


async def test_a_stuck_alert_does_not_hold_back_newer_ones():
    # Issue #13: a hanging webhook delayed every later alert by 4 attempts x 5 s.
    async with FakeWebhook(hang_first=1) as hook:
        sink = WebhookSink(hook.url)  # default timeout 5 s, 4 attempts
        await sink.start()
        sink.submit(alert("SIGNIFICANT"))
        await hook.wait_for_requests(1)
        sink.submit(alert("MAJOR"))
        async with asyncio.timeout(3.0):  # behind the stuck one it would take 4 x 5 s
            while not hook.accepted:
                await asyncio.sleep(0.005)
        assert [a["level"] for a in hook.accepted] == ["MAJOR"]  # while the first still hangs
        hook.release.set()
        await sink.aclose()
    assert sorted(a["level"] for a in hook.accepted) == ["MAJOR", "SIGNIFICANT"]


async def test_a_trickling_webhook_hits_the_total_deadline(caplog):
    # 100 bytes at 50 ms each: every read is quick, the answer takes 5 s.
    async with FakeWebhook(trickle_s=0.05) as hook:
        sink = WebhookSink(hook.url, timeout_s=0.2, max_attempts=2, backoff_s=0.01)
        await sink.start()
        started = asyncio.get_running_loop().time()
        sink.submit(alert())
        async with asyncio.timeout(2.0):
            while sink.failed == 0:
                await asyncio.sleep(0.01)
        elapsed = asyncio.get_running_loop().time() - started
        await sink.aclose(drain_timeout_s=0.1)
    assert elapsed < 2.0 and len(hook.requests) == 2 and sink.delivered == 0  # was 10 s
    assert "no answer within 0.2s" in caplog.text


async def test_an_alert_gives_up_at_its_deadline_across_attempts(caplog):
    clock = Clock()
    sleep = RecordingSleep(clock)  # the recorded sleeps advance the injected clock
    async with FakeWebhook((503,) * 10) as hook:
        sink = WebhookSink(
            hook.url, max_attempts=10, backoff_s=1.0, deadline_s=5.0, sleep=sleep, clock=clock
        )
        await sink.start()
        sink.submit(alert())
        await sink.aclose()
    # 1 + 2 = 3 s slept; the next 4 s would pass the 5 s deadline: give up after 3 attempts.
    assert sleep.delays == [1.0, 2.0] and len(hook.requests) == 3
    assert "gave up on an alert after 3 attempts and 5s (HTTP 503)" in caplog.text


def test_sink_arguments_are_validated():
    with pytest.raises(UsageError, match="invalid webhook URL"):
        WebhookSink("ftp://example.invalid/hook")
    with pytest.raises(UsageError, match="needs a command"):
        ExecSink("  ")
    with pytest.raises(UsageError, match="queue size"):
        ExecSink("true", queue_size=0)
    with pytest.raises(UsageError, match="invalid level"):
        AlertRouter(min_level="LOUD")


# ---- exec -----------------------------------------------------------------------------------


def python_command(code: str, *args: str | Path) -> str:
    return shlex.join([sys.executable, "-c", code, *map(str, args)])


async def test_exec_runs_the_command_with_the_alert_on_stdin(tmp_path):
    out = tmp_path / "alerts.jsonl"
    code = (
        "import os, sys\n"
        "with open(sys.argv[1], 'ab') as f:\n"
        "    f.write(sys.stdin.buffer.read() + b' ' + os.environ['LIQ_ALERT_LEVEL'].encode() + b'\\n')"
    )
    sink = ExecSink(python_command(code, out) + " && echo done")
    await sink.start()
    sent = [alert("MINOR"), alert("QUIET", "cascade_end", peak_level="MAJOR")]
    for a in sent:
        sink.submit(a)
    await sink.aclose()
    lines = out.read_bytes().splitlines()
    assert [orjson.loads(line.rsplit(b" ", 1)[0]) for line in lines] == sent
    assert [line.rsplit(b" ", 1)[1] for line in lines] == [b"MINOR", b"QUIET"]
    assert (sink.delivered, sink.failed) == (2, 0)


async def test_exec_failure_is_logged_not_raised(caplog):
    sink = ExecSink(python_command("import sys; sys.stderr.write('no route\\n'); sys.exit(3)"))
    await sink.start()
    sink.submit(alert())
    await sink.aclose()
    assert (sink.delivered, sink.failed) == (0, 1)
    assert "exited with 3 no route" in caplog.text


def process_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, just not reaped


async def test_exec_timeout_kills_the_command_and_its_children(tmp_path, caplog):
    pid_file = tmp_path / "pid"
    code = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"
    # Through a shell pipeline, so the sleeper is a grandchild of the sink.
    sink = ExecSink(python_command(code, pid_file) + " | cat", timeout_s=0.5)
    await sink.start()
    sink.submit(alert())
    sink.submit(alert("MAJOR"))
    await sink.aclose(drain_timeout_s=10)
    assert (sink.timed_out, sink.failed, sink.delivered) == (2, 2, 0)
    assert "timed out after 0.5s and was killed" in caplog.text
    pid = int(pid_file.read_text())
    async with asyncio.timeout(2):
        while process_alive(pid):
            await asyncio.sleep(0.01)


async def _wait_for_pid(pid_file: Path) -> int:
    async with asyncio.timeout(10):
        while not pid_file.exists() or not pid_file.read_text():
            await asyncio.sleep(0.01)
    return int(pid_file.read_text())


async def test_exec_still_running_at_shutdown_is_killed_with_its_children(tmp_path, caplog):
    # Issue #13: the shell and its child both survived liq.
    pid_file = tmp_path / "pid"
    code = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"
    sink = ExecSink(python_command(code, pid_file) + " | cat", timeout_s=60)
    await sink.start()
    sink.submit(alert("MAJOR"))
    pid = await _wait_for_pid(pid_file)
    await sink.aclose(drain_timeout_s=0.05)
    assert "still running at shutdown and was killed" in caplog.text
    async with asyncio.timeout(2):
        while process_alive(pid):
            await asyncio.sleep(0.01)


def test_exec_children_are_gone_after_the_process_exits(tmp_path):
    # A run that ends without closing its sinks (an exception, SystemExit): asyncio.run cancels
    # the worker, which kills the group; atexit would catch anything left.
    pid_file = tmp_path / "pid"
    child = (  # the pid file appears whole (renamed into place), never empty
        "import os, sys, time; open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid())); "
        "os.replace(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(60)"
    )
    script = f"""
import asyncio, sys, time
from pathlib import Path
from liqcli.alerts import ExecSink

async def main():
    sink = ExecSink({python_command(child, pid_file) + " | cat"!r}, timeout_s=60)
    await sink.start()
    sink.submit({{"type": "cascade_level", "symbol": "BTCUSDT", "level": "MAJOR"}})
    while not Path({str(pid_file)!r}).exists():
        await asyncio.sleep(0.01)
    raise SystemExit(3)

asyncio.run(main())
"""
    done = subprocess.run([sys.executable, "-c", script], timeout=30, capture_output=True)
    assert done.returncode == 3, done.stderr.decode()
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 2
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not process_alive(pid)


async def test_exec_missing_command_fails_cleanly(caplog):
    sink = ExecSink("/nonexistent/liq-alert-hook")
    await sink.start()
    sink.submit(alert())
    await sink.aclose()
    assert sink.failed == 1
    assert "exited with 127" in caplog.text


# ---- min-level filter -----------------------------------------------------------------------


class ListSink:
    """An in-process sink (what a jsonl printer would be) that keeps what it receives."""

    def __init__(self) -> None:
        self.received: list[dict] = []

    def submit(self, alert: dict) -> None:
        self.received.append(alert)

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def test_min_level_filter_passes_alerts_and_ends_of_cascades_that_reached_it():
    sink = ListSink()
    router = AlertRouter([sink], min_level="significant")
    alerts = []
    for symbol, sizes in (("BTCUSDT", (600_000, 2_500_000, 7_000_000)), ("ETHUSDT", (300_000,))):
        detector = LiquidationCascadeDetector(symbol, router, clock=lambda: T0)
        for i, usd in enumerate(sizes):
            alerts += detector.feed(liq(T0 + i * 1000, usd, symbol=symbol))
        alerts += detector.tick(T0 + 300_000)
    assert [(a["symbol"], a["type"], a["level"]) for a in alerts] == [
        ("BTCUSDT", "cascade_level", "BUILDING"),
        ("BTCUSDT", "cascade_level", "SIGNIFICANT"),
        ("BTCUSDT", "cascade_level", "MAJOR"),
        ("BTCUSDT", "cascade_end", "QUIET"),
        ("ETHUSDT", "cascade_level", "BUILDING"),
        ("ETHUSDT", "cascade_end", "QUIET"),
    ]
    assert [(a["symbol"], a["type"], a.get("peak_level")) for a in sink.received] == [
        ("BTCUSDT", "cascade_level", None),
        ("BTCUSDT", "cascade_level", None),
        ("BTCUSDT", "cascade_end", "MAJOR"),
    ]
    assert (router.passed, router.filtered) == (3, 3)


async def test_router_fans_out_to_every_sink(tmp_path):
    out = tmp_path / "exec.jsonl"
    code = "import sys; open(sys.argv[1], 'ab').write(sys.stdin.buffer.read() + b'\\n')"
    listing = ListSink()
    async with FakeWebhook() as hook:
        router = AlertRouter([WebhookSink(hook.url), ExecSink(python_command(code, out)), listing])
        await router.start()
        router(alert("EXTREME"))
        await router.aclose()
    assert hook.accepted == listing.received == [orjson.loads(out.read_bytes())]
    assert os.environ.get("LIQ_ALERT_TYPE") is None  # the command's environment is its own
