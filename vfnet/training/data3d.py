"""3D training patches for the 3D U-Net baseline: foreground oversampling, flips and intensity augmentation.

Volumes are read into RAM once in the canonical (z, y, x) layout. A patch has the planned
``plan["unet3d"]["patch_size"]``; volumes smaller than the patch along an axis sit
somewhere inside it and the rest is padded (image 0, the normalized mean; label background).
About a third of every batch is centred on a foreground voxel of a random class.

Augmentation is deliberately light, so CPU presets stay fast: mirroring along the planned axes
(``plan.unet3d.mirror_axes``: every axis), Gaussian noise, brightness, contrast and gamma
(batchgenerators). No rotation or scaling: 3D interpolation of every patch would cost more
than the network on two CPU cores.

Example:
    >>> volumes = load_volumes(PreprocessedDataset(folder), cases)
    >>> loader = make_train_loader_3d(volumes, patch_size=[40, 56, 40], batch_size=2, num_workers=1)
    >>> batch = next(loader)  # {"data": (2, C, 40, 56, 40), "target": (2, 1, 40, 56, 40)}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from batchgenerators.transforms.abstract_transforms import Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import GaussianNoiseTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform

from vfnet.preprocessing.data import PreprocessedDataset

# One volume type for 2D and 3D sampling: a 3D volume is a ViewVolume in the canonical layout.
from vfnet.training.data2d import (
    SeededSampler,
    ViewVolume,
    _foreground_points,
    _window_start,
    crop_padded,
    start_loader,
)


def load_volumes(dataset: PreprocessedDataset, cases: Sequence[str], with_foreground: bool = True) -> list[ViewVolume]:
    """Read ``cases`` into RAM in the canonical layout: image (C, z, y, x) float32, label (z, y, x)."""
    rng = np.random.default_rng(0)
    volumes = []
    for case in cases:
        image, label = dataset.load(case, mmap=False)
        label = np.ascontiguousarray(label)
        volumes.append(ViewVolume(case, np.ascontiguousarray(image, dtype=np.float32), label,
                                  _foreground_points(label, rng) if with_foreground else {}))
    return volumes


class PatchSampler3D(SeededSampler):
    """Endless random batches ``{"data": (B, C, *patch), "target": (B, 1, *patch)}`` (float32).

    Draws from its own generator (:class:`vfnet.training.data2d.SeededSampler`). The last ``oversample_foreground`` share of every batch is centred
    on a foreground voxel of a randomly chosen class; the rest are random windows.

    Args:
        volumes: from :func:`load_volumes`.
        patch_size: planned (z, y, x) patch.
        batch_size: patches per batch.
        oversample_foreground: share of each batch forced onto foreground (about 1/3).
        seed: seed of the sampler's generator.
    """

    def __init__(self, volumes: list[ViewVolume], patch_size: Sequence[int], batch_size: int,
                 oversample_foreground: float = 0.33, seed: int = 0):
        super().__init__(volumes, batch_size, seed)
        self.patch_size = [int(p) for p in patch_size]
        # at least one foreground patch per batch, even with the batch of 2 of 3D presets
        self.num_foreground = max(1, round(batch_size * oversample_foreground)) if oversample_foreground > 0 else 0

    def sample(self, volume: ViewVolume, force_foreground: bool) -> tuple[np.ndarray, np.ndarray]:
        """(C, *patch) image and (1, *patch) label of one window."""
        centre = None
        if force_foreground and volume.foreground:
            centre = self._foreground_centre(volume)
        start = [_window_start(volume.label.shape[a], self.patch_size[a], None if centre is None else int(centre[a]),
                               self.rng) for a in range(3)]
        return (crop_padded(volume.image, start, self.patch_size),
                crop_padded(volume.label, start, self.patch_size)[None].astype(np.float32))


def augmentation_3d(mirror_axes: Sequence[int]) -> Compose:
    """Gaussian noise, brightness, contrast, gamma and mirroring along ``mirror_axes`` (0 z, 1 y, 2 x)."""
    transforms = [
        GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_sample=0.1, data_key="data"),
        BrightnessMultiplicativeTransform((0.75, 1.25), per_channel=False, p_per_sample=0.15, data_key="data"),
        ContrastAugmentationTransform((0.75, 1.25), per_channel=False, p_per_sample=0.15, data_key="data"),
        GammaTransform((0.7, 1.5), per_channel=False, retain_stats=True, p_per_sample=0.15, data_key="data"),
    ]
    if mirror_axes:
        transforms.append(MirrorTransform(axes=tuple(int(a) for a in mirror_axes), data_key="data", label_key="target"))
    return Compose(transforms)


def make_train_loader_3d(volumes: list[ViewVolume], patch_size: Sequence[int], batch_size: int, num_workers: int,
                         seed: int = 0, augment: bool = True, mirror_axes: Sequence[int] = ()):
    """Augmented training batches made by ``num_workers`` background processes (0: in-process).

    Stop the workers with :func:`vfnet.training.data2d.close_loader` when done.
    """
    return start_loader(PatchSampler3D(volumes, patch_size, batch_size, seed=seed),
                        augmentation_3d(mirror_axes) if augment else None, num_workers, seed)


def fixed_batches_3d(volumes: list[ViewVolume], patch_size: Sequence[int], batch_size: int, num_batches: int,
                     seed: int = 0) -> list[dict]:
    """The same validation batches at every validation (no augmentation), drawn once with ``seed``."""
    sampler = PatchSampler3D(volumes, patch_size, batch_size, seed=seed)
    return [sampler.generate_train_batch() for _ in range(num_batches)]
