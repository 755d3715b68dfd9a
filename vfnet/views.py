"""Axis conventions of the three anatomical views: the only module that transposes for views.

Canonical arrays are LPS-oriented (z, y, x) = (inferior→superior, anterior→posterior,
right→left), optionally with leading channel axes. A view's array puts the slicing axis
first among the last three: axial slices are planes of constant z, coronal of constant y,
sagittal of constant x.

Example:
    >>> vol = np.zeros((4, 5, 6))
    >>> to_view(vol, "coronal").shape
    (5, 4, 6)
    >>> from_view(to_view(vol, "coronal"), "coronal").shape
    (4, 5, 6)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

VIEWS = ("axial", "coronal", "sagittal")
VIEW_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}
_PERMUTATION = {"axial": (0, 1, 2), "coronal": (1, 0, 2), "sagittal": (2, 0, 1)}


def view_channel_slice(num_image_channels: int, num_foreground: int, view_index: int) -> slice:
    """Channels of view ``VIEWS[view_index]``'s foreground maps in a VFN input: the image channels
    first, then each view's ``num_foreground`` maps, axial, coronal, sagittal."""
    first = num_image_channels + view_index * num_foreground
    return slice(first, first + num_foreground)


def check_view(view: str) -> str:
    if view not in VIEWS:
        raise ValueError(f"unknown view '{view}'; expected one of {', '.join(VIEWS)}")
    return view


def permutation(view: str) -> tuple[int, int, int]:
    """Spatial axis order of the view's array, in canonical axes."""
    return _PERMUTATION[check_view(view)]


def inverse_permutation(view: str) -> tuple[int, int, int]:
    return tuple(int(i) for i in np.argsort(permutation(view)))


def _full(perm: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    lead = ndim - 3
    return tuple(range(lead)) + tuple(lead + p for p in perm)


def to_view(volume, view: str):
    """Transpose the last three (canonical) axes so the view's slicing axis comes first.

    Works on numpy arrays and torch tensors alike.
    """
    perm = _full(permutation(view), volume.ndim)
    return volume.transpose(perm) if isinstance(volume, np.ndarray) else volume.permute(perm)


def from_view(volume, view: str):
    """Inverse of :func:`to_view`."""
    perm = _full(inverse_permutation(view), volume.ndim)
    return volume.transpose(perm) if isinstance(volume, np.ndarray) else volume.permute(perm)


def view_shape(shape: tuple[int, int, int], view: str) -> tuple[int, int, int]:
    """(slices, height, width) of a canonical (z, y, x) shape seen along ``view``."""
    return tuple(int(shape[p]) for p in permutation(view))


def context_indices(index: int, num_slices: int, context: int) -> np.ndarray:
    """Slice indices of a ``context``-slice stack centred on ``index``, clamped at the edges."""
    half = context // 2
    return np.clip(np.arange(index - half, index - half + context), 0, num_slices - 1)


def slice_stacks(image_view: np.ndarray, indices: Sequence[int], context: int) -> np.ndarray:
    """Network inputs (B, C·context, H, W) of slices ``indices`` of a view-layout image (C, S, H, W)."""
    index = np.stack([context_indices(int(i), image_view.shape[1], context) for i in indices])
    stacks = image_view[:, index]  # (C, B, context, H, W)
    return np.ascontiguousarray(stacks.swapaxes(0, 1).reshape(len(indices), -1, *image_view.shape[-2:]))
