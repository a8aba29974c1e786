"""Venue strings made safe for a terminal: control characters shown as escapes, never sent.

A symbol is whatever a venue (or a hostile server) sends. Printed raw, ``\\x1b[2J`` clears the
screen and a bidi override reorders what follows; these become visible ``\\x1b`` / ``\\u202e``
text instead. No third-party imports: the table formatter uses this at start-up.
"""

from __future__ import annotations

# C0 controls, DEL, C1 controls, and the invisible bidi / line-separator characters.
_CODEPOINTS = [
    *range(0x00, 0x20),
    *range(0x7F, 0xA0),
    0x061C,
    0x200E,
    0x200F,
    0x2028,
    0x2029,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
]
_ESCAPES = {c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _CODEPOINTS}


def escape_control(value: object) -> str:
    """``str(value)`` with every control character replaced by its visible escape."""
    return str(value).translate(_ESCAPES)
