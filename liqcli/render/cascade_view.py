"""The ``liq cascade`` terminal view (rich): one row per symbol, REST context, recent alerts, venues.

Pure rendering: detector states (``LiquidationCascadeDetector.state()`` dicts), alerts, context
snapshots and venue statuses in, a rich renderable out. The caller owns the refresh loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from liqcli.core.timeutil import iso_ms
from liqcli.render.dashboard import LONG_STYLE, SHORT_STYLE, usd, venues_table

LEVEL_STYLE = {
    "QUIET": "dim",
    "BUILDING": "yellow",
    "MINOR": "bold yellow",
    "SIGNIFICANT": "bold dark_orange",
    "MAJOR": "bold red",
    "EXTREME": "bold white on red",
}
SIGNATURE_LABELS = (
    ("price_move_30s", "price"),
    ("oi_falling", "OI"),
    ("taker_ratio", "taker"),
    ("funding_flip", "funding"),
)


@dataclass
class CascadeViewInfo:
    """What the header says about this run."""

    symbols: Sequence[str]
    exchanges: Sequence[str]
    min_level: str
    source: str  # "live" or "replay <file>"
    store: str | None  # data dir when cascades are stored
    started_ms: int
    counters: dict[str, int] = field(default_factory=dict)


def _level(name: str) -> Text:
    return Text(name, style=LEVEL_STYLE.get(name, ""))


def _direction(direction: str, active: bool = True) -> Text:
    if not active:
        return Text("-", style="dim")
    longs = direction == "long_liquidation"
    return Text("LONGS" if longs else "SHORTS", style=LONG_STYLE if longs else SHORT_STYLE)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}%"


def _price(value: float | None) -> str:
    return "-" if value is None else f"{value:,.6g}"


def signature_text(signature: Mapping[str, bool | None]) -> Text:
    """``price✓ OI✗ taker? funding?``: present, absent, unknown."""
    text = Text()
    for key, label in SIGNATURE_LABELS:
        value = signature.get(key)
        mark, style = ("✓", "green") if value else ("?", "dim") if value is None else ("✗", "red")
        if text:
            text.append(" ")
        text.append(f"{label}{mark}", style=style)
    return text


def states_table(states: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(
        title="Cascades (direction: the side being liquidated)", title_justify="left", expand=True
    )
    for header, justify in (
        ("symbol", "left"),
        ("level", "left"),
        ("direction", "left"),
        ("phase", "left"),
        ("60s total", "right"),
        ("longs", "right"),
        ("shorts", "right"),
        ("price", "right"),
        ("30s", "right"),
        ("since start", "right"),
        ("action", "left"),
        ("conf", "right"),
        ("signature", "left"),
    ):
        table.add_column(header, justify=justify)
    for s in states:
        active = s["phase"] != "quiet"
        table.add_row(
            s["symbol"],
            _level(s["level"]),
            _direction(s["direction"], active),
            s["phase"],
            usd(s["total_usd_60s"]),
            Text(usd(s["long_usd_60s"]), style=LONG_STYLE if s["long_usd_60s"] else ""),
            Text(usd(s["short_usd_60s"]), style=SHORT_STYLE if s["short_usd_60s"] else ""),
            _price(s["price"]),
            _pct(s["price_change_30s_pct"]),
            _pct(s["price_change_pct"]),
            s["recommended_action"] if active else "-",
            f"{s['confidence']:.2f}" if active else "-",
            signature_text(s["signature"]) if active else Text("-", style="dim"),
        )
    return table


def context_table(context: Mapping[str, Mapping[str, Any]], now_ms: int) -> Table:
    """The Binance REST context each symbol's signature uses."""
    table = Table(title="Context (Binance REST, 5m)", title_justify="left", expand=True)
    for header in ("symbol", "OI change", "taker buy/sell", "funding prev → last", "polled"):
        table.add_column(header, justify="left" if header == "symbol" else "right")
    for symbol, c in context.items():
        polled = c.get("polled_ms")
        funding = "-"
        if c.get("funding_rate") is not None:
            prev = c.get("prev_funding_rate")
            funding = f"{'-' if prev is None else f'{prev:+.4%}'} → {c['funding_rate']:+.4%}"
        age = "waiting" if polled is None else f"{max(now_ms - polled, 0) / 1000:.0f}s ago"
        status = Text(age, style="red" if c.get("error") else "")
        if c.get("error"):
            status.append(f" ({c['error']})")
        table.add_row(
            symbol,
            _pct(c.get("oi_change_pct")),
            "-" if c.get("taker_ratio") is None else f"{c['taker_ratio']:.3f}",
            funding,
            status,
        )
    return table


def alerts_table(alerts: Sequence[Mapping[str, Any]], min_level: str) -> Table:
    table = Table(title=f"Recent alerts (≥ {min_level})", title_justify="left", expand=True)
    for header, justify in (
        ("time (UTC)", "left"),
        ("symbol", "left"),
        ("alert", "left"),
        ("level", "left"),
        ("direction", "left"),
        ("notional", "right"),
        ("price Δ", "right"),
        ("detail", "left"),
    ):
        table.add_column(header, justify=justify)
    for a in alerts:
        ended = a["type"] == "cascade_end"
        if ended:
            detail = f"{a['duration_s']:.0f}s, {a['events']} events, {a['reason']}"
            amount = a["total_usd"]
        else:
            detail = f"{a['phase']}, {a['recommended_action']}"
            amount = a["total_usd_60s"]
        table.add_row(
            str(a["ts"])[11:19],
            a["symbol"],
            "end" if ended else "level",
            _level(a["peak_level"] if ended else a["level"]),
            _direction(a["direction"]),
            usd(amount),
            _pct(a["price_change_pct"]),
            detail,
        )
    if not alerts:
        table.add_row(Text("none yet", style="dim"), "", "", "", "", "", "", "")
    return table


def render_cascade_view(
    states: Sequence[Mapping[str, Any]],
    alerts: Sequence[Mapping[str, Any]],
    statuses: Mapping[str, Any],
    context: Mapping[str, Mapping[str, Any]],
    info: CascadeViewInfo,
    *,
    now_ms: int,
) -> RenderableType:
    """The whole screen as one renderable."""
    counters = info.counters
    header = Text.assemble(
        ("liq cascade", "bold"),
        f"  {', '.join(info.symbols)}  ·  {' · '.join(info.exchanges)}",
        f"  ·  alerts ≥ {info.min_level}",
        f"  ·  {counters.get('liquidations', 0):,} liquidations",
        f"  ·  {counters.get('cascades', 0)} cascades",
        f"  ·  {info.source}",
        f"  ·  store: {info.store or 'off'}",
        f"  ·  {iso_ms(now_ms)[:19].replace('T', ' ')} UTC",
    )
    parts: list[RenderableType] = [header, states_table(states)]
    if context:
        parts.append(context_table(context, now_ms))
    parts.append(alerts_table(alerts, info.min_level))
    if statuses:
        parts.append(venues_table(statuses, now_ms))
    return Group(*parts)
