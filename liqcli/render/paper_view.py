"""The ``liq paper`` dashboard: the leaderboard by equity with medals, and the book and feature
panel, and the cascade detector's line. Laid out for 80x24 first; venue strings are rendered as
plain text."""

from __future__ import annotations

from typing import Any

from liqcli.core.money import quote_of
from liqcli.core.timeutil import iso_ms

MEDALS = {1: "🥇", 2: "🥈", 3: "🥉"}


def compact(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    sign = "-" if value < 0 else ""
    v = abs(value)
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= size:
            return f"{sign}{v / size:.{digits}f}{unit}"
    return f"{sign}{v:.{digits}f}"


def money(value: float | None) -> str:
    """Balances and PnL to the cent while they fit, compact beyond."""
    if value is None:
        return "-"
    return f"{value:,.2f}" if abs(value) < 100_000 else compact(value)


def short_money(value: float | None) -> str:
    """PnL, fees and funding in 80 columns: to the cent below 1,000, compact from there
    (-12.35k), so a long session's four- and five-digit sums are not cut."""
    if value is None:
        return "-"
    return f"{value:,.2f}" if abs(value) < 1_000 else compact(value)


def _position(pos: dict | None) -> str:
    if not pos:
        return "flat"
    side = "L" if pos["side"] == "long" else "S"
    liq = pos["liquidation_price"]
    liq_text = f"{liq:.6g}" if liq is not None else "-"
    return f"{side} {pos['qty']:.4g} entry {pos['entry_price']:.6g} liq {liq_text}"


def _levels(session: Any, width: int, depth: int = 10) -> list:
    """The book's top levels, a line per side (price x size, best first), as many as fit."""
    from rich.text import Text

    book = session.engine.market.book(session.config.symbol)
    if book is None:
        return []
    lines = []
    for side, style in (("ask", "red"), ("bid", "green")):
        line = f"{side}s"
        for price, qty in book.levels(side, depth):
            cell = f"  {price:g} x {compact(qty)}"
            if len(line) + len(cell) > width:
                break
            line += cell
        if line != f"{side}s":
            lines.append(Text(line, style=style, no_wrap=True))
    return lines


def render_paper(session: Any, *, status: str = "") -> Any:
    """The dashboard; the leaderboard keeps positions in its own column from 110 columns up and
    lists them under it below that, so every figure fits an 80x24 terminal."""
    return _Dashboard(session, status)


class _Dashboard:
    def __init__(self, session: Any, status: str) -> None:
        self.session, self.status = session, status

    def __rich_console__(self, console: Any, options: Any) -> Any:
        yield from self.parts(options.max_width, options.height or options.size.height)

    def parts(self, width: int, height: int | None = None) -> list:
        """The dashboard's lines for ``width`` columns; with ``height``, the modes' last-block
        lines (the least urgent) give way first, summed up in one line, so it never scrolls."""
        from rich.table import Table
        from rich.text import Text

        session = self.session
        wide = width >= 110
        board = Table(box=None, pad_edge=False, padding=(0, 0, 0, 1), header_style="bold")
        columns = [
            ("", "left"),
            ("mode", "left"),
            ("equity", "right"),
            ("balance", "right"),
            ("real", "right"),
            ("unreal", "right"),
            ("fees", "right"),
            ("fund", "right"),
            ("trd", "right"),
            ("win", "right"),
            ("lev", "right"),
        ]
        if wide:
            columns.append(("position (entry, liquidation)", "left"))
        for name, justify in columns:
            board.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis")
        rows = session.leaderboard()
        capital = session.config.capital
        positions = []
        sums = money if wide else short_money
        for row in rows:
            win = f"{row['win_rate'] * 100:.0f}%" if row["win_rate"] is not None else "-"
            lev = f"{row['leverage']:g}x" if row["leverage"] else "-"
            equity = row["equity"]
            style = "green" if equity > capital else "red" if equity < capital else ""
            cells = [
                MEDALS.get(row["rank"], "  "),
                Text(row["mode"]),
                Text(money(equity), style=style),
                money(row["balance"]),
                sums(row["realized_pnl"]),
                sums(row["unrealized_pnl"]),
                sums(row["fees"]),
                sums(row["funding"]),
                str(row["trades"]),
                win,
                lev,
            ]
            if wide:
                cells.append(Text(_position(row["position"])))
            elif row["position"]:
                positions.append(f"{row['mode']:>7} {_position(row['position'])}")
            board.add_row(*cells)

        f = session.flow.snapshot
        book = Text(no_wrap=True, overflow="ellipsis")
        book.append(f"{session.config.symbol} ", style="bold")
        if f.bid is not None and f.ask is not None:
            spread = f.spread_bps or 0.0
            base = session.config.symbol.removesuffix(quote_of(session.config.symbol))
            book.append(
                f"bid {f.bid:g} ask {f.ask:g} spread {spread:.{1 if spread >= 1 else 2}f} bps"
                f" depth {compact(f.top_depth)} {base}"
            )
        else:
            book.append("waiting for the book")
        features = Text(
            f"OBI {f.obi if f.obi is not None else 0:+.2f} vel {f.obi_velocity:+.2f}"
            f" SV {f.signed_volume:+.1f} VPIN "
            + (f"{f.vpin:.2f} {f.toxicity}" if f.vpin is not None else "-")
            + (f" micro {f.microprice:.6g}" if f.microprice is not None else "")
            + (f" ATR {f.atr_ratio * 100:.2f}%" if f.atr_ratio is not None else ""),
            no_wrap=True,
            overflow="ellipsis",
        )
        header = Text(
            f"liq paper  {session.session}  events {session.engine.events:,}"
            + (f"  {iso_ms(session.engine.now)[11:19]} UTC" if session.engine.now else "")
            + f"  {self.status}",
            style="bold",
            no_wrap=True,
            overflow="ellipsis",
        )
        parts: list = [header, book, *_levels(session, width), features]
        cascade = session.modes.get("cascade")
        state = getattr(cascade, "last_state", None)
        if cascade is not None:
            line = (
                f"cascade {state['level']} {state['direction'].replace('_', ' ')}"
                f" {state['phase']} ${compact(state['total_usd_60s'])}/60s"
                f" -> {state['recommended_action']}"
                if state and state["level"] != "QUIET"
                # the detector keeps the ended cascade's phase and call: not news any more
                else f"cascade QUIET ${compact(state['total_usd_60s'])}/60s: no cascade now"
                if state
                else "cascade: no liquidation cascade seen yet"
            )
            parts.append(Text(line, no_wrap=True, overflow="ellipsis"))
        parts.append(board)
        for line in positions:
            parts.append(Text(line, no_wrap=True, overflow="ellipsis"))
        for mode, strategy in session.modes.items():
            order = getattr(getattr(strategy, "working", None), "order", None)
            if order is not None and order.is_open:  # a post-only entry resting on the book
                parts.append(
                    Text(
                        f"{mode:>7} working: post-only {order.side.value} {order.remaining:.4g}"
                        f" @ {order.price:g} (filled {order.filled_qty:.4g})",
                        no_wrap=True,
                        overflow="ellipsis",
                    )
                )
        blocked = [row for row in rows if row["last_block"]]
        used = len(parts) + board.row_count  # one line each, the board's header and rows
        room = len(blocked) if height is None else max(height - used, 0)
        shown = blocked if len(blocked) <= room else blocked[: max(room - 1, 0)]
        for row in shown:
            parts.append(
                Text(
                    f"{row['mode']:>7} blocked: {row['last_block']} ({row['blocks']:,})",
                    style="yellow",
                    no_wrap=True,
                    overflow="ellipsis",
                )
            )
        if len(shown) < len(blocked) and room:
            rest = blocked[len(shown) :]
            parts.append(
                Text(
                    f"{len(rest)} more blocked: " + ", ".join(r["mode"] for r in rest),
                    style="yellow",
                    no_wrap=True,
                    overflow="ellipsis",
                )
            )
        return parts
