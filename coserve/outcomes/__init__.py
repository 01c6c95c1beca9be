"""Outcome data from benchmark suites: run every expert of a library on graded items.

``suites`` reads benchmark items from installed data packages and grades answers; ``runner`` asks
each expert through the engine and appends one JSON line per item (ids, scores, no prompt text).
"""

from coserve.outcomes.runner import RunSummary, run_outcomes
from coserve.outcomes.suites import GSM8K, MMLU, SUITES, Item, Suite, make_suite

__all__ = ["GSM8K", "MMLU", "SUITES", "Item", "RunSummary", "Suite", "make_suite", "run_outcomes"]
