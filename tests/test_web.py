"""The ``liq watch --web`` dashboard: HTTP routes, the WebSocket protocol, and the real page in
headless Chromium (driven over the DevTools protocol) showing live events from the fake venues."""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from liqcli.analytics.windows import EventFilter, WindowAggregator
from liqcli.core.events import Liquidation
from liqcli.core.timeutil import now_ms
from liqcli.render.dashboard import DashboardInfo
from liqcli.render.web import WebDashboard, parse_client_filter
from liqcli.services.watch import WatchConfig, WatchState
from tests.fakes.ws_servers import FakeBinance, FakeBybit
from tests.test_watch import binance_force, bybit_push, fake_env, read_lines, start_liq

pytestmark = pytest.mark.timeout(90)

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def liq(symbol: str, side: str, usd: float, ts: int, exchange: str = "binance") -> Liquidation:
    return Liquidation(exchange, symbol, side, 100.0, usd / 100.0, usd, ts, received_ts=ts + 3)


async def recv_json(ws: ClientConnection) -> dict:
    return orjson.loads(await asyncio.wait_for(ws.recv(), 5))


async def recv_until(ws: ClientConnection, predicate, timeout: float = 5.0) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            doc = await recv_json(ws)
            if predicate(doc):
                return doc


# -- server without a browser ---------------------------------------------------------------------


@pytest.fixture
async def dashboard() -> AsyncIterator[tuple[WatchState, WebDashboard, Clock]]:
    t = 1_763_700_000_000
    clock = Clock(t + 10_000)
    state = WatchState(
        WatchConfig(exchanges=["binance", "bybit"], windows="1m,1h", web=True),
        clock=clock,
        keep_history=True,
    )
    state.ingest(liq("BTCUSDT", "long", 50_000, t))
    state.ingest(liq("ETHUSDT", "short", 8_000, t + 1, "bybit"))
    web = WebDashboard(state, host="127.0.0.1", port=0, push_interval=0.05)
    await web.start()
    try:
        yield state, web, clock
    finally:
        await web.close()


async def test_http_routes(dashboard) -> None:
    _, web, _ = dashboard
    async with httpx.AsyncClient(base_url=web.url, trust_env=False) as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert 'id="latest"' in page.text and "/ws" in page.text
        snap = await client.get("/snapshot.json")
        assert snap.status_code == 200
        doc = snap.json()
        assert doc["snapshot"]["overall"]["1h"]["long_usd"] == 50_000.0
        assert doc["snapshot"]["overall"]["1h"]["short_usd"] == 8_000.0
        assert "lower bound" in doc["info"]["binance_note"]
        assert (await client.get("/nope")).status_code == 404


async def test_websocket_pushes_live_updates_and_per_client_filters(dashboard) -> None:
    state, web, clock = dashboard
    ws_url = web.url.replace("http://", "ws://") + "ws"
    async with connect(ws_url, proxy=None) as plain, connect(ws_url, proxy=None) as filtered:
        first = await recv_json(plain)
        assert first["type"] == "snapshot"
        assert first["snapshot"]["overall"]["1m"]["count"] == 2
        await recv_json(filtered)
        await filtered.send(
            orjson.dumps({"type": "filter", "symbols": "ethusdt", "min_usd": "1000"})
        )
        doc = await recv_until(
            filtered, lambda d: d["snapshot"]["filter"]["symbols"] == ["ETHUSDT"]
        )
        assert doc["snapshot"]["overall"]["1m"]["count"] == 1
        assert [e["symbol"] for e in doc["snapshot"]["latest"]] == ["ETHUSDT"]

        # A live event reaches both clients, each through its own view.
        clock.now += 1_000
        state.ingest(liq("ETHUSDT", "long", 2_500, clock.now, "binance"))
        state.ingest(liq("BTCUSDT", "short", 700, clock.now))
        doc = await recv_until(filtered, lambda d: d["snapshot"]["overall"]["1m"]["count"] == 2)
        assert doc["snapshot"]["latest"][0]["notional_usd"] == 2_500
        doc = await recv_until(plain, lambda d: d["snapshot"]["overall"]["1m"]["count"] == 4)
        assert doc["snapshot"]["latest"][0]["symbol"] == "BTCUSDT"

        await filtered.send(b'{"type": "filter", "min_usd": "-5"}')
        error = await recv_until(filtered, lambda d: d["type"] == "error")
        assert "must be >= 0" in error["message"]
        await plain.send(b'{"type": "filter", "symbols": "BTC/USDT"}')
        error = await recv_until(plain, lambda d: d["type"] == "error")
        assert "invalid symbol" in error["message"]
    async with connect(ws_url, proxy=None) as narrow:
        # A run started for some symbols refuses a page filter for others, and stays up.
        state.filter = EventFilter(symbols=frozenset({"BTCUSDT", "ETHUSDT"}))
        await recv_json(narrow)
        await narrow.send(b'{"type": "filter", "symbols": "SOLUSDT"}')
        error = await recv_until(narrow, lambda d: d["type"] == "error")
        assert error["message"] == "SOLUSDT not watched: this run watches BTCUSDT, ETHUSDT"
        await narrow.send(b'{"type": "filter", "symbols": "ETHUSDT"}')
        doc = await recv_until(
            narrow,
            lambda d: d["type"] == "snapshot" and d["snapshot"]["filter"]["symbols"] == ["ETHUSDT"],
        )
        assert doc["snapshot"]["overall"]["1m"]["count"] == 2
    await asyncio.sleep(0.1)
    assert not web._views  # closed connections released their views


# -- a local dashboard: who may talk to it, and how much ------------------------------------------


async def test_cross_origin_websocket_and_foreign_host_are_refused(dashboard) -> None:
    """A page on another site must not read the feed (its WebSocket carries its Origin), and a
    rebinding DNS name must not reach the data (its requests carry the foreign Host)."""
    _, web, _ = dashboard
    ws_url = web.url.replace("http://", "ws://") + "ws"
    for origin in ("http://evil.example", f"http://evil.example:{web.port}", "null",
                   f"http://127.0.0.1:{web.port + 1}", f"https://localhost:{web.port}.evil"):  # fmt: skip
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url, proxy=None, origin=origin):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403, origin
    for origin in (f"http://127.0.0.1:{web.port}", f"http://localhost:{web.port}", None):
        async with connect(ws_url, proxy=None, origin=origin) as ws:  # type: ignore[arg-type]
            assert (await recv_json(ws))["type"] == "snapshot"

    async with httpx.AsyncClient(base_url=web.url, trust_env=False) as client:
        for host in ("evil.example", f"evil.example:{web.port}", f"127.0.0.1:{web.port + 1}",
                     f"localhost.evil.example:{web.port}", "", f"user@127.0.0.1:{web.port}"):  # fmt: skip
            for path in ("/snapshot.json", "/", "/ws"):
                reply = await client.get(path, headers={"Host": host})
                assert reply.status_code == 403, (host, path)
                assert "snapshot" not in reply.text
        for host in (f"127.0.0.1:{web.port}", f"localhost:{web.port}", f"LOCALHOST:{web.port}"):
            assert (await client.get("/snapshot.json", headers={"Host": host})).status_code == 200
        page = await client.get("/")
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["x-content-type-options"] == "nosniff"
    assert web.refused >= 5 * 3 + 5


async def test_served_documents_leave_the_data_dir_out(tmp_path: Path) -> None:
    secret = str(tmp_path / "very-private-data-dir")
    state = WatchState(
        WatchConfig(exchanges=["binance"], windows="1m", web=True),
        info=DashboardInfo(exchanges=["binance"], started_ms=now_ms(), store=secret),
        keep_history=True,
    )
    async with (
        WebDashboard(state, host="127.0.0.1", port=0) as web,
        httpx.AsyncClient(base_url=web.url, trust_env=False) as client,
    ):
        doc = (await client.get("/snapshot.json")).json()
    assert doc["info"]["stored"] is True
    assert "very-private" not in orjson.dumps(doc).decode()


async def test_clients_and_views_are_capped(dashboard) -> None:
    state, _, _ = dashboard
    async with WebDashboard(state, host="127.0.0.1", port=0, max_clients=2, max_views=1) as web:
        ws_url = web.url.replace("http://", "ws://") + "ws"
        async with connect(ws_url, proxy=None) as a, connect(ws_url, proxy=None) as b:
            await recv_json(a)
            await recv_json(b)
            with pytest.raises(InvalidStatus) as refused:
                async with connect(ws_url, proxy=None):
                    pass
            assert refused.value.response.status_code == 503
            await a.send(b'{"type": "filter", "symbols": "BTCUSDT"}')
            await recv_until(
                a, lambda d: d.get("snapshot", {}).get("filter", {}).get("symbols") == ["BTCUSDT"]
            )
            await b.send(b'{"type": "filter", "symbols": "ETHUSDT"}')
            error = await recv_until(b, lambda d: d["type"] == "error")
            assert "too many filtered views (at most 1" in error["message"]
            # The same view is shared, and a page may change its own (it frees one).
            await b.send(b'{"type": "filter", "symbols": "BTCUSDT"}')
            await recv_until(
                b, lambda d: d.get("snapshot", {}).get("filter", {}).get("symbols") == ["BTCUSDT"]
            )
            await b.send(b'{"type": "filter", "symbols": ""}')
            await recv_until(
                b, lambda d: d.get("snapshot", {}).get("filter", {}).get("symbols") == []
            )
            await a.send(b'{"type": "filter", "symbols": "ETHUSDT"}')
            doc = await recv_until(
                a, lambda d: d.get("snapshot", {}).get("filter", {}).get("symbols") == ["ETHUSDT"]
            )
            assert doc["snapshot"]["overall"]["1m"]["count"] == 1
        await asyncio.sleep(0.1)
        assert len(state._views) == 0  # every view released


async def test_a_filter_over_a_long_history_does_not_stall_the_event_loop(monkeypatch) -> None:
    """The view's history is loaded in a worker thread: the loop keeps ingesting (and the view
    gets what arrived meanwhile). Today's code loaded it on the loop: 0.35 s over 1M events."""
    t = now_ms()
    state = WatchState(WatchConfig(exchanges=["binance"], windows="1m,1h", web=True),
                       keep_history=True)  # fmt: skip
    for i in range(1_000):
        state.ingest(liq("BTCUSDT", "long", 1_000.0, t - 1_000_000 + i))
    loading, proceed = threading.Event(), threading.Event()
    real_load = WindowAggregator.load_frame

    def slow_load(self, frame):  # stands for the 0.35 s of a big history
        loading.set()
        proceed.wait(5)
        return real_load(self, frame)

    monkeypatch.setattr(WindowAggregator, "load_frame", slow_load)
    async with (
        WebDashboard(state, host="127.0.0.1", port=0, push_interval=0.05) as web,
        connect(web.url.replace("http://", "ws://") + "ws", proxy=None) as ws,
    ):
        await recv_json(ws)
        await ws.send(b'{"type": "filter", "symbols": "BTCUSDT", "min_usd": "500"}')
        async with asyncio.timeout(5):
            while not loading.is_set():
                await asyncio.sleep(0.01)  # runs only if the loop is free during the load
        state.ingest(liq("BTCUSDT", "short", 2_000.0, now_ms()))  # arrives mid-load
        proceed.set()
        doc = await recv_until(ws, lambda d: d["snapshot"]["filter"]["symbols"] == ["BTCUSDT"])
    assert doc["snapshot"]["overall"]["1h"]["long_count"] == 1_000
    assert doc["snapshot"]["overall"]["1h"]["short_count"] == 1  # the event from mid-load


async def test_wildcard_address_warns_and_accepts_ip_hosts(caplog) -> None:
    state = WatchState(WatchConfig(exchanges=["binance"], windows="1m"), keep_history=True)
    with caplog.at_level(logging.WARNING, logger="liq.web"):
        async with (
            WebDashboard(state, host="0.0.0.0", port=0) as web,
            httpx.AsyncClient(trust_env=False) as client,
        ):
            url = f"http://127.0.0.1:{web.port}/snapshot.json"
            ok = await client.get(url, headers={"Host": f"192.0.2.7:{web.port}"})
            bad = await client.get(url, headers={"Host": f"rebind.example:{web.port}"})
    assert ok.status_code == 200 and bad.status_code == 403
    assert any("reachable from other machines" in r.getMessage() for r in caplog.records)


def test_parse_client_filter() -> None:
    flt = parse_client_filter('{"type":"filter","symbols":" btcusdt, ETHUSDT ,","min_usd":"1e4"}')
    assert flt is not None
    assert flt.symbols == frozenset({"BTCUSDT", "ETHUSDT"}) and flt.min_usd == 10_000
    assert parse_client_filter('{"type":"filter","symbols":"","min_usd":""}') is None
    for bad in [
        "nope",
        "[]",
        '{"type":"x"}',
        '{"type":"filter","symbols":"<b>"}',
        '{"type":"filter","min_usd":"NaN"}',
    ]:
        with pytest.raises(Exception):  # noqa: B017 - UsageError, asserted by message in the WS test
            parse_client_filter(bad)


# -- the page in headless Chromium ----------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed on first use when we are root (as CI is)."""
    path = shutil.which("chromium")
    if path is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
        if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
            # A fresh machine may have no package lists yet.
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=900)
            subprocess.run(install, env=env, capture_output=True, timeout=900)
        path = shutil.which("chromium")
    if path is None:
        pytest.skip(
            "headless chromium is not installed and cannot be installed here (not root or no apt-get)"
        )
    return path


class DevTools:
    """Just enough of the Chrome DevTools protocol: call a method, evaluate, wait for a condition."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict:
        call_id = next(self._ids)
        await self.ws.send(
            orjson.dumps({"id": call_id, "method": method, "params": params}).decode()
        )
        while True:
            message = orjson.loads(await asyncio.wait_for(self.ws.recv(), 20))
            if message.get("id") == call_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]

    async def eval(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait(self, expression: str, timeout: float = 15.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                value = await self.eval(expression)
                if value:
                    return value
                await asyncio.sleep(0.05)


async def open_browser(chromium: str, profile: Path) -> tuple[asyncio.subprocess.Process, int]:
    browser = await asyncio.create_subprocess_exec(
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-proxy-server",
        "--window-size=1280,1500",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    port_file = profile / "DevToolsActivePort"
    async with asyncio.timeout(30):
        while not (port_file.exists() and port_file.read_text().strip()):
            await asyncio.sleep(0.05)
    return browser, int(port_file.read_text().split()[0])


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(900)  # the first use may install chromium with apt-get
async def test_page_shows_live_events_in_headless_chromium(chromium: str, tmp_path: Path) -> None:
    binance = FakeBinance()
    bybit = FakeBybit()
    async with binance, bybit:
        watch = await start_liq(
            "--data-dir",
            str(tmp_path / "data"),
            "watch",
            "BTCUSDT",
            "ETHUSDT",
            "-e",
            "binance",
            "-e",
            "bybit",
            "--web",
            "--port",
            "0",
            "--format",
            "jsonl",
            "--no-store",
            "--latest",
            "10",
            env=fake_env(binance, None, bybit),
        )
        browser, devtools_port = await open_browser(chromium, tmp_path / "profile")
        try:
            banner = (await read_lines(watch.stderr, 1))[0]
            url = banner.rsplit(" ", 1)[-1].strip()
            async with httpx.AsyncClient(trust_env=False) as client:
                targets = (await client.get(f"http://127.0.0.1:{devtools_port}/json/list")).json()
            page_ws = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            async with connect(page_ws, proxy=None, max_size=2**26) as ws:
                page = DevTools(ws)
                await page.call("Page.navigate", url=url)
                await page.wait("document.getElementById('conn')?.textContent === 'live'")
                assert (
                    await page.eval("document.querySelectorAll('#latest tbody tr.event').length")
                    == 0
                )
                await page.wait(
                    "document.getElementById('venues').textContent.includes('connected')"
                )

                # Live events arrive after the page is up: a long on Binance, shorts on Bybit.
                t = now_ms()
                binance.push_to(
                    "btcusdt@forceOrder", binance_force("BTCUSDT", "SELL", "65000", "0.5", t)
                )
                bybit.push_to(
                    "allLiquidation.ETHUSDT", bybit_push("ETHUSDT", "Sell", "3000", "4", t + 1)
                )
                bybit.push_to(
                    "allLiquidation.BTCUSDT", bybit_push("BTCUSDT", "Sell", "64000", "0.1", t + 2)
                )
                await page.wait("document.querySelectorAll('#latest tbody tr.event').length === 3")

                rows = await page.eval(
                    "[...document.querySelectorAll('#latest tbody tr')].map(tr =>"
                    " [...tr.children].slice(1).map(td => td.textContent))"
                )
                assert sorted(rows) == sorted(
                    [
                        ["binance", "BTCUSDT", "LONG", "65,000", "0.5", "$32.5K"],
                        ["bybit", "ETHUSDT", "SHORT", "3,000", "4", "$12.0K"],
                        ["bybit", "BTCUSDT", "SHORT", "64,000", "0.1", "$6.40K"],
                    ]
                )
                colours = await page.eval(
                    "Object.fromEntries([...document.querySelectorAll('#latest tbody tr')].map(tr =>"
                    " [tr.querySelector('.side').textContent, getComputedStyle(tr.querySelector('.side')).color]))"
                )
                assert colours == {"LONG": "rgb(255, 92, 92)", "SHORT": "rgb(51, 209, 122)"}
                windows = await page.eval(
                    "[...document.querySelectorAll('#windows tbody tr')].map(tr => tr.children[0].textContent + '|' + tr.children[5].textContent)"
                )
                assert windows == [f"{w}|$50.9K" for w in ("3m", "15m", "1h", "4h", "1d")]
                assert "BTCUSDT" in await page.eval(
                    "document.querySelector('#top-long tbody').textContent"
                )
                assert (
                    await page.eval(
                        "document.querySelector('#top-short tbody tr td:nth-child(2)').textContent"
                    )
                    == "ETHUSDT"
                )
                assert "lower bound" in await page.eval(
                    "document.getElementById('note').textContent"
                )

                # The page's own filter: ETHUSDT only.
                await page.eval(
                    "document.getElementById('filter-symbols').value = 'ethusdt';"
                    "document.getElementById('filter').requestSubmit(); true"
                )
                await page.wait(
                    "[...document.querySelectorAll('#latest tbody tr.event .symbol')]"
                    ".every(td => td.textContent === 'ETHUSDT') &&"
                    " document.querySelectorAll('#latest tbody tr.event').length === 1"
                )
                assert (
                    await page.eval(
                        "document.querySelector('#windows tbody tr').children[5].textContent"
                    )
                    == "$12.0K"
                )
                await page.eval(
                    "document.getElementById('filter-symbols').value = '';"
                    "document.getElementById('filter').requestSubmit(); true"
                )
                await page.wait("document.querySelectorAll('#latest tbody tr.event').length === 3")

                shot = await page.call(
                    "Page.captureScreenshot", format="png", captureBeyondViewport=True
                )
                ARTIFACTS.mkdir(exist_ok=True)
                path = ARTIFACTS / "watch-web.png"
                path.write_bytes(base64.b64decode(shot["data"]))
                print(f"screenshot: {path}")
        finally:
            browser.terminate()
            await browser.wait()
            if watch.returncode is None:
                watch.send_signal(signal.SIGINT)
                await asyncio.wait_for(watch.wait(), 20)
    assert watch.returncode == 130
    assert path.stat().st_size > 10_000
