"""Fusion of the three views' probability maps (majority, mean, STAPLE, VFN) and its helpers."""

from vfnet.fusion.methods import (
    METHODS,
    VfnConfig,
    fuse,
    majority_vote,
    mean_fusion,
    staple_fusion,
    vfn_fusion,
    vfn_input,
)
from vfnet.fusion.postprocess import keep_largest_component
from vfnet.fusion.roi import crop_to_roi, roi_from_mask
from vfnet.windows import pad_to_size, sliding_window_starts

__all__ = [
    "METHODS",
    "VfnConfig",
    "crop_to_roi",
    "fuse",
    "keep_largest_component",
    "majority_vote",
    "mean_fusion",
    "pad_to_size",
    "roi_from_mask",
    "sliding_window_starts",
    "staple_fusion",
    "vfn_fusion",
    "vfn_input",
]
