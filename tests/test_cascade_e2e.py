"""``liq cascade`` end to end: a real subprocess against fake Binance (forceOrder + aggTrade on one
combined stream) and Bybit WebSocket servers, the fake Binance REST API for context, a local
webhook server and an ``--exec`` command; then a replay of what the live run stored.

Event timestamps start 30 s in the future and span a few minutes: the detector runs on event time,
so a scripted cascade can start, escalate and end (60 s window + 60 s quiet) within a second of
wall time, exactly as it would over those minutes.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from liqcli.exchanges.binance.rest import binance_http, fetch_page
from liqcli.store.parquet import Store
from tests.fakes.binance_rest import FakeBinanceRest
from tests.fakes.ws_servers import FakeBinance, FakeBybit

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

SCALE = "0.0001"  # BTC thresholds become $50 / $100 / $300 / $1,000 / $5,000
BYBIT_TOPIC = "allLiquidation.BTCUSDT"
_trade_ids = iter(range(1, 1_000_000))


def agg_trade(ts: int, price: float) -> dict[str, Any]:
    trade_id = next(_trade_ids)
    return {
        "e": "aggTrade",
        "E": ts + 3,
        "s": "BTCUSDT",
        "a": trade_id,
        "p": f"{price}",
        "q": "0.5",
        "f": trade_id,
        "l": trade_id,
        "T": ts,
        "m": False,
    }


def force_order(ts: int, side: str, usd: float, price: float) -> dict[str, Any]:
    qty = f"{usd / price:.6f}"
    return {
        "e": "forceOrder",
        "E": ts + 5,
        "o": {
            "s": "BTCUSDT",
            "S": side,  # SELL: a long was liquidated
            "o": "LIMIT",
            "f": "IOC",
            "q": qty,
            "p": f"{price}",
            "ap": f"{price}",
            "X": "FILLED",
            "l": qty,
            "z": qty,
            "T": ts,
        },
    }


def bybit_liquidation(ts: int, side: str, qty: str, price: str) -> dict[str, Any]:
    return {
        "topic": BYBIT_TOPIC,
        "type": "snapshot",
        "ts": ts + 100,
        "data": [{"T": ts, "s": "BTCUSDT", "S": side, "v": qty, "p": price}],
    }


class Webhook:
    """An HTTP/1.1 server on 127.0.0.1:0 that records every POSTed JSON body and answers
    ``status``."""

    def __init__(self, status: int = 204) -> None:
        self.status = status
        self.bodies: list[dict] = []
        self.changed = asyncio.Condition()

    async def __aenter__(self) -> Webhook:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def wait_for(self, predicate, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(lambda: predicate(self.bodies))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readline():
                headers = {}
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                async with self.changed:
                    self.bodies.append(orjson.loads(body))
                    self.changed.notify_all()
                writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\n\r\n".encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def has(kind: str, level: str):
    key = "peak_level" if kind == "cascade_end" else "level"
    return lambda bodies: any(b["type"] == kind and b[key] == level for b in bodies)


def summary(alert: dict) -> tuple:
    level = alert["peak_level"] if alert["type"] == "cascade_end" else alert["level"]
    return alert["type"], level, alert["direction"], alert.get("reason")


def exec_command(path: Path) -> str:
    script = "import sys; f = open(sys.argv[1], 'ab'); f.write(sys.stdin.buffer.read() + b'\\n')"
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(script)} {shlex.quote(str(path))}"


async def liq(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "liqcli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def run_liq(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await liq(*args, env=env)
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


def environment(binance: FakeBinance, bybit: FakeBybit, rest_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "LIQ_BINANCE_WS_URL": binance.ws_url,
        "LIQ_BYBIT_WS_URL": bybit.ws_url,
        "LIQ_BYBIT_REST_URL": bybit.rest_url,
        "LIQ_BINANCE_REST_URL": rest_url,
    }


async def history(data_dir: Path, env: dict[str, str]) -> list[dict]:
    code, out, err = await run_liq(
        "--data-dir", str(data_dir), "cascade", "--history", "-f", "json", env=env
    )
    assert code == 0, err
    return orjson.loads(out)["cascades"]


def t0() -> int:
    return (int(time.time()) + 30) * 1000


async def test_live_cascade_alerts_reach_stdout_webhook_and_exec_and_replay_matches(tmp_path):
    T0 = t0()
    # Cascade 1 (longs): $70 -> BUILDING, $150 -> MINOR, $400 -> SIGNIFICANT on Binance; Bybit's
    # $695.80 -> MAJOR; a small short liquidation; then trades carry event time past its end.
    part1 = [
        agg_trade(T0, 100.0),
        force_order(T0 + 1_000, "SELL", 70, 100.0),
        agg_trade(T0 + 2_000, 99.8),
        force_order(T0 + 3_000, "SELL", 80, 99.8),
        agg_trade(T0 + 4_000, 99.5),
        force_order(T0 + 5_000, "SELL", 250, 99.5),
    ]
    part2 = [
        agg_trade(T0 + 7_000, 99.0),
        force_order(T0 + 8_000, "BUY", 30, 99.0),
        agg_trade(T0 + 40_000, 98.9),
        agg_trade(T0 + 200_000, 99.2),
        # Cascade 2 (shorts): $120 -> MINOR at once; still open when --duration ends.
        force_order(T0 + 210_000, "BUY", 120, 99.2),
        agg_trade(T0 + 211_000, 99.6),
    ]
    data_dir = tmp_path / "live"
    exec_log = tmp_path / "exec.jsonl"
    now = T0 - 30_000
    fake_binance = FakeBinance(part1)
    fake_bybit = FakeBybit(by_subscription={BYBIT_TOPIC: []})
    with FakeBinanceRest(now_ms=now) as rest:
        async with fake_binance, fake_bybit, Webhook() as hook:
            env = environment(fake_binance, fake_bybit, rest.url)
            proc = await liq(
                "--data-dir", str(data_dir), "cascade", "BTCUSDT",
                "-e", "binance", "-e", "bybit",
                "--format", "jsonl", "--duration", "4", "--min-level", "minor",
                "--threshold-scale", SCALE, "--store-trades",
                "--webhook", hook.url, "--exec", exec_command(exec_log),
                env=env,
            )  # fmt: skip
            try:
                await hook.wait_for(has("cascade_level", "SIGNIFICANT"))
                fake_bybit.push_to(BYBIT_TOPIC, bybit_liquidation(T0 + 6_000, "Buy", "7", "99.4"))
                await hook.wait_for(has("cascade_level", "MAJOR"))
                paths = ("openInterestHist", "takerlongshortRatio", "fundingRate")
                while not all(any(p in r.path for r in rest.requests) for p in paths):
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.2)  # the poll's answers reach the detector
                fake_binance.push(*part2)
                out, err = await asyncio.wait_for(proc.communicate(), 20)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            webhook_alerts = list(hook.bodies)
        async with binance_http(rest.url) as http:
            oi = await fetch_page(http, "open_interest", "BTCUSDT", period="5m", limit=2)
            taker = await fetch_page(http, "taker_ratio", "BTCUSDT", period="5m", limit=1)
            funding = await fetch_page(http, "funding", "BTCUSDT", limit=2)

    assert proc.returncode == 0, err.decode()
    stdout_alerts = [orjson.loads(line) for line in out.decode().splitlines()]
    expected = [
        ("cascade_level", "MINOR", "long_liquidation", None),
        ("cascade_level", "SIGNIFICANT", "long_liquidation", None),
        ("cascade_level", "MAJOR", "long_liquidation", None),
        ("cascade_end", "MAJOR", "long_liquidation", "quiet"),
        ("cascade_level", "MINOR", "short_liquidation", None),
        ("cascade_end", "MINOR", "short_liquidation", "shutdown"),
    ]
    assert [summary(a) for a in stdout_alerts] == expected  # BUILDING is below --min-level
    # up to 4 webhook deliveries are in flight at once: the same alerts, in any order
    assert sorted(map(orjson.dumps, webhook_alerts)) == sorted(map(orjson.dumps, stdout_alerts))
    exec_alerts = [orjson.loads(line) for line in exec_log.read_bytes().splitlines()]
    assert exec_alerts == stdout_alerts

    end = stdout_alerts[3]
    assert end["total_usd"] == pytest.approx(70 + 80 + 250 + 695.8 + 30)
    assert end["events"] == 5
    assert end["duration_s"] == 7.0
    assert end["price_change_pct"] == pytest.approx(-1.0)  # 100.0 at the start, 99.0 at the end
    major = stdout_alerts[2]
    assert major["total_usd_60s"] == pytest.approx(70 + 80 + 250 + 695.8)
    assert major["phase"] == "early" and major["recommended_action"] == "follow_short"

    # The REST context (OI, taker ratio, funding) reached the signature.
    ois = oi["open_interest"].to_list()
    rates = funding["funding_rate"].to_list()
    assert end["signature"]["oi_falling"] == (ois[-1] < ois[-2])
    assert end["signature"]["taker_ratio"] == (taker["buy_sell_ratio"][-1] < 0.7)
    assert end["signature"]["funding_flip"] == (rates[-2] >= 0 > rates[-1])

    live = await history(data_dir, env)
    assert [(c["symbol"], c["direction"], c["peak_level"], c["events"]) for c in live] == [
        ("BTCUSDT", "long_liquidation", "MAJOR", 5),
        ("BTCUSDT", "short_liquidation", "MINOR", 1),
    ]
    stored = Store(data_dir)
    assert stored.read("liquidations").height == 6
    assert stored.read("agg_trades").height == 7

    # Replaying the stored liquidations (and trades) finds the same cascades.
    replay_dir = tmp_path / "replay"
    for name in ("liquidations", "agg_trades"):
        shutil.copytree(data_dir / name, replay_dir / name)
    code, out_replay, err = await run_liq(
        "--data-dir", str(replay_dir), "cascade", "BTCUSDT", "--replay", "store", "--store",
        "--threshold-scale", SCALE, "--format", "jsonl", "--min-level", "minor",
        env=env,
    )  # fmt: skip
    assert code == 0, err
    assert await history(replay_dir, env) == live
    replayed = [orjson.loads(line) for line in out_replay.splitlines()]
    assert [summary(a) for a in replayed] == expected


async def test_ctrl_c_ends_the_open_cascade_delivers_and_stores_it_then_exits_130(tmp_path):
    T0 = t0()
    script = [
        agg_trade(T0, 100.0),
        force_order(T0 + 1_000, "SELL", 120, 100.0),
        agg_trade(T0 + 2_000, 99.0),
        force_order(T0 + 3_000, "SELL", 200, 99.0),
    ]
    data_dir = tmp_path / "data"
    fake_binance = FakeBinance(script)
    fake_bybit = FakeBybit()
    async with fake_binance, fake_bybit, Webhook() as hook:
        env = environment(fake_binance, fake_bybit, "http://127.0.0.1:9")
        proc = await liq(
            "--data-dir", str(data_dir), "cascade", "BTCUSDT", "-e", "binance",
            "--format", "jsonl", "--threshold-scale", SCALE, "--webhook", hook.url,
            env=env,
        )  # fmt: skip
        try:
            await hook.wait_for(has("cascade_level", "SIGNIFICANT"))
            proc.send_signal(signal.SIGINT)
            out, err = await asyncio.wait_for(proc.communicate(), 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        webhook_alerts = list(hook.bodies)

    assert proc.returncode == 130, err.decode()
    assert "Traceback" not in err.decode()
    alerts = [orjson.loads(line) for line in out.decode().splitlines()]
    assert [summary(a) for a in alerts] == [
        ("cascade_level", "SIGNIFICANT", "long_liquidation", None),
        ("cascade_end", "SIGNIFICANT", "long_liquidation", "shutdown"),
    ]
    assert sorted(map(orjson.dumps, webhook_alerts)) == sorted(map(orjson.dumps, alerts))
    assert alerts[1]["price_change_pct"] == pytest.approx(-1.0)
    cascades = await history(data_dir, env)
    assert [(c["peak_level"], c["events"], c["total_usd"]) for c in cascades] == [
        ("SIGNIFICANT", 2, pytest.approx(320.0))
    ]
    assert Store(data_dir).read("liquidations").height == 2
