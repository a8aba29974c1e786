"""The backtest PNG: equity against buy-and-hold on top, drawdown below (matplotlib, Agg)."""

from __future__ import annotations

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
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    when = ts.astype("datetime64[ms]")
    peak = np.maximum.accumulate(equity)
    dd = np.where(peak > 0, equity / peak - 1, 0.0) * 100
    hold = capital * closes / closes[0] if closes.size else closes
    fig = Figure(figsize=(11, 6.5), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    top.plot(when, equity, color="#1f77b4", lw=1.2, label="strategy")
    top.plot(when, hold, color="#888888", lw=0.9, ls="--", label="buy and hold")
    top.axhline(capital, color="#bbbbbb", lw=0.6)
    top.set_ylabel("equity")
    top.legend(loc="upper left", frameon=False)
    final = equity[-1] if equity.size else capital
    top.set_title(
        f"{title}   final {final:,.2f} ({(final / capital - 1) * 100:+.1f} %)", loc="left"
    )
    top.grid(alpha=0.25)
    bottom.fill_between(when, dd, 0, color="#d62728", alpha=0.35, lw=0)
    bottom.plot(when, dd, color="#d62728", lw=0.7)
    bottom.set_ylabel("drawdown %")
    bottom.grid(alpha=0.25)
    if dd.size:
        worst = int(np.argmin(dd))
        bottom.annotate(f"{dd[worst]:.1f} %", (when[worst], dd[worst]), fontsize=8, color="#d62728")
    fig.autofmt_xdate()
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as exc:
        raise LiqError(f"--chart {path}: cannot write: {exc.strerror or exc}") from None
    return path
