"""The typed sections of plans.json (schema version 2), one small class per section.

Each section reads itself with ``from_dict(data, where, source)`` (see
:mod:`vfnet.experiment_planning.sections`): a key it does not know, or one it needs and does
not find, is a :class:`vfnet.errors.PlanError` naming the file and the key's path inside it
(``plans.json: unknown key 'presets.quick.2d.iteratons' (did you mean 'iterations'?)``).
Values are checked as they are read (type, range, allowed names) and ``to_dict`` writes a
section back as plans.json holds it. The planner (:mod:`vfnet.experiment_planning.plans`)
fills these sections; its :class:`Plan` reads a whole file.

Example:
    >>> schedule = Schedule.from_dict(plan["presets"]["quick"]["2d"], "presets.quick.2d")
    >>> schedule.optimizer, schedule.lr_schedule.name
    ('adam', 'poly')
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vfnet.errors import PlanError
from vfnet.experiment_planning.sections import (
    Section,
    boolean,
    check_keys,
    choice,
    distinct_axes,
    exactly,
    integer,
    integers,
    key_path,
    list_of,
    mapping_of,
    nullable,
    number,
    reads,
    section,
    text,
    variant,
)
from vfnet.views import VIEWS

SCHEMA_VERSION = 2
PRESETS = ("quick", "default", "paper")
NETWORKS = ("2d", "vfn", "3d")
OPTIMIZERS = ("sgd", "adam")  # adam is AdamW
LOSSES = ("dice_ce", "dice")
PRIOR_WEIGHTS = ("mean", "stack")  # the VFN's view prior: the views' mean or a fitted stack
BUDGET_DOWNSAMPLE = ("plan", "views")  # a budgeted VFN fuses at input_downsample, or at the views' finest factor
AUGMENTATIONS = ("none", "paper")  # VFN crops only, or with the paper's 90° rotations
SPLIT_MODES = ("cca", "holdout")
RESAMPLING_SCHEMES = ("joint", "separate_coarse_axis")  # see vfnet.preprocessing.preprocessing.coarse_axis


@dataclass(frozen=True)
class ViewPlan(Section):
    """One view's 2D U-Net: patch (height, width), context slices, depth, widths, mirroring axes of the slice."""

    patch_size: list[int] = field(metadata=reads(integers(2)))
    context_slices: int = field(metadata=reads(integer(1)))
    in_channels: int = field(metadata=reads(integer(1)))
    num_poolings: int = field(metadata=reads(integer(1)))
    features: list[int] = field(metadata=reads(integers()))
    mirror_axes: list[int] = field(metadata=reads(distinct_axes(2)))


@dataclass(frozen=True)
class VfnPlan(Section):
    """The VFN: patch, ROI margin and sliding-window stride (z, y, x), widths, and how it trains and fuses.

    ``view_prior``: add the views' mean to a zero-started head (false: the paper's network).
    ``prior_weights``: the prior's weights, ``mean`` (equal; the default when left out) or ``stack``
    (a stack fitted on the VFN's training cases, see :mod:`vfnet.fusion.stack`).
    ``augmentation``: ``none`` (random crops) or ``paper`` (with the paper's 90° rotations).
    ``mirror_axes``: canonical axes the crops are mirrored along in training (and ``--tta`` at prediction).
    ``input_downsample``: in-plane block factor the VFN fuses at.
    ``budget_downsample``: under a budgeted preset, ``views`` has the VFN fuse at the finest in-plane
    factor the budget gave the views; ``plan`` (the default when left out) keeps ``input_downsample``.
    ``validation_cases``: the fewest fusion-set cases a VFN validates on (at most half of them; 0,
    the default when left out: ``training.validation_fraction`` alone decides).
    ``min_gain``: Dice points a trained checkpoint must add to the view prior's validation
    pseudo-Dice (iteration 0) before it replaces it (0, the default when left out: any gain).
    ``map_jitter``: strength of a random recalibration (temperature and per-class bias) of each
    view's maps in every training patch (0, the default when left out: none; see
    :class:`vfnet.training.data_vfn.VfnPatchSampler`).
    ``min_gain_se``: a trained checkpoint must also raise the validation cases' pseudo-Dice over
    iteration 0 by a mean of at least this many standard errors of the per-case gains (0, the
    default when left out: no such test; new plans write 2 with ``min_gain`` 0).
    ``view_symmetric``: the network sees the three views' maps sorted per class and voxel (lowest,
    middle, highest) instead of by view, so its correction cannot lean on one view (false, the
    default when left out: by view, as in the paper; see :mod:`vfnet.networks.vfn`).
    """

    patch_size: list[int] = field(metadata=reads(integers(3)))
    roi_margin: list[int] = field(metadata=reads(integers(3, minimum=0)))
    stride: list[int] = field(metadata=reads(integers(3)))
    features: list[int] = field(metadata=reads(integers()))
    view_prior: bool = field(metadata=reads(boolean))
    augmentation: str = field(metadata=reads(choice(*AUGMENTATIONS)))
    input_downsample: list[int] = field(metadata=reads(integers(3)))
    mirror_axes: list[int] = field(metadata=reads(distinct_axes(3)))
    prior_weights: str = field(default="mean", metadata=reads(choice(*PRIOR_WEIGHTS)))
    budget_downsample: str = field(default="plan", metadata=reads(choice(*BUDGET_DOWNSAMPLE)))
    validation_cases: int = field(default=0, metadata=reads(integer(0)))
    min_gain: float = field(default=0.0, metadata=reads(number(0, 100)))
    map_jitter: float = field(default=0.0, metadata=reads(number(0, 5)))
    min_gain_se: float = field(default=0.0, metadata=reads(number(0, 10)))
    view_symmetric: bool = field(default=False, metadata=reads(boolean))


@dataclass(frozen=True)
class UNet3dPlan(Section):
    """The 3D U-Net baseline: patch, depth, widths, sliding-window stride and mirroring axes (z, y, x)."""

    patch_size: list[int] = field(metadata=reads(integers(3)))
    num_poolings: int = field(metadata=reads(integer(1)))
    features: list[int] = field(metadata=reads(integers()))
    stride: list[int] = field(metadata=reads(integers(3)))
    mirror_axes: list[int] = field(metadata=reads(distinct_axes(3)))


@dataclass(frozen=True)
class CtNormalization(Section):
    """CT: clip to the foreground percentiles, then z-score with the foreground statistics."""

    scheme: str = field(metadata=reads(choice("ct")))
    clip: list[float] = field(metadata=reads(list_of(number(), 2)))
    mean: float = field(metadata=reads(number()))
    std: float = field(metadata=reads(number(minimum=1e-12)))


@dataclass(frozen=True)
class ZscoreNormalization(Section):
    """Any other modality: per-image z-score."""

    scheme: str = field(metadata=reads(choice("zscore")))


NORMALIZATIONS = {"ct": CtNormalization, "zscore": ZscoreNormalization}


@dataclass(frozen=True)
class PolySchedule(Section):
    """Learning rate × ``(1 − iteration / iterations) ** exponent`` (nnU-Net's)."""

    name: str = field(metadata=reads(choice("poly")))
    exponent: float = field(metadata=reads(number(minimum=0)))


@dataclass(frozen=True)
class StepSchedule(Section):
    """Learning rate × ``gamma`` at each fraction of the iterations (the VFN paper: ÷10 at 2/3 and 5/6)."""

    name: str = field(metadata=reads(choice("step")))
    fractions: list[float] = field(metadata=reads(list_of(number(0, 1))))
    gamma: float = field(metadata=reads(number(minimum=0)))


LR_SCHEDULES = {"poly": PolySchedule, "step": StepSchedule}


@dataclass(frozen=True)
class Schedule(Section):
    """How one network trains in one preset.

    ``optimizer`` ``sgd`` uses ``momentum`` and ``nesterov``; ``adam`` (AdamW) needs neither (null).
    ``val_batches``: fixed validation batches drawn once (2D, 3D); null scores every validation
    case whole, in tiles (the VFN). ``val_batch_size``: samples per validation batch (null:
    ``batch_size``). The last four keys are optional: a budget (:mod:`vfnet.training.budget`)
    writes them per unit.
    """

    iterations: int = field(metadata=reads(integer(1)))
    batch_size: int = field(metadata=reads(integer(1)))
    lr: float = field(metadata=reads(number(minimum=0)))
    val_every: int = field(metadata=reads(integer(1)))
    num_workers: int = field(metadata=reads(integer(0)))
    optimizer: str = field(metadata=reads(choice(*OPTIMIZERS)))
    momentum: float | None = field(metadata=reads(nullable(number(0, 1))))
    nesterov: bool | None = field(metadata=reads(nullable(boolean)))
    weight_decay: float = field(metadata=reads(number(minimum=0)))
    lr_schedule: PolySchedule | StepSchedule = field(metadata=reads(variant("name", LR_SCHEDULES)))
    grad_clip: float | None = field(metadata=reads(nullable(number(minimum=0))))
    loss: str = field(metadata=reads(choice(*LOSSES)))
    val_batches: int | None = field(metadata=reads(nullable(integer(1))))
    val_batch_size: int | None = field(metadata=reads(nullable(integer(1))))
    validate_at_start: bool = field(metadata=reads(boolean))
    budget_min: float | None = field(default=None, metadata=reads(number(minimum=0)))
    input_downsample: list[int] | None = field(default=None, metadata=reads(integers(3)))
    patch_size: list[int] | None = field(default=None, metadata=reads(integers()))
    features: list[int] | None = field(default=None, metadata=reads(integers()))


def read_schedule(data: object, network: str, where: str, source: str) -> Schedule:
    """A :class:`Schedule` of ``network`` (``2d``, ``vfn``, ``3d``), with the rules that tie its keys.

    Raises:
        PlanError: an unknown, missing or malformed key, an SGD schedule without momentum or
            nesterov, or a validation the network does not do.
    """
    schedule = Schedule.from_dict(data, where, source)
    if schedule.optimizer == "sgd":
        for key in ("momentum", "nesterov"):
            if getattr(schedule, key) is None:
                raise PlanError(f"{source}: '{key_path(where, key)}' must be set for optimizer sgd")
    if network == "vfn" and schedule.val_batches is not None:
        raise PlanError(f"{source}: '{key_path(where, 'val_batches')}' must be null: the VFN scores every "
                        "validation case whole")
    if network != "vfn" and schedule.val_batches is None:
        raise PlanError(f"{source}: '{key_path(where, 'val_batches')}' must be a number of validation batches")
    return schedule


def _presets(value, path, source) -> dict[str, dict[str, Schedule]]:
    presets = check_keys(value, PRESETS, PRESETS, path, source)
    out = {}
    for preset, networks in presets.items():
        where = key_path(path, preset)
        networks = check_keys(networks, NETWORKS, NETWORKS, where, source)
        out[preset] = {n: read_schedule(s, n, key_path(where, n), source) for n, s in networks.items()}
    return out


@dataclass(frozen=True)
class TrainingPlan(Section):
    """What every unit's training shares: the seed (weights, sampling, the validation split) and the
    share of a unit's training cases held out for validation."""

    seed: int = field(metadata=reads(integer(0)))
    validation_fraction: float = field(metadata=reads(number(0, 1)))


@dataclass(frozen=True)
class ResamplingPlan(Section):
    """How images go to the target spacing and predictions come back: ``joint`` (one cubic zoom over all
    axes) or ``separate_coarse_axis`` (nnU-Net's: the coarsest axis of data more than
    ``anisotropy_threshold`` times coarser than its finest takes the nearest slice)."""

    scheme: str = field(metadata=reads(choice(*RESAMPLING_SCHEMES)))
    anisotropy_threshold: float = field(metadata=reads(number(minimum=1)))


@dataclass(frozen=True)
class FusionPlan(Section):
    """``fallback_method``: the fusion vfnet_predict uses when vfnet_crossval recorded none; the
    stack fusion's voxel sample (seed and size) on each fusion set."""

    fallback_method: str = field(metadata=reads(text))
    stack_seed: int = field(metadata=reads(integer(0)))
    stack_max_voxels: int = field(metadata=reads(integer(1)))


@dataclass(frozen=True)
class Unit(Section):
    """A training unit: the folds it trains on and the folds it predicts."""

    name: str = field(metadata=reads(text))
    kind: str = field(metadata=reads(choice("fold", "cca", "all", "holdout")))
    train_folds: list[str] = field(metadata=reads(list_of(text)))
    predict_folds: list[str] = field(metadata=reads(list_of(text)))


@dataclass(frozen=True)
class PlanSchema(Section):
    """A whole plans.json."""

    schema_version: int = field(metadata=reads(exactly(SCHEMA_VERSION)))
    dataset_name: str = field(metadata=reads(text))
    axes: str = field(metadata=reads(text))
    channel_names: dict[str, str] = field(metadata=reads(mapping_of(text)))
    labels: dict[str, int] = field(metadata=reads(mapping_of(integer(0))))
    num_classes: int = field(metadata=reads(integer(2)))
    target_spacing: list[float] = field(metadata=reads(list_of(number(minimum=0), 3)))
    resampling: ResamplingPlan = field(metadata=reads(section(ResamplingPlan)))
    median_shape: list[int] = field(metadata=reads(integers(3)))
    normalization: dict[str, CtNormalization | ZscoreNormalization] = field(
        metadata=reads(mapping_of(variant("scheme", NORMALIZATIONS))))
    views: dict[str, ViewPlan] = field(metadata=reads(mapping_of(section(ViewPlan), VIEWS)))
    vfn: VfnPlan = field(metadata=reads(section(VfnPlan)))
    unet3d: UNet3dPlan = field(metadata=reads(section(UNet3dPlan)))
    num_folds: int = field(metadata=reads(integer(1)))
    split_mode: str = field(metadata=reads(choice(*SPLIT_MODES)))
    fold_names: list[str] = field(metadata=reads(list_of(text)))
    units: dict[str, list[Unit]] = field(metadata=reads(mapping_of(list_of(section(Unit)), NETWORKS)))
    training: TrainingPlan = field(metadata=reads(section(TrainingPlan)))
    fusion: FusionPlan = field(metadata=reads(section(FusionPlan)))
    presets: dict[str, dict[str, Schedule]] = field(metadata=reads(_presets))

