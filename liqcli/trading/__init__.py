"""The trading core: orders, fills, positions, the simulated broker, order books, strategies and
the engine.

Pure and synchronous like ``analytics/``: no sockets, files or timers. Paper trading, backtests
and market making differ only in the source of events and the broker they hand to the engine.
"""
