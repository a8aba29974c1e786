"""``liq paper`` usage errors: exit 2 with one ``liq: error:`` line, before any connection.

Every venue URL points at a local listener that counts the connections it accepts; a control
run with valid flags shows the listener does see the command connect."""

from __future__ import annotations

import socket
import threading

import pytest
from typer.testing import CliRunner

from liqcli.cli.app import app
from liqcli.core.endpoints import DEFAULTS

pytestmark = pytest.mark.timeout(60)
SYM = "BTCUSDT"


class CountingListener:
    """A TCP listener on 127.0.0.1 that accepts, counts and closes every connection."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def listener(monkeypatch):
    server = CountingListener()
    for name in DEFAULTS:
        scheme = "ws" if name.endswith("_WS_URL") else "http"
        monkeypatch.setenv(name, f"{scheme}://127.0.0.1:{server.port}")
    yield server
    server.close()


def run(tmp_path, *args: str):
    return CliRunner().invoke(app, ["--data-dir", str(tmp_path), "paper", SYM, *args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--modes", "0,9"], "unknown mode '9'"),
        (["--modes", "4"], "unknown mode '4'"),
        (["--leverage", "0=0"], "between 1 and 125"),
        (["--leverage", "1=200"], "between 1 and 125"),
        (["--leverage", "3=nan"], "between 1 and 125"),
        (["--leverage", "=5"], "expected MODE=N"),
        (["--leverage", "0"], "expected MODE=N"),
        (["--capital", "-5"], "--capital must be positive"),
        (["--capital", "0"], "--capital must be positive"),
        (["--capital", "inf"], "--capital must be positive"),
        (["--capital", "nan"], "--capital must be positive"),
        (["--fees", "abc"], "invalid --fees 'abc'"),
        (["--fees", "0.02%"], "invalid --fees"),
        (["--fees", "0.02%,x"], "is not a number"),
        (["--fees", "5%,5%"], "implausible fees"),
        (["--duration", "0"], "--duration must be"),
        (["--duration", "nan"], "--duration must be"),
        (["--duration", "inf"], "--duration must be"),
        (["--replay", "../x"], "invalid --replay '../x'"),
        (["--session", "a/b"], "invalid --session 'a/b'"),
        (["--dynamic-leverage", "magic"], "--dynamic-leverage"),
        (["--format", "html"], "--format"),
    ],
)
def test_bad_input_exits_2_with_one_line_before_any_connection(listener, tmp_path, args, message):
    # a bounded run if the flags were wrongly accepted
    bounded = [] if "--duration" in args else ["--duration", "1"]
    result = run(tmp_path, *args, *bounded)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("liq: error: "), result.output
    assert message in lines[0]
    assert listener.accepted == 0


def test_valid_flags_do_connect_to_the_venue(listener, tmp_path):
    # The control: the same listener sees a valid run's connection attempts.
    result = run(tmp_path, "--modes", "0", "--duration", "0.5", "--format", "json")
    assert result.exit_code == 0, result.output
    assert listener.accepted >= 1


# --- the CLI's output formats on a recorded session (no network) ------------------------------


@pytest.fixture
def recorded(tmp_path):
    """The scripted tape of test_paper, recorded as session ``rec`` (market data + paper_state)."""
    import asyncio

    from liqcli.services import paper as svc
    from liqcli.sources.recorder import Recorder
    from liqcli.store.parquet import Store
    from tests.test_paper import TAPE, ListSource, config

    async def record() -> None:
        source = Recorder(ListSource(TAPE), Store(tmp_path), flush_interval=0.01)
        run = svc.open_paper(config("rec"), tmp_path)
        try:
            await svc.drive(run, source)
        finally:
            await source.aclose()

    asyncio.run(record())
    return tmp_path


def test_replaying_twice_gives_the_same_summary_not_a_resumed_one(recorded):
    import json

    first = run(recorded, "--replay", "rec", "--format", "json")
    second = run(recorded, "--replay", "rec", "--format", "json")
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    a, b = json.loads(first.output), json.loads(second.output)
    assert (a["session"], b["session"]) == ("rec-replay", "rec-replay-2")
    assert a["modes"][0]["trades"] >= 1
    assert [m | {"rank": 0} for m in a["modes"]] == [m | {"rank": 0} for m in b["modes"]]
    # a replay into a session that is stored already would add the recording on top of it
    again = run(recorded, "--replay", "rec", "--session", "rec-replay", "--format", "json")
    assert again.exit_code == 2
    assert again.output.startswith("liq: error: --session 'rec-replay' is stored already")
