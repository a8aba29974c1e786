"""The seed's order-flow signal, risk score and dynamic-leverage rules, as pure functions.

Signal (SEED-SYSTEMS.md, exactly; long shown, short mirrored with every sign flipped):
  OBI part      0.4·min(OBI, 1) if OBI > 0.3;  0.4·0.5·(OBI/0.3) if 0.1 < OBI ≤ 0.3;  else 0
  velocity part 0.2·min(v/0.1, 1) if v > 0.05 (v = OBI minus the previous reading), else 0
  volume part   0.3·tanh(SV/100) when positive (SV: signed volume of the last 100 trades, base)
  micro part    0.1·min(pressure, 1) when positive; pressure = (microprice − mid)/half-spread
                (the seed never filled it in; this is liq's definition)
  LONG when the long score > 0.6 and > the short score (mirror for SHORT); confidence = score.

Risk score (the seed names the inputs, not the weights; liq's rule): points for VPIN (≥ 0.7: 3,
≥ 0.5: 2, ≥ 0.3: 1), spread (> 10 bps: 2, > 5 bps: 1) and top-of-book depth (< 3: 2, < 10: 1,
base units); 0–1 SAFE, 2–3 WARNING, 4–5 DANGER, ≥ 6 CRITICAL. Stop-loss / take-profit on the
leveraged ROI: SAFE 5 %/8 %, WARNING 8 %/12 %, DANGER 10 %/15 %; CRITICAL opens nothing.

Dynamic leverage ``rules`` (the seed's plan, exactly): 5 × confidence multiplier (> 0.8: 1.5,
> 0.6: 1.2, else 0.8) × risk multiplier (SAFE 1.2, WARNING 0.7, CRITICAL 0.4; DANGER, which the
plan leaves out, 0.55: between its neighbours) × VPIN multiplier (1 − (VPIN − 0.3) above 0.3)
× volatility multiplier (0.8 if the ATR ratio > 2 %), clamped to 1–20.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from liqcli.analytics.orderflow import FeatureSnapshot

ENTRY_SCORE = 0.6
STRONG_REVERSE_SCORE = 0.7  # an opposite signal this strong closes a position ("strong reverse")


@dataclass(frozen=True, slots=True)
class Signal:
    direction: str  # LONG | SHORT | NEUTRAL
    confidence: float
    long_score: float
    short_score: float


def side_score(obi: float, velocity: float, signed_volume: float, pressure: float) -> float:
    """One side's score from features already signed for that side (positive = favourable)."""
    return (_book_part(obi, velocity) + _volume_part(signed_volume)) + _micro_part(pressure)


# The score's parts, added in this order (a part that does not apply adds 0.0, which changes
# nothing): the book-driven ones only change with a book reading, the volume one with a trade.
def _book_part(obi: float, velocity: float) -> float:
    score = 0.0
    if obi > 0.3:
        score += 0.4 * min(obi, 1.0)
    elif obi > 0.1:
        score += 0.4 * 0.5 * (obi / 0.3)
    if velocity > 0.05:
        score += 0.2 * min(velocity / 0.1, 1.0)
    return score


def _volume_part(signed_volume: float) -> float:
    return 0.3 * math.tanh(signed_volume / 100) if signed_volume > 0 else 0.0


def _micro_part(pressure: float) -> float:
    return 0.1 * min(pressure, 1.0) if pressure > 0 else 0.0


def score_columns(obi, velocity, signed_volume, pressure):
    """``side_score`` for whole numpy columns: (long scores, short scores), the same operations
    in the same order; only numpy's tanh may differ from ``math.tanh`` in the last bit (the
    backtest's gates allow for it: ``wake.SLACK``)."""
    import numpy as np

    def side(o, v, sv, p):
        book = np.where(o > 0.3, 0.4 * np.minimum(o, 1.0), np.where(o > 0.1, 0.2 * (o / 0.3), 0.0))
        book = book + np.where(v > 0.05, 0.2 * np.minimum(v / 0.1, 1.0), 0.0)
        volume = np.where(sv > 0, 0.3 * np.tanh(sv / 100), 0.0)
        return (book + volume) + np.where(p > 0, 0.1 * np.minimum(p, 1.0), 0.0)

    return side(obi, velocity, signed_volume, pressure), side(
        -obi, -velocity, -signed_volume, -pressure
    )


def decide(long: float, short: float) -> Signal:
    if long > ENTRY_SCORE and long > short:
        return Signal("LONG", long, long, short)
    if short > ENTRY_SCORE and short > long:
        return Signal("SHORT", short, long, short)
    return Signal("NEUTRAL", max(long, short), long, short)


def signal(f: FeatureSnapshot) -> Signal:
    obi = f.obi or 0.0
    long = side_score(obi, f.obi_velocity, f.signed_volume, f.micro_pressure)
    short = side_score(-obi, -f.obi_velocity, -f.signed_volume, -f.micro_pressure)
    return decide(long, short)


def reverses(long: float, short: float, is_long: bool) -> bool:
    """A strong reverse signal against a position: the opposite side scores above
    ``STRONG_REVERSE_SCORE`` and the signal is not the position's own direction."""
    against = short if is_long else long
    if not against > STRONG_REVERSE_SCORE:
        return False
    return decide(long, short).direction != ("LONG" if is_long else "SHORT")


class SignalCache:
    """``signal(f)`` for a stream of feature states, bit for bit, recomputing only the parts
    whose inputs changed: the book parts (OBI, velocity, microprice pressure) when a book reading
    changed them, the volume part when the signed volume did. Keyed on the values themselves, so
    it cannot go stale, whoever mutates the snapshot."""

    __slots__ = ("_book", "_signal", "_sv")

    def __init__(self) -> None:
        # obi, velocity, pressure, then per side (long, short): book part, micro part, and the
        # highest score the volume part could make
        self._book: tuple = (None, None, None, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0)
        self._sv: tuple = (None, 0.0, 0.0)  # signed volume, long part, short part
        self._signal: tuple = (None, None, None)  # long, short, Signal

    def _book_parts(self, f: FeatureSnapshot) -> tuple:
        obi, velocity, pressure = f.obi or 0.0, f.obi_velocity, f.micro_pressure
        book = self._book
        if obi != book[0] or velocity != book[1] or pressure != book[2]:
            long, short = _book_part(obi, velocity), _book_part(-obi, -velocity)
            micro_long, micro_short = _micro_part(pressure), _micro_part(-pressure)
            # The volume part is at most 0.3 and float addition is monotonic: no score of this
            # book reading can exceed these caps, whatever the signed volume.
            book = self._book = (
                obi,
                velocity,
                pressure,
                long,
                short,
                micro_long,
                micro_short,
                (long + 0.3) + micro_long,
                (short + 0.3) + micro_short,
            )
        return book

    def _with_volume(self, book: tuple, sv: float) -> tuple[float, float]:
        vol = self._sv
        if sv != vol[0]:
            vol = self._sv = (sv, _volume_part(sv), _volume_part(-sv))
        return (book[3] + vol[1]) + book[5], (book[4] + vol[2]) + book[6]

    def scores(self, f: FeatureSnapshot) -> tuple[float, float]:
        """(long score, short score) of ``f``."""
        return self._with_volume(self._book_parts(f), f.signed_volume)

    def reverses(self, f: FeatureSnapshot, is_long: bool) -> bool:
        """``reverses(*scores(f), is_long)``; the volume part is skipped when this book reading
        cannot make the opposite side strong enough, whatever the signed volume."""
        book = self._book
        if f.obi_velocity != book[1] or f.micro_pressure != book[2] or (f.obi or 0.0) != book[0]:
            book = self._book_parts(f)
        if not book[8 if is_long else 7] > STRONG_REVERSE_SCORE:  # the opposite side's cap
            return False
        long, short = self._with_volume(book, f.signed_volume)
        return reverses(long, short, is_long)

    def signal(self, f: FeatureSnapshot) -> Signal:
        long, short = self.scores(f)
        last = self._signal
        if long != last[0] or short != last[1]:
            last = self._signal = (long, short, decide(long, short))
        return last[2]


RISK_LEVELS = ("SAFE", "WARNING", "DANGER", "CRITICAL")
STOPS = {"SAFE": (0.05, 0.08), "WARNING": (0.08, 0.12), "DANGER": (0.10, 0.15)}


def risk_level(f: FeatureSnapshot) -> str:
    points = 0
    vpin = f.vpin or 0.0
    points += 3 if vpin >= 0.7 else 2 if vpin >= 0.5 else 1 if vpin >= 0.3 else 0
    spread = f.spread_bps or 0.0
    points += 2 if spread > 10 else 1 if spread > 5 else 0
    depth = f.top_depth
    if depth is not None:
        points += 2 if depth < 3 else 1 if depth < 10 else 0
    if points <= 1:
        return "SAFE"
    if points <= 3:
        return "WARNING"
    if points <= 5:
        return "DANGER"
    return "CRITICAL"


def size_fraction(confidence: float) -> float:
    """Fraction of the balance committed as margin, by confidence."""
    return 0.8 if confidence > 0.8 else 0.5 if confidence > 0.6 else 0.3


RISK_MULTIPLIER = {"SAFE": 1.2, "WARNING": 0.7, "DANGER": 0.55, "CRITICAL": 0.4}


@dataclass(frozen=True, slots=True)
class LeverageAdvice:
    leverage: float
    reason: str


def rules_leverage(confidence: float, risk: str, vpin: float | None, atr_ratio: float | None):
    conf_m = 1.5 if confidence > 0.8 else 1.2 if confidence > 0.6 else 0.8
    risk_m = RISK_MULTIPLIER[risk]
    v = vpin or 0.0
    vpin_m = 1 - (v - 0.3) if v > 0.3 else 1.0
    vol_m = 0.8 if (atr_ratio or 0.0) > 0.02 else 1.0
    raw = 5 * conf_m * risk_m * vpin_m * vol_m
    lev = max(1.0, min(20.0, raw))
    reason = (
        f"5 x conf {conf_m:g} x risk {risk_m:g} x vpin {vpin_m:.2f} x vol {vol_m:g}"
        f" = {raw:.2f}" + (f" -> {lev:g}" if lev != raw else "")
    )
    return LeverageAdvice(lev, reason)


class KellyAdviser:
    """``kelly``: half-Kelly leverage from the mode's own recent trades.

    With r_i each closed trade's return on its notional (pnl / (qty · entry)), the growth-optimal
    leverage for small returns is μ/σ²; half of it is used (full Kelly is too aggressive when μ
    and σ are estimated from few trades), clamped 1–20. Below ``min_trades`` trades, or with no
    edge (μ ≤ 0), the rules engine's answer is used and the reason says so."""

    def __init__(self, window: int = 50, min_trades: int = 10, fraction: float = 0.5) -> None:
        self.window = window
        self.min_trades = min_trades
        self.fraction = fraction
        self.returns: list[float] = []

    def record(self, pnl: float, notional: float) -> None:
        if notional > 0:
            self.returns.append(pnl / notional)
            del self.returns[: -self.window]

    def advise(self, f: FeatureSnapshot, confidence: float, risk: str) -> LeverageAdvice:
        fallback = rules_leverage(confidence, risk, f.vpin, f.atr_ratio)
        n = len(self.returns)
        if n < self.min_trades:
            return LeverageAdvice(
                fallback.leverage, f"kelly: {n} trades < {self.min_trades}; rules"
            )
        mean = sum(self.returns) / n
        var = sum((r - mean) ** 2 for r in self.returns) / (n - 1)
        if mean <= 0 or var <= 0:
            return LeverageAdvice(1.0, f"kelly: no edge in the last {n} trades (mean {mean:.4%})")
        raw = self.fraction * mean / var
        lev = max(1.0, min(20.0, raw))
        return LeverageAdvice(lev, f"kelly: {self.fraction:g} x {mean:.4%}/{var:.3g} = {raw:.2f}")


class VolTargetAdviser:
    """``vol_target``: the leverage that makes the position's annualised volatility the target.

    σ of one bar from the ATR ratio: for a random walk the expected bar range is ≈ 1.596 σ
    (2·√(2/π)), so σ_bar ≈ ATR ratio / 1.596; annualised × √(bars per year); leverage =
    target / σ_annual, clamped 1–20. Without an ATR yet, the rules engine's answer is used."""

    def __init__(self, target: float = 0.5, bar_ms: int = 60_000) -> None:
        self.target = target
        self.bars_per_year = 365 * 86_400_000 / bar_ms

    def advise(self, f: FeatureSnapshot, confidence: float, risk: str) -> LeverageAdvice:
        if not f.atr_ratio:
            fallback = rules_leverage(confidence, risk, f.vpin, f.atr_ratio)
            return LeverageAdvice(fallback.leverage, "vol_target: no ATR yet; rules")
        sigma = f.atr_ratio / 1.596 * math.sqrt(self.bars_per_year)
        raw = self.target / sigma
        lev = max(1.0, min(20.0, raw))
        return LeverageAdvice(lev, f"vol_target: {self.target:.0%} / {sigma:.0%} = {raw:.2f}")


def optimal_leverage(pnl: float, mae: float, stop_loss: float, max_leverage: float = 20.0) -> float:
    """Post-hoc risk-adjusted optimal leverage of one trade.

    The seed's definition picks the maximum whenever the ROI was positive, which rewards luck. liq
    takes the largest leverage at which the trade's maximum adverse excursion (``mae``, the worst
    move against it as a fraction of the entry price) would not have reached the stop-loss on
    leveraged ROI: stop_loss / mae, clamped 1..max; a losing trade's optimum is 1."""
    if pnl <= 0:
        return 1.0
    if mae <= 0:
        return max_leverage
    return max(1.0, min(max_leverage, stop_loss / mae))
