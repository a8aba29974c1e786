"""Field parsing shared by the venue parsers: venues send numbers as strings or JSON numbers."""

from __future__ import annotations

import math
from typing import Any

from liqcli.errors import DataError


def number(venue: str, value: Any, name: str, *, positive: bool = False) -> float:
    """``value`` as a finite float (``positive``: also > 0), else DataError naming venue and field."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{venue}: field {name!r} is not a number: {value!r}") from None
    if not math.isfinite(out):
        raise DataError(f"{venue}: field {name!r} is not finite: {value!r}")
    if positive and out <= 0:
        raise DataError(f"{venue}: field {name!r} must be a positive number: {value!r}")
    return out
