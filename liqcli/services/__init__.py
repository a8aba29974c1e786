"""Pipelines that wire sources (venues, files, the store) to cores and sinks; the CLI calls these."""
