"""Autotuner internals: correctness gate, one-candidate measurement, search strategies, cache."""
