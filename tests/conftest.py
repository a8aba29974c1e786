"""Shared fixtures. Every test runs with an isolated environment: no user config, no real data dir,
and every venue URL pointed at an unroutable local port unless the test starts a fake server, so
nothing can reach the internet by accident."""

from __future__ import annotations

import os

import pytest

from liqcli.core.endpoints import DEFAULTS


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
