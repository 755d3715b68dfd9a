"""Patches for the VFN from a fusion set: random crops, optionally with the paper's 90° rotations and flips.

The planned default (``plan.vfn.augmentation == "none"``, ``plan.vfn.mirror_axes == []``) only
crops: every channel keeps its view identity and the anatomy keeps its sides. Swapping axes
exchanges the axial and sagittal channels (views with different error patterns) and flips
exchange anterior and posterior, so the VFN cannot learn which view to trust where.
``"paper"`` restores the paper's rotations (and ``mirror_axes`` [0, 1, 2] its flips):
rotations swap two spatial axes, so the view channels swap with them (a map made by slicing
along axis i always sits in the channel of the view that slices axis i: axial ↔ z, coronal ↔
y, sagittal ↔ x); axes are only swapped where the patch extent and the voxel spacing along
both are equal.

Validation uses :func:`tile_batches`: every validation case is covered by whole tiles, so
every case is scored at every validation.

On a GPU with room for it the training fusion set is moved there once
(:func:`samples_on_device`) and the sampler crops tensors on the GPU: cropping and casting batch
16 at 64³ on the CPU took most of a CUDA VFN unit's time (3.5 iterations/s against 59 for the
steps alone, benchmarks/results/gpu.md at 1144136). The crops, their order and the random draws
are the same whichever device holds the samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import permutations
from pathlib import Path

import numpy as np
import torch

from vfnet.atomic import read_json
from vfnet.errors import ModelNotFoundError
from vfnet.resolution import IDENTITY, downsample_image, downsample_label, normalise_factor
from vfnet.views import VIEWS, view_channel_slice
from vfnet.windows import sliding_window_starts


def load_manifest(folder: Path) -> dict:
    """The manifest.json of a fusion set (its cases, their folds, source units and ROIs)."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise ModelNotFoundError(f"{path} not found; build it with vfnet_build_fusion_set")
    return read_json(path)


def load_fusion_samples(folder: Path, cases: list[str], input_downsample=None,
                        num_classes: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(inputs float16 (M + 3C, z, y, x), label uint8 (z, y, x)) of each case, in RAM.

    With ``input_downsample`` (a VFN that fuses at a coarser in-plane resolution) the inputs are
    block-averaged and the label takes each block's majority class (``num_classes`` needed), as
    :func:`vfnet.fusion.methods.vfn_fusion` does at inference.
    """
    factor = normalise_factor(input_downsample)
    samples = []
    for case in cases:
        with np.load(Path(folder) / f"{case}.npz") as archive:
            inputs, label = archive["inputs"], archive["label"]
        if factor != IDENTITY:
            inputs = downsample_image(inputs, factor).astype(np.float16)
            label = downsample_label(label, factor, num_classes)
        samples.append((inputs, label))
    return samples


DEVICE_SHARE = 0.25  # of a GPU's free memory that a training fusion set may take there


def samples_on_device(samples: list[tuple[np.ndarray, np.ndarray]], device: torch.device | str) -> list:
    """``samples`` as tensors on ``device`` when it is a GPU with room for them, else unchanged.

    A fusion set that would take more than :data:`DEVICE_SHARE` of the GPU's free memory stays in
    RAM and is cropped there.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return samples
    size = sum(inputs.nbytes + label.nbytes for inputs, label in samples)
    free, _ = torch.cuda.mem_get_info(device)
    if size > DEVICE_SHARE * free:
        return samples
    return [(torch.from_numpy(inputs).to(device), torch.from_numpy(label).to(device)) for inputs, label in samples]


# numpy arrays or tensors (samples_on_device), the same operation for both
def _float32(x):
    return x.float() if isinstance(x, torch.Tensor) else x.astype(np.float32)


def _pad_end(x, pad: list[int]):
    """``x`` padded with zeros after its last ``len(pad)`` axes by ``pad`` voxels each."""
    if isinstance(x, torch.Tensor):
        return torch.nn.functional.pad(x, [v for after in reversed(pad) for v in (0, after)])
    return np.pad(x, [(0, 0)] * (x.ndim - len(pad)) + [(0, after) for after in pad])


def _permute(x, axes):
    return x.permute(*axes) if isinstance(x, torch.Tensor) else x.transpose(axes)


def _flip(x, axis: int):
    return torch.flip(x, (axis,)) if isinstance(x, torch.Tensor) else np.flip(x, axis)


def _contiguous(x):
    return x.contiguous() if isinstance(x, torch.Tensor) else np.ascontiguousarray(x)


def _stack(items):
    return torch.stack(items) if isinstance(items[0], torch.Tensor) else np.stack(items)


def _int64(x):
    return x.long() if isinstance(x, torch.Tensor) else x.astype(np.int64)


def _copy(x):
    return x.clone() if isinstance(x, torch.Tensor) else x.copy()


def recalibrated_maps(maps, temperature: float, bias, eps: float = 1e-4):
    """Foreground maps (F, ...) of one view, as probabilities of ``softmax(temperature · log p + b)``.

    The background is what the foreground leaves (``1 - sum``); ``b`` is 0 for it and ``bias`` (F
    values) for the foreground classes. Numpy arrays or tensors. Temperature 1 and zero bias give
    the maps back, up to the ``eps`` floor on each probability.
    """
    scale = np.exp(np.asarray(bias, dtype=np.float64)).astype(np.float32).reshape(-1, *[1] * (maps.ndim - 1))
    if isinstance(maps, torch.Tensor):
        scale = torch.from_numpy(scale).to(maps.device)
    foreground = maps.clip(eps, 1.0) ** temperature * scale
    background = (1.0 - maps.sum(0)[None]).clip(eps, 1.0) ** temperature
    return foreground / (background + foreground.sum(0)[None])


def allowed_axis_orders(patch_size: list[int], spacing: list[float]) -> list[tuple[int, int, int]]:
    """Axis permutations that keep the patch shape and the voxel spacing."""
    out = []
    for order in permutations(range(3)):
        if all(patch_size[a] == patch_size[b] and np.isclose(spacing[a], spacing[b])
               for a, b in zip(order, range(3))):
            out.append(order)
    return out


def permute_view_channels(num_image_channels: int, num_foreground: int, order: tuple[int, int, int]) -> list[int]:
    """Channel index list that moves each view's maps along with its axis under ``order``."""
    channels = list(range(num_image_channels))
    for new_axis in range(3):
        view = view_channel_slice(num_image_channels, num_foreground, order[new_axis])
        channels += list(range(view.start, view.stop))
    return channels


class VfnPatchSampler:
    """Random training batches ``{"data": (B, C, *patch), "target": (B, 1, *patch)}`` as numpy.

    Args:
        samples: from :func:`load_fusion_samples`, as numpy arrays or as tensors on one device
            (:func:`samples_on_device`): the batches are then tensors on that device.
        patch_size: planned VFN patch (z, y, x).
        spacing: target spacing (z, y, x), to decide which axis swaps are allowed.
        num_image_channels: M; ``use_image=False`` drops these channels (the paper's ablation).
        augment: random axis permutations (where allowed): the paper's rotations.
        mirror_axes: axes (0 z, 1 y, 2 x) each flipped with probability 1/2; None: every axis with
            ``augment`` (the paper's flips), none without.
        view_dropout: probability that a patch has one view (drawn at random) replaced by the mean of
            the other two views' maps, so the VFN cannot lean on one view's exact errors (0: never;
            the random draws of the other patches are then those of a sampler without it).
        map_jitter: strength ``s`` of a random recalibration of each view's maps in every patch
            (0: none, and the random draws are those of a sampler without it): per view, the
            class log-probabilities are multiplied by a temperature ``exp(u)``, ``u`` uniform in
            [-s, s], and each foreground class's gets a bias drawn from N(0, s²), then renormalised.
            The maps the VFN trains on (CCA units') and fuses (fold units') differ in how confident
            they are and how much they segment; this makes it see a range of both.
    """

    def __init__(self, samples, patch_size, spacing, num_image_channels: int, num_foreground: int,
                 batch_size: int, use_image: bool = True, augment: bool = True, seed: int = 0,
                 mirror_axes: Sequence[int] | None = None, view_dropout: float = 0.0, map_jitter: float = 0.0):
        self.samples = samples
        self.view_dropout = float(view_dropout)
        self.map_jitter = float(map_jitter)
        self.patch = [int(p) for p in patch_size]
        self.orders = allowed_axis_orders(self.patch, spacing) if augment else [(0, 1, 2)]
        self.augment = augment
        if mirror_axes is None:
            mirror_axes = (0, 1, 2) if augment else ()
        self.mirror_axes = tuple(int(a) for a in mirror_axes)
        self.num_image = num_image_channels
        self.num_foreground = num_foreground
        self.batch_size = batch_size
        self.use_image = use_image
        self.rng = np.random.default_rng(seed)

    def __iter__(self):
        return self

    def _crop(self, inputs: np.ndarray, label: np.ndarray):
        starts = [int(self.rng.integers(0, max(s - p, 0) + 1)) for s, p in zip(label.shape, self.patch)]
        window = tuple(slice(a, a + p) for a, p in zip(starts, self.patch))
        x, y = _float32(inputs[(slice(None), *window)]), label[window]
        pad = [p - s for s, p in zip(y.shape, self.patch)]
        if any(pad):
            x, y = _pad_end(x, pad), _pad_end(y, pad)
        return x, y

    def _augment(self, x: np.ndarray, y: np.ndarray):
        if self.augment:
            order = self.orders[int(self.rng.integers(len(self.orders)))]
            if order != (0, 1, 2):
                x = x[permute_view_channels(self.num_image, self.num_foreground, order)]
                x = _permute(x, (0, *(a + 1 for a in order)))
                y = _permute(y, order)
        for axis in self.mirror_axes:
            if self.rng.random() < 0.5:
                x, y = _flip(x, axis + 1), _flip(y, axis)
        return _contiguous(x), _contiguous(y)

    def __next__(self) -> dict:
        data, target = [], []
        for _ in range(self.batch_size):
            inputs, label = self.samples[int(self.rng.integers(len(self.samples)))]
            x, y = self._crop(inputs, label)
            if self.augment or self.mirror_axes:
                x, y = self._augment(x, y)
            if self.view_dropout and self.rng.random() < self.view_dropout:
                x = self._drop_view(x, int(self.rng.integers(3)))
            if self.map_jitter:
                x = self._jitter_views(x)
            data.append(x if self.use_image else x[self.num_image:])
            target.append(y[None])
        return {"data": _stack(data), "target": _int64(_stack(target))}

    def _drop_view(self, x, view: int):
        """``x`` with view ``view``'s maps replaced by the mean of the other two views' maps."""
        x = _copy(x)
        dropped, a, b = (view_channel_slice(self.num_image, self.num_foreground, v)
                         for v in (view, *(v for v in range(3) if v != view)))
        x[dropped] = (x[a] + x[b]) / 2
        return x

    def _jitter_views(self, x):
        """``x`` with each view's maps recalibrated at random (see ``map_jitter``)."""
        x = _copy(x)
        for view in range(3):
            channels = view_channel_slice(self.num_image, self.num_foreground, view)
            temperature = float(np.exp(self.rng.uniform(-self.map_jitter, self.map_jitter)))
            bias = self.rng.normal(0.0, self.map_jitter, self.num_foreground)
            x[channels] = recalibrated_maps(x[channels], temperature, bias)
        return x

    def tiles(self) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """Non-overlapping patch tiles (the last one per axis shifted inside) covering every sample,
        each with the index of its sample."""
        out = []
        for index, (inputs, label) in enumerate(self.samples):
            x_all = inputs if self.use_image else inputs[self.num_image:]
            if any(s < p for s, p in zip(label.shape, self.patch)):
                pad = [(0, max(0, p - s)) for s, p in zip(label.shape, self.patch)]
                x_all, label = np.pad(x_all, [(0, 0)] + pad), np.pad(label, pad)
            starts = [sliding_window_starts(int(s), p, p) for s, p in zip(label.shape, self.patch)]
            for a in starts[0]:
                for b in starts[1]:
                    for c in starts[2]:
                        window = tuple(slice(o, o + p) for o, p in zip((a, b, c), self.patch))
                        out.append((x_all[(slice(None), *window)].astype(np.float32), label[window][None], index))
        return out


def tile_batches(sampler: VfnPatchSampler, batch_size: int) -> list[dict]:
    """Validation batches that score every case of ``sampler`` whole (see :meth:`VfnPatchSampler.tiles`);
    ``"case"`` names each tile's sample, so the trainer can score each case too."""
    tiles = sampler.tiles()
    return [{"data": np.stack([t[0] for t in tiles[i:i + batch_size]]),
             "target": np.stack([t[1] for t in tiles[i:i + batch_size]]).astype(np.int64),
             "case": np.array([t[2] for t in tiles[i:i + batch_size]], dtype=np.int64)}
            for i in range(0, len(tiles), batch_size)]


def view_channel_names(num_image_channels: int, foreground: list[str]) -> list[str]:
    """Readable names of the VFN input channels, for logs."""
    return [f"image{c}" for c in range(num_image_channels)] + [f"{v}:{n}" for v in VIEWS for n in foreground]
