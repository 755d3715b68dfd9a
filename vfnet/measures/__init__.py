"""Measures: Dice, HD95 and volume metrics, Table-1-style statistics, paired tests.

A low stage of its own, so that held-out prediction (inference) can score with them while
evaluation, which sits above fusion, only uses them.
"""

from vfnet.measures.metrics import dice, evaluate_case, hd95, relative_volume_difference, volume_difference
from vfnet.measures.stats import markdown_table, method_table, paired_tests, summarize

__all__ = ["dice", "evaluate_case", "hd95", "markdown_table", "method_table", "paired_tests",
           "relative_volume_difference", "summarize", "volume_difference"]
