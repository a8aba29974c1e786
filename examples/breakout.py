"""An example user strategy for ``liq backtest --strategy examples/breakout.py:Breakout``.

A vectorised bar strategy: declare indicators and the wanted exposure as Polars expressions; the
engine computes them once over the whole history and trades the changes (orders at a bar's close
fill at the next bar's open). Use only causal expressions (rolling windows, shifts): the value at
a bar may depend on that bar and earlier ones, never later.

For logic that is easier bar by bar, implement the Strategy protocol instead (liqcli.trading.
strategy): ``on_event(event, ctx)`` receives each ``liqcli.trading.bars.Bar`` and acts through
``ctx.market_order(...)``; it runs through the same broker, only slower.
"""

import polars as pl


class Breakout:
    name = "breakout"

    def __init__(self, lookback: int = 60) -> None:
        # --param values arrive parsed (ints, floats, true/false, text): check them here, an
        # exception becomes liq's one-line usage error
        if not (isinstance(lookback, int) and lookback >= 1):
            raise ValueError(f"lookback must be a positive integer, got {lookback!r}")
        self.lookback = lookback
        self.defaults = {"lookback": lookback}

    def indicators(self) -> dict[str, pl.Expr]:
        # the previous `lookback` bars' range, excluding the current bar
        return {
            "upper": pl.col("high").rolling_max(self.lookback).shift(1),
            "lower": pl.col("low").rolling_min(self.lookback).shift(1),
        }

    def target(self) -> pl.Expr:
        # long on a close above the range, short below it, otherwise keep what we hold
        return (
            pl.when(pl.col("close") > pl.col("upper"))
            .then(1)
            .when(pl.col("close") < pl.col("lower"))
            .then(-1)
            .otherwise(None)
        )
