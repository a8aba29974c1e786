"""The ``liq watch`` terminal dashboard (rich): rolling windows, rankings, latest events, venues.

Pure rendering: a :class:`~liqcli.analytics.windows.Snapshot` plus the venues' status in, a rich
renderable out. The caller owns the refresh loop (``rich.live.Live``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from liqcli.analytics.windows import Snapshot, Totals
from liqcli.core.timeutil import iso_ms
from liqcli.exchanges.registry import BINANCE_NOTE  # the venue's note lives in its entry

LONG_STYLE = "bold red"
SHORT_STYLE = "bold green"
_STATE_STYLE = {"connected": "green", "connecting": "yellow", "down": "red", "closed": "dim"}


@dataclass
class DashboardInfo:
    """What the page header says about this run."""

    exchanges: Sequence[str]
    started_ms: int
    store: str | None = None  # data dir when events are stored, None with --no-store
    source: str = "live"  # "live" or "replay <file>"
    counters: dict[str, int] = field(default_factory=dict)  # received, duplicates, stored …

    def to_dict(self) -> dict[str, Any]:
        return {
            "exchanges": list(self.exchanges),
            "started": iso_ms(self.started_ms),
            "store": self.store,
            "source": self.source,
            "counters": dict(self.counters),
            "binance_note": BINANCE_NOTE,
        }


def usd(value: float) -> str:
    """Compact dollars for narrow columns: $950, $12.3K, $4.56M, $1.20B."""
    sign = "-" if value < 0 else ""
    v = abs(value)
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if v >= limit:
            digits = 2 if v < 10 * limit else 1
            return f"{sign}${v / limit:.{digits}f}{suffix}"
    return f"{sign}${v:,.0f}"


def _share(t: Totals) -> str:
    share = t.long_share
    return "-" if share is None else f"{share:.0%}"


def _side_text(side: str) -> Text:
    return Text(side.upper(), style=LONG_STYLE if side == "long" else SHORT_STYLE)


def _hms(ms: int) -> str:
    return iso_ms(ms)[11:19]


def windows_table(snap: Snapshot) -> Table:
    table = Table(title="Rolling totals", title_justify="left", expand=True)
    for header in ("window", "longs $", "#", "shorts $", "#", "total $", "long %"):
        table.add_column(header, justify="left" if header == "window" else "right")
    exchanges = list(snap.by_exchange)
    for ex in exchanges:
        table.add_column(f"{ex} $", justify="right", style="dim")
    for label in snap.windows:
        t = snap.overall[label]
        table.add_row(
            label,
            Text(usd(t.long_usd), style=LONG_STYLE if t.long_count else ""),
            str(t.long_count),
            Text(usd(t.short_usd), style=SHORT_STYLE if t.short_count else ""),
            str(t.short_count),
            usd(t.total_usd),
            _share(t),
            *(usd(snap.by_exchange[ex][label].total_usd) for ex in exchanges),
        )
    return table


def ranking_table(snap: Snapshot, side: str) -> Table:
    rows = snap.top_long if side == "long" else snap.top_short
    style = LONG_STYLE if side == "long" else SHORT_STYLE
    title = f"Top {'longs' if side == 'long' else 'shorts'} liquidated ({snap.rank_window})"
    table = Table(title=title, title_justify="left", title_style=style, expand=True)
    table.add_column("#", justify="right")
    table.add_column("symbol")
    table.add_column("notional", justify="right")
    table.add_column("events", justify="right")
    for rank, (symbol, t) in enumerate(rows, 1):
        amount = t.long_usd if side == "long" else t.short_usd
        count = t.long_count if side == "long" else t.short_count
        table.add_row(str(rank), symbol, Text(usd(amount), style=style), str(count))
    if not rows:
        table.add_row("", Text("none yet", style="dim"), "", "")
    return table


def symbols_table(snap: Snapshot) -> Table:
    table = Table(title="Per symbol (total $)", title_justify="left", expand=True)
    table.add_column("symbol")
    for label in snap.windows:
        table.add_column(label, justify="right")
    for symbol, rows in snap.by_symbol.items():
        table.add_row(symbol, *(usd(rows[label].total_usd) for label in snap.windows))
    return table


def latest_table(snap: Snapshot) -> Table:
    table = Table(title="Latest liquidations", title_justify="left", expand=True)
    for header, justify in (
        ("time (UTC)", "left"),
        ("exchange", "left"),
        ("symbol", "left"),
        ("side", "left"),
        ("price", "right"),
        ("qty", "right"),
        ("notional", "right"),
    ):
        table.add_column(header, justify=justify)
    for e in snap.latest:
        style = LONG_STYLE if e.side == "long" else SHORT_STYLE
        table.add_row(
            _hms(e.ts),
            e.exchange,
            e.symbol,
            _side_text(e.side),
            f"{e.price:,.6g}",
            f"{e.qty:,.6g}",
            Text(usd(e.notional_usd), style=style),
        )
    if not snap.latest:
        table.add_row(Text("waiting for liquidations…", style="dim"), "", "", "", "", "", "")
    return table


def venues_table(statuses: Mapping[str, Any], now_ms: int) -> Table:
    """Connection health; ``statuses`` maps venue -> VenueStatus (or anything with to_dict())."""
    table = Table(title="Venues", title_justify="left", expand=True)
    for header in (
        "venue",
        "state",
        "reconnects",
        "gaps",
        "garbage",
        "malformed",
        "events",
        "last msg",
    ):
        table.add_column(header, justify="left" if header in ("venue", "state") else "right")
    for venue, status in statuses.items():
        s = status.to_dict() if hasattr(status, "to_dict") else dict(status)
        last = s.get("last_message_ms")
        age = "-" if last is None else f"{max(now_ms - last, 0) / 1000:.0f}s ago"
        state = str(s.get("state", "?"))
        table.add_row(
            venue,
            Text(state, style=_STATE_STYLE.get(state, "")),
            str(s.get("reconnects", 0)),
            str(s.get("gaps", 0)),
            str(s.get("garbage", 0)),
            str(s.get("malformed", 0)),
            str(s.get("events", 0)),
            age,
        )
    return table


def render_dashboard(
    snap: Snapshot, statuses: Mapping[str, Any], info: DashboardInfo, *, now_ms: int
) -> RenderableType:
    """The whole screen as one renderable."""
    flt = snap.event_filter
    scope = ", ".join(sorted(flt.symbols)) if flt.symbols else "all symbols"
    header = Text.assemble(
        ("liq watch", "bold"),
        f"  {' · '.join(info.exchanges)}  ·  {scope}",
        f"  ·  ≥ {usd(flt.min_usd)}" if flt.min_usd else "",
        f"  ·  {snap.events:,} events",
        f"  ·  {info.source}",
        f"  ·  store: {info.store or 'off'}",
        f"  ·  {iso_ms(now_ms)[:19].replace('T', ' ')} UTC",
    )
    rankings = Table.grid(expand=True, padding=(0, 1))
    rankings.add_column(ratio=1)
    rankings.add_column(ratio=1)
    rankings.add_row(ranking_table(snap, "long"), ranking_table(snap, "short"))
    # The latest events come last: on a short terminal they are what gets cut.
    parts: list[RenderableType] = [header]
    if "binance" in info.exchanges:
        parts.append(Text(f"Note: {BINANCE_NOTE}", style="yellow"))
    parts += [windows_table(snap), rankings]
    if statuses:
        parts.append(venues_table(statuses, now_ms))
    if snap.by_symbol:
        parts.append(symbols_table(snap))
    parts.append(latest_table(snap))
    return Group(*parts)
