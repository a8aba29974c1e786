"""Readers for recorded exchange sessions in cryptofeed's capture format, and their replay
through the depth parser and L2Book.

- WebSocket file: a first line ``<url> <-> <unix s>``, then ``<unix s>: <json frame>`` per frame;
- HTTP file: ``<url> -> <unix s>: <json body>`` per response (here: ``/fapi/v1/depth`` snapshots).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from liqcli.core.events import BookDelta, BookTop
from liqcli.exchanges.binance import stream as binance
from liqcli.trading.book import L2Book


def ws_frames(path: Path) -> list[tuple[float, Any]]:
    lines = Path(path).read_text().splitlines()
    out = []
    for line in lines[1:]:  # the first line names the connection
        if not line.strip():
            continue
        stamp, _, payload = line.partition(": ")
        out.append((float(stamp), orjson.loads(payload)))
    return out


def http_responses(path: Path) -> list[tuple[str, float, Any]]:
    out = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        url, _, rest = line.partition(" -> ")
        stamp, _, payload = rest.partition(": ")
        out.append((url, float(stamp), orjson.loads(payload)))
    return out


@dataclass
class Replay:
    books: dict[str, L2Book] = field(default_factory=dict)
    deltas: dict[str, int] = field(default_factory=dict)  # diffs seen per symbol
    tops: int = 0  # bookTickers received once the symbol's book was loaded
    tops_ahead: int = 0  # of them, those whose u is past the last applied depth u


def replay_depth(ws_path: Path, http_path: Path) -> Replay:
    """Each symbol's book: its captured snapshot loaded once it was received, every diff
    received up to then buffered (as a live client does), then the stream applied in order."""
    snapshots = {}
    for url, stamp, payload in http_responses(http_path):
        symbol = parse_qs(urlsplit(url).query)["symbol"][0]
        snapshots[symbol] = (stamp, binance.parse_depth_snapshot(payload, symbol))
    replay = Replay(books={s: L2Book(s, "binance") for s in snapshots})
    buffers: dict[str, list[BookDelta]] = {s: [] for s in snapshots}
    for stamp, frame in ws_frames(ws_path):
        for event in binance.parse_market_message(frame):
            symbol = event.symbol
            if symbol not in snapshots:
                continue
            book = replay.books[symbol]
            if isinstance(event, BookTop) and book.update_id is not None:
                replay.tops += 1
                replay.tops_ahead += event.update_id > book.update_id
            if not isinstance(event, BookDelta):
                continue
            replay.deltas[symbol] = replay.deltas.get(symbol, 0) + 1
            received, snapshot = snapshots[symbol]
            if book.counters.loads == 0:
                buffers[symbol].append(event)
                if stamp < received:
                    continue
                book.load(snapshot)
                for delta in buffers.pop(symbol):
                    book.apply(delta)
                continue
            book.apply(event)
    return replay
