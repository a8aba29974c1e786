"""The ``liq liquidations --chart`` PNG: long and short liquidations stacked per interval (longs
red at the bottom, shorts green on top), with the price above when klines are stored.

matplotlib is imported only when a chart is drawn (its Figure API: no pyplot global state).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import polars as pl

from liqcli.core.timeutil import iso_ms
from liqcli.errors import LiqError, UsageError
from liqcli.render.dashboard import usd
from liqcli.render.safe import escape_control

LONG_COLOUR = "#d64541"
SHORT_COLOUR = "#27ae60"
DPI = 110


def check_chart_path(path: Path) -> None:
    """Usage errors before any work: a *.png in a directory that exists (it is not created)."""
    if path.suffix.lower() != ".png":
        raise UsageError(f"--chart {path}: the chart is a PNG, name it *.png")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"--chart {path}: no such directory {parent}")
    if path.is_dir():
        raise UsageError(f"--chart {path}: is a directory")


def _time_span_label(start_ms: int, end_ms: int) -> str:
    start, end = iso_ms(start_ms), iso_ms(end_ms)
    if end_ms - start_ms < 3_600_000:  # short windows: the seconds matter
        return f"{start[:19].replace('T', ' ')} → {end[11:19]} UTC"
    if start[:10] == end[:10]:
        return f"{start[:16].replace('T', ' ')} → {end[11:16]} UTC"
    return f"{start[:16].replace('T', ' ')} → {end[:16].replace('T', ' ')} UTC"


def draw_history_chart(
    rows: pl.DataFrame,
    path: Path,
    *,
    start_ms: int,
    end_ms: int,
    interval_ms: int,
    scope: str,
    interval: str,
    price: pl.DataFrame | None = None,
    price_label: str | None = None,
) -> Path:
    """``rows`` are ``liq liquidations`` rows (``ts`` datetime, long/short usd; any grouping):
    they are summed per interval. Written through a temp file and a rename; LiqError (one line)
    when the file cannot be written."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    per_interval = (
        rows.group_by("ts")
        .agg(pl.col("long_usd").sum(), pl.col("short_usd").sum())
        .sort("ts")
        .with_columns(pl.col("ts").dt.replace_time_zone(None))
    )
    times = per_interval["ts"].to_numpy()
    longs = per_interval["long_usd"].to_numpy()
    shorts = per_interval["short_usd"].to_numpy()
    width_days = interval_ms / 86_400_000 * 0.85
    with_price = price is not None and price.height > 0
    fig = Figure(figsize=(11, 6.5 if with_price else 4.8))
    FigureCanvasAgg(fig)
    if with_price:
        top, bottom = fig.subplots(
            2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1.4], "hspace": 0.14}
        )
    else:
        top, bottom = None, fig.subplots(1, 1)
    title = f"Liquidations {escape_control(scope)}, per {interval} · {_time_span_label(start_ms, end_ms)}"
    # Without the price panel the legend sits between the title and the bars.
    (top or bottom).set_title(title, fontsize=11, loc="left", pad=6 if top is not None else 20)
    if top is not None and price is not None:
        when = price.select(pl.col("ts").cast(pl.Datetime("ms")))["ts"].to_numpy()
        top.plot(when, price["price"].to_numpy(), color="#333333", linewidth=1.0)
        top.set_ylabel(escape_control(price_label or "price"))
        top.grid(alpha=0.3)
    if times.size:
        bottom.bar(times, longs, width=width_days, color=LONG_COLOUR, align="edge",
                   label=f"longs liquidated ({usd(float(longs.sum()))})")  # fmt: skip
        bottom.bar(times, shorts, width=width_days, bottom=longs, color=SHORT_COLOUR,
                   align="edge", label=f"shorts liquidated ({usd(float(shorts.sum()))})")  # fmt: skip
        # Above the bars, never over them.
        bottom.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncols=2, fontsize=8,
                      frameon=False, borderaxespad=0.2)  # fmt: skip
    else:
        bottom.text(0.5, 0.5, "no liquidations stored in this range", ha="center",
                    va="center", transform=bottom.transAxes, color="#777777")  # fmt: skip
    import numpy as np

    bottom.set_xlim(np.datetime64(start_ms, "ms"), np.datetime64(end_ms, "ms"))
    bottom.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: usd(v)))
    bottom.set_ylabel("notional liquidated (USD)")
    bottom.grid(axis="y", alpha=0.3)
    locator = AutoDateLocator()
    bottom.xaxis.set_major_locator(locator)
    bottom.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    bottom.set_xlabel("UTC")
    fig.subplots_adjust(left=0.08, right=0.97, top=0.93 if with_price else 0.88, bottom=0.1)
    return _write(fig, path)


def _write(fig: Any, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.part")
    try:
        fig.savefig(tmp, dpi=DPI, format="png")
        os.replace(tmp, path)
    except OSError as exc:
        with_tmp = tmp.exists()
        if with_tmp:
            tmp.unlink(missing_ok=True)
        raise LiqError(f"cannot write chart {path}: {exc.strerror or exc}") from None
    return path
