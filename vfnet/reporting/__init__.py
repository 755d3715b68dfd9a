"""Reports for people: Figure-2-style case panels, training curves and an index.md per preset."""

from vfnet.reporting.report import choose_cases, collect_curves, make_report

__all__ = ["choose_cases", "collect_curves", "make_report"]
