"""Venue base URLs, overridable by environment (testnets, proxies, local fake servers).

Read at call time, not import time, so tests can point a fresh client at 127.0.0.1.
"""

from __future__ import annotations

import os

DEFAULTS: dict[str, str] = {
    "LIQ_BINANCE_REST_URL": "https://fapi.binance.com",
    "LIQ_BINANCE_WS_URL": "wss://fstream.binance.com/market",
    "LIQ_BINANCE_ARCHIVE_URL": "https://data.binance.vision",
    "LIQ_OKX_REST_URL": "https://www.okx.com",
    "LIQ_OKX_WS_URL": "wss://ws.okx.com:8443/ws/v5/public",
    "LIQ_BYBIT_REST_URL": "https://api.bybit.com",
    "LIQ_BYBIT_WS_URL": "wss://stream.bybit.com/v5/public/linear",
    "LIQ_BYBIT_ARCHIVE_URL": "https://public.bybit.com",
    "LIQ_BACKPACK_REST_URL": "https://api.backpack.exchange",
    "LIQ_BACKPACK_WS_URL": "wss://ws.backpack.exchange",
}


def url(name: str) -> str:
    """``url("LIQ_BINANCE_REST_URL")`` -> the override or the production default, without a trailing /."""
    return (os.environ.get(name) or DEFAULTS[name]).rstrip("/")
