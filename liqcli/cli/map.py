"""``liq map SYMBOL``: liquidation map from historical (or live) trades."""

from __future__ import annotations

import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from liqcli.cli.common import (
    FormatOpt,
    QuietOpt,
    import_numpy,
    require_writable,
    run_async,
    skip_teardown,
    state,
    upper_symbols,
)
from liqcli.core.timeutil import day_floor, duration_ms, now_ms, parse_time
from liqcli.errors import UsageError
from liqcli.exchanges import registry
from liqcli.render.output import Format, dumps, render

if TYPE_CHECKING:
    import polars as pl

    from liqcli.analytics.liqmap import LiqMap, MapSpec

log = logging.getLogger("liq")

HELP = """Liquidation map: where positions opened by large trades would be liquidated.

\b
Large taker buys are taken as longs opened, large sells as shorts; each one's notional is put
at the liquidation price of every leverage tier, and summed per price bin. Trades come from the
venue's daily archive (downloaded once into {data-dir}/_archive, checksum-verified on Binance),
from files (--input: zip, csv, csv.gz or parquet; with or without header; ms or µs time), or
live from the Binance aggTrade stream (--live).

\b
--model default: leverage tiers with weights (--tiers), each level at the liquidation price
of Binance's isolated formula (the one liq paper's broker uses; margin = notional/L, first
bracket): long p*(1-1/L)/(1-mmr), short p*(1+1/L)/(1+mmr), mmr from --mmr; levels the later
price already crossed are removed. --model compat: py-liquidation-map's levels (10x/25x/50x/100x,
long p*(1-1/L), short p*(1+1/L), full notional each), binned without loss.
"""

EPILOG = """\b
Examples:
  liq map BTCUSDT --start 2024-03-01 --end 2024-03-02 --mode top_n --threshold 100
  liq map BTCUSDT --start 7d --chart all --out charts/
  liq map ETHUSDT --exchange bybit --start 2024-03-01 --end 2024-03-03 -f json
  liq map BTCUSDT --input BTCUSDT-aggTrades-2024-03-01.zip BTCUSDT-aggTrades-2024-03-02.zip
  liq map BTCUSDT --input trades.parquet --model compat --mode portion --threshold 0.01 -f csv
  liq map BTCUSDT --tiers 10:0.4,25:0.3,50:0.2,100:0.1 --mmr 0.005 --bin-size 50
  liq map BTCUSDT --live --window 4h --refresh 30 --chart map --out /tmp/liq
"""


# The venues with a trade archive, from the registry.
ExchangeChoice = StrEnum("ExchangeChoice", {n: n for n in registry.names(registry.ARCHIVE)})


class ModeChoice(StrEnum):
    gross_value = "gross_value"
    top_n = "top_n"
    portion = "portion"


class ModelChoice(StrEnum):
    default = "default"
    compat = "compat"


class ChartChoice(StrEnum):
    map = "map"
    depth = "depth"
    heatmap = "heatmap"
    all = "all"


def liquidation_map(
    ctx: typer.Context,
    symbol: Annotated[
        str, typer.Argument(help="Linear perpetual, e.g. BTCUSDT.", show_default=False)
    ],
    more_inputs: Annotated[
        list[Path] | None,
        typer.Argument(metavar="FILE", help="More --input files.", show_default=False),
    ] = None,
    exchange: Annotated[
        ExchangeChoice, typer.Option("--exchange", "-e", help="Archive to download trades from.")
    ] = ExchangeChoice.binance,
    start: Annotated[
        str | None,
        typer.Option(
            "--start",
            help="Start: date, ISO time or e.g. 2d [default: one day before --end].",
            show_default=False,
        ),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option(
            "--end",
            help="End, exclusive [default: today 00:00 UTC, the newest archived day].",
            show_default=False,
        ),
    ] = None,
    mode: Annotated[
        ModeChoice,
        typer.Option(
            "--mode",
            "-m",
            help="Large-trade selection: notional >= threshold, top N per side, or top fraction.",
        ),
    ] = ModeChoice.gross_value,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            "-t",
            help="gross_value: notional (price x qty) in the quote currency, USD for USDT/USDC "
            "[100000]; top_n: trades per side [100]; portion: fraction [0.01].",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        ModelChoice,
        typer.Option(
            "--model", help="default (weighted tiers, mmr, sweeps) or compat (reference)."
        ),
    ] = ModelChoice.default,
    tiers: Annotated[
        str | None,
        typer.Option(
            "--tiers",
            help="Leverage tiers and weights, e.g. 5:0.1,10:0.25,20:0.25,25:0.15,50:0.15,100:0.1 (the default).",
            show_default=False,
        ),
    ] = None,
    mmr: Annotated[
        float | None,
        typer.Option(
            "--mmr",
            help="Maintenance margin rate in the liquidation price (default model) [0.004].",
            show_default=False,
        ),
    ] = None,
    bin_size: Annotated[
        float | None,
        typer.Option(
            "--bin-size", help="Price bin width [auto: ~100-200 bins].", show_default=False
        ),
    ] = None,
    chart: Annotated[
        list[ChartChoice] | None,
        typer.Option(
            "--chart", "-c", help="PNG chart(s) to write: map, depth, heatmap or all (repeatable)."
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the PNG charts.")] = Path(
        "."
    ),
    inputs: Annotated[
        list[Path] | None,
        typer.Option(
            "--input", "-i", help="Trade file(s) instead of downloading: zip, csv, csv.gz, parquet."
        ),
    ] = None,
    live: Annotated[
        bool,
        typer.Option("--live", help="Build and refresh the map from the Binance aggTrade stream."),
    ] = False,
    window: Annotated[
        str, typer.Option("--window", help="--live: trades of the last WINDOW.")
    ] = "1h",
    refresh: Annotated[
        float, typer.Option("--refresh", help="--live: seconds between rebuilds.")
    ] = 10.0,
    duration: Annotated[
        float | None,
        typer.Option("--duration", help="--live: stop after SECONDS.", show_default=False),
    ] = None,
    fmt: FormatOpt = Format.table,
    quiet: QuietOpt = False,
) -> None:
    import_numpy()  # before anything imports it
    charts = _charts(chart)
    # The charts are drawn by a worker process that imports matplotlib while this one imports
    # the map's modules and builds the map: started first, so that the two overlap the most.
    worker = None
    if charts and not live:
        # matplotlib (in the worker) and Polars' numpy input (here) both import numpy.ma: once,
        # before the fork, instead of once in each process.
        import numpy.ma  # noqa: F401

        from liqcli.render.charts import start_worker

        worker = start_worker()
    try:
        from liqcli.analytics.liqmap import MapSpec, parse_tiers

        (symbol,) = upper_symbols([symbol])
        if more_inputs and not inputs:
            raise UsageError(
                f"unexpected extra argument {str(more_inputs[0])!r} (input files follow --input)"
            )
        files = [*(inputs or []), *(more_inputs or [])]
        now = now_ms()
        start_ms = parse_time(start, now=now) if start else None
        end_ms = parse_time(end, now=now) if end else None
        if live:
            if files or start or end:
                raise UsageError("--live reads the stream: drop --input, --start and --end")
            if exchange != ExchangeChoice.binance:
                raise UsageError("--live uses the Binance aggTrade stream: drop --exchange bybit")
            if refresh <= 0 or (duration is not None and duration <= 0):
                raise UsageError("--refresh and --duration must be positive seconds")
        else:
            from typer._click.core import ParameterSource

            given = [
                f"--{name}"
                for name in ("window", "refresh", "duration")
                if ctx.get_parameter_source(name)
                not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
            ]
            if given:
                raise UsageError(
                    f"{' and '.join(given)} {'needs' if len(given) == 1 else 'need'} --live"
                )
        if not live and not files:
            end_ms = end_ms if end_ms is not None else day_floor(now)
            start_ms = start_ms if start_ms is not None else end_ms - 86_400_000
        spec = MapSpec(
            mode=mode.value,
            threshold=threshold,
            model=model.value,
            tiers=parse_tiers(tiers) if tiers else None,
            mmr=mmr,
            bin_size=bin_size,
            start_ms=start_ms,
            end_ms=end_ms,
        ).resolved()
        for f in files:
            if not f.is_file():
                raise UsageError(f"--input {f}: no such file")
        data_dir = state(ctx).data_dir
        if quiet:
            log.setLevel(logging.ERROR)

        if live:
            _live(symbol, spec, duration_ms(window), refresh, duration, charts, out, fmt, quiet)
            return
        if files:
            from liqcli.services.liqmap import map_from_files

            liqmap = map_from_files(files, symbol, spec, data_dir)
        else:
            from liqcli.services.liqmap import map_from_archive

            require_writable(data_dir)

            liqmap = run_async(map_from_archive(data_dir, exchange.value, symbol, spec))
        written = []
        if charts:
            from liqcli.render.charts import write_charts

            written = write_charts(liqmap, charts, out, worker=worker)
    finally:
        if worker is not None:
            worker.close()
    if not quiet:
        hint = empty_selection_hint(liqmap)
        if hint:
            typer.echo(f"liq: warning: {hint}", err=True)
        if liqmap.skipped_rows:
            typer.echo(
                f"liq: warning: {liqmap.skipped_rows:,} malformed trade rows skipped "
                "(missing fields, e.g. a file cut mid-line)",
                err=True,
            )
        for path in written:
            typer.echo(f"liq: wrote {path}", err=True)
    _print(liqmap, fmt, written)
    skip_teardown()


def _charts(chosen: list[ChartChoice] | None) -> list[str]:
    names = [c.value for c in chosen or []]
    if "all" in names:
        return ["map", "depth", "heatmap"]
    return list(dict.fromkeys(names))


def _print(liqmap: LiqMap, fmt: Format, charts: list[Path]) -> None:
    if fmt == Format.json:
        document = liqmap.document() | {"charts": [str(p) for p in charts]}
        render(liqmap.bins, fmt, document=document, rows_key="bins")
    elif fmt == Format.csv:
        render(liqmap.bins, fmt)
    else:
        typer.echo(_headline(liqmap))
        render(_table(liqmap), fmt)


def _table(liqmap: LiqMap) -> pl.DataFrame:
    """The per-bin summary with readable numbers (the shared renderer prints values as given)."""
    import polars as pl

    # As many decimals as the bin edges need: 100 -> 0, 2.5 -> 1, 0.01 -> 2.
    decimals = len(f"{liqmap.bin_size:.8f}".rstrip("0").split(".")[1])
    usd = ("long_usd", "short_usd", "cum_long_usd", "cum_short_usd")
    cur = liqmap.currency
    # Whole units for dollars and big amounts; decimals when a bin holds less (0.4 ETH is not 0).
    biggest = max(
        (float(liqmap.bins["amount_usd"].max() or 0.0) if liqmap.bins.height else 0.0), 0.0
    )
    places = 0 if biggest >= 100 else 2 if biggest >= 1 else 4
    # The table's amount columns say their currency (long_ETH for XRPETH); JSON/CSV keep
    # the contract's amount_usd names and carry "currency" instead.
    return (
        liqmap.summary()
        .with_columns(
            pl.col("price_low", "price_high").map_elements(
                lambda v: f"{v:,.{decimals}f}", return_dtype=pl.String
            ),
            pl.col("distance_pct").map_elements(lambda v: f"{v:+.2f}%", return_dtype=pl.String),
            pl.col(usd).map_elements(
                lambda v: f"{v:,.{places}f}" if v else "", return_dtype=pl.String
            ),
        )
        .rename({c: c.replace("usd", cur) for c in usd} if cur != "USD" else {})
    )


def _headline(liqmap: LiqMap) -> str:
    from liqcli.core.money import money
    from liqcli.render.charts import threshold_text, title

    doc = liqmap.document()
    active = doc["active_usd"]
    cur = liqmap.currency
    return (
        title(liqmap, "map").replace("\n", "\n  ")
        + f"\n  {liqmap.trades:,} trades, {liqmap.selected.height:,} selected ({threshold_text(liqmap)}); "
        f"levels left: longs {money(active['long'], cur)} below, "
        f"shorts {money(active['short'], cur)} above\n"
    )


def empty_selection_hint(liqmap: LiqMap) -> str | None:
    """Why no trade was selected, with what would select some (gross_value only: the other
    modes always pick the largest trades there are)."""
    from liqcli.core.money import money

    if liqmap.selected.height or not liqmap.trades or liqmap.spec.mode != "gross_value":
        return None
    cur = liqmap.currency
    return (
        f"no trade reached --threshold {money(float(liqmap.spec.threshold or 0), cur)} "
        f"(amounts are price x qty in {cur}); the largest of the {liqmap.trades:,} trades was "
        f"{money(liqmap.largest_trade, cur) if liqmap.largest_trade >= 1 else f'{liqmap.largest_trade:.4g} {cur}'}: "
        "lower --threshold or use --mode top_n"
    )


def _live(
    symbol: str,
    spec: MapSpec,
    window_ms: int,
    refresh: float,
    duration: float | None,
    charts: list[str],
    out: Path,
    fmt: Format,
    quiet: bool,
) -> None:
    from liqcli.render.charts import write_charts
    from liqcli.services.liqmap import run_live

    clear = fmt == Format.table and sys.stdout.isatty()

    def show(liqmap: LiqMap) -> None:
        written = write_charts(liqmap, charts, out, live=True) if charts else []
        if fmt == Format.json:
            # One document per refresh, one per line (JSON Lines).
            sys.stdout.write(
                dumps(
                    liqmap.document()
                    | {"bins": liqmap.bins.to_dicts(), "charts": [str(p) for p in written]}
                ).decode()
                + "\n"
            )
            sys.stdout.flush()
            return
        if clear:
            sys.stdout.write("\033[2J\033[H")
        _print(liqmap, fmt, written)

    trades = run_async(
        run_live(symbol, spec, show, window_ms=window_ms, refresh_s=refresh, duration_s=duration)
    )
    if not quiet:
        typer.echo(f"liq: live map done: {trades.received:,} trades received", err=True)


def register(app: typer.Typer) -> None:
    app.command("map", help=HELP, epilog=EPILOG)(liquidation_map)
