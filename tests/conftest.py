"""Shared fixtures. Every test runs with an isolated environment: no user config, no real data dir,
and every venue URL pointed at an unroutable local port unless the test starts a fake server, so
nothing can reach the internet by accident. As a second line, a socket of this process may only
connect to loopback addresses (or a Unix socket): a forgotten URL fails at once, loudly."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

from liqcli.core.endpoints import DEFAULTS

_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _loopback_only(address: object) -> None:
    if not isinstance(address, tuple):  # AF_UNIX path
        return
    host = str(address[0])
    try:
        if ipaddress.ip_address(host.split("%")[0]).is_loopback:
            return
    except ValueError:
        if host == "localhost":
            return
    raise OSError(f"tests may only connect to 127.0.0.1 fakes, not {host}:{address[1]}")


def _guarded_connect(self: socket.socket, address: object) -> None:
    _loopback_only(address)
    return _connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    _loopback_only(address)
    return _connect_ex(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    for name in list(os.environ):
        if name.startswith("LIQ_"):
            monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "WS_PROXY", "WSS_PROXY"):
        # Clients honour proxy variables, as users expect; the local fakes must never be proxied.
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    for name in DEFAULTS:
        # Port 9 (discard) on loopback: a forgotten override fails fast instead of going online.
        scheme = "ws" if name.endswith("_WS_URL") else "http"
        monkeypatch.setenv(name, f"{scheme}://127.0.0.1:9")
    yield home
