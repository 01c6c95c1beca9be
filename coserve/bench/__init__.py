"""Benchmarks that print figures (and write JSON): experts' speed, routing cost."""
