"""``sma_cross``: long while SMA(fast) > SMA(slow) of the close, short while below, always in the
market once both averages exist (equal averages keep the position)."""

from __future__ import annotations

from typing import ClassVar

import polars as pl

from liqcli.errors import UsageError


class SmaCross:
    name = "sma_cross"
    defaults: ClassVar[dict[str, int]] = {"fast": 20, "slow": 50}

    def __init__(self, fast: int = 20, slow: int = 50) -> None:
        if not (isinstance(fast, int) and isinstance(slow, int) and 1 <= fast < slow):
            raise UsageError(
                f"sma_cross needs integers 1 <= fast < slow, got fast={fast} slow={slow}"
            )
        self.fast = fast
        self.slow = slow

    def indicators(self) -> dict[str, pl.Expr]:
        return {
            "sma_fast": pl.col("close").rolling_mean(self.fast),
            "sma_slow": pl.col("close").rolling_mean(self.slow),
        }

    def target(self) -> pl.Expr:
        fast, slow = pl.col("sma_fast"), pl.col("sma_slow")
        return (
            pl.when(fast > slow)
            .then(pl.lit(1))
            .when(fast < slow)
            .then(pl.lit(-1))
            .otherwise(pl.lit(None))
        )
