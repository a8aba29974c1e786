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
import sys
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl

from liqcli import __version__
from liqcli.analytics import metrics
from liqcli.core.schemas import TS, DatasetSpec, register
from liqcli.core.timeutil import iso_ms, now_ms
from liqcli.errors import LiqError, UsageError
from liqcli.trading.bars import BarSettings, run_loop, run_vectorised
from liqcli.trading.costs import Fees

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
        if self.strategy.name in ORDER_FLOW or self.strategy.name == "all":
            raise UsageError(
                f"strategy {self.strategy.name!r} trades order flow (book, trades): give "
                "--data trades or --data session:NAME; bar strategies: sma_cross or "
                "--strategy FILE.py:Class"
            )
        if self.start_ms >= self.end_ms:
            raise UsageError(
                f"--start ({iso_ms(self.start_ms)}) must be before --end ({iso_ms(self.end_ms)})"
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
    if not (capital > 0):
        raise UsageError(f"--capital must be positive, got {capital:g}")
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
    try:
        strategy = cls(**spec.params)
    except TypeError as exc:
        raise UsageError(f"--strategy {spec.name}: bad parameters: {exc}") from None
    if not (hasattr(strategy, "target") or hasattr(strategy, "on_event")):
        raise UsageError(
            f"--strategy {spec.name}: {class_name} implements neither target() (a vectorised "
            "bar strategy) nor on_event() (the Strategy protocol)"
        )
    return strategy


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
        .sort("ts")
        .collect()
    )
    if frame.height == 0:
        raise LiqError(
            f"no {config.interval} klines stored for {config.symbol} between "
            f"{iso_ms(config.start_ms)} and {iso_ms(config.end_ms)}: get them with "
            f"`liq fetch {config.symbol} --dataset klines --period {config.interval} "
            f"--start {iso_ms(config.start_ms)[:10]} --end {iso_ms(config.end_ms)[:10]}`"
        )
    return frame


def load_funding(store: Any, config: BacktestConfig) -> pl.DataFrame | None:
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
        "trades": [
            {
                "side": t.side,
                "entry_ts": iso_ms(t.entry_ts),
                "entry_price": t.entry_price,
                "exit_ts": iso_ms(t.exit_ts),
                "exit_price": t.exit_price,
                "qty": t.qty,
                "leverage": t.leverage,
                "pnl": t.pnl,
                "fees": t.fees,
                "funding": t.funding,
                "liquidated": t.liquidated,
            }
            for t in result.trades
        ],
        "_equity": (result.ts, result.equity),  # for the chart; dropped before output
    }


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
) -> list[dict]:
    specs = grid_specs(config.strategy, grid)
    for spec in specs:
        load_strategy(spec)  # bad combinations are usage errors before anything runs
    jobs = [make_job(replace(config, strategy=s), bars, funding) for s in specs]
    return _map(executor, jobs)


def walk_forward(
    config: BacktestConfig,
    bars: pl.DataFrame,
    funding: pl.DataFrame | None,
    grid: dict[str, list[Any]],
    folds: int,
    executor: Executor | None,
    *,
    objective: str = "sharpe",
) -> list[dict]:
    """Split the bars into ``folds + 1`` equal time windows; for each fold pick the grid's best
    parameters (by ``objective`` on window k) and evaluate them on window k + 1. Only the
    out-of-sample runs are returned (each names the parameters chosen and the window trained on)."""
    if folds < 1:
        raise UsageError("--walk-forward needs K >= 1")
    ts = bars["ts"]
    edges = [
        int(ts[0]) + (int(ts[-1]) + 1 - int(ts[0])) * i // (folds + 1) for i in range(folds + 2)
    ]
    specs = grid_specs(config.strategy, grid)
    train_jobs = []
    for k in range(folds):
        for spec in specs:
            train_jobs.append(
                make_job(
                    replace(config, strategy=spec), bars, funding, slice=(edges[k], edges[k + 1])
                )
            )
    trained = _map(executor, train_jobs)
    best: list[StrategySpec] = []
    for k in range(folds):
        runs = trained[k * len(specs) : (k + 1) * len(specs)]
        scores = [_score(r["metrics"], objective) for r in runs]
        best.append(specs[max(range(len(runs)), key=lambda i: scores[i])])
    test_jobs = [
        make_job(
            replace(config, strategy=best[k]), bars, funding, slice=(edges[k + 1], edges[k + 2])
        )
        for k in range(folds)
    ]
    tested = _map(executor, test_jobs)
    for k, run in enumerate(tested):
        run["fold"] = k + 1
        run["trained_on"] = {"start": iso_ms(edges[k]), "end": iso_ms(edges[k + 1] - 1)}
        run["objective"] = objective
    return tested


def _score(m: dict, objective: str) -> float:
    value = m.get(objective)
    return float(value) if isinstance(value, int | float) else float("-inf")


def _map(executor: Executor | None, jobs: list[dict]) -> list[dict]:
    if executor is None or len(jobs) == 1:
        return [run_job(j) for j in jobs]
    return list(executor.map(run_job, jobs))


def open_executor(spec: str, jobs: int) -> tuple[Executor | None, Any]:
    """``local`` (processes, one per core) or ``dask://HOST:PORT``; returns (executor, closer)."""
    if spec == "local":
        if jobs <= 1:
            return None, None
        import multiprocessing as mp
        import os
        from concurrent.futures import ProcessPoolExecutor  # here: a single run never needs it

        workers = min(jobs, os.cpu_count() or 1)
        executor = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
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
    runs, trades, ids = [], [], []
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
                "metrics": json.dumps(m, default=str),
                "final_equity": m["final_equity"],
                "total_return": m["total_return"],
                "sharpe": m["sharpe"],
                "max_drawdown": m["max_drawdown"],
                "trades": m["trades"],
                "version": __version__,
            }
        )
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
        frame = pl.DataFrame(trades, infer_schema_length=None)
        store.write("backtest_trades", frame.with_columns(_times("ts", "exit_ts")))
    return ids


def _parse_iso(text: str | None) -> int | None:
    from liqcli.core.timeutil import parse_time

    return parse_time(text) if text else None


def _times(*names: str) -> list[pl.Expr]:
    return [pl.col(n).cast(pl.Int64).cast(pl.Datetime("ms", "UTC")) for n in names]
