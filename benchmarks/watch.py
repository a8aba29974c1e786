"""``liq watch`` throughput: events per second through parse -> aggregate -> journal.

    python benchmarks/watch.py [--events 200000] [--symbols 200] [--repeat 3] [--jsonl]
                               [--transport picows|websockets] [--cryptofeed PYTHON]

A replay server in a separate process (pinned to another core when there is one) plays
``--events`` Binance ``forceOrder`` frames (combined-stream format, one event per frame, as the
venue sends them) over a real WebSocket on 127.0.0.1 as fast as it can. The measured process,
pinned to one core, runs the real pipeline: ReconnectingWebSocket (orjson decode) -> Binance parser
-> WatchState.ingest_batch (de-duplication, journal, rolling windows) -> nothing printed (or jsonl
to /dev/null with ``--jsonl``), with the journal flushing and compacting into Parquet in its
background threads. Two clocks, both from the first event:

- pipeline: to the last event ingested (the journal has flushed what it was given on time, but
  compaction into Parquet mostly falls after the window);
- all-in: until ``run_watch`` has returned, i.e. every event is in Parquet (one compaction of
  every row, the journal's steady-state cost: it compacts every 250,000 rows or 60 s).

Rates are per CPU-second of the measured process (all its threads: the figure for one core) and
per wall-second. Other load on a shared machine still slows a CPU-second (caches, the host), so
the run is repeated (``--repeat``) and every run is printed with the best.

Then each stage alone, on the same frames in memory, to show where the time goes.

``--transport`` picks ReconnectingWebSocket's WebSocket client (default: what ``liq watch`` uses,
picows when installed). ``--cryptofeed PYTHON`` also runs cryptofeed's Binance futures liquidation
feed with a no-op callback on the same frames, pinned the same way, with an interpreter that has
cryptofeed installed (benchmarks/watch_cryptofeed.py; not a dependency of liq).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import hashlib
import multiprocessing
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from liqcli.analytics.windows import WindowAggregator
from liqcli.core.timeutil import now_ms
from liqcli.exchanges import ws as ws_module
from liqcli.exchanges.binance import stream as binance
from liqcli.services.watch import WatchConfig, WatchState, run_watch
from liqcli.store.journal import Journal
from liqcli.store.parquet import Store

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def make_frames(count: int, symbols: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    names = ["BTCUSDT", "ETHUSDT"] + [f"C{i}USDT" for i in range(symbols - 2)]
    start = now_ms() - 3_600_000  # inside every window, so every event is counted
    frames = []
    for i in range(count):
        price = rng.uniform(0.5, 70_000)
        qty = round(rng.expovariate(1 / (2_000 / price)), 6) or 0.001
        event = {
            "e": "forceOrder",
            "E": start + i // 20 + 5,
            "o": {
                "s": names[i % len(names)],
                "S": "SELL" if rng.random() < 0.6 else "BUY",
                "o": "LIMIT",
                "f": "IOC",
                "q": f"{qty}",
                "p": f"{price * 0.999:.4f}",
                "ap": f"{price:.4f}",
                "X": "FILLED",
                "l": f"{qty}",
                "z": f"{qty}",
                "T": start + i // 20,  # 20 events per ms of event time: ~3 min for 200k
            },
        }
        frames.append(orjson.dumps({"stream": "!forceOrder@arr", "data": event}))
    return frames


# Every CPU this process may use, read once before anything is pinned: the replay server is forked
# from the pinned parent and inherits its affinity, so it must not read its own.
CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def pin(cpu_index: int) -> str:
    if not CPUS:
        return "unpinned"
    cpu = CPUS[cpu_index % len(CPUS)]
    os.sched_setaffinity(0, {cpu})  # may widen an inherited affinity: any CPU of CPUS is allowed
    return f"cpu {cpu}"


def ws_frame(payload: bytes) -> bytes:
    """One unmasked server text frame (RFC 6455 5.2)."""
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", 0x81, n) + payload
    if n < 65_536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def serve(frames: list[bytes], port_queue: multiprocessing.Queue) -> None:
    """A replay server that is never the bottleneck: it answers the WebSocket handshake, then
    writes the pre-encoded frames in 256 KiB chunks (what a venue's server does under load)."""
    where = pin(1)
    port_queue.put(where)
    wire = b"".join(ws_frame(f) for f in frames)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        view = memoryview(wire)
        for offset in range(0, len(wire), 262_144):
            writer.write(view[offset : offset + 262_144])
            await writer.drain()
        # Answer the client's close frame (masked, RFC 6455 5.5.1) so it need not time out.
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                opcode, length = await reader.readexactly(2)
                length &= 0x7F
                if length == 126:
                    length = struct.unpack("!H", await reader.readexactly(2))[0]
                elif length == 127:
                    length = struct.unpack("!Q", await reader.readexactly(8))[0]
                await reader.readexactly(4 + length)  # mask and payload
                if opcode & 0x0F == 0x8:
                    writer.write(b"\x88\x02\x03\xe8")  # close, 1000
                    await writer.drain()
                    break
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port_queue.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


class CountedStream:
    """The real Binance stream, stopped after ``limit`` events; times first to last event."""

    def __init__(self, limit: int) -> None:
        from liqcli.services.streams import StreamOptions, liquidation_stream  # default queue

        self.inner = liquidation_stream(["binance"], [], options=StreamOptions())
        self.statuses = self.inner.statuses
        self.limit = limit
        self.first = self.last = 0.0  # wall clock
        self.first_cpu = self.last_cpu = 0.0  # this process's CPU time, every thread

    def batches(self) -> AsyncIterator[list]:
        return self._run()

    async def _run(self) -> AsyncIterator[list]:
        n = 0
        async for batch in self.inner.batches():
            if n == 0:
                self.first, self.first_cpu = time.perf_counter(), time.process_time()
            batch = batch[: self.limit - n]
            yield batch
            n += len(batch)
            if n == self.limit:  # the consumer is done with the last event
                self.last, self.last_cpu = time.perf_counter(), time.process_time()
                return

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Timings:
    pipeline_wall: float
    pipeline_cpu: float
    all_in_wall: float
    all_in_cpu: float
    server_cpu: str  # where the replay server ran
    gc_cpu: float  # of it, in the cyclic garbage collector (any thread)


class GcClock:
    """CPU time spent in the cyclic garbage collector, from gc.callbacks."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.total += time.thread_time() - self._started


GC_CLOCK = GcClock()


def end_to_end(frames: list[bytes], jsonl: bool, uvloop: bool = False) -> tuple[Timings, dict]:
    port_queue: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(frames, port_queue), daemon=True)
    server.start()
    try:
        server_cpu = port_queue.get(timeout=30)
        os.environ["LIQ_BINANCE_WS_URL"] = f"ws://127.0.0.1:{port_queue.get(timeout=30)}"
        stream = CountedStream(len(frames))
        with tempfile.TemporaryDirectory() as data_dir, open(os.devnull, "w") as devnull:
            config = WatchConfig(exchanges=["binance"], fmt="jsonl" if jsonl else "dashboard")
            gc_before = GC_CLOCK.total
            run = asyncio.run
            if uvloop:
                import uvloop as uv

                run = uv.run
            result = run(
                run_watch(
                    config,
                    data_dir=Path(data_dir),
                    out=devnull,
                    stream_factory=lambda cfg, d: stream,
                )
            )
            done, done_cpu = time.perf_counter(), time.process_time()
            stored = Store(data_dir).read("liquidations").height
        counters = result.counters.to_dict() | {"stored_rows": stored}
        timings = Timings(
            stream.last - stream.first,
            stream.last_cpu - stream.first_cpu,
            done - stream.first,
            done_cpu - stream.first_cpu,
            server_cpu,
            GC_CLOCK.total - gc_before,
        )
        return timings, counters
    finally:
        server.terminate()
        server.join()


def cryptofeed_run(frames: list[bytes], symbols: int, python: str) -> tuple[float, float]:
    """CPU and wall seconds of cryptofeed from its first liquidation to the last."""
    port_queue: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(frames, port_queue), daemon=True)
    server.start()
    try:
        port_queue.get(timeout=30)  # where the server runs
        port = port_queue.get(timeout=30)
        names = ["BTCUSDT", "ETHUSDT"] + [f"C{i}USDT" for i in range(symbols - 2)]
        command = [python, str(Path(__file__).with_name("watch_cryptofeed.py"))]
        command += ["--port", str(port), "--events", str(len(frames)), "--symbols", ",".join(names)]
        if CPUS:
            command += ["--cpu", str(CPUS[0])]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise SystemExit(f"cryptofeed run failed: {done.stderr.strip()[-2000:]}")
        result = orjson.loads(done.stdout.strip().splitlines()[-1])
        if result["events"] != len(frames):
            raise SystemExit(f"cryptofeed saw {result['events']} of {len(frames)} events")
        return result["cpu"], result["wall"]
    finally:
        server.terminate()
        server.join()


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>12,.0f} events/s  ({seconds * 1e6 / n:.2f} µs/event)"


def stages(frames: list[bytes]) -> None:
    n = len(frames)
    started = time.process_time()
    for f in frames:
        orjson.loads(f)
    decoded = time.process_time() - started
    print(f"  decode (orjson)          {rate(n, decoded)}")
    started = time.process_time()
    events = [e for f in frames for e in binance.parse_message(orjson.loads(f), 0)]
    print(f"  parse (binance)          {rate(n, time.process_time() - started - decoded)}")
    gc.freeze()  # the benchmark holds every event at once; a live run does not
    clock_ms = now_ms()
    agg = WindowAggregator(clock=lambda: clock_ms)
    started = time.process_time()
    for e in events:
        agg.add(e)
    print(f"  aggregate (5 windows)    {rate(n, time.process_time() - started)}")
    with tempfile.TemporaryDirectory() as data_dir:
        journal = Journal(Store(data_dir), "liquidations")
        journal.open()
        started = time.process_time()
        # What WatchState.ingest_batch hands the journal: the events (their rows, before).
        journaled = events if hasattr(type(events[0]), "journal_columns") else None
        journal.extend(journaled or [e.to_row() for e in events])
        journal.flush()  # what the flush thread does every 0.5 s: encode and write
        appended = time.process_time() - started
        started = time.process_time()
        journal.close()
        compacted = time.process_time() - started
        print(f"  journal (rows, flush)    {rate(n, appended)}")
        print(f"  compaction into Parquet  {rate(n, compacted)}")
        state = WatchState(WatchConfig(exchanges=["binance"]), clock=lambda: clock_ms)
        state.journal = Journal(Store(data_dir), "liquidations")
        state.journal.open()
        started = time.process_time()
        for i in range(0, n, 100):  # batches as a busy stream delivers them
            state.ingest_batch(events[i : i + 100])
        state.journal.flush()
        ingested = time.process_time() - started
        state.journal.close()
        print(f"  WatchState.ingest_batch  {rate(n, ingested)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--symbols", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jsonl", action="store_true", help="also print jsonl (to /dev/null)")
    parser.add_argument("--repeat", type=int, default=3, help="end-to-end runs (best reported)")
    parser.add_argument(
        "--transport",
        choices=["picows", "websockets"],
        help="the WebSocket client (default: liq watch's, picows when installed)",
    )
    parser.add_argument(
        "--cryptofeed",
        metavar="PYTHON",
        help="also run cryptofeed with a no-op callback, with this interpreter",
    )
    parser.add_argument("--no-stages", action="store_true", help="skip the stages-alone part")
    parser.add_argument(
        "--uvloop",
        action="store_true",
        help="run the pipeline on uvloop's event loop (if installed)",
    )
    args = parser.parse_args()
    if args.transport == "websockets":
        from websockets.asyncio.client import connect

        ws_module.default_connect = connect
    elif args.transport == "picows":
        from liqcli.exchanges.ws_picows import connect

        ws_module.default_connect = connect
    frames = make_frames(args.events, args.symbols, args.seed)
    where = pin(0)
    gc.freeze()  # as `liq watch` does once its imports are done
    gc.set_threshold(50_000, 10, 10)  # as `liq watch` does (liqcli/cli/watch.py)
    transport = "picows" if "picows" in ws_module.default_connect.__module__ else "websockets"
    print(
        f"{len(frames):,} Binance forceOrder frames, {args.symbols} symbols; pipeline on {where};"
        f" transport {transport}; event loop {'uvloop' if args.uvloop else 'asyncio'}"
    )
    n = args.events
    runs = []
    for run in range(args.repeat):
        t, counters = end_to_end(frames, args.jsonl, args.uvloop)
        runs.append(t)
        print(
            f"  run {run + 1}: pipeline {n / t.pipeline_cpu:,.0f}/CPU-s {n / t.pipeline_wall:,.0f}"
            f"/wall-s, all-in {n / t.all_in_cpu:,.0f}/CPU-s {n / t.all_in_wall:,.0f}/wall-s"
            f" (GC {t.gc_cpu * 1e6 / n:.2f} µs/event; server on {t.server_cpu})"
        )
    best = min(runs, key=lambda r: r.all_in_cpu)
    print(f"end to end, best of {args.repeat} (the machine may be shared: see load):")
    print("  pipeline (WebSocket -> parse -> aggregate -> journal):")
    print(f"    per CPU-second (one core) {rate(n, best.pipeline_cpu)}")
    print(f"    per wall-second           {rate(n, best.pipeline_wall)}")
    print("  all-in (... -> every event compacted into Parquet):")
    print(f"    per CPU-second (one core) {rate(n, best.all_in_cpu)}")
    print(f"    per wall-second           {rate(n, best.all_in_wall)}")

    def spread(attr: str) -> str:
        values = sorted(n / getattr(r, attr) for r in runs)
        return f"{values[0]:,.0f}..{values[-1]:,.0f}"

    print(
        f"  spread of the {args.repeat} runs: pipeline {spread('pipeline_cpu')}/CPU-s"
        f" {spread('pipeline_wall')}/wall-s, all-in {spread('all_in_cpu')}/CPU-s"
        f" {spread('all_in_wall')}/wall-s"
    )
    print(f"  counters (last run): {counters}")
    if args.cryptofeed:
        peer = [cryptofeed_run(frames, args.symbols, args.cryptofeed) for _ in range(args.repeat)]
        cpu, wall = min(peer)
        spread = sorted(n / c for c, _ in peer)
        print(
            f"cryptofeed, no-op callback, best of {args.repeat} (spread {spread[0]:,.0f}..{spread[-1]:,.0f}/CPU-s):"
        )
        print(f"    per CPU-second (one core) {rate(n, cpu)}")
        print(f"    per wall-second           {rate(n, wall)}")
    if args.no_stages:
        return
    print("stages alone (CPU time):")
    stages(frames)


if __name__ == "__main__":
    main()
