"""A live Backpack broker for the synchronous Engine: the Broker protocol on top of the async REST
client and the signed private streams.

The strategy never blocks. ``submit()`` records the order (id = its uint32 ``clientId``, status
NEW) and queues the request; ``cancel()`` / ``cancel_all()`` forget the orders at once and queue
the cancels; one worker task sends the queue in order (consecutive orders go as one batch),
under the venue's request budget. Answers and the private streams update the same records:
``account.orderUpdate.<symbol>`` delivers fills as they happen (``take_fills()``), rejections
(e.g. post-only crossing, ``take_rejections()``) and cancels; ``account.positionUpdate`` the venue's
position, checked against the one built from fills. Every change sets ``changed`` so the caller
steps the engine at once.

``--max-position`` holds in flight too: an order that opens exposure is sent only when the held
position plus every order of that side the venue may still fill (acknowledged, in flight, or
cancelled but not yet confirmed) plus this one stays inside it; otherwise it waits (still open
to the strategy) until cancels are confirmed.

Fail closed (``halted`` set, everything cancelled, no new order sent): a request whose outcome is
unknown (timeout, 5xx on a write), the private stream down longer than ``stream_grace_s``, a
refused private subscription, an order whose fate stays unknown past ``unknown_grace_s`` (cancel
answered "not found" and no fill or cancel event follows), or the venue's position differing from
the fills' for longer than ``mismatch_grace_s``. After a private-stream reconnect (events may be
lost) every order is cancelled, the fills made meanwhile are fetched from the fill history
(``GET /wapi/v1/history/fills``, paged, from the last fill seen less an overlap) and applied as
stream fills (deduplicated by trade id), and only then is the venue's position read: it must equal
the one built from fills, or the history must have answered, else the broker halts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from liqcli.core.timeutil import now_ms
from liqcli.errors import ExchangeError, LiqError, NetworkError
from liqcli.exchanges.backpack import stream as bp
from liqcli.exchanges.backpack.auth import BackpackSigner
from liqcli.exchanges.backpack.rest import (
    BackpackRest,
    Market,
    OrderRequest,
    PostOnlyRejected,
    parse_error,
)
from liqcli.exchanges.ws import ReconnectingWebSocket, VenueStatus, WsTimings
from liqcli.trading.model import (
    Fill,
    Liquidity,
    Order,
    OrderSide,
    OrderStatus,
    OrderType,
    Position,
)

log = logging.getLogger("liq.backpack")
VENUE = "backpack"

# record states
QUEUED = "queued"  # waiting in the queue or parked by the max-position gate; never sent
SENDING = "sending"  # request in flight
LIVE = "live"  # acknowledged, may rest
CANCELLING = "cancelling"  # cancel wanted or in flight; may still fill
UNKNOWN = "unknown"  # the venue did not say what became of it; may still fill
DONE = "done"


@dataclass
class _Rec:
    order: Order
    client_id: int
    state: str = QUEUED
    venue_id: str | None = None
    venue_done_qty: float | None = None  # executed quantity the venue reported on a terminal answer
    want_cancel: bool = False
    covered: bool = False  # a queued cancel-all will take it once acknowledged
    unknown_since: float | None = None

    def exposure(self) -> float:
        """How much more of this order the venue may still fill."""
        if self.state == QUEUED:
            return 0.0
        if self.state == DONE:
            if self.venue_done_qty is None:
                return 0.0
            return max(self.venue_done_qty - self.order.filled_qty, 0.0)  # fills still in flight
        return self.order.remaining


@dataclass
class BrokerStats:
    requests: int = 0
    batches: int = 0
    rejections: int = 0
    fills: int = 0
    parked: int = 0
    resyncs: int = 0
    errors: list[str] = field(default_factory=list)


class _FreshSubscribe:
    """Subscription frames signed anew at every (re)connect: a signature expires with its window."""

    def __init__(self, streams: list[str], signer: BackpackSigner, rest: BackpackRest) -> None:
        self.streams, self.signer, self.rest = streams, signer, rest

    def __iter__(self):
        yield bp.subscribe(self.streams, self.signer.ws_signature(self.rest.timestamp()))

    def __len__(self) -> int:
        return 1


class BackpackBroker:
    def __init__(
        self,
        rest: BackpackRest,
        symbol: str,
        market: Market,
        *,
        max_position: float,
        ws_url: str | None = None,
        request_timeout_s: float = 5.0,
        stream_grace_s: float = 10.0,
        unknown_grace_s: float = 5.0,
        mismatch_grace_s: float = 3.0,
        clock: Callable[[], float] | None = None,
        wall_ms: Callable[[], int] = now_ms,
        timings: WsTimings | None = None,
        first_client_id: int | None = None,
        history_page: int = 1000,
        history_overlap_ms: int = 5000,
    ) -> None:
        self.rest = rest
        self.symbol = symbol
        self.market = market
        self.max_position = max_position
        self.ws_url = ws_url
        self.request_timeout_s = request_timeout_s
        self.stream_grace_s = stream_grace_s
        self.unknown_grace_s = unknown_grace_s
        self.mismatch_grace_s = mismatch_grace_s
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self._wall_ms = wall_ms
        self.timings = timings or WsTimings(stale_timeout=90.0, backoff_initial=0.5, backoff_max=5)
        self.stream_status = VenueStatus(VENUE)
        self.pos = Position(symbol)
        self.venue_qty: float | None = None
        self.fills: list[Fill] = []
        self.rejections: list[Order] = []
        self.halted = ""
        self.stats = BrokerStats()
        self.changed = asyncio.Event()
        self.fill_meta: dict[str, dict[str, Any]] = {}  # local fill key -> venue ids for storage
        self._recs: dict[str, _Rec] = {}  # local id (= str(clientId)) -> record
        self._by_venue: dict[str, _Rec] = {}
        self._queue: deque[tuple[str, Any]] = deque()
        self._parked: list[_Rec] = []
        self._work = asyncio.Event()
        self._seen_trades: set[int] = set()
        # fill-history recovery: fills from here on are this session's (venue clock, ms)
        self.history_page = history_page
        self.history_overlap_ms = history_overlap_ms
        self._floor_ms = 0
        self._last_fill_ms: int | None = None
        # clientId: a uint32 counter, started from the clock so a restart does not reuse ids
        self._next_cid = (
            first_client_id if first_client_id is not None else (wall_ms() // 10) % (2**31)
        )
        self._mismatch_since: float | None = None
        self._down_since: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ws: ReconnectingWebSocket | None = None
        self._reconnects_seen = 0
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, *, ready_timeout_s: float = 10.0) -> None:
        """Open the private stream, cancel what a crashed run left, read the position."""
        signer = self.rest.signer
        if signer is None:
            raise LiqError("backpack: live trading needs API keys")
        from liqcli.sources.backpack_market import protocol

        streams = [f"account.orderUpdate.{self.symbol}", f"account.positionUpdate.{self.symbol}"]
        proto = protocol(
            streams, self.ws_url, subscriptions=_FreshSubscribe(streams, signer, self.rest)
        )
        self._ws = ReconnectingWebSocket(proto, timings=self.timings, status=self.stream_status)
        self._tasks.append(asyncio.create_task(self._private(), name="liq-bp-private"))
        deadline = self._clock() + ready_timeout_s
        while self.stream_status.state != "connected":
            if self._clock() > deadline:
                raise LiqError(
                    f"backpack: private stream did not connect in {ready_timeout_s:g}s"
                    f" ({self.stream_status.last_error or 'no answer'})"
                )
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # let the venue take the subscription before any order
        if self.stream_status.errors:
            raise LiqError(f"backpack: private stream refused: {self.stream_status.last_error}")
        await self.cancel_everything()
        await self._read_position()
        self._floor_ms = self.rest.timestamp()  # earlier fills are in the position just read
        self._tasks.append(asyncio.create_task(self._worker(), name="liq-bp-orders"))
        self._tasks.append(asyncio.create_task(self._monitor(), name="liq-bp-monitor"))
        self._started = True

    async def close(self, *, timeout_s: float = 10.0) -> list[str]:
        """Cancel every order on the venue (bounded), then stop; returns what could not be done."""
        problems: list[str] = []
        for task in self._tasks[1:]:
            task.cancel()
        await asyncio.gather(*self._tasks[1:], return_exceptions=True)
        try:
            await _within(self.cancel_everything(verify=True), timeout_s)
        except (TimeoutError, LiqError) as exc:
            problems.append(f"cancel-all on exit failed: {exc or 'timed out'}")
        if self._ws is not None:
            await self._ws.aclose()
        for task in self._tasks[:1]:
            task.cancel()
        await asyncio.gather(*self._tasks[:1], return_exceptions=True)
        self._tasks.clear()
        return problems

    async def cancel_everything(self, *, verify: bool = False) -> int:
        """Cancel all of this symbol's orders on the venue now (not queued); with ``verify`` ask
        the venue afterwards and once more if anything is left."""
        for _ in range(3):
            answered = await _within(self.rest.cancel_all(self.symbol), self.request_timeout_s)
            self.stats.requests += 1
            for row in answered:
                self._terminal_from_rest(row)
            for rec in self._recs.values():
                if rec.state in (QUEUED,):
                    self._done(rec, OrderStatus.CANCELED)
            if not verify:
                return len(answered)
            left = await _within(self.rest.open_orders(self.symbol), self.request_timeout_s)
            self.stats.requests += 1
            if not left:
                return len(answered)
            log.warning("backpack: %d order(s) still open after cancel-all; again", len(left))
        raise LiqError(f"backpack: orders still open on {self.symbol} after 3 cancel-all requests")

    # -- Broker protocol ---------------------------------------------------------------------

    def submit(self, order: Order) -> Order:
        cid = self._next_cid
        self._next_cid = (self._next_cid + 1) % (2**32)
        order.client_id = order.id = str(cid)
        order.created_ts = self._wall_ms()
        rec = _Rec(order, cid)
        self._recs[order.id] = rec
        if self.halted:
            order.status = OrderStatus.REJECTED
            order.reject_reason = f"halted: {self.halted}"
            rec.state = DONE
            return order
        self._queue.append(("place", rec))
        self._work.set()
        return order

    def cancel(self, order_id: str) -> bool:
        rec = self._recs.get(order_id)
        if rec is None or rec.state in (DONE, CANCELLING, UNKNOWN):
            return False
        if rec.state == QUEUED:
            self._unqueue(rec)
            self._done(rec, OrderStatus.CANCELED)
        elif rec.state == SENDING:
            rec.want_cancel = True  # sent once the answer names it
        else:
            rec.state = CANCELLING
            self._queue.append(("cancel", rec))
            self._work.set()
        return True

    def cancel_all(self, symbol: str | None = None) -> list[Order]:
        out = []
        live = False
        for rec in self._recs.values():
            if rec.order.type is OrderType.MARKET:
                continue  # immediate-or-cancel: finishes on its own
            if rec.state == QUEUED:
                self._unqueue(rec)
                self._done(rec, OrderStatus.CANCELED)
                out.append(rec.order)
            elif rec.state == LIVE:
                rec.state = CANCELLING
                live = True
                out.append(rec.order)
            elif rec.state == SENDING:
                rec.want_cancel = rec.covered = True
                live = True
                out.append(rec.order)
        if live:
            self._queue.append(("cancel_all", None))
            self._work.set()
        return out

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        return [
            r.order for r in self._recs.values()
            if r.state in (QUEUED, SENDING, LIVE) and not r.want_cancel
        ]  # fmt: skip

    def position(self, symbol: str) -> Position:
        return self.pos

    def take_fills(self) -> list[Fill]:
        fills, self.fills = self.fills, []
        return fills

    def take_rejections(self) -> list[Order]:
        out, self.rejections = self.rejections, []
        return out

    def exposure(self, side: OrderSide) -> float:
        """The position plus what the venue may still fill on ``side`` (signed by side)."""
        pending = sum(
            r.exposure() for r in self._recs.values()
            if r.order.side is side and not r.order.reduce_only
        )  # fmt: skip
        return self.pos.qty * side.sign + pending

    # -- the request worker --------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            await self._work.wait()
            self._work.clear()
            self._unpark()
            while self._queue and not self.halted:
                kind, rec = self._queue.popleft()
                if kind == "place":
                    batch = [rec] if self._may_send(rec) else []
                    if not batch:
                        self._park(rec)
                    while (
                        batch and self._queue and self._queue[0][0] == "place" and len(batch) < 20
                    ):
                        nxt = self._queue.popleft()[1]
                        if self._may_send(nxt, also=batch):
                            batch.append(nxt)
                        else:
                            self._park(nxt)
                    if batch:
                        await self._guard(self._place(batch))
                elif kind == "cancel":
                    await self._guard(self._cancel(rec))
                else:
                    await self._guard(self._cancel_all())
            if self.halted:
                await self._halt_cancel()

    async def _guard(self, coro: Any) -> None:
        try:
            await _within(coro, self.request_timeout_s)
        except TimeoutError:
            self.halt(
                f"a request timed out after {self.request_timeout_s:g}s: its outcome is unknown"
            )
        except NetworkError as exc:
            self.halt(f"request outcome unknown: {exc}")
        except LiqError as exc:
            self.stats.errors.append(str(exc)[:200])
            log.warning("%s", exc)
        self.changed.set()

    def _may_send(self, rec: _Rec, also: list[_Rec] = ()) -> bool:
        order = rec.order
        if order.reduce_only:
            return True
        extra = sum(
            r.order.qty for r in also if r.order.side is order.side and not r.order.reduce_only
        )
        room = self.max_position - self.exposure(order.side) - extra
        return order.qty <= room + float(self.market.step_size) / 2

    def _park(self, rec: _Rec) -> None:
        self.stats.parked += 1
        self._parked.append(rec)

    def _unpark(self) -> None:
        if not self._parked:
            return
        parked, self._parked = self._parked, []
        for rec in parked:
            if rec.state == QUEUED:
                self._queue.append(("place", rec))

    def _unqueue(self, rec: _Rec) -> None:
        with contextlib.suppress(ValueError):
            self._queue.remove(("place", rec))
        if rec in self._parked:
            self._parked.remove(rec)

    def _request(self, rec: _Rec) -> OrderRequest:
        o = rec.order
        limit = o.type is OrderType.LIMIT and o.price is not None
        side = "Bid" if o.side is OrderSide.BUY else "Ask"
        return OrderRequest(
            self.symbol, side, str(self.market.round_quantity(o.qty)),
            price=str(self.market.round_price(o.price, side=side)) if limit else None,
            post_only=o.post_only, reduce_only=o.reduce_only, client_id=rec.client_id,
        )  # fmt: skip

    async def _place(self, batch: list[_Rec]) -> None:
        for rec in batch:
            rec.state = SENDING
        self.stats.requests += 1
        try:
            if len(batch) == 1:
                answers: list[Any] = [await self.rest.execute_order(self._request(batch[0]))]
            else:
                self.stats.batches += 1
                answers = await self.rest.execute_orders([self._request(r) for r in batch])
        except ExchangeError as exc:
            if (exc.status or 0) >= 500:  # overloaded: the orders may or may not exist
                for rec in batch:
                    self._unknown(rec)
                self.halt(f"order request outcome unknown: {exc}")
                return
            answers = [exc] * len(batch)
        except (NetworkError, asyncio.CancelledError):
            for rec in batch:
                self._unknown(rec)
            raise
        for i, rec in enumerate(batch):
            answer = answers[i] if i < len(answers) else None
            if isinstance(answer, dict) and (
                answer.get("operation") == "Err" or ("code" in answer and "id" not in answer)
            ):
                answer = parse_error(400, answer, "/api/v1/orders", {})
            if isinstance(answer, Exception):
                self._rejected(rec, answer)
            elif isinstance(answer, dict):
                self._acked(rec, answer)
            else:
                self._unknown(rec)

    def _acked(self, rec: _Rec, row: dict[str, Any]) -> None:
        venue_id = str(row.get("id") or "")
        if venue_id:
            rec.venue_id = venue_id
            self._by_venue[venue_id] = rec
        status = str(row.get("status") or "New")
        if rec.state == SENDING:
            rec.state = LIVE
        if status in ("Filled", "Cancelled", "Expired"):
            self._terminal_from_rest(row)
        elif rec.want_cancel and rec.state == LIVE:
            rec.state = CANCELLING
            if not rec.covered:
                self._queue.appendleft(("cancel", rec))

    def _rejected(self, rec: _Rec, exc: Exception) -> None:
        order = rec.order
        order.status = OrderStatus.REJECTED
        order.reject_reason = (
            "post_only_would_cross" if isinstance(exc, PostOnlyRejected) else str(exc)[:200]
        )
        rec.state = DONE
        self.stats.rejections += 1
        self.rejections.append(order)
        if not isinstance(exc, PostOnlyRejected):
            log.warning("backpack: order rejected: %s", exc)

    def _unknown(self, rec: _Rec) -> None:
        if rec.state != DONE:
            rec.state = UNKNOWN
            rec.unknown_since = self._clock()

    async def _cancel(self, rec: _Rec) -> None:
        if rec.state == DONE:
            return
        self.stats.requests += 1
        row = await self.rest.cancel_order(self.symbol, client_id=rec.client_id)
        if row is None:
            self._unknown(rec)  # not open: filled or cancelled; the stream will tell
        else:
            self._terminal_from_rest(row, rec)

    async def _cancel_all(self) -> None:
        self.stats.requests += 1
        rows = await self.rest.cancel_all(self.symbol)
        for row in rows:
            self._terminal_from_rest(row)
        for rec in self._recs.values():
            if rec.state == CANCELLING:
                self._unknown(rec)  # not in the answer: it had filled or gone already

    async def _halt_cancel(self) -> None:
        self._queue.clear()
        with contextlib.suppress(Exception):
            await _within(self.cancel_everything(), self.request_timeout_s)

    def _terminal_from_rest(self, row: dict[str, Any], rec: _Rec | None = None) -> None:
        rec = rec or self._find(row.get("clientId"), row.get("id"))
        if rec is None or rec.state == DONE:
            return
        status = str(row.get("status") or "")
        executed = float(row.get("executedQuantity") or 0)
        if status in ("New", "PartiallyFilled"):
            return
        rec.venue_done_qty = executed
        self._done(rec, OrderStatus.FILLED if status == "Filled" else OrderStatus.CANCELED)

    def _done(self, rec: _Rec, status: OrderStatus) -> None:
        rec.state = DONE
        if rec.order.status.is_open:
            rec.order.status = status
        self._exposure_changed()

    def _exposure_changed(self) -> None:
        if self._parked:
            self._work.set()  # parked orders may fit now
        self.changed.set()

    def _find(self, client_id: Any, venue_id: Any) -> _Rec | None:
        if client_id is not None:
            rec = self._recs.get(str(client_id))
            if rec is not None:
                return rec
        if venue_id is not None:
            return self._by_venue.get(str(venue_id))
        return None

    # -- private stream --------------------------------------------------------------------------

    async def _private(self) -> None:
        assert self._ws is not None
        async with self._ws as ws:
            async for message in ws:
                stream = message.get("stream", "")
                data = message.get("data")
                if not isinstance(data, dict):
                    continue
                if stream.startswith("account.orderUpdate"):
                    update = bp.parse_order_update(data)
                    if update is not None and update.symbol == self.symbol:
                        self.on_order_update(update)
                elif stream.startswith("account.positionUpdate"):
                    update = bp.parse_position_update(data)
                    if update is not None and update.symbol == self.symbol:
                        self.venue_qty = update.qty
                        self._check_position()
                self.changed.set()

    def on_order_update(self, u: bp.OrderUpdate) -> None:
        rec = self._find(u.client_id, u.order_id)
        if rec is not None and u.order_id:
            rec.venue_id = u.order_id
            self._by_venue[u.order_id] = rec
        if u.event == "orderFill" and u.fill_qty > 0:
            if u.trade_id is not None:
                if u.trade_id in self._seen_trades:
                    return  # delivered twice (reconnect)
                self._seen_trades.add(u.trade_id)
            self._fill(rec, u)
        if rec is None:
            return
        if rec.state == SENDING and u.event == "orderAccepted":
            pass  # the REST answer moves it on
        if u.status in ("Filled", "Cancelled", "Expired") or u.event in (
            "orderCancelled",
            "orderExpired",
        ):
            rec.venue_done_qty = u.executed
            if u.event == "orderFill" and u.status == "Filled":
                self._done(rec, OrderStatus.FILLED)
            elif u.event != "orderFill":
                self._done(rec, OrderStatus.CANCELED)

    def _fill(self, rec: _Rec | None, u: bp.OrderUpdate) -> None:
        side = OrderSide.BUY if u.side == "Bid" else OrderSide.SELL
        qty, price = u.fill_qty, u.fill_price
        realized = self._apply_fill(side.sign * qty, price)
        self._last_fill_ms = max(self._last_fill_ms or 0, u.ts)
        order_id = rec.order.id if rec is not None else u.order_id
        tag = rec.order.tag if rec is not None else "external"
        if rec is not None:
            o = rec.order
            total = o.filled_qty + qty
            o.avg_price = (o.avg_price * o.filled_qty + price * qty) / total if total else 0.0
            o.filled_qty = total
            if o.status.is_open:
                o.status = (
                    OrderStatus.FILLED
                    if o.filled_qty >= o.qty - 1e-12
                    else OrderStatus.PARTIALLY_FILLED
                )
            if o.status is OrderStatus.FILLED:
                rec.state = DONE
        fee = u.fee  # quote units (fees on perps are charged in the quote asset)
        fill = Fill(
            order_id, self.symbol, side, qty, price, fee,
            Liquidity.MAKER if u.maker else Liquidity.TAKER, u.ts, realized,
            client_id=str(u.client_id or ""), tag=tag,
        )  # fmt: skip
        self.pos.fees += fee
        self.stats.fills += 1
        self.fill_meta[_fill_key(fill)] = {
            "fill_id": str(u.trade_id) if u.trade_id is not None else f"{u.order_id}-{u.executed}",
            "order_id": u.order_id,
            "fee_asset": u.fee_asset or "USDC",
        }
        self.fills.append(fill)
        self._check_position()
        self._exposure_changed()

    def _apply_fill(self, signed: float, price: float) -> float:
        pos = self.pos
        old = pos.qty
        new = old + signed
        realized = 0.0
        if old == 0 or (old > 0) == (signed > 0):
            pos.entry_price = (pos.entry_price * abs(old) + price * abs(signed)) / abs(new)
        else:
            closed = min(abs(signed), abs(old))
            realized = closed * (price - pos.entry_price) * (1 if old > 0 else -1)
            if abs(new) < 1e-12:
                new, pos.entry_price = 0.0, 0.0
            elif (new > 0) != (old > 0):
                pos.entry_price = price
        pos.qty = _clean(new, self.market.step_size)
        pos.realized_pnl += realized
        return realized

    def _check_position(self) -> None:
        if self.venue_qty is None:
            return
        if abs(self.venue_qty - self.pos.qty) > float(self.market.step_size) / 2:
            if self._mismatch_since is None:
                self._mismatch_since = self._clock()
        else:
            self._mismatch_since = None

    async def _read_position(self) -> None:
        row = await _within(self.rest.position(self.symbol), self.request_timeout_s)
        self.stats.requests += 1
        qty = row["qty"] if row else 0.0
        self.pos.qty = qty
        self.pos.entry_price = row["entry_price"] if row else 0.0
        self.venue_qty = qty
        self._mismatch_since = None

    async def _recover_fills(self) -> int:
        """Fetch the fills made while the private stream was down (the history from the last fill
        seen, less an overlap, to now; paged oldest first) and apply the unseen ones as stream
        fills, in time order. Returns how many were applied."""
        last = self._last_fill_ms if self._last_fill_ms is not None else self._floor_ms
        since = max(self._floor_ms, last - self.history_overlap_ms)
        until = self.rest.timestamp() + self.history_overlap_ms
        rows: list[dict[str, Any]] = []
        for _ in range(1000):  # 1000 pages: a runaway answer, not a quiet outage
            page = await _within(
                self.rest.fills(self.symbol, start_ms=since, end_ms=until,
                                limit=self.history_page, offset=len(rows)),
                self.request_timeout_s,
            )  # fmt: skip
            self.stats.requests += 1
            rows.extend(page)
            if len(page) < self.history_page:
                break
        else:
            raise LiqError("fill history did not end after 1000 pages")
        updates = []
        for row in rows:
            u = _history_fill(row)
            if u is None:
                self.stats.errors.append(f"unreadable fill history row: {str(row)[:120]}")
                continue  # the position check below catches a fill that mattered
            if u.symbol == self.symbol and u.ts >= self._floor_ms:
                updates.append(u)
        updates.sort(key=lambda u: (u.ts, u.trade_id))
        before = self.stats.fills
        for u in updates:
            self.on_order_update(u)  # dedup by trade id, as a stream fill
        return self.stats.fills - before

    # -- fail closed ----------------------------------------------------------------------------

    def halt(self, reason: str) -> None:
        if self.halted:
            return
        self.halted = reason
        log.error("backpack: stopped quoting: %s", reason)
        for rec in self._recs.values():
            if rec.state == QUEUED:
                self._done(rec, OrderStatus.CANCELED)
        self._parked.clear()
        self._work.set()
        self.changed.set()

    async def _monitor(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            now = self._clock()
            status = self.stream_status
            if status.state != "connected":
                self._down_since = self._down_since or now
                if now - self._down_since > self.stream_grace_s:
                    self.halt(f"private stream down for more than {self.stream_grace_s:g}s")
            else:
                self._down_since = None
                if status.reconnects > self._reconnects_seen:
                    self._reconnects_seen = status.reconnects
                    await self._resync()
            if status.errors:
                self.halt(f"private stream refused: {status.last_error}")
            for rec in self._recs.values():
                if (
                    rec.state == UNKNOWN
                    and rec.unknown_since is not None
                    and now - rec.unknown_since > self.unknown_grace_s
                ):
                    self.halt(f"order {rec.client_id}: no fill or cancel reported within "
                                  f"{self.unknown_grace_s:g}s")  # fmt: skip
            if (
                self._mismatch_since is not None
                and now - self._mismatch_since > self.mismatch_grace_s
            ):
                self.halt(f"position mismatch: venue {self.venue_qty:g}, fills {self.pos.qty:g}")
            if self.halted:
                return

    async def _resync(self) -> None:
        """Events may have been lost while the private stream was down: cancel everything, apply
        the fills the history shows and the stream did not, then check the venue's position."""
        self.stats.resyncs += 1
        log.warning(
            "backpack: private stream reconnected; cancelling all, reading missed fills and the"
            " position"
        )
        step = "cancel-all"
        try:
            await self.cancel_everything()
            step = "fill history"
            recovered = await self._recover_fills()
            if recovered:
                log.warning(
                    "backpack: %d fill(s) made while the stream was down applied", recovered
                )
            for rec in self._recs.values():
                if rec.state != DONE:
                    self._done(rec, OrderStatus.CANCELED)
            step = "position"
            row = await _within(self.rest.position(self.symbol), self.request_timeout_s)
            self.stats.requests += 1
        except (TimeoutError, LiqError) as exc:
            reason = str(exc).splitlines()[0][:200] if str(exc) else "timed out"
            self.halt(f"resync after a private-stream reconnect failed ({step}): {reason}")
            self.changed.set()
            return
        self.venue_qty = row["qty"] if row else 0.0
        self._mismatch_since = None
        if abs(self.venue_qty - self.pos.qty) > float(self.market.step_size) / 2:
            self.halt(
                f"position mismatch after resync: venue {self.venue_qty:g}, fills {self.pos.qty:g}"
            )
        self.changed.set()


async def _within(coro: Any, seconds: float) -> Any:
    """``asyncio.wait_for`` without its Python 3.11 flaw: a cancellation that lands as the inner
    call completes is swallowed there, and a cancelled worker would then wait forever."""
    async with asyncio.timeout(seconds):
        return await coro


def _history_fill(row: Any) -> bp.OrderUpdate | None:
    """A ``/wapi/v1/history/fills`` row as the ``orderFill`` event the stream would have sent."""
    try:
        client = row.get("clientId")
        ts = row["timestamp"]
        return bp.OrderUpdate(
            event="orderFill",
            symbol=str(row["symbol"]),
            order_id=str(row["orderId"]),
            client_id=int(client) if client not in (None, "") else None,
            side=str(row["side"]),
            status="",  # the order's state is the cancel-all's business
            price=None,
            quantity=0.0,
            executed=0.0,
            ts=ts if isinstance(ts, int) else _iso_ms(str(ts)),
            fill_qty=float(row["quantity"]),
            fill_price=float(row["price"]),
            fee=float(row.get("fee") or 0),
            fee_asset=str(row.get("feeSymbol") or ""),
            maker=bool(row.get("isMaker", False)),
            trade_id=int(row["tradeId"]),
        )
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def _iso_ms(text: str) -> int:
    """``2021-01-01T00:00:01.000Z`` (or without the zone: UTC) -> epoch ms."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)


def _fill_key(fill: Fill) -> str:
    return f"{fill.order_id}|{fill.ts}|{fill.qty}|{fill.price}"


def _clean(qty: float, step: Decimal) -> float:
    """Float drift off a position (0.1 + 0.2): round to a 1000th of the step."""
    q = float(step) / 1000
    return round(round(qty / q) * q, 12)
