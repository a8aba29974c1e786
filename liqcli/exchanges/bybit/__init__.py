"""Bybit linear perpetuals: live streams and instruments (stream.py), public.bybit.com (archive.py)."""
