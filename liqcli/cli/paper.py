"""``liq paper SYMBOL``: a live paper-trading competition of the seed's order-flow modes and
the cascade mode."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from liqcli.cli.common import run_async, state, upper_symbols
from liqcli.errors import UsageError

HELP = """Live paper trading: the seed's four order-flow modes and the cascade mode compete on
the same Binance book, each with its own balance, on a simulated broker (book-walking market
orders, maker/taker fees, funding from the real rate, isolated margin and liquidation at
Binance's formula).

\b
Modes: 0 no filter (5x) | 1 VPIN filter (3x) | 2 liquidity filter (3x) | 3 all filters (5x)
| cascade: liq cascade's detector on the forceOrder stream, follows a cascade early and
takes the reversal late (3x).
Signal: OBI over the top 20 levels, its velocity, signed volume of the last 100 trades and the
microprice; sizing by confidence, SL/TP by risk level, exits on SL, TP, VPIN > 0.8 in profit,
a 2-hour time stop or a strong reverse signal. Every closed trade goes to paper_trades, each
mode's balance and position to paper_state every second: --session NAME resumes after a restart
or kill -9. --record stores the market data consumed (book_tops, book_depth, agg_trades,
mark_prices, liquidations) so --replay NAME runs the same session again through the same code
(--replay store: everything recorded for SYMBOL); a replay is stored as a new session.
--entry post-only: the seed modes enter with post-only limit orders at their own side's touch
(improved toward the mid by --entry-offset-bps) that pay the maker fee; one that would cross is
rejected and shown as a block; one unfilled after 10 s of event time is cancelled. Exits, and
the cascade mode's entries, stay market orders.
"""

EPILOG = """\b
Examples:
  liq paper BTCUSDT                                  # live dashboard, all five modes
  liq paper BTCUSDT --session night1 --record        # resumable, market data recorded
  liq paper BTCUSDT --modes 0,3 --leverage 0=10,3=3 --capital 5000
  liq paper BTCUSDT --modes cascade --leverage cascade=5
  liq paper BTCUSDT --dynamic-leverage rules --format jsonl | jq 'select(.type=="close")'
  liq paper BTCUSDT --replay night1 --format json    # the recorded session again
  liq paper BTCUSDT --replay store --modes 0,3       # everything recorded for BTCUSDT
  liq paper BTCUSDT --modes 0,3 --entry post-only --entry-offset-bps 0.5   # maker entries
"""


def paper(
    ctx: typer.Context,
    symbol: Annotated[
        str, typer.Argument(help="Binance USDⓈ-M perpetual, e.g. BTCUSDT.", show_default=False)
    ],
    modes: Annotated[
        str, typer.Option("--modes", help="Competing modes: 0, 1, 2, 3 and cascade.")
    ] = "0,1,2,3,cascade",
    capital: Annotated[
        float, typer.Option("--capital", help="Starting balance of each mode (USDT).")
    ] = 10_000.0,
    leverage: Annotated[
        str | None,
        typer.Option(
            "--leverage",
            help="Per-mode leverage MODE=N,... [default: 0=5,1=3,2=3,3=5,cascade=3].",
            show_default=False,
        ),
    ] = None,
    dynamic: Annotated[
        str,
        typer.Option("--dynamic-leverage", help="off, rules (the seed's), kelly or vol_target."),
    ] = "off",
    fees: Annotated[
        str, typer.Option("--fees", help="MAKER,TAKER, e.g. 0.02%,0.05%.")
    ] = "0.02%,0.05%",
    slippage_bps: Annotated[
        float, typer.Option("--slippage-bps", help="Extra slippage per market fill.")
    ] = 2.0,
    entry: Annotated[
        str,
        typer.Option(
            "--entry",
            help="Seed modes' entry orders: market, or post-only at the touch (maker fee; "
            "cancelled after 10 s unfilled).",
        ),
    ] = "market",
    entry_offset_bps: Annotated[
        float,
        typer.Option(
            "--entry-offset-bps",
            help="post-only: improve the touch toward the mid by this many bps (0 = join it; "
            "wider than the spread: rejected as crossing).",
        ),
    ] = 0.0,
    session: Annotated[
        str | None,
        typer.Option(
            "--session",
            metavar="NAME",
            help="Session name: resume it if stored [default: new].",
            show_default=False,
        ),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option("--duration", help="Stop after this many seconds.", show_default=False),
    ] = None,
    replay: Annotated[
        str | None,
        typer.Option(
            "--replay",
            metavar="NAME",
            help="Replay a recorded session NAME (needs --record when it ran), or 'store': "
            "all market data recorded for SYMBOL; into a new session.",
            show_default=False,
        ),
    ] = None,
    record: Annotated[
        bool,
        typer.Option("--record", help="Store the market data consumed, for replays and backtests."),
    ] = False,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="dashboard, jsonl (orders, fills, cancels, closes, blocks) or json (summary).",
        ),
    ] = "dashboard",
) -> None:
    from liqcli.services import paper as svc
    from liqcli.trading.costs import parse_fees

    (symbol,) = upper_symbols([symbol])
    if fmt not in ("dashboard", "jsonl", "json"):
        raise UsageError(f"invalid --format {fmt!r}: dashboard, jsonl or json")
    if duration is not None and not 0 < duration < float("inf"):
        raise UsageError("--duration must be a positive number of seconds")
    if replay and record:
        raise UsageError("--record records live data: drop it with --replay")
    if replay is not None and not all(c.isalnum() or c in "-_." for c in replay):
        raise UsageError(f"invalid --replay {replay!r}: a session name")
    data_dir = state(ctx).data_dir
    if replay is not None:
        from liqcli.store.parquet import Store

        name = svc.replay_session_name(Store(data_dir), replay, session)
    else:
        name = session or svc.new_session_name()
    config = svc.PaperConfig(
        symbol=symbol,
        modes=tuple(m.strip() for m in modes.split(",") if m.strip()),
        capital=capital,
        leverage=svc.parse_leverage(leverage),
        dynamic=dynamic,
        fees=parse_fees(fees),
        slippage_bps=slippage_bps,
        session=name,
        entry=entry,
        entry_offset_bps=entry_offset_bps,
    )
    config.validate()
    run_async(_main(config, data_dir, symbol, replay, record, duration, fmt))


async def _main(config, data_dir, symbol, replay, record, duration, fmt) -> None:
    import asyncio
    import contextlib
    import sys
    import time

    from liqcli.core.timeutil import iso_ms
    from liqcli.render.output import dumps
    from liqcli.render.paper_view import render_paper
    from liqcli.services import paper as svc
    from liqcli.store.parquet import Store

    store = Store(data_dir)
    if replay is not None:
        from liqcli.sources.recorder import RecordedSource

        # "store": all the market data recorded for the symbol; else that session's range
        start, end = (None, None) if replay == "store" else svc.session_range(store, replay)
        source = RecordedSource(store, symbols=[symbol], start=start, end=end)
    else:
        from liqcli.sources.binance_market import BinanceMarketSource, MarketOptions

        # forceOrder only when the cascade mode competes
        source = BinanceMarketSource([symbol], MarketOptions(liquidations=config.liquidations))
        if record:
            from liqcli.sources.recorder import Recorder

            source = Recorder(source, store)
    out = sys.stdout

    def emit(record: dict) -> None:
        if fmt == "jsonl":
            ts = record.get("ts")
            out.write(dumps({**record, "ts": iso_ms(ts) if ts else None}).decode() + "\n")

    run = svc.open_paper(config, data_dir, emit=emit)
    view = None
    if fmt == "dashboard":
        from rich.console import Console
        from rich.live import Live

        console = Console(file=out)
        if console.is_terminal:
            view = Live(
                console=console,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
                transient=True,  # cleared at the end: the final dashboard is printed once
            )
            view.start()

    last_draw = [0.0]

    def on_batch(session) -> None:
        if fmt == "jsonl":
            out.flush()
        elif view is not None and time.monotonic() - last_draw[0] >= 1.0:
            last_draw[0] = time.monotonic()
            view.update(render_paper(session), refresh=True)

    try:
        coro = svc.drive(run, source, duration_s=duration, on_batch=on_batch)
        if duration is not None and replay is None:
            # live: stop at the wall-clock duration even if the venue sends nothing
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(coro, duration)
        else:
            await coro
    finally:
        await source.aclose()
        if view is not None:
            view.stop()
        if fmt == "json":
            out.write(dumps(run.session.summary()).decode() + "\n")
        elif fmt == "dashboard":
            from rich.console import Console

            Console(file=out, width=None if out.isatty() else 100).print(
                render_paper(run.session, status="ended")
            )
        out.flush()
    if replay is not None and not run.session.engine.events:
        logging.getLogger("liq").warning("--replay %s: nothing recorded for %s", replay, symbol)


def register(app: typer.Typer) -> None:
    app.command("paper", help=HELP, epilog=EPILOG)(paper)
