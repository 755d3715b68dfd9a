"""Optional post-processing of fused labels: keep the largest connected component per label."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage


def keep_largest_component(labels: np.ndarray, num_classes: int, connectivity: int = 1,
                           classes: Iterable[int] | None = None) -> np.ndarray:
    """Keep, for every foreground label, only its largest connected component; the rest becomes background.

    Labels are disjoint, so cleaning one label never changes another's voxels: the result for a
    label is the same whether the others are cleaned or not (which lets crossval decide per label).

    Args:
        labels: (z, y, x) integer class labels (or label values, with ``classes`` naming them).
        num_classes: background + foreground classes.
        connectivity: 1 (faces, 6-neighbourhood) to 3 (26-neighbourhood), as ``scipy.ndimage``.
        classes: the labels to clean; default every foreground class 1 .. num_classes - 1.

    Returns:
        A new array of the same dtype.

    Example:
        >>> cleaned = keep_largest_component(fused, num_classes=3)
    """
    structure = ndimage.generate_binary_structure(labels.ndim, connectivity)
    out = labels.copy()
    for cls in range(1, num_classes) if classes is None else classes:
        components, count = ndimage.label(labels == cls, structure=structure)
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        out[(components != int(np.argmax(sizes))) & (components > 0)] = 0
    return out


def postprocess_classes(postprocess: bool | Iterable[int] | None, num_classes: int) -> tuple[int, ...]:
    """The classes to clean: True → every foreground class, False/None → none, else the classes given."""
    if postprocess is None or postprocess is False:
        return ()
    if postprocess is True:
        return tuple(range(1, num_classes))
    return tuple(int(c) for c in postprocess)


def apply_postprocessing(labels: np.ndarray, postprocess: bool | Iterable[int] | None, num_classes: int) -> np.ndarray:
    """``labels`` with the largest component kept for the classes :func:`postprocess_classes` names."""
    classes = postprocess_classes(postprocess, num_classes)
    return keep_largest_component(labels, num_classes, classes=classes) if classes else labels
