"""The venue registry: one entry per venue, and every place that lists venues reads it.

An entry declares what the venue offers, its endpoints (environment variable -> production
default), its connection limits, its notes for users, and where its code lives (``module:function``
references, imported only when used so ``liq map --input`` never loads a WebSocket client)::

    from liqcli.exchanges import registry

    registry.names(registry.LIQUIDATIONS)      # ["binance", "okx", "bybit"]: --exchange choices
    registry.validate(["OKX"], registry.LIQUIDATIONS)   # ["okx"]; UsageError naming the choices
    registry.get("binance").notes               # ("Binance pushes at most one liquidation ...",)
    registry.endpoint_defaults()                # {"LIQ_BINANCE_REST_URL": "https://fapi...", ...}

Adding a venue is its module (parsers, protocol), one ``Venue`` entry here (``register`` also
works at runtime, e.g. in a test) and its fake server (tests/toyex is a complete example). The live runner
(``live``) is ``async def run(feed: liqcli.services.streams.VenueFeed) -> None``: for most venues
one line, ``await feed.pump(protocol(feed.symbols), parse_liquidations)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from liqcli.errors import UsageError

# What a venue can offer.
LIQUIDATIONS = "liquidations"  # live forced-close stream
TRADES = "trades"  # live (aggregate) trades
BOOK = "book"  # best bid/ask and depth
MARK = "mark"  # mark price with funding rate / next funding time
FUNDING = "funding"  # funding history over REST
ARCHIVE = "archive"  # daily trade files for liq map --exchange / fetch --archive
ORDERS = "orders"  # signed trading API (liq mm)
CAPABILITIES = (LIQUIDATIONS, TRADES, BOOK, MARK, FUNDING, ARCHIVE, ORDERS)


@dataclass(frozen=True)
class VenueLimits:
    """The venue's connection limits (None: none documented / not used)."""

    streams_per_connection: int | None = None
    subscribe_args_per_request: int | None = None
    subscribe_chars_per_request: int | None = None
    connection_lifetime_s: float | None = None  # the venue closes connections after this
    ping_interval_s: float | None = None  # application keepalive we send
    rest: str = ""  # REST limits, for people


@dataclass(frozen=True)
class ArchiveTrades:
    """Where a venue's daily trade archive code lives (``module:function`` each): the client
    ``(data_dir, **kw)``, ``download(client, symbol, start_ms, end_ms) -> [Path]``,
    ``read(paths) -> LazyFrame`` of ts/price/qty/is_buyer_maker, ``parquet_path(path)``."""

    client: str
    download: str
    read: str
    parquet_path: str


@dataclass(frozen=True)
class Venue:
    name: str  # lower case, as typed after --exchange
    title: str
    offers: frozenset[str]
    endpoints: Mapping[str, str]  # env var -> production default
    live: str | Callable[..., Any] | None = None  # async run(feed): its live streams
    list_symbols: str | Callable[..., Any] | None = None  # async (StreamOptions) -> symbols
    # Market data beyond liquidations/trades (BOOK, MARK): a Source factory for book tops,
    # depth and mark prices, when the venue offers them (e.g. liqcli.sources.binance_market).
    market: str | Callable[..., Any] | None = None
    archive: ArchiveTrades | None = None  # daily trade files (liq map --exchange)
    limits: VenueLimits = field(default_factory=VenueLimits)
    notes: tuple[str, ...] = ()  # for users: shown in help and dashboards
    fake: str = ""  # its fake server for tests (module:class)
    default: bool = True  # watched when no --exchange is given

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip().lower():
            raise ValueError(f"venue name must be lower case, got {self.name!r}")
        unknown = set(self.offers) - set(CAPABILITIES)
        if unknown:
            raise ValueError(f"{self.name}: unknown capabilities {sorted(unknown)}")
        object.__setattr__(self, "offers", frozenset(self.offers))

    def offers_all(self, *capabilities: str) -> bool:
        return all(c in self.offers for c in capabilities)

    def endpoint(self, suffix: str) -> str:
        """``endpoint("WS_URL")`` -> the current value of ``LIQ_<NAME>_WS_URL``."""
        from liqcli.core.endpoints import url

        return url(f"LIQ_{self.name.upper()}_{suffix}")

    def archive_part(self, part: str) -> Callable[..., Any]:
        """``archive_part("download")``: that function of the venue's trade archive."""
        if self.archive is None:
            raise UsageError(
                f"{self.name} has no trade archive: choose from {', '.join(names(ARCHIVE))}"
            )
        return resolve(getattr(self.archive, part))

    def runner(self, what: str = "live") -> Callable[..., Any]:
        """The entry's ``live`` / ``list_symbols`` / ``market`` callable, imported on first use."""
        ref = getattr(self, what)
        if ref is None:
            raise UsageError(f"{self.name} has no {what.replace('_', ' ')} support")
        return resolve(ref)


BINANCE_NOTE = (
    "Binance pushes at most one liquidation per symbol per second: its totals are a lower bound."
)

_BUILTIN = (
    Venue(
        name="binance",
        title="Binance USDⓈ-M futures",
        offers=frozenset({LIQUIDATIONS, TRADES, BOOK, MARK, FUNDING, ARCHIVE}),
        endpoints={
            "LIQ_BINANCE_REST_URL": "https://fapi.binance.com",
            "LIQ_BINANCE_WS_URL": "wss://fstream.binance.com",  # host root: routes are added
            "LIQ_BINANCE_ARCHIVE_URL": "https://data.binance.vision",
        },
        live="liqcli.services.streams:run_binance",
        list_symbols="liqcli.services.streams:binance_symbols",
        archive=ArchiveTrades(
            client="liqcli.exchanges.binance.archive:binance_archive_client",
            download="liqcli.exchanges.binance.archive:download_agg_trades",
            read="liqcli.exchanges.binance.archive:read_agg_trades",
            parquet_path="liqcli.exchanges.binance.archive:parquet_path",
        ),
        limits=VenueLimits(
            streams_per_connection=200,
            connection_lifetime_s=24 * 3600,
            rest="2400 request weight per minute per IP; 418 = IP ban",
        ),
        notes=(BINANCE_NOTE,),
        fake="tests.fakes.ws_servers:FakeBinance",
    ),
    Venue(
        name="okx",
        title="OKX perpetual swaps and futures",
        offers=frozenset({LIQUIDATIONS}),
        endpoints={
            "LIQ_OKX_REST_URL": "https://www.okx.com",
            "LIQ_OKX_WS_URL": "wss://ws.okx.com:8443/ws/v5/public",
        },
        live="liqcli.services.streams:run_okx",
        list_symbols="liqcli.services.streams:okx_symbols",
        limits=VenueLimits(
            ping_interval_s=25.0,
            rest="20 instrument requests per 2 s per IP",
        ),
        fake="tests.fakes.ws_servers:FakeOkx",
    ),
    Venue(
        name="bybit",
        title="Bybit linear perpetuals",
        offers=frozenset({LIQUIDATIONS, ARCHIVE}),
        endpoints={
            "LIQ_BYBIT_REST_URL": "https://api.bybit.com",
            "LIQ_BYBIT_WS_URL": "wss://stream.bybit.com/v5/public/linear",
            "LIQ_BYBIT_ARCHIVE_URL": "https://public.bybit.com",
        },
        live="liqcli.services.streams:run_bybit",
        list_symbols="liqcli.services.streams:bybit_symbols",
        archive=ArchiveTrades(
            client="liqcli.exchanges.bybit.archive:bybit_archive_client",
            download="liqcli.exchanges.bybit.archive:download_trades",
            read="liqcli.exchanges.bybit.archive:read_trades",
            parquet_path="liqcli.exchanges.bybit.archive:parquet_path",
        ),
        limits=VenueLimits(
            subscribe_args_per_request=10,
            subscribe_chars_per_request=21_000,
            ping_interval_s=20.0,
        ),
        notes=("Bybit prices are bankruptcy prices, pushed every 500 ms.",),
        fake="tests.fakes.ws_servers:FakeBybit",
    ),
    Venue(
        name="backpack",
        title="Backpack Exchange perpetuals",
        offers=frozenset({BOOK, MARK, FUNDING, ORDERS}),
        endpoints={
            "LIQ_BACKPACK_REST_URL": "https://api.backpack.exchange",
            "LIQ_BACKPACK_WS_URL": "wss://ws.backpack.exchange",
        },
        limits=VenueLimits(
            ping_interval_s=None,  # the server pings every 60 s and expects pongs
            rest="2000 requests/min per subaccount; history endpoints 30/min",
        ),
        notes=("Backpack signs requests with ED25519 keys (LIQ_BACKPACK_API_KEY/_SECRET).",),
        fake="tests.fakes.backpack:FakeBackpack",
        default=False,  # no liquidation stream: never watched by default
    ),
)

_VENUES: dict[str, Venue] = {v.name: v for v in _BUILTIN}


def register(venue: Venue, *, replace: bool = False) -> Venue:
    """Add a venue (a plugin, a test's throw-away venue); ValueError if the name is taken."""
    if venue.name in _VENUES and not replace:
        raise ValueError(f"venue {venue.name!r} is already registered")
    _VENUES[venue.name] = venue
    return venue


def unregister(name: str) -> None:
    _VENUES.pop(name, None)


def get(name: str) -> Venue:
    try:
        return _VENUES[name.strip().lower()]
    except KeyError:
        raise UsageError(f"unknown exchange {name!r}: choose from {', '.join(_VENUES)}") from None


def venues(offering: str | None = None) -> list[Venue]:
    return [v for v in _VENUES.values() if offering is None or offering in v.offers]


def names(offering: str | None = None, *, defaults_only: bool = False) -> list[str]:
    """Registered venue names, in registry order (only those offering ``offering``)."""
    return [v.name for v in venues(offering) if v.default or not defaults_only]


def default_names(offering: str | None = LIQUIDATIONS) -> list[str]:
    """What a command uses when no --exchange is given."""
    return names(offering, defaults_only=True)


def choices_text(offering: str | None = LIQUIDATIONS) -> str:
    """``binance, okx or bybit`` for help texts."""
    found = names(offering, defaults_only=True)
    return found[0] if len(found) == 1 else f"{', '.join(found[:-1])} or {found[-1]}"


def validate(exchanges: Iterable[str], offering: str | None = LIQUIDATIONS) -> list[str]:
    """Lower-cased, de-duplicated venue names that offer ``offering``; UsageError otherwise."""
    out = list(dict.fromkeys(e.strip().lower() for e in exchanges))
    allowed = names(offering)
    unknown = [e for e in out if e not in _VENUES]
    if unknown or not out:
        raise UsageError(
            f"unknown exchange {', '.join(unknown) or '(none)'}: choose from {', '.join(allowed)}"
        )
    lacking = [e for e in out if e not in allowed]
    if lacking:
        raise UsageError(
            f"{', '.join(lacking)} offers no {offering}: choose from {', '.join(allowed)}"
        )
    return out


def endpoint_defaults() -> dict[str, str]:
    """Every registered venue's endpoint variables and their production defaults."""
    out: dict[str, str] = {}
    for venue in _VENUES.values():
        out.update(venue.endpoints)
    return out


def notes(exchanges: Iterable[str]) -> list[str]:
    """The user notes of these venues (dashboards show them)."""
    return [note for name in exchanges if name in _VENUES for note in _VENUES[name].notes]


def resolve(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    """``"pkg.module:function"`` -> the function (callables pass through)."""
    if callable(ref):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)
