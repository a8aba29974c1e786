"""The shortcuts taken for speed give what the slow paths give: the CLI's option conversion
without pydantic equals typer's pydantic adapters, and the bar engine hands the garbage
collector back as it found it."""

from __future__ import annotations

import gc
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer._coercion import build_runtime_param

from liqcli.cli import app as cli_app
from liqcli.render.output import Format
from liqcli.trading.bars import BarSettings, run_vectorised
from liqcli.trading.strategies.sma_cross import SmaCross

# (option of `liq backtest`, values as they come from the command line or the defaults)
CASES = [
    ("capital", ["10000", "1.5", "-2", "+1.25e+10", ".5", "5.", "007.5", "1e400", 3, 2.5]),
    ("walk_forward_k", ["10", "-3", "+4", "007", "0", "99999999999999999999999", 7]),
    ("start", ["30d", "2026-01-01", "", "  x "]),
    ("fmt", ["table", "json", Format.csv]),
    ("param", [("fast=10", "slow=40"), ["a=1"], ()]),
    ("chart", ["out.png", "/tmp/x/eq.png", Path("a.png")]),
]
SLOW_ONLY = {  # left to pydantic, whatever it makes of them
    "capital": ["1_000", " 5", "inf", "nan", "x", "5e", "--", True],
    "walk_forward_k": ["1_000", " 5", "1.0", "1e3", "x", "--", True, 2.0],
}


def _backtest_params() -> dict:
    command = cli_app._build_command("backtest")
    return {p.name: p for p in command.params}


@pytest.mark.parametrize(("name", "values"), CASES)
def test_quick_conversion_equals_typers_adapter(name, values):
    param = _backtest_params()[name]
    desc = param.type_descriptor
    ctx = None
    real = build_runtime_param(desc)
    for value in values:
        quick = cli_app._quick_value(desc.annotation, desc.parameter_info, value, param, ctx)
        assert quick is not cli_app._SLOW, (name, value)
        expected = real._coerce_value(value, param=param, ctx=ctx)
        assert type(quick) is type(expected), (name, value, quick, expected)
        assert quick == expected or (
            isinstance(quick, float) and math.isnan(quick) and math.isnan(expected)
        ), (name, value, quick, expected)


@pytest.mark.parametrize(("name", "values"), SLOW_ONLY.items())
def test_anything_unusual_goes_to_typers_adapter(name, values):
    param = _backtest_params()[name]
    desc = param.type_descriptor
    for value in values:
        out = cli_app._quick_value(desc.annotation, desc.parameter_info, value, param, None)
        assert out is cli_app._SLOW, (name, value, out)


def test_a_bad_value_still_reads_as_typers_error():
    from typer.testing import CliRunner

    result = CliRunner().invoke(
        cli_app.app, ["backtest", "sma_cross", "BTCUSDT", "--capital", "abc"]
    )
    assert result.exit_code == 2
    assert "Invalid value for '--capital': Input should be a valid number" in result.output


def _frame(n: int = 400) -> pl.DataFrame:
    rng = np.random.default_rng(3)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    opens = np.concatenate(([close[0]], close[:-1]))
    return pl.DataFrame(
        {
            "ts": 1_700_000_000_000 + 60_000 * np.arange(n),
            "open": opens,
            "high": np.maximum(opens, close) * 1.001,
            "low": np.minimum(opens, close) * 0.999,
            "close": close,
            "volume": np.ones(n),
        }
    )


@pytest.mark.parametrize("enabled", [True, False])
def test_the_bar_engine_gives_the_collector_back_as_it_found_it(enabled):
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        result = run_vectorised(_frame(), SmaCross(5, 20), BarSettings())
        assert result.trades  # it ran
        assert gc.isenabled() is enabled
        with pytest.raises(Exception):  # noqa: B017 - any failure inside
            run_vectorised(_frame().drop("open"), SmaCross(5, 20), BarSettings())
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()
