"""Evaluation: Dice, HD95 and volume metrics, Table-1-style statistics, paired tests, folder evaluation."""

from vfnet.evaluation.metrics import dice, evaluate_case, hd95, relative_volume_difference, volume_difference
from vfnet.evaluation.stats import markdown_table, method_table, paired_tests, summarize

__all__ = ["dice", "evaluate_case", "hd95", "markdown_table", "method_table", "paired_tests",
           "relative_volume_difference", "summarize", "volume_difference"]
