"""Time parsing and formatting shared by every command: ms epochs inside, ISO-8601 UTC outside."""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime, timedelta

from liqcli.errors import UsageError

PERIODS = ("5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d")
# Binance klines also come in 1m and 3m; the /futures/data ratio series start at 5m.
KLINE_PERIODS = ("1m", "3m", *PERIODS)
# y: 365 days, as the metrics annualise (README "liq backtest"); months have no fixed length
_UNIT_MS = {
    "s": 1_000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 604_800_000,
    "y": 31_536_000_000,
}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdwy])\s*$")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def duration_ms(text: str) -> int:
    """``'30d'`` -> milliseconds. Raises UsageError on anything else."""
    m = _DURATION_RE.match(str(text))
    if not m:
        raise UsageError(
            f"invalid duration {text!r}: expected a number and a unit s/m/h/d/w/y, e.g. 30d"
        )
    value = float(m.group(1)) * _UNIT_MS[m.group(2)]
    if value <= 0:
        raise UsageError(f"invalid duration {text!r}: must be positive")
    return int(value)


def period_ms(period: str, *, klines: bool = False) -> int:
    """A Binance data period (``5m`` … ``1d``; klines also ``1m``, ``3m``) in milliseconds."""
    allowed = KLINE_PERIODS if klines else PERIODS
    if period not in allowed:
        if period in KLINE_PERIODS:
            raise UsageError(
                f"period {period!r} exists for klines only (--dataset klines): the other "
                f"series start at 5m; choose one of {', '.join(PERIODS)}"
            )
        raise UsageError(f"invalid period {period!r}: choose one of {', '.join(allowed)}")
    return duration_ms(period)


def parse_time(text: str, *, now: int | None = None) -> int:
    """A user-supplied instant -> ms epoch (UTC).

    Accepts ISO dates (``2026-11-01``), datetimes (``2026-11-01T12:00``, ``...Z``, offsets),
    epoch seconds or milliseconds, ``now`` and relative durations (``7d`` = 7 days ago; ``1y`` = 365 days).
    """
    s = str(text).strip()
    if not s:
        raise UsageError("empty date")
    if s == "now":
        return now_ms() if now is None else now
    if _DURATION_RE.match(s):
        return (now_ms() if now is None else now) - duration_ms(s)
    if s.isdigit():
        v = int(s)
        return v if v > 10_000_000_000 else v * 1000
    try:
        if len(s) == 10 and s[4] == "-":
            d = date.fromisoformat(s)
            return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"invalid date {text!r}: use YYYY-MM-DD, an ISO datetime, epoch ms, or e.g. 7d"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def iso_ms(ts_ms: int) -> str:
    """ms epoch -> ``2026-11-21T10:00:00.123Z``."""
    dt = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def day_floor(ts_ms: int) -> int:
    return ts_ms - ts_ms % 86_400_000


def days_between(start_ms: int, end_ms: int) -> list[date]:
    """UTC calendar days touched by [start, end)."""
    first = datetime.fromtimestamp(start_ms / 1000, tz=UTC).date()
    last = datetime.fromtimestamp(max(start_ms, end_ms - 1) / 1000, tz=UTC).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]
