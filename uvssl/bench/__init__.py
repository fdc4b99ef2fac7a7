"""Benchmarks for uvssl: ``python -m uvssl bench`` (see SPEC S8)."""
