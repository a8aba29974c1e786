"""Liquidation map: where positions opened by large trades would be liquidated.

Method (py-liquidation-map's, with its defects fixed): a taker buy (``is_buyer_maker=false``) is
taken as a long opened at the trade price, a taker sell as a short. Large trades are selected per
side by ``mode``:

- ``gross_value``: notional ``price*qty >= threshold`` (in the quote currency: USD for USDT);
- ``top_n``: the ``threshold`` largest per side (all of them if there are fewer);
- ``portion``: the largest ``floor(count * threshold)`` per side.

Each selected trade puts notional at the liquidation price of every leverage tier ``L``, from
the simulated broker's function (``trading.costs.liquidation_price_for_leverage``: Binance's
isolated formula with margin = notional / L and maintenance amount 0, the first bracket):
long ``p * (1 - 1/L) / (1 - mmr)``, short ``p * (1 + 1/L) / (1 + mmr)``; with mmr 0 (compat)
this is the reference's ``p * (1 -/+ 1/L)``.

Models:

- ``compat``: the reference's levels exactly: tiers 10x/25x/50x/100x, the full notional at each
  tier, no maintenance margin; long levels at or below the last price are kept, short levels at
  or above it. The bin size is the reference's (``10 ** (ceil(log10(price range)) - 2)``) unless
  given. Unlike the reference, nothing is lost at the range edges and bars are centred.
- ``default``: tiers and weights configurable (DEFAULT_TIERS, weights normalised to 1 so a bin's
  amount is the expected notional), a maintenance-margin rate (DEFAULT_MMR), and levels removed
  once the later price path crossed them (swept: a long level P created at t is gone if the
  minimum price after t is <= P; shorts mirrored). The bin size is a "nice" step giving about
  100-200 bins over the levels' range unless given.

Binning uses a fixed grid ``[k*step, (k+1)*step)`` with an integer ``k`` per level, so every level
lands in exactly one bin: the bins always sum to the kept levels' notional.

Scale: the trades are a Polars LazyFrame scanned with the streaming engine in a few passes
(per-second price buckets + the selection, then the rows in the selected trades' own seconds for
exact sweeps); everything after that works on small frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import polars as pl

from liqcli.core.money import currency_of, quote_of
from liqcli.errors import LiqError, UsageError
from liqcli.trading.costs import BTCUSDT_BRACKETS, liquidation_price_for_leverage

Mode = Literal["gross_value", "top_n", "portion"]
Model = Literal["default", "compat"]
MODES: tuple[str, ...] = ("gross_value", "top_n", "portion")
MODELS: tuple[str, ...] = ("default", "compat")
DEFAULT_THRESHOLDS: dict[str, float] = {"gross_value": 100_000.0, "top_n": 100, "portion": 0.01}

# Per-second buckets: fine enough that the exact own-second pass stays small, coarse enough that a
# month of trades is ~2.6M bucket rows.
BUCKET_MS = 1_000
# Binance USDⓈ-M BTCUSDT first-bracket maintenance margin rate (0.4%), the broker's.
DEFAULT_MMR = BTCUSDT_BRACKETS[0].mmr
HEATMAP_COLUMNS = 240
PATH_POINTS = 1_500
_NICE_DURATIONS_MS = [
    s * 1000
    for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600, 43200)
] + [d * 86_400_000 for d in (1, 2, 7, 14, 30)]


@dataclass(frozen=True)
class Tier:
    leverage: float
    weight: float = 1.0

    @property
    def label(self) -> str:
        return f"{self.leverage:g}x"


COMPAT_TIERS: tuple[Tier, ...] = tuple(Tier(float(x)) for x in (10, 25, 50, 100))
# An assumed mix, not an observation: venues do not publish open interest by leverage. Most
# retail size sits at 10-25x; 50-100x is popular but small; 5x stands for the cautious end.
DEFAULT_TIERS: tuple[Tier, ...] = (
    Tier(5.0, 0.10),
    Tier(10.0, 0.25),
    Tier(20.0, 0.25),
    Tier(25.0, 0.15),
    Tier(50.0, 0.15),
    Tier(100.0, 0.10),
)


def parse_tiers(text: str) -> tuple[Tier, ...]:
    """``"10:0.3,25:0.3,50:0.2,100:0.2"`` (or ``"10,25,50"`` for equal weights) -> tiers with
    weights normalised to sum to 1."""
    tiers: list[Tier] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lev_text, _, weight_text = part.partition(":")
        try:
            leverage = float(lev_text.strip().lower().removesuffix("x"))
            weight = float(weight_text) if weight_text.strip() else 1.0
        except ValueError:
            raise UsageError(
                f"invalid tier {part!r}: expected LEVERAGE[:WEIGHT], e.g. 25:0.3"
            ) from None
        if not (1 < leverage <= 1000) or not math.isfinite(weight) or weight <= 0:
            raise UsageError(f"invalid tier {part!r}: leverage must be in (1, 1000], weight > 0")
        tiers.append(Tier(leverage, weight))
    if not tiers:
        raise UsageError(f"invalid tiers {text!r}: expected e.g. 10:0.3,25:0.3,50:0.2,100:0.2")
    if len({t.leverage for t in tiers}) != len(tiers):
        raise UsageError(f"invalid tiers {text!r}: a leverage appears twice")
    total = sum(t.weight for t in tiers)
    return tuple(
        sorted((Tier(t.leverage, t.weight / total) for t in tiers), key=lambda t: t.leverage)
    )


@dataclass(frozen=True)
class MapSpec:
    """What map to build. ``resolved()`` fills model defaults and validates (UsageError)."""

    mode: str = "gross_value"
    threshold: float | None = None
    model: str = "default"
    tiers: tuple[Tier, ...] | None = None
    mmr: float | None = None
    bin_size: float | None = None
    start_ms: int | None = None
    end_ms: int | None = None

    def resolved(self) -> MapSpec:
        if self.mode not in MODES:
            raise UsageError(f"invalid mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if self.model not in MODELS:
            raise UsageError(f"invalid model {self.model!r}: choose one of {', '.join(MODELS)}")
        threshold = (
            DEFAULT_THRESHOLDS[self.mode] if self.threshold is None else float(self.threshold)
        )
        if not math.isfinite(threshold):
            raise UsageError(f"invalid threshold {self.threshold!r}")
        if self.mode == "gross_value" and threshold < 0:
            raise UsageError(
                "invalid threshold for gross_value: a notional >= 0 in the quote currency, "
                "e.g. 100000"
            )
        if self.mode == "top_n" and (threshold < 1 or threshold != int(threshold)):
            raise UsageError("invalid threshold for top_n: a whole number of trades >= 1, e.g. 100")
        if self.mode == "portion" and not 0 < threshold <= 1:
            raise UsageError("invalid threshold for portion: a fraction in (0, 1], e.g. 0.01")
        if self.bin_size is not None and not (math.isfinite(self.bin_size) and self.bin_size > 0):
            raise UsageError(f"invalid bin size {self.bin_size!r}: must be a positive price step")
        if self.start_ms is not None and self.end_ms is not None and self.start_ms >= self.end_ms:
            raise UsageError("--start must be before --end")
        if self.model == "compat":
            if self.tiers not in (None, COMPAT_TIERS) or self.mmr not in (None, 0.0):
                raise UsageError(
                    "--model compat uses the reference's fixed tiers; drop --tiers/--mmr"
                )
            tiers, mmr = COMPAT_TIERS, 0.0
        else:
            tiers = self.tiers or DEFAULT_TIERS
            mmr = DEFAULT_MMR if self.mmr is None else float(self.mmr)
            if not 0 <= mmr < 0.5:
                raise UsageError(f"invalid maintenance margin rate {mmr!r}: expected e.g. 0.004")
            if any(1 / t.leverage <= mmr for t in tiers):
                raise UsageError("maintenance margin rate must be below 1/leverage for every tier")
        if self.mode == "top_n":
            threshold = int(threshold)
        return replace(self, threshold=threshold, tiers=tiers, mmr=mmr)

    @property
    def sweep(self) -> bool:
        return self.model == "default"


@dataclass
class LiqMap:
    """A built map: the tidy bins plus what the charts need."""

    symbol: str
    spec: MapSpec
    current_price: float
    current_ts: int  # ms
    first_ts: int
    last_ts: int
    trades: int
    bin_size: float
    bins: pl.DataFrame  # price_low, price_high, side, tier, amount_usd (non-zero rows)
    levels: (
        pl.DataFrame
    )  # t, entry_price, side, tier, leverage, level, amount_usd, active, start_col, end_col
    selected: pl.DataFrame  # t, price, amount, side
    path: pl.DataFrame  # t, low, high, close (downsampled price path)
    col_ms: int  # heatmap column width
    col_t0: int  # heatmap first column start (ms)
    n_cols: int
    selected_usd: dict[str, float] = field(default_factory=dict)
    skipped_rows: int = 0  # malformed input rows left out (missing fields, bad price)
    largest_trade: float = 0.0  # the largest trade's notional (in the quote currency)

    @property
    def currency(self) -> str:
        return currency_of(self.symbol)

    @property
    def tier_labels(self) -> list[str]:
        return [t.label for t in self.spec.tiers or ()]

    def document(self) -> dict[str, Any]:
        """The JSON document around the tidy ``bins`` rows (CONTRACT.md "Liquidation map")."""
        from liqcli.core.timeutil import iso_ms

        return {
            "symbol": self.symbol,
            "current_price": self.current_price,
            "current_ts": iso_ms(self.current_ts),
            "mode": self.spec.mode,
            "threshold": self.spec.threshold,
            "model": self.spec.model,
            "bin_size": self.bin_size,
            "tiers": [
                {"tier": t.label, "leverage": t.leverage, "weight": t.weight}
                for t in self.spec.tiers or ()
            ],
            "mmr": self.spec.mmr,
            "start": iso_ms(self.first_ts),
            "end": iso_ms(self.last_ts),
            "trades": self.trades,
            "selected_trades": self.selected.height,
            "skipped_rows": self.skipped_rows,
            # Amounts (the ``amount_usd`` columns, kept by that name) are in this currency.
            "quote": quote_of(self.symbol),
            "currency": self.currency,
            "largest_trade": self.largest_trade,
            "selected_usd": self.selected_usd,
            "active_usd": {
                side: float(self.bins.filter(pl.col("side") == side)["amount_usd"].sum())
                for side in ("long", "short")
            },
        }

    def summary(self) -> pl.DataFrame:
        """One row per price bin, highest first: long/short totals and the cumulative amount met
        moving away from the current price (what a depth chart shows)."""
        per_bin = (
            self.bins.group_by("price_low", "price_high")
            .agg(
                pl.col("amount_usd").filter(pl.col("side") == "long").sum().alias("long_usd"),
                pl.col("amount_usd").filter(pl.col("side") == "short").sum().alias("short_usd"),
            )
            .sort("price_low", descending=True)
        )
        mid = (pl.col("price_low") + pl.col("price_high")) / 2
        return per_bin.with_columns(
            ((mid / self.current_price - 1) * 100).round(2).alias("distance_pct"),
            # Longs are met going down (from the top of the table), shorts going up.
            pl.col("long_usd").cum_sum().alias("cum_long_usd"),
            pl.col("short_usd").cum_sum(reverse=True).alias("cum_short_usd"),
        ).select(
            "price_low",
            "price_high",
            "distance_pct",
            "long_usd",
            "short_usd",
            "cum_long_usd",
            "cum_short_usd",
        )

    def heatmap(self, max_rows: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(column start times ms, price edges, matrix[rows, cols]) of notional still at risk:
        a level counts from its entry column to the column where it was swept."""
        lv = self.levels.filter(pl.col("shown"))
        lows = [self.path["low"].min(), lv["level"].min() if lv.height else None]
        highs = [self.path["high"].max(), lv["level"].max() if lv.height else None]
        lo = min(v for v in lows if v is not None)
        hi = max(v for v in highs if v is not None)
        step = self.bin_size
        k0 = math.floor(lo / step)
        rows = math.floor(hi / step) - k0 + 1
        factor = max(1, math.ceil(rows / max_rows))
        step *= factor
        k0 = math.floor(lo / step)
        rows = math.floor(hi / step) - k0 + 1
        diff = np.zeros((rows, self.n_cols + 1))
        if lv.height:
            r = np.floor(lv["level"].to_numpy() / step).astype(np.int64) - k0
            a = lv["start_col"].to_numpy()
            b = lv["end_col"].to_numpy() + 1
            amt = lv["amount_usd"].to_numpy()
            np.add.at(diff, (r, a), amt)
            np.add.at(diff, (r, b), -amt)
        matrix = np.cumsum(diff, axis=1)[:, : self.n_cols]
        times = self.col_t0 + np.arange(self.n_cols + 1) * self.col_ms
        edges = (k0 + np.arange(rows + 1)) * step
        return times, edges, np.clip(matrix, 0, None)


def nice_step(price_range: float, target: int = 150) -> float:
    """A 1/2/2.5/5 x 10^k step giving about ``target`` bins (100-200) over ``price_range``."""
    if price_range <= 0 or not math.isfinite(price_range):
        raise ValueError("price range must be positive")
    raw = price_range / target
    exp = math.floor(math.log10(raw))
    candidates = [m * 10.0**e for e in (exp - 1, exp, exp + 1) for m in (1, 2, 2.5, 5)]
    return min(candidates, key=lambda s: abs(math.log(price_range / s / target)))


def reference_step(price_min: float, price_max: float) -> float | None:
    """py-liquidation-map's bin width: 10 ** -(2 - ceil(log10(max - min))) over all prices."""
    spread = price_max - price_min
    if not spread > 0:
        return None
    return 10.0 ** (math.ceil(math.log10(spread)) - 2)


def nice_duration(span_ms: int, max_buckets: int) -> int:
    for d in _NICE_DURATIONS_MS:
        if span_ms / d <= max_buckets:
            return d
    return _NICE_DURATIONS_MS[-1] * math.ceil(span_ms / max_buckets / _NICE_DURATIONS_MS[-1])


def _normalise(trades: pl.LazyFrame, spec: MapSpec) -> pl.LazyFrame:
    """Trades -> t (ms Int64), price, amount (USD), is_long, within [start, end)."""
    schema = trades.collect_schema()
    ts = pl.col("ts")
    t = ts.dt.epoch("ms") if isinstance(schema["ts"], pl.Datetime) else ts.cast(pl.Int64)
    price = pl.col("price").cast(pl.Float64)
    amount = price * pl.col("qty").cast(pl.Float64)
    is_long = ~pl.col("is_buyer_maker").cast(pl.Boolean)
    # A row with a missing field (a file cut mid-line) or a non-positive price is bad: its t is
    # nulled, so the bucket pass counts it in a null second and everything else drops it.
    good = (price > 0) & amount.is_not_null() & is_long.is_not_null()
    lf = trades.select(
        pl.when(good).then(t).alias("t"), price, amount.alias("amount"), is_long.alias("is_long")
    )
    t_col = pl.col("t")
    in_range = t_col.is_null()
    if spec.start_ms is None and spec.end_ms is None:
        return lf
    bounds = pl.lit(True)
    if spec.start_ms is not None:
        bounds &= t_col >= spec.start_ms
    if spec.end_ms is not None:
        bounds &= t_col < spec.end_ms
    return lf.filter(in_range | bounds)


_SELECTED_COLUMNS = ("t", "price", "amount", "is_long")
# Amount histogram resolution for portion mode: 1/8 octave (about 9% wide) buckets.
_HIST_PER_OCTAVE = 8


def _amount_bucket() -> pl.Expr:
    return (
        (pl.col("amount").clip(lower_bound=1e-12).log(2) * _HIST_PER_OCTAVE).floor().cast(pl.Int64)
    )


def _top_per_side(lf: pl.LazyFrame, k_long: int, k_short: int) -> list[pl.LazyFrame]:
    return [
        lf.filter(pl.col("is_long") == is_long).top_k(k, by="amount").select(_SELECTED_COLUMNS)
        for is_long, k in ((True, k_long), (False, k_short))
        if k >= 1
    ]


def _portion_floor(hist: pl.DataFrame, is_long: bool, k: int) -> float:
    """An amount at or below the k-th largest on one side, from the amount histogram: filtering
    ``amount >= floor`` keeps the top k plus at most two histogram buckets."""
    side = hist.filter(pl.col("is_long") == is_long).sort("b", descending=True)
    reached = side.filter(pl.col("n").cum_sum() >= k)
    if k < 1 or reached.height == 0:
        return math.inf
    # One bucket of margin against log rounding at the bucket edge.
    return 2.0 ** ((int(reached["b"][0]) - 1) / _HIST_PER_OCTAVE)


def _select_trades(
    lf: pl.LazyFrame, spec: MapSpec, buckets_q: pl.LazyFrame, engine: str, shared_scan: bool
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(per-second buckets, selected trades).

    By default each query is its own streaming scan: sharing one scan between the bucket
    group-by and another branch (collect_all) was ~40% faster but tripled peak memory (1.8 GB
    instead of 0.6 GB at 50M rows), and bounded memory is the point. portion needs the side
    counts and an amount histogram first, then keeps only trades above the k-th largest
    amount's histogram floor and picks the exact top k among those in memory.
    """
    threshold = float(spec.threshold or 0)
    if spec.mode == "gross_value":
        selected_q = lf.filter(pl.col("amount") >= threshold).select(_SELECTED_COLUMNS)
        if shared_scan:
            buckets, selected = pl.collect_all([buckets_q, selected_q], engine=engine)
            return buckets, selected
        return buckets_q.collect(engine=engine), selected_q.collect(engine=engine)
    if spec.mode == "top_n":
        k_long = k_short = int(threshold)
        picks = _top_per_side(lf, k_long, k_short)
        if shared_scan:
            buckets, *picked = pl.collect_all([buckets_q, *picks], engine=engine)
        else:
            buckets = buckets_q.collect(engine=engine)
            picked = [q.collect(engine=engine) for q in picks]
        return buckets, pl.concat(picked)
    hist_q = lf.group_by("is_long", _amount_bucket().alias("b")).agg(pl.len().alias("n"))
    if shared_scan:
        buckets, hist = pl.collect_all([buckets_q, hist_q], engine=engine)
    else:
        buckets, hist = buckets_q.collect(engine=engine), hist_q.collect(engine=engine)
    good = buckets.filter(pl.col("sec").is_not_null())  # the null second holds bad rows
    n_long = int(good["n_long"].sum())
    k_long = math.floor(n_long * threshold)
    k_short = math.floor((int(good["n"].sum()) - n_long) * threshold)
    if k_long < 1 and k_short < 1:
        return buckets, _empty_selected()
    floor_long, floor_short = (
        _portion_floor(hist, True, k_long),
        _portion_floor(hist, False, k_short),
    )
    candidates = (
        lf.filter(
            pl.when(pl.col("is_long"))
            .then(pl.col("amount") >= floor_long)
            .otherwise(pl.col("amount") >= floor_short)
        )
        .select(_SELECTED_COLUMNS)
        .collect(engine=engine)
    )
    picked = [q.collect() for q in _top_per_side(candidates.lazy(), k_long, k_short)]
    return buckets, pl.concat(picked) if picked else _empty_selected()


def build_map(
    trades: pl.LazyFrame,
    spec: MapSpec,
    *,
    symbol: str,
    engine: str = "streaming",
    shared_scan: bool = False,
) -> LiqMap:
    """Build the map from trades (ts, price, qty, is_buyer_maker), see the module docstring.

    ``shared_scan``: one scan feeds the buckets and the selection (faster, for inputs small
    enough that its higher peak memory does not matter)."""
    spec = spec.resolved()
    flagged = _normalise(trades, spec)
    lf = flagged.filter(pl.col("t").is_not_null())
    # Bad rows (t nulled) fall in a null second of their own: counted there, then dropped.
    buckets_q = (
        flagged.group_by((pl.col("t") // BUCKET_MS).alias("sec"))
        .agg(
            pl.col("price").min().alias("low"),
            pl.col("price").max().alias("high"),
            pl.col("price").last().alias("close"),
            pl.col("t").min().alias("t_first"),
            pl.col("t").max().alias("t_last"),
            pl.len().alias("n"),
            pl.col("is_long").sum().alias("n_long"),
            pl.col("amount").max().alias("max_amount"),
        )
        .sort("sec")
    )
    buckets, selected = _select_trades(lf, spec, buckets_q, engine, shared_scan)
    bad = buckets.filter(pl.col("sec").is_null())
    skipped = int(bad["n"].sum()) if bad.height else 0
    buckets = buckets.filter(pl.col("sec").is_not_null())
    if buckets.height == 0:
        extra = f" ({skipped:,} malformed rows skipped)" if skipped else ""
        raise LiqError(f"no trades for {symbol} in the requested range{extra}")
    # Venue files are time-ordered, so the last trade of the last second is the current price.
    current_ts, current_price = int(buckets["t_last"][-1]), float(buckets["close"][-1])
    first_ts = int(buckets["t_first"][0])

    span = max(current_ts - first_ts, 1)
    col_ms = nice_duration(span, HEATMAP_COLUMNS)
    col_t0 = first_ts - first_ts % col_ms
    n_cols = (current_ts - col_t0) // col_ms + 1
    buckets = buckets.with_columns(((pl.col("sec") * BUCKET_MS - col_t0) // col_ms).alias("col"))
    selected = selected.sort("t").with_columns(
        (pl.col("t") // BUCKET_MS).alias("sec"),
        ((pl.col("t") - col_t0) // col_ms).alias("col"),
    )

    levels = _levels(selected, spec)
    if spec.sweep:
        levels = _sweep(levels, selected, buckets, lf, n_cols, engine)
        levels = levels.with_columns(pl.col("end_col").is_null().alias("active"))
    else:
        keep = pl.when(pl.col("side") == "long").then(pl.col("level") <= current_price)
        levels = levels.with_columns(
            keep.otherwise(pl.col("level") >= current_price).alias("active"),
            pl.lit(None, dtype=pl.Int64).alias("end_col"),
        )
    levels = levels.with_columns(
        pl.col("end_col").fill_null(n_cols - 1),
        # Compat drops wrong-side levels outright; swept levels still show in the heatmap.
        (pl.col("active") | pl.lit(spec.sweep)).alias("shown"),
    )

    bin_size = spec.bin_size or _auto_step(spec, levels, buckets, current_price)
    bins = bin_levels(levels.filter(pl.col("active")), bin_size, spec.tiers or ())
    return LiqMap(
        symbol=symbol,
        spec=spec,
        current_price=current_price,
        current_ts=current_ts,
        first_ts=first_ts,
        last_ts=current_ts,
        trades=int(buckets["n"].sum()),
        skipped_rows=skipped,
        largest_trade=float(buckets["max_amount"].max() or 0.0),
        bin_size=bin_size,
        bins=bins,
        levels=levels,
        selected=selected.select(
            "t",
            "price",
            "amount",
            pl.when(pl.col("is_long"))
            .then(pl.lit("long"))
            .otherwise(pl.lit("short"))
            .alias("side"),
        ),
        path=_path(buckets, span),
        col_ms=col_ms,
        col_t0=col_t0,
        n_cols=n_cols,
        selected_usd={
            "long": float(selected.filter(pl.col("is_long"))["amount"].sum()),
            "short": float(selected.filter(~pl.col("is_long"))["amount"].sum()),
        },
    )


def _empty_selected() -> pl.DataFrame:
    return pl.DataFrame(
        schema={"t": pl.Int64, "price": pl.Float64, "amount": pl.Float64, "is_long": pl.Boolean}
    )


def _levels(selected: pl.DataFrame, spec: MapSpec) -> pl.DataFrame:
    tiers = spec.tiers or ()
    tier_df = pl.DataFrame(
        {
            "tier": [t.label for t in tiers],
            "leverage": [t.leverage for t in tiers],
            "weight": [t.weight for t in tiers],
        }
    )
    mmr = spec.mmr or 0.0
    price, leverage = pl.col("price"), pl.col("leverage")
    return (
        selected.with_row_index("trade")
        .join(tier_df, how="cross")
        .select(
            "trade",
            "t",
            "sec",
            pl.col("col").alias("start_col"),
            pl.col("price").alias("entry_price"),
            pl.when(pl.col("is_long"))
            .then(pl.lit("long"))
            .otherwise(pl.lit("short"))
            .alias("side"),
            "tier",
            "leverage",
            # The broker's formula (trading/costs.py), as Polars expressions.
            pl.when(pl.col("is_long"))
            .then(liquidation_price_for_leverage(price, leverage, long=True, mmr=mmr))
            .otherwise(liquidation_price_for_leverage(price, leverage, long=False, mmr=mmr))
            .alias("level"),
            (pl.col("amount") * pl.col("weight")).alias("amount_usd"),
        )
    )


def _sweep(
    levels: pl.DataFrame,
    selected: pl.DataFrame,
    buckets: pl.DataFrame,
    lf: pl.LazyFrame,
    n_cols: int,
    engine: str,
) -> pl.DataFrame:
    """Add ``end_col``: the heatmap column where the later price path first crossed the level
    (null while the level is still untouched)."""
    if selected.height == 0:
        return levels.with_columns(pl.lit(None, dtype=pl.Int64).alias("end_col"))
    own = _own_second_extremes(levels, buckets, lf, engine)
    after = buckets.select(
        "sec",
        pl.col("low").cum_min(reverse=True).shift(-1).alias("low_after"),
        pl.col("high").cum_max(reverse=True).shift(-1).alias("high_after"),
        pl.col("low").cum_min(reverse=True).shift(-1).over("col").alias("col_low_after"),
        pl.col("high").cum_max(reverse=True).shift(-1).over("col").alias("col_high_after"),
    )
    per_trade = (
        selected.with_row_index("trade")
        .select("trade", "t", "sec")
        .join_asof(
            own,
            on="t",
            by="sec",
            strategy="forward",
            allow_exact_matches=False,
            check_sortedness=False,
        )
        .join(after, on="sec", how="left")
        .select(
            "trade",
            pl.min_horizontal("own_low_after", "low_after").alias("min_after"),
            pl.max_horizontal("own_high_after", "high_after").alias("max_after"),
            pl.min_horizontal("own_low_after", "col_low_after").alias("min_in_col"),
            pl.max_horizontal("own_high_after", "col_high_after").alias("max_in_col"),
        )
    )
    lv = levels.join(per_trade, on="trade", how="left")
    is_long = pl.col("side") == "long"
    lv = lv.with_columns(
        pl.when(is_long)
        .then(pl.col("min_after") <= pl.col("level"))
        .otherwise(pl.col("max_after") >= pl.col("level"))
        .fill_null(False)
        .alias("swept"),
        pl.when(is_long)
        .then(pl.col("min_in_col") <= pl.col("level"))
        .otherwise(pl.col("max_in_col") >= pl.col("level"))
        .fill_null(False)
        .alias("swept_in_col"),
    )
    col_low = np.full(n_cols, np.inf)
    col_high = np.full(n_cols, -np.inf)
    per_col = buckets.group_by("col").agg(pl.col("low").min(), pl.col("high").max())
    cols = per_col["col"].to_numpy()
    col_low[cols] = per_col["low"].to_numpy()
    col_high[cols] = per_col["high"].to_numpy()
    start = lv["start_col"].to_numpy()
    level = lv["level"].to_numpy()
    long_mask = (lv["side"] == "long").to_numpy()
    later = np.where(
        long_mask,
        first_crossing(start, level, col_low, below=True),
        first_crossing(start, level, col_high, below=False),
    )
    end = np.where(lv["swept_in_col"].to_numpy(), start, later)
    return (
        lv.with_columns(
            pl.Series("end_col", end, dtype=pl.Int64),
        )
        .with_columns(
            pl.when(pl.col("swept")).then(pl.col("end_col")).otherwise(None).alias("end_col")
        )
        .drop("min_after", "max_after", "min_in_col", "max_in_col", "swept_in_col", "swept")
    )


def _own_second_extremes(
    levels: pl.DataFrame, buckets: pl.DataFrame, lf: pl.LazyFrame, engine: str
) -> pl.DataFrame:
    """Per (second, t): the lowest/highest price at or after t within that second, for the seconds
    where a crossing inside the trade's own second is possible at all (the second's range reaches
    one of its levels). Usually few, often none: then no extra pass over the trades."""
    is_long = pl.col("side") == "long"
    reach = levels.join(buckets.select("sec", "low", "high"), on="sec", how="left").filter(
        pl.when(is_long)
        .then(pl.col("low") <= pl.col("level"))
        .otherwise(pl.col("high") >= pl.col("level"))
    )
    secs = reach["sec"].unique()
    schema = {
        "t": pl.Int64,
        "sec": pl.Int64,
        "own_low_after": pl.Float64,
        "own_high_after": pl.Float64,
    }
    if secs.len() == 0:
        return pl.DataFrame(schema=schema)
    sec = (pl.col("t") // BUCKET_MS).alias("sec")
    return (
        lf.filter(sec.is_in(secs.implode()))
        .group_by(sec, "t")
        .agg(pl.col("price").min().alias("lo"), pl.col("price").max().alias("hi"))
        .collect(engine=engine)
        .sort("t")  # t order is (sec, t) order
        .select(
            "t",
            "sec",
            pl.col("lo").cum_min(reverse=True).over("sec").alias("own_low_after"),
            pl.col("hi").cum_max(reverse=True).over("sec").alias("own_high_after"),
        )
    )


def first_crossing(
    start: np.ndarray, levels: np.ndarray, values: np.ndarray, *, below: bool
) -> np.ndarray:
    """For each i, the first column j > start[i] with values[j] <= levels[i] (``below``) or
    >= levels[i]; len(values) when there is none. Binary lifting over a sparse table of minima:
    O(n log C), vectorised over the levels."""
    vals = values if below else -values
    target = levels if below else -levels
    size = len(vals)
    tables = [vals]
    while (1 << len(tables)) <= size:
        prev, half = tables[-1], 1 << (len(tables) - 1)
        tables.append(np.minimum(prev[:-half], prev[half:]))
    pos = start.astype(np.int64) + 1
    for k in range(len(tables) - 1, -1, -1):
        width = 1 << k
        table = tables[k]
        fits = pos + width <= size
        block_min = table[np.where(fits, pos, 0).clip(0, len(table) - 1)]
        pos = np.where(fits & (block_min > target), pos + width, pos)
    found = (pos < size) & (vals[np.minimum(pos, size - 1)] <= target)
    return np.where(found, pos, size)


def _auto_step(
    spec: MapSpec, levels: pl.DataFrame, buckets: pl.DataFrame, current_price: float
) -> float:
    if spec.model == "compat":
        step = reference_step(float(buckets["low"].min()), float(buckets["high"].max()))
        if step:
            return step
    active = levels.filter(pl.col("active"))["level"]
    lo = min(float(active.min()), current_price) if active.len() else current_price
    hi = max(float(active.max()), current_price) if active.len() else current_price
    return nice_step(hi - lo if hi > lo else current_price * 0.01)


def bin_levels(levels: pl.DataFrame, bin_size: float, tiers: tuple[Tier, ...]) -> pl.DataFrame:
    """Sum level notional on the fixed grid ``[k*step, (k+1)*step)``: one row per non-empty
    (bin, side, tier), sorted by price, side and leverage. No level is ever dropped."""
    order = {t.label: i for i, t in enumerate(tiers)}
    k = (pl.col("level") / bin_size).floor().cast(pl.Int64)
    return (
        levels.group_by(k.alias("k"), "side", "tier")
        .agg(pl.col("amount_usd").sum())
        .with_columns(
            (pl.col("k") * bin_size).round(10).alias("price_low"),
            ((pl.col("k") + 1) * bin_size).round(10).alias("price_high"),
            pl.col("tier").replace_strict(order, return_dtype=pl.Int64).alias("_order"),
        )
        .sort("k", "side", "_order")
        .select("price_low", "price_high", "side", "tier", "amount_usd")
    )


def _path(buckets: pl.DataFrame, span: int) -> pl.DataFrame:
    width = nice_duration(span, PATH_POINTS)
    return (
        buckets.group_by((pl.col("sec") * BUCKET_MS // width * width).alias("t"))
        .agg(pl.col("low").min(), pl.col("high").max(), pl.col("close").last())
        .sort("t")
    )
