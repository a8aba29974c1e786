"""``liq fetch SYMBOL...``: Binance futures market metrics into the store, incrementally."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Annotated

import typer
from typer._click.core import ParameterSource

from liqcli.cli.common import (
    FormatOpt,
    require_writable,
    run_async,
    state,
    stderr_is_tty,
    upper_symbols,
)
from liqcli.core.timeutil import duration_ms, iso_ms, now_ms, parse_time
from liqcli.errors import LiqError, UsageError
from liqcli.exchanges.binance.rest import FETCH_DATASETS
from liqcli.render.output import Format, render

log = logging.getLogger("liq")

HELP = f"""Store Binance USDⓈ-M futures market metrics as Parquet; cron-safe and incremental.

\b
Datasets (--dataset, repeatable; default all seven):
  {", ".join(FETCH_DATASETS[:4])},
  {", ".join(FETCH_DATASETS[4:])}
  agg_trades (with --archive only: daily aggTrades zips, as `liq map` uses them)
  book_depth, book_ticker (with --archive only: daily bookDepth bands, +-1..5 % from mid every
  ~30 s, and bookTicker best bid/ask, where the archive publishes them)

Each run asks Binance only for what the store is missing in the range (after the last stored
row, before the first, or holes left by an interrupted run) and writes each chunk as it arrives,
so re-runs never duplicate and a killed run loses nothing already written. Requests stay within
Binance's limits; 429/418 answers are waited out (Retry-After), 5xx and timeouts retried.
Binance's REST API keeps only 30 days of the ratio and open-interest series: older requests are
reported as partial unless --archive fetches them from data.binance.vision (5m period).
"""

EPILOG = """\b
Examples:
  liq fetch BTCUSDT                               # all datasets, last 30 days, 5m
  liq fetch BTCUSDT ETHUSDT --dataset klines --period 1h --since 90d
  liq fetch BTCUSDT --start 2026-09-01 --end 2026-10-01 --archive
  liq fetch SOLUSDT --dataset agg_trades --archive --since 3d
  liq fetch BTCUSDT --dataset book_depth --archive --since 7d
  liq --data-dir /srv/liq fetch BTCUSDT ETHUSDT --quiet   # from cron
"""


def fetch(
    ctx: typer.Context,
    symbols: Annotated[
        list[str],
        typer.Argument(
            help="Binance USDⓈ-M perpetual symbols, e.g. BTCUSDT ETHUSDT.",
            metavar="SYMBOL",
            show_default=False,
        ),
    ],
    dataset: Annotated[
        list[str] | None,
        typer.Option(
            "--dataset",
            "-d",
            metavar="NAME",
            help="Dataset to fetch (repeatable) [default: all seven].",
            autocompletion=lambda: [*FETCH_DATASETS, "agg_trades"],
            show_default=False,
        ),
    ] = None,
    period: Annotated[
        str,
        typer.Option(
            "--period",
            "-p",
            metavar="PERIOD",
            help="Period of the series (klines interval): 5m 15m 30m 1h 2h 4h 6h 12h 1d; "
            "klines alone also 1m 3m.",
        ),
    ] = "5m",
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="DURATION",
            help="How far back from now, e.g. 30d, 12h [default: 30d].",
            show_default=False,
        ),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            "--start",
            metavar="WHEN",
            help="Range start: YYYY-MM-DD, ISO time, epoch ms or e.g. 7d (ago).",
            show_default=False,
        ),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option(
            "--end",
            metavar="WHEN",
            help="Range end (exclusive) [default: now].",
            show_default=False,
        ),
    ] = None,
    archive: Annotated[
        bool,
        typer.Option(
            "--archive",
            help="Use data.binance.vision for history older than 30 days (and agg_trades).",
        ),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="Print nothing on success: no progress, warnings or summary (for cron).",
        ),
    ] = False,
    fmt: FormatOpt = Format.table,
) -> None:
    from liqcli.services.fetch import check_period, resolve_datasets, resolve_range, run_fetch

    # Everything is validated before the first request (exit 2).
    symbol_list = upper_symbols(symbols)
    datasets = resolve_datasets(dataset, archive=archive)
    check_period(period, datasets)
    if since is not None and start is not None:
        raise UsageError("--since and --start both set the range start: use one")
    now = now_ms()
    end_ms = parse_time(end, now=now) if end else None
    # --since counts back from --end when one is given, else from now.
    start_ms = (
        min(end_ms, now) - duration_ms(since)
        if since is not None and end_ms is not None
        else now - duration_ms(since)
        if since is not None
        else (parse_time(start, now=now) if start else None)
    )
    start_ms, end_ms = resolve_range(start_ms, end_ms, now=now)

    data_dir = state(ctx).data_dir
    require_writable(data_dir)  # before any request: what is fetched must be storable
    store = state(ctx).store()
    bar = _ProgressBar() if stderr_is_tty() and not quiet else None
    quiet_logs = logging.getLogger("liq").level if quiet else None
    if quiet:
        logging.getLogger("liq").setLevel(logging.ERROR)
    try:
        with bar or nullcontext():
            results = run_async(
                run_fetch(
                    store,
                    symbol_list,
                    datasets,
                    period=period,
                    start=start_ms,
                    end=end_ms,
                    archive=archive,
                    progress=bar,
                    now=now,
                )
            )
    finally:
        if quiet_logs is not None:
            logging.getLogger("liq").setLevel(quiet_logs)
    rows = _collapse_unknown([r.as_row() for r in results])
    failed = [r for r in results if r.status == "error"]
    document = {
        "symbols": symbol_list,
        "period": period,
        "start": iso_ms(start_ms),
        "end": iso_ms(end_ms),
        "new_rows": sum(r.new_rows for r in results),
        "requests": sum(r.requests for r in results),
        "refused_rows": sum(r.refused.total for r in results),
    }
    # --quiet: nothing on stdout on success (cron mails any output); a failure still shows
    # the summary, and an explicit --format json/csv is always printed.
    explicit_format = ctx.get_parameter_source("fmt") not in (
        None,
        ParameterSource.DEFAULT,
        ParameterSource.DEFAULT_MAP,
    )
    if not quiet or failed or explicit_format:
        render(rows, fmt, document=document, rows_key="results")
    if failed:
        reasons = list(dict.fromkeys(r.error for r in failed))
        if len(reasons) == 1 and "unknown symbol" in (reasons[0] or ""):
            raise LiqError(reasons[0])  # one symbol refused by every dataset: say it once
        more = f" (and {len(reasons) - 3} more)" if len(reasons) > 3 else ""
        raise LiqError(
            f"{len(failed)} of {len(results)} fetches failed: {'; '.join(reasons[:3])}{more}"
        )


def _collapse_unknown(rows: list[dict]) -> list[dict]:
    """One row, not one per dataset, for a symbol every dataset refused as unknown (when the
    symbol list could not be checked beforehand)."""
    by_symbol: dict[str, list[dict]] = {}
    for row in rows:
        by_symbol.setdefault(row["symbol"], []).append(row)
    collapsed = {
        symbol
        for symbol, group in by_symbol.items()
        if len(group) > 1
        and all(r["status"] == "error" for r in group)
        and len({r["message"] for r in group}) == 1
        and "unknown symbol" in (group[0]["message"] or "")
    }
    out: list[dict] = []
    for row in rows:
        if row["symbol"] not in collapsed:
            out.append(row)
        elif row is by_symbol[row["symbol"]][0]:
            out.append({**row, "dataset": "*"})
    return out


class _ProgressBar:
    """A transient rich progress bar on stderr, fed by the fetch service."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rows]:,} rows"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._task = self._progress.add_task("fetching", total=0, rows=0)
        self._rows = 0

    def __enter__(self) -> _ProgressBar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def planned(self, pages: int) -> None:
        total = self._progress.tasks[0].total or 0
        self._progress.update(self._task, total=total + pages)

    def page_done(self, dataset: str, symbol: str, rows: int) -> None:
        self._rows += rows
        self._progress.update(
            self._task, advance=1, description=f"{dataset} {symbol}", rows=self._rows
        )


def register(app: typer.Typer) -> None:
    app.command("fetch", help=HELP, epilog=EPILOG)(fetch)
