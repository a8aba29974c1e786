"""``liq backtest STRATEGY SYMBOL``: the trading core over stored history."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from liqcli.cli.common import FormatOpt, QuietOpt, state, upper_symbols
from liqcli.core.timeutil import now_ms, parse_time
from liqcli.errors import UsageError
from liqcli.render.output import Format, render

HELP = """Backtest a strategy on stored history with the same simulated broker as liq paper.

\b
Bars (--data bars:INTERVAL, stored klines): the target a strategy wants at a bar's close is
filled at the next bar's open (market order, --slippage-bps against it, taker fee on the filled
notional); each position uses the whole equity at --leverage (qty = balance x L / (price x (1 +
L x taker))). A bar's low (longs) or high (shorts) is taken as the mark: a position whose
Binance isolated liquidation price lies inside the bar's range is liquidated there, losing its
margin. Stored funding rows are settled at their real times (rate x mark x signed qty).

\b
Metrics: total_return, cagr; volatility, sharpe and sortino from daily returns over 365 days
(sharpe = mean/std x sqrt(365), sortino = mean/sqrt(mean(min(r,0)^2)) x sqrt(365), rf = 0);
max_drawdown (1 - equity/peak) and its duration in days; calmar = cagr/max_drawdown; win_rate,
profit_factor (gross profit / gross loss), avg_trade (net PnL), exposure (share of bars in a
position), trades, fees, funding (paid), liquidations; buy_and_hold_return alongside.
"""

EPILOG = """\b
Examples:
  liq fetch BTCUSDT --dataset klines --period 1m --since 30d
  liq backtest sma_cross BTCUSDT --start 30d                      # SMA 20/50, 1-minute bars
  liq backtest sma_cross BTCUSDT --start 2026-01-01 --end 2026-07-01 --param fast=10 --param slow=40
  liq backtest sma_cross BTCUSDT --start 90d --leverage 3 --fees 0.02%,0.05% --chart eq.png
  liq backtest sma_cross BTCUSDT --start 90d --grid fast=10,20,30 --grid slow=50,100 -f json
  liq backtest sma_cross BTCUSDT --start 1y --grid fast=10,20 --walk-forward 4
  liq backtest mine BTCUSDT --strategy examples/breakout.py:Breakout --param lookback=60
  liq backtest sma_cross BTCUSDT --start 1y --grid fast=5,10,20 --executor dask://10.0.0.5:8786
"""


def backtest(
    ctx: typer.Context,
    strategy: Annotated[
        str,
        typer.Argument(
            help="Built-in strategy (sma_cross), or any name with --strategy FILE.py:Class.",
            show_default=False,
        ),
    ],
    symbol: Annotated[str, typer.Argument(help="e.g. BTCUSDT.", show_default=False)],
    start: Annotated[
        str, typer.Option("--start", help="Start: date, ISO time or e.g. 30d.")
    ] = "30d",
    end: Annotated[str | None, typer.Option("--end", help="End [default: now].")] = None,
    data: Annotated[
        str,
        typer.Option("--data", help="bars:INTERVAL (stored klines, e.g. bars:1m, bars:1h)."),
    ] = "bars:1m",
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param", help="Strategy parameter NAME=VALUE (repeatable).", show_default=False
        ),
    ] = None,
    strategy_file: Annotated[
        str | None,
        typer.Option(
            "--strategy",
            help="Your own strategy: FILE.py:ClassName (see examples/ and the README).",
            show_default=False,
        ),
    ] = None,
    capital: Annotated[
        float, typer.Option("--capital", help="Starting balance (quote).")
    ] = 10_000.0,
    leverage: Annotated[float, typer.Option("--leverage", help="Isolated leverage, 1-125.")] = 1.0,
    fees: Annotated[
        str, typer.Option("--fees", help="MAKER,TAKER as fractions or percents, e.g. 0.02%,0.05%.")
    ] = "0.02%,0.05%",
    slippage_bps: Annotated[
        float, typer.Option("--slippage-bps", help="Extra slippage per fill, basis points.")
    ] = 0.0,
    funding: Annotated[
        str, typer.Option("--funding", help="on: settle stored funding rates; off: ignore them.")
    ] = "on",
    grid: Annotated[
        list[str] | None,
        typer.Option(
            "--grid",
            help="Sweep NAME=V1,V2,... (repeatable: every combination).",
            show_default=False,
        ),
    ] = None,
    walk_forward_k: Annotated[
        int | None,
        typer.Option(
            "--walk-forward",
            help="K folds: pick the --grid's best (by sharpe) on each window, test on the next; "
            "out-of-sample results only.",
            show_default=False,
        ),
    ] = None,
    executor: Annotated[
        str,
        typer.Option("--executor", help="local (processes) or dask://HOST:PORT (liq[dist])."),
    ] = "local",
    exchange: Annotated[
        str, typer.Option("--exchange", "-e", help="Whose stored klines.")
    ] = "binance",
    chart: Annotated[
        Path | None,
        typer.Option("--chart", help="Equity and drawdown PNG (single runs).", show_default=False),
    ] = None,
    fmt: FormatOpt = Format.table,
    quiet: QuietOpt = False,
) -> None:
    from liqcli.services import backtest as svc
    from liqcli.trading.costs import parse_fees

    (symbol,) = upper_symbols([symbol])
    kind, _, interval = data.partition(":")
    if kind != "bars" or not interval:
        if kind in ("trades",) or kind.startswith("session"):
            raise UsageError(
                f"--data {data}: order-flow backtests (trades, recorded sessions) are not built "
                "yet; use bars:INTERVAL"
            )
        raise UsageError(f"invalid --data {data!r}: expected bars:INTERVAL, e.g. bars:1m")
    if funding not in ("on", "off"):
        raise UsageError(f"invalid --funding {funding!r}: on or off")
    if chart is not None:
        if chart.suffix.lower() != ".png":
            raise UsageError(f"--chart {chart}: the chart is a PNG, name it *.png")
        if not chart.parent.is_dir():
            raise UsageError(f"--chart {chart}: directory {chart.parent} does not exist")
        if grid or walk_forward_k:
            raise UsageError("--chart draws one run: drop --grid/--walk-forward")
    spec = svc.StrategySpec(strategy_file or strategy, svc.parse_params(param or []))
    now = now_ms()
    config = svc.BacktestConfig(
        strategy=spec,
        symbol=symbol,
        start_ms=parse_time(start, now=now),
        end_ms=parse_time(end, now=now) if end else now,
        interval=interval,
        exchange=exchange,
        capital=capital,
        leverage=leverage,
        fees=parse_fees(fees),
        slippage_bps=slippage_bps,
        funding=funding == "on",
    )
    config.validate()
    sweep = svc.parse_grid(grid or [])
    if walk_forward_k is not None and not sweep:
        raise UsageError("--walk-forward chooses among --grid values: give at least one --grid")
    store = state(ctx).store()
    bars = svc.load_bars(store, config)
    funding_rows = svc.load_funding(store, config)
    jobs = len(svc.grid_specs(spec, sweep)) * (walk_forward_k or 1)
    pool, closer = svc.open_executor(executor, jobs)
    try:
        if walk_forward_k is not None:
            docs = svc.walk_forward(config, bars, funding_rows, sweep, walk_forward_k, pool)
            kind_stored = "walk_forward"
        elif sweep:
            docs = svc.run_grid(config, bars, funding_rows, sweep, pool)
            kind_stored = "grid"
        else:
            docs = [svc.run_frame(config, bars, funding_rows)]
            kind_stored = "run"
    finally:
        if closer is not None:
            (getattr(closer, "close", None) or closer.shutdown)()
    ids = svc.store_runs(store, docs, config, kind_stored)
    if chart is not None:
        from liqcli.render.backtest_chart import draw_equity

        ts, equity = docs[0]["_equity"]
        draw_equity(
            chart,
            ts,
            equity,
            bars["close"].to_numpy(),
            title=f"{docs[0]['strategy']} {symbol} {interval} {_params_text(docs[0]['params'])}",
            capital=capital,
        )
    for doc, rid in zip(docs, ids, strict=True):
        doc.pop("_equity", None)
        doc["run_id"] = rid
    _print(docs, fmt, single=kind_stored == "run", quiet=quiet)


def _params_text(params: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def _print(docs: list[dict], fmt: Format, *, single: bool, quiet: bool) -> None:
    if fmt == Format.json:
        render([], "json", document=docs[0] if single else {"runs": docs}, rows_key="_")
        return
    if single:
        doc = docs[0]
        if fmt == Format.csv:
            render(doc["trades"], "csv")
            return
        m = doc["metrics"]
        typer.echo(
            f"{doc['strategy']} {doc['symbol']} {_params_text(doc['params'])}  "
            f"{doc['start']} -> {doc['end']}  ({doc['bars']:,} bars, run {doc['run_id']})"
        )
        rows = [{"metric": k, "value": _fmt(v)} for k, v in m.items()]
        render(rows, "table")
        return
    rows = []
    for doc in docs:
        m = doc["metrics"]
        row = {"fold": doc.get("fold"), **doc["params"]} if "fold" in doc else dict(doc["params"])
        row.update(
            total_return=m["total_return"],
            sharpe=m["sharpe"],
            max_drawdown=m["max_drawdown"],
            trades=m["trades"],
            final_equity=m["final_equity"],
        )
        if "fold" in doc:
            row["test_start"] = doc["start"]
        rows.append(row)
    render(rows, fmt.value)


def _fmt(value):
    if isinstance(value, float):
        return f"{value:,.6g}" if abs(value) < 1000 else f"{value:,.2f}"
    return "" if value is None else value


def register(app: typer.Typer) -> None:
    app.command("backtest", help=HELP, epilog=EPILOG)(backtest)
