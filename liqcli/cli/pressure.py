"""``liq pressure SYMBOL``: the liquidation-pressure radar for longs and shorts, now or over history."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from liqcli.cli.common import (
    FormatOpt,
    QuietOpt,
    require_writable,
    run_async,
    state,
    upper_symbols,
)
from liqcli.core.timeutil import iso_ms, now_ms, parse_time
from liqcli.errors import UsageError
from liqcli.render.output import Format, render

HELP = """Liquidation-pressure score (0-100) for longs and shorts, with its eight components.

\b
Inputs: Binance global/top-trader long-short ratios, taker buy/sell ratio, open interest and
funding (fetched and stored like `liq fetch` does, unless --offline), plus the liquidations
`liq watch` stored from every venue. --model seed reproduces the original tool's formulas; the
default model scales each input to realistic ranges and shows missing inputs instead of guessing.
"""

EPILOG = """\b
Examples:
  liq pressure BTCUSDT                      # panel, fetching what is needed
  liq pressure ETHUSDT --offline -f json    # store only; one JSON document
  liq pressure BTCUSDT --model seed         # the original tool's numbers
  liq pressure BTCUSDT --weights funding=25,oi_trend=2
  liq pressure BTCUSDT --history --start 7d --chart pressure.png
"""


class ModelChoice(StrEnum):
    default = "default"
    seed = "seed"


HISTORY_TABLE_COLUMNS = ("ts", "long_score", "short_score", "long_level", "short_level", "bias")


def pressure(
    ctx: typer.Context,
    symbol: Annotated[
        str, typer.Argument(help="Linear perpetual, e.g. BTCUSDT.", show_default=False)
    ],
    period: Annotated[
        str, typer.Option("--period", "-p", help="Data period: 5m 15m 30m 1h 2h 4h 6h 12h 1d.")
    ] = "5m",
    lookback: Annotated[
        int,
        typer.Option(
            "--lookback", "-l", help="Steps of `period` the OI and liquidation windows span."
        ),
    ] = 30,
    offline: Annotated[
        bool, typer.Option("--offline", help="Use the store only; report missing or stale inputs.")
    ] = False,
    model: Annotated[
        ModelChoice,
        typer.Option("--model", "-m", help="default (fixed scales) or seed (original formulas)."),
    ] = ModelChoice.default,
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights",
            "-w",
            help="Override component weights, e.g. crowding=18,top_crowding=15,funding=15,oi_trend=12,"
            "force_share=10,force_volume=12,taker_pressure=10,oi_velocity=8.",
            show_default=False,
        ),
    ] = None,
    history: Annotated[
        bool,
        typer.Option(
            "--history", help="Score every step between --start and --end; store and list them."
        ),
    ] = False,
    start: Annotated[
        str | None,
        typer.Option("--start", help="History start: date, ISO time or e.g. 7d [default: 7d]."),
    ] = None,
    end: Annotated[str | None, typer.Option("--end", help="History end [default: now].")] = None,
    chart: Annotated[
        Path | None,
        typer.Option("--chart", help="With --history: write a PNG (price, scores, level bands)."),
    ] = None,
    fmt: FormatOpt = Format.table,
    quiet: QuietOpt = False,
) -> None:
    from liqcli.analytics.pressure import PressureConfig, parse_weights

    (symbol,) = upper_symbols([symbol])
    config = PressureConfig(
        model=model.value, period=period, lookback=lookback, weights=parse_weights(weights)
    )
    if not history and (start or end or chart):
        raise UsageError("--start, --end and --chart need --history")
    now = now_ms()
    app_state = state(ctx)
    if history or not offline:
        # What is fetched (and the scores --history keeps) must be storable: said before any
        # request, not after the downloads.
        require_writable(app_state.data_dir)
    if history:
        start_ms = parse_time(start or "7d", now=now)
        end_ms = parse_time(end, now=now) if end else now
        if start_ms >= end_ms:
            raise UsageError(
                f"--start ({iso_ms(start_ms)}) must be before --end ({iso_ms(end_ms)})"
            )
        if chart is not None:
            _check_chart_path(chart)
        _history(
            app_state.store(), symbol, config, start_ms, end_ms, now, offline, chart, fmt, quiet
        )
    else:
        _now(app_state.store(), symbol, config, now, offline, fmt, quiet)


def _check_chart_path(chart: Path) -> None:
    """--chart FILE: a PNG in a directory that exists (a mistyped directory is not created)."""
    if chart.suffix.lower() != ".png":
        raise UsageError(f"--chart {chart}: the chart is a PNG, name it *.png")
    parent = chart.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise UsageError(f"--chart {chart}: directory {parent} {what}")
    if chart.is_dir():
        raise UsageError(f"--chart {chart}: is a directory")
    if not os.access(parent, os.W_OK):  # before any fetch; root passes, its writes may still fail
        raise UsageError(f"--chart {chart}: directory {parent} is not writable")


def _warn(inputs: dict, fetch_errors: list[str], *, quiet: bool, with_inputs: bool) -> None:
    """Stderr notes on what the score could not use (the panel shows input problems itself)."""
    if quiet:
        return
    for line in fetch_errors:
        typer.echo(f"liq: warning: fetch failed, using stored data: {line}", err=True)
    for name, info in inputs.items() if with_inputs else ():
        if info["status"] != "ok":
            newest = f" (newest {info['last']})" if info["last"] else ""
            typer.echo(f"liq: warning: input {name} is {info['status']}{newest}", err=True)


def _now(store, symbol: str, config, now: int, offline: bool, fmt: Format, quiet: bool) -> None:
    from liqcli.render.output import dumps
    from liqcli.render.pressure_panel import (
        panel_text,
        print_panel,
        snapshot_document,
        snapshot_row,
    )
    from liqcli.services.pressure import pressure_now

    report = run_async(pressure_now(store, symbol, config, offline=offline, now=now))
    _warn(report.inputs, report.fetch_errors, quiet=quiet, with_inputs=fmt != Format.table)
    where = {"symbol": symbol, "period": config.period}
    if fmt == Format.table:
        print_panel(
            panel_text(report.snapshot, **where, lookback=config.lookback, inputs=report.inputs)
        )
    elif fmt == Format.json:
        document = snapshot_document(
            report.snapshot, **where, lookback=config.lookback, inputs=report.inputs
        )
        typer.echo(dumps({**document, "fetch_errors": report.fetch_errors}).decode())
    else:
        render([snapshot_row(report.snapshot, **where)], fmt)


def _history(
    store,
    symbol: str,
    config,
    start: int,
    end: int,
    now: int,
    offline: bool,
    chart: Path | None,
    fmt: Format,
    quiet: bool,
) -> None:
    import polars as pl

    from liqcli.render.pressure_panel import history_chart
    from liqcli.services.pressure import pressure_history_run

    report = run_async(
        pressure_history_run(store, symbol, config, start, end, offline=offline, now=now)
    )
    _warn(report.inputs, report.fetch_errors, quiet=quiet, with_inputs=True)
    for note in report.notes if not quiet else ():
        typer.echo(f"liq: warning: {note}", err=True)
    if report.history.height:
        start = int(report.history["ts"].min())
        end = int(report.history["ts"].max())
    if chart is not None:
        history_chart(
            report.history,
            report.price,
            chart,
            title=f"{symbol} {config.period} liquidation pressure ({config.model} model)",
        )
        if not quiet:
            typer.echo(f"liq: chart written to {chart}", err=True)
    frame = report.history.with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC")))
    if fmt == Format.table:
        table = frame.select(HISTORY_TABLE_COLUMNS).with_columns(
            pl.col("long_score", "short_score").round(1)
        )
        render(table, fmt)
    elif fmt == Format.json:
        document = {
            "symbol": symbol,
            "period": config.period,
            "model": config.model,
            "lookback": config.lookback,
            "start": iso_ms(start),
            "end": iso_ms(end),
            "stored_rows": report.stored_rows,
            "chart": str(chart) if chart else None,
            "inputs": report.inputs,
            "fetch_errors": report.fetch_errors,
            "notes": report.notes,
        }
        render(frame, fmt, document=document, rows_key="rows")
    else:
        render(frame, fmt)


def register(app: typer.Typer) -> None:
    app.command("pressure", help=HELP, epilog=EPILOG)(pressure)
