"""Figure-2-style panels: one row per case, image, ground truth and each method's labels on one slice.

Only the Agg backend is used, so figures render on machines without a display.

Example:
    >>> rows = [CaseRow("case_001", image, label, {"axial": ax_labels, "vfn": vfn_labels},
    ...                 {"axial": 0.81, "vfn": 0.86}, note="fold 0")]
    >>> draw_case_rows(rows, ["axial", "vfn"], Path("cases_axial.png"), spacing=(1.0, 1.0, 1.0))
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from vfnet.atomic import atomic_path
from vfnet.views import VIEW_AXIS, permutation, to_view

PANEL_TITLES = {"axial": "axial 2D", "coronal": "coronal 2D", "sagittal": "sagittal 2D", "majority": "majority",
                "mean": "mean", "staple": "STAPLE", "vfn": "VFN", "vfn-noimage": "VFN (no image)"}
_LABEL_COLOURS = plt.get_cmap("tab10")


@dataclass
class CaseRow:
    """What one row of the figure shows.

    Args:
        case: case id.
        image: (C, z, y, x) preprocessed image; channel 0 is drawn.
        label: (z, y, x) ground-truth class indices.
        predictions: panel name → (z, y, x) class indices.
        dice: panel name → overall Dice in [0, 1] (NaN when undefined).
        note: shown under the case id (fold, why the case was chosen).
    """

    case: str
    image: np.ndarray
    label: np.ndarray
    predictions: dict[str, np.ndarray]
    dice: dict[str, float]
    note: str = ""
    slice_index: int | None = field(default=None)


def middle_slice(label: np.ndarray, slice_view: str, fallback: Sequence[np.ndarray] = ()) -> int:
    """Index of the slice of ``slice_view`` through the middle of the organ.

    The middle of the ground truth's extent along the view's axis; an empty ground truth
    uses the first non-empty of ``fallback`` (e.g. predictions), else the volume's middle.
    """
    axis = VIEW_AXIS[slice_view]
    for mask in (label, *fallback):
        other_axes = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(np.asarray(mask).any(axis=other_axes))
        if present.size:
            return int((present[0] + present[-1]) // 2)
    return int(label.shape[axis] // 2)


def _plane(volume: np.ndarray, slice_view: str, index: int) -> np.ndarray:
    plane = to_view(np.asarray(volume), slice_view)[..., index, :, :]
    # coronal and sagittal planes have z (inferior→superior) as rows: draw superior at the top
    return plane if slice_view == "axial" else plane[..., ::-1, :]


def _aspect(spacing: Sequence[float], slice_view: str) -> float:
    _, rows, cols = permutation(slice_view)
    return float(spacing[rows]) / float(spacing[cols])


def _draw_panel(ax, image_plane: np.ndarray, labels_plane: np.ndarray | None, reference_plane: np.ndarray | None,
                num_classes: int, aspect: float) -> None:
    lo, hi = np.percentile(image_plane, (0.5, 99.5))
    ax.imshow(image_plane, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect=aspect,
              interpolation="nearest")
    if labels_plane is not None:
        masked = np.ma.masked_where(labels_plane == 0, labels_plane)
        ax.imshow(masked, cmap=_LABEL_COLOURS, vmin=0, vmax=9, alpha=0.55, aspect=aspect, interpolation="nearest")
    if reference_plane is not None:
        # the ground truth's outline on every prediction shows where a method errs
        for cls in range(1, num_classes):
            if (reference_plane == cls).any() and not (reference_plane == cls).all():
                ax.contour(reference_plane == cls, levels=[0.5], colors="white", linewidths=0.6)
    ax.set_xticks([])
    ax.set_yticks([])


def _dice_text(value: float | None) -> str:
    if value is None or not np.isfinite(value):
        return "Dice n/a"
    return f"Dice {100 * value:.1f}%"


def draw_case_rows(rows: Sequence[CaseRow], panels: Sequence[str], path: Path, spacing: Sequence[float],
                   slice_view: str = "axial", num_classes: int | None = None) -> Path:
    """Draw one row per case (image, ground truth, then ``panels``) and save a PNG atomically.

    Args:
        rows: the cases.
        panels: prediction panels in column order; a row without one shows "not available".
        path: PNG to write.
        spacing: voxel spacing (z, y, x) of the arrays, for the pixel aspect ratio.
        slice_view: ``axial``, ``coronal`` or ``sagittal`` plane to show.
        num_classes: background + classes (default: from the labels).

    Returns:
        ``path``.
    """
    if num_classes is None:
        num_classes = int(max(int(r.label.max()) for r in rows)) + 1 if rows else 2
    columns = ["image", "ground truth", *panels]
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(2.1 * len(columns), 2.3 * len(rows) + 0.3),
                             squeeze=False)
    aspect = _aspect(spacing, slice_view)
    for r, row in enumerate(rows):
        index = (row.slice_index if row.slice_index is not None
                 else middle_slice(row.label, slice_view, list(row.predictions.values())))
        image_plane = _plane(row.image[0], slice_view, index)
        reference = _plane(row.label, slice_view, index)
        for c, column in enumerate(columns):
            ax = axes[r, c]
            if column == "image":
                _draw_panel(ax, image_plane, None, None, num_classes, aspect)
                ax.set_title(f"{slice_view} slice {index}", fontsize=8)
                ax.set_ylabel(f"{row.case}\n{textwrap.fill(row.note, 34)}", fontsize=7)
            elif column == "ground truth":
                _draw_panel(ax, image_plane, reference, None, num_classes, aspect)
                ax.set_title("ground truth", fontsize=8)
            elif column in row.predictions:
                _draw_panel(ax, image_plane, _plane(row.predictions[column], slice_view, index), reference,
                            num_classes, aspect)
                ax.set_title(f"{PANEL_TITLES.get(column, column)}\n{_dice_text(row.dice.get(column))}", fontsize=8)
            else:
                ax.axis("off")
                ax.text(0.5, 0.5, f"{PANEL_TITLES.get(column, column)}\nnot available", ha="center",
                        va="center", fontsize=8, transform=ax.transAxes)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)
