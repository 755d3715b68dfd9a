"""Evaluation: folder evaluation and cross-validation; the measures they use are in :mod:`vfnet.measures`."""

from vfnet.measures import (
    dice,
    evaluate_case,
    hd95,
    markdown_table,
    method_table,
    paired_tests,
    relative_volume_difference,
    summarize,
    volume_difference,
)

__all__ = ["dice", "evaluate_case", "hd95", "markdown_table", "method_table", "paired_tests",
           "relative_volume_difference", "summarize", "volume_difference"]
