"""``liq cascade``: live liquidation-cascade detector with alerts, replay and a cascade history."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Annotated

import typer

from liqcli.cli.common import QuietOpt, run_async, state, upper_symbols
from liqcli.errors import UsageError
from liqcli.exchanges import registry

HELP = """Detect liquidation cascades live: level, direction, phase, signature, alerts.

\b
Liquidations from every venue (see --exchange) and Binance aggTrade prices feed one detector per
symbol. Level by the rolling 60-second liquidated notional (BTC defaults):
QUIET < $500k <= BUILDING < $1M <= MINOR < $3M <= SIGNIFICANT < $10M <= MAJOR < $50M <= EXTREME.
Other symbols scale them (ETH x0.5, others x0.1); set a symbol's own in the config file:
  [cascade.thresholds]
  DOGEUSDT = { building = 5e4, minor = 1e5, significant = 3e5, major = 1e6, extreme = 5e6 }
--threshold-scale multiplies every symbol's thresholds.

\b
Alerts fire when a cascade reaches a new level and when it ends (60 s after its 60-s total
fell below BUILDING), only from --min-level up (default SIGNIFICANT; an end is judged by its
peak level). The signature's OI / taker / funding parts come from Binance REST, polled once a
minute per symbol (--no-context to skip). Every cascade is stored in the cascades dataset;
--history lists them. On Ctrl-C, SIGTERM, SIGHUP or --duration, open cascades end with reason
"shutdown" (alerted and stored), then the command exits (130 after Ctrl-C, 143 after SIGTERM,
129 after SIGHUP).
"""

EPILOG = """\b
Examples:
  liq cascade BTCUSDT ETHUSDT                       # live dashboard
  liq cascade BTCUSDT --format jsonl --min-level minor | jq .level
  liq cascade BTCUSDT --webhook https://hooks.example.com/liq
  liq cascade SOLUSDT --exec 'notify-send "$LIQ_ALERT_SYMBOL $LIQ_ALERT_LEVEL"'
  liq cascade BTCUSDT --replay store --format jsonl # stored liquidations, full speed
  liq cascade BTCUSDT --replay session.jsonl        # a `liq watch --format jsonl` recording
  liq cascade BTCUSDT --history --start 30d -f csv  # stored cascades
"""


class CascadeFormat(StrEnum):
    dashboard = "dashboard"
    jsonl = "jsonl"
    table = "table"
    json = "json"
    csv = "csv"


LIVE_FORMATS = ("dashboard", "jsonl")
HISTORY_FORMATS = ("table", "json", "csv")


def cascade(
    ctx: typer.Context,
    symbols: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="SYMBOL",
            help="Symbols, e.g. BTCUSDT ETHUSDT (with --history: default every symbol).",
            show_default=False,
        ),
    ] = None,
    exchange: Annotated[
        list[str] | None,
        typer.Option(
            "--exchange",
            "-e",
            metavar="VENUE",
            help=f"Liquidations from {registry.choices_text()}; repeat for several [default: "
            "all]. Prices always come from Binance aggTrades.",
            show_default=False,
        ),
    ] = None,
    min_level: Annotated[
        str,
        typer.Option(
            "--min-level",
            "-l",
            metavar="LEVEL",
            help="Lowest level alerted: building, minor, significant, major or extreme.",
        ),
    ] = "SIGNIFICANT",
    webhook: Annotated[
        list[str] | None,
        typer.Option(
            "--webhook",
            metavar="URL",
            help="POST each alert as JSON here (retried, never delays detection); repeatable.",
            show_default=False,
        ),
    ] = None,
    exec_cmd: Annotated[
        list[str] | None,
        typer.Option(
            "--exec",
            metavar="CMD",
            help="Run CMD (shell) per alert with the alert JSON on stdin and LIQ_ALERT_TYPE, "
            "LIQ_ALERT_SYMBOL, LIQ_ALERT_LEVEL set; repeatable.",
            show_default=False,
        ),
    ] = None,
    exec_timeout: Annotated[
        float,
        typer.Option(
            "--exec-timeout", metavar="SECONDS", help="Kill an --exec command after this."
        ),
    ] = 10.0,
    fmt: Annotated[
        CascadeFormat | None,
        typer.Option(
            "--format",
            "-f",
            help="Live/replay: dashboard (default) or jsonl (one alert per line, nothing else on "
            "stdout). --history: table (default), json or csv.",
            show_default=False,
        ),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(
            "--duration",
            metavar="SECONDS",
            help="Stop after this many seconds [default: until Ctrl-C].",
            show_default=False,
        ),
    ] = None,
    replay: Annotated[
        str | None,
        typer.Option(
            "--replay",
            metavar="FILE",
            help="Run on recorded liquidations at full speed instead of connecting: 'store' "
            "(stored liquidations, plus stored Binance aggTrades for prices) or a .jsonl file "
            "(as `liq watch --format jsonl` prints), .parquet file or dataset directory.",
            show_default=False,
        ),
    ] = None,
    history: Annotated[
        bool, typer.Option("--history", help="List stored cascades instead of detecting.")
    ] = False,
    start: Annotated[
        str | None,
        typer.Option(
            "--start",
            help="With --history: cascades starting from (date, ISO time or e.g. 7d).",
            show_default=False,
        ),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option("--end", help="With --history: cascades starting before.", show_default=False),
    ] = None,
    threshold_scale: Annotated[
        float,
        typer.Option(
            "--threshold-scale",
            metavar="FACTOR",
            help="Multiply every level threshold, e.g. 0.5 for a more sensitive detector.",
        ),
    ] = 1.0,
    store: Annotated[
        bool | None,
        typer.Option(
            "--store/--no-store",
            help="Store liquidations and cascades [default: live yes; --replay no, and --store "
            "then writes only the cascades].",
            show_default=False,
        ),
    ] = None,
    store_trades: Annotated[
        bool,
        typer.Option(
            "--store-trades",
            help="Also store the Binance aggTrades used for prices (agg_trades dataset), so "
            "--replay store reproduces price moves exactly.",
        ),
    ] = False,
    context: Annotated[
        bool,
        typer.Option(
            "--context/--no-context",
            help="Poll Binance REST (open interest, taker ratio, funding) for the signature "
            "[default: on].",
            show_default=False,
        ),
    ] = True,
    quiet: QuietOpt = False,
) -> None:
    wanted = list(dict.fromkeys(upper_symbols(symbols)))
    if history:
        live_only = {
            "--replay": replay,
            "--webhook": webhook,
            "--exec": exec_cmd,
            "--duration": duration,
            "--store-trades": store_trades or None,
        }
        given = [name for name, value in live_only.items() if value]
        if given:
            raise UsageError(f"{', '.join(given)} cannot be combined with --history")
        _history(ctx, wanted, start, end, fmt)
        return
    if start or end:
        raise UsageError("--start and --end need --history")
    _detect(
        ctx,
        wanted,
        exchange=exchange,
        min_level=min_level,
        webhooks=webhook or [],
        execs=exec_cmd or [],
        exec_timeout=exec_timeout,
        fmt=fmt,
        duration=duration,
        replay=replay,
        threshold_scale=threshold_scale,
        store=store,
        store_trades=store_trades,
        context=context,
        quiet=quiet,
    )


def _detect(
    ctx: typer.Context,
    symbols: list[str],
    *,
    exchange: list[str] | None,
    fmt: CascadeFormat | None,
    quiet: bool,
    **options,
) -> None:
    from liqcli.services.cascade import CascadeConfig, run_cascade, thresholds_from_config

    fmt_value = CascadeFormat(fmt).value if fmt is not None else "dashboard"
    if fmt_value not in LIVE_FORMATS:
        raise UsageError(
            f"--format {fmt_value} is for --history; live and replay use dashboard or jsonl"
        )
    config = CascadeConfig(
        symbols=symbols,
        exchanges=registry.validate(exchange) if exchange else registry.default_names(),
        fmt=fmt_value,
        # Per-symbol tables cannot be flags: they live in the config file's [cascade] table.
        thresholds=thresholds_from_config((ctx.default_map or {}).get("thresholds")),
        **options,
    )
    config.min_level = config.min_level.strip().upper()
    config.validate()
    try:
        with _errors_only(quiet):
            result = run_async(run_cascade(config, data_dir=state(ctx).data_dir))
    except KeyboardInterrupt:
        # run_cascade has ended open cascades, drained the sinks and closed the journals.
        raise typer.Exit(130) from None
    if not quiet:
        _summary(result, config)


@contextmanager
def _errors_only(quiet: bool) -> Iterator[None]:
    """--quiet: warnings off for this run only (the levels are process-wide)."""
    loggers = [logging.getLogger(name) for name in ("liq", "liqcli")] if quiet else []
    saved = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, saved, strict=True):
            logger.setLevel(level)


def _summary(result, config) -> None:
    stored = f", {result.stored_cascades} stored" if result.stored_cascades else ""
    typer.echo(
        f"liq: {len(result.cascades)} cascade(s){stored}; {result.alerts_passed} alert(s) sent, "
        f"{result.alerts_filtered} below {config.min_level}",
        err=True,
    )
    for name, stats in result.sinks.items():
        lost = stats["failed"] + stats["dropped"]
        if lost:
            typer.echo(f"liq: warning: {name}: {lost} alert(s) not delivered", err=True)


def _history(
    ctx: typer.Context,
    symbols: list[str],
    start: str | None,
    end: str | None,
    fmt: CascadeFormat | None,
) -> None:
    from liqcli.core.timeutil import iso_ms, now_ms, parse_time
    from liqcli.render.output import render
    from liqcli.services.cascade import cascade_history

    fmt_value = CascadeFormat(fmt).value if fmt is not None else "table"
    if fmt_value not in HISTORY_FORMATS:
        raise UsageError(f"--history prints table, json or csv, not {fmt_value}")
    now = now_ms()
    start_ms = parse_time(start, now=now) if start else None
    end_ms = parse_time(end, now=now) if end else None
    if start_ms is not None and end_ms is not None and start_ms >= end_ms:
        raise UsageError(f"--start ({iso_ms(start_ms)}) must be before --end ({iso_ms(end_ms)})")
    frame = cascade_history(state(ctx).store(), symbols, start=start_ms, end=end_ms)
    if fmt_value == "json":
        document = {
            "symbols": symbols,
            "start": iso_ms(start_ms) if start_ms is not None else None,
            "end": iso_ms(end_ms) if end_ms is not None else None,
        }
        render(frame, fmt_value, document=document, rows_key="cascades")
    elif fmt_value == "table":
        import polars as pl

        # render() leaves floats unformatted in tables: round here for people.
        render(
            frame.with_columns(
                pl.col("total_usd").round(0).cast(pl.Int64),
                pl.col("duration_s").round(1),
                pl.col("price_change_pct").round(3),
            ),
            fmt_value,
        )
    else:
        render(frame, fmt_value)


def register(app: typer.Typer) -> None:
    app.command("cascade", help=HELP, epilog=EPILOG)(cascade)
