"""Tests never reach the internet: conftest.py lets this process connect only to loopback."""

from __future__ import annotations

import socket

import httpx
import pytest


def test_a_socket_cannot_connect_outside_loopback() -> None:
    with socket.socket() as sock, pytest.raises(OSError, match=r"127\.0\.0\.1 fakes"):
        sock.connect(("93.184.216.34", 443))


async def test_a_client_pointed_at_a_real_host_fails_at_once() -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://93.184.216.34/")


def test_loopback_still_connects() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=2):
            pass
