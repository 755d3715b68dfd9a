"""Sliding windows over volumes: where windows start, how they tile a volume, how overlaps are weighted.

Plain geometry over numpy arrays, shared by the VFN's training patches, the VFN's and the 3D
U-Net's sliding-window inference.

Example:
    >>> sliding_window_starts(100, 40, 20)
    [0, 20, 40, 60]
    >>> padded, back = pad_to_size(volume, [64, 64, 64])   # padded[(..., *back)] is volume again
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Window = tuple[slice, slice, slice]


def pad_to_size(array: np.ndarray, size: Sequence[int], value: float = 0) -> tuple[np.ndarray, Window]:
    """Pad the last three axes evenly to at least ``size``.

    Returns:
        The padded array and the slices that crop it back to the input.
    """
    spatial = array.shape[-3:]
    before = [max(int(s) - n, 0) // 2 for s, n in zip(size, spatial)]
    after = [max(int(s) - n, 0) - b for s, n, b in zip(size, spatial, before)]
    back = tuple(slice(b, b + n) for b, n in zip(before, spatial))
    if not any(before) and not any(after):
        return array, back
    widths = [(0, 0)] * (array.ndim - 3) + list(zip(before, after))
    return np.pad(array, widths, mode="constant", constant_values=value), back


def sliding_window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Window starts along one axis that cover ``[0, size)``; the last window ends at ``size``.

    An axis no longer than the patch gets the single start 0 (pad it to the patch first).
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if size <= patch:
        return [0]
    starts = list(range(0, size - patch, stride))
    starts.append(size - patch)
    return starts


def window_grid(shape: Sequence[int], patch: Sequence[int], stride: Sequence[int]) -> list[Window]:
    """Every window (as slices) of a sliding window over a volume at least as large as the patch."""
    per_axis = [sliding_window_starts(int(s), int(p), int(st)) for s, p, st in zip(shape, patch, stride)]
    return [tuple(slice(a, a + int(p)) for a, p in zip(start, patch))
            for start in np.stack(np.meshgrid(*per_axis, indexing="ij"), -1).reshape(-1, 3).tolist()]


def window_weights(patch: Sequence[int], mode: str = "gaussian", sigma_scale: float = 0.125) -> np.ndarray:
    """Weights of one window's voxels when overlapping windows are averaged.

    ``gaussian`` trusts the centre of a window more than its border (σ = patch · ``sigma_scale``);
    ``uniform`` weighs every voxel alike. Weights are positive everywhere and at most 1.
    """
    if mode == "uniform":
        return np.ones(tuple(int(p) for p in patch), dtype=np.float32)
    if mode != "gaussian":
        raise ValueError(f"window weighting '{mode}' unknown; expected gaussian or uniform")
    axes = []
    for p in patch:
        centre, sigma = (int(p) - 1) / 2, max(int(p) * sigma_scale, 1e-3)
        axes.append(np.exp(-0.5 * ((np.arange(int(p)) - centre) / sigma) ** 2))
    weights = (axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]).astype(np.float32)
    weights /= weights.max()
    # Far corners underflow towards zero; keep them positive so every voxel gets a defined average.
    return np.maximum(weights, max(float(weights[weights > 0].min()), 1e-6))
