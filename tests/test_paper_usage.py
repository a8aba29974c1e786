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
    """A thin-book tape recorded as session ``rec`` (market data + paper_state): top-of-book
    depth 2.2 < 3 blocks the liquidity modes 2 and 3, modes 0 and 1 buy on OBI 0.82 (VPIN not
    known yet on $50k buckets), mode 0 takes profit at 2 s."""
    import asyncio

    from liqcli.core.events import MarkPrice
    from liqcli.services import paper as svc
    from liqcli.sources.recorder import Recorder
    from liqcli.store.parquet import Store
    from tests.test_paper import ListSource, buy, config, top

    tape = [
        top(1_000, 100.0, 2.0, 100.1, 2.0),
        buy(1_100, 200.0, 1),
        top(1_200, 100.0, 2.0, 100.1, 0.2),
        MarkPrice("binance", SYM, 1_300, 100.1, 100.0, 0.0001, 1_500),
        MarkPrice("binance", SYM, 1_600, 100.2, 100.0, 0.0001, 9_000),
        top(2_000, 103.5, 2.0, 103.6, 2.0),
    ]

    async def record() -> None:
        source = Recorder(ListSource(tape), Store(tmp_path), flush_interval=0.01)
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


INPUTS = (
    "signal",
    "confidence",
    "risk_level",
    "vpin",
    "spread_bps",
    "depth",
    "leverage",
    "suggested_leverage",
    "leverage_reason",
    "fees",
    "funding",
    "pnl",
    "roi",
    "exit_reason",
)


def test_jsonl_has_one_line_per_order_fill_close_and_block(recorded):
    import json

    from liqcli.store.parquet import Store

    result = run(recorded, "--replay", "rec", "--format", "jsonl")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.splitlines()]
    assert {r["type"] for r in records} == {"order", "fill", "close", "block"}
    by_mode = {m: [r["type"] for r in records if r["mode"] == m] for m in ("0", "1", "2", "3")}
    assert by_mode["0"] == ["order", "fill", "fill", "close"]  # entry, take-profit exit
    assert by_mode["1"] == ["order", "fill"]  # still open at the end
    assert set(by_mode["2"]) == set(by_mode["3"]) == {"block"}
    assert all(r["reasons"] == ["depth 2.20 < 3"] for r in records if r["type"] == "block")
    assert all(r["ts"].startswith("1970-01-01T00:00:0") for r in records)
    (close,) = [r for r in records if r["type"] == "close"]
    assert (close["exit_reason"], close["side"], close["entry_price"]) == (
        "take_profit",
        "long",
        pytest.approx(100.1 * 1.0002),  # the ask plus 2 bps slippage
    )
    # the stored trade is the close line, with every input it was opened on
    (row,) = Store(recorded).read("paper_trades", session="rec-replay").iter_rows(named=True)
    for key in INPUTS:
        assert row[key] == (pytest.approx(close[key]) if close[key] is not None else None), key
    assert (row["signal"], row["risk_level"], row["leverage"]) == ("LONG", close["risk_level"], 5.0)
    assert row["depth"] == pytest.approx(2.2) and row["spread_bps"] == pytest.approx(
        0.1 / 100.05 * 1e4
    )
    assert row["confidence"] > 0.6 and row["suggested_leverage"] > 0 and row["fees"] > 0
    assert row["funding"] > 0  # the 1.5 s settlement while long at a positive rate
    assert row["exit_ts"] == row["ts"] and row["exit_ts"].timestamp() == 2.0  # CONTRACT.md name
    assert row["entry_ts"].timestamp() == 1.2


def test_json_is_the_final_summary(recorded):
    import json

    result = run(recorded, "--replay", "rec", "--modes", "0,2", "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["session"], summary["events"]) == ("rec-replay", 6)
    board = {m["mode"]: m for m in summary["modes"]}
    assert set(board) == {"0", "2"} and board["0"]["rank"] == 1
    assert board["0"]["trades"] == 1 and board["0"]["position"] is None
    assert board["0"]["balance"] == pytest.approx(10_000 + board["0"]["realized_pnl"])
    assert board["2"]["last_block"] == "depth 2.20 < 3" and board["2"]["blocks"] == 3


def test_replay_store_runs_everything_recorded_for_the_symbol(recorded, caplog):
    import json

    session = json.loads(run(recorded, "--replay", "rec", "--format", "json").output)
    whole = run(recorded, "--replay", "store", "--format", "json")
    assert whole.exit_code == 0, whole.output
    store = json.loads(whole.output)
    assert (store["session"], store["events"]) == ("store-replay", session["events"])
    assert store["modes"] == session["modes"]  # the store holds just that recording
    other = CliRunner().invoke(
        app, ["--data-dir", str(recorded), "paper", "ETHUSDT", "--replay", "store", "-f", "json"]
    )
    assert other.exit_code == 0 and json.loads(other.output.splitlines()[0])["events"] == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "--replay store: nothing recorded for ETHUSDT" in warnings
