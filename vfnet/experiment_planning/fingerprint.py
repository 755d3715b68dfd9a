"""Dataset fingerprint: what the planner needs to know about the data."""

from __future__ import annotations

import numpy as np

from vfnet.dataset import DatasetInfo
from vfnet.integrity import CaseReport


def _summary(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"mean": 0.0, "std": 1.0, "min": 0.0, "max": 0.0, "percentile_00_5": 0.0, "percentile_99_5": 0.0}
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "percentile_00_5": float(np.percentile(values, 0.5)),
        "percentile_99_5": float(np.percentile(values, 99.5)),
    }


def compute_fingerprint(info: DatasetInfo, reports: list[CaseReport]) -> dict:
    """Aggregate per-case statistics (from the integrity check) into ``fingerprint.json``."""
    stats = [r.stats for r in reports]
    spacings = np.array([s["spacing"] for s in stats], dtype=float)
    shapes = np.array([s["shape"] for s in stats], dtype=int)
    bboxes = np.array([s["foreground_bbox"] for s in stats], dtype=int)
    intensity = {}
    for channel, modality in sorted(info.channel_names.items()):
        values = np.concatenate([s["intensity_samples"][channel] for s in stats])
        intensity[str(channel)] = {"modality": modality, **_summary(values)}
    label_counts = {}
    for name, value in info.labels.items():
        per_case = [s["voxel_counts"][str(value)] for s in stats]
        label_counts[name] = {
            "value": value,
            "total_voxels": int(sum(per_case)),
            "cases_present": int(sum(1 for c in per_case if c > 0)),
        }
    return {
        "num_cases": len(stats),
        "cases": [r.case_id for r in reports],
        "modality": {str(k): v for k, v in sorted(info.channel_names.items())},
        "axes": "z, y, x of the LPS-reoriented array (inferior-superior, anterior-posterior, right-left)",
        "spacings": spacings.tolist(),
        "shapes": shapes.tolist(),
        "median_spacing": np.median(spacings, axis=0).tolist(),
        "median_shape": np.median(shapes, axis=0).tolist(),
        "foreground_intensity": intensity,
        "intensity_range_per_case": [s["intensity_range"] for s in stats],
        "label_voxel_counts": label_counts,
        "foreground_bbox_sizes": bboxes.tolist(),
        "median_foreground_bbox": np.median(bboxes, axis=0).tolist(),
    }
