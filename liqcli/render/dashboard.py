"""The ``liq watch`` terminal dashboard (rich): rolling windows, rankings, latest events, venues.

Pure rendering: a :class:`~liqcli.analytics.windows.Snapshot` plus the venues' status in, a rich
renderable out. The caller owns the refresh loop (``rich.live.Live``).

The layout is decided at render time for the space rich offers (``FitToScreen``): on a terminal
it never needs more lines than the terminal has. Panels are given lines by priority (the latest
events and the venues first, the per-symbol table last) and tables drop their least important
columns until they fit the width, so an amount is never cut. Printed to a file or pipe, nothing
is left out. Every venue string goes in as plain ``Text`` with control characters escaped: a
symbol such as ``[/]`` or ``\\x1b[2J`` is shown, never interpreted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from liqcli.analytics.windows import Snapshot, Totals
from liqcli.core.timeutil import iso_ms
from liqcli.exchanges.registry import BINANCE_NOTE  # the venue's note lives in its entry
from liqcli.render.safe import escape_control

BINANCE_NOTE_SHORT = "Binance sends ≤ 1 liquidation/symbol/s: its totals are a lower bound."
LONG_STYLE = "bold red"
SHORT_STYLE = "bold green"
_STATE_STYLE = {"connected": "green", "connecting": "yellow", "down": "red", "closed": "dim"}
SYMBOL_MAX_WIDTH = 24  # longer (hostile) symbols end in "…"; amounts are never cut
_MIN_LATEST = 5  # latest rows shown before any lower-priority panel gets a line
_MIN_RANKED = 3


@dataclass
class DashboardInfo:
    """What the page header says about this run."""

    exchanges: Sequence[str]
    started_ms: int
    store: str | None = None  # data dir when events are stored, None with --no-store
    source: str = "live"  # "live" or "replay <file>"
    counters: dict[str, int] = field(default_factory=dict)  # received, duplicates, stored …

    def to_dict(self) -> dict[str, Any]:
        # The data dir is left out: the web dashboard serves this document.
        return {
            "exchanges": list(self.exchanges),
            "started": iso_ms(self.started_ms),
            "stored": self.store is not None,
            "source": self.source,
            "counters": dict(self.counters),
            "binance_note": BINANCE_NOTE,
        }


def usd(value: float) -> str:
    """Compact dollars, three significant digits: $950, $12.3K, $129M, $1.20B (at most 7 chars
    with a sign, so a column of them fits an 80-column terminal)."""
    sign = "-" if value < 0 else ""
    v = abs(value)
    if not v < 1e15:  # also NaN
        return f"{sign}${v:.3g}"
    for suffix, limit in (("", 1.0), ("K", 1e3), ("M", 1e6), ("B", 1e9), ("T", 1e12)):
        scaled = v / limit
        if not suffix:
            text = f"{scaled:.0f}"
        else:
            digits = 2 if round(scaled, 2) < 10 else 1 if round(scaled, 1) < 100 else 0
            text = f"{scaled:.{digits}f}"
        if float(text) < 1000 or suffix == "T":
            return f"{sign}${text}{suffix}"
    raise AssertionError("unreachable")


def plain(value: object, style: str = "") -> Text:
    """A venue string as a cell: plain text (never markup), control characters escaped."""
    return Text(escape_control(value), style=style, no_wrap=True, overflow="ellipsis")


def _share(t: Totals) -> str:
    share = t.long_share
    return "-" if share is None else f"{share:.0%}"


def _side_text(side: str) -> Text:
    return Text(side.upper(), style=LONG_STYLE if side == "long" else SHORT_STYLE)


def _hms(ms: int) -> str:
    return iso_ms(ms)[11:19]


# -- fitting --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Col:
    """A table column: ``priority`` 0 is kept longest; higher numbers are dropped first."""

    header: str
    priority: int = 0
    justify: str = "right"
    max_width: int | None = None
    style: str | None = None


def natural_width(console: Console, options: ConsoleOptions, renderable: RenderableType) -> int:
    return Measurement.get(console, options.update_width(10_000), renderable).maximum


def fitted_table(
    console: Console,
    options: ConsoleOptions,
    width: int,
    cols: Sequence[Col],
    rows: Sequence[Sequence[RenderableType | str]],
    *,
    title: str | None = None,
    title_style: str | None = None,
) -> Table:
    """A borderless table of the columns that fit ``width``, dropping the least important first
    (never the last one). Cells that are ``str`` become plain text, never markup."""
    cells = [[c if isinstance(c, Text) else plain(c) for c in row] for row in rows]
    keep = list(range(len(cols)))
    while True:
        table = Table(
            # One line: the table is at least as wide as its title, which is cut only when the
            # screen is narrower still.
            title=None if title is None else plain(title),
            min_width=None if title is None else min(len(title), width),
            title_justify="left",
            title_style=title_style or "bold",
            box=None,
            pad_edge=False,
            header_style="bold dim",
        )
        for i in keep:
            c = cols[i]
            table.add_column(
                plain(c.header),  # a venue name can be a header: never markup
                justify=c.justify,  # type: ignore[arg-type]
                no_wrap=True,
                overflow="ellipsis",
                max_width=c.max_width,
                style=c.style,
            )
        for row in cells:
            table.add_row(*(row[i] for i in keep))
        if len(keep) == 1 or natural_width(console, options, table) <= width:
            return table
        keep.remove(max(keep, key=lambda i: (cols[i].priority, i)))


def pack_line(parts: Sequence[Text], width: int, sep: str = "  ·  ") -> list[Text]:
    """Parts joined on lines no wider than ``width`` (a part is never split unless alone)."""
    lines: list[Text] = []
    line = Text(no_wrap=True, overflow="ellipsis")
    for part in parts:
        if line and line.cell_len + len(sep) + part.cell_len > width:
            lines.append(line)
            line = Text(no_wrap=True, overflow="ellipsis")
        if line:
            line.append(sep, style="dim")
        line.append_text(part)
    if line:
        lines.append(line)
    return lines


def first_fitting(variants: Sequence[Text], width: int) -> Text:
    """The first (richest) variant that fits on one line; the last one cut with "…" otherwise."""
    for variant in variants:
        if variant.cell_len <= width:
            return variant
    last = variants[-1].copy()
    last.no_wrap, last.overflow = True, "ellipsis"
    return last


class FitToScreen:
    """Builds the screen at render time for the width and height rich offers.

    ``build(console, options, width, height)`` gets the height rich asks for when it asks for
    one (``render_lines`` with a height); else on a terminal (a ``Live``, full-screen or not, or
    a final print) the terminal's height less ``spare_lines`` (1 keeps the cursor's line of a
    non-screen ``Live`` free, so the view never scrolls); printed to a file or pipe, ``None``:
    no limit, everything is shown.
    """

    def __init__(
        self,
        build: Callable[[Console, ConsoleOptions, int, int | None], RenderableType],
        *,
        spare_lines: int = 1,
    ) -> None:
        self.build = build
        self.spare_lines = spare_lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        height = options.height
        if height is None and console.is_terminal:
            height = max(options.max_height - self.spare_lines, 1)
        yield self.build(console, options, options.max_width, height)


class Budget:
    """Lines left on the screen; ``None`` = unlimited."""

    def __init__(self, lines: int | None) -> None:
        self.left = lines

    def take(self, wanted: int, minimum: int | None = None) -> int:
        """Up to ``wanted`` lines (0 if fewer than ``minimum`` are left)."""
        if self.left is None:
            return wanted
        minimum = wanted if minimum is None else minimum
        got = min(wanted, self.left)
        if got < minimum:
            return 0
        self.left -= got
        return got


# -- panels ---------------------------------------------------------------------------------------


def windows_table(
    snap: Snapshot, console: Console, options: ConsoleOptions, width: int, *, title: bool = True
) -> Table:
    exchanges = list(snap.by_exchange)
    cols = [
        Col("window", 0, "left"),
        Col("longs", 0),
        Col("#", 3),
        Col("shorts", 0),
        Col("#", 3),
        Col("total", 1),
        Col("long %", 2),
        *(Col(escape_control(ex), 4 + i, style="dim") for i, ex in enumerate(exchanges)),
    ]
    rows = []
    for label in snap.windows:
        t = snap.overall[label]
        rows.append(
            [
                label,
                Text(usd(t.long_usd), style=LONG_STYLE if t.long_count else ""),
                f"{t.long_count:,}",
                Text(usd(t.short_usd), style=SHORT_STYLE if t.short_count else ""),
                f"{t.short_count:,}",
                usd(t.total_usd),
                _share(t),
                *(usd(snap.by_exchange[ex][label].total_usd) for ex in exchanges),
            ]
        )
    return fitted_table(
        console, options, width, cols, rows, title="Rolling totals" if title else None
    )


def ranking_table(
    snap: Snapshot,
    side: str,
    console: Console,
    options: ConsoleOptions,
    width: int,
    limit: int | None = None,
) -> Table:
    ranked = snap.top_long if side == "long" else snap.top_short
    style = LONG_STYLE if side == "long" else SHORT_STYLE
    title = f"Top {'longs' if side == 'long' else 'shorts'} liquidated ({snap.rank_window})"
    cols = [
        Col("#", 3),
        Col("symbol", 0, "left", SYMBOL_MAX_WIDTH),
        Col("notional", 0),
        Col("events", 2),
    ]
    rows: list[list[RenderableType | str]] = []
    for rank, (symbol, t) in enumerate(ranked[:limit], 1):
        amount = t.long_usd if side == "long" else t.short_usd
        count = t.long_count if side == "long" else t.short_count
        rows.append([str(rank), plain(symbol), Text(usd(amount), style=style), f"{count:,}"])
    if not ranked:
        rows.append(["", Text("none yet", style="dim"), "", ""])
    return fitted_table(console, options, width, cols, rows, title=title, title_style=style)


def symbols_table(
    snap: Snapshot, console: Console, options: ConsoleOptions, width: int, limit: int | None
) -> Table:
    cols = [
        Col("symbol", 0, "left", SYMBOL_MAX_WIDTH),
        *(Col(label, 1 + i) for i, label in enumerate(snap.windows)),
    ]
    rows = [
        [plain(symbol), *(usd(totals[label].total_usd) for label in snap.windows)]
        for symbol, totals in list(snap.by_symbol.items())[:limit]
    ]
    return fitted_table(console, options, width, cols, rows, title="Per symbol (total $)")


def latest_table(
    snap: Snapshot, console: Console, options: ConsoleOptions, width: int, limit: int | None
) -> Table:
    cols = [
        Col("time UTC", 1, "left"),
        Col("exchange", 2, "left"),
        Col("symbol", 0, "left", SYMBOL_MAX_WIDTH),
        Col("side", 0, "left"),
        Col("price", 3),
        Col("qty", 4),
        Col("notional", 0),
    ]
    rows: list[list[RenderableType | str]] = []
    for e in snap.latest[:limit]:
        style = LONG_STYLE if e.side == "long" else SHORT_STYLE
        rows.append(
            [
                _hms(e.ts),
                plain(e.exchange),
                plain(e.symbol),
                _side_text(e.side),
                f"{e.price:,.6g}",
                f"{e.qty:,.6g}",
                Text(usd(e.notional_usd), style=style),
            ]
        )
    if not snap.latest:
        rows.append([Text("waiting for liquidations…", style="dim"), "", "", "", "", "", ""])
    shown = f"{len(rows)} of {len(snap.latest)}" if len(rows) < len(snap.latest) else ""
    title = "Latest liquidations" + (f" ({shown})" if shown else "")
    return fitted_table(console, options, width, cols, rows, title=title)


def _status_dict(status: Any) -> dict[str, Any]:
    return status.to_dict() if hasattr(status, "to_dict") else dict(status)


def _age(s: Mapping[str, Any], now_ms: int) -> str:
    last = s.get("last_message_ms")
    return "-" if last is None else f"{max(now_ms - last, 0) / 1000:.0f}s ago"


def venues_table(
    statuses: Mapping[str, Any],
    now_ms: int,
    console: Console | None = None,
    options: ConsoleOptions | None = None,
    width: int | None = None,
) -> Table:
    """Connection health; ``statuses`` maps venue -> VenueStatus (or anything with to_dict())."""
    console = console or Console(width=200)
    options = options or console.options
    cols = [
        Col("venue", 0, "left"),
        Col("state", 0, "left"),
        Col("reconnects", 3),
        Col("gaps", 3),
        Col("garbage", 4),
        Col("malformed", 4),
        Col("events", 2),
        Col("last msg", 1),
    ]
    rows = []
    for venue, status in statuses.items():
        s = _status_dict(status)
        state = str(s.get("state", "?"))
        rows.append(
            [
                plain(venue),
                plain(state, _STATE_STYLE.get(state, "")),
                str(s.get("reconnects", 0)),
                str(s.get("gaps", 0)),
                str(s.get("garbage", 0)),
                str(s.get("malformed", 0)),
                f"{s.get('events', 0):,}",
                _age(s, now_ms),
            ]
        )
    return fitted_table(console, options, width or options.max_width, cols, rows, title="Venues")


def venues_lines(statuses: Mapping[str, Any], now_ms: int, width: int) -> list[Text]:
    """The venues in a line or two: state, last message, and only the counters that are not 0."""
    parts = []
    for venue, status in statuses.items():
        s = _status_dict(status)
        state = str(s.get("state", "?"))
        part = plain(venue, "bold")
        part.append(" ")
        part.append(escape_control(state), style=_STATE_STYLE.get(state, ""))
        if s.get("last_message_ms") is not None:
            part.append(f" {_age(s, now_ms).removesuffix(' ago')}", style="dim")
        for key, label in (
            ("reconnects", "reconn"),
            ("gaps", "gaps"),
            ("malformed", "malformed"),
            ("garbage", "garbage"),
        ):
            if s.get(key):
                part.append(f" {label} {s[key]}", style="yellow")
        parts.append(part)
    if not parts:
        return []
    parts[0] = Text.assemble(("venues: ", "bold dim"), parts[0])
    return pack_line(parts, width, sep=" · ")


def _header(snap: Snapshot, info: DashboardInfo, now_ms: int, width: int) -> Text:
    flt = snap.event_filter
    scope = ", ".join(sorted(flt.symbols)) if flt.symbols else "all symbols"
    clock = iso_ms(now_ms)[:19].replace("T", " ")
    exchanges = " · ".join(info.exchanges)
    minimum = f"  ·  ≥ {usd(flt.min_usd)}" if flt.min_usd else ""

    def variant(*parts: str) -> Text:
        text = Text("liq watch", style="bold")
        text.append(escape_control("".join(parts)))
        return text

    return first_fitting(
        [
            variant(
                f"  {exchanges}  ·  {scope}{minimum}  ·  {snap.events:,} events  ·  {info.source}",
                f"  ·  store: {info.store or 'off'}  ·  {clock} UTC",
            ),
            variant(
                f"  {exchanges}  ·  {scope}{minimum}  ·  {snap.events:,} events  ·  {info.source}",
                f"  ·  {'stored' if info.store else 'store off'}  ·  {clock[11:]} UTC",
            ),
            variant(
                f"  {exchanges} · {scope}{minimum} · {snap.events:,} events · {info.source.split(' ')[0]} · {clock[11:]}Z"
            ),
        ],
        width,
    )


def render_dashboard(
    snap: Snapshot, statuses: Mapping[str, Any], info: DashboardInfo, *, now_ms: int
) -> RenderableType:
    """The whole screen as one renderable, laid out when rich renders it."""

    def build(
        console: Console, options: ConsoleOptions, width: int, height: int | None
    ) -> RenderableType:
        return _layout(snap, statuses, info, now_ms, console, options, width, height)

    return FitToScreen(build, spare_lines=0)


def _layout(
    snap: Snapshot,
    statuses: Mapping[str, Any],
    info: DashboardInfo,
    now_ms: int,
    console: Console,
    options: ConsoleOptions,
    width: int,
    height: int | None,
) -> RenderableType:
    budget = Budget(height)
    header = _header(snap, info, now_ms, width)
    budget.take(1, 0)
    budget.take(1 + len(snap.windows), 0)
    venue_lines = venues_lines(statuses, now_ms, width)
    venues_full = False
    venue_lines = venue_lines[: budget.take(len(venue_lines), 0)]  # a tiny screen: what fits
    latest_available = max(len(snap.latest), 1)
    latest_rows = budget.take(2 + min(latest_available, _MIN_LATEST), 3) - 2
    ranked_available = max(len(snap.top_long), len(snap.top_short), 1)
    symbols_first = bool(snap.event_filter.symbols)  # a run watching named symbols: theirs first
    symbol_rows = 0

    def take_symbols() -> int:
        return max(budget.take(2 + len(snap.by_symbol), 3) - 2, 0) if snap.by_symbol else 0

    if symbols_first:
        symbol_rows = take_symbols()
    ranked_rows = max(budget.take(2 + min(ranked_available, _MIN_RANKED), 3) - 2, 0)
    binance = "binance" in info.exchanges and budget.take(1) == 1
    if latest_rows > 0:
        latest_rows += budget.take(latest_available - latest_rows, 0)
    windows_title = budget.take(1) == 1
    if ranked_rows > 0:
        ranked_rows += budget.take(ranked_available - ranked_rows, 0)
    if statuses:
        extra = 2 + len(statuses) - len(venue_lines)
        venues_full = budget.take(extra) == extra if extra > 0 else True
    if not symbols_first:
        symbol_rows = take_symbols()

    parts: list[RenderableType] = [header]
    if binance:
        parts.append(
            first_fitting(
                [Text(f"Note: {BINANCE_NOTE}", style="yellow"), Text(BINANCE_NOTE_SHORT, "yellow")],
                width,
            )
        )
    parts.append(windows_table(snap, console, options, width, title=windows_title))
    if ranked_rows > 0:
        half = (width - 1) // 2
        rankings = Table.grid(expand=True, padding=(0, 1))
        rankings.add_column(ratio=1)
        rankings.add_column(ratio=1)
        rankings.add_row(
            ranking_table(snap, "long", console, options, half, ranked_rows),
            ranking_table(snap, "short", console, options, half, ranked_rows),
        )
        parts.append(rankings)
    if symbol_rows > 0:
        parts.append(symbols_table(snap, console, options, width, symbol_rows))
    if latest_rows > 0:
        parts.append(latest_table(snap, console, options, width, latest_rows))
    if venues_full and statuses:
        parts.append(venues_table(statuses, now_ms, console, options, width))
    else:
        parts.extend(venue_lines)
    return Group(*parts)
