"""``liq data``: the store inventory (each dataset, venue, symbol, period: range, rows, gaps, size)."""

from __future__ import annotations

from typing import Annotated

import typer

from liqcli.cli.common import FormatOpt, state, upper_symbols
from liqcli.render.output import Format, render

HELP = """What the store holds: one row per dataset, exchange, symbol and period.

\b
first_ts / last_ts: the oldest and newest row; rows: how many; gaps: missing steps between them
for the datasets on a period grid (the ratios, open interest, klines, pressure: 0 means
complete); size: bytes on disk. Read from the Parquet footers and the oldest and newest file of
each series, so it stays fast on a large store. Unreadable files are counted, not fatal.
"""

EPILOG = """\b
Examples:
  liq data                                 # everything, as a table
  liq data open_interest klines            # some datasets
  liq data --symbol BTCUSDT -f json        # one symbol, one JSON document
  liq --data-dir /srv/liq data -f csv      # for a spreadsheet
"""


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover


def data(
    ctx: typer.Context,
    datasets: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="DATASET", help="Only these datasets [default: all].", show_default=False
        ),
    ] = None,
    symbol: Annotated[
        str | None,
        typer.Option("--symbol", "-s", metavar="SYMBOL", help="Only this symbol, e.g. BTCUSDT."),
    ] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    from liqcli.services.inventory import inventory

    (wanted,) = upper_symbols([symbol]) if symbol else (None,)
    root = state(ctx).data_dir
    found = inventory(root, datasets, wanted)
    rows = [e.row() for e in found.entries]
    if fmt == Format.json:
        document = {
            "data_dir": str(root),
            "total_bytes": found.total_bytes,
            "corrupt_files": [str(p) for p in found.corrupt],
        }
        render(rows, fmt, document=document, rows_key="datasets")
    elif fmt == Format.csv:
        render(rows, fmt)
    else:
        table = [
            {
                "dataset": r["dataset"],
                "exchange": r["exchange"] or "",
                "symbol": r["symbol"] or "",
                "period": r["period"] or "",
                **(
                    {"partition": r["partition"] or ""} if any(x["partition"] for x in rows) else {}
                ),
                "first_ts": (r["first_ts"] or "")[:16].replace("T", " "),
                "last_ts": (r["last_ts"] or "")[:16].replace("T", " "),
                "rows": r["rows"],
                "gaps": r["gaps"],
                "size": human_bytes(r["bytes"]),
            }
            for r in rows
        ]
        render(table, fmt)
        if rows:
            typer.echo(f"{len(rows)} series, {human_bytes(found.total_bytes)} under {root}")
    if not rows:
        what = f" for {', '.join(datasets)}" if datasets else ""
        typer.echo(
            f"liq: nothing stored under {root}{what} yet: e.g. `liq fetch BTCUSDT`", err=True
        )


def register(app: typer.Typer) -> None:
    app.command("data", help=HELP, epilog=EPILOG)(data)
