"""Benchmarks for uvssl: ``python -m uvssl bench`` (see the README)."""
