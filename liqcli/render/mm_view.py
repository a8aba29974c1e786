"""The ``liq mm`` dashboard: book, mid, position against target and max, raw and skewed quotes,
recent fills, realised and unrealised PnL and fees. Fits 80x24; venue strings are plain Text."""

from __future__ import annotations

from typing import Any


def _f(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}".rstrip("0").rstrip(".")


def render_mm(run: Any, *, status: str = "") -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    cfg = run.cfg
    p = cfg.params
    pos = run.broker.position(cfg.symbol)
    pnl = run.pnl()
    q = run.quote_view()
    st = run.strategy.stats
    mode = "PAPER" if cfg.paper else "LIVE"
    head = Text(f"liq mm  {cfg.exchange} {cfg.symbol}  {mode}  session {run.session}", style="bold")
    state = status or run.status
    halted = st.halted or getattr(run.broker, "halted", "") or st.paused
    line2 = Text(f"status: {state}" + (f"  ({halted})" if halted else ""))

    book = Table(box=None, pad_edge=False, expand=False, header_style="bold")
    for name in ("bid qty", "bid", "ask", "ask qty"):
        book.add_column(name, justify="right", no_wrap=True)
    view = run.engine.market.book(cfg.symbol)
    bids = view.levels("bid", 5) if view is not None else []
    asks = view.levels("ask", 5) if view is not None else []
    for i in range(max(len(bids), len(asks), 1)):
        b = bids[i] if i < len(bids) else None
        a = asks[i] if i < len(asks) else None
        book.add_row(
            Text(_f(b[1]) if b else ""), Text(_f(b[0]) if b else ""),
            Text(_f(a[0]) if a else ""), Text(_f(a[1]) if a else ""),
        )  # fmt: skip

    quotes = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("", "bid", "ask"):
        quotes.add_column(name, justify="right", no_wrap=True)
    quotes.add_row(Text("mid"), Text(_f(q.get("mid"))), Text(""))
    quotes.add_row(Text("raw"), Text(_f(q.get("raw_bid"))), Text(_f(q.get("raw_ask"))))
    quotes.add_row(Text("quoted"), Text(_f(q.get("bid"))), Text(_f(q.get("ask"))))
    quotes.add_row(Text("levels"), Text(str(len(q["bids"]))), Text(str(len(q["asks"]))))

    side = "flat" if not pos.qty else ("long" if pos.qty > 0 else "short")
    risk = Text(
        f"position {_f(pos.qty)} ({side}) @ {_f(pos.entry_price)}   target {_f(p.target_position)}"
        f" ±{_f(p.position_threshold)}   max {_f(p.max_position)}\n"
        f"PnL realised {pnl['realized_pnl']:+.4f}  unrealised {pnl['unrealized_pnl']:+.4f}"
        f"  fees {pnl['fees']:.4f}  total {pnl['total_pnl']:+.4f}\n"
        f"orders {st.submits}  cancels {st.cancels}  post-only rejects {st.post_only_rejects}"
        f"  stops {st.stops}  fills {st.fills}"
    )

    fills = Table(box=None, pad_edge=False, header_style="bold", title=None)
    for name in ("fill", "side", "price", "qty", "fee", "liq"):
        fills.add_column(name, justify="right", no_wrap=True)
    for row in list(run.recent_fills)[:5]:
        fills.add_row(
            Text(str(row["fill_id"])[-10:]), Text(row["side"]), Text(_f(row["price"])),
            Text(_f(row["qty"])), Text(_f(row["fee"], 6)), Text(row["liquidity"]),
        )  # fmt: skip
    top = Table.grid(padding=(0, 4))
    top.add_row(book, quotes)
    return Group(head, line2, top, risk, fills)
