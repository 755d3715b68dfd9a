"""Fusion of the three views' probability maps: majority, mean, STAPLE, stack, VFN and VFN without image.

Every method has one signature through :func:`fuse`: probability maps per view (view →
(num_classes, z, y, x) float, class 0 = background), the image (C, z, y, x) or None, an
optional VFN model and VFN settings; the result is (z, y, x) uint8 class labels.
:func:`vfn_input` is the one place where the VFN's input is built, for training and
inference alike. SimpleITK is imported only inside :func:`staple_fusion`, so training code
may import this module.

Example:
    >>> labels = fuse("majority", {"axial": pa, "coronal": pc, "sagittal": ps}, image)
    >>> labels = fuse("vfn", probs, image, model=vfn, vfn_config=plan["vfn"], postprocess=True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from vfnet.errors import ModelNotFoundError, VfnetError
from vfnet.fusion.postprocess import keep_largest_component
from vfnet.fusion.roi import Roi, crop_to_roi, pad_to_size, roi_from_mask, window_grid, window_weights
from vfnet.fusion.stack import stack_probabilities
from vfnet.networks.vfn import vfn_probabilities
from vfnet.views import VIEWS

METHODS = ("majority", "mean", "staple", "stack", "vfn", "vfn-noimage")
IMAGE_PERCENTILES = (0.5, 99.5)
STAPLE_THRESHOLD = 0.5


@dataclass
class VfnConfig:
    """How the VFN is applied: planned patch, stride and ROI margin, plus runtime choices.

    Args:
        patch_size: window size (z, y, x).
        stride: step between windows.
        roi_margin: voxels added around the majority-vote foreground box.
        weighting: ``gaussian`` or ``uniform`` weights where windows overlap.
        batch_size: windows per forward pass.
        device: where to run; None keeps the model's device.
        quiet: hide the progress bar.
        mirror: spatial axes (0 z, 1 y, 2 x) along which each window is also run mirrored and the
            outputs averaged (test-time augmentation); empty (the default) runs no mirroring.
    """

    patch_size: Sequence[int]
    stride: Sequence[int]
    roi_margin: Sequence[int]
    weighting: str = "gaussian"
    batch_size: int = 4
    device: str | torch.device | None = None
    quiet: bool = True
    mirror: tuple[int, ...] = ()

    @classmethod
    def from_plan(cls, plan, **overrides) -> VfnConfig:
        """Settings from ``plan["vfn"]`` (a Plan or the plans.json dict), runtime choices as keywords."""
        vfn = plan["vfn"]
        return cls(vfn["patch_size"], vfn["stride"], vfn["roi_margin"], **overrides)


def _as_config(vfn_config) -> VfnConfig:
    if isinstance(vfn_config, VfnConfig):
        return vfn_config
    if isinstance(vfn_config, Mapping) and {"patch_size", "stride", "roi_margin"} <= set(vfn_config):
        known = {k: vfn_config[k] for k in ("weighting", "batch_size", "device", "quiet") if k in vfn_config}
        return VfnConfig(vfn_config["patch_size"], vfn_config["stride"], vfn_config["roi_margin"], **known)
    raise ValueError("VFN fusion needs vfn_config: a VfnConfig (VfnConfig.from_plan(plan)) or plan['vfn']")


def _checked(view_probs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not view_probs:
        raise VfnetError("fusion needs the probability maps of at least one view")
    shapes = {view: tuple(p.shape) for view, p in view_probs.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 4:
        raise VfnetError(f"view probability maps must all be (num_classes, z, y, x) of one shape; got {shapes}")
    return dict(view_probs)


def _mean_probabilities(probs: dict[str, np.ndarray]) -> np.ndarray:
    total = None
    for p in probs.values():
        total = p.astype(np.float32) if total is None else total + p
    return total / len(probs)


def mean_fusion(view_probs: Mapping[str, np.ndarray]) -> np.ndarray:
    """Argmax of the views' averaged probability maps."""
    return np.argmax(_mean_probabilities(_checked(view_probs)), axis=0).astype(np.uint8)


def majority_vote(view_probs: Mapping[str, np.ndarray]) -> np.ndarray:
    """Argmax per view; a label where more than half the views (2 of 3) agree, else the argmax of the mean."""
    probs = _checked(view_probs)
    num_classes = next(iter(probs.values())).shape[0]
    votes = np.stack([np.argmax(p, axis=0) for p in probs.values()])
    counts = np.stack([(votes == c).sum(0) for c in range(num_classes)])
    decided = counts.max(0) * 2 > len(probs)
    fallback = np.argmax(_mean_probabilities(probs), axis=0)
    return np.where(decided, counts.argmax(0), fallback).astype(np.uint8)


def staple_fusion(view_probs: Mapping[str, np.ndarray], threshold: float = STAPLE_THRESHOLD) -> np.ndarray:
    """SimpleITK STAPLE per foreground class on the views' binarized (argmax) maps.

    A class absent from every view makes STAPLE return NaN everywhere; that reads as
    background. Where several classes pass ``threshold`` the most probable one wins.
    """
    import SimpleITK as sitk  # only here: networks and training stay free of SimpleITK

    probs = _checked(view_probs)
    num_classes = next(iter(probs.values())).shape[0]
    votes = [np.argmax(p, axis=0) for p in probs.values()]
    out = np.zeros(votes[0].shape, dtype=np.uint8)
    best = np.zeros(votes[0].shape, dtype=np.float64)
    for cls in range(1, num_classes):
        masks = [sitk.GetImageFromArray((v == cls).astype(np.uint8)) for v in votes]
        staple = sitk.STAPLEImageFilter()
        staple.SetForegroundValue(1.0)
        probability = np.nan_to_num(sitk.GetArrayFromImage(staple.Execute(masks)), nan=0.0)
        take = (probability > threshold) & (probability > best)
        out[take] = cls
        best[take] = probability[take]
    return out


def _scale_to_unit(channel: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(channel, IMAGE_PERCENTILES)
    return float(lo), float(hi)


def vfn_input(image: np.ndarray | None, view_probs: Mapping[str, np.ndarray], use_image: bool = True,
              roi: Roi | None = None) -> np.ndarray:
    """The VFN's input channels, all in [0, 1]: image channels, then the views' foreground maps.

    Each image channel is scaled between its own 0.5 and 99.5 percentiles over the whole
    image and clipped; then come the foreground classes 1..C of the axial, coronal and
    sagittal maps, view-major (matching :meth:`VolumetricFusionNet.view_channels`).

    Args:
        image: (M, z, y, x) image channels; may be None when ``use_image`` is False.
        view_probs: view → (num_classes, z, y, x) probabilities; all three views are needed.
        use_image: False for the no-image VFN.
        roi: optional crop, applied after the percentiles are taken over the whole image.

    Returns:
        float32 (M + 3·C, z, y, x), or (3·C, ...) without the image.
    """
    missing = [v for v in VIEWS if v not in view_probs]
    if missing:
        raise VfnetError(f"the VFN needs the maps of all three views; missing: {', '.join(missing)}")
    crop = (lambda a: a) if roi is None else (lambda a: crop_to_roi(a, roi))
    parts = []
    if use_image:
        if image is None:
            raise VfnetError("the VFN with image input needs the image; pass it or use vfn-noimage")
        if tuple(image.shape[1:]) != tuple(view_probs[VIEWS[0]].shape[1:]):
            raise VfnetError(f"image shape {image.shape[1:]} differs from the maps' {view_probs[VIEWS[0]].shape[1:]}")
        for channel in image:
            lo, hi = _scale_to_unit(channel)
            part = crop(channel).astype(np.float32)
            parts.append(np.clip((part - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(part))
    for view in VIEWS:
        parts.extend(np.clip(crop(view_probs[view][1:]).astype(np.float32), 0, 1))
    return np.stack(parts).astype(np.float32, copy=False)


def _device_of(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _window_probabilities(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    # a lone window goes twice: one-sample batches take PyTorch's slow CPU path (see below)
    if len(batch) == 1:
        return vfn_probabilities(model(torch.cat([batch, batch]))).float()[:1]
    return vfn_probabilities(model(batch)).float()


def sliding_window_probabilities(model: torch.nn.Module, volume: np.ndarray, config: VfnConfig) -> np.ndarray:
    """Probabilities (num_classes, z, y, x) of ``model`` over a (C, z, y, x) volume at least one patch large.

    Windows of the planned patch at the planned stride cover the volume; overlapping
    outputs are averaged with ``config.weighting`` weights. Runs in batches, with fp16
    autocast on CUDA. With ``config.mirror`` (test-time augmentation, asked for explicitly,
    e.g. ``vfnet_predict --tta``) every window also runs mirrored along each of the axes in
    ``config.mirror`` and the outputs are averaged. A batch holding a single window is sent
    twice and only the first output kept: PyTorch's CPU convolution takes a slow path for
    one-sample batches with few channels, and the pair is faster than the window alone
    (0.09 s against 0.15 s for a Hippocampus patch on 2 cores); the result is the same.
    The model's train/eval mode is restored afterwards.
    """
    patch = [int(p) for p in config.patch_size]
    if any(s < p for s, p in zip(volume.shape[1:], patch)):
        raise ValueError(f"volume {volume.shape[1:]} is smaller than the patch {patch}; pad it first")
    device = torch.device(config.device) if config.device is not None else _device_of(model)
    model.to(device)
    windows = window_grid(volume.shape[1:], patch, config.stride)
    weights = torch.from_numpy(window_weights(patch, config.weighting)).to(device)
    tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)).to(device)
    total, norm = None, torch.zeros(volume.shape[1:], device=device)
    autocast = (torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda"
                else contextlib.nullcontext())
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast:
            for first in tqdm(range(0, len(windows), config.batch_size), desc="VFN windows", leave=False,
                              delay=2, disable=True if config.quiet else None):
                chunk = windows[first:first + config.batch_size]
                batch = torch.stack([tensor[(slice(None), *w)] for w in chunk])
                probs = _window_probabilities(model, batch)
                for axis in config.mirror:
                    probs = probs + _window_probabilities(model, batch.flip(axis - 3)).flip(axis - 3)
                probs = probs / (1 + len(config.mirror))
                if total is None:
                    total = torch.zeros((probs.shape[1], *volume.shape[1:]), device=device)
                for window, p in zip(chunk, probs):
                    total[(slice(None), *window)] += p * weights
                    norm[window] += weights
    finally:
        model.train(was_training)
    return (total / norm).cpu().numpy()


def _vfn_roi(view_probs: Mapping[str, np.ndarray], image: np.ndarray | None, model: torch.nn.Module, vfn_config,
             use_image: bool | None):
    """(majority vote, ROI, VFN probabilities inside the ROI); ROI and probabilities are None for an empty vote."""
    config = _as_config(vfn_config)
    probs = _checked(view_probs)
    model_uses_image = getattr(model, "use_image", None)
    if use_image is None:
        use_image = True if model_uses_image is None else model_uses_image
    if model_uses_image is not None and model_uses_image != use_image:
        raise VfnetError(f"this VFN was built {'with' if model_uses_image else 'without'} the image channels; "
                         f"use fusion '{'vfn' if model_uses_image else 'vfn-noimage'}' with it")
    num_classes = next(iter(probs.values())).shape[0]
    majority = majority_vote(probs)
    if not majority.any():
        return majority, None, None
    roi = roi_from_mask(majority, config.roi_margin, config.patch_size, majority.shape)
    volume, back = pad_to_size(vfn_input(image, probs, use_image, roi), config.patch_size)
    fused = sliding_window_probabilities(model, volume, config)
    if fused.shape[0] != num_classes:
        raise VfnetError(f"the VFN predicts {fused.shape[0]} classes but the maps have {num_classes}")
    return majority, roi, fused[(slice(None), *back)]


def vfn_fusion(view_probs: Mapping[str, np.ndarray], image: np.ndarray | None, model: torch.nn.Module,
               vfn_config, use_image: bool | None = None) -> np.ndarray:
    """The VFN inside the ROI of the majority vote (plus the planned margin); the majority vote outside.

    Args:
        view_probs: view → (num_classes, z, y, x) probabilities of the three views.
        image: (M, z, y, x) image, or None for a no-image model.
        model: a trained VFN (or any module mapping the VFN input to VFN logits).
        vfn_config: a :class:`VfnConfig` or ``plan["vfn"]``.
        use_image: feed the image channels; default the model's own ``use_image``.

    Returns:
        (z, y, x) uint8 labels. An empty majority vote has no ROI and is returned as is.
    """
    majority, roi, fused = _vfn_roi(view_probs, image, model, vfn_config, use_image)
    if roi is None:
        return majority
    out = majority.copy()
    out[roi] = np.argmax(fused, axis=0)
    return out


def vfn_fused_probabilities(view_probs: Mapping[str, np.ndarray], image: np.ndarray | None,
                            model: torch.nn.Module, vfn_config, use_image: bool | None = None) -> np.ndarray:
    """Class probabilities (K, z, y, x) of VFN fusion: the VFN's inside its ROI, the views' mean outside.

    Several such maps (one per fold VFN on its own fold's view maps) can be averaged, which is
    how ``vfnet_predict`` ensembles the pairs cross-validation scored.
    """
    mean = _mean_probabilities(_checked(view_probs))
    _, roi, fused = _vfn_roi(view_probs, image, model, vfn_config, use_image)
    if roi is not None:
        mean[(slice(None), *roi)] = fused
    return mean


def fused_probabilities(method: str, view_probs: Mapping[str, np.ndarray], image: np.ndarray | None = None,
                        model=None, vfn_config=None) -> np.ndarray:
    """Class probabilities of the methods that have them (mean, stack, vfn, vfn-noimage), to average over folds."""
    if method == "mean":
        return _mean_probabilities(_checked(view_probs))
    if method == "stack":
        if model is None:
            raise ModelNotFoundError("fusion 'stack' needs fitted weights; vfnet_crossval fits them on the fusion sets")
        return stack_probabilities(_checked(view_probs), model)
    if method in ("vfn", "vfn-noimage"):
        if model is None:
            raise ModelNotFoundError(f"fusion '{method}' needs a trained VFN")
        return vfn_fused_probabilities(view_probs, image, model, vfn_config, use_image=method == "vfn")
    raise VfnetError(f"fusion '{method}' has no probabilities to average; use mean, stack or vfn")


def fuse(method: str, view_probs: Mapping[str, np.ndarray], image: np.ndarray | None = None,
         model: torch.nn.Module | None = None, vfn_config=None, postprocess: bool = False) -> np.ndarray:
    """Fuse the views' probability maps with one of :data:`METHODS`.

    Args:
        method: ``majority``, ``mean``, ``staple``, ``stack``, ``vfn`` or ``vfn-noimage``.
        view_probs: view → (num_classes, z, y, x) float probabilities, class 0 = background.
        image: (C, z, y, x) image channels (needed by ``vfn``).
        model: the trained VFN of ``vfn`` / ``vfn-noimage``, or the weights of ``stack``.
        vfn_config: a :class:`VfnConfig` or ``plan["vfn"]`` for the VFN methods.
        postprocess: keep only the largest connected component of each label.

    Returns:
        (z, y, x) uint8 class labels.
    """
    if method not in METHODS:
        raise VfnetError(f"fusion method '{method}' unknown; expected one of {', '.join(METHODS)}")
    if method == "majority":
        labels = majority_vote(view_probs)
    elif method == "mean":
        labels = mean_fusion(view_probs)
    elif method == "staple":
        labels = staple_fusion(view_probs)
    elif method == "stack":
        labels = np.argmax(fused_probabilities("stack", view_probs, model=model), axis=0).astype(np.uint8)
    else:
        if model is None:
            raise ModelNotFoundError(f"fusion '{method}' needs a trained VFN; train it with vfnet_train vfn "
                                     f"{'--no-image ' if method == 'vfn-noimage' else ''}<fold>")
        labels = vfn_fusion(view_probs, image, model, vfn_config, use_image=method == "vfn")
    if postprocess:
        labels = keep_largest_component(labels, next(iter(view_probs.values())).shape[0])
    return labels
