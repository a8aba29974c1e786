"""``liq paper``: the seed's order-flow modes compete live (or on a recording) on one book, each
with its own simulated balance; every closed trade and each mode's state is stored.

Wiring: a source (live Binance market data, optionally recorded; or a recorded session) ->
one Engine -> one shared OrderFlow (features computed once per event) -> one SeedMode per mode,
each with its own SimBroker. Nothing here decides anything: the strategies do.

Storage (at most the last second lost on kill -9):
- ``paper_trades`` (session, mode, trade_id): every closed trade with its inputs, written the
  moment it closes, with the balance after it;
- ``paper_state`` (session, mode): balance, open position (with the inputs it was opened on),
  trade count, written every second of event time and after every close. A restart with the
  same ``--session`` restores balances and positions; a trade stored after the last state
  (a kill between the two writes) is applied on restore, so the log has no gap or duplicate.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from liqcli.analytics.orderflow import OrderFlow
from liqcli.core.schemas import TS, DatasetSpec, register
from liqcli.core.timeutil import iso_ms, now_ms
from liqcli.errors import UsageError
from liqcli.trading.costs import Fees
from liqcli.trading.engine import Engine
from liqcli.trading.model import Position
from liqcli.trading.signal import KellyAdviser, VolTargetAdviser
from liqcli.trading.sim import SimBroker
from liqcli.trading.strategies.cascade_mode import DEFAULT_CASCADE_LEVERAGE, CascadeMode
from liqcli.trading.strategies.seed import (
    DEFAULT_LEVERAGE,
    ENTRY_TYPES,
    SeedMode,
    _Entry,
    order_flow_observer,
)

log = logging.getLogger("liq.paper")

MODES = ("0", "1", "2", "3", "cascade")
DYNAMIC = ("off", "rules", "kelly", "vol_target")
STATE_EVERY_MS = 1_000

PAPER_TRADES = register(
    DatasetSpec(
        "paper_trades",
        {
            "session": pl.String(),
            "mode": pl.String(),
            "trade_id": pl.Int64(),
            "symbol": pl.String(),
            "side": pl.String(),
            "ts": TS,  # exit time
            "entry_ts": TS,
            "exit_ts": TS,  # = ts, by its CONTRACT.md name (as in backtest_trades)
            "entry_price": pl.Float64(),
            "exit_price": pl.Float64(),
            "qty": pl.Float64(),
            "leverage": pl.Float64(),
            "suggested_leverage": pl.Float64(),
            "leverage_reason": pl.String(),
            "optimal_leverage": pl.Float64(),
            "mae": pl.Float64(),
            "fees": pl.Float64(),
            "funding": pl.Float64(),
            "pnl": pl.Float64(),
            "roi": pl.Float64(),
            "exit_reason": pl.String(),
            "signal": pl.String(),
            "confidence": pl.Float64(),
            "risk_level": pl.String(),
            "vpin": pl.Float64(),
            "spread_bps": pl.Float64(),
            "depth": pl.Float64(),
            "balance_after": pl.Float64(),
        },
        key=("session", "mode", "trade_id"),
        partition_by=("session", "mode"),
    )
)
PAPER_STATE = register(
    DatasetSpec(
        "paper_state",
        {
            "session": pl.String(),
            "mode": pl.String(),
            "ts": TS,  # updated_ts: the event time of this state
            "symbol": pl.String(),
            "started_ts": TS,
            "balance": pl.Float64(),
            "trades": pl.Int64(),
            "wins": pl.Int64(),
            "fees": pl.Float64(),
            "funding": pl.Float64(),
            "realized_pnl": pl.Float64(),
            "position": pl.String(),  # JSON: qty, entry_price, leverage, margin, opened_ts, ... or null
            "entry": pl.String(),  # JSON: the inputs the open position was opened on, or null
            "blocks": pl.Int64(),
            "market": pl.String(),  # JSON: mark, last trade, funding rate and next funding time
        },
        key=("session", "mode"),
        partition_by=("session",),
    )
)


@dataclass(frozen=True)
class PaperConfig:
    symbol: str
    modes: tuple[str, ...] = MODES
    capital: float = 10_000.0
    leverage: dict[str, float] = field(
        default_factory=dict
    )  # per mode; defaults 5/3/3/5, cascade 3
    dynamic: str = "off"
    fees: Fees = field(default_factory=Fees)
    slippage_bps: float = 2.0
    session: str = ""
    vpin_bucket_usd: float = 50_000.0
    entry: str = "market"  # the seed modes' entry orders: market or post-only
    entry_offset_bps: float = 0.0  # post-only: improve the touch toward the mid by this much

    def validate(self) -> None:
        unknown = [m for m in self.modes if m not in MODES]
        if unknown:
            raise UsageError(f"unknown mode {unknown[0]!r}: choose from {', '.join(MODES)}")
        if not self.modes or len(set(self.modes)) != len(self.modes):
            raise UsageError("--modes: give each mode once, e.g. 0,1,2,3,cascade")
        if not (self.capital > 0 and math.isfinite(self.capital)):
            raise UsageError(f"--capital must be positive, got {self.capital:g}")
        for mode, lev in self.leverage.items():
            if mode not in self.modes:
                raise UsageError(f"--leverage {mode}={lev:g}: mode {mode} is not in --modes")
            if not 1 <= lev <= 125:
                raise UsageError(f"--leverage {mode}={lev:g}: leverage must be between 1 and 125")
        if self.dynamic not in DYNAMIC:
            raise UsageError(f"invalid --dynamic-leverage {self.dynamic!r}: {', '.join(DYNAMIC)}")
        if not 0 <= self.slippage_bps < 1000:
            raise UsageError("--slippage-bps must be between 0 and 1000")
        if self.entry not in ENTRY_TYPES:
            raise UsageError(f"invalid --entry {self.entry!r}: {' or '.join(ENTRY_TYPES)}")
        if not 0 <= self.entry_offset_bps < 1000:
            raise UsageError("--entry-offset-bps must be between 0 and 1000")
        if self.entry_offset_bps and self.entry != "post-only":
            raise UsageError("--entry-offset-bps applies to --entry post-only")
        if self.session and not all(c.isalnum() or c in "-_." for c in self.session):
            raise UsageError(f"invalid --session {self.session!r}: letters, digits, - _ . only")

    def leverage_of(self, mode: str) -> float:
        default = DEFAULT_CASCADE_LEVERAGE if mode == "cascade" else DEFAULT_LEVERAGE[int(mode)]
        return float(self.leverage.get(mode, default))

    @property
    def liquidations(self) -> bool:
        """Whether the source must carry the liquidation stream (forceOrder)."""
        return "cascade" in self.modes


def parse_leverage(text: str | None) -> dict[str, float]:
    """``'0=5,3=10'`` -> {"0": 5.0, "3": 10.0}."""
    out: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        mode, sep, value = part.partition("=")
        try:
            out[mode.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not mode.strip():
            raise UsageError(f"invalid --leverage {text!r}: expected MODE=N,..., e.g. 0=5,1=3")
    return out


class PaperSession:
    """The competition: engine, shared features, one mode and broker per competitor."""

    def __init__(
        self,
        config: PaperConfig,
        *,
        emit: Callable[[dict], None] | None = None,
        engine: Engine | None = None,
        flow: OrderFlow | None = None,
    ) -> None:
        """``engine`` / ``flow``: share another session's (``liq backtest --compare-leverage``
        runs every leverage engine on one Engine and one OrderFlow: the features depend on the
        market events alone). A session given ``flow`` leaves feeding it to its owner."""
        self.config = config
        self.session = config.session
        self.engine = engine if engine is not None else Engine(emit=self._record)
        if flow is None:
            flow = OrderFlow(vpin_bucket_usd=config.vpin_bucket_usd)
            self.engine.observers.append(order_flow_observer(config.symbol, flow))
        self.flow = flow
        self.modes: dict[str, SeedMode] = {}
        self.brokers: dict[str, SimBroker] = {}
        self.trade_ids: dict[str, int] = {}
        self.wins: dict[str, int] = {}
        self.started_ts: int | None = None
        self.closed: list[dict] = []  # closes since the last take_closed()
        self._emit = emit
        self._last_state_ts = 0
        for mode in config.modes:
            adviser = (
                KellyAdviser()
                if config.dynamic == "kelly"
                else VolTargetAdviser()
                if config.dynamic == "vol_target"
                else None
            )
            strategy = (
                CascadeMode(
                    config.symbol,
                    self.flow,
                    leverage=config.leverage_of(mode),
                    dynamic=config.dynamic,
                    adviser=adviser,
                )
                if mode == "cascade"
                else SeedMode(
                    int(mode),
                    config.symbol,
                    self.flow,
                    leverage=config.leverage_of(mode),
                    dynamic=config.dynamic,
                    adviser=adviser,
                    entry=config.entry,
                    entry_offset_bps=config.entry_offset_bps,
                )
            )
            broker = SimBroker(config.capital, fees=config.fees, slippage_bps=config.slippage_bps)
            self.modes[mode] = strategy
            self.brokers[mode] = broker
            self.trade_ids[mode] = 0
            self.wins[mode] = 0
            self.engine.add(strategy, broker, name=mode, emit=self._record)

    # -- running -------------------------------------------------------------------------------

    def step(self, event: Any) -> None:
        if self.started_ts is None:
            self.started_ts = event.ts
        self.engine.step(event)

    def _record(self, record: dict) -> None:
        mode = record.get("mode")
        if record.get("type") == "close" and mode in self.trade_ids:
            record["trade_id"] = self.trade_ids[mode]
            self.trade_ids[mode] += 1
            if record["pnl"] > 0:
                self.wins[mode] += 1
            record["balance_after"] = self.brokers[mode].account.balance
            record["session"] = self.session
            self.closed.append(record)
        if self._emit is not None:
            self._emit(record)

    def take_closed(self) -> list[dict]:
        closed, self.closed = self.closed, []
        return closed

    def state_due(self) -> bool:
        return self.engine.now - self._last_state_ts >= STATE_EVERY_MS

    # -- state ---------------------------------------------------------------------------------

    def state_rows(self) -> list[dict]:
        self._last_state_ts = self.engine.now
        rows = []
        for mode, broker in self.brokers.items():
            pos = broker.position(self.config.symbol)
            strategy = self.modes[mode]
            rows.append(
                {
                    "session": self.session,
                    "mode": mode,
                    "ts": self.engine.now,
                    "symbol": self.config.symbol,
                    "started_ts": self.started_ts or self.engine.now,
                    "balance": broker.account.balance,
                    "trades": self.trade_ids[mode],
                    "wins": self.wins[mode],
                    "fees": sum(t["fees"] for t in strategy.closed)
                    + (pos.fees if pos.qty else 0.0),
                    "funding": sum(t["funding"] for t in strategy.closed)
                    + (pos.funding if pos.qty else 0.0),
                    "realized_pnl": sum(t["pnl"] for t in strategy.closed),
                    "position": json.dumps(_position_json(pos)) if pos.qty else None,
                    "entry": json.dumps(asdict(strategy.entry))
                    if pos.qty and strategy.entry
                    else None,
                    "blocks": strategy.stats.blocks,
                    "market": json.dumps(broker.market_state(self.config.symbol)),
                }
            )
        return rows

    def restore(self, states: pl.DataFrame, trades: pl.DataFrame) -> int:
        """Balances, positions and trade counters from a stored session; returns modes restored."""
        restored = 0
        for row in states.iter_rows(named=True):
            mode = row["mode"]
            if mode not in self.brokers:
                continue
            broker = self.brokers[mode]
            broker.account.balance = row["balance"]
            self.trade_ids[mode] = row["trades"]
            self.wins[mode] = row["wins"]
            strategy = self.modes[mode]
            strategy.stats.blocks = row["blocks"] or 0
            if row["market"]:
                broker.restore_market(self.config.symbol, json.loads(row["market"]))
            later = trades.filter(
                (pl.col("mode") == mode) & (pl.col("trade_id") >= row["trades"])
            ).sort("trade_id")
            if row["position"] and later.height == 0:
                broker.restore_position(self.config.symbol, json.loads(row["position"]))
                if row["entry"]:
                    strategy.entry = _Entry(**json.loads(row["entry"]))
            for trade in later.iter_rows(named=True):
                # Closed after the last state was written: the trade row is the truth.
                broker.account.balance = trade["balance_after"]
                self.trade_ids[mode] = trade["trade_id"] + 1
                self.wins[mode] += 1 if trade["pnl"] > 0 else 0
            prior = trades.filter(pl.col("mode") == mode).sort("trade_id")
            strategy.closed = [dict(t) for t in prior.iter_rows(named=True)]
            if row["started_ts"] is not None:
                started = row["started_ts"]
                started = (
                    int(started.timestamp() * 1000) if hasattr(started, "timestamp") else started
                )
                self.started_ts = (
                    started if self.started_ts is None else min(self.started_ts, started)
                )
            restored += 1
        return restored

    # -- views ---------------------------------------------------------------------------------

    def leaderboard(self) -> list[dict]:
        symbol = self.config.symbol
        mark = self.flow.snapshot.mid
        rows = []
        for mode, broker in self.brokers.items():
            pos = broker.position(symbol)
            unrealized = pos.unrealized(mark) if pos.qty and mark else 0.0
            strategy = self.modes[mode]
            closed = strategy.closed
            trades = self.trade_ids[mode]
            rows.append(
                {
                    "mode": mode,
                    "balance": broker.account.balance,
                    "equity": broker.account.balance + unrealized,
                    "realized_pnl": sum(t["pnl"] for t in closed),
                    "unrealized_pnl": unrealized,
                    "fees": sum(t["fees"] for t in closed) + (pos.fees if pos.qty else 0.0),
                    "funding": sum(t["funding"] for t in closed)
                    + (pos.funding if pos.qty else 0.0),
                    "trades": trades,
                    "wins": self.wins[mode],
                    "win_rate": self.wins[mode] / trades if trades else None,
                    "leverage": strategy.leverage
                    if strategy.dynamic == "off"
                    else (strategy.entry.leverage if strategy.entry else None),
                    "position": None
                    if not pos.qty
                    else {
                        "side": pos.side,
                        "qty": abs(pos.qty),
                        "entry_price": pos.entry_price,
                        "liquidation_price": broker.liquidation_price(symbol),
                    },
                    "blocks": strategy.stats.blocks,
                    "last_block": strategy.stats.last_block,
                }
            )
        rows.sort(key=lambda r: -r["equity"])
        for rank, row in enumerate(rows, 1):
            row["rank"] = rank
        return rows

    def summary(self) -> dict:
        return {
            "symbol": self.config.symbol,
            "session": self.session,
            "start": iso_ms(self.started_ts) if self.started_ts else None,
            "end": iso_ms(self.engine.now) if self.engine.now else None,
            "events": self.engine.events,
            "modes": self.leaderboard(),
        }


def _position_json(pos: Position) -> dict:
    return {
        "qty": pos.qty,
        "entry_price": pos.entry_price,
        "leverage": pos.leverage,
        "margin": pos.margin,
        "opened_ts": pos.opened_ts,
        "fees": pos.fees,
        "funding": pos.funding,
    }


# ------------------------------------------------------------------------------ storage


def _times(frame: pl.DataFrame, *names: str) -> pl.DataFrame:
    return frame.with_columns(
        pl.col(n).cast(pl.Int64).cast(pl.Datetime("ms", "UTC")) for n in names
    )


def write_trades(store: Any, rows: Sequence[dict]) -> None:
    if not rows:
        return
    columns = list(PAPER_TRADES.schema)
    frame = pl.DataFrame(
        [{c: r.get(c) for c in columns} | {"ts": r["exit_ts"]} for r in rows],
        schema={
            c: (pl.Int64 if isinstance(t, pl.Datetime) else t)
            for c, t in PAPER_TRADES.schema.items()
        },
    )
    store.write("paper_trades", _times(frame, "ts", "entry_ts", "exit_ts"))


def write_state(store: Any, rows: Sequence[dict]) -> None:
    frame = pl.DataFrame(
        rows,
        schema={
            c: (pl.Int64 if isinstance(t, pl.Datetime) else t)
            for c, t in PAPER_STATE.schema.items()
        },
    )
    store.write("paper_state", _times(frame, "ts", "started_ts"))


def load_session(store: Any, session: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    states = store.scan("paper_state", session=session).collect()
    trades = store.scan("paper_trades", session=session).collect()
    return states, trades


def session_range(store: Any, name: str) -> tuple[int, int]:
    """[start, end) in ms of a stored session (its paper_state rows): what ``--replay NAME`` and
    ``liq backtest --data session:NAME`` run again."""
    from liqcli.errors import LiqError

    states = store.scan("paper_state", session=name).collect()
    if states.height == 0:
        raise LiqError(
            f"no paper session {name!r} stored (paper_state): record one with "
            f"`liq paper SYMBOL --session {name} --record`"
        )
    start = int(states["started_ts"].min().timestamp() * 1000)
    end = int(states["ts"].max().timestamp() * 1000) + 1
    return start, end


def replay_session_name(store: Any, replay: str, session: str | None) -> str:
    """The session a ``--replay NAME`` run stores into: a new one each time (NAME-replay,
    NAME-replay-2, ...). Resuming a stored session would run the recording again on top of the
    balances and trades it left (UsageError for an explicit ``--session`` that is stored)."""
    stored = {p.get("session") for p in store.partitions("paper_state")}
    if session is not None:
        if session in stored:
            raise UsageError(
                f"--session {session!r} is stored already: a replay starts a new session "
                "(name another, or drop --session)"
            )
        return session
    name, n = f"{replay}-replay", 1
    while name in stored:
        n += 1
        name = f"{replay}-replay-{n}"
    return name


def new_session_name(now: int | None = None) -> str:
    return "paper-" + iso_ms(now or now_ms())[:19].replace(":", "").replace("-", "").replace(
        "T", "-"
    )


# ------------------------------------------------------------------------------ the run


@dataclass
class PaperRun:
    session: PaperSession
    store: Any
    stored_trades: int = 0
    state_writes: int = 0
    restored: int = 0

    def save(self, *, closes_only: bool = False) -> None:
        closed = self.session.take_closed()
        if closed:
            write_trades(self.store, closed)
            self.stored_trades += len(closed)
        if closed or (not closes_only and self.session.engine.events):
            write_state(self.store, self.session.state_rows())
            self.state_writes += 1


def open_paper(
    config: PaperConfig, data_dir: Path, *, emit: Callable[[dict], None] | None = None
) -> PaperRun:
    """The session, resumed from the store when ``config.session`` was stored before."""
    from liqcli.store.parquet import Store

    store = Store(data_dir)
    run = PaperRun(PaperSession(config, emit=emit), store)
    states, trades = load_session(store, config.session)
    if states.height:
        run.restored = run.session.restore(states, trades)
        log.warning("session %s: resumed %d modes from the store", config.session, run.restored)
    return run


async def drive(
    run: PaperRun,
    source: Any,
    *,
    duration_s: float | None = None,
    on_batch: Callable[[PaperSession], None] | None = None,
) -> None:
    """Feed ``source`` to the session until it ends, ``duration_s`` of event time passes, or the
    task is cancelled (Ctrl-C, SIGTERM): closes and state are saved in every case."""
    session = run.session
    deadline = None
    try:
        async for batch in source.batches():
            for event in batch:
                session.step(event)
                if deadline is None and duration_s is not None:
                    deadline = event.ts + int(duration_s * 1000)
            if session.closed or session.state_due():
                run.save()
            if on_batch is not None:
                on_batch(session)
            if deadline is not None and session.engine.now >= deadline:
                break
    finally:
        session.engine.stop()  # a working post-only entry is cancelled (never resumed)
        run.save()
