"""Backtest metrics with written definitions (also in ``liq backtest --help`` and the README).

- total_return: final equity / capital − 1.  final_equity: equity at the last bar's close.
- Daily returns r_d: the equity at each UTC day's last bar over the previous day's (the first
  day against the capital).  CAGR: (final/capital)^(365 / days) − 1, days = span of the bars
  (null when it overflows a float: a run of minutes).
- volatility: std(r_d, ddof=1) × √365.  sharpe: mean(r_d) / std(r_d, ddof=1) × √365 (rf = 0).
- sortino: mean(r_d) / √mean(min(r_d, 0)²) × √365.
- max_drawdown: max over time of 1 − equity / running peak (a positive fraction);
  max_drawdown_duration_days: the longest time from a peak until the equity is back at it
  (a drawdown still open at the end counts until the last bar).
- calmar: CAGR / max_drawdown.  exposure: share of bars ending with a position.
- win_rate: winning trades / trades.  profit_factor: gross profit / gross loss of trades
  (net PnL; infinite without a losing trade, null in JSON).
- avg_trade: mean net PnL per trade.  fees, funding (paid, > 0 is a cost), liquidations: counts
  and sums over the run.  buy_and_hold_return: last close / first open − 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

DAY_MS = 86_400_000


def daily_returns(ts: np.ndarray, equity: np.ndarray, capital: float) -> np.ndarray:
    if equity.size == 0:
        return np.array([])
    day = ts // DAY_MS
    last = np.flatnonzero(np.append(day[1:] != day[:-1], True))
    closes = equity[last]
    prev = np.concatenate(([capital], closes[:-1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(prev > 0, closes / prev - 1, 0.0)
    return r


def drawdown(ts: np.ndarray, equity: np.ndarray) -> tuple[float, float]:
    if equity.size == 0:
        return 0.0, 0.0
    peak = np.maximum.accumulate(equity)
    with np.errstate(divide="ignore", invalid="ignore"):
        dd = np.where(peak > 0, 1 - equity / peak, 0.0)
    max_dd = float(dd.max())
    under = equity < peak
    at_peak = np.where(~under, np.arange(equity.size), 0)
    last_peak = np.maximum.accumulate(at_peak)
    # Under water: time since the peak; at a recovery bar: the peak of the bar before it.
    since = ts - ts[last_peak]
    recovered = np.flatnonzero(~under[1:] & under[:-1]) + 1
    spans = [since[under].max()] if under.any() else []
    if recovered.size:
        spans.append((ts[recovered] - ts[last_peak[recovered - 1]]).max())
    return max_dd, (int(max(spans)) if spans else 0) / DAY_MS


def _cagr(growth: float, days: float) -> float | None:
    """None when undefined or too large to state (a run of minutes that made money)."""
    if growth <= 0:
        return -1.0
    if days <= 0:
        return None
    try:
        return float(growth) ** (365 / days) - 1
    except OverflowError:
        return None


def compute(
    *,
    ts: np.ndarray,
    equity: np.ndarray,
    capital: float,
    trades: Sequence[Any],
    fees: float,
    funding: float,
    liquidations: int,
    exposure: float,
    first_open: float | None,
    last_close: float | None,
) -> dict[str, float | int | None]:
    final = float(equity[-1]) if equity.size else capital
    days = (ts[-1] - ts[0]) / DAY_MS if ts.size > 1 else 0.0
    r = daily_returns(ts, equity, capital)
    sd = float(np.std(r, ddof=1)) if r.size > 1 else 0.0
    mean = float(np.mean(r)) if r.size else 0.0
    downside = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2))) if r.size else 0.0
    growth = final / capital if capital > 0 else 0.0
    cagr = _cagr(growth, float(days))
    max_dd, dd_days = drawdown(ts, equity)
    pnls = [t.pnl for t in trades]
    wins = [p for p in pnls if p > 0]
    losses = [-p for p in pnls if p < 0]
    return {
        "final_equity": final,
        "total_return": growth - 1,
        "cagr": cagr,
        "volatility": sd * math.sqrt(365) if sd else 0.0,
        "sharpe": mean / sd * math.sqrt(365) if sd > 0 else None,
        "sortino": mean / downside * math.sqrt(365) if downside > 0 else None,
        "max_drawdown": max_dd,
        "max_drawdown_duration_days": dd_days,
        "calmar": (cagr / max_dd) if cagr is not None and max_dd > 0 else None,
        "win_rate": len(wins) / len(pnls) if pnls else None,
        "profit_factor": (sum(wins) / sum(losses)) if losses else (math.inf if wins else None),
        "avg_trade": sum(pnls) / len(pnls) if pnls else None,
        "exposure": exposure,
        "trades": len(pnls),
        "fees": fees,
        "funding": funding,
        "liquidations": liquidations,
        "buy_and_hold_return": (last_close / first_open - 1) if first_open and last_close else None,
    }
