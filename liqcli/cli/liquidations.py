"""``liq liquidations``: history of the stored liquidations, per interval and symbol/exchange/coin."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from liqcli.cli.common import FormatOpt, QuietOpt, state
from liqcli.core.timeutil import iso_ms, now_ms, parse_time
from liqcli.render.output import Format

HELP = """History of stored liquidations: long/short totals per interval and symbol, exchange or coin.

\b
What `liq watch` and `liq cascade` stored, summed per interval: one row per interval and symbol,
exchange or coin (--by), largest first within an interval. The --top groups by total over the
range are named, the rest summed as "(other)". --by coin adds up every venue's contracts of a
coin: OKX BTC-USD-SWAP and BTC-USDT-SWAP, Binance and Bybit BTCUSDT are all BTC. Amounts are USD
notional; only intervals with liquidations are listed. A range with nothing stored prints an
empty table (json: "rows": []) and exits 0, with a note on stderr.
"""

EPILOG = """\b
Examples:
  liq liquidations                                  # last 24 h, per hour and symbol
  liq liquidations BTC ETH --by coin --start 7d     # every venue's BTC and ETH contracts
  liq liquidations --by exchange --interval 4h      # which venue liquidates most
  liq liquidations BTCUSDT --start 2026-11-01 --end 2026-11-08 --interval 1d -f csv
  liq liquidations BTC --by coin --chart btc.png    # PNG: stacked bars, price on top
  liq liquidations -e okx --top 0 -f json | jq '.totals[0]'
"""


class By(StrEnum):
    symbol = "symbol"
    exchange = "exchange"
    coin = "coin"


def liquidations(
    ctx: typer.Context,
    symbols: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="SYMBOL",
            help="Symbols (BTCUSDT), venue symbols (BTC-USD-SWAP) or coins (BTC) [default: all].",
            show_default=False,
        ),
    ] = None,
    start: Annotated[
        str,
        typer.Option(
            "--start",
            metavar="TIME",
            help="Range start: date, ISO time, epoch ms or e.g. 7d (before --end).",
        ),
    ] = "1d",
    end: Annotated[
        str | None,
        typer.Option(
            "--end",
            metavar="TIME",
            help="Range end (exclusive) [default: now].",
            show_default=False,
        ),
    ] = None,
    interval: Annotated[
        str, typer.Option("--interval", "-i", metavar="DURATION", help="Interval, e.g. 5m, 1h, 1d.")
    ] = "1h",
    by: Annotated[
        By, typer.Option("--by", help="Group by symbol, exchange or coin (all venues of a coin).")
    ] = By.symbol,
    exchange: Annotated[
        list[str] | None,
        typer.Option(
            "--exchange",
            "-e",
            metavar="VENUE",
            help="binance, okx or bybit; repeat for several [default: every stored venue].",
            show_default=False,
        ),
    ] = None,
    top: Annotated[
        int,
        typer.Option(
            "--top", metavar="N", help='Groups named; the rest sum to "(other)"; 0 = all.'
        ),
    ] = 10,
    chart: Annotated[
        Path | None,
        typer.Option(
            "--chart",
            metavar="FILE.png",
            help="Also write a PNG: stacked long/short bars per interval, the price on top when "
            "klines are stored.",
            show_default=False,
        ),
    ] = None,
    fmt: FormatOpt = Format.table,
    quiet: QuietOpt = False,
) -> None:
    from liqcli.cli.common import upper_symbols
    from liqcli.services.liquidations import HistoryQuery, attach_price, liquidation_history

    names = upper_symbols(symbols)
    exchanges = _exchanges(exchange)
    now = now_ms()
    end_ms = parse_time(end, now=now) if end else now
    start_ms = parse_time(start, now=end_ms)  # "7d" counts back from --end
    query = HistoryQuery(start_ms, end_ms, interval, by.value, names, exchanges, top)
    query.validate()
    if chart is not None:
        from liqcli.render.liquidations_chart import check_chart_path

        check_chart_path(chart)
    store = state(ctx).store()
    history = liquidation_history(store, query)
    if history.rows.is_empty() and not quiet:
        stored = history.stored_range
        hint = (
            f" (stored for this selection: {iso_ms(stored[0])} .. {iso_ms(stored[1])})"
            if stored
            else " (none stored for this selection)"
        )
        typer.echo(
            f"liq: no liquidations stored between {iso_ms(start_ms)} and {iso_ms(end_ms)}{hint}",
            err=True,
        )
    _print(history, fmt)
    if chart is not None:
        from liqcli.render.liquidations_chart import draw_history_chart

        attach_price(store, history)
        scope = ", ".join(names) or "all symbols"
        if exchanges:
            scope += f" on {', '.join(exchanges)}"
        draw_history_chart(
            history.rows,
            chart,
            start_ms=start_ms,
            end_ms=end_ms,
            interval_ms=query.interval_ms,
            scope=scope,
            interval=interval,
            price=history.price,
            price_label=history.price_label,
        )
        if not quiet:
            typer.echo(f"liq: chart written to {chart}", err=True)


def _exchanges(exchange: list[str] | None) -> list[str]:
    if not exchange:
        return []
    from liqcli.services.streams import validate_exchanges

    return validate_exchanges(exchange)


def _print(history, fmt: Format) -> None:
    import sys

    from liqcli.render.output import render

    if fmt == Format.json:
        render(history.rows, "json", document=history.document())
        return
    render(history.rows, fmt.value)
    if fmt == Format.table and history.totals.height:
        sys.stdout.write(
            f"\nTotals {iso_ms(history.query.start_ms)} .. {iso_ms(history.query.end_ms)}\n"
        )
        render(history.totals, "table")


def register(app: typer.Typer) -> None:
    app.command("liquidations", help=HELP, epilog=EPILOG)(liquidations)
