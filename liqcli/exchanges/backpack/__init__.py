"""Backpack Exchange: signing (auth.py), REST (rest.py) and stream parsers (stream.py)."""
