"""Benchmarks of the serving path (`philip bench ...`): measured and reported, never asserted."""
