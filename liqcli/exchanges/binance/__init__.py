"""Binance USDⓈ-M futures: REST (rest.py), live streams (stream.py), data.binance.vision (archive.py)."""
