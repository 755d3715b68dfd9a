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

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vfnet.device import read_tensor
from vfnet.errors import ModelNotFoundError, VfnetError
from vfnet.fusion.postprocess import keep_largest_component
from vfnet.fusion.roi import Roi, crop_to_roi, mask_bounds, roi_from_bounds, spans_volume
from vfnet.fusion.stack import stack_logits, stack_probabilities
from vfnet.inference.sliding_window import sliding_window_probabilities
from vfnet.networks.vfn import PRIOR_EPSILON, PriorCorrection, VolumetricFusionNet, vfn_probabilities
from vfnet.resolution import IDENTITY, downsample_image, normalise_factor, upsample_probabilities
from vfnet.views import VIEWS
from vfnet.windows import pad_to_size

METHODS = ("majority", "mean", "staple", "stack", "vfn", "vfn-noimage")
IMAGE_PERCENTILES = (0.5, 99.5)
STAPLE_THRESHOLD = 0.5
# SimpleITK's STAPLE runs its EM until it converges, with no practical cap: where the views disagree it
# crept on for thousands of iterations (one CHAOST2 case held crossval for over 15 min at 31 ms each) while
# its decision no longer moved (the same voxels above 0.5 at 10, 100 and 1000 iterations on that case)
STAPLE_MAX_ITERATIONS = 100


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
        shortcut: a prior VFN whose head is still zero (it kept iteration 0) adds nothing to its
            prior, so it fuses as the prior without running the network: the same maps, faster.
            False runs the network anyway (to time it).
    """

    patch_size: Sequence[int]
    stride: Sequence[int]
    roi_margin: Sequence[int]
    weighting: str = "gaussian"
    batch_size: int = 4
    device: str | torch.device | None = None
    quiet: bool = True
    mirror: tuple[int, ...] = ()
    shortcut: bool = True

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


def _float32_maps(view_probs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The checked maps as float32, converted once (exact for float16 maps; no copy of float32 ones):
    numpy's float16 comparisons and clipping are many times slower."""
    return {view: np.asarray(p, dtype=np.float32) for view, p in _checked(view_probs).items()}


def _mean_probabilities(probs: dict[str, np.ndarray]) -> np.ndarray:
    maps = iter(probs.values())
    total = np.array(next(maps), dtype=np.float32, copy=True)
    for p in maps:
        total += p  # in place: no new map per view
    total /= len(probs)
    return total


def mean_fusion(view_probs: Mapping[str, np.ndarray]) -> np.ndarray:
    """Argmax of the views' averaged probability maps."""
    return class_argmax(_mean_probabilities(_checked(view_probs)))


def class_argmax(probs: np.ndarray) -> np.ndarray:
    """``np.argmax(probs, axis=0)`` as uint8 (the first class wins a tie), one pass per class.

    Faster than numpy's argmax along a leading axis on large maps (in development 0.05 s against 0.07 s on
    (5, 37, 256, 256)), and the same labels.
    """
    return _class_max(probs)[0]


def _class_max(probs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(:func:`class_argmax` of ``probs``, a (K, ...) array or a sequence of K maps of one shape; their maximum)."""
    best = np.array(probs[0], dtype=np.float32 if probs[0].dtype == np.float16 else probs[0].dtype, copy=True)
    labels = np.zeros(best.shape, dtype=np.uint8)
    beats = np.empty(best.shape, dtype=bool)
    for c in range(1, len(probs)):
        np.greater(probs[c], best, out=beats)
        np.copyto(labels, c, where=beats)
        np.maximum(best, probs[c], out=best)
    return labels, best


def majority_vote(view_probs: Mapping[str, np.ndarray]) -> np.ndarray:
    """Argmax per view; a label where more than half the views (2 of 3) agree, else the argmax of the mean.

    The mean is computed only where no label has a majority (the same values as over the whole map).
    """
    probs = list(_checked(view_probs).values())
    votes = [class_argmax(p) for p in probs]
    # each pair of views compared once (three comparisons for three views); two labels cannot both have a majority
    agreeing = [np.ones(votes[0].shape, dtype=np.uint8) for _ in votes]
    for i, j in itertools.combinations(range(len(votes)), 2):
        same = votes[i] == votes[j]
        agreeing[i] += same
        agreeing[j] += same
    out = np.zeros(votes[0].shape, dtype=np.uint8)
    undecided = np.ones(votes[0].shape, dtype=bool)
    for vote, count in zip(votes, agreeing):
        take = count * 2 > len(votes)
        np.copyto(out, vote, where=take)
        undecided &= ~take
    # the few voxels without a majority, as flat indices (one index array over the mask, not three)
    flat = np.flatnonzero(undecided)
    if flat.size:
        where = np.unravel_index(flat, undecided.shape)
        out[where] = np.argmax(_mean_probabilities({i: p[(slice(None), *where)] for i, p in enumerate(probs)}), axis=0)
    return out


def staple_probability(masks: Sequence[np.ndarray], max_iterations: int = STAPLE_MAX_ITERATIONS
                       ) -> tuple[np.ndarray, int]:
    """(STAPLE's foreground probability, NaN read as 0; the EM iterations it ran) for binary ``masks``."""
    import SimpleITK as sitk  # only here: networks and training stay free of SimpleITK

    staple = sitk.STAPLEImageFilter()
    staple.SetForegroundValue(1.0)
    staple.SetMaximumIterations(int(max_iterations))
    probability = sitk.GetArrayFromImage(staple.Execute([sitk.GetImageFromArray(m.astype(np.uint8)) for m in masks]))
    return np.nan_to_num(probability, nan=0.0), int(staple.GetElapsedIterations())


def staple_fusion(view_probs: Mapping[str, np.ndarray], threshold: float = STAPLE_THRESHOLD) -> np.ndarray:
    """SimpleITK STAPLE per foreground class on the views' binarized (argmax) maps.

    A class absent from every view makes STAPLE return NaN everywhere; that reads as
    background. Where several classes pass ``threshold`` the most probable one wins.

    Kept over ``sitk.MultiLabelSTAPLEImageFilter`` on the views' argmax maps, which was measured
    on three noisy views of synthetic maps, (3, 40, 56, 40) and (5, 36, 256, 256): it ran 2-4×
    faster (1.7 s against 6.2 s for the larger) but its mean foreground Dice against the truth
    was 0.1-3 points lower (0.902 against 0.908; 0.614 against 0.642 with noisier views), so
    the single run does not give the same results. Each class's EM stops after
    :data:`STAPLE_MAX_ITERATIONS` iterations.
    """
    probs = _checked(view_probs)
    num_classes = next(iter(probs.values())).shape[0]
    votes = [class_argmax(p) for p in probs.values()]
    out = np.zeros(votes[0].shape, dtype=np.uint8)
    best = np.zeros(votes[0].shape, dtype=np.float64)
    for cls in range(1, num_classes):
        probability, _ = staple_probability([v == cls for v in votes])
        take = (probability > threshold) & (probability > best)
        out[take] = cls
        best[take] = probability[take]
    return out


def _check_image(image: np.ndarray | None, view_probs: Mapping[str, np.ndarray]) -> None:
    """Refuse a missing image, or one whose grid is not the maps', for a VFN with image input."""
    if image is None:
        raise VfnetError("the VFN with image input needs the image; pass it or use vfn-noimage")
    shape = next(iter(view_probs.values())).shape[1:]
    if tuple(image.shape[1:]) != tuple(shape):
        raise VfnetError(f"image shape {image.shape[1:]} differs from the maps' {shape}")


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
    if use_image:
        _check_image(image, view_probs)
    images = len(image) if use_image else 0
    foreground = view_probs[VIEWS[0]].shape[0] - 1
    # filled in place: one float32 copy of the (cropped) inputs, not one per step
    out = np.empty((images + len(VIEWS) * foreground, *crop(view_probs[VIEWS[0]][0]).shape), dtype=np.float32)
    for i in range(images):
        lo, hi = _scale_to_unit(image[i])
        if hi > lo:
            out[i] = crop(image[i])
            out[i] -= lo
            out[i] /= hi - lo
            np.clip(out[i], 0, 1, out=out[i])
        else:
            out[i] = 0
    for v, view in enumerate(VIEWS):
        start = images + v * foreground
        out[start:start + foreground] = crop(view_probs[view][1:])
        np.clip(out[start:start + foreground], 0, 1, out=out[start:start + foreground])
    return out


def _majority_roi(probs: list[np.ndarray], margin, min_size) -> Roi | None:
    """The box of the majority vote's foreground plus ``margin``, at least ``min_size``; None for an empty vote.

    The vote is counted only inside the box of the voxels where some view's argmax is not background:
    it holds every voxel the vote can label (a majority needs such views, and where no label has one,
    the mean's argmax is foreground only where some view's is), at a fraction of a whole-volume vote.
    Where ``min_size`` spans the whole volume on every axis (a VFN window as large as the volume, as on
    Hippocampus and on CHAOST2 at the views' 1/4 in-plane), any foreground gives the whole volume, so the
    vote is counted a few slices at a time only until it shows some.
    """
    shape = probs[0].shape[1:]
    candidates = np.zeros(shape, dtype=bool)
    for p in probs:
        for c in range(1, len(p)):
            candidates |= p[c] > p[0]
    bounds = mask_bounds(candidates)
    if bounds is None:
        return None
    box = tuple(slice(lo, hi) for lo, hi in bounds)
    if spans_volume(min_size, shape):
        for start in range(box[0].start, box[0].stop, VOTE_SLAB):
            slab = (slice(start, min(start + VOTE_SLAB, box[0].stop)), *box[1:])
            if majority_vote({i: p[(slice(None), *slab)] for i, p in enumerate(probs)}).any():
                return tuple(slice(0, extent) for extent in shape)
        return None
    inside = mask_bounds(majority_vote({i: p[(slice(None), *box)] for i, p in enumerate(probs)}))
    if inside is None:
        return None
    return roi_from_bounds([(lo + b.start, hi + b.start) for (lo, hi), b in zip(inside, box)], margin, min_size, shape)


# slices of the first axis counted at a time where only whether the majority vote has foreground matters
VOTE_SLAB = 4


def _vfn_roi(view_probs: Mapping[str, np.ndarray], image: np.ndarray | None, model: torch.nn.Module, vfn_config,
             use_image: bool | None, labels: bool = False):
    """(ROI, VFN probabilities inside it); both None for an empty majority vote (no foreground to fuse).

    With ``labels``: (ROI, uint8 labels inside it) instead, for a caller that needs only the labels; a VFN that
    kept its mean prior then never builds the probabilities (:func:`mean_prior_labels`).
    """
    config = _as_config(vfn_config)
    probs = _float32_maps(view_probs)
    model_uses_image = getattr(model, "use_image", None)
    if use_image is None:
        use_image = True if model_uses_image is None else model_uses_image
    if model_uses_image is not None and model_uses_image != use_image:
        raise VfnetError(f"this VFN was built {'with' if model_uses_image else 'without'} the image channels; "
                         f"use fusion '{'vfn' if model_uses_image else 'vfn-noimage'}' with it")
    num_classes = next(iter(probs.values())).shape[0]
    # a VFN trained at a coarser in-plane resolution fuses the ROI's inputs block-averaged by its factor
    factor = normalise_factor(getattr(model, "input_downsample", None))
    min_size = [int(p) * f for p, f in zip(config.patch_size, factor)]
    roi = _majority_roi(list(probs.values()), config.roi_margin, min_size)
    if roi is None:
        return None, None
    prior_vfn = isinstance(model, VolumetricFusionNet) and model.view_prior
    as_prior = prior_vfn and config.shortcut and model.adds_nothing()  # its network would add nothing
    if as_prior and model.prior_kind == "mean":
        if use_image:
            _check_image(image, probs)  # as the network would, though the prior does not read it
        # the mean prior needs neither the image nor the input
        return roi, (mean_prior_labels if labels else mean_prior_probabilities)(probs, roi)
    inputs = vfn_input(image, probs, use_image, roi)
    if as_prior:  # the stack prior, from the input
        fused = _prior_probabilities(model, inputs)
    else:
        # a coarse VFN with a prior adds its correction, upsampled, to the prior of the full-resolution maps
        # (below), so the views' boundaries keep their resolution and only the correction is coarse
        residual = factor != IDENTITY and prior_vfn
        volume, back = pad_to_size(downsample_image(inputs, factor), config.patch_size)
        fused = sliding_window_probabilities(PriorCorrection(model) if residual else model, volume, config.patch_size,
                                             config.stride, config.weighting, config.batch_size, config.device,
                                             config.quiet, mirror_axes=config.mirror, raw=residual)[(slice(None), *back)]
        fused = upsample_probabilities(fused, inputs.shape[1:])  # unchanged at full resolution; linear, so logits too
        if residual and model.prior_kind == "mean":
            fused = mean_prior_probabilities(probs, roi, correction=fused)
        elif residual:
            fused = _prior_probabilities(model, inputs, correction=fused)
    if fused.shape[0] != num_classes:
        raise VfnetError(f"the VFN predicts {fused.shape[0]} classes but the maps have {num_classes}")
    return roi, class_argmax(fused) if labels else fused


def _foreground_sum(view_probs: Mapping[str, np.ndarray], roi: Roi | None, out: np.ndarray) -> int:
    """Write into ``out`` ((K − 1, z, y, x) inside ``roi``) the sum over views of their foreground maps, each
    clipped to [0, 1]; returns the number of views.

    In place (each new map of a CHAOST2 ROI is ~16 MB of fresh pages: a map already in [0, 1] is added
    without a clipped copy), through torch on the maps' memory:
    numpy clips a strided crop about 3× slower than a contiguous copy of it, on one thread, where torch
    clamps it on the process's threads (in development on four classes of a CHAOST2 ROI, 2 cores: the sum of
    three views 3.2 ms against 9.0 ms for numpy with a copy before each clip, 12 ms clipping the crops).
    """
    crop = (lambda a: a) if roi is None else (lambda a: crop_to_roi(a, roi))
    maps = [read_tensor(crop(p[1:])) for p in _float32_maps(view_probs).values()]
    total = torch.from_numpy(out)
    torch.clamp(maps[0], 0, 1, out=total)
    scratch = None
    for p in maps[1:]:
        low, high = torch.aminmax(p)
        if low >= 0 and high <= 1:  # as every map vfnet makes: added as it is, without a clipped copy
            total += p
        else:
            if scratch is None:
                scratch = torch.empty_like(total)
            total += torch.clamp(p, 0, 1, out=scratch)
    return len(maps)


def _roi_shape(view_probs: Mapping[str, np.ndarray], roi: Roi | None) -> tuple[int, ...]:
    first = next(iter(view_probs.values()))
    return first.shape if roi is None else (len(first), *crop_to_roi(first[0], roi).shape)


def mean_prior_probabilities(view_probs: Mapping[str, np.ndarray], roi: Roi | None = None,
                             correction: np.ndarray | None = None) -> np.ndarray:
    """The mean view prior's probabilities inside ``roi``, straight from the views' maps, plus a
    ``correction`` of its logits (a VFN's, (K, z, y, x), or (1, ...) for one organ) if given.

    What :meth:`VolumetricFusionNet.prior_logits` and :func:`vfn_probabilities` give through the VFN input,
    to float rounding: each view's foreground maps clipped to [0, 1] and averaged, background 1 − their
    sum, every class clamped to [ε, 1] (one organ: its map to [ε, 1 − ε]); the softmax of their logarithms
    plus the correction is their product with the correction's exponential, renormalised. No image
    percentiles, no logarithms: in development 0.04 s against 0.16 s for the input and the network's prior
    on a synthetic (5, 36, 256, 256) case.
    """
    out = np.empty(_roi_shape(view_probs, roi), dtype=np.float32)
    views = _foreground_sum(view_probs, roi, out[1:])
    # through torch on out's memory: its exponentials and reductions run on the process's threads, where numpy's
    # run on one
    probs = torch.from_numpy(out)
    foreground = probs[1:]
    foreground /= views
    if len(foreground) == 1:
        organ = foreground[0].clamp_(PRIOR_EPSILON, 1 - PRIOR_EPSILON)
        if correction is not None:  # sigmoid(logit(m) + c) = m e^c / (m e^c + 1 - m)
            weighted = organ * torch.exp(read_tensor(np.asarray(correction[0], dtype=np.float32)))
            probs[1] = weighted / (weighted + (1 - organ))
        torch.sub(1, probs[1], out=probs[0])
        return out
    torch.sum(foreground, dim=0, out=probs[0])
    torch.sub(1, probs[0], out=probs[0])
    probs.clamp_(PRIOR_EPSILON, 1.0)
    if correction is not None:
        shift = read_tensor(np.asarray(correction, dtype=np.float32))
        probs *= torch.exp(shift - shift.amax(dim=0))
    probs /= probs.sum(dim=0)
    return out


def mean_prior_labels(view_probs: Mapping[str, np.ndarray], roi: Roi | None = None) -> np.ndarray:
    """The argmax of :func:`mean_prior_probabilities` without a correction (uint8 labels inside ``roi``), to
    float rounding, without the probabilities.

    The prior's clamping and normalising keep the order of the classes, so its argmax is that of the
    summed foreground maps S against the background n − ΣS (n views; background wins a tie, as class 0
    does in an argmax). No clamping, no normalising and no background map in the probabilities: what a
    VFN that kept iteration 0 does for each case in crossval. Labels can differ from the probabilities'
    argmax only where two classes agree to a float's last bits.
    """
    classes, *shape = _roi_shape(view_probs, roi)
    total = np.empty((classes - 1, *shape), dtype=np.float32)
    views = _foreground_sum(view_probs, roi, total)
    background = np.sum(total, axis=0)
    np.subtract(views, background, out=background)
    return _class_max([background, *total])[0]


def _prior_probabilities(model: VolumetricFusionNet, inputs: np.ndarray, correction: np.ndarray | None = None
                         ) -> np.ndarray:
    """Probabilities of a prior VFN's prior (from its ``inputs``), plus a ``correction`` of its logits if given."""
    with torch.inference_mode():
        logits = model.prior_logits(torch.from_numpy(inputs)[None].to(next(model.parameters()).device))[0].float()
        if correction is not None:
            logits = logits + torch.from_numpy(correction).to(logits.device)
        return vfn_probabilities(logits).cpu().numpy()


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
        (z, y, x) uint8 labels; an empty majority vote has no ROI and gives all background, as it is.
    """
    roi, fused = _vfn_roi(view_probs, image, model, vfn_config, use_image, labels=True)
    out = np.zeros(next(iter(view_probs.values())).shape[1:], dtype=np.uint8)  # the vote's background outside the ROI
    if roi is not None:
        out[roi] = fused
    return out


def vfn_fused_probabilities(view_probs: Mapping[str, np.ndarray], image: np.ndarray | None,
                            model: torch.nn.Module, vfn_config, use_image: bool | None = None) -> np.ndarray:
    """Class probabilities (K, z, y, x) of VFN fusion: the VFN's inside its ROI, background (probability 1)
    outside it, where :func:`vfn_fusion` labels the vote's background; so their argmax is its labels.

    Several such maps (one per fold VFN on its own fold's view maps) can be averaged, which is
    how ``vfnet_predict`` ensembles the pairs cross-validation scored.
    """
    roi, fused = _vfn_roi(view_probs, image, model, vfn_config, use_image)
    first = next(iter(view_probs.values()))
    out = np.zeros(first.shape, dtype=np.float32)
    out[0] = 1
    if roi is not None:
        out[(slice(None), *roi)] = fused
    return out


def _stack_weights(model):
    if model is None:
        raise ModelNotFoundError("fusion 'stack' needs fitted weights; vfnet_crossval fits them on the fusion sets")
    return model


def fused_probabilities(method: str, view_probs: Mapping[str, np.ndarray], image: np.ndarray | None = None,
                        model=None, vfn_config=None) -> np.ndarray:
    """Class probabilities of the methods that have them (mean, stack, vfn, vfn-noimage), to average over folds."""
    if method == "mean":
        return _mean_probabilities(_checked(view_probs))
    if method == "stack":
        return stack_probabilities(_checked(view_probs), _stack_weights(model))
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
        # the argmax of the logits is that of the probabilities, without the softmax
        labels = class_argmax(stack_logits(_checked(view_probs), _stack_weights(model)).numpy())
    else:
        if model is None:
            raise ModelNotFoundError(f"fusion '{method}' needs a trained VFN; train it with vfnet_train vfn "
                                     f"{'--no-image ' if method == 'vfn-noimage' else ''}<fold>")
        labels = vfn_fusion(view_probs, image, model, vfn_config, use_image=method == "vfn")
    if postprocess:
        labels = keep_largest_component(labels, next(iter(view_probs.values())).shape[0])
    return labels
