"""User-supplied instants and durations (``--start``, ``--since``, ``--end``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from liqcli.core.timeutil import duration_ms, parse_time
from liqcli.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
NOW = 1_764_633_600_000  # 2025-12-02T00:00:00Z
DAY = 86_400_000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01", 1_767_225_600_000),
        ("2026-01-01T12:00", 1_767_268_800_000),
        ("2026-01-01T12:00:00Z", 1_767_268_800_000),
        ("2026-01-01T13:00:00+01:00", 1_767_268_800_000),
        ("1767225600", 1_767_225_600_000),  # epoch seconds
        ("1767225600000", 1_767_225_600_000),  # epoch ms
        ("now", NOW),
        ("90m", NOW - 90 * 60_000),
        ("36h", NOW - 36 * 3_600_000),
        ("7d", NOW - 7 * DAY),
        ("2w", NOW - 14 * DAY),
        ("1y", NOW - 365 * DAY),
        ("1.5d", NOW - 36 * 3_600_000),
    ],
)
def test_parse_time(text: str, expected: int) -> None:
    assert parse_time(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["", "1mo", "yesterday", "2026-13-01", "-7d", "7 days"])
def test_parse_time_refuses_with_one_line(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_time(text, now=NOW)
    assert "\n" not in str(info.value)


def test_durations() -> None:
    assert duration_ms("1y") == 365 * DAY
    assert duration_ms("30d") == 30 * DAY
    with pytest.raises(UsageError, match="s/m/h/d/w/y"):
        duration_ms("3mo")
    with pytest.raises(UsageError, match="positive"):
        duration_ms("0d")


def _documented_times() -> set[str]:
    """Every value given to --start, --end or --since in the README and the commands' help."""
    texts = [(REPO / "README.md").read_text()]
    texts += [p.read_text() for p in sorted((REPO / "liqcli" / "cli").glob("*.py"))]
    found = set()
    for text in texts:
        for line in text.splitlines():
            if "liq " not in line:  # examples only, not option definitions
                continue
            found.update(re.findall(r"--(?:start|end|since) ([0-9][0-9A-Za-z:.\-]*)", line))
    return found


def test_every_documented_time_parses() -> None:
    values = _documented_times()
    assert {"1y", "30d", "2024-03-01"} <= values  # the scan sees the examples
    for value in sorted(values):
        parse_time(value, now=NOW)
