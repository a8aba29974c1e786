"""``liq mm``: the market-making strategy on the live Backpack book, with the live broker or the
SimBroker (``--paper``), its records (jsonl events, ``mm_fills``, ``mm_state``) and its safety.

Safety: every exit path - end of ``--duration``, Ctrl-C, SIGTERM/SIGHUP, an exception, the broker
failing closed, market data lost for longer than ``market_grace_s`` - runs :meth:`MMRun.close`
in a ``finally``: a cancel-all on the venue, verified, within ``close_timeout_s``. Start-up
cancels what a crashed run left (``BackpackBroker.start``). Keys come from the caller (env or
config file), never from here, and never reach a log line or error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from liqcli.core.events import BookSnapshot, BookTop
from liqcli.core.schemas import TS, DatasetSpec, register
from liqcli.errors import LiqError, UsageError
from liqcli.trading.costs import Fees
from liqcli.trading.engine import Engine
from liqcli.trading.model import Fill
from liqcli.trading.sim import SimBroker
from liqcli.trading.strategies.market_maker import MarketMaker, MarketRules, MMParams
from liqcli.trading.strategy import Context

log = logging.getLogger("liq.mm")

MM_FILLS = register(
    DatasetSpec(
        "mm_fills",
        {
            "exchange": pl.String(),
            "symbol": pl.String(),
            "fill_id": pl.String(),
            "ts": TS,
            "side": pl.String(),
            "price": pl.Float64(),
            "qty": pl.Float64(),
            "fee": pl.Float64(),
            "fee_asset": pl.String(),
            "order_id": pl.String(),
            "liquidity": pl.String(),
            "session": pl.String(),
            "tag": pl.String(),
            "realized_pnl": pl.Float64(),
            "paper": pl.Boolean(),
        },
        key=("exchange", "symbol", "fill_id"),
        partition_by=("exchange", "symbol"),
    )
)
MM_STATE = register(
    DatasetSpec(
        "mm_state",
        {
            "exchange": pl.String(),
            "symbol": pl.String(),
            "session": pl.String(),
            "ts": TS,
            "position": pl.Float64(),
            "entry_price": pl.Float64(),
            "target_position": pl.Float64(),
            "max_position": pl.Float64(),
            "mid": pl.Float64(),
            "realized_pnl": pl.Float64(),
            "unrealized_pnl": pl.Float64(),
            "fees": pl.Float64(),
            "open_orders": pl.Int64(),
            "orders": pl.String(),  # JSON list of [side, price, qty]
            "fills": pl.Int64(),
            "status": pl.String(),
        },
        key=("exchange", "symbol", "session", "ts"),
        partition_by=("exchange", "symbol"),
    )
)


@dataclass(frozen=True, slots=True)
class Tick:
    """The wall clock (venue-adjusted), so timers and staleness run on a quiet book too."""

    ts: int


@dataclass
class MMConfig:
    exchange: str
    params: MMParams
    paper: bool = False
    session: str = ""
    capital: float = 10_000.0  # paper balance
    fees: Fees = field(default_factory=Fees)
    state_every_s: float = 10.0
    market_grace_s: float = 30.0
    close_timeout_s: float = 10.0

    @property
    def symbol(self) -> str:
        return self.params.symbol


def new_session_name() -> str:
    return time.strftime("mm-%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:4]


class _RecordingMM(MarketMaker):
    """The strategy, with every fill also handed to the run's records."""

    def __init__(self, params: MMParams, rules: MarketRules, on_fill: Callable[[Fill], None]):
        super().__init__(params, rules)
        self._record_fill = on_fill

    def on_fill(self, fill: Fill, ctx: Context) -> None:
        super().on_fill(fill, ctx)
        if fill.symbol == self.p.symbol:
            self._record_fill(fill)


class MMRun:
    """The engine, the strategy, the broker and the records of one session."""

    def __init__(
        self,
        cfg: MMConfig,
        rules: MarketRules,
        broker: Any,
        *,
        store: Any = None,
        emit: Callable[[dict], None] | None = None,
        wall_ms: Callable[[], int] | None = None,
    ) -> None:
        self.cfg = cfg
        self.rules = rules
        self.broker = broker
        self.store = store
        self._emit = emit
        self._wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self.session = cfg.session or new_session_name()
        self.engine = Engine(emit=self._record)
        self.strategy = _RecordingMM(cfg.params, rules, self._on_fill)
        self.ctx = self.engine.add(self.strategy, broker, name="mm")
        self.recent_fills: deque[dict] = deque(maxlen=6)
        self._fill_rows: list[dict] = []
        self._state_rows: list[dict] = []
        self._fill_seq = 0
        self._last_quote: tuple | None = None
        self._last_pos: float | None = None
        self._last_state_ms = 0
        self._last_flush_ms = 0
        self._last_book_ms = 0
        self._last_top: BookTop | None = None
        self.status = "starting"
        self.started_ms = self._wall_ms()

    # -- records --------------------------------------------------------------------------------

    def _record(self, record: dict) -> None:
        record.pop("strategy", None)
        if self._emit is not None:
            self._emit({"exchange": self.cfg.exchange, "symbol": self.cfg.symbol, **record})

    def _on_fill(self, fill: Fill) -> None:
        meta = getattr(self.broker, "fill_meta", {}).pop(
            f"{fill.order_id}|{fill.ts}|{fill.qty}|{fill.price}", None
        )
        self._fill_seq += 1
        row = {
            "exchange": self.cfg.exchange,
            "symbol": self.cfg.symbol,
            # paper fills: unique across runs of one --session name (the key is upserted)
            "fill_id": meta["fill_id"] if meta else f"paper-{self.started_ms}-{self._fill_seq}",
            "ts": fill.ts,
            "side": fill.side.value,
            "price": fill.price,
            "qty": fill.qty,
            "fee": fill.fee,
            "fee_asset": meta["fee_asset"] if meta else "USDC",
            "order_id": meta["order_id"] if meta else fill.order_id,
            "liquidity": fill.liquidity.value,
            "session": self.session,
            "tag": fill.tag,
            "realized_pnl": fill.realized_pnl,
            "paper": self.cfg.paper,
        }
        self._fill_rows.append(row)
        self.recent_fills.appendleft(row)

    # -- stepping ---------------------------------------------------------------------------------

    def step(self, event: Any) -> None:
        if isinstance(event, (BookTop, BookSnapshot)):
            self._last_book_ms = self._wall_ms()
            if isinstance(event, BookTop):
                self._last_top = event
        self.engine.step(event)
        self._after()

    def tick(self, *, market_alive: bool = True) -> None:
        """A clock step. While the market connection is healthy but the book simply does not
        change, the last top is re-stated each second so a quiet book is not taken for stale."""
        now = self._wall_ms() + getattr(getattr(self.broker, "rest", None), "clock_offset_ms", 0)
        top = self._last_top
        if market_alive and top is not None and self._wall_ms() - self._last_book_ms >= 1000:
            self._last_book_ms = self._wall_ms()
            self.engine.step(BookTop(top.exchange, top.symbol, max(now, self.engine.now),
                                     top.bid_price, top.bid_qty, top.ask_price, top.ask_qty,
                                     top.update_id))  # fmt: skip
        else:
            self.engine.step(Tick(max(now, self.engine.now)))
        self._after()
        if self._wall_ms() - self._last_state_ms >= self.cfg.state_every_s * 1000:
            self.snapshot_state()
        elif self._fill_rows and self._wall_ms() - self._last_flush_ms >= 1000:
            self.flush()  # fills reach the store within a second (a kill -9 loses at most that)

    def _after(self) -> None:
        s = self.strategy
        quotes = tuple(sorted(
            (w.order.side.value, w.level, w.order.price, w.order.qty)
            for w in s.working.values() if w.order.tag == "quote"
        ))  # fmt: skip
        if quotes != self._last_quote:
            self._last_quote = quotes
            if quotes:
                self._record({"type": "quote", "ts": self.engine.now, **self.quote_view()})
        pos = self.broker.position(self.cfg.symbol)
        if pos.qty != self._last_pos:
            self._last_pos = pos.qty
            self._record({"type": "position", "ts": self.engine.now, "qty": pos.qty,
                          "entry_price": pos.entry_price, **self.pnl()})  # fmt: skip

    # -- views ----------------------------------------------------------------------------------

    def mid(self) -> float | None:
        return self.engine.market.mid(self.cfg.symbol)

    def pnl(self) -> dict[str, float]:
        pos = self.broker.position(self.cfg.symbol)
        mid = self.mid()
        unrealized = pos.unrealized(mid) if pos.qty and mid else 0.0
        st = self.strategy.stats
        return {"realized_pnl": st.realized, "unrealized_pnl": unrealized, "fees": st.fees,
                "total_pnl": st.realized + unrealized - st.fees}  # fmt: skip

    def quote_view(self) -> dict[str, Any]:
        p = self.cfg.params
        mid = self.mid()
        out: dict[str, Any] = {"mid": mid}
        if mid:
            out["raw_bid"] = mid * (1 - p.spread / 200)
            out["raw_ask"] = mid * (1 + p.spread / 200)
        bids = sorted(((w.order.price, w.order.qty) for w in self.strategy.working.values()
                       if w.order.tag == "quote" and w.order.side.value == "buy"), reverse=True)  # fmt: skip
        asks = sorted((w.order.price, w.order.qty) for w in self.strategy.working.values()
                      if w.order.tag == "quote" and w.order.side.value == "sell")  # fmt: skip
        out["bid"] = bids[0][0] if bids else None
        out["ask"] = asks[0][0] if asks else None
        out["bids"] = bids
        out["asks"] = asks
        return out

    def snapshot_state(self, status: str | None = None) -> dict:
        self._last_state_ms = self._wall_ms()
        pos = self.broker.position(self.cfg.symbol)
        orders = [
            [o.side.value, o.price, o.remaining] for o in self.broker.open_orders(self.cfg.symbol)
        ]
        row = {
            "exchange": self.cfg.exchange, "symbol": self.cfg.symbol, "session": self.session,
            "ts": self._wall_ms(), "position": pos.qty, "entry_price": pos.entry_price,
            "target_position": self.cfg.params.target_position,
            "max_position": self.cfg.params.max_position, "mid": self.mid(),
            **{k: v for k, v in self.pnl().items() if k != "total_pnl"},
            "open_orders": len(orders), "orders": _json(orders),
            "fills": self.strategy.stats.fills, "status": status or self.status,
        }  # fmt: skip
        self._state_rows.append(row)
        self.flush()
        return row

    def flush(self) -> None:
        self._last_flush_ms = self._wall_ms()
        if self.store is None:
            return
        for name, rows in (("mm_fills", self._fill_rows), ("mm_state", self._state_rows)):
            if rows:
                df = pl.DataFrame(rows, schema_overrides={"ts": pl.Int64})
                df = df.with_columns(
                    pl.from_epoch("ts", time_unit="ms").dt.replace_time_zone("UTC")
                )
                self.store.write(name, df)
                rows.clear()

    def summary(self) -> dict[str, Any]:
        pos = self.broker.position(self.cfg.symbol)
        st = self.strategy.stats
        return {"exchange": self.cfg.exchange, "symbol": self.cfg.symbol, "session": self.session,
                "paper": self.cfg.paper, "position": pos.qty, "entry_price": pos.entry_price,
                **self.pnl(), "fills": st.fills, "orders": st.submits, "cancels": st.cancels,
                "post_only_rejects": st.post_only_rejects, "stops": st.stops,
                "halted": st.halted or getattr(self.broker, "halted", ""),
                "status": self.status}  # fmt: skip


def _json(value: Any) -> str:
    import orjson

    return orjson.dumps(value).decode()


def rules_from_market(market: Any) -> MarketRules:
    return MarketRules(float(market.tick_size), float(market.step_size), float(market.min_quantity))


class Waker:
    """set() from anywhere, wait(timeout) in the loop. (Not ``wait_for(Event.wait())``: on
    Python 3.11 a cancellation that lands as the event fires can be lost, and a Ctrl-C with it.)"""

    def __init__(self) -> None:
        self._flag = False
        self._fut: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._flag = True
        if self._fut is not None and not self._fut.done():
            self._fut.set_result(None)

    def clear(self) -> None:
        self._flag = False

    def is_set(self) -> bool:
        return self._flag

    async def wait(self, timeout: float) -> None:
        if self._flag or timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        fut = self._fut = loop.create_future()
        handle = loop.call_later(timeout, lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            handle.cancel()
            self._fut = None


async def drive(
    run: MMRun,
    source: Any,
    *,
    duration_s: float | None = None,
    stop: asyncio.Event | None = None,
    on_tick: Callable[[MMRun], None] | None = None,
    tick_s: float = 0.1,
) -> str:
    """Feed market data and clock ticks to the run until the duration ends, ``stop`` is set, or
    something fails (raised). Returns why it ended."""
    loop = asyncio.get_running_loop()
    wake = Waker()
    if hasattr(run.broker, "changed"):
        run.broker.changed = wake
    pending: list[Any] = []

    async def pump() -> None:
        async for batch in source.batches():
            pending.extend(batch)
            wake.set()

    pump_task = asyncio.create_task(pump(), name="liq-mm-market")
    deadline = loop.time() + duration_s if duration_s else None
    down_since: float | None = None
    status = next(iter(source.statuses.values()))
    run.status = "quoting"
    try:
        while True:
            if stop is not None and stop.is_set():
                return "signal"
            if deadline is not None and loop.time() >= deadline:
                return "duration"
            if pump_task.done():
                pump_task.result()  # raises what stopped the market data
                raise LiqError(f"{run.cfg.exchange}: market data ended")
            halted = getattr(run.broker, "halted", "")
            if halted:
                raise LiqError(f"{run.cfg.exchange}: stopped quoting: {halted}")
            if run.strategy.stats.halted:
                raise LiqError(f"stopped quoting: {run.strategy.stats.halted}")
            alive = status.state == "connected"
            if alive:
                down_since = None
            else:
                down_since = down_since or loop.time()
                if loop.time() - down_since > run.cfg.market_grace_s:
                    raise LiqError(f"{run.cfg.exchange}: market data down for more than "
                                   f"{run.cfg.market_grace_s:g}s ({status.last_error or 'no connection'})")  # fmt: skip
            await wake.wait(tick_s if deadline is None else min(tick_s, deadline - loop.time()))
            wake.clear()
            events, pending[:] = list(pending), []
            for event in events:
                run.step(event)
            run.tick(market_alive=alive)
            if on_tick is not None:
                on_tick(run)
    finally:
        pump_task.cancel()
        await asyncio.gather(pump_task, return_exceptions=True)


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event, reasons: list[str]):
    """SIGTERM and SIGHUP end the run like ``--duration`` does (orders cancelled on the way out)."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            loop.add_signal_handler(sig, lambda s=sig: (reasons.append(s.name), stop.set()))
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def run_mm(
    cfg: MMConfig,
    *,
    signer: Any = None,
    store: Any = None,
    emit: Callable[[dict], None] | None = None,
    on_tick: Callable[[MMRun], None] | None = None,
    duration_s: float | None = None,
    on_start: Callable[[MMRun], None] | None = None,
    broker_options: dict | None = None,
) -> dict[str, Any]:
    """One ``liq mm`` session, start to (clean) end."""
    from liqcli.exchanges.backpack.rest import backpack_rest
    from liqcli.sources.backpack_market import BackpackMarketSource

    if cfg.exchange != "backpack":
        raise UsageError(f"--exchange {cfg.exchange}: only backpack is supported so far")
    if not cfg.paper and signer is None:
        raise UsageError(
            "live market making needs Backpack keys: set LIQ_BACKPACK_API_KEY and "
            "LIQ_BACKPACK_API_SECRET (or api_key/api_secret under [mm.backpack] in the config "
            "file), or add --paper"
        )
    rest = backpack_rest(None if cfg.paper else signer, timeout=5.0, max_retries=2)
    source = None
    broker: Any = None
    run: MMRun | None = None
    problems: list[str] = []
    stop = asyncio.Event()
    reasons: list[str] = []
    try:
        with stop_on_signals(stop, reasons):
            await rest.sync_time()
            market = await rest.market(cfg.symbol)
            rules = rules_from_market(market)
            if cfg.paper:
                broker = SimBroker(cfg.capital, fees=cfg.fees, slippage_bps=0.0)
            else:
                from liqcli.exchanges.backpack.broker import BackpackBroker

                broker = BackpackBroker(
                    rest, cfg.symbol, market, max_position=cfg.params.max_position,
                    **(broker_options or {}),
                )  # fmt: skip
                await broker.start()  # cancels what a crashed run left
            run = MMRun(cfg, rules, broker, store=store, emit=emit)
            source = BackpackMarketSource([cfg.symbol], rest=rest)
            if on_start is not None:
                on_start(run)
            why = await drive(run, source, duration_s=duration_s, stop=stop, on_tick=on_tick)
            if why == "signal":
                run.status = f"stopped by {reasons[0]}"
            else:
                run.status = "ended"
    except asyncio.CancelledError:  # Ctrl-C (or a caller's cancel): cleaned up below
        if run is not None:
            run.status = "interrupted"
        raise
    except Exception as exc:
        if run is not None:
            run.status = f"failed: {exc}"[:200]
        raise
    finally:
        if run is not None:
            with contextlib.suppress(Exception):
                run.engine.stop()
        if broker is not None and not cfg.paper:
            problems = await broker.close(timeout_s=cfg.close_timeout_s)
        if run is not None:
            if cfg.paper:
                broker.cancel_all(cfg.symbol)
            try:
                run.snapshot_state(status=run.status if run.status != "quoting" else "failed")
            except LiqError as exc:
                problems.append(str(exc))
            if emit is not None:
                emit({"exchange": cfg.exchange, "symbol": cfg.symbol, "type": "stop",
                      "ts": run.engine.now, "reason": run.status, "resumable": False})  # fmt: skip
        if source is not None:
            await source.aclose()
        await rest.http.aclose()
        for problem in problems:
            log.error("%s", problem)
    if problems:
        raise LiqError("; ".join(problems))
    assert run is not None
    return run.summary()
