"""Liquidation-map charts as PNG files (matplotlib, Agg canvas).

Figures are built with ``matplotlib.figure.Figure`` and an Agg canvas, never pyplot: no global
figure state, no GUI backend, safe to call repeatedly (``liq map --live`` redraws).

- ``map``: left, the price path (low-high band and close) with the selected trades (size by
  notional); right, estimated liquidation amount per price bin stacked by tier, bars centred on
  their bins, the current price marked across both panels.
- ``depth``: amount per bin (bars by tier) and the cumulative amount met moving away from the
  current price (longs downwards, shorts upwards).
- ``heatmap``: price x time, the notional at risk per bin: a level appears at its trade's time
  and ends where the price path swept it.

Drawing works on :class:`ChartData` (numpy arrays and strings, prepared from the LiqMap with
Polars); matplotlib is imported only by the drawing code. ``liq map`` starts a
:class:`ChartWorker` before building the map: a forked process that imports matplotlib meanwhile
and then draws, so the ~0.25 s import overlaps the Polars work instead of following it.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from liqcli.core.money import money, quote_of
from liqcli.core.timeutil import iso_ms
from liqcli.errors import LiqError

if TYPE_CHECKING:
    from liqcli.analytics.liqmap import LiqMap

CHARTS: tuple[str, ...] = ("map", "depth", "heatmap")
MAX_SCATTER_PER_SIDE = 2_000
LONG_COLOR, SHORT_COLOR, PRICE_COLOR = "#1f77b4", "#d62728", "#222222"
DPI = 100


def human_usd(value: float, _pos: object = None) -> str:
    return money(value, "USD", compact=True)


def amount_formatter(currency: str):
    """Axis ticks: ``$1.2M`` in USD; plain ``1.2M`` otherwise (the axis label names the unit)."""
    if currency == "USD":
        return human_usd
    return lambda value, _pos=None: money(value, "", compact=True).strip()


def threshold_text(liqmap: LiqMap) -> str:
    spec = liqmap.spec
    if spec.mode == "gross_value":
        return f"trades >= {money(float(spec.threshold or 0), liqmap.currency, compact=True)}"
    if spec.mode == "top_n":
        return f"largest {spec.threshold} trades per side"
    return f"largest {float(spec.threshold or 0) * 100:g}% of trades per side"


def span_text(first_ms: int, last_ms: int) -> str:
    """``2024-03-01 00:00 -> 2024-03-02 00:00 UTC``; to the second when the span is under an
    hour (a 46 s input is not ``00:00 -> 00:00``), the date once when it is the same."""
    cut = 19 if last_ms - first_ms < 3_600_000 else 16
    first, last = (iso_ms(t)[:cut].replace("T", " ") for t in (first_ms, last_ms))
    if first[:10] == last[:10] and cut == 19:
        last = last[11:]
    return f"{first} -> {last} UTC"


def title(liqmap: LiqMap, chart: str) -> str:
    span = span_text(liqmap.first_ts, liqmap.last_ts)
    spec = liqmap.spec
    return (
        f"{liqmap.symbol} liquidation {chart}  |  {span}\n"
        f"mode {spec.mode} ({threshold_text(liqmap)})  |  model {spec.model}  |  "
        f"bin {liqmap.bin_size:g} {quote_of(liqmap.symbol)}  |  last price {liqmap.current_price:,.6g}"
    )


@dataclass
class Scatter:
    t: np.ndarray
    price: np.ndarray
    amount: np.ndarray
    total: int  # trades on this side; the largest MAX_SCATTER_PER_SIDE are drawn


@dataclass
class ChartData:
    """Everything the drawings need, as plain arrays (picklable, no Polars)."""

    titles: dict[str, str]
    quote: str
    currency: str  # of the amounts: USD for USD/USDT/USDC quotes, else the quote (ETH)
    current_price: float
    bin_size: float
    sweep: bool
    tiers: list[str]
    centres: np.ndarray  # bin centres with any amount
    per_tier: dict[str, np.ndarray]  # amount per bin centre and tier (both sides)
    path_t: np.ndarray
    path_low: np.ndarray
    path_high: np.ndarray
    path_close: np.ndarray
    scatter: dict[str, Scatter]
    cum_long: tuple[np.ndarray, np.ndarray]  # (price, cumulative USD) moving down from the price
    cum_short: tuple[np.ndarray, np.ndarray]
    heatmap: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None)


def chart_data(liqmap: LiqMap, charts: list[str]) -> ChartData:
    import polars as pl  # here: a chart worker is forked before the map's modules are imported

    bins = liqmap.bins
    centres, per_tier = np.array([]), {}
    if bins.height:
        wide = (
            bins.group_by("price_low", "tier")
            .agg(pl.col("amount_usd").sum())
            .pivot(on="tier", index="price_low", values="amount_usd")
            .sort("price_low")
            .fill_null(0.0)
        )
        centres = wide["price_low"].to_numpy() + liqmap.bin_size / 2
        per_tier = {t: wide[t].to_numpy() for t in liqmap.tier_labels if t in wide.columns}
    scatter = {}
    for side in ("long", "short"):
        rows = liqmap.selected.filter(pl.col("side") == side)
        shown = (
            rows.top_k(MAX_SCATTER_PER_SIDE, by="amount")
            if rows.height > MAX_SCATTER_PER_SIDE
            else rows
        )
        scatter[side] = Scatter(
            shown["t"].to_numpy(),
            shown["price"].to_numpy(),
            shown["amount"].to_numpy(),
            rows.height,
        )
    summary = liqmap.summary()
    longs = summary.filter(pl.col("long_usd") > 0)
    shorts = summary.filter(pl.col("short_usd") > 0).sort("price_low")
    # Steps from the current price: the amount liquidated if the price moves to x.
    cum_long = (
        np.concatenate([[liqmap.current_price], longs["price_low"].to_numpy()]),
        np.concatenate([[0.0], longs["cum_long_usd"].to_numpy()]),
    )
    cum_short = (
        np.concatenate([[liqmap.current_price], shorts["price_high"].to_numpy()]),
        np.concatenate([[0.0], shorts["short_usd"].cum_sum().to_numpy()]),
    )
    path = liqmap.path
    return ChartData(
        titles={c: title(liqmap, c) for c in charts},
        quote=quote_of(liqmap.symbol),
        currency=liqmap.currency,
        current_price=liqmap.current_price,
        bin_size=liqmap.bin_size,
        sweep=liqmap.spec.sweep,
        tiers=liqmap.tier_labels,
        centres=centres,
        per_tier=per_tier,
        path_t=path["t"].to_numpy(),
        path_low=path["low"].to_numpy(),
        path_high=path["high"].to_numpy(),
        path_close=path["close"].to_numpy(),
        scatter=scatter,
        cum_long=cum_long,
        cum_short=cum_short,
        heatmap=liqmap.heatmap() if "heatmap" in charts else None,
    )


# --- drawing (matplotlib imported here only) ---------------------------------------------------


def _mpl() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import colormaps, dates
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    return type(
        "mpl",
        (),
        {
            "colormaps": colormaps,
            "dates": dates,
            "FigureCanvasAgg": FigureCanvasAgg,
            "PolyCollection": PolyCollection,
            "PowerNorm": PowerNorm,
            "Figure": Figure,
            "FuncFormatter": FuncFormatter,
            "rc_context": matplotlib.rc_context,
        },
    )


def _dt(ms: np.ndarray) -> np.ndarray:
    return np.asarray(ms, dtype="int64").astype("datetime64[ms]")


def _tier_colors(mpl: Any, labels: list[str]) -> dict[str, tuple]:
    cmap = mpl.colormaps["plasma"]
    n = max(len(labels) - 1, 1)
    return {label: cmap(0.1 + 0.75 * i / n) for i, label in enumerate(labels)}


def _bars(mpl: Any, ax, data: ChartData, *, horizontal: bool) -> np.ndarray:
    """Stacked bars by tier, centred on their bins, one PolyCollection per tier: thousands of
    ``bar()`` patches cost a second to add and draw, a collection a few milliseconds. Returns
    the stack heights."""
    colors = _tier_colors(mpl, data.tiers)
    base = np.zeros(data.centres.size)
    half = data.bin_size * 0.46
    for tier, amounts in data.per_tier.items():
        keep = amounts > 0
        c, lo, hi = data.centres[keep], base[keep], base[keep] + amounts[keep]
        across = np.stack([c - half, c - half, c + half, c + half], axis=1)
        along = np.stack([lo, hi, hi, lo], axis=1)
        xy = np.stack([along, across], axis=2) if horizontal else np.stack([across, along], axis=2)
        ax.add_collection(
            mpl.PolyCollection(xy, facecolors=colors[tier], edgecolors="none", label=tier)
        )
        base = base + amounts
    ax.autoscale_view()
    return base


def _save(mpl: Any, fig, path: Path) -> Path:
    """Write through a temp file and a rename: a viewer refreshing a --live chart never sees
    half a PNG."""
    mpl.FigureCanvasAgg(fig)
    tmp = path.with_name(f".{path.name}.part")
    # Unhinted glyphs: the same text at 100 dpi, ~15% less drawing time per chart.
    try:
        with mpl.rc_context({"text.hinting": "no_hinting"}):
            fig.savefig(tmp, dpi=DPI, format="png", pil_kwargs={"compress_level": 1})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no .part left behind (a directory in the way, a full disk)
        raise
    return path


def _date_axis(mpl: Any, ax) -> None:
    date_axis(mpl.dates, ax)


def date_axis(mdates: Any, ax) -> None:
    """Concise dates, but ticks a few seconds apart read ``00:00:10``, never a bare ``10``
    that looks like an hour."""
    locator = mdates.AutoDateLocator()
    formatter = mdates.ConciseDateFormatter(locator)
    formatter.formats = [*formatter.formats[:5], "%H:%M:%S"]
    formatter.zero_formats = [*formatter.zero_formats[:5], "%H:%M:%S"]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(formatter)


def _price_limits(data: ChartData) -> tuple[float, float]:
    lows = [float(data.path_low.min()), data.current_price]
    highs = [float(data.path_high.max()), data.current_price]
    if data.centres.size:
        lows.append(float(data.centres.min()) - data.bin_size)
        highs.append(float(data.centres.max()) + data.bin_size)
    lo, hi = min(lows), max(highs)
    pad = (hi - lo) * 0.03 or data.current_price * 0.01
    return lo - pad, hi + pad


def draw_map(data: ChartData, path: Path) -> Path:
    mpl = _mpl()
    fig = mpl.Figure(figsize=(15, 9))
    fig.subplots_adjust(left=0.06, right=0.92, bottom=0.08, top=0.91, wspace=0.04)
    ax_price, ax_bars = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 2]})

    times = _dt(data.path_t)
    ax_price.fill_between(
        times, data.path_low, data.path_high, color="0.75", lw=0, label="price range"
    )
    ax_price.plot(times, data.path_close, color=PRICE_COLOR, lw=0.9, label="price")
    biggest = max(
        (float(s.amount.max()) for s in data.scatter.values() if s.amount.size), default=1.0
    )
    for side, color, marker in (("long", LONG_COLOR, "^"), ("short", SHORT_COLOR, "v")):
        s = data.scatter[side]
        if s.t.size == 0:
            continue
        label = f"{'buy -> long' if side == 'long' else 'sell -> short'} ({s.total:,} trades"
        label += f", largest {s.t.size:,} shown)" if s.t.size < s.total else ")"
        ax_price.scatter(
            _dt(s.t),
            s.price,
            s=15 + 185 * np.sqrt(s.amount / biggest),
            facecolors="none",
            edgecolors=color,
            marker=marker,
            linewidths=0.9,
            label=label,
        )
    ax_price.set_xlabel("time (UTC)")
    ax_price.set_ylabel(f"price [{data.quote}]")
    _date_axis(mpl, ax_price)
    ax_price.legend(loc="upper left", fontsize=8)
    ax_price.grid(alpha=0.3)

    _bars(mpl, ax_bars, data, horizontal=True)
    for ax in (ax_price, ax_bars):
        ax.axhline(data.current_price, color="k", ls="--", lw=1.2)
    ax_bars.annotate(
        f"last {data.current_price:,.6g}",
        xy=(1.0, data.current_price),
        xycoords=("axes fraction", "data"),
        xytext=(-4, 4),
        textcoords="offset points",
        ha="right",
        fontsize=9,
        fontweight="bold",
    )
    # Above the axes, not inside: inside, the last-price label (anywhere on the right edge)
    # could land on them.
    for x, ha, text, color in (
        (0.0, "left", "short liquidations above the last price", SHORT_COLOR),
        (1.0, "right", "long liquidations below it", LONG_COLOR),
    ):
        ax_bars.text(
            x, 1.005, text, transform=ax_bars.transAxes, ha=ha, va="bottom", color=color,
            fontsize=9,
        )  # fmt: skip
    ax_bars.set_xlabel(
        f"estimated liquidation amount per {data.bin_size:g} {data.quote} bin [{data.currency}]"
    )
    ax_bars.xaxis.set_major_formatter(mpl.FuncFormatter(amount_formatter(data.currency)))
    ax_bars.set_xlim(left=0)
    ax_bars.grid(axis="x", alpha=0.3)
    if data.per_tier:
        ax_bars.legend(title="leverage", loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    else:
        ax_bars.text(
            0.5, 0.5, "no liquidation levels left", transform=ax_bars.transAxes, ha="center"
        )
        ax_bars.set_xticks([])
    ax_price.set_ylim(*_price_limits(data))
    fig.suptitle(data.titles["map"], fontsize=11)
    return _save(mpl, fig, path)


def draw_depth(data: ChartData, path: Path) -> Path:
    mpl = _mpl()
    fig = mpl.Figure(figsize=(14, 8))
    fig.subplots_adjust(left=0.07, right=0.92, bottom=0.08, top=0.9)
    ax = fig.subplots()
    stacked = _bars(mpl, ax, data, horizontal=False)
    ax.set_xlabel(f"price [{data.quote}]")
    ax.set_ylabel(f"liquidation amount per {data.bin_size:g} {data.quote} bin [{data.currency}]")
    ax.yaxis.set_major_formatter(mpl.FuncFormatter(amount_formatter(data.currency)))
    ax.grid(alpha=0.3)

    cum = ax.twinx()
    if data.cum_long[0].size > 1:
        cum.step(
            *data.cum_long,
            where="post",
            color=LONG_COLOR,
            lw=2,
            label="cumulative longs (price falls)",
        )
    if data.cum_short[0].size > 1:
        cum.step(
            *data.cum_short,
            where="post",
            color=SHORT_COLOR,
            lw=2,
            label="cumulative shorts (price rises)",
        )
    cum.set_ylabel(f"cumulative liquidation amount from the current price [{data.currency}]")
    cum.yaxis.set_major_formatter(mpl.FuncFormatter(amount_formatter(data.currency)))
    # Headroom above the tallest bar and curve for the legend.
    top = max(float(data.cum_long[1][-1]), float(data.cum_short[1][-1]), 1.0)
    cum.set_ylim(0, top * 1.2)
    ax.set_ylim(0, (float(stacked.max()) if stacked.size else 1.0) * 1.2)
    ax.axvline(
        data.current_price, color="k", ls="--", lw=1.2, label=f"last {data.current_price:,.6g}"
    )
    if data.centres.size:
        lo = min(float(data.centres.min()), data.current_price) - data.bin_size
        hi = max(float(data.centres.max()), data.current_price) + data.bin_size
        ax.set_xlim(lo, hi)
    handles, labels = ax.get_legend_handles_labels()
    handles2, labels2 = cum.get_legend_handles_labels()
    ax.legend(handles + handles2, labels + labels2, loc="upper center", fontsize=8, ncols=2)
    if not data.per_tier:
        ax.text(0.5, 0.5, "no liquidation levels left", transform=ax.transAxes, ha="center")
        ax.set_yticks([])
        cum.set_yticks([])
    fig.suptitle(data.titles["depth"], fontsize=11)
    return _save(mpl, fig, path)


def draw_heatmap(data: ChartData, path: Path) -> Path:
    mpl = _mpl()
    fig = mpl.Figure(figsize=(15, 8))
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08, top=0.9)
    ax = fig.subplots()
    assert data.heatmap is not None
    times, edges, matrix = data.heatmap
    peak = float(matrix.max()) if matrix.size else 0.0
    mesh = ax.pcolormesh(
        _dt(times),
        edges,
        np.ma.masked_less_equal(matrix, 0),
        cmap=mpl.colormaps["inferno"],
        norm=mpl.PowerNorm(0.5, vmin=0, vmax=peak or 1.0),
        shading="flat",
    )
    ax.set_facecolor("#0b0b1e")
    ax.plot(_dt(data.path_t), data.path_close, color="#7fffd4", lw=0.9, label="price")
    ax.axhline(
        data.current_price, color="w", ls="--", lw=1, label=f"last {data.current_price:,.6g}"
    )
    bar = fig.colorbar(mesh, ax=ax, pad=0.01)
    bar.set_label(
        f"notional at risk per {edges[1] - edges[0]:g} {data.quote} bin [{data.currency}]"
    )
    bar.formatter = mpl.FuncFormatter(amount_formatter(data.currency))
    bar.update_ticks()
    ax.set_xlabel("time (UTC)")
    ax.set_ylabel(f"price [{data.quote}]")
    _date_axis(mpl, ax)
    ax.legend(loc="upper left", fontsize=8)
    note = (
        "levels end where the price swept them" if data.sweep else "compat model: levels never end"
    )
    ax.text(
        0.99, 0.01, note, transform=ax.transAxes, ha="right", va="bottom", color="w", fontsize=8
    )
    fig.suptitle(data.titles["heatmap"], fontsize=11)
    return _save(mpl, fig, path)


_DRAW = {"map": draw_map, "depth": draw_depth, "heatmap": draw_heatmap}


def chart_filename(liqmap: LiqMap, chart: str, *, live: bool = False) -> str:
    spec = liqmap.spec
    if live:
        # One file per chart, rewritten on each refresh.
        return f"{liqmap.symbol}_live_{spec.mode}_{spec.threshold:g}_{spec.model}_{chart}.png"
    start = iso_ms(liqmap.first_ts)[:16].replace(":", "").replace("-", "")
    end = iso_ms(liqmap.last_ts)[:16].replace(":", "").replace("-", "")
    return f"{liqmap.symbol}_{start}_{end}_{spec.mode}_{spec.threshold:g}_{spec.model}_{chart}.png"


def _prepare_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LiqError(f"cannot write charts to {out_dir}: {exc.strerror or exc}") from None


def write_charts(
    liqmap: LiqMap,
    charts: list[str],
    out_dir: Path,
    *,
    live: bool = False,
    worker: ChartWorker | None = None,
) -> list[Path]:
    """Draw each requested chart into ``out_dir``; returns the PNG paths. With a ``worker``, the
    charts are drawn there, concurrently (see :class:`ChartWorker`); otherwise here, in turn."""
    _prepare_dir(out_dir)
    data = chart_data(liqmap, charts)
    paths = [out_dir / chart_filename(liqmap, c, live=live) for c in charts]
    if worker is not None:
        worker.draw(charts, data, paths)
        return paths
    try:
        for chart, path in zip(charts, paths, strict=True):
            _DRAW[chart](data, path)
    except OSError as exc:
        raise LiqError(f"cannot write charts to {out_dir}: {exc.strerror or exc}") from None
    return paths


class ChartWorker:
    """A forked process that imports matplotlib while this one builds the map, then draws the
    charts: the first itself and each other one in a child forked from it, at the same time
    (drawing is single-threaded Python, so threads would not help).

    Workers never touch Polars (its thread pool does not survive a fork): they get
    :class:`ChartData` (plain arrays) through a pipe, and leave with ``os._exit``. A renderer's
    error comes back through a second pipe. ``close()`` (idempotent) stops a worker that was
    never given charts. Only where ``os.fork`` exists: see :func:`start_worker`.
    """

    def __init__(self) -> None:
        job_read, self._job_write = os.pipe()
        self._result_read, result_write = os.pipe()
        # Ctrl-C is held back until both sides of the fork are set up: it must neither lose the
        # worker's pid here nor run this process's code in the worker.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        self._pid: int | None = os.fork()
        if self._pid == 0:
            _serve(job_read, result_write, (self._job_write, self._result_read), mask)
        os.close(job_read)
        os.close(result_write)
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        except BaseException:  # the Ctrl-C held back
            self.close()
            raise

    def draw(self, charts: list[str], data: ChartData, paths: list[Path]) -> None:
        """Hand the charts over and wait until they are written; LiqError if any failed."""
        payload = pickle.dumps((charts, data, paths), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            with os.fdopen(self._job_write, "wb") as job:
                job.write(payload)
        except BrokenPipeError:
            pass  # the worker died early: its status below says why
        finally:
            self._job_write = -1
        message = self._finish()
        if message is not None:
            raise LiqError(f"cannot draw charts: {message}")

    def close(self) -> None:
        if self._job_write >= 0:
            os.close(self._job_write)
            self._job_write = -1
            if self._pid is not None:
                # Never given a job, it has only been importing: stop it now rather than after
                # the import (a usage error or a failed map ends the command at once).
                os.kill(self._pid, signal.SIGKILL)
        self._finish()

    def _finish(self) -> str | None:
        """Reap the worker; its error message, or None when it succeeded."""
        if self._pid is None:
            return None
        pid, self._pid = self._pid, None  # reaped once, even if Ctrl-C interrupts the read
        try:
            with os.fdopen(self._result_read, "rb") as result:
                message = result.read().decode(errors="replace")
        finally:
            _, status = os.waitpid(pid, 0)
        if status != 0 or message:
            # Each renderer writes one line per error; the first is enough.
            code = os.waitstatus_to_exitcode(status)
            ended = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
            return message.partition("\n")[0] or f"chart renderer {ended}"
        return None


def start_worker() -> ChartWorker | None:
    """A :class:`ChartWorker`, or None where processes cannot fork (charts are drawn in turn)."""
    return ChartWorker() if hasattr(os, "fork") else None


def _serve(
    job_read: int, result_write: int, parent_ends: tuple[int, int], mask: set[signal.Signals]
) -> None:
    """The worker: import matplotlib, wait for the job, draw it. Never returns."""
    status = 1
    try:
        for fd in parent_ends:
            os.close(fd)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        # A short-lived process that ends with os._exit: cyclic garbage collection would only
        # cost time (~10% of the matplotlib import).
        gc.disable()
        _mpl()
        with os.fdopen(job_read, "rb") as job:
            payload = job.read()
        if payload:
            charts, data, paths = pickle.loads(payload)
            status = _draw_all(charts, data, paths, result_write)
        else:
            status = 0  # closed without a job: the map failed, nothing to draw
    except BaseException as exc:  # the worker must never return into the parent's code
        os.write(result_write, _error_text(exc).encode())
    finally:
        os._exit(status)


def _draw_all(charts: list[str], data: ChartData, paths: list[Path], result_write: int) -> int:
    children: list[int] = []
    status = 0
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # as in ChartWorker()
    try:
        for chart, path in zip(charts[1:], paths[1:], strict=True):
            pid = os.fork()
            if pid == 0:
                _child_draw(chart, data, path, result_write, mask)
            children.append(pid)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        try:
            _DRAW[charts[0]](data, paths[0])
        except Exception as exc:
            os.write(result_write, _error_text(exc, paths[0]).encode())
            status = 1
    finally:  # even on Ctrl-C: no child outlives the worker
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for pid in children:
            _, child_status = os.waitpid(pid, 0)
            status = status or int(child_status != 0)
    return status


def _error_text(exc: BaseException, path: Path | None = None) -> str:
    """One line (pipe writes this short are atomic, so renderers' lines never interleave)."""
    if isinstance(exc, OSError) and path is not None:
        text = f"cannot write {path}: {exc.strerror or exc}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:1000] + "\n"


def _child_draw(
    chart: str, data: ChartData, path: Path, result_write: int, mask: set[signal.Signals]
) -> None:
    status = 1
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        _DRAW[chart](data, path)
        status = 0
    except BaseException as exc:  # the child must never return into the parent's code
        os.write(result_write, _error_text(exc, path).encode())
    finally:
        os._exit(status)
