"""TOML configuration (``LIQ_CONFIG``, default ``~/.config/liq/config.toml``).

The file's top-level keys are global options (``data_dir``, ``log_level``); a table per command holds
that command's options by their long name, e.g.::

    data_dir = "/srv/liq"
    [watch]
    min_usd = 10000
    exchange = ["binance", "bybit"]
    [fetch]
    period = "15m"

It becomes click's ``default_map``, which gives exactly the promised precedence:
CLI flags > environment variables > config file > built-in defaults.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from liqcli.errors import UsageError


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "liq" / "config.toml"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "liq"


def _normalise(table: dict[str, Any]) -> dict[str, Any]:
    # Option names may be written as on the command line (min-usd) or as parameters (min_usd).
    return {
        k.replace("-", "_"): _normalise(v) if isinstance(v, dict) else v for k, v in table.items()
    }


def load_config(path: str | Path | None = None) -> dict[str, Any]:
    """Read the config file into a click ``default_map``; a missing default file is an empty config."""
    explicit = path or os.environ.get("LIQ_CONFIG")
    cfg_path = Path(explicit) if explicit else default_config_path()
    if not cfg_path.exists():
        if explicit:
            raise UsageError(f"config file {cfg_path} (LIQ_CONFIG) does not exist")
        return {}
    try:
        with cfg_path.open("rb") as fh:
            return _normalise(tomllib.load(fh))
    except (tomllib.TOMLDecodeError, OSError) as exc:
        raise UsageError(f"config file {cfg_path}: {exc}") from None
