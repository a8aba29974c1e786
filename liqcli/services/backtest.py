"""``liq backtest``: the trading core over stored history (klines, funding), single runs, grids
and walk-forward, on any ``concurrent.futures.Executor`` (local processes or a Dask cluster).

A job is a plain dict (picklable, executor-agnostic) holding the bars and funding as Arrow IPC
bytes, the strategy spec and the settings; ``run_job`` runs it anywhere and returns the result
document (CONTRACT.md "Backtest result"). Results go to the ``backtest_runs`` and
``backtest_trades`` datasets.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import itertools
import json
import logging
import math
import sys
from collections.abc import Sequence
from concurrent.futures import Executor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl

from liqcli import __version__
from liqcli.analytics import metrics
from liqcli.core.schemas import TS, DatasetSpec, register
from liqcli.core.timeutil import KLINE_PERIODS, iso_ms, now_ms
from liqcli.errors import LiqError, UsageError
from liqcli.trading.bars import BarSettings, run_loop, run_vectorised
from liqcli.trading.costs import Fees

log = logging.getLogger("liq.backtest")

BACKTEST_RUNS = register(
    DatasetSpec(
        "backtest_runs",
        {
            "strategy": pl.String(),
            "symbol": pl.String(),
            "run_id": pl.String(),
            "ts": TS,
            "exchange": pl.String(),
            "interval": pl.String(),
            "params": pl.String(),  # JSON
            "settings": pl.String(),  # JSON: capital, leverage, fees, slippage, funding
            "start": TS,
            "end": TS,
            "bars": pl.Int64(),
            "kind": pl.String(),  # run | grid | walk_forward
            "metrics": pl.String(),  # JSON, every metric
            "final_equity": pl.Float64(),
            "total_return": pl.Float64(),
            "sharpe": pl.Float64(),
            "max_drawdown": pl.Float64(),
            "trades": pl.Int64(),
            "version": pl.String(),
        },
        key=("strategy", "symbol", "run_id"),
        partition_by=("strategy", "symbol"),
    )
)
BACKTEST_TRADES = register(
    DatasetSpec(
        "backtest_trades",
        {
            "strategy": pl.String(),
            "symbol": pl.String(),
            "run_id": pl.String(),
            "trade_id": pl.Int64(),
            "ts": TS,  # entry time
            "exit_ts": TS,
            "side": pl.String(),
            "entry_price": pl.Float64(),
            "exit_price": pl.Float64(),
            "qty": pl.Float64(),
            "leverage": pl.Float64(),
            "pnl": pl.Float64(),
            "fees": pl.Float64(),
            "funding": pl.Float64(),
            "liquidated": pl.Boolean(),
            "exit_reason": pl.String(),  # order-flow modes: stop_loss, take_profit, ...
            "optimal_leverage": pl.Float64(),  # order-flow modes: signal.optimal_leverage
        },
        key=("strategy", "symbol", "run_id", "trade_id"),
        partition_by=("strategy", "symbol"),
        optional=("exit_reason", "optimal_leverage"),
    )
)

BUILTIN = ("sma_cross",)
ORDER_FLOW = ("0", "1", "2", "3", "cascade")


@dataclass(frozen=True)
class StrategySpec:
    """A built-in name, or ``path/to/file.py:ClassName``; parameters by name."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name if ":" not in self.name else self.name.rsplit(":", 1)[1]


@dataclass(frozen=True)
class BacktestConfig:
    strategy: StrategySpec
    symbol: str
    start_ms: int
    end_ms: int
    interval: str = "1m"
    exchange: str = "binance"
    capital: float = 10_000.0
    leverage: float = 1.0
    fees: Fees = field(default_factory=lambda: Fees(0.0002, 0.0005))
    slippage_bps: float = 0.0
    funding: bool = True

    def validate(self) -> None:
        validate_common(self.capital, self.leverage, self.slippage_bps)
        if all(m in ORDER_FLOW or m == "all" for m in self.strategy.name.split(",")):
            raise UsageError(
                f"strategy {self.strategy.name!r} trades order flow (book, trades): give "
                "--data trades or --data session:NAME; bar strategies: sma_cross or "
                "--strategy FILE.py:Class"
            )
        if self.start_ms >= self.end_ms:
            raise UsageError(
                f"--start ({iso_ms(self.start_ms)}) must be before --end ({iso_ms(self.end_ms)})"
            )
        if self.interval not in KLINE_PERIODS:
            raise UsageError(
                f"invalid --data bars:{self.interval}: stored kline intervals are "
                f"{' '.join(KLINE_PERIODS)}"
            )
        load_strategy(self.strategy)  # unknown names, bad files and bad parameters fail here

    def settings(self) -> BarSettings:
        return BarSettings(
            capital=self.capital,
            leverage=self.leverage,
            fees=self.fees,
            slippage_bps=self.slippage_bps,
            symbol=self.symbol,
            exchange=self.exchange,
        )


def validate_common(capital: float, leverage: float | None, slippage_bps: float) -> None:
    if not (0 < capital < float("inf")):
        raise UsageError(f"--capital must be a positive number, got {capital:g}")
    if leverage is not None and not (1 <= leverage <= 125):
        raise UsageError(f"--leverage must be between 1 and 125, got {leverage:g}")
    if not (0 <= slippage_bps < 1000):
        raise UsageError(f"--slippage-bps must be between 0 and 1000, got {slippage_bps:g}")


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """``["fast=10", "slow=30"]`` -> {"fast": 10, "slow": 30} (ints, floats, true/false, text)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"invalid --param {pair!r}: expected NAME=VALUE, e.g. fast=10")
        out[key.strip()] = _value(value.strip())
    return out


def parse_grid(pairs: Sequence[str]) -> dict[str, list[Any]]:
    """``["fast=10,20", "slow=50,100"]`` -> every value list by name."""
    out: dict[str, list[Any]] = {}
    for pair in pairs:
        key, sep, values = pair.partition("=")
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not items:
            raise UsageError(f"invalid --grid {pair!r}: expected NAME=V1,V2,..., e.g. fast=10,20")
        out[key.strip()] = [_value(v) for v in items]
    return out


def _value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def load_strategy(spec: StrategySpec) -> Any:
    if spec.name == "sma_cross":
        from liqcli.trading.strategies.sma_cross import SmaCross

        unknown = set(spec.params) - {"fast", "slow"}
        if unknown:
            raise UsageError(f"sma_cross has no parameter {sorted(unknown)[0]!r}: fast, slow")
        return SmaCross(**spec.params)
    if ":" not in spec.name and spec.name.endswith(".py"):
        raise UsageError(f"--strategy {spec.name}: name the class too: {spec.name}:ClassName")
    if ":" not in spec.name:
        raise UsageError(
            f"unknown strategy {spec.name!r}: built-in {', '.join(BUILTIN)}, "
            "or --strategy path/to/file.py:ClassName"
        )
    path_text, _, class_name = spec.name.rpartition(":")
    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"--strategy {spec.name}: no file {path}")
    module_name = "liq_user_strategy_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
    module = sys.modules.get(module_name)
    if module is None:
        loader = importlib.util.spec_from_file_location(module_name, path)
        if loader is None or loader.loader is None:
            raise UsageError(f"--strategy {spec.name}: cannot load {path}")
        module = importlib.util.module_from_spec(loader)
        try:
            loader.loader.exec_module(module)
        except Exception as exc:  # the user's code: say where, not a traceback
            raise UsageError(f"--strategy {spec.name}: {path} failed to import: {exc}") from None
        sys.modules[module_name] = module
    cls = getattr(module, class_name, None)
    if cls is None:
        raise UsageError(f"--strategy {spec.name}: {path} has no class {class_name!r}")
    if not isinstance(cls, type):
        raise UsageError(f"--strategy {spec.name}: {class_name} in {path} is not a class")
    try:
        strategy = cls(**spec.params)
    except LiqError:
        raise
    except Exception as exc:  # TypeError for unknown names, ValueError from its own checks, ...
        raise UsageError(f"--strategy {spec.name}: bad parameters: {_line(exc)}") from None
    if not (
        callable(getattr(strategy, "target", None)) or callable(getattr(strategy, "on_event", None))
    ):
        raise UsageError(
            f"--strategy {spec.name}: {class_name} implements neither target() (a vectorised "
            "bar strategy) nor on_event() (the Strategy protocol)"
        )
    _fill_hooks(spec, strategy)
    if callable(getattr(strategy, "target", None)):
        _dry_run(spec, strategy)
    return strategy


# The Strategy protocol's callbacks a user class may leave out ("implement the ones you need"),
# and a vectorised strategy's optional indicators().
_HOOKS = ("on_start", "on_fill", "on_timer", "on_stop")


def _fill_hooks(spec: StrategySpec, strategy: Any) -> None:
    if hasattr(strategy, "target"):
        missing = [] if hasattr(strategy, "indicators") else ["indicators"]
    else:
        missing = [h for h in _HOOKS if not hasattr(strategy, h)]
    try:
        for name in missing:
            setattr(strategy, name, dict if name == "indicators" else _noop)
    except AttributeError:  # __slots__: say what to add
        raise UsageError(
            f"--strategy {spec.name}: add the missing method(s) {', '.join(missing)}"
        ) from None


def _noop(*_: Any) -> None:
    return None


def _dry_run(spec: StrategySpec, strategy: Any) -> None:
    """Build a vectorised strategy's expressions on an empty bar frame: a bad column name or a
    bad parameter type is a usage error before any data is read."""
    from liqcli.trading.bars import prepare

    empty = pl.DataFrame(
        schema={
            "ts": pl.Int64,
            **dict.fromkeys(("open", "high", "low", "close", "volume"), pl.Float64),
        }
    )
    try:
        prepare(empty, strategy)
    except Exception as exc:
        raise UsageError(
            f"--strategy {spec.name}: its expressions fail on the bar columns (ts, open, high, "
            f"low, close, volume): {_line(exc)}"
        ) from None


def _line(exc: BaseException) -> str:
    """The first line of an exception from the user's code (Polars errors span many)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# ------------------------------------------------------------------------------ data


def load_bars(store: Any, config: BacktestConfig) -> pl.DataFrame:
    frame = (
        store.scan(
            "klines",
            start=config.start_ms,
            end=config.end_ms,
            exchange=config.exchange,
            symbol=config.symbol,
            interval=config.interval,
        )
        .select(pl.col("ts").dt.epoch("ms").alias("ts"), "open", "high", "low", "close", "volume")
        .drop_nulls(["open", "high", "low", "close"])
        .collect()
    )
    if not frame["ts"].is_sorted():  # stored files are read in order: usually sorted already
        frame = frame.sort("ts")
    if frame.height == 0:
        raise LiqError(
            f"no {config.interval} klines stored for {config.symbol} between "
            f"{iso_ms(config.start_ms)} and {iso_ms(config.end_ms)}: "
            + how_to_get(
                config.exchange,
                config.symbol,
                "klines",
                f"liq fetch {config.symbol} --dataset klines --period {config.interval} "
                f"{fetch_range(config.start_ms, config.end_ms)}",
            )
        )
    return frame


DAY_MS = 86_400_000
FUNDING_GAP_MS = 9 * 3_600_000  # Binance settles every 8 h (some symbols 4 h or 1 h)


def fetch_range(start_ms: int, end_ms: int) -> str:
    """``--start DAY --end DAY`` for ``liq fetch`` covering [start, end): whole UTC days, the
    end exclusive (rounded up); no ``--end`` when the range reaches now (fetch's default)."""
    text = f"--start {iso_ms(start_ms // DAY_MS * DAY_MS)[:10]}"
    if end_ms < now_ms() - 60_000:
        text += f" --end {iso_ms(-(-end_ms // DAY_MS) * DAY_MS)[:10]}"
    return text


def how_to_get(exchange: str, symbol: str, dataset: str, command: str) -> str:
    """The end of a missing-data message: ``command`` (a ``liq fetch``) for Binance, the only
    venue liq fetch and liq paper --record read; for another venue, what liq can store of it
    (the venue registry's capabilities), so the user is not sent to fetch Binance's data."""
    if exchange.strip().lower() == "binance":
        return f"get them with `{command}`"
    from liqcli.exchanges import registry

    try:
        venue = registry.get(exchange)
    except UsageError:
        return f"liq knows no exchange {exchange!r}: use --exchange binance"
    stored = (
        f"only liquidations (`liq watch {symbol} -e {venue.name}`)"
        if registry.LIQUIDATIONS in venue.offers
        else "no market data"
    )
    return (
        f"liq fetch stores Binance's {dataset} only; from {venue.name} liq stores {stored}: "
        "use --exchange binance"
    )


def load_funding(
    store: Any, config: BacktestConfig, *, bars: pl.DataFrame | None = None, warn: bool = True
) -> pl.DataFrame | None:
    """The stored funding rows of the range; with ``warn``, a warning naming the ``liq fetch``
    command when none (or not all of the bars' span) is stored: that part is charged nothing."""
    if not config.funding:
        return None
    frame = (
        store.scan(
            "funding",
            start=config.start_ms,
            end=config.end_ms + 1,
            exchange=config.exchange,
            symbol=config.symbol,
        )
        .select(pl.col("ts").dt.epoch("ms").alias("ts"), "funding_rate", "mark_price")
        .sort("ts")
        .collect()
    )
    if warn and bars is not None and bars.height:
        first, last = int(bars["ts"][0]), int(bars["ts"][-1])
        command = f"liq fetch {config.symbol} --dataset funding {fetch_range(first, last + 1)}"
        fetch = (
            f"`{command}`"
            if config.exchange == "binance"
            else how_to_get(config.exchange, config.symbol, "funding", command)
        )
        if frame.height == 0:
            log.warning(
                "no funding stored for %s in the range: none is charged (%s, or --funding off)",
                config.symbol,
                fetch,
            )
        elif (
            int(frame["ts"][0]) - first > FUNDING_GAP_MS
            or last - int(frame["ts"][-1]) > FUNDING_GAP_MS
        ):
            log.warning(
                "funding stored for %s only from %s to %s: none is charged outside (%s)",
                config.symbol,
                iso_ms(int(frame["ts"][0])),
                iso_ms(int(frame["ts"][-1])),
                fetch,
            )
    return frame


def _ipc(frame: pl.DataFrame | None) -> bytes | None:
    if frame is None:
        return None
    buf = io.BytesIO()
    frame.write_ipc(buf)
    return buf.getvalue()


def _from_ipc(data: bytes | None) -> pl.DataFrame | None:
    return None if data is None else pl.read_ipc(io.BytesIO(data))


# ------------------------------------------------------------------------------ running


def make_job(
    config: BacktestConfig, bars: pl.DataFrame, funding: pl.DataFrame | None, **extra: Any
) -> dict:
    return {"config": config, "bars": _ipc(bars), "funding": _ipc(funding), **extra}


def run_job(job: dict) -> dict:
    """Run one backtest; returns the result document. Top-level and picklable: any executor."""
    config: BacktestConfig = job["config"]
    bars = _from_ipc(job["bars"])
    funding = _from_ipc(job["funding"])
    assert bars is not None
    if "slice" in job:
        lo, hi = job["slice"]
        bars = bars.filter((pl.col("ts") >= lo) & (pl.col("ts") < hi))
    return run_frame(config, bars, funding)


def run_frame(config: BacktestConfig, bars: pl.DataFrame, funding: pl.DataFrame | None) -> dict:
    strategy = load_strategy(config.strategy)
    settings = config.settings()
    driver = run_vectorised if hasattr(strategy, "target") else run_loop
    if ":" in config.strategy.name:  # the user's code: a failure is one line, not a traceback
        try:
            result = driver(bars, strategy, settings, funding=funding)
        except Exception as exc:
            raise LiqError(f"--strategy {config.strategy.name} failed: {_line(exc)}") from None
    else:
        result = driver(bars, strategy, settings, funding=funding)
    m = metrics.compute(
        ts=result.ts,
        equity=result.equity,
        capital=config.capital,
        trades=result.trades,
        fees=result.fees,
        funding=result.funding,
        liquidations=result.liquidations,
        exposure=result.exposure,
        first_open=float(bars["open"][0]) if bars.height else None,
        last_close=float(bars["close"][-1]) if bars.height else None,
    )
    params = dict(getattr(strategy, "defaults", {}) or {})
    params.update(config.strategy.params)
    return {
        "strategy": config.strategy.label,
        "symbol": config.symbol,
        "params": params,
        "start": iso_ms(int(bars["ts"][0])) if bars.height else None,
        "end": iso_ms(int(bars["ts"][-1])) if bars.height else None,
        "bars": result.bars,
        "metrics": m,
        "trades": trade_frame(result.trades),  # rows with ISO times only when printed
        "_equity": (result.ts, result.equity),  # for the chart; dropped before output
    }


# A bar run's trades: one column each, times as ms epoch; ``trade_rows`` turns them into the
# printed rows (ISO times) only for json/csv output, and ``write_runs`` stores the columns as
# they are: 10k+ trades in a year of minutes are never formatted and parsed back.
BAR_TRADE_SCHEMA = {
    "side": pl.String(),
    "entry_ts": pl.Int64(),
    "entry_price": pl.Float64(),
    "exit_ts": pl.Int64(),
    "exit_price": pl.Float64(),
    "qty": pl.Float64(),
    "leverage": pl.Float64(),
    "pnl": pl.Float64(),
    "fees": pl.Float64(),
    "funding": pl.Float64(),
    "liquidated": pl.Boolean(),
}


def trade_frame(trades: Sequence[Any]) -> pl.DataFrame:
    """``RoundTrip``s as columns (``BAR_TRADE_SCHEMA``)."""
    return pl.DataFrame(
        {name: [getattr(t, name) for t in trades] for name in BAR_TRADE_SCHEMA},
        schema=BAR_TRADE_SCHEMA,
    )


def trade_rows(trades: pl.DataFrame | list[dict]) -> list[dict]:
    """The printed trade rows: a bar run's columns with ISO times (``iso_ms``'s format); the
    order-flow runs' rows (already printable) as they are."""
    if not isinstance(trades, pl.DataFrame):
        return trades
    iso = "%Y-%m-%dT%H:%M:%S%.3fZ"
    return trades.with_columns(
        pl.col(c).cast(pl.Datetime("ms", "UTC")).dt.strftime(iso) for c in ("entry_ts", "exit_ts")
    ).to_dicts()


def check_sweep(
    config: BacktestConfig, grid: dict[str, list[Any]], folds: int | None, executor: str
) -> None:
    """Every usage error of a sweep, before any data is read: each grid combination must make a
    strategy, K >= 1, and the executor must be ``local`` or ``dask://HOST:PORT``."""
    if folds is not None:
        if not grid:
            raise UsageError("--walk-forward chooses among --grid values: give at least one --grid")
        if folds < 1:
            raise UsageError(f"--walk-forward needs K >= 1 folds, got {folds}")
    for spec in grid_specs(config.strategy, grid):
        load_strategy(spec)
    if executor != "local":
        scheme, sep, address = executor.partition("://")
        host, _, port = address.rpartition(":")
        if scheme not in ("dask", "tcp") or not sep or not host or not port.isdigit():
            raise UsageError(f"invalid --executor {executor!r}: local or dask://HOST:PORT")


def grid_specs(base: StrategySpec, grid: dict[str, list[Any]]) -> list[StrategySpec]:
    if not grid:
        return [base]
    names = list(grid)
    out = []
    for combo in itertools.product(*(grid[n] for n in names)):
        out.append(replace(base, params={**base.params, **dict(zip(names, combo, strict=True))}))
    return out


def run_grid(
    config: BacktestConfig,
    bars: pl.DataFrame,
    funding: pl.DataFrame | None,
    grid: dict[str, list[Any]],
    executor: Executor | None,
    *,
    progress: SweepProgress | None = None,
) -> list[dict]:
    specs = grid_specs(config.strategy, grid)
    for spec in specs:
        load_strategy(spec)  # bad combinations are usage errors before anything runs
    jobs = [make_job(replace(config, strategy=s), bars, funding) for s in specs]
    return _map(executor, jobs, progress)


def walk_forward(
    config: BacktestConfig,
    bars: pl.DataFrame,
    funding: pl.DataFrame | None,
    grid: dict[str, list[Any]],
    folds: int,
    executor: Executor | None,
    *,
    objective: str = "sharpe",
    progress: SweepProgress | None = None,
) -> list[dict]:
    """Split the bars into ``folds + 1`` equal time windows; for each fold pick the grid's best
    parameters (by ``objective`` on window k) and evaluate them on window k + 1. Only the
    out-of-sample runs are returned (each names the parameters chosen and the window trained on)."""
    edges = window_edges(bars, folds)
    specs = grid_specs(config.strategy, grid)
    train_jobs = []
    for k in range(folds):
        for spec in specs:
            train_jobs.append(
                make_job(
                    replace(config, strategy=spec), bars, funding, slice=(edges[k], edges[k + 1])
                )
            )
    if progress is not None:
        progress.planned(len(train_jobs) + folds)  # the test runs follow the training runs
    trained = _map(executor, train_jobs, progress, planned=True)
    best: list[StrategySpec] = []
    used: list[str] = []
    for k in range(folds):
        runs = trained[k * len(specs) : (k + 1) * len(specs)]
        key = objective
        scores = [_score(r["metrics"], key) for r in runs]
        if all(x == float("-inf") for x in scores):
            # a window too short for the objective (daily Sharpe needs 2+ days): rank by return
            # rather than take the first combination
            key = "total_return"
            scores = [_score(r["metrics"], key) for r in runs]
        used.append(key)
        best.append(specs[max(range(len(runs)), key=lambda i: scores[i])])
    test_jobs = [
        make_job(
            replace(config, strategy=best[k]), bars, funding, slice=(edges[k + 1], edges[k + 2])
        )
        for k in range(folds)
    ]
    tested = _map(executor, test_jobs, progress, planned=True)
    for k, run in enumerate(tested):
        run["fold"] = k + 1
        run["trained_on"] = {"start": iso_ms(edges[k]), "end": iso_ms(edges[k + 1] - 1)}
        run["objective"] = used[k]
    return tested


# The metrics of a walk-forward's stitched out-of-sample run (the trade-based ones stay per fold).
OUT_OF_SAMPLE_METRICS = ("final_equity", "total_return", "cagr", "volatility", "sharpe",
                         "sortino", "max_drawdown", "max_drawdown_duration_days", "calmar")  # fmt: skip


def chained_equity(folds: list[dict], capital: float) -> tuple[np.ndarray, np.ndarray]:
    """The folds' equity curves as one account's: each fold's scaled by the growth before it."""
    scale, ts_parts, eq_parts = 1.0, [], []
    for doc in folds:
        ts, equity = doc["_equity"]
        ts_parts.append(ts)
        eq_parts.append(equity * scale)
        if equity.size:
            scale *= float(equity[-1]) / capital
    return np.concatenate(ts_parts), np.concatenate(eq_parts)


def out_of_sample(folds: list[dict], capital: float) -> dict:
    """A walk-forward's out-of-sample runs chained into one account: each fold starts with the
    previous one's final equity (its equity curve scaled by the growth so far), and the metrics
    are those of the chained curve over the whole tested range; trades summed."""
    ts, equity = chained_equity(folds, capital)
    m = metrics.compute(
        ts=ts,
        equity=equity,
        capital=capital,
        trades=(),
        fees=0.0,
        funding=0.0,
        liquidations=0,
        exposure=0.0,
        first_open=None,
        last_close=None,
    )
    return {
        "start": folds[0]["start"],
        "end": folds[-1]["end"],
        "folds": len(folds),
        **{k: m[k] for k in OUT_OF_SAMPLE_METRICS},
        "trades": sum(d["metrics"]["trades"] for d in folds),
    }


def window_edges(bars: pl.DataFrame, folds: int) -> list[int]:
    """The ``folds + 1`` equal time windows of a walk-forward; a UsageError, before any run, when
    one holds no bar (more folds than bars, or a gap in the data): it would train or test on
    nothing."""
    if folds < 1:
        raise UsageError("--walk-forward needs K >= 1")
    ts = bars["ts"]
    first, span = int(ts[0]), int(ts[-1]) + 1 - int(ts[0])
    edges = [first + span * i // (folds + 1) for i in range(folds + 2)]
    counts = ts.search_sorted(pl.Series(edges), side="left").diff().drop_nulls().to_list()
    if 0 in counts:
        k = counts.index(0)
        raise UsageError(
            f"--walk-forward {folds}: window {k + 1} of {folds + 1} ({iso_ms(edges[k])} to "
            f"{iso_ms(edges[k + 1] - 1)}) holds no bar ({bars.height:,} bars in the range): "
            "give fewer folds or a longer range"
        )
    return edges


def _score(m: dict, objective: str) -> float:
    value = m.get(objective)
    return float(value) if isinstance(value, int | float) else float("-inf")


class SweepProgress(Protocol):
    """What a sweep reports as it goes (the CLI draws it on stderr)."""

    def planned(self, runs: int) -> None: ...
    def run_done(self) -> None: ...


def _map(
    executor: Executor | None,
    jobs: list[dict],
    progress: SweepProgress | None = None,
    *,
    planned: bool = False,
) -> list[dict]:
    """Every job's result in the jobs' order; ``progress`` hears of each as it completes."""
    if progress is not None and not planned:
        progress.planned(len(jobs))
    if executor is None or len(jobs) == 1:
        out = []
        for job in jobs:
            out.append(run_job(job))
            if progress is not None:
                progress.run_done()
        return out
    futures = [executor.submit(run_job, j) for j in jobs]
    for future in as_completed(futures):
        future.result()  # the first failure ends the sweep
        if progress is not None:
            progress.run_done()
    return [f.result() for f in futures]


def _worker_ignores_sigint() -> None:
    """Ctrl-C reaches the whole process group: the command, not each worker, handles it (it
    stops them), so no worker dies printing a KeyboardInterrupt traceback."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def close_executor(closer: Any, *, abort: bool = False, error: bool = False) -> bool:
    """Shut down what ``open_executor`` opened. ``error``: the runs not started are cancelled,
    the running ones finish. ``abort`` (a signal): the same, within ``ABORT_WAIT_S``, then
    the local workers are terminated.
    Returns True when the process must then end with ``os._exit``: the pool did not wind down
    in time, and the interpreter's own exit hook for process pools would wait for it."""
    if closer is None:
        return False
    from concurrent.futures import ProcessPoolExecutor  # imported only when a sweep ran

    if not isinstance(closer, ProcessPoolExecutor):
        closer.close()  # a Dask client: the scheduler drops the runs it no longer has a client for
        return False
    if not abort:
        closer.shutdown(wait=True, cancel_futures=error)
        return False
    # Cancel what has not started and let each worker finish its run (one run: bounded, and the
    # pool then winds down cleanly, its queues released); only past ABORT_WAIT_S are the workers
    # terminated, and should the pool then hang, the caller ends the process.
    import threading

    workers = list((getattr(closer, "_processes", None) or {}).values())
    done = threading.Thread(
        target=closer.shutdown, kwargs={"wait": True, "cancel_futures": True}, daemon=True
    )
    done.start()
    done.join(ABORT_WAIT_S)
    if not done.is_alive():
        return False
    for proc in workers:
        proc.terminate()
    for proc in workers:
        proc.join(2)
        if proc.is_alive():
            proc.kill()
    done.join(2)
    return done.is_alive()


ABORT_WAIT_S = 5.0


def open_executor(spec: str, jobs: int) -> tuple[Executor | None, Any]:
    """``local`` (processes, one per core) or ``dask://HOST:PORT``; returns (executor, closer)."""
    if spec == "local":
        if jobs <= 1:
            return None, None
        import os
        from concurrent.futures import ProcessPoolExecutor  # here: a single run never needs it

        from liqcli.services.quiet_spawn import QuietSpawnContext

        workers = min(jobs, os.cpu_count() or 1)
        executor = ProcessPoolExecutor(
            workers, mp_context=QuietSpawnContext(), initializer=_worker_ignores_sigint
        )
        return executor, executor
    if spec.startswith("dask://") or spec.startswith("tcp://"):
        try:
            from distributed import Client
        except ImportError:
            raise UsageError(
                f"--executor {spec}: needs Dask distributed: pip install 'liq[dist]'"
            ) from None
        address = "tcp://" + spec.split("://", 1)[1]
        try:
            client = Client(address, timeout=10)
        except (OSError, TimeoutError) as exc:
            raise LiqError(f"--executor {spec}: cannot reach the Dask scheduler: {exc}") from None
        return client.get_executor(), client
    raise UsageError(f"invalid --executor {spec!r}: local or dask://HOST:PORT")


# ------------------------------------------------------------------------------ storing


def run_id(doc: dict, settings: dict) -> str:
    key = json.dumps(
        [doc["strategy"], doc["symbol"], doc["params"], doc["start"], doc["end"], settings],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def store_runs(store: Any, docs: list[dict], config: BacktestConfig, kind: str) -> list[str]:
    settings = {
        "capital": config.capital,
        "leverage": config.leverage,
        "fees": [config.fees.maker, config.fees.taker],
        "slippage_bps": config.slippage_bps,
        "funding": config.funding,
        "interval": config.interval,
    }
    return write_runs(store, docs, settings, config.exchange, config.interval, kind)


TRADE_COLUMNS = ("side", "entry_price", "exit_price", "qty", "leverage", "pnl", "fees", "funding", "liquidated")  # fmt: skip
FLOW_TRADE_COLUMNS = ("exit_reason", "optimal_leverage")


def write_runs(
    store: Any, docs: list[dict], settings: dict, exchange: str, interval: str, kind: str
) -> list[str]:
    """Each result document to ``backtest_runs`` and its trades to ``backtest_trades``."""
    now = now_ms()
    runs, trades, ids, frames = [], [], [], []
    for doc in docs:
        rid = run_id(doc, settings)
        ids.append(rid)
        m = doc["metrics"]
        runs.append(
            {
                "strategy": doc["strategy"],
                "symbol": doc["symbol"],
                "run_id": rid,
                "ts": now,
                "exchange": exchange,
                "interval": interval,
                "params": json.dumps(doc["params"], sort_keys=True),
                "settings": json.dumps(settings, sort_keys=True),
                "start": _parse_iso(doc["start"]),
                "end": _parse_iso(doc["end"]),
                "bars": doc["bars"],
                "kind": kind,
                "metrics": json.dumps(_finite(m), default=str),
                "final_equity": m["final_equity"],
                "total_return": m["total_return"],
                "sharpe": m["sharpe"],
                "max_drawdown": m["max_drawdown"],
                "trades": m["trades"],
                "version": __version__,
            }
        )
        if isinstance(doc["trades"], pl.DataFrame):  # a bar run's columns: stored as they are
            frames.append(
                doc["trades"]
                .rename({"entry_ts": "ts"})
                .with_row_index("trade_id")
                .with_columns(
                    pl.col("trade_id").cast(pl.Int64),
                    strategy=pl.lit(doc["strategy"], pl.String),
                    symbol=pl.lit(doc["symbol"], pl.String),
                    run_id=pl.lit(rid, pl.String),
                )
            )
            continue
        for i, t in enumerate(doc["trades"]):
            trades.append(
                {
                    "strategy": doc["strategy"],
                    "symbol": doc["symbol"],
                    "run_id": rid,
                    "trade_id": i,
                    "ts": _parse_iso(t["entry_ts"]),
                    "exit_ts": _parse_iso(t["exit_ts"]),
                    **{k: t[k] for k in TRADE_COLUMNS},
                    **{k: t[k] for k in FLOW_TRADE_COLUMNS if k in t},
                }
            )
    store.write(
        "backtest_runs",
        pl.DataFrame(runs, infer_schema_length=None).with_columns(_times("ts", "start", "end")),
    )
    if trades:
        frames.append(pl.DataFrame(trades, infer_schema_length=None))
    frames = [f for f in frames if f.height]
    if frames:
        frame = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
        store.write("backtest_trades", frame.with_columns(_times("ts", "exit_ts")))
    return ids


def _finite(m: dict) -> dict:
    """Metrics as standard JSON, like the printed document: inf / nan (a profit factor without a
    losing trade) become null, not the non-standard ``Infinity``."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in m.items()}


def _parse_iso(text: str | None) -> int | None:
    from liqcli.core.timeutil import parse_time

    return parse_time(text) if text else None


def _times(*names: str) -> list[pl.Expr]:
    return [pl.col(n).cast(pl.Int64).cast(pl.Datetime("ms", "UTC")) for n in names]
