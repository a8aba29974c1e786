"""Reading and forging journal segments in the documented on-disk format (liqcli.store.journal:
frames of b"LIQJ", an 8-byte little-endian payload length, then an Arrow IPC stream), written
independently of the journal's own code so tests check the format, not the implementation."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import polars as pl

HEADER = struct.Struct("<4sQ")


def frame(rows: list[dict]) -> bytes:
    """One segment frame holding ``rows`` (time fields as epoch-ms ints)."""
    sink = io.BytesIO()
    pl.DataFrame(rows).write_ipc_stream(sink)
    payload = sink.getvalue()
    return HEADER.pack(b"LIQJ", len(payload)) + payload


def segment_rows(path: Path) -> list[dict]:
    """Every row of a segment written in the current format, in order."""
    data = path.read_bytes()
    rows: list[dict] = []
    offset = 0
    while offset < len(data):
        magic, length = HEADER.unpack_from(data, offset)
        assert magic == b"LIQJ", f"bad frame at byte {offset}"
        start = offset + HEADER.size
        rows += pl.read_ipc_stream(io.BytesIO(data[start : start + length])).to_dicts()
        offset = start + length
    return rows


def journal_rows(directory: Path) -> int:
    """Rows in every current-format segment under a journal directory."""
    return sum(len(segment_rows(p)) for p in directory.glob("*.arrows"))
