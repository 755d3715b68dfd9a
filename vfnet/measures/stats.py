"""Summary statistics and paired tests in the style of the paper's Table 1, and Markdown tables.

Shared by ``vfnet_evaluate`` and ``vfnet_crossval``. Non-finite values (HD95 is NaN when
only one of reference and prediction is empty) are left out of every statistic and
counted in ``n_nan``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats as scipy_stats

STAT_KEYS = ("mean", "std", "min", "q1", "median", "q3", "max", "n")


def summarize(values: Iterable[float | None]) -> dict:
    """Mean, std, min, quartiles, max and count of the finite values.

    Args:
        values: numbers; None, NaN and ±inf are excluded and counted in ``n_nan``.

    Returns:
        ``{mean, std, min, q1, median, q3, max, n, n_nan}``; ``std`` is the sample standard
        deviation (ddof=1, 0.0 for a single value); quantiles use linear interpolation.
        Every statistic is NaN when no finite value is left.

    Example:
        >>> summarize([1, 2, 3, 4, 5, float("nan")])["median"]
        3.0
    """
    array = np.array([np.nan if v is None else v for v in values], dtype=float)
    finite = array[np.isfinite(array)]
    result: dict = {"n": int(finite.size), "n_nan": int(array.size - finite.size)}
    if finite.size == 0:
        result.update({key: float("nan") for key in STAT_KEYS if key != "n"})
    else:
        q1, median, q3 = np.percentile(finite, [25, 50, 75])
        result.update({
            "mean": float(finite.mean()),
            "std": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
            "min": float(finite.min()), "q1": float(q1), "median": float(median), "q3": float(q3),
            "max": float(finite.max()),
        })
    return {key: result[key] for key in (*STAT_KEYS, "n_nan")}


def _pvalue(test) -> float:
    with warnings.catch_warnings():
        # scipy warns on near-constant differences and may raise on degenerate input; NaN says it
        warnings.simplefilter("ignore")
        try:
            p = float(test().pvalue)
        except (ValueError, ZeroDivisionError, FloatingPointError):
            return float("nan")
    return p if math.isfinite(p) else float("nan")


def paired_tests(a: Sequence[float], b: Sequence[float]) -> dict:
    """Paired t-test and Wilcoxon signed-rank test of ``a`` against ``b`` (same cases, same order).

    Pairs where either value is not finite are dropped. When every difference is zero both
    p-values are 1.0 (no evidence of a difference); when a test is undefined (fewer than two
    pairs, or scipy cannot compute it) its p-value is NaN. Never raises for degenerate input.

    Args:
        a: per-case scores of the first method.
        b: per-case scores of the second method.

    Returns:
        ``{t_test_p, wilcoxon_p, n, mean_difference}`` with ``mean_difference = mean(a − b)``.

    Example:
        >>> paired_tests([0.8, 0.9], [0.8, 0.9])["t_test_p"]
        1.0
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired tests need equal lengths, got {a.size} and {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    differences = a - b
    result = {"t_test_p": float("nan"), "wilcoxon_p": float("nan"), "n": int(differences.size),
              "mean_difference": float(differences.mean()) if differences.size else float("nan")}
    if differences.size == 0:
        return result
    if not np.any(differences):
        result["t_test_p"] = result["wilcoxon_p"] = 1.0
        return result
    if differences.size >= 2:
        result["t_test_p"] = _pvalue(lambda: scipy_stats.ttest_rel(a, b))
        result["wilcoxon_p"] = _pvalue(lambda: scipy_stats.wilcoxon(a, b))
    return result


def format_value(value, float_format: str = "{:.2f}") -> str:
    """A table cell: floats through ``float_format``, NaN/None as an en dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (float, np.floating)):
        return float_format.format(float(value))
    return str(value)


def format_pvalue(p: float) -> str:
    """p-values: three significant digits, scientific below 0.001."""
    if p is None or not math.isfinite(p):
        return "–"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str] | Mapping[str, str],
                   float_format: str = "{:.2f}") -> str:
    """A GitHub Markdown table.

    Args:
        rows: one mapping per row; missing keys give an empty cell.
        columns: the keys to show, in order, or a mapping key → header text.
        float_format: format of float cells (strings are shown as they are).

    Example:
        >>> print(markdown_table([{"a": 1, "b": 0.5}], {"a": "A", "b": "B"}))
        | A | B |
        |---|---|
        | 1 | 0.50 |
    """
    headers = dict(columns) if isinstance(columns, Mapping) else {key: key for key in columns}
    lines = ["| " + " | ".join(headers.values()) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        cells = [format_value(row[key], float_format) if key in row else "" for key in headers]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stats_row(summary: Mapping, scale: float = 1.0, float_format: str = "{:.2f}") -> dict:
    """Table-1 cells of a :func:`summarize` result: ``mean ± std``, min, Q1, median, Q3, max, n."""
    cells = {"mean_std": "–"}
    if summary["n"]:
        cells["mean_std"] = (f"{float_format.format(summary['mean'] * scale)} ± "
                             f"{float_format.format(summary['std'] * scale)}")
    for key in ("min", "q1", "median", "q3", "max"):
        cells[key] = format_value(summary[key] * scale, float_format)
    cells["n"] = str(summary["n"]) + (f" (+{summary['n_nan']} undefined)" if summary.get("n_nan") else "")
    return cells


TABLE1_COLUMNS = {"mean_std": "Mean ± std", "min": "Min", "q1": "Q1", "median": "Median", "q3": "Q3",
                  "max": "Max", "n": "n"}


def case_mean_dice(per_label: Mapping[str, float]) -> float:
    """Overall score of a case: the mean of its per-label Dice (NaN-aware)."""
    values = np.array([v for v in per_label.values() if v is not None], dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def method_table(results: Mapping[str, Mapping[str, Mapping[str, float]]], percent: bool = True,
                 overall_name: str = "overall") -> str:
    """Table 1 of the paper for several methods: one table per label and one for the overall score.

    Args:
        results: method → case → label → Dice (in [0, 1]).
        percent: show Dice in % as the paper does.
        overall_name: heading of the table of per-case mean Dice over labels.

    Returns:
        Markdown: for each label (in first-seen order) and then ``overall``, a table whose
        rows are the methods and whose columns are mean ± std, min, Q1, median, Q3, max, n.
    """
    labels: list[str] = []
    for cases in results.values():
        for per_label in cases.values():
            labels.extend(name for name in per_label if name not in labels)
    scale = 100.0 if percent else 1.0
    unit = "DSC, %" if percent else "DSC"
    sections = []
    for label in [*labels, overall_name]:
        rows = []
        for method, cases in results.items():
            if label == overall_name:
                values = [case_mean_dice(per_label) for per_label in cases.values()]
            else:
                values = [per_label.get(label, float("nan")) for per_label in cases.values()]
            rows.append({"method": method, **stats_row(summarize(values), scale)})
        sections.append(f"### {label} ({unit})\n\n" + markdown_table(rows, {"method": "Method", **TABLE1_COLUMNS}))
    return "\n\n".join(sections) + "\n"
