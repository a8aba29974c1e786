"""The ``liq cascade`` terminal view (rich): one row per symbol, REST context, recent alerts, venues.

Pure rendering: detector states (``LiquidationCascadeDetector.state()`` dicts), alerts, context
snapshots and venue statuses in, a rich renderable out. The caller owns the refresh loop. Laid
out for the terminal's size like the ``liq watch`` dashboard (see render/dashboard.py): every
symbol's row first, then the venues, the latest alerts and the REST context.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType
from rich.table import Table
from rich.text import Text

from liqcli.core.timeutil import iso_ms
from liqcli.render.dashboard import (
    LONG_STYLE,
    SHORT_STYLE,
    SYMBOL_MAX_WIDTH,
    Budget,
    Col,
    FitToScreen,
    first_fitting,
    fitted_table,
    plain,
    usd,
    venues_lines,
    venues_table,
)
from liqcli.render.safe import escape_control

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
    """The side being liquidated; ``-`` only when nothing is (an empty window, no cascade)."""
    if not active:
        return Text("-", style="dim")
    longs = direction == "long_liquidation"
    return Text("LONGS" if longs else "SHORTS", style=LONG_STYLE if longs else SHORT_STYLE)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}%"


def _pct_30s(state: Mapping[str, Any]) -> str:
    """The 30-s move, with the span it covers when the prices known reach less far back."""
    value = state.get("price_change_30s_pct")
    span = state.get("price_change_30s_span_s")
    if value is None or span is None or span >= 30:
        return _pct(value)
    return f"{value:+.2f}% {span:.0f}s"


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


def _is_active(state: Mapping[str, Any]) -> bool:
    return state.get("phase") not in ("quiet", "ended")


def states_table(
    states: Sequence[Mapping[str, Any]],
    console: Console | None = None,
    options: ConsoleOptions | None = None,
    width: int | None = None,
) -> Table:
    console = console or Console(width=200)
    options = options or console.options
    cols = [
        Col("symbol", 0, "left", SYMBOL_MAX_WIDTH),
        Col("level", 0, "left"),
        Col("direction", 0, "left"),
        Col("phase", 2, "left"),
        Col("60s total", 0),
        Col("longs", 5),
        Col("shorts", 5),
        Col("price", 3),
        Col("30s", 1),
        Col("since start", 4),
        Col("action", 2, "left"),
        Col("conf", 1),
        Col("signature", 3, "left"),
    ]
    rows = []
    for s in states:
        active = _is_active(s)
        rows.append(
            [
                plain(s["symbol"]),
                _level(s["level"]),
                # The window's dominant side whenever there is one (after a shutdown ended the
                # cascade, a MAJOR window still has a direction).
                _direction(s["direction"], active or bool(s["total_usd_60s"])),
                # Not active with a level above QUIET: shutdown ended a cascade still in the window.
                "ended" if not active and s["level"] != "QUIET" else escape_control(s["phase"]),
                usd(s["total_usd_60s"]),
                Text(usd(s["long_usd_60s"]), style=LONG_STYLE if s["long_usd_60s"] else ""),
                Text(usd(s["short_usd_60s"]), style=SHORT_STYLE if s["short_usd_60s"] else ""),
                _price(s["price"]),
                _pct_30s(s),
                _pct(s["price_change_pct"]),
                escape_control(s["recommended_action"]) if active else "-",
                f"{s['confidence']:.2f}" if active else "-",
                signature_text(s["signature"]) if active else Text("-", style="dim"),
            ]
        )
    return fitted_table(
        console,
        options,
        width or options.max_width,
        cols,
        rows,
        title="Cascades (direction: the side being liquidated)",
    )


def context_table(
    context: Mapping[str, Mapping[str, Any]],
    now_ms: int,
    console: Console | None = None,
    options: ConsoleOptions | None = None,
    width: int | None = None,
) -> Table:
    """The Binance REST context each symbol's signature uses."""
    console = console or Console(width=200)
    options = options or console.options
    cols = [
        Col("symbol", 0, "left", SYMBOL_MAX_WIDTH),
        Col("OI change", 1),
        Col("taker buy/sell", 1),
        Col("funding prev → last", 2),
        Col("polled", 0),
    ]
    rows = []
    for symbol, c in context.items():
        polled = c.get("polled_ms")
        funding = "-"
        if c.get("funding_rate") is not None:
            prev = c.get("prev_funding_rate")
            funding = f"{'-' if prev is None else f'{prev:+.4%}'} → {c['funding_rate']:+.4%}"
        age = "waiting" if polled is None else f"{max(now_ms - polled, 0) / 1000:.0f}s ago"
        status = Text(age, style="red" if c.get("error") else "")
        if c.get("error"):
            status.append(f" ({escape_control(c['error'])})")
        rows.append(
            [
                plain(symbol),
                _pct(c.get("oi_change_pct")),
                "-" if c.get("taker_ratio") is None else f"{c['taker_ratio']:.3f}",
                funding,
                status,
            ]
        )
    return fitted_table(
        console, options, width or options.max_width, cols, rows, title="Context (Binance REST, 5m)"
    )


def alerts_table(
    alerts: Sequence[Mapping[str, Any]],
    min_level: str,
    console: Console | None = None,
    options: ConsoleOptions | None = None,
    width: int | None = None,
) -> Table:
    console = console or Console(width=200)
    options = options or console.options
    cols = [
        Col("time UTC", 0, "left"),
        Col("symbol", 0, "left", SYMBOL_MAX_WIDTH),
        Col("alert", 2, "left"),
        Col("level", 0, "left"),
        Col("direction", 1, "left"),
        Col("notional", 0),
        Col("price Δ", 3),
        Col("detail", 4, "left"),
    ]
    rows: list[list[RenderableType | str]] = []
    for a in alerts:
        ended = a["type"] == "cascade_end"
        if ended:
            detail = f"{a['duration_s']:.0f}s, {a['events']} events, {a['reason']}"
            amount = a["total_usd"]
        else:
            detail = f"{a['phase']}, {a['recommended_action']}"
            amount = a["total_usd_60s"]
        rows.append(
            [
                str(a["ts"])[11:19],
                plain(a["symbol"]),
                "end" if ended else "level",
                _level(a["peak_level"] if ended else a["level"]),
                _direction(a["direction"]),
                usd(amount),
                _pct(a["price_change_pct"]),
                escape_control(detail),
            ]
        )
    if not alerts:
        rows.append([Text("none yet", style="dim"), "", "", "", "", "", "", ""])
    return fitted_table(
        console,
        options,
        width or options.max_width,
        cols,
        rows,
        title=f"Recent alerts (≥ {min_level})",
    )


def _header(
    info: CascadeViewInfo, states: Sequence[Mapping[str, Any]], now_ms: int, width: int
) -> Text:
    counters = info.counters
    active = sum(1 for s in states if _is_active(s))
    ended = counters.get("cascades", 0)
    cascades = f"{active} active / {ended} ended cascade{'' if ended == 1 else 's'}"
    clock = iso_ms(now_ms)[:19].replace("T", " ")
    symbols, exchanges = ", ".join(info.symbols), " · ".join(info.exchanges)
    liquidations = f"{counters.get('liquidations', 0):,} liquidations"

    def variant(*parts: str) -> Text:
        text = Text("liq cascade", style="bold")
        text.append(escape_control("".join(parts)))
        return text

    return first_fitting(
        [
            variant(
                f"  {symbols}  ·  {exchanges}  ·  alerts ≥ {info.min_level}  ·  {liquidations}",
                f"  ·  {cascades}  ·  {info.source}  ·  store: {info.store or 'off'}",
                f"  ·  {clock} UTC",
            ),
            variant(
                f"  {symbols} · {exchanges} · alerts ≥ {info.min_level} · {liquidations}",
                f" · {cascades} · {clock[11:]}Z",
            ),
            variant(f"  {symbols} · ≥ {info.min_level} · {cascades} · {clock[11:]}Z"),
            variant(f"  {cascades} · {clock[11:]}Z · {symbols}"),
        ],
        width,
    )


def render_cascade_view(
    states: Sequence[Mapping[str, Any]],
    alerts: Sequence[Mapping[str, Any]],
    statuses: Mapping[str, Any],
    context: Mapping[str, Mapping[str, Any]],
    info: CascadeViewInfo,
    *,
    now_ms: int,
) -> RenderableType:
    """The whole screen as one renderable, laid out when rich renders it (the caller's ``Live``
    is not full-screen: one line is left for its cursor)."""

    def build(
        console: Console, options: ConsoleOptions, width: int, height: int | None
    ) -> RenderableType:
        budget = Budget(height)
        budget.take(1, 0)  # header
        state_rows = max(budget.take(2 + len(states), 0) - 2, 0)
        venue_lines = venues_lines(statuses, now_ms, width)
        venue_lines = venue_lines[: budget.take(len(venue_lines), 0)]  # a tiny screen: what fits
        alert_rows = max(budget.take(2 + min(max(len(alerts), 1), 3), 3) - 2, 0)
        context_rows = max(budget.take(2 + len(context), 3) - 2, 0) if context else 0
        if alert_rows > 0:
            alert_rows += budget.take(max(len(alerts), 1) - alert_rows, 0)
        extra = 2 + len(statuses) - len(venue_lines)
        venues_full = bool(statuses) and (extra <= 0 or budget.take(extra) == extra)

        parts: list[RenderableType] = [_header(info, states, now_ms, width)]
        parts.append(
            states_table(states[:state_rows] if height else states, console, options, width)
        )
        if context_rows > 0:
            shown = dict(list(context.items())[:context_rows])
            parts.append(context_table(shown, now_ms, console, options, width))
        if alert_rows > 0:
            parts.append(alerts_table(alerts[:alert_rows], info.min_level, console, options, width))
        if venues_full:
            parts.append(venues_table(statuses, now_ms, console, options, width))
        else:
            parts.extend(venue_lines)
        return Group(*parts)

    return FitToScreen(build, spare_lines=1)
