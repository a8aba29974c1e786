"""The one journal opener: every command that journals live rows opens its journal here."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("liq.sources")


def open_journal(data_dir: Path, dataset: str, factory: Callable[..., Any] | None = None) -> Any:
    """``factory(store, dataset)`` (default: liqcli.store.journal.Journal), opened: the rows a
    killed run left behind are recovered into Parquet first (logged)."""
    from liqcli.store.journal import Journal
    from liqcli.store.parquet import Store

    journal = (factory or Journal)(Store(data_dir), dataset)
    recovered = journal.open()
    if recovered:
        log.info("recovered %d %s rows from an interrupted run", recovered, dataset)
    return journal
