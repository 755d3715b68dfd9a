"""The values the planner writes for the settings that change results and that no fingerprint decides.

Schema version 1 hard-coded every one of these in the trainers, the predictor and the stack
fitter; version 2 writes them into plans.json, and the migration of a version-1 plan
(:mod:`vfnet.experiment_planning.migration`) fills them in from here, so both reproduce what
version 1 did. If one of these ever changes, freeze its version-1 value in the migration.
"""

from __future__ import annotations

import copy

SEED = 12345  # weights, patch sampling, fixed validation batches and the validation split
VALIDATION_FRACTION = 0.15  # of a unit's training cases, at least one
VALIDATION_BATCHES = 5  # fixed 2D and 3D validation batches, drawn once
VFN_VALIDATION_TILES = 4  # VFN tiles per validation forward pass (every validation case is scored whole)
# New plans' VFN validates on at least 5 fusion-set cases and keeps the view prior unless a trained checkpoint
# beats it there clearly (below). On CHAOST2 (2 validation cases of 15 at the 0.15 share) the trained
# checkpoints chosen at budget 45 fused their test folds worse than mean fusion in 3 of 3 folds (-0.49 to -1.61
# points), at budget 60 better in 3 of 3 (+0.65 to +1.63): 2 cases cannot tell which (the planned rows, per fold,
# of vfn_variants_Task20_CHAOST2.json, _epochs_budget45.json and _budget45.json as of commit dd0331f).
VFN_VALIDATION_CASES = 5
# Which trained checkpoint may replace the view prior: any whose validation cases gain, on average, at least 2
# standard errors of their per-case gains in pseudo-Dice (min_gain_se), with no fixed margin (min_gain 0). From
# e23324a to a1d8b03 new plans asked for a fixed 0.5 points instead. Paired on the same units before the change
# (the planned and se2 rows of vfn_variants_Task20_CHAOST2_budget45.json and
# vfn_variants_Task04_Hippocampus_budget30.json as of commits b11ef6e and 3d269b7), the standard-error test kept
# what 0.5 kept on CHAOST2 (two runs) and kept checkpoints that 0.5 turned down and that gained on their test
# folds on Hippocampus (+0.04 and +0.05 points overall); with views sorted per voxel on CHAOST2 it turned down two
# that 0.5 kept and that lost (-0.01 and -0.47). Paired after it (guard05 rows, commit a1d8b03), 0.5 would have
# kept a CHAOST2 checkpoint that gained (+0.26 overall, from one case of five) and kept the same on Hippocampus:
# no clear winner by Dice; the standard-error test is kept because it refuses gains that rest on one or two cases.
VFN_MIN_GAIN_SE = 2.0  # and min_gain left at 0

# nnU-Net's optimizer, the 2D and 3D default
SGD_NESTEROV = {"optimizer": "sgd", "momentum": 0.99, "nesterov": True, "weight_decay": 3e-5}
# plain SGD with momentum 0.9, as the paper trained the VFN
SGD_PAPER = {"optimizer": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 1e-5}
# AdamW: on the shared Hippocampus it learns far faster than SGD in short (CPU) schedules
ADAMW = {"optimizer": "adam", "momentum": None, "nesterov": None, "weight_decay": 3e-5}

POLY_LR = {"name": "poly", "exponent": 0.9}
STEP_LR = {"name": "step", "fractions": [2 / 3, 5 / 6], "gamma": 0.1}
GRAD_CLIP = 12.0  # 2D and 3D; the VFN trains unclipped

FALLBACK_FUSION = "vfn"  # vfnet_predict's fusion when vfnet_crossval recorded none
STACK_SEED = 12345
STACK_MAX_VOXELS = 200_000  # ROI voxels sampled from a fusion set to fit the stack weights

WINDOW_STEP_3D = 0.5  # the 3D U-Net's sliding windows overlap by half a patch (nnU-Net's)
MIRROR_AXES_3D = [0, 1, 2]  # the 3D U-Net trains mirrored along z, y and x


def network_training(network: str, num_classes: int) -> dict:
    """Schedule keys of ``network`` (``2d``, ``vfn``, ``3d``) that no preset changes: LR schedule,
    gradient clipping, loss and validation."""
    if network == "vfn":
        # Dice alone (the paper, one organ) left the multi-class softmax VFN predicting a foreground class
        # over the whole ROI on Hippocampus after a short schedule; cross-entropy anchors the background.
        # An untrained VFN with the view prior is mean fusion, so it validates at iteration 0 too.
        return {"lr_schedule": copy.deepcopy(STEP_LR), "grad_clip": None, "loss": "dice" if num_classes == 2 else "dice_ce",
                "val_batches": None, "val_batch_size": VFN_VALIDATION_TILES, "validate_at_start": True}
    return {"lr_schedule": copy.deepcopy(POLY_LR), "grad_clip": GRAD_CLIP, "loss": "dice_ce",
            "val_batches": VALIDATION_BATCHES, "val_batch_size": None, "validate_at_start": False}


def default_optimizer(network: str) -> dict:
    """The optimizer of a schedule that names none: the paper's SGD for the VFN, else nnU-Net's."""
    return dict(SGD_PAPER if network == "vfn" else SGD_NESTEROV)


def stride_for_step(patch_size, step: float = WINDOW_STEP_3D) -> list[int]:
    """Sliding-window stride of ``step`` (a fraction of the patch) along each axis."""
    return [max(1, round(int(p) * step)) for p in patch_size]
