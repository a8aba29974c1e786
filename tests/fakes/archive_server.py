"""A fake data.binance.vision + public.bybit.com: a real HTTP server on 127.0.0.1 (port 0).

It serves files it builds from synthetic trades in the venues' real layouts: Binance daily
aggTrades / metrics zips (with or without header, ms or µs timestamps) with their ``.CHECKSUM``
siblings, and Bybit ``trading/{SYM}/{SYM}{day}.csv.gz``. Faults: unknown paths answer 404 (a
missing day), a checksum can be corrupted, ``fail(path, 503, 503)`` makes the next requests
for a path answer those statuses before the file (429/418 carry ``Retry-After: retry_after``, no
header when it is None), and ``trickle(path, delay_s)`` sends that file a byte at a time. Every
request is logged in ``log`` as ``(path, status, monotonic arrival time)``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import threading
import time
import zipfile
from collections import Counter
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import polars as pl

BINANCE_AGG_HEADER = (
    "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker"
)
METRICS_HEADER = (
    "create_time,symbol,sum_open_interest,sum_open_interest_value,count_toptrader_long_short_ratio,"
    "sum_toptrader_long_short_ratio,count_long_short_ratio,sum_taker_long_short_vol_ratio"
)
BYBIT_HEADER = "timestamp,symbol,side,size,price,tickDirection,trdMatchID,grossValue,homeNotional,foreignNotional"


def synthetic_trades(
    n: int, start_ms: int, *, seed: int = 7, price: float = 30_000.0, step_ms: int = 250
) -> pl.DataFrame:
    """A random-walk tape: trade_id, ts (ms int), price, qty, is_buyer_maker."""
    rng = np.random.default_rng(seed)
    prices = price * np.exp(np.cumsum(rng.normal(0, 4e-4, n)))
    return pl.DataFrame(
        {
            "trade_id": np.arange(1, n + 1, dtype=np.int64),
            "ts": start_ms + np.arange(n, dtype=np.int64) * step_ms,
            "price": np.round(prices, 1),
            "qty": np.round(rng.lognormal(-3.0, 1.5, n), 3) + 0.001,
            "is_buyer_maker": rng.random(n) < 0.5,
        }
    )


def binance_agg_csv(trades: pl.DataFrame, *, header: bool = True, micros: bool = False) -> bytes:
    ts = trades["ts"] * 1000 if micros else trades["ts"]
    out = trades.select(
        pl.col("trade_id").alias("agg_trade_id"),
        "price",
        pl.col("qty").alias("quantity"),
        pl.col("trade_id").alias("first_trade_id"),
        pl.col("trade_id").alias("last_trade_id"),
        ts.alias("transact_time"),
        pl.when(pl.col("is_buyer_maker"))
        .then(pl.lit("true"))
        .otherwise(pl.lit("false"))
        .alias("is_buyer_maker"),
    )
    return out.write_csv(include_header=header).encode()


def zip_bytes(member: str, content: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, content)
    return buf.getvalue()


def bybit_csv_gz(trades: pl.DataFrame, symbol: str) -> bytes:
    out = trades.select(
        (pl.col("ts") / 1000).alias("timestamp"),
        pl.lit(symbol).alias("symbol"),
        pl.when(pl.col("is_buyer_maker"))
        .then(pl.lit("Sell"))
        .otherwise(pl.lit("Buy"))
        .alias("side"),
        pl.col("qty").alias("size"),
        "price",
        pl.lit("ZeroPlusTick").alias("tickDirection"),
        pl.col("trade_id").cast(pl.String).alias("trdMatchID"),
        (pl.col("price") * pl.col("qty") * 1e8).round(0).alias("grossValue"),
        pl.col("qty").alias("homeNotional"),
        (pl.col("price") * pl.col("qty")).alias("foreignNotional"),
    )
    return gzip.compress(out.write_csv().encode())


class FakeArchiveServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: Counter[str] = Counter()
        self._faults: dict[str, list[int]] = {}
        self._trickle: dict[str, float] = {}
        self.retry_after: str | None = "0"
        self.fault_delay_s = 0.0  # faults answer this late (a burst is then surely concurrent)
        self.log: list[tuple[str, int, float]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0].lstrip("/")
                with server._lock:
                    server.hits[path] += 1
                    queued = server._faults.get(path)
                    status = queued.pop(0) if queued else None
                    body = server.files.get(path)
                    if status is None:
                        status = 200 if body is not None else 404
                    server.log.append((path, status, time.monotonic()))
                    trickle = server._trickle.get(path, 0.0) if status == 200 else 0.0
                if status != 200:
                    body = b"<Error><Code>NoSuchKey</Code></Error>" if status == 404 else b"busy"
                    time.sleep(server.fault_delay_s)
                self.send_response(status)
                if status in (429, 418) and server.retry_after is not None:
                    self.send_header("Retry-After", server.retry_after)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not trickle:
                    self.wfile.write(body)
                    return
                try:
                    for i in range(len(body)):
                        time.sleep(trickle)
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                except OSError:
                    return  # the client gave up

            def log_message(self, *args) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeArchiveServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def fail(self, path: str, *statuses: int) -> None:
        """The next requests for ``path`` answer these statuses, then the real file."""
        with self._lock:
            self._faults.setdefault(path, []).extend(statuses)

    def trickle(self, path: str, delay_s: float) -> None:
        """Serve ``path`` one byte every ``delay_s`` seconds (each read is quick, the whole not)."""
        with self._lock:
            self._trickle[path] = delay_s

    def add(
        self, path: str, content: bytes, *, checksum: bool = True, corrupt_checksum: bool = False
    ) -> None:
        self.files[path] = content
        if checksum:
            digest = hashlib.sha256(content).hexdigest()
            if corrupt_checksum:
                digest = digest[::-1]
            self.files[path + ".CHECKSUM"] = f"{digest}  {path.rsplit('/', 1)[-1]}\n".encode()

    def add_binance_agg_trades(
        self,
        symbol: str,
        day: date,
        trades: pl.DataFrame,
        *,
        header: bool = True,
        micros: bool = False,
        corrupt_checksum: bool = False,
    ) -> str:
        name = f"{symbol}-aggTrades-{day.isoformat()}"
        path = f"data/futures/um/daily/aggTrades/{symbol}/{name}.zip"
        content = zip_bytes(name + ".csv", binance_agg_csv(trades, header=header, micros=micros))
        self.add(path, content, corrupt_checksum=corrupt_checksum)
        return path

    def add_binance_metrics(self, symbol: str, day: date, rows: list[tuple]) -> str:
        """``rows``: (create_time text, oi, oi_value, top_account, top_position, global, taker)."""
        name = f"{symbol}-metrics-{day.isoformat()}"
        path = f"data/futures/um/daily/metrics/{symbol}/{name}.zip"
        lines = [METRICS_HEADER] + [
            ",".join([str(r[0]), symbol, *(str(v) for v in r[1:])]) for r in rows
        ]
        self.add(path, zip_bytes(name + ".csv", ("\n".join(lines) + "\n").encode()))
        return path

    def add_bybit_trades(self, symbol: str, day: date, trades: pl.DataFrame) -> str:
        path = f"trading/{symbol}/{symbol}{day.isoformat()}.csv.gz"
        # public.bybit.com publishes no checksums.
        self.add(path, bybit_csv_gz(trades, symbol), checksum=False)
        return path
