"""Venue base URLs, overridable by environment (testnets, proxies, local fake servers).

The variables and their production defaults are declared by each venue's registry entry
(liqcli.exchanges.registry). Read at call time, not import time, so tests can point a fresh
client at 127.0.0.1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

from liqcli.exchanges import registry


class _Defaults(Mapping[str, str]):
    """Every registered venue's endpoint defaults, read live (venues may register later)."""

    def __getitem__(self, name: str) -> str:
        return registry.endpoint_defaults()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(registry.endpoint_defaults())

    def __len__(self) -> int:
        return len(registry.endpoint_defaults())


DEFAULTS: Mapping[str, str] = _Defaults()


def url(name: str) -> str:
    """``url("LIQ_BINANCE_REST_URL")`` -> the override or the production default, without a trailing /."""
    return (os.environ.get(name) or DEFAULTS[name]).rstrip("/")
