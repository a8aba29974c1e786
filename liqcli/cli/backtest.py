"""``liq backtest STRATEGY SYMBOL``: the trading core over stored history."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from liqcli.cli.common import FormatOpt, QuietOpt, state, upper_symbols
from liqcli.core.timeutil import iso_ms, now_ms, parse_time
from liqcli.errors import UsageError
from liqcli.render.output import Format, render

HELP = """Backtest a strategy on stored history with the same simulated broker as liq paper.

\b
Bars (--data bars:INTERVAL, stored klines): the target a strategy wants at a bar's close is
filled at the next bar's open (market order, --slippage-bps against it, taker fee on the filled
notional); each position uses the whole equity at --leverage (qty = balance x L / (price x (1 +
L x taker))). A bar's low (longs) or high (shorts) is taken as the mark: a position whose
Binance isolated liquidation price lies inside the bar's range is liquidated there, losing its
margin. Stored funding rows are settled at their real times (rate x mark x signed qty). Orders
of a --strategy FILE.py:Class on_event strategy: market at the next open; a limit not crossing
it fills at its price in the first bar trading through it; a stop at its trigger inside the
first bar reaching it (at the open after a gap).

\b
Order flow (modes 0 1 2 3, or all side by side; --data session:NAME or trades): the same
engine, shared OrderFlow, SeedMode and simulated broker as liq paper (book-walking market
orders, --slippage-bps default 2, leverage default 5/3/3/5 per mode), driven by a recorded liq
paper session (the same trades as the live run) or by stored agg_trades merged in time order
with book_tops, book_depth (recorded snapshots, else the archive's bands) and funding (settled at
its real times; the mark is the last trade, checked for liquidation each second); --param
vpin_bucket_usd=N (default 50000). Unless --quiet, --data trades shows the events fed against
the tape's length on stderr; SIGTERM / SIGHUP / Ctrl-C end a run (exit 143/129/130), none stored.
Mode cascade (alone or in a list: 0,1,cascade or all,cascade; all is the seed's four): liq
paper's cascade mode on liq cascade's detector, fed the session's recorded liquidations or, with
--data trades, the stored liquidations of --exchange (liq watch or liq paper --record store
them) merged into the same tape; leverage default 3. Equity is sampled each minute of event time;
sharpe_1m = mean/std of 1-minute returns x sqrt(525600). --compare-leverage runs fixed and each
dynamic engine (rules, kelly, vol_target) on the same events against the seed's criteria (Sharpe
+10 %, max drawdown -20 % vs fixed) with each trade's optimal leverage against the one used.

\b
Metrics (r: daily returns, the equity at each UTC day's last bar over the previous day's, the
first against --capital; 365 days a year, rf = 0): total_return = final equity / capital - 1;
cagr = (final / capital)^(365 / days) - 1 (days: the bars' span); volatility = std(r) x
sqrt(365); sharpe = mean(r) / std(r) x sqrt(365); sortino = mean(r) / sqrt(mean(min(r,0)^2)) x
sqrt(365); max_drawdown = max of 1 - equity / running peak, max_drawdown_duration_days the
longest time from a peak until back at it (or the end); calmar = cagr / max_drawdown; win_rate
= winning trades / trades; profit_factor = gross profit / gross loss of the trades' net PnL
(null without a losing trade); avg_trade = mean net PnL (after fees and funding); exposure =
share of bars ending in a position; trades = closed round trips; fees = paid on every fill;
funding = net paid (> 0 a cost); liquidations = positions liquidated; buy_and_hold_return = last
close / first open - 1, alongside. A metric with too little to go on (one day of returns, no
losing trade) is null in JSON, n/a in a table.
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
  liq backtest 0 BTCUSDT --data session:night1 -f json          # a recorded liq paper session
  liq fetch BTCUSDT --dataset agg_trades --dataset book_ticker --archive --start 2024-03-01 --end 2024-03-02
  liq backtest all BTCUSDT --data trades --start 2024-03-01 --end 2024-03-02
  liq backtest 3 BTCUSDT --data trades --start 2024-03-01 --end 2024-03-02 --compare-leverage
  liq watch BTCUSDT -e binance                                  # stores the liquidations
  liq backtest 0,1,cascade BTCUSDT --data trades --start 2026-11-20 --end 2026-11-21
  liq backtest cascade BTCUSDT --data session:night1 -f json
"""


def backtest(
    ctx: typer.Context,
    strategy: Annotated[
        str,
        typer.Argument(
            help="sma_cross, an order-flow mode 0 1 2 3 or cascade (or a list: all, "
            "0,1,cascade), or any name with --strategy FILE.py:Class.",
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
        typer.Option(
            "--data",
            help="bars:INTERVAL (stored klines, e.g. bars:1m), trades (stored agg_trades + "
            "book_tops, + liquidations for cascade) or session:NAME (a recorded liq paper "
            "session).",
        ),
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
    leverage: Annotated[
        float | None,
        typer.Option(
            "--leverage",
            help="Isolated leverage, 1-125 [default: 1; order-flow modes 5/3/3/5].",
            show_default=False,
        ),
    ] = None,
    dynamic: Annotated[
        str,
        typer.Option(
            "--dynamic-leverage",
            help="Order-flow modes: off, rules (the seed's), kelly or vol_target.",
        ),
    ] = "off",
    compare_leverage: Annotated[
        bool,
        typer.Option(
            "--compare-leverage",
            help="Order-flow modes: fixed and every dynamic engine side by side, with the "
            "deltas against the seed's criteria and the optimal-leverage analysis.",
        ),
    ] = False,
    fees: Annotated[
        str, typer.Option("--fees", help="MAKER,TAKER as fractions or percents, e.g. 0.02%,0.05%.")
    ] = "0.02%,0.05%",
    slippage_bps: Annotated[
        float | None,
        typer.Option(
            "--slippage-bps",
            help="Extra slippage per fill, basis points [default: 0; order-flow modes 2].",
            show_default=False,
        ),
    ] = None,
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
            metavar="K",
            help="K folds: pick the --grid's best (by sharpe; by total_return in a window too "
            "short for daily returns) on each window, test on the next; out-of-sample results "
            "only, per fold and chained into one account. Each of the K+1 windows must hold "
            "bars.",
            show_default=False,
        ),
    ] = None,
    executor: Annotated[
        str,
        typer.Option("--executor", help="local (processes) or dask://HOST:PORT (liq[dist])."),
    ] = "local",
    exchange: Annotated[
        str,
        typer.Option(
            "--exchange",
            "-e",
            help="Whose stored data: klines, funding, agg_trades, book_tops, liquidations (liq "
            "fetch and liq paper --record store Binance's).",
        ),
    ] = "binance",
    chart: Annotated[
        Path | None,
        typer.Option(
            "--chart",
            help="Equity and drawdown PNG (one run, or a walk-forward's folds chained).",
            show_default=False,
        ),
    ] = None,
    fmt: FormatOpt = Format.table,
    quiet: QuietOpt = False,
) -> None:
    from liqcli.services import backtest as svc
    from liqcli.trading.costs import parse_fees

    (symbol,) = upper_symbols([symbol])
    kind, _, interval = data.partition(":")
    if funding not in ("on", "off"):
        raise UsageError(f"invalid --funding {funding!r}: on or off")
    if chart is not None:
        if chart.suffix.lower() != ".png":
            raise UsageError(f"--chart {chart}: the chart is a PNG, name it *.png")
        if not chart.parent.is_dir():
            raise UsageError(f"--chart {chart}: directory {chart.parent} does not exist")
        sweep_only = grid and not walk_forward_k  # a walk-forward draws its folds chained
        if sweep_only or compare_leverage or strategy == "all" or "," in strategy:
            raise UsageError(
                "--chart draws one run or a walk-forward's folds: drop --grid (without "
                "--walk-forward), --compare-leverage, all and mode lists"
            )
    if kind in ("trades", "session"):
        valid_name = all(c.isalnum() or c in "-_." for c in interval)
        if (kind == "session") != bool(interval) or not valid_name:
            raise UsageError(f"invalid --data {data!r}: trades or session:NAME")
        if grid or walk_forward_k or strategy_file:
            raise UsageError(
                "--grid, --walk-forward and --strategy run on bars; the order-flow modes take "
                "--param, --leverage, --dynamic-leverage and --compare-leverage"
            )
        _order_flow(
            ctx, strategy, symbol, data, start, end, param, capital, leverage, dynamic,
            compare_leverage, fees, slippage_bps, funding == "on", exchange, chart, fmt, quiet,
        )  # fmt: skip
        return
    if kind != "bars" or not interval:
        raise UsageError(
            f"invalid --data {data!r}: expected bars:INTERVAL (e.g. bars:1m), trades or "
            "session:NAME"
        )
    if dynamic != "off" or compare_leverage:
        raise UsageError(
            "--dynamic-leverage and --compare-leverage size the order-flow modes: use "
            "--data trades or session:NAME with modes 0-3 or cascade"
        )
    leverage = 1.0 if leverage is None else leverage
    slippage_bps = 0.0 if slippage_bps is None else slippage_bps
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
    svc.check_sweep(config, sweep, walk_forward_k, executor)  # usage errors before any data
    store = state(ctx).store()
    bars = svc.load_bars(store, config)
    if walk_forward_k is not None:
        svc.window_edges(bars, walk_forward_k)  # no empty window: a usage error before any run
    funding_rows = svc.load_funding(store, config, bars=bars, warn=not quiet)
    jobs = len(svc.grid_specs(spec, sweep)) * (walk_forward_k or 1)
    pool, closer = svc.open_executor(executor, jobs)
    progress = _SweepProgress() if sweep and not quiet else None
    try:
        with _stopped_by_signals():
            if walk_forward_k is not None:
                docs = svc.walk_forward(
                    config, bars, funding_rows, sweep, walk_forward_k, pool, progress=progress
                )
                kind_stored = "walk_forward"
            elif sweep:
                docs = svc.run_grid(config, bars, funding_rows, sweep, pool, progress=progress)
                kind_stored = "grid"
            else:
                docs = [svc.run_frame(config, bars, funding_rows)]
                kind_stored = "run"
    except (typer.Exit, KeyboardInterrupt) as exc:  # a signal: workers end now, nothing stored
        if progress is not None:
            progress.close()
        if svc.close_executor(closer, abort=True):
            _exit_now(exc.exit_code if isinstance(exc, typer.Exit) else 130)
        raise
    except BaseException:
        svc.close_executor(closer, error=True)
        raise
    else:
        svc.close_executor(closer)
    finally:
        if progress is not None:
            progress.close()
    with _deferred_signals():  # all runs and their trades, or none of them
        ids = svc.store_runs(store, docs, config, kind_stored)
    stitched = svc.out_of_sample(docs, capital) if kind_stored == "walk_forward" else None
    if chart is not None:
        from liqcli.core.money import quote_of
        from liqcli.render.backtest_chart import draw_equity

        splits: list[int] = []
        if stitched is not None:
            ts, equity = svc.chained_equity(docs, capital)
            splits = [int(d["_equity"][0][0]) for d in docs[1:] if d["_equity"][0].size]
            closes = bars["close"].to_numpy()[bars["ts"].to_numpy() >= ts[0]]  # tested range
            title = (f"{docs[0]['strategy']} {symbol} {interval} walk-forward, {len(docs)} folds "
                     f"out of sample  leverage {leverage:g}x")  # fmt: skip
        else:
            ts, equity = docs[0]["_equity"]
            closes = bars["close"].to_numpy()
            title = (f"{docs[0]['strategy']} {symbol} {interval} "
                     f"{_params_text(docs[0]['params'])}  leverage {leverage:g}x")  # fmt: skip
        draw_equity(chart, ts, equity, closes, title=title, capital=capital,
                    unit=quote_of(symbol), splits=splits)  # fmt: skip
    for doc, rid in zip(docs, ids, strict=True):
        doc.pop("_equity", None)
        doc["run_id"] = rid
    _print(docs, fmt, single=kind_stored == "run", quiet=quiet, out_of_sample=stitched)


def _order_flow(
    ctx, strategy, symbol, data, start, end, param, capital, leverage, dynamic, compare_leverage,
    fees, slippage_bps, funding, exchange, chart, fmt, quiet,
) -> None:  # fmt: skip
    from typer._click.core import ParameterSource

    from liqcli.services import backtest as bt
    from liqcli.services import backtest_flow as svc
    from liqcli.trading.costs import parse_fees

    modes = svc.parse_modes(strategy)
    dynamic = svc.parse_dynamic(dynamic)
    params = bt.parse_params(param or [])
    svc.check_params(params)
    slippage = svc.DEFAULT_SLIPPAGE_BPS if slippage_bps is None else slippage_bps
    bt.validate_common(capital, leverage, slippage)
    fee_rates = parse_fees(fees)
    now = now_ms()
    explicit = {
        name: ctx.get_parameter_source(name)
        not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
        for name in ("start", "end")
    }
    store = state(ctx).store()
    if data.startswith("session:"):
        # The session's own range; --start/--end given explicitly narrow it.
        from liqcli.services.paper import session_range

        start_ms, end_ms = session_range(store, data.split(":", 1)[1])
        if explicit["start"]:
            start_ms = max(start_ms, parse_time(start, now=now))
        if explicit["end"] and end:
            end_ms = min(end_ms, parse_time(end, now=now))
    else:
        start_ms = parse_time(start, now=now)
        end_ms = parse_time(end, now=now) if end else now
    if start_ms >= end_ms:
        raise UsageError(f"--start ({iso_ms(start_ms)}) must be before --end ({iso_ms(end_ms)})")
    settings = svc.FlowSettings(
        symbol=symbol,
        modes=modes,
        start_ms=start_ms,
        end_ms=end_ms,
        data=data,
        exchange=exchange,
        capital=capital,
        leverage=leverage,
        fees=fee_rates,
        slippage_bps=slippage,
        funding=funding,
        params=tuple(sorted(params.items())),
    )
    dynamics = svc.DYNAMIC if compare_leverage else (dynamic,)
    # a day of trades takes seconds: events fed on stderr; a signal stores nothing
    tape = data == "trades"  # a session replay's length is not known before it is read
    progress = _SweepProgress("backtest events", "events fed") if tape and not quiet else None
    try:
        with _stopped_by_signals():
            try:
                docs = svc.run_flow(store, settings, dynamics, progress=progress, warn=not quiet)
            except KeyboardInterrupt:
                import signal

                raise _Stopped(signal.SIGINT) from None
    finally:
        if progress is not None:
            progress.close()
    stored = {
        "capital": capital,
        "fees": [fee_rates.maker, fee_rates.taker],
        "slippage_bps": slippage,
        "funding": funding,
        "data": data,
    }
    kind = "compare_leverage" if compare_leverage else "run"
    with _deferred_signals():  # all runs and their trades, or none of them
        ids = bt.write_runs(store, docs, stored, exchange, data, kind)
    if chart is not None:
        from liqcli.core.money import quote_of
        from liqcli.render.backtest_chart import draw_equity

        ts, equity, prices = docs[0]["_equity"]
        draw_equity(
            chart,
            ts,
            equity,
            prices,
            title=f"mode {docs[0]['strategy']} {symbol} {data} leverage "
            + (f"{docs[0]['params']['leverage']:g}x fixed" if dynamic == "off" else dynamic),
            capital=capital,
            unit=quote_of(symbol),
        )
    for doc, rid in zip(docs, ids, strict=True):
        doc.pop("_equity", None)
        doc["run_id"] = rid
    if compare_leverage:
        rows = svc.compare(docs)
        if fmt == Format.json:
            render([], "json", document={"runs": docs, "comparison": rows}, rows_key=None)
            return
        if fmt == Format.csv:
            render(rows, "csv")
            return
        typer.echo(
            f"{symbol} {data}  {docs[0]['start']} -> {docs[0]['end']}  "
            f"({docs[0]['bars']:,} events): fixed vs dynamic leverage"
        )
        render(_leverage_table(docs, rows), "table")
        typer.echo("\nAgainst fixed (the seed's criteria: Sharpe +10 %, max drawdown -20 %):")
        render(_criteria_table(rows), "table")
        typer.echo(
            "\nLeverage per trade, used and optimal (stop-loss / max adverse excursion;"
            " losers 1; 1-20):"
        )
        render(_optimal_table(docs), "table")
        return
    _print(docs, fmt, single=len(docs) == 1, quiet=quiet)


class _SweepProgress:
    """Sweep progress on stderr: a transient bar on a terminal, else a line per tenth done.
    Counts runs (a sweep) or, ``_SweepProgress("backtest events", "events fed")``, the events
    an order-flow backtest has fed (``advance``)."""

    def __init__(self, label: str = "backtest runs", unit: str = "runs done") -> None:
        import time

        from liqcli.cli.common import stderr_is_tty

        self._clock = time.monotonic
        self._t0 = self._clock()
        self.total = self.done = 0
        self._shown = -1
        self._unit = unit
        self._label = label
        self._bar = None
        if stderr_is_tty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=Console(stderr=True), transient=True,
            )  # fmt: skip
            self._task = self._bar.add_task(label, total=0)
            self._bar.start()

    def stage(self, text: str, *, lasting: bool = True) -> None:
        """The step under way before any event is fed: the bar's label, else a line (when
        ``lasting``: a step that may still end in a one-line error is not logged)."""
        if self._bar is not None:
            self._bar.update(self._task, description=text)
            return
        if lasting:
            typer.echo(f"liq: backtest: {text} ({self._clock() - self._t0:.1f} s)", err=True)

    def planned(self, runs: int) -> None:
        self.total += runs
        if self._bar is not None:
            self._bar.update(self._task, total=self.total, description=self._label)

    def run_done(self) -> None:
        self.advance(1)

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
            return
        tenth = self.done * 10 // max(self.total, 1)
        if tenth > self._shown:
            self._shown = tenth
            typer.echo(
                f"liq: backtest: {self.done:,}/{self.total:,} {self._unit} "
                f"({self._clock() - self._t0:.1f} s)",
                err=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """SIGTERM / SIGHUP during the runs end the command like Ctrl-C: workers stopped, nothing
    stored, exit 143 / 129 (README "Exit codes")."""
    import logging
    import signal

    def stop(signum: int, _frame: object) -> None:
        raise _Stopped(signum)

    previous = {}
    try:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, stop)
    except ValueError:  # not the main thread: the default action
        pass
    try:
        yield
    except _Stopped as exc:
        name = signal.Signals(exc.signum).name
        logging.getLogger("liq.backtest").warning("received %s: stopped, no run stored", name)
        raise typer.Exit(128 + exc.signum) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _exit_now(code: int) -> None:
    """End the process after a signal stopped a local sweep, skipping the interpreter's exit
    hooks (see services.backtest.close_executor)."""
    import logging
    import os
    import sys

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


@contextmanager
def _deferred_signals() -> Iterator[None]:
    """SIGTERM / SIGHUP while the results are written wait until both datasets are."""
    import signal

    got: list[int] = []
    previous = {}
    try:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, lambda n, _f: got.append(n))
    except ValueError:
        pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if got:
        raise typer.Exit(128 + got[0])


def _leverage_table(docs: list[dict], comparison: list[dict]) -> list[dict]:
    """The runs side by side, with the Sharpe the comparison uses (daily, or sharpe_1m when a
    run is too short for daily returns)."""
    used = {(r["mode"], r["engine"]): r["sharpe_used"] for r in comparison}
    rows = []
    for doc in docs:
        m, engine = doc["metrics"], doc["params"]["dynamic_leverage"]
        key = used.get((doc["strategy"], engine))
        if key is None:  # fixed: what its mode's dynamic runs were compared on
            key = next((k for (mode, _), k in used.items() if mode == doc["strategy"]), "sharpe")
        rows.append(
            {
                "mode": doc["strategy"],
                "engine": engine,
                "total_return": _fmt(m["total_return"], "total_return"),
                "sharpe": _fmt(m[key]) if key == "sharpe" else f"{_fmt(m[key])} (1m)",
                "max_drawdown": _fmt(m["max_drawdown"], "max_drawdown"),
                "trades": m["trades"],
                "final_equity": _fmt(m["final_equity"]),
            }
        )
    return rows


def _criteria_table(comparison: list[dict]) -> list[dict]:
    def change(value: float | None, ok: bool) -> str:
        return "n/a" if value is None else f"{value * 100:+,.2f} % {'ok' if ok else 'no'}"

    return [
        {
            "mode": r["mode"],
            "engine": r["engine"],
            "sharpe_change": change(r["sharpe_change"], r["sharpe_ok"]),
            "max_drawdown_change": change(r["max_drawdown_change"], r["drawdown_ok"]),
            "meets_criteria": "yes" if r["meets_criteria"] else "no",
        }
        for r in comparison
    ]


def _optimal_table(docs: list[dict]) -> list[dict]:
    return [
        {
            "mode": doc["strategy"],
            "engine": doc["params"]["dynamic_leverage"],
            "mean_used": _fmt(doc["optimal_leverage"]["mean_used"]),
            "mean_optimal": _fmt(doc["optimal_leverage"]["mean_optimal"]),
            "median_optimal": _fmt(doc["optimal_leverage"]["median_optimal"]),
        }
        for doc in docs
    ]


def _params_text(params: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def _print(
    docs: list[dict], fmt: Format, *, single: bool, quiet: bool, out_of_sample: dict | None = None
) -> None:
    if fmt in (Format.json, Format.csv):  # the trades as printed rows (a table shows none)
        from liqcli.services.backtest import trade_rows

        for doc in docs:
            doc["trades"] = trade_rows(doc["trades"])
    if fmt == Format.json:
        document = docs[0] if single else {"runs": docs}
        if out_of_sample is not None:
            document["out_of_sample"] = out_of_sample
        render([], "json", document=document, rows_key=None)
        return
    if single:
        doc = docs[0]
        if fmt == Format.csv:
            render(doc["trades"], "csv")
            return
        m = doc["metrics"]
        typer.echo(
            f"{doc['strategy']} {doc['symbol']} {_params_text(doc['params'])}  "
            f"{doc['start']} -> {doc['end']}  ({doc['bars']:,} "
            f"{'events' if 'data' in doc else 'bars'}, run {doc['run_id']})"
        )
        rows = [{"metric": k, "value": _fmt(v, k)} for k, v in m.items()]
        render(rows, "table")
        return
    shared = _shared_params(docs) if fmt == Format.table else {}
    if shared:  # one line, not a column repeating the same value on every row
        chosen = "chosen in every fold" if "fold" in docs[0] else "in every run"
        typer.echo(f"{chosen}: {_params_text(shared)}")
    rows = []
    for doc in docs:
        m = doc["metrics"]
        params = {k: v for k, v in doc["params"].items() if k not in shared}
        row = {"fold": doc.get("fold"), **params} if "fold" in doc else params
        flow = "data" in doc  # order-flow modes side by side
        if flow:
            row = {"mode": doc["strategy"], **row}
        row["total_return"] = m["total_return"]
        # a day or two of events has too few daily returns for the daily Sharpe
        row["sharpe_1m" if flow else "sharpe"] = m["sharpe_1m" if flow else "sharpe"]
        row.update(max_drawdown=m["max_drawdown"], trades=m["trades"],
                   final_equity=m["final_equity"])  # fmt: skip
        if "fold" in doc:
            row["test_start"] = doc["start"]
        if fmt == Format.table:
            row = {k: _fmt(v, k) for k, v in row.items()}
        rows.append(row)
    render(rows, fmt.value)
    if out_of_sample is not None and fmt == Format.table:
        o = out_of_sample
        typer.echo(
            f"out of sample, the {o['folds']} folds chained ({o['start']} -> {o['end']}): "
            + ", ".join(
                f"{k} {_fmt(o[k], k)}"
                for k in (
                    "total_return",
                    "cagr",
                    "sharpe",
                    "max_drawdown",
                    "trades",
                    "final_equity",
                )
            )
        )


def _shared_params(docs: list[dict]) -> dict:
    """Parameters with one value in every run (of two or more)."""
    if len(docs) < 2:
        return {}
    missing = object()
    return {
        k: v
        for k, v in docs[0]["params"].items()
        if all(d["params"].get(k, missing) == v for d in docs[1:])
    }


# Metrics that are fractions: a table shows them as percentages (json and csv keep fractions).
PERCENT = frozenset(
    ("total_return", "cagr", "volatility", "max_drawdown", "win_rate", "exposure",
     "buy_and_hold_return")
)  # fmt: skip


def _fmt(value, key: str | None = None):
    if key in PERCENT and isinstance(value, float):
        return f"{value * 100:,.2f} %"
    if isinstance(value, float):
        return f"{value:,.6g}" if abs(value) < 1000 else f"{value:,.2f}"
    return "n/a" if value is None else value  # undefined: too few returns, no losing trade


def register(app: typer.Typer) -> None:
    app.command("backtest", help=HELP, epilog=EPILOG)(backtest)
