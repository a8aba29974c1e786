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
    score = 0.0
    if obi > 0.3:
        score += 0.4 * min(obi, 1.0)
    elif obi > 0.1:
        score += 0.4 * 0.5 * (obi / 0.3)
    if velocity > 0.05:
        score += 0.2 * min(velocity / 0.1, 1.0)
    if signed_volume > 0:
        score += 0.3 * math.tanh(signed_volume / 100)
    if pressure > 0:
        score += 0.1 * min(pressure, 1.0)
    return score


def signal(f: FeatureSnapshot) -> Signal:
    obi = f.obi or 0.0
    long = side_score(obi, f.obi_velocity, f.signed_volume, f.micro_pressure)
    short = side_score(-obi, -f.obi_velocity, -f.signed_volume, -f.micro_pressure)
    if long > ENTRY_SCORE and long > short:
        return Signal("LONG", long, long, short)
    if short > ENTRY_SCORE and short > long:
        return Signal("SHORT", short, long, short)
    return Signal("NEUTRAL", max(long, short), long, short)


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
