"""The ``liq paper`` dashboard: the leaderboard by equity with medals, and the book and feature
panel. Laid out for 80 columns first; venue strings are rendered as plain text."""

from __future__ import annotations

from typing import Any

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


def render_paper(session: Any, *, status: str = "") -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    board = Table(title=None, expand=True, pad_edge=False, box=None, header_style="bold")
    for name, justify in (
        ("", "left"),
        ("mode", "left"),
        ("equity", "right"),
        ("bal", "right"),
        ("real", "right"),
        ("unreal", "right"),
        ("fees", "right"),
        ("fund", "right"),
        ("trd", "right"),
        ("win", "right"),
        ("lev", "right"),
        ("position", "left"),
    ):
        board.add_column(name, justify=justify, no_wrap=True)
    rows = session.leaderboard()
    for row in rows:
        pos = row["position"]
        pos_text = (
            f"{pos['side'][0].upper()} {compact(pos['qty'], 3)}@{compact(pos['entry_price'])}"
            f" liq {compact(pos['liquidation_price'])}"
            if pos
            else "flat"
        )
        win = f"{row['win_rate'] * 100:.0f}%" if row["win_rate"] is not None else "-"
        lev = f"{row['leverage']:g}x" if row["leverage"] else "-"
        style = (
            "green"
            if row["equity"] > session.config.capital
            else "red"
            if row["equity"] < session.config.capital
            else ""
        )
        board.add_row(
            MEDALS.get(row["rank"], " "),
            Text(row["mode"]),
            Text(compact(row["equity"]), style=style),
            compact(row["balance"]),
            compact(row["realized_pnl"]),
            compact(row["unrealized_pnl"]),
            compact(row["fees"]),
            compact(row["funding"]),
            str(row["trades"]),
            win,
            lev,
            Text(pos_text),
        )
    f = session.flow.snapshot
    features = Text()
    features.append(Text(f"{session.config.symbol} ", style="bold"))
    if f.bid is not None:
        features.append(f"bid {f.bid:g} ask {f.ask:g} spread {f.spread_bps or 0:.1f}bps ")
    features.append(
        f"OBI {f.obi if f.obi is not None else 0:+.2f} v {f.obi_velocity:+.2f} SV {f.signed_volume:+.1f} "
        f"VPIN {f.vpin if f.vpin is not None else 0:.2f} {f.toxicity} depth {compact(f.top_depth)}"
    )
    blocks = Text()
    for row in rows:
        if row["last_block"]:
            blocks.append(Text(f"{row['mode']}: {row['last_block']}\n", style="yellow"))
    header = Text(
        f"liq paper  session {session.session}  events {session.engine.events:,}  {status}",
        style="bold",
    )
    parts = [header, features, board]
    if blocks:
        parts.append(blocks)
    return Group(*parts)
