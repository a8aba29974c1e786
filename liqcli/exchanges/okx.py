"""OKX: the public ``liquidation-orders`` stream and the instruments it needs.

Quirks kept here:

- The channel is per instrument type (SWAP, FUTURES), not per symbol: symbols are filtered
  client-side.
- ``sz`` is in CONTRACTS. Linear contracts (``BTC-USDT-SWAP``) are worth ``ctVal`` base units
  each: qty = sz x ctVal, notional = qty x price. Inverse contracts (``BTC-USD-SWAP``,
  ``BTC-USD-250328``) are worth ``ctVal`` USD each: notional = sz x ctVal, qty = notional / price.
  ``ctVal`` comes from ``GET /api/v5/public/instruments`` (cached in memory and on disk).
- ``posSide`` is the liquidated side; in net mode (``posSide=net``) ``side=sell`` closes a long.
- Symbols: ``BTC-USDT-SWAP`` -> ``BTCUSDT``, ``BTC-USD-SWAP`` -> ``BTCUSD``, dated futures
  ``BTC-USD-250328`` -> ``BTCUSD_250328`` (Binance's delivery naming); ``venue_symbol`` keeps
  the original.
- Keepalive is a text ``ping`` answered by ``pong``; ``{"event":"notice","code":"64008"}`` warns
  of a disconnect within 60 s, so the client reconnects at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from liqcli.core.endpoints import url as endpoint_url
from liqcli.core.events import LONG, SHORT, Liquidation, Side
from liqcli.errors import DataError, ExchangeError
from liqcli.exchanges.parsing import (
    BAD_SIDE,
    MAX_NOTIONAL_USD,
    MAX_PRICE,
    MIN_NOTIONAL_USD,
    MIN_PRICE,
    MIN_TS,
    TS_WINDOW_MS,
    UNKNOWN_INSTRUMENT,
    Refusals,
    Refused,
    notional,
    number,
    positive,
    price_value,
    refuse,
    structure,
    text,
    timestamp,
)
from liqcli.exchanges.ws import FrameKind, WsProtocol

log = logging.getLogger("liq.okx")

VENUE = "okx"
CHANNEL = "liquidation-orders"
INST_TYPES = ("SWAP", "FUTURES")
INSTRUMENTS_PATH = "/api/v5/public/instruments"
RECONNECT_NOTICE = "64008"
PING_INTERVAL_S = 25.0  # OKX closes connections silent for 30 s


class JsonGetter(Protocol):
    """What the instruments loader needs from liqcli.exchanges.http.VenueHttp."""

    async def get_json(self, path: str, params: dict | None = None) -> Any: ...


@dataclass(frozen=True, slots=True)
class OkxInstrument:
    inst_id: str
    inst_type: str
    ct_val: float  # contract value, in ct_val_ccy
    ct_val_ccy: str
    inverse: bool  # True: ct_val is a USD amount per contract


def normalise_symbol(inst_id: str) -> str:
    """``BTC-USDT-SWAP`` -> ``BTCUSDT``; ``BTC-USD-250328`` -> ``BTCUSD_250328``."""
    parts = inst_id.upper().split("-")
    if len(parts) >= 3 and parts[-1] == "SWAP":
        return "".join(parts[:-1])
    if len(parts) == 3 and parts[2].isdigit():
        return f"{parts[0]}{parts[1]}_{parts[2]}"
    return "".join(parts)


def liquidated_side(side: str, pos_side: str) -> Side:
    """The side of the liquidated position: ``posSide`` when hedged, else from the order side."""
    pos = pos_side.lower()
    if pos in ("long", "short"):
        return LONG if pos == "long" else SHORT
    order_side = side.lower()
    if order_side in ("sell", "buy"):
        return LONG if order_side == "sell" else SHORT
    raise Refused(
        BAD_SIDE,
        f"okx: cannot tell the liquidated side from side={side[:20]!r} posSide={pos_side[:20]!r}",
    )


def _num(value: Any, name: str) -> float:
    return number(VENUE, value, name, positive=True)


def parse_instruments(payload: Any) -> dict[str, OkxInstrument]:
    """A ``/api/v5/public/instruments`` response -> ``{instId: OkxInstrument}``.

    Instruments without a usable ``ctVal`` (e.g. pre-listing) are skipped.
    """
    if not isinstance(payload, dict):
        raise DataError("okx: instruments response is not a JSON object")
    if str(payload.get("code", "0")) != "0":
        raise ExchangeError(
            VENUE, str(payload.get("msg") or "instruments request failed"), code=payload.get("code")
        )
    rows = payload.get("data")
    if not isinstance(rows, list):
        raise DataError("okx: instruments response has no data list")
    out: dict[str, OkxInstrument] = {}
    for row in rows:
        try:
            inst_id = str(row["instId"])
            ct_val = _num(row["ctVal"], "ctVal") * _num(row.get("ctMult") or 1, "ctMult")
            if not ct_val < math.inf:
                continue
        except (KeyError, TypeError, DataError):
            continue
        ct_val_ccy = str(row.get("ctValCcy", "")).upper()
        inverse = row.get("ctType") == "inverse" or ct_val_ccy == "USD"
        out[inst_id] = OkxInstrument(
            inst_id=inst_id,
            inst_type=str(row.get("instType", "")),
            ct_val=ct_val,
            ct_val_ccy=ct_val_ccy,
            inverse=inverse,
        )
    return out


def contracts_to_base(
    instrument: OkxInstrument, contracts: float, price: float
) -> tuple[float, float]:
    """``(qty in base units, notional in USD)`` for ``contracts`` filled at ``price``."""
    if instrument.inverse:
        notional = contracts * instrument.ct_val
        return notional / price, notional
    qty = contracts * instrument.ct_val
    return qty, qty * price


def instrument_ids(message: Any) -> list[str]:
    """The ``instId`` of every push in a liquidation message (to check the cache first)."""
    data = message.get("data") if isinstance(message, dict) else None
    if not isinstance(data, list):
        return []
    return [
        item["instId"] for item in data if type(item) is dict and type(item.get("instId")) is str
    ]


def parse_liquidations(
    message: Any,
    instruments: Mapping[str, OkxInstrument],
    received_ts: int = 0,
    *,
    refused: Refusals | None = None,
) -> list[Liquidation]:
    """A ``liquidation-orders`` push -> Liquidations.

    Never raises for data: a bad frame, item or detail is counted in ``refused`` under its
    reason and skipped on its own (the push's other details are kept). Instruments missing from
    ``instruments`` are refused as ``unknown_instrument`` (refresh the cache first: see
    ``instrument_ids``).
    """
    if type(message) is not dict:
        refuse(refused, structure(VENUE, "frame", message))
        return []
    arg = message.get("arg")
    if type(arg) is dict and arg.get("channel") not in (None, CHANNEL):
        return []
    data = message.get("data")
    if type(data) is not list:
        refuse(refused, structure(VENUE, "liquidation push 'data'", data))
        return []
    out: list[Liquidation] = []
    for item in data:
        try:
            if type(item) is not dict:
                raise structure(VENUE, "liquidation push item", item)
            inst_id = item["instId"]
            if type(inst_id) is not str:
                text(VENUE, inst_id, "instId")  # raises: wrong type
            details = item["details"]
            if type(details) is not list:
                raise structure(VENUE, f"{inst_id[:40]!r} 'details'", details)
        except Exception as exc:
            refuse(refused, exc, VENUE)
            continue
        instrument = instruments.get(inst_id)
        if instrument is None:
            if details:
                refuse(
                    refused,
                    Refused(UNKNOWN_INSTRUMENT, f"okx: unknown instrument {inst_id[:40]!r}"),
                    VENUE,
                    len(details),
                )
            continue
        sym = normalise_symbol(inst_id)
        for detail in details:
            try:
                out.append(_liquidation(detail, instrument, sym, inst_id, received_ts))
            except Exception as exc:  # one bad detail never costs the push's others
                refuse(refused, exc, VENUE)
    return out


def _liquidation(
    detail: Any, instrument: OkxInstrument, sym: str, inst_id: str, received_ts: int
) -> Liquidation:
    # The common case is checked inline; anything unusual goes to the checking helpers, which
    # raise Refused with the reason. A KeyError is counted as a missing field by the caller.
    if type(detail) is not dict:
        raise structure(VENUE, "liquidation detail", detail)
    price = positive(VENUE, detail["bkPx"], "bkPx")
    if not MIN_PRICE <= price <= MAX_PRICE:
        price_value(VENUE, price, "bkPx")
    contracts = positive(VENUE, detail["sz"], "sz")
    pos_side = detail.get("posSide", "")
    if pos_side == "long" or pos_side == "short":
        side: Side = pos_side
    else:
        side = liquidated_side(
            text(VENUE, detail.get("side", ""), "side"), text(VENUE, pos_side, "posSide")
        )
    ts = detail["ts"]
    if type(ts) is str and ts.isdecimal():
        ts = int(ts)
    if not (type(ts) is int and received_ts and MIN_TS <= ts <= received_ts + TS_WINDOW_MS):
        ts = timestamp(VENUE, ts, "ts", received_ts)
    qty, usd = contracts_to_base(instrument, contracts, price)
    if not MIN_NOTIONAL_USD <= usd <= MAX_NOTIONAL_USD:
        notional(VENUE, usd)
    return Liquidation(VENUE, sym, side, price, qty, usd, ts, inst_id, received_ts)


def subscribe_message(inst_types: Sequence[str] = INST_TYPES) -> str:
    args = [{"channel": CHANNEL, "instType": t} for t in inst_types]
    return orjson.dumps({"op": "subscribe", "args": args}).decode()


def inst_types_for(symbols: Iterable[str]) -> tuple[str, ...]:
    """Perpetuals only, unless no filter is given or a dated contract (``BTCUSD_250328``) is."""
    wanted = list(symbols)
    if not wanted or any("_" in s for s in wanted):
        return INST_TYPES
    return ("SWAP",)


def classify(message: Any) -> FrameKind:
    if not isinstance(message, dict):
        return FrameKind.DATA
    event = message.get("event")
    if event is None:
        return FrameKind.DATA
    if event == "error":
        return FrameKind.ERROR
    if event == "notice" and str(message.get("code")) == RECONNECT_NOTICE:
        return FrameKind.RECONNECT
    return FrameKind.CONTROL  # subscribe acks, channel-conn-count, other notices


def protocol(inst_types: Sequence[str] = INST_TYPES, base_url: str | None = None) -> WsProtocol:
    return WsProtocol(
        venue=VENUE,
        url=base_url or endpoint_url("LIQ_OKX_WS_URL"),
        subscriptions=(subscribe_message(inst_types),),
        app_ping="ping",
        text_pong="pong",
        ping_interval=PING_INTERVAL_S,
        classify=classify,
    )


class OkxInstruments(Mapping[str, OkxInstrument]):
    """Contract values by instId: memory, then a JSON cache file younger than ``ttl_s``, then
    REST. ``refresh`` picks up new listings but never more often than ``min_refresh_s``."""

    def __init__(
        self,
        http: JsonGetter,
        *,
        inst_types: Sequence[str] = INST_TYPES,
        cache_path: Path | None = None,
        ttl_s: float = 6 * 3600,
        min_refresh_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._inst_types = tuple(inst_types)
        self._cache_path = cache_path
        self._ttl_s = ttl_s
        self._min_refresh_s = min_refresh_s
        self._clock = clock
        self._by_id: dict[str, OkxInstrument] = {}
        self._fetched_at: float | None = None
        self.requests = 0

    def __getitem__(self, inst_id: str) -> OkxInstrument:
        return self._by_id[inst_id]

    def __iter__(self):
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    async def load(self) -> None:
        """Fill from a fresh cache file, else from REST (errors propagate: ExchangeError...)."""
        if self._read_cache():
            return
        await self._fetch()

    async def refresh(self) -> bool:
        """Re-fetch unless done within ``min_refresh_s``; True when a request was made."""
        if self._fetched_at is not None and self._clock() - self._fetched_at < self._min_refresh_s:
            return False
        await self._fetch()
        return True

    async def _fetch(self) -> None:
        found: dict[str, OkxInstrument] = {}
        for inst_type in self._inst_types:
            self.requests += 1
            payload = await self._http.get_json(INSTRUMENTS_PATH, {"instType": inst_type})
            found.update(parse_instruments(payload))
        self._by_id = found
        self._fetched_at = self._clock()
        self._write_cache()

    def _read_cache(self) -> bool:
        if self._cache_path is None or not self._cache_path.is_file():
            return False
        try:
            doc = orjson.loads(self._cache_path.read_bytes())
            if tuple(doc["inst_types"]) != self._inst_types:
                return False
            fetched_at = float(doc["fetched_at"])
            if self._clock() - fetched_at > self._ttl_s:
                return False
            self._by_id = {k: OkxInstrument(**v) for k, v in doc["instruments"].items()}
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.info("okx: ignoring unreadable instruments cache %s", self._cache_path)
            return False
        self._fetched_at = fetched_at
        return True

    def _write_cache(self) -> None:
        if self._cache_path is None:
            return
        doc = {
            "fetched_at": self._fetched_at,
            "inst_types": list(self._inst_types),
            "instruments": {k: asdict(v) for k, v in self._by_id.items()},
        }
        tmp: str | None = None
        try:
            self._cache_path.parent.mkdir(parents=True, exist_ok=True)
            # Atomic replace: a concurrent reader never sees a half-written cache.
            fd, tmp = tempfile.mkstemp(dir=self._cache_path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                fh.write(orjson.dumps(doc))
            os.replace(tmp, self._cache_path)
        except OSError as exc:
            log.warning("okx: cannot write instruments cache %s: %s", self._cache_path, exc)
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
