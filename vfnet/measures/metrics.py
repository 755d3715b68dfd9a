"""Overlap, surface-distance and volume metrics of binary masks, and of one case's label maps.

Empty-mask convention (used everywhere in vfnet, documented in ``vfnet_evaluate --help``):

============================  ======  ==========================================
reference / prediction        Dice    HD95
============================  ======  ==========================================
both empty                    1.0     0.0 (nothing to find, nothing found)
one empty, the other not      0.0     NaN: undefined; summaries leave it out of
                                      mean/quantiles and count it as ``n_nan``
============================  ======  ==========================================

Dice is therefore never NaN, so the mean Dice of a case (its overall score) is always
defined. Relative volume difference is NaN when the reference is empty.

Spacings are given in the array's own axis order (for a SimpleITK array, (z, y, x) —
the reverse of ``image.GetSpacing()``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage


def _check_pair(reference: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference = np.asarray(reference, dtype=bool)
    prediction = np.asarray(prediction, dtype=bool)
    if reference.shape != prediction.shape:
        raise ValueError(f"reference shape {reference.shape} differs from prediction shape {prediction.shape}")
    return reference, prediction


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim:
        raise ValueError(f"spacing {spacing} has {len(spacing)} values for a {ndim}D mask")
    return spacing


def dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Dice-Sørensen coefficient 2|R∩P| / (|R| + |P|) of two binary masks.

    Args:
        reference: ground-truth mask (any shape; non-zero is foreground).
        prediction: predicted mask of the same shape.

    Returns:
        Dice in [0, 1]; 1.0 when both masks are empty, 0.0 when only one is.

    Example:
        >>> dice(np.array([1, 1, 0, 0]), np.array([0, 1, 1, 0]))
        0.5
    """
    reference, prediction = _check_pair(reference, prediction)
    total = int(reference.sum()) + int(prediction.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(reference, prediction).sum()) / total


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a binary mask: foreground voxels with a face-neighbour in the background.

    Voxels on the array border count as surface (the outside is background).
    """
    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def union_box(reference: np.ndarray, prediction: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """The bounding box of both masks together, grown by ``margin`` voxels (clipped to the array)."""
    union = np.logical_or(reference, prediction)
    box = []
    for axis, size in enumerate(union.shape):
        present = np.nonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))[0]
        box.append(slice(max(int(present[0]) - margin, 0), min(int(present[-1]) + 1 + margin, size)))
    return tuple(box)


def surface_distances(reference: np.ndarray, prediction: np.ndarray,
                      spacing: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm, both ways, for two non-empty masks.

    Both masks are first cropped to their union bounding box plus one voxel: every surface
    voxel lies inside it, and a Euclidean distance between two voxels of the box does not
    depend on what lies outside, so the distances are those of the whole volume (tested
    equal), at a fraction of the cost for organs much smaller than the scan.

    Returns:
        (distance of every reference surface voxel to the prediction surface,
        distance of every prediction surface voxel to the reference surface)
    """
    reference, prediction = _check_pair(reference, prediction)
    spacing = _check_spacing(spacing, reference.ndim)
    box = union_box(reference, prediction)
    reference, prediction = reference[box], prediction[box]
    ref_surface, pred_surface = surface(reference), surface(prediction)
    # distance_transform_edt measures to the nearest zero, so the surface must be the zeros
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=spacing)
    return to_pred[ref_surface], to_ref[pred_surface]


def hd95(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th percentile Hausdorff distance in mm.

    The 95th percentile (linear interpolation) of the symmetric surface distances: the
    distances from each reference surface voxel to the prediction surface pooled with
    those from each prediction surface voxel to the reference surface. Surfaces come from
    a binary erosion with face connectivity; distances from
    ``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing``.

    Args:
        reference: ground-truth mask.
        prediction: predicted mask of the same shape.
        spacing: voxel size per array axis in mm (default 1 mm).

    Returns:
        HD95 in mm; 0.0 when both masks are empty, NaN when exactly one is (undefined:
        summaries leave it out and count it).

    Example:
        >>> ref = np.zeros((5, 5, 5), bool); ref[1, 2, 2] = True
        >>> hd95(ref, np.roll(ref, 2, axis=0), spacing=(3.0, 1.0, 1.0))
        6.0
    """
    reference, prediction = _check_pair(reference, prediction)
    has_ref, has_pred = bool(reference.any()), bool(prediction.any())
    if not has_ref and not has_pred:
        return 0.0
    if not has_ref or not has_pred:
        return float("nan")
    forward, backward = surface_distances(reference, prediction, spacing)
    return float(np.percentile(np.concatenate([forward, backward]), 95))


def volume_ml(mask: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Volume of a mask in millilitres (spacing in mm; 1 ml = 1000 mm³)."""
    mask = np.asarray(mask, dtype=bool)
    return float(mask.sum()) * float(np.prod(_check_spacing(spacing, mask.ndim))) / 1000.0


def volume_difference(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Prediction volume minus reference volume, in ml (positive: over-segmentation)."""
    reference, prediction = _check_pair(reference, prediction)
    return volume_ml(prediction, spacing) - volume_ml(reference, spacing)


def relative_volume_difference(reference: np.ndarray, prediction: np.ndarray) -> float:
    """(prediction − reference) / reference volume; NaN when the reference is empty."""
    reference, prediction = _check_pair(reference, prediction)
    ref_voxels = int(reference.sum())
    if ref_voxels == 0:
        return float("nan")
    return (int(prediction.sum()) - ref_voxels) / ref_voxels


def label_metrics(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float] | None = None) -> dict:
    """Every metric of one binary mask pair, as a flat dict (the per-label entry of a case)."""
    reference, prediction = _check_pair(reference, prediction)
    return {
        "dice": dice(reference, prediction),
        "hd95": hd95(reference, prediction, spacing),
        "volume_reference_ml": volume_ml(reference, spacing),
        "volume_prediction_ml": volume_ml(prediction, spacing),
        "volume_difference_ml": volume_difference(reference, prediction, spacing),
        "relative_volume_difference": relative_volume_difference(reference, prediction),
    }


def evaluate_case(reference_labels: np.ndarray, predicted_labels: np.ndarray, label_values: Mapping[str, int],
                  spacing: Sequence[float] | None = None) -> dict:
    """Metrics of one case, per label, and its overall score (mean Dice over the labels).

    Args:
        reference_labels: integer label map (ground truth).
        predicted_labels: integer label map of the same shape.
        label_values: label name → value to evaluate; background (0) is skipped if present.
        spacing: voxel size per array axis in mm.

    Returns:
        ``{"labels": {name: label_metrics(...)}, "mean_dice": float}``; ``mean_dice`` is NaN
        only when no foreground label is given.

    Example:
        >>> ref = np.array([[0, 1, 1, 2]]); pred = np.array([[0, 1, 2, 2]])
        >>> evaluate_case(ref, pred, {"organ": 1, "lesion": 2})["mean_dice"]
        0.6666666666666666
    """
    reference_labels = np.asarray(reference_labels)
    predicted_labels = np.asarray(predicted_labels)
    if reference_labels.shape != predicted_labels.shape:
        raise ValueError(f"reference shape {reference_labels.shape} differs from "
                         f"prediction shape {predicted_labels.shape}")
    per_label = {
        name: label_metrics(reference_labels == value, predicted_labels == value, spacing)
        for name, value in label_values.items() if value != 0
    }
    dices = [entry["dice"] for entry in per_label.values()]
    return {"labels": per_label, "mean_dice": float(np.mean(dices)) if dices else float("nan")}
