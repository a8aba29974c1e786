"""``liq mm``: a perpetual market maker on Backpack, live or ``--paper``."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from liqcli.cli.common import run_async, state
from liqcli.errors import UsageError

HELP = """Market making on a Backpack perpetual: post-only quotes around the mid, refreshed only
when the wanted price moves past --refresh-tolerance or an order outlives --max-order-age (the
rest keep their queue place), inventory skew as a fraction of the half-spread and never across
the book, sizes kept inside --max-position by what rests plus what is held.

\b
Position table (|position| vs --target-position, --position-threshold, --max-position):
inside target + threshold nothing; above it a reduce-only post-only order for the excess;
above max a reduce-only market close of the excess over max. --stop-loss / --take-profit on
unrealised PnL cancel all, close at market and continue; --max-loss stops for good.

\b
Safety: every exit (end of --duration, Ctrl-C, SIGTERM, an error, a lost connection) cancels
all orders and checks none is left; start-up cancels what a crashed run left. Any doubt (an
order request with an unknown outcome, the private stream down, a position mismatch) cancels
all and stops. Keys come from LIQ_BACKPACK_API_KEY / LIQ_BACKPACK_API_SECRET or api_key /
api_secret under [mm.backpack] in the config file, never from the command line.
--paper quotes the same way on the live public book with simulated fills (a resting order
fills when trades print through its price): no keys needed.
Every fill goes to the mm_fills dataset, a state snapshot to mm_state every 10 s.
"""

EPILOG = """\b
Examples:
  liq mm --symbol SOL_USDC_PERP --spread 0.05 --quantity 0.1 --paper
  liq mm --symbol SOL_USDC_PERP --spread 0.04 --quantity 0.1 --max-orders 2 \\
         --max-position 1 --position-threshold 0.3 --inventory-skew 0.5
  liq mm --symbol SOL_USDC_PERP --spread 0.05 --quantity 0.1 --stop-loss -5 \\
         --take-profit 10 --max-loss 20 --duration 3600 --format jsonl | jq .type
"""


def mm(
    ctx: typer.Context,
    symbol: Annotated[
        str,
        typer.Option(
            "--symbol", "-s", help="Venue symbol, e.g. SOL_USDC_PERP.", show_default=False
        ),
    ],
    spread: Annotated[
        float,
        typer.Option(
            "--spread", help="Full spread in percent: bid = mid*(1-s/200), ask = mid*(1+s/200)."
        ),
    ],
    quantity: Annotated[float, typer.Option("--quantity", help="Size per level, base units.")],
    exchange: Annotated[
        str, typer.Option("--exchange", "-e", help="Venue (backpack).")
    ] = "backpack",
    market_type: Annotated[
        str, typer.Option("--market-type", help="perp (spot is not supported).")
    ] = "perp",
    max_orders: Annotated[int, typer.Option("--max-orders", help="Levels per side.")] = 1,
    target_position: Annotated[
        float, typer.Option("--target-position", help="Inventory the table steers to (>= 0).")
    ] = 0.0,
    max_position: Annotated[
        float, typer.Option("--max-position", help="Hard cap on |position| incl. resting orders.")
    ] = 1.0,
    position_threshold: Annotated[
        float, typer.Option("--position-threshold", help="Tolerated excess over the target.")
    ] = 0.5,
    inventory_skew: Annotated[
        float, typer.Option("--inventory-skew", help="0..1 of the half-spread, at max position.")
    ] = 0.0,
    stop_loss: Annotated[
        float | None,
        typer.Option(
            "--stop-loss",
            help="Unrealised PnL (negative, quote units) that closes.",
            show_default=False,
        ),
    ] = None,
    take_profit: Annotated[
        float | None,
        typer.Option(
            "--take-profit", help="Unrealised PnL (quote units) that closes.", show_default=False
        ),
    ] = None,
    max_loss: Annotated[
        float | None,
        typer.Option(
            "--max-loss",
            help="Kill switch: total PnL loss (quote units) that stops.",
            show_default=False,
        ),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option("--duration", help="Stop after this many seconds.", show_default=False),
    ] = None,
    interval: Annotated[
        float, typer.Option("--interval", help="Seconds between quote decisions.")
    ] = 5.0,
    refresh_tolerance: Annotated[
        float,
        typer.Option(
            "--refresh-tolerance",
            metavar="BPS",
            help="Re-place an order only when its price is off by more.",
        ),
    ] = 5.0,
    max_order_age: Annotated[
        float, typer.Option("--max-order-age", metavar="S", help="Re-place orders older than this.")
    ] = 300.0,
    paper: Annotated[
        bool, typer.Option("--paper", help="Simulated fills on the live public book; no keys.")
    ] = False,
    session: Annotated[
        str | None,
        typer.Option(
            "--session",
            metavar="NAME",
            help="Session name in mm_fills / mm_state [default: new].",
            show_default=False,
        ),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="dashboard or jsonl (quote, order, cancel, fill, position, stop).",
        ),
    ] = "dashboard",
) -> None:
    from liqcli.services import mm as svc
    from liqcli.trading.strategies.market_maker import MMParams

    exchange = exchange.strip().lower()
    if exchange != "backpack":
        raise UsageError(f"invalid --exchange {exchange!r}: backpack (aster and paradex follow)")
    if market_type.strip().lower() != "perp":
        raise UsageError(f"invalid --market-type {market_type!r}: liq mm trades perpetuals (perp)")
    symbol = symbol.strip().upper()
    if not symbol or not symbol.replace("_", "").isalnum():
        raise UsageError(f"invalid --symbol {symbol!r}: expected e.g. SOL_USDC_PERP")
    if fmt not in ("dashboard", "jsonl"):
        raise UsageError(f"invalid --format {fmt!r}: dashboard or jsonl")
    if duration is not None and duration <= 0:
        raise UsageError("--duration must be positive")
    if session is not None and not all(c.isalnum() or c in "-_." for c in session):
        raise UsageError(f"invalid --session {session!r}: letters, digits, - _ .")
    params = MMParams(
        symbol=symbol, spread=spread, quantity=quantity, max_orders=max_orders,
        target_position=target_position, max_position=max_position,
        position_threshold=position_threshold, inventory_skew=inventory_skew,
        stop_loss=stop_loss, take_profit=take_profit, max_loss=max_loss, interval_s=interval,
        refresh_tolerance_bps=refresh_tolerance, max_order_age_s=max_order_age,
    )  # fmt: skip
    params.validate()
    signer = None if paper else _signer(ctx)
    cfg = svc.MMConfig(exchange, params, paper=paper, session=session or "")
    try:
        run_async(_main(cfg, signer, state(ctx).data_dir, duration, fmt))
    except KeyboardInterrupt:
        # every order was cancelled on the way out (CONTRACT.md: 130 on Ctrl-C)
        raise typer.Exit(130) from None


def _signer(ctx: typer.Context):
    """Keys from the environment, else ``[mm.backpack]`` in the config file; never echoed."""
    from liqcli.exchanges.backpack.auth import BackpackSigner

    table = {}
    if isinstance(ctx.default_map, dict):
        table = ctx.default_map.get("backpack") or {}
    key = os.environ.get("LIQ_BACKPACK_API_KEY") or table.get("api_key") or ""
    secret = os.environ.get("LIQ_BACKPACK_API_SECRET") or table.get("api_secret") or ""
    return BackpackSigner(str(key), str(secret))


async def _main(cfg, signer, data_dir, duration, fmt) -> None:
    import sys
    import time

    from liqcli.core.timeutil import iso_ms
    from liqcli.render.mm_view import render_mm
    from liqcli.render.output import dumps
    from liqcli.services import mm as svc
    from liqcli.store.parquet import Store

    out = sys.stdout

    def emit(record: dict) -> None:
        if fmt == "jsonl":
            ts = record.get("ts")
            out.write(dumps({**record, "ts": iso_ms(ts) if ts else None}).decode() + "\n")

    view = None
    holder: list = []
    if fmt == "dashboard":
        from rich.console import Console
        from rich.live import Live

        console = Console(file=out)
        if console.is_terminal:
            view = Live(console=console, auto_refresh=False, redirect_stdout=False,
                        redirect_stderr=False)  # fmt: skip
            view.start()
    last = [0.0]

    def on_tick(run) -> None:
        if fmt == "jsonl":
            out.flush()
        elif view is not None and time.monotonic() - last[0] >= 1.0:
            last[0] = time.monotonic()
            view.update(render_mm(run), refresh=True)

    try:
        summary = await svc.run_mm(
            cfg, signer=signer, store=Store(data_dir), emit=emit, on_tick=on_tick,
            duration_s=duration, on_start=holder.append,
        )  # fmt: skip
    finally:
        if view is not None:
            view.stop()
        if fmt == "dashboard" and holder:
            from rich.console import Console

            Console(file=out, width=None if out.isatty() else 80).print(render_mm(holder[0]))
        out.flush()
    if fmt == "dashboard":
        out.write(
            f"session {summary['session']}: {summary['fills']} fills, position "
            f"{summary['position']:g}, PnL {summary['total_pnl']:+.4f} (fees {summary['fees']:.4f})\n"
        )
        out.flush()
    # After the same cancel-all as any exit: the exit codes every command uses (README).
    status = str(summary.get("status", ""))
    if status == "stopped by SIGTERM":
        raise typer.Exit(143)
    if status == "stopped by SIGHUP":
        raise typer.Exit(129)


def register(app: typer.Typer) -> None:
    app.command("mm", help=HELP, epilog=EPILOG)(mm)
