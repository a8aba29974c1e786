"""The backtest PNG: equity against buy-and-hold on top, drawdown below (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from liqcli.errors import LiqError


def draw_equity(
    path: Path,
    ts: np.ndarray,
    equity: np.ndarray,
    closes: np.ndarray,
    *,
    title: str,
    capital: float,
    unit: str | None = None,
    splits: Sequence[int] = (),
) -> Path:
    """Equity (in ``unit``, e.g. the symbol's quote asset) against buy-and-hold of the same
    capital, the returns in the legend; the drawdown below, shaded, its worst point marked;
    ``splits`` (ms): where one part of the curve hands over to the next (walk-forward folds)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    when = ts.astype("datetime64[ms]")
    peak = np.maximum.accumulate(equity)
    dd = np.where(peak > 0, equity / peak - 1, 0.0) * 100
    hold = capital * closes / closes[0] if closes.size else closes
    fig = Figure(figsize=(11, 6.5), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    final = equity[-1] if equity.size else capital
    ret = (final / capital - 1) * 100
    top.plot(when, equity, color="#1f77b4", lw=1.2, label=f"strategy  {ret:+.1f} %")
    if hold.size:
        hold_ret = (hold[-1] / capital - 1) * 100
        top.plot(
            when, hold, color="#888888", lw=0.9, ls="--", label=f"buy and hold  {hold_ret:+.1f} %"
        )
    top.axhline(capital, color="#bbbbbb", lw=0.6)
    top.set_ylabel(f"equity ({unit})" if unit else "equity")
    top.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    # framed: a line passing under the legend would otherwise run through its text
    top.legend(loc="upper left", frameon=True, framealpha=0.9, edgecolor="#dddddd")
    top.set_title(f"{title}   final {final:,.2f} {unit or ''}".rstrip(), loc="left")
    top.grid(alpha=0.25)
    bottom.fill_between(when, dd, 0, color="#d62728", alpha=0.35, lw=0)
    bottom.plot(when, dd, color="#d62728", lw=0.7)
    bottom.set_ylabel("drawdown %")
    bottom.set_xlabel("time (UTC)")
    bottom.grid(alpha=0.25)
    if dd.size:
        worst = int(np.argmin(dd))
        bottom.plot([when[worst]], [dd[worst]], "o", color="#d62728", ms=4)
        day = np.datetime_as_string(when[worst], unit="m").replace("T", " ")
        # as the panel's title: text inside the axes would cover the shading somewhere
        bottom.set_title(
            f"max drawdown {dd[worst]:.1f} % ({day} UTC)", loc="left", fontsize=9, color="#d62728"
        )
    for at in splits:
        for ax in (top, bottom):
            ax.axvline(np.datetime64(int(at), "ms"), color="#999999", lw=0.7, ls=":")
    locator = AutoDateLocator()
    bottom.xaxis.set_major_locator(locator)
    bottom.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as exc:
        raise LiqError(f"--chart {path}: cannot write: {exc.strerror or exc}") from None
    return path
