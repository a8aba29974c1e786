"""``liq watch``: live multi-exchange liquidation monitor."""

from __future__ import annotations

import gc
from typing import Annotated

import typer

from liqcli.analytics.windows import DEFAULT_WINDOWS
from liqcli.cli.common import StreamFormatOpt, run_async, state, upper_symbols
from liqcli.exchanges import registry
from liqcli.render.output import StreamFormat
from liqcli.render.web import DEFAULT_HOST, DEFAULT_PORT

_VENUES = [registry.get(n).title.split()[0] for n in registry.default_names()]
HELP = f"""Live liquidations from {", ".join(_VENUES[:-1])} and {_VENUES[-1]}: rolling totals,
rankings, latest events.

Every event is stored in the liquidations dataset (journaled: a crash loses at most the last
second); on restart the rolling windows are rebuilt from storage, so 1-day totals survive.
{" ".join(registry.notes(registry.default_names()))}

Ctrl-C, SIGTERM and SIGHUP stop it cleanly (everything flushed and compacted into Parquet), then
it exits 130, 143 or 129. A symbol no selected venue lists is a usage error (exit 2); a
--duration run in which no venue was ever reachable exits 1.
"""

EPILOG = """\b
Examples:
  liq watch                                   # every symbol, all three venues
  liq watch BTCUSDT ETHUSDT --min-usd 50000   # two symbols, large liquidations only
  liq watch -e binance -e bybit --top 5       # two venues, top 5 rankings
  liq watch --format jsonl | jq .notional_usd # one JSON object per event
  liq watch --web --port 8765                 # browser dashboard at http://127.0.0.1:8765/
  liq watch --duration 3600 --no-store        # one hour, nothing written
  liq watch --replay store --format jsonl     # replay stored events through the pipeline
  liq watch --replay session.jsonl --web      # replay a recorded jsonl file, browse it
  liq watch --windows 1m,5m,1h                # custom rolling windows
"""


def watch(
    ctx: typer.Context,
    symbols: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="SYMBOL",
            help="Symbols to watch, e.g. BTCUSDT (default: every symbol).",
            show_default=False,
        ),
    ] = None,
    exchange: Annotated[
        list[str] | None,
        typer.Option(
            "--exchange",
            "-e",
            metavar="VENUE",
            help=f"{registry.choices_text()}; repeat for several [default: all].",
            show_default=False,
        ),
    ] = None,
    min_usd: Annotated[
        float,
        typer.Option(
            "--min-usd", metavar="USD", help="Ignore liquidations below this notional (USD)."
        ),
    ] = 0.0,
    top: Annotated[int, typer.Option("--top", metavar="N", help="Symbols in each ranking.")] = 10,
    latest: Annotated[int, typer.Option("--latest", metavar="N", help="Latest events shown.")] = 20,
    fmt: StreamFormatOpt = StreamFormat.dashboard,
    web: Annotated[
        bool, typer.Option("--web", help="Also serve a live web dashboard (see --host, --port).")
    ] = False,
    host: Annotated[
        str, typer.Option("--host", metavar="HOST", help="Web dashboard address.")
    ] = DEFAULT_HOST,
    port: Annotated[
        int, typer.Option("--port", metavar="PORT", help="Web dashboard port (0 = any free port).")
    ] = DEFAULT_PORT,
    duration: Annotated[
        float | None,
        typer.Option(
            "--duration",
            metavar="SECONDS",
            help="Stop after this many seconds [default: run until Ctrl-C].",
            show_default=False,
        ),
    ] = None,
    store: Annotated[
        bool,
        typer.Option("--store/--no-store", help="Store events in the liquidations dataset."),
    ] = True,
    replay: Annotated[
        str | None,
        typer.Option(
            "--replay",
            metavar="FILE",
            help="Replay instead of connecting: 'store', a .jsonl file (as printed by --format jsonl), "
            "a .parquet file or a dataset directory. Read-only.",
            show_default=False,
        ),
    ] = None,
    windows: Annotated[
        str, typer.Option("--windows", metavar="LIST", help="Rolling windows, comma-separated.")
    ] = DEFAULT_WINDOWS,
) -> None:
    from liqcli.services.watch import WatchConfig, run_watch

    config = WatchConfig(
        exchanges=registry.validate(exchange) if exchange else registry.default_names(),
        symbols=list(dict.fromkeys(upper_symbols(symbols))),
        min_usd=min_usd,
        top=top,
        latest=latest,
        windows=windows,
        fmt=StreamFormat(fmt).value,
        web=web,
        host=host,
        port=port,
        duration=duration,
        store=store,
        replay=replay,
    )
    config.validate()
    # Everything imported so far lives as long as the process: keep the cyclic collector from
    # re-scanning it on every full collection of a long run (about 10% of the per-event cost).
    gc.freeze()
    # A young collection every 50k net allocations, not 700: the default thresholds spend ~1 µs
    # per live event in the collector, this ~0.2 (benchmarks/watch.py mirrors both lines).
    gc.set_threshold(50_000, 10, 10)
    try:
        run_async(
            run_watch(
                config,
                data_dir=state(ctx).data_dir,
                on_web_ready=lambda url: typer.echo(f"liq: web dashboard at {url}", err=True),
            )
        )
    except KeyboardInterrupt:
        # run_watch has flushed and closed everything by now (CONTRACT.md: 130 on Ctrl-C;
        # SIGTERM / SIGHUP exit 143 / 129 from run_async after the same shutdown).
        raise typer.Exit(130) from None


def register(app: typer.Typer) -> None:
    app.command("watch", help=HELP, epilog=EPILOG)(watch)
