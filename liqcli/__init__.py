"""liq: a command-line toolkit for crypto-derivatives traders and quants."""

__version__ = "0.1.0"
