"""2.5D training batches of one view: slice stacks with context, foreground oversampling, augmentation.

The input of a slice is its ``context_slices`` neighbours (clamped at the volume's edges)
times the image channels, channel-major: [c0 s−1, c0 s, c0 s+1, c1 s−1, ...]. The same
:func:`vfnet.views.slice_stacks` serves training and prediction, so both see identical inputs.
Volumes are read into RAM once, already in the view's layout (via :mod:`vfnet.views`).

Example:
    >>> volumes = load_view_volumes(PreprocessedDataset(folder), cases, "coronal")
    >>> loader = make_train_loader(volumes, patch_size=[40, 40], context=3, batch_size=32, num_workers=2)
    >>> batch = next(loader)  # {"data": (32, 3, 40, 40), "target": (32, 1, 40, 40)}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.transforms.abstract_transforms import Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import GaussianNoiseTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

from vfnet.preprocessing.data import PreprocessedDataset
from vfnet.resolution import IDENTITY, downsample_image, downsample_label, normalise_factor
from vfnet.views import slice_stacks, to_view

MAX_FOREGROUND_POINTS = 20000  # per class and case: enough to sample centres, small in RAM


@dataclass
class ViewVolume:
    """One case in a view's layout: image (C, S, H, W), label (S, H, W), foreground voxels per class."""

    case_id: str
    image: np.ndarray
    label: np.ndarray
    foreground: dict[int, np.ndarray]


def _foreground_points(label: np.ndarray, rng: np.random.Generator) -> dict[int, np.ndarray]:
    points = {}
    for value in np.unique(label):
        if value == 0:
            continue
        where = np.argwhere(label == value)
        if len(where) > MAX_FOREGROUND_POINTS:
            where = where[rng.choice(len(where), MAX_FOREGROUND_POINTS, replace=False)]
        points[int(value)] = where.astype(np.int32)
    return points


def load_view_volumes(dataset: PreprocessedDataset, cases: Sequence[str], view: str,
                      with_foreground: bool = True, downsample: Sequence[int] | None = None) -> list[ViewVolume]:
    """Read ``cases`` into RAM in ``view``'s layout (contiguous, so slicing a stack is cheap).

    ``downsample`` shrinks each canonical axis by its factor first (see :mod:`vfnet.resolution`);
    prediction applies the same factor, read from the unit's checkpoint.
    """
    rng = np.random.default_rng(0)
    volumes = []
    for case in cases:
        image, label = dataset.load(case, mmap=False)
        if normalise_factor(downsample) != IDENTITY:
            label = np.asarray(label)
            image = downsample_image(np.asarray(image), downsample)
            label = downsample_label(label, downsample, int(label.max()) + 1)
        label_view = np.ascontiguousarray(to_view(label, view))
        volumes.append(ViewVolume(case, np.ascontiguousarray(to_view(image, view), dtype=np.float32), label_view,
                                  _foreground_points(label_view, rng) if with_foreground else {}))
    return volumes


def crop_padded(array: np.ndarray, start: Sequence[int], size: Sequence[int], fill: float = 0) -> np.ndarray:
    """Window of ``size`` over the last ``len(size)`` axes starting at ``start`` (may be negative).

    Voxels outside the array are ``fill``; leading axes (channels) are kept whole. Serves the
    2D slice windows and the 3D patches alike.
    """
    spatial = array.shape[-len(size):]
    out = np.full(array.shape[:-len(size)] + tuple(int(s) for s in size), fill, dtype=array.dtype)
    src, dst = [], []
    for begin, length, extent in zip(start, size, spatial):
        lo, hi = max(int(begin), 0), min(int(begin) + int(length), extent)
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo - begin, lo - begin + max(0, hi - lo)))
    out[(..., *dst)] = array[(..., *src)]
    return out


def _window_start(extent: int, length: int, centre: int | None, rng: np.random.Generator) -> int:
    # Windows stay inside the slice where it is large enough; smaller slices sit somewhere inside the window.
    lo, hi = min(0, extent - length), max(0, extent - length)
    if centre is None:
        return int(rng.integers(lo, hi + 1))
    return int(np.clip(centre - length // 2, lo, hi))


class SeededSampler(SlimDataLoaderBase):
    """A batchgenerators data loader with its own random generator (no numpy global state).

    In-process it draws from ``default_rng(seed)``; each background worker (batchgenerators
    calls :meth:`set_thread_id` in every worker) draws from ``default_rng([seed, worker])``, so
    workers never repeat each other's batches.
    """

    def __init__(self, data, batch_size: int, seed: int = 0):
        super().__init__(data, batch_size)
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)

    def set_thread_id(self, thread_id: int) -> None:
        super().set_thread_id(thread_id)
        self.rng = np.random.default_rng([self.seed, int(thread_id)])

    def _foreground_centre(self, volume: ViewVolume) -> np.ndarray:
        points = volume.foreground[list(volume.foreground)[self.rng.integers(len(volume.foreground))]]
        return points[self.rng.integers(len(points))]

    def generate_train_batch(self) -> dict:
        samples = [self.sample(self._data[self.rng.integers(len(self._data))],
                               i >= self.batch_size - self.num_foreground) for i in range(self.batch_size)]
        return {"data": np.stack([s[0] for s in samples]), "target": np.stack([s[1] for s in samples])}


class SliceSampler(SeededSampler):
    """Endless random batches ``{"data": (B, C·context, *patch), "target": (B, 1, *patch)}`` (float32).

    Draws from its own generator (:class:`SeededSampler`). The last ``oversample_foreground``
    share of every batch is centred on a foreground voxel of a randomly chosen class; the rest
    are random slices and crops.

    Args:
        volumes: from :func:`load_view_volumes`.
        patch_size: planned (H, W).
        context: slices per stack.
        batch_size: samples per batch.
        oversample_foreground: share of each batch forced onto foreground (about 1/3).
        seed: seed of the sampler's generator.
    """

    def __init__(self, volumes: list[ViewVolume], patch_size: Sequence[int], context: int, batch_size: int,
                 oversample_foreground: float = 0.33, seed: int = 0):
        super().__init__(volumes, batch_size, seed)
        self.patch_size, self.context = [int(p) for p in patch_size], int(context)
        self.num_foreground = round(batch_size * oversample_foreground)

    def sample(self, volume: ViewVolume, force_foreground: bool) -> tuple[np.ndarray, np.ndarray]:
        """(C·context, *patch) input and (1, *patch) label of one slice window."""
        centre = None
        if force_foreground and volume.foreground:
            centre = self._foreground_centre(volume)
            index = int(centre[0])
        else:
            index = int(self.rng.integers(volume.label.shape[0]))
        start = [_window_start(volume.label.shape[1 + a], self.patch_size[a],
                               None if centre is None else centre[1 + a], self.rng) for a in range(2)]
        stack = slice_stacks(volume.image, [index], self.context)[0]
        return (crop_padded(stack, start, self.patch_size),
                crop_padded(volume.label[index][None], start, self.patch_size).astype(np.float32))


def augmentation_2d(patch_size: Sequence[int], mirror_axes: Sequence[int] = ()) -> Compose:
    """Rotation, scaling, Gaussian noise, brightness, contrast, gamma and, along ``mirror_axes`` of the
    slice (0: height, 1: width), mirroring of 2D batches.

    Volumes are LPS-oriented, so anatomy always faces the same way; mirroring would swap the sides
    of lateral labels (left and right kidney) and anterior/posterior ones, so the plan mirrors none.
    """
    transforms = [
        SpatialTransform(list(patch_size), patch_center_dist_from_border=None, do_elastic_deform=False,
                         do_rotation=True, angle_x=(-np.pi / 6, np.pi / 6), do_scale=True, scale=(0.85, 1.25),
                         border_mode_data="constant", border_cval_data=0, order_data=3,
                         border_mode_seg="constant", border_cval_seg=0, order_seg=0, random_crop=False,
                         data_key="data", label_key="target", p_el_per_sample=0, p_scale_per_sample=0.2,
                         p_rot_per_sample=0.2),
        GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_sample=0.1, data_key="data"),
        BrightnessMultiplicativeTransform((0.75, 1.25), per_channel=False, p_per_sample=0.15, data_key="data"),
        ContrastAugmentationTransform((0.75, 1.25), per_channel=False, p_per_sample=0.15, data_key="data"),
        GammaTransform((0.7, 1.5), per_channel=False, retain_stats=True, p_per_sample=0.15, data_key="data"),
    ]
    if mirror_axes:
        transforms.append(MirrorTransform(axes=tuple(int(a) for a in mirror_axes), data_key="data",
                                          label_key="target"))
    return Compose(transforms)


def make_train_loader(volumes: list[ViewVolume], patch_size: Sequence[int], context: int, batch_size: int,
                      num_workers: int, seed: int = 0, augment: bool = True, mirror_axes: Sequence[int] = ()):
    """Augmented training batches, made by ``num_workers`` background processes (0: in-process).

    Background workers keep the network from waiting for data; in-process loading is for
    tests and debugging. Call ``loader._finish()`` (or :func:`close_loader`) when done.
    """
    return start_loader(SliceSampler(volumes, patch_size, context, batch_size, seed=seed),
                        augmentation_2d(patch_size, mirror_axes) if augment else None, num_workers, seed)


def start_loader(sampler, transform, num_workers: int, seed: int = 0):
    """Batches of ``sampler`` through ``transform``, in ``num_workers`` background processes (0: in-process),
    each worker's numpy global RNG seeded from ``seed`` (batchgenerators' transforms draw from it; the
    samplers have their own generators). The 2D and 3D training loaders both start here."""
    if num_workers <= 0:
        return SingleThreadedAugmenter(sampler, transform)
    seeds = [seed * 1000 + i for i in range(num_workers)]
    return NonDetMultiThreadedAugmenter(sampler, transform, num_workers, num_cached=max(2, 2 * num_workers),
                                        seeds=seeds)


def fixed_batches(volumes: list[ViewVolume], patch_size: Sequence[int], context: int, batch_size: int,
                  num_batches: int, seed: int = 0) -> list[dict]:
    """The same validation batches at every validation (no augmentation), drawn once with ``seed``."""
    sampler = SliceSampler(volumes, patch_size, context, batch_size, seed=seed)
    return [sampler.generate_train_batch() for _ in range(num_batches)]


def close_loader(loader) -> None:
    """Stop a loader's background workers, if it has any."""
    finish = getattr(loader, "_finish", None)
    if finish is not None:
        finish()
