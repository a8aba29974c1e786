"""Parquet datasets (atomic, idempotent, Hive-partitioned) and the live-event journal."""

from liqcli.store.journal import Journal, JournalStats
from liqcli.store.lock import file_lock
from liqcli.store.parquet import Store, WriteResult

__all__ = ["Journal", "JournalStats", "Store", "WriteResult", "file_lock"]
