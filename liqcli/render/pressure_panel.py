"""`liq pressure` output: the panel (rich, plain when piped), the JSON document, and the history chart."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console
from rich.text import Text

from liqcli.analytics.pressure import (
    BIAS_TEXT,
    COMPONENTS,
    LEVEL_LABELS,
    LEVELS,
    LOWEST_LEVEL,
    PressureSnapshot,
    interpretation,
    oi_change_reading,
    oi_velocity_per_step,
    oi_velocity_reading,
    taker_reading,
)
from liqcli.core.timeutil import iso_ms
from liqcli.errors import LiqError

BAR_WIDTH = 10
LEVEL_STYLES = {
    "EXTREME": "bold white on red",
    "HIGH": "bold red",
    "MEDIUM": "yellow",
    "LOW": "green",
    "VERY_LOW": "dim green",
}
BIAS_STYLES = {"SHORT": "bold red", "LONG": "bold green", "BOTH_HIGH": "bold magenta"}
MISSING_HINTS = {
    "crowding": "no fresh global account ratio",
    "top_crowding": "no fresh top-trader position ratio",
    "funding": "no funding settlement in the last 9 h",
    "oi_trend": "no fresh open interest",
    "force_share": "no stored liquidations covering the window (run `liq watch`)",
    "force_volume": "no stored liquidations covering the window (run `liq watch`)",
    "taker_pressure": "no fresh taker buy/sell ratio",
    "oi_velocity": "no fresh open interest",
}


def bar(score: float | None, width: int = BAR_WIDTH) -> str:
    """``[██████----]`` for a 0-100 score; ``[??????????]`` when there is none."""
    if score is None:
        return "[" + "?" * width + "]"
    filled = min(width, max(0, round(score / 100 * width)))
    return "[" + "█" * filled + "-" * (width - filled) + "]"


def _pct(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value * 100:+.{digits}f}%"


def _num(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if abs(value) >= 1e5:
        return f"{value:,.0f}"
    if value != 0 and abs(value) < 0.01:
        return f"{value:.6f}"
    return f"{value:.4g}" if abs(value) < 10 else f"{value:,.2f}"


def readings(snapshot: PressureSnapshot) -> dict[str, Any]:
    raw = snapshot.raw
    velocity = oi_velocity_per_step(raw["oi_roc4"])
    return {
        "oi_change": raw["oi_change"],
        "oi_change_reading": oi_change_reading(raw["oi_change"]),
        "taker_ratio": raw["taker_ratio"],
        "taker_reading": taker_reading(raw["taker_ratio"]),
        "oi_velocity": velocity,
        "oi_velocity_reading": oi_velocity_reading(velocity),
    }


def snapshot_document(
    snapshot: PressureSnapshot,
    *,
    symbol: str,
    period: str,
    lookback: int,
    inputs: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``--format json`` document."""
    components: dict[str, dict[str, Any]] = {}
    for name, comp in snapshot.components.items():
        components[name] = {
            "weight": comp.weight,
            "effective_weight": comp.effective_weight,
            "long": comp.long,
            "short": comp.short,
            "missing": comp.missing,
            **comp.raw,
        }
    return {
        "symbol": symbol,
        "period": period,
        "lookback": lookback,
        "model": snapshot.model,
        "ts": iso_ms(snapshot.ts),
        "long_score": snapshot.long_score,
        "short_score": snapshot.short_score,
        "long_level": snapshot.long_level,
        "short_level": snapshot.short_level,
        "bias": snapshot.bias,
        "bias_confidence": snapshot.bias_confidence,
        "bias_text": BIAS_TEXT.get(snapshot.bias or ""),
        "interpretation": interpretation(snapshot),
        "missing": snapshot.missing,
        "weights_renormalised": snapshot.renormalised,
        "weight_used": snapshot.weight_used,
        "weight_total": snapshot.weight_total,
        "components": components,
        **readings(snapshot),
        "inputs": dict(inputs or {}),
    }


def snapshot_row(snapshot: PressureSnapshot, *, symbol: str, period: str) -> dict[str, Any]:
    """One flat row for ``--format csv``."""
    row: dict[str, Any] = {
        "symbol": symbol,
        "period": period,
        "model": snapshot.model,
        "ts": iso_ms(snapshot.ts),
        "long_score": snapshot.long_score,
        "short_score": snapshot.short_score,
        "long_level": snapshot.long_level,
        "short_level": snapshot.short_level,
        "bias": snapshot.bias,
        "bias_confidence": snapshot.bias_confidence,
        "weight_used": snapshot.weight_used,
    }
    for name, comp in snapshot.components.items():
        row[f"{name}_long"], row[f"{name}_short"] = comp.long, comp.short
    return row


def _side_line(name: str, score: float | None, level: str | None) -> Text:
    style = LEVEL_STYLES.get(level or "", "")
    line = Text(f"{name:<7} ")
    line.append(bar(score), style=style)
    line.append(f" {score:5.1f}  " if score is not None else "   n/a  ")
    if level:
        line.append(level, style=style)
        line.append(f" ({LEVEL_LABELS[level]})")
    return line


def panel_text(
    snapshot: PressureSnapshot,
    *,
    symbol: str,
    period: str,
    lookback: int,
    inputs: Mapping[str, Mapping[str, Any]] | None = None,
) -> Text:
    """The panel as styled text; ``.plain`` is what a pipe receives."""
    out = Text()
    out.append(f"{symbol} {period}", style="bold")
    out.append(f"  liquidation pressure · {snapshot.model} model · {iso_ms(snapshot.ts)}\n\n")
    out.append_text(_side_line("LONGS", snapshot.long_score, snapshot.long_level))
    out.append("\n")
    out.append_text(_side_line("SHORTS", snapshot.short_score, snapshot.short_level))
    out.append("\n\n")

    read = readings(snapshot)
    velocity = read["oi_velocity"]
    out.append(
        f"OI change ({lookback} x {period}):  {_pct(read['oi_change']):>8}  {read['oi_change_reading']}\n"
    )
    ratio = read["taker_ratio"]
    out.append(f"Taker buy/sell ratio:  {_num(ratio):>8}  {read['taker_reading']}\n")
    out.append(
        f"OI velocity (per {period}): {_pct(velocity, 3):>8}  {read['oi_velocity_reading']}\n\n"
    )

    out.append(f"{'component':<15} {'weight':>9} {'long':>5} {'short':>5}  inputs\n", style="bold")
    for name in COMPONENTS:
        comp = snapshot.components[name]
        if comp.missing:
            out.append(f"{name:<15} {'-':>9} ", style="dim")
            out.append("missing", style="yellow")
            out.append(f"      {MISSING_HINTS[name]}\n", style="dim")
            continue
        weight = f"{comp.weight:g}"
        if snapshot.renormalised:
            weight += f">{comp.effective_weight:.1f}"
        values = " ".join(f"{k}={_num(v)}" for k, v in comp.raw.items() if v is not None)
        out.append(f"{name:<15} {weight:>9} {comp.long:5.2f} {comp.short:5.2f}  {values}\n")
    if snapshot.renormalised:
        out.append(
            f"weights renormalised over {snapshot.weight_used:g} of {snapshot.weight_total:g} "
            f"(missing: {', '.join(snapshot.missing)})\n",
            style="yellow",
        )
    out.append("\n")
    out.append("Interpretation: ", style="bold")
    out.append(interpretation(snapshot) + "\n")
    out.append("Strategy bias:  ", style="bold")
    if snapshot.bias:
        out.append(snapshot.bias, style=BIAS_STYLES.get(snapshot.bias, "bold"))
        out.append(f" (confidence {snapshot.bias_confidence:.2f}): {BIAS_TEXT[snapshot.bias]}\n")
    else:
        out.append("n/a\n")
    problems = {name: info for name, info in (inputs or {}).items() if info.get("status") != "ok"}
    if problems:
        out.append("Inputs: ", style="bold")
        out.append(
            "; ".join(f"{name} {info['status']}" for name, info in problems.items()) + "\n",
            style="yellow",
        )
    return out


def print_panel(text: Text, console: Console | None = None) -> None:
    # Colour only on a terminal; soft wrap so a pipe gets whole lines.
    (console or Console(highlight=False)).print(text, soft_wrap=True, end="")


# --------------------------------------------------------------------------- history chart

_BAND_COLOURS = {
    "EXTREME": "#f4b6b6",
    "HIGH": "#f8d3b0",
    "MEDIUM": "#fbeeb5",
    "LOW": "#dcefd0",
    LOWEST_LEVEL: "#e4eef6",
}


def history_chart(
    history: pl.DataFrame, price: pl.DataFrame | None, path: Path, *, title: str
) -> Path:
    """Price on top; long and short scores below over the level bands. ``history`` has ``ts``
    (ms) and the scores; ``price`` has ``ts`` (ms) and ``price``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    def when(frame: pl.DataFrame) -> list:
        return frame.select(pl.col("ts").cast(pl.Datetime("ms", "UTC")))["ts"].to_list()

    fig, (top, bottom) = plt.subplots(
        2, 1, sharex=True, figsize=(11, 6.5), gridspec_kw={"height_ratios": [1, 1.3]}
    )
    if price is not None and price.height:
        top.plot(when(price), price["price"].to_list(), color="#333333", linewidth=1.0)
    else:
        top.text(0.5, 0.5, "no price data", ha="center", va="center", transform=top.transAxes)
    top.set_ylabel("price")
    top.set_title(title)
    top.grid(alpha=0.3)

    upper = 100.0
    for threshold, name in (*LEVELS, (0.0, LOWEST_LEVEL)):
        bottom.axhspan(threshold, upper, color=_BAND_COLOURS[name], alpha=0.6, linewidth=0)
        bottom.text(1.002, (threshold + upper) / 2, name, transform=bottom.get_yaxis_transform(),
                    fontsize=7, va="center")  # fmt: skip
        upper = threshold
    times = when(history)
    bottom.plot(
        times, _nan(history["long_score"]), color="#c0392b", label="long pressure", linewidth=1.1
    )
    bottom.plot(
        times, _nan(history["short_score"]), color="#1e8449", label="short pressure", linewidth=1.1
    )
    bottom.set_ylim(0, 100)
    bottom.set_ylabel("score (0-100)")
    bottom.legend(loc="upper left", fontsize=8)
    bottom.grid(alpha=0.3)
    from liqcli.render.charts import date_axis

    date_axis(mdates, bottom)
    fig.tight_layout()
    # Through a temp file and a rename: a failed write never leaves half a PNG. The directory
    # must exist (a typo in --chart is not silently created).
    tmp = path.with_name(f".{path.name}.part")
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise LiqError(f"cannot write chart {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return path


def _nan(series: pl.Series) -> list[float]:
    # Gaps (missing scores) break the line instead of dropping to zero.
    return [math.nan if v is None else v for v in series.to_list()]
