"""Both WebSocket transports of ReconnectingWebSocket (websockets' client and the picows one,
liqcli/exchanges/ws_picows.py) behave the same: every test of tests/test_ws.py runs here under
each, and the transport-level tests below drive each against a raw RFC 6455 server on 127.0.0.1
that writes exactly the frames a test asks for (fragments, binary, bad UTF-8, close codes, a
dropped socket, a silent peer)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect as websockets_connect
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    InvalidHandshake,
    InvalidURI,
)

import tests.test_ws as ws_tests
from liqcli.exchanges import ws as ws_module
from liqcli.exchanges.ws import ReconnectingWebSocket, WsProtocol, WsTimings

pytestmark = pytest.mark.timeout(20)

picows_connect: Any = None
with contextlib.suppress(ImportError):
    from liqcli.exchanges.ws_picows import connect as picows_connect

TRANSPORTS = {"websockets": websockets_connect, "picows": picows_connect}
DEFAULT_CONNECT = ws_module.default_connect  # before any test patches it


@pytest.fixture(autouse=True, params=list(TRANSPORTS))
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Every test of this module, the ones of tests/test_ws.py included, under each transport."""
    connect = TRANSPORTS[request.param]
    if connect is None:
        pytest.skip("picows is not installed")
    monkeypatch.setattr(ws_module, "default_connect", connect)
    return connect


# Every test of tests/test_ws.py, collected again here under the fixture above.
globals().update({k: v for k, v in vars(ws_tests).items() if k.startswith("test_")})


# -- a raw RFC 6455 server ---------------------------------------------------------------------

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """One unmasked server frame."""
    head = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", head, n) + payload
    if n < 65_536:
        return struct.pack("!BBH", head, 126, n) + payload
    return struct.pack("!BBQ", head, 127, n) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(CLOSE, struct.pack("!H", code) + reason.encode())


class Peer:
    """The server's side of one connection, driven by a test's script."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))
        await self.writer.drain()

    async def recv(self) -> tuple[int, bytes]:
        """The client's next frame (opcode, unmasked payload)."""
        b0, b1 = await self.reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        mask = await self.reader.readexactly(4)
        data = await self.reader.readexactly(n)
        return b0 & 0x0F, bytes(c ^ mask[i % 4] for i, c in enumerate(data))

    async def recv_close(self) -> int:
        """Skip to the client's close frame; its code."""
        while True:
            opcode, payload = await self.recv()
            if opcode == CLOSE:
                return struct.unpack("!H", payload[:2])[0]

    def abort(self) -> None:
        self.writer.transport.abort()


Script = Callable[[Peer], Awaitable[None]]


class RawServer:
    """``async with RawServer(script) as server``: each connection runs ``script(peer)`` after
    the handshake; path ``/404`` is refused, ``/hang`` never answered."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.errors: list[BaseException] = []
        self.done = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)

    def url(self, path: str = "/") -> str:
        assert self._server is not None
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            path = request.split(b" ", 2)[1]
            if path == b"/hang":
                await asyncio.sleep(30)
            if path == b"/404":
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                writer.close()
                return
            key = next(
                line.split(b":", 1)[1].strip()
                for line in request.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            await self.script(Peer(reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except BaseException as exc:
            self.errors.append(exc)
            raise
        finally:
            self.done.set()
            writer.close()


async def open_client(connect: Any, url: str, **overrides: Any) -> Any:
    """The transport opened exactly as ReconnectingWebSocket opens it."""
    kwargs = {"open_timeout": 2.0, "close_timeout": 0.3, "ping_interval": None, "max_size": 2**23}
    return await connect(url, **(kwargs | overrides))


async def read_all(conn: Any) -> list[Any]:
    out = []
    async for message in conn:
        out.append(message)
    return out


# -- transport-level tests (each under both transports) -----------------------------------------


async def test_text_binary_and_fragmented_messages_arrive_whole_then_a_normal_close_ends(
    transport: Any,
) -> None:
    async def script(peer: Peer) -> None:
        await peer.send(
            frame(TEXT, b'{"a":1}'),
            frame(BINARY, b"\x00\xffraw"),
            frame(TEXT, b'{"b":', fin=False),
            frame(CONT, "\u00e9".encode()[:1], fin=False),  # a character split across frames
            frame(CONT, "\u00e9".encode()[1:] + b'"}'),
            frame(BINARY, b"ab", fin=False),
            frame(CONT, b"cd"),
            close_frame(1000, "done"),
        )
        assert await peer.recv_close() == 1000  # the client answers the close handshake

    async with RawServer(script) as server:
        conn = await open_client(transport, server.url())
        got = await asyncio.wait_for(read_all(conn), 5)
        assert got == ['{"a":1}', b"\x00\xffraw", '{"b":\u00e9"}', b"abcd"]
        assert [type(m) for m in got] == [str, bytes, str, bytes]
        await conn.close()
        assert (conn.close_code, conn.close_reason) == (1000, "done")
        await asyncio.wait_for(server.done.wait(), 2)
        assert server.errors == []


async def test_an_error_close_raises_connection_closed_with_the_servers_code(
    transport: Any,
) -> None:
    async def script(peer: Peer) -> None:
        await peer.send(frame(TEXT, b"1"), close_frame(1011, "overloaded"))
        await peer.recv_close()

    async with RawServer(script) as server:
        conn = await open_client(transport, server.url())
        assert await conn.recv() == "1"
        with pytest.raises(ConnectionClosedError):
            await asyncio.wait_for(read_all(conn), 5)
        await conn.close()
        assert (conn.close_code, conn.close_reason) == (1011, "overloaded")
        with pytest.raises(ConnectionClosed):
            await conn.send("late")


async def test_a_dropped_socket_is_code_1006_and_a_silent_peer_does_not_block_close(
    transport: Any,
) -> None:
    async def drop(peer: Peer) -> None:
        await peer.send(frame(TEXT, b"x"))
        peer.abort()

    async with RawServer(drop) as server:
        conn = await open_client(transport, server.url())
        with pytest.raises(ConnectionClosedError):
            await asyncio.wait_for(read_all(conn), 5)
        await conn.close()
        assert (conn.close_code, conn.close_reason) == (1006, "")

    async def silent(peer: Peer) -> None:
        await asyncio.sleep(10)  # never answers the close frame

    async with RawServer(silent) as server:
        conn = await open_client(transport, server.url())
        loop = asyncio.get_running_loop()
        started = loop.time()
        await conn.close()  # close_timeout 0.3 s, then the socket is cut
        assert loop.time() - started < 2.0
        assert conn.close_code == 1006


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([frame(TEXT, b"\xff\xfe not utf-8")], 1007),
        ([frame(BINARY, b"x" * 600, fin=False), frame(CONT, b"x" * 600)], 1009),
    ],
    ids=["invalid-utf8", "too-big"],
)
async def test_a_bad_message_fails_the_connection_with_the_rfc_code(
    transport: Any, frames: list[bytes], code: int
) -> None:
    received: list[int] = []

    async def script(peer: Peer) -> None:
        await peer.send(frame(TEXT, b"ok"), *frames)
        received.append(await peer.recv_close())

    async with RawServer(script) as server:
        conn = await open_client(transport, server.url(), max_size=1000)
        with pytest.raises(ConnectionClosedError):
            assert await asyncio.wait_for(read_all(conn), 5) == ["ok"]
        await conn.close()
        await asyncio.wait_for(server.done.wait(), 2)
        assert received == [code]


async def test_ping_resolves_on_its_pong_and_earlier_pings_with_it(transport: Any) -> None:
    async def script(peer: Peer) -> None:
        payloads = []
        for _ in range(2):
            opcode, payload = await peer.recv()
            assert opcode == PING
            payloads.append(payload)
        await peer.send(frame(PONG, b"unsolicited"), frame(PONG, payloads[1]))
        opcode, payload = await peer.recv()
        assert (opcode, payload) == (TEXT, b"after")
        await peer.send(frame(PING, b"hb"))  # the client answers server pings itself
        assert await peer.recv() == (PONG, b"hb")
        await peer.send(close_frame(1000))
        await peer.recv_close()

    async with RawServer(script) as server:
        conn = await open_client(transport, server.url())
        first, second = await conn.ping(), await conn.ping()
        latencies = await asyncio.wait_for(asyncio.gather(first, second), 5)
        assert all(isinstance(x, float) and x >= 0 for x in latencies)
        await conn.send("after")
        assert await asyncio.wait_for(read_all(conn), 5) == []
        await conn.close()
        with pytest.raises(ConnectionClosed):
            await conn.ping()
        await asyncio.wait_for(server.done.wait(), 2)
        assert server.errors == []


async def test_a_slow_consumer_backs_up_into_the_socket_and_loses_nothing(transport: Any) -> None:
    count = 20_000
    checked = asyncio.Event()  # the socket stays open (and readable) until the test has looked

    async def script(peer: Peer) -> None:
        await peer.send(
            *(frame(TEXT, b'{"seq":%d,"pad":"%s"}' % (i, b"x" * 200)) for i in range(count))
        )
        await checked.wait()
        await peer.send(close_frame(1000))
        await peer.recv_close()

    async with RawServer(script) as server:
        conn = await open_client(transport, server.url())
        await asyncio.sleep(0.3)  # nothing read: the client must stop reading the socket
        assert not conn.transport.is_reading()
        checked.set()
        got = await asyncio.wait_for(read_all(conn), 10)
        assert got == [f'{{"seq":{i},"pad":"{"x" * 200}"}}' for i in range(count)]


async def test_big_unread_messages_pause_reading_long_before_the_message_count_would(
    transport: Any,
) -> None:
    count, size = 40, 2**20
    checked = asyncio.Event()

    async def script(peer: Peer) -> None:
        for i in range(count):
            await peer.send(frame(BINARY, bytes([i]) * size))
        await checked.wait()
        await peer.send(close_frame(1000))
        await peer.recv_close()

    async with RawServer(script) as server:
        conn = await open_client(transport, server.url())
        await asyncio.sleep(0.5)  # 40 MiB sent, fewer than 40 messages: the byte bound pauses
        assert not conn.transport.is_reading()
        checked.set()
        got = await asyncio.wait_for(read_all(conn), 10)
        assert [m[:1] for m in got] == [bytes([i]) for i in range(count)]
        assert all(len(m) == size for m in got)


async def test_connect_failures_raise_what_websockets_raises(transport: Any) -> None:
    async with RawServer(lambda peer: asyncio.sleep(0)) as server:
        with pytest.raises(InvalidHandshake, match="404"):
            await open_client(transport, server.url("/404"))
        with pytest.raises(TimeoutError):
            await open_client(transport, server.url("/hang"), open_timeout=0.3)
    with pytest.raises(InvalidURI):
        await open_client(transport, "not a url")
    with pytest.raises(OSError):
        await open_client(transport, "ws://127.0.0.1:9/")


async def test_the_connect_argument_chooses_the_transport(transport: Any) -> None:
    calls: list[str] = []

    async def counting(url: str, **kwargs: Any) -> Any:
        calls.append(url)
        return await transport(url, **kwargs)

    async def script(peer: Peer) -> None:
        await peer.send(frame(TEXT, b'{"n":1}'))
        await peer.recv_close()

    async with RawServer(script) as server:
        url = server.url("/feed")
        proto = WsProtocol(venue="raw", url=url)
        timings = WsTimings(close_timeout=0.3)
        async with ReconnectingWebSocket(proto, timings=timings, connect=counting) as ws:
            async for message in ws:
                assert message == {"n": 1}
                break
    assert calls == [url]


def test_picows_is_the_default_transport_when_installed() -> None:
    expected = picows_connect if picows_connect is not None else websockets_connect
    assert DEFAULT_CONNECT is expected


@pytest.fixture
def tls_files(tmp_path: Any) -> tuple[str, str]:
    """A throw-away self-signed certificate for 127.0.0.1 (cert path, key path)."""
    x509 = pytest.importorskip("cryptography.x509")
    import datetime
    import ipaddress

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


async def test_wss_verifies_the_server_certificate_like_websockets(
    transport: Any, tls_files: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ssl

    from websockets.asyncio.server import serve

    cert, key = tls_files
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)

    async def handler(ws: Any) -> None:
        await ws.send('{"over":"tls"}')
        await ws.close()

    async with serve(handler, "127.0.0.1", 0, ssl=server_ctx) as server:
        url = f"wss://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        with pytest.raises(OSError):  # an untrusted certificate: ssl.SSLCertVerificationError
            await open_client(transport, url)
        monkeypatch.setenv("SSL_CERT_FILE", cert)  # the default context trusts it now
        conn = await open_client(transport, url)
        assert await asyncio.wait_for(read_all(conn), 5) == ['{"over":"tls"}']
        await conn.close()
