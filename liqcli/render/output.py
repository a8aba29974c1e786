"""The one rendering helper behind every command's ``--format``.

``table`` (tabulate) for people, ``json`` (one document on stdout, nothing else), ``csv`` and, for
streaming commands, ``jsonl`` (one object per line, flushed per event).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from liqcli.render.safe import escape_control

if TYPE_CHECKING:
    import polars as pl


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


class StreamFormat(StrEnum):
    dashboard = "dashboard"
    jsonl = "jsonl"


def _iso(dt: datetime) -> str:
    dt = dt.astimezone(UTC) if dt.tzinfo else dt.replace(tzinfo=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _plain(value: Any) -> Any:
    """JSON/CSV-friendly scalar: datetimes as ISO-8601 UTC with ms, floats unchanged."""
    if isinstance(value, datetime):
        return _iso(value)
    return value


def _cell(value: Any, floatfmt: str | None) -> Any:
    """Table cell text: big amounts with thousands separators, small ratios with enough digits."""
    if isinstance(value, str):
        return escape_control(value)  # venue strings never send escape codes to the terminal
    if not isinstance(value, float) or value != value:  # non-floats and NaN unchanged
        return "" if value is None else value
    if floatfmt:
        return format(value, floatfmt)
    if abs(value) >= 1000:
        return f"{value:,.2f}"
    text = f"{value:.6g}"
    return text if any(c in text for c in ".en") else text + ".0"  # 7.0 stays visibly a float


def rows_of(data: pl.DataFrame | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    if not isinstance(data, Sequence):  # a DataFrame (Polars is not imported here: startup time)
        data = data.to_dicts()
    return [{k: _plain(v) for k, v in row.items()} for row in data]


def dumps(obj: Any) -> bytes:
    return orjson.dumps(
        obj, default=_plain, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
    )


def render(
    data: pl.DataFrame | Sequence[dict[str, Any]],
    fmt: str,
    *,
    document: dict[str, Any] | None = None,
    rows_key: str | None = "rows",
    floatfmt: str | None = None,
    out: TextIO | None = None,
) -> None:
    """Print rows as a table, JSON or CSV.

    For JSON the rows are the whole document (a list) unless ``document`` is given, in which case they
    go under ``document[rows_key]`` (e.g. ``liq map``'s ``{"symbol": …, "bins": [...]}``); with
    ``rows_key=None`` the document is printed as it is.
    """
    out = out or sys.stdout
    rows = rows_of(data)
    if fmt == Format.json:
        if document is None:
            payload: Any = rows
        else:
            payload = document if rows_key is None else {**document, rows_key: rows}
        out.write(dumps(payload).decode() + "\n")
    elif fmt == Format.csv:
        columns = (
            list(rows[0])
            if rows
            else (list(data.columns) if not isinstance(data, Sequence) else [])
        )
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        out.write(buf.getvalue())
    elif fmt == Format.table:
        if not rows:
            out.write("(no rows)\n")
        else:
            cells = [{k: _cell(v, floatfmt) for k, v in row.items()} for row in rows]
            # numparse off: strings such as symbols or ids are never reinterpreted as numbers.
            numeric = [
                all(isinstance(r.get(k), int | float) or r.get(k) is None for r in rows)
                for k in rows[0]
            ]
            align = ["right" if n else "left" for n in numeric]
            from tabulate import tabulate  # here: ~40 ms of imports that json/csv never need

            out.write(tabulate(cells, headers="keys", disable_numparse=True, colalign=align) + "\n")
    else:
        raise ValueError(f"unsupported format {fmt!r}")
    out.flush()


def write_jsonl(objs: Iterable[dict[str, Any]], out: TextIO | None = None) -> None:
    """One JSON object per line, flushed so a downstream ``| jq`` sees events live."""
    out = out or sys.stdout
    for obj in objs:
        out.write(dumps(obj).decode() + "\n")
    out.flush()


def detach_stdout(out: TextIO) -> None:
    """After a BrokenPipeError (``liq … --format jsonl | head``): point the stream's file descriptor
    at /dev/null so the final flush at exit cannot raise again, and the command stops quietly."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
