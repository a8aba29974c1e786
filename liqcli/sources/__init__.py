"""One source layer for live and recorded market data.

Every source (live venue streams, a replay of stored rows, a recording) delivers batches of
normalised events (liqcli.core.events) through the :class:`~liqcli.sources.base.Source`
protocol and carries its own clock: wall time live, event time on replay. Consumers (watch,
cascade, later paper trading and backtests) run the same code on either.

- base.py: the ``Source`` and ``Clock`` protocols
- clock.py: ``WallClock``, ``LiveClock``, ``EventClock``, ``Ticker`` (ticks analytics on the clock)
- dedup.py: ``Deduper`` (venue re-sends), ``FutureGuard`` (events far ahead of their receive time)
- replay.py: stored rows -> events (``ReplaySource``)
- live.py: the venues' live streams as a Source (``live_source``)
- storage.py: ``open_journal`` (one journal opener for every command)
- binance_market.py: live Binance market data (synced books, book tops, trades, marks)
- booksync.py: ``BookSync``, one symbol's book kept from a venue's diffs and REST snapshots
- recorder.py: record what a source delivers into the datasets; replay a recording
"""
