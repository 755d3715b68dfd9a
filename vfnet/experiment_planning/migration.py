"""Plans of older schema versions, read as the current one (or refused in one sentence).

Version 1 kept the settings that change results in code. :func:`migrate` fills them in with
the values version-1 code used (:mod:`vfnet.experiment_planning.settings`), so a version-1
plan trains and predicts as it did:

- ``resampling`` ``joint`` (one cubic zoom over all axes);
- ``training`` (seed 12345, validation fraction 0.15) and ``fusion`` (fallback ``vfn``, stack
  seed 12345 and 200 000 voxels);
- per schedule: the optimizer (none named: nnU-Net's SGD, or the paper's SGD for the VFN;
  ``sgd``: nnU-Net's SGD; ``adam``: AdamW), the LR schedule (poly 0.9; the VFN's ÷10 at 2/3
  and 5/6), gradient clipping (12; none for the VFN), the loss (Dice + cross-entropy; Dice
  alone for a one-organ VFN) and validation (5 fixed batches; the VFN every case whole, 4
  tiles a batch, from iteration 0); keys version-1 trainers overrode are dropped;
- the 3D U-Net's stride (half a patch) and mirroring (every axis); the VFN keys that version 1
  read with a default (``view_prior`` false, ``augmentation`` none, ``input_downsample``
  [1, 1, 1]) and its mirroring (every axis with the paper's augmentation, else none).

A version-1 plan whose views have no ``mirror_axes`` predates planned mirroring: its 2D models
were trained mirrored while version-1 code trains it unmirrored, so no value reproduces both
and the plan is refused.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

from vfnet.errors import PlanError
from vfnet.experiment_planning.schema import SCHEMA_VERSION
from vfnet.experiment_planning.settings import (
    ADAMW,
    FALLBACK_FUSION,
    MIRROR_AXES_3D,
    SEED,
    SGD_NESTEROV,
    STACK_MAX_VOXELS,
    STACK_SEED,
    VALIDATION_FRACTION,
    default_optimizer,
    network_training,
    stride_for_step,
)

RERUN = "rerun vfnet_plan_and_preprocess"
# schedule keys version-1 trainers set themselves, whatever the schedule said
V1_OVERRIDDEN = {"seed"}
V1_OVERRIDDEN_VFN = V1_OVERRIDDEN | {"lr_schedule", "grad_clip", "validate_at_start", "val_batches"}


def migrate(data: object, source: str = "plans.json") -> dict:
    """``data`` as a version-2 plan (a new dict when it was older; ``data`` itself is not changed).

    Raises:
        PlanError: one sentence naming ``source``: a version this vfnet cannot read, or a
            version-1 plan that cannot be migrated.
    """
    if not isinstance(data, Mapping):
        raise PlanError(f"{source}: expected a JSON object, found {type(data).__name__}")
    version = data.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise PlanError(f"{source} has no valid schema_version ({version!r}); {RERUN}")
    if version == SCHEMA_VERSION:
        return dict(data)
    if version == 1:
        return _from_version_1(data, source)
    if version > SCHEMA_VERSION:
        raise PlanError(f"{source} has schema version {version}, newer than the version {SCHEMA_VERSION} this "
                        f"vfnet reads; update vfnet, or {RERUN} with this one")
    raise PlanError(f"{source} has schema version {version}, which this vfnet cannot read; {RERUN}")


def _from_version_1(data: Mapping, source: str) -> dict:
    plan = copy.deepcopy(dict(data))
    views = plan.get("views")
    if isinstance(views, Mapping) and any(isinstance(v, Mapping) and "mirror_axes" not in v for v in views.values()):
        raise PlanError(f"{source} is a schema-1 plan from before 2D mirroring was planned (its views have no "
                        f"mirror_axes), which cannot be migrated; {RERUN} and train again")
    plan["schema_version"] = SCHEMA_VERSION
    vfn = plan.get("vfn")
    if isinstance(vfn, dict):
        vfn.setdefault("view_prior", False)
        vfn.setdefault("augmentation", "none")
        vfn.setdefault("input_downsample", [1, 1, 1])
        vfn.setdefault("mirror_axes", [0, 1, 2] if vfn["augmentation"] == "paper" else [])
    unet3d = plan.get("unet3d")
    if isinstance(unet3d, dict):
        patch = unet3d.get("patch_size")
        if "stride" not in unet3d and isinstance(patch, list) and all(isinstance(p, int) for p in patch):
            unet3d["stride"] = stride_for_step(patch)
        unet3d.setdefault("mirror_axes", list(MIRROR_AXES_3D))
    plan.setdefault("training", {"seed": SEED, "validation_fraction": VALIDATION_FRACTION})
    plan.setdefault("resampling", {"scheme": "joint", "anisotropy_threshold": 3.0})  # version 1 zoomed all axes at once
    plan.setdefault("fusion", {"fallback_method": FALLBACK_FUSION, "stack_seed": STACK_SEED,
                               "stack_max_voxels": STACK_MAX_VOXELS})
    presets = plan.get("presets")
    if isinstance(presets, dict):
        for networks in presets.values():
            if isinstance(networks, dict):
                for network, schedule in networks.items():
                    if isinstance(schedule, dict):
                        networks[network] = version_1_schedule(schedule, network, plan.get("num_classes"))
    return plan


def version_1_schedule(schedule: Mapping, network: str, num_classes: object) -> dict:
    """A version-1 schedule of ``network`` with the settings version-1 trainers added to it."""
    name = schedule.get("optimizer")
    named = {"sgd": SGD_NESTEROV, "adam": ADAMW}  # version 1 read "sgd" as nnU-Net's SGD for every network
    if name is None:
        optimizer = default_optimizer(network)
    elif isinstance(name, str) and name in named:
        optimizer = named[name]
    else:  # left for the schema to refuse, naming the key
        optimizer = {**SGD_NESTEROV, "optimizer": name}
    overridden = V1_OVERRIDDEN_VFN if network == "vfn" else V1_OVERRIDDEN
    kept = {k: v for k, v in schedule.items() if k not in overridden and k != "optimizer"}
    return {**network_training(network, num_classes if isinstance(num_classes, int) else 0), **optimizer, **kept}
