"""Optional post-processing of fused labels: keep the largest connected component per label."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def keep_largest_component(labels: np.ndarray, num_classes: int, connectivity: int = 1) -> np.ndarray:
    """Keep, for every foreground label, only its largest connected component; the rest becomes background.

    Args:
        labels: (z, y, x) integer class labels.
        num_classes: background + foreground classes.
        connectivity: 1 (faces, 6-neighbourhood) to 3 (26-neighbourhood), as ``scipy.ndimage``.

    Returns:
        A new array of the same dtype.

    Example:
        >>> cleaned = keep_largest_component(fused, num_classes=3)
    """
    structure = ndimage.generate_binary_structure(labels.ndim, connectivity)
    out = labels.copy()
    for cls in range(1, num_classes):
        components, count = ndimage.label(labels == cls, structure=structure)
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        out[(components != int(np.argmax(sizes))) & (components > 0)] = 0
    return out
