"""The planner that fills plans.json from a fingerprint, and :class:`Plan`, the typed plan every later stage reads.

plans.json is the contract between stages; every later stage reads what it needs from it
through :class:`Plan`, never from hidden defaults. Its sections and their keys are defined in
:mod:`vfnet.experiment_planning.schema` (version :data:`SCHEMA_VERSION`); the values of the
settings no fingerprint decides in :mod:`vfnet.experiment_planning.settings`; older plans are
migrated by :mod:`vfnet.experiment_planning.migration`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from itertools import combinations
from pathlib import Path

import numpy as np

from vfnet.atomic import read_json
from vfnet.dataset import DatasetInfo
from vfnet.errors import PlanError
from vfnet.experiment_planning.migration import migrate
from vfnet.experiment_planning.schema import (
    PRESETS,
    SCHEMA_VERSION,
    FusionPlan,
    PlanSchema,
    Schedule,
    TrainingPlan,
    UNet3dPlan,
    VfnPlan,
    ViewPlan,
)
from vfnet.experiment_planning.settings import (
    ADAMW,
    FALLBACK_FUSION,
    MIRROR_AXES_3D,
    SEED,
    STACK_MAX_VOXELS,
    STACK_SEED,
    VALIDATION_FRACTION,
    VFN_MIN_GAIN_SE,
    VFN_VALIDATION_CASES,
    default_optimizer,
    network_training,
    stride_for_step,
)
from vfnet.paths import view_network
from vfnet.views import VIEWS, view_shape

# Presets that are a wall-time budget (see vfnet.training.budget): quick, and budget<N> for N minutes.
BUDGET_PRESETS = {"quick": 60}
_BUDGET_NAME = re.compile(r"^budget(\d+(?:\.\d+)?)$")
NETWORKS_2D = tuple(view_network(v) for v in VIEWS)
DEFAULT_FOLDS = 4
CCA_MAX_CASES = 250  # below this many cases the plan uses cross-cross-augmentation, else holdout
CONTEXT_SLICES = 3
MAX_PATCH_2D = 256
VFN_PATCH = 64
MAX_PATCH_3D = 128
# How preprocessing and prediction resample (vfnet.preprocessing.preprocessing.coarse_axis). ``joint``: one
# cubic zoom over all axes; ``separate_coarse_axis``: nnU-Net's rule, where the coarsest axis of data more
# than ANISOTROPY_THRESHOLD times coarser than its finest takes the nearest slice instead of an interpolation.
ANISOTROPY_THRESHOLD = 3.0
RESAMPLING = {"scheme": "separate_coarse_axis", "anisotropy_threshold": ANISOTROPY_THRESHOLD}

# Length, batch and learning rate of the training schedules per preset (the rest of a schedule:
# :func:`plan_presets`). Presets change only schedules, never preprocessing.
SCHEDULES = {
    "quick": {
        # Measured on the shared Hippocampus, 2 CPU cores: 76-139 s per unit with held-out prediction (median 96 s).
        "2d": {"iterations": 300, "batch_size": 8, "lr": 0.003, "val_every": 50, "num_workers": 1},
        # About a minute per VFN unit on 2 CPU cores for Hippocampus (about 0.3 s per iteration of 2 patches).
        "vfn": {"iterations": 200, "batch_size": 2, "lr": 0.001, "val_every": 50, "num_workers": 1},
        "3d": {"iterations": 250, "batch_size": 2, "lr": 0.001, "val_every": 50, "num_workers": 1},
    },
    "default": {
        "2d": {"iterations": 4000, "batch_size": 32, "lr": 0.01, "val_every": 250, "num_workers": 2},
        "vfn": {"iterations": 3000, "batch_size": 8, "lr": 0.01, "val_every": 250, "num_workers": 2},
        "3d": {"iterations": 4000, "batch_size": 2, "lr": 0.01, "val_every": 250, "num_workers": 2},
    },
    "paper": {
        "2d": {"iterations": 80000, "batch_size": 32, "lr": 0.01, "val_every": 1000, "num_workers": 6},
        "vfn": {"iterations": 30000, "batch_size": 16, "lr": 0.01, "val_every": 1000, "num_workers": 6},
        "3d": {"iterations": 250000, "batch_size": 2, "lr": 0.01, "val_every": 1000, "num_workers": 6},
    },
}


def budget_minutes(preset: str) -> float | None:
    """Wall minutes of a budgeted preset (``quick`` = 60, ``budget30`` = 30); None for a fixed schedule."""
    if preset in BUDGET_PRESETS:
        return float(BUDGET_PRESETS[preset])
    match = _BUDGET_NAME.match(str(preset))
    return float(match.group(1)) if match else None


def budget_preset(minutes: float) -> str:
    """The preset (and results folder) of a budget in minutes: ``budget30``."""
    if not minutes > 0:
        raise PlanError(f"--budget must be a positive number of minutes, got {minutes:g}")
    return f"budget{minutes:g}"


def check_preset(preset: str) -> str:
    """``preset`` when it is quick, default, paper or budget<N>; else a PlanError naming them."""
    if preset in PRESETS or budget_minutes(preset) is not None:
        return preset
    raise PlanError(f"unknown preset '{preset}'; expected quick, default, paper or budget<minutes> (e.g. budget30)")


def _round_up(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def _features(base: int, stages: int, cap: int) -> list[int]:
    return [min(base * 2**i, cap) for i in range(stages)]


def plan_2d_view(shape: tuple[int, int, int], view: str, num_channels: int) -> dict:
    """Patch, depth and widths of one view's 2D U-Net for a canonical (z, y, x) shape."""
    _, height, width = view_shape(shape, view)
    in_plane = [min(height, MAX_PATCH_2D), min(width, MAX_PATCH_2D)]
    poolings = int(np.clip(math.floor(math.log2(max(min(in_plane), 8) / 4)), 2, 6))
    patch = [_round_up(s, 2**poolings) for s in in_plane]
    return {
        "patch_size": patch,
        "context_slices": CONTEXT_SLICES,
        "in_channels": CONTEXT_SLICES * num_channels,
        "num_poolings": poolings,
        "features": _features(32, poolings + 1, 512),
        # no mirroring: LPS-oriented anatomy faces one way, and flips swap left/right and front/back labels
        "mirror_axes": [],
    }


def plan_vfn(median_shape: tuple, median_bbox: tuple) -> dict:
    """VFN patch (64³ capped to the data), ROI margin scaled to the organ, and stride (a whole patch)."""
    patch = [min(VFN_PATCH, _round_up(s, 8)) for s in median_shape]
    margin = [int(np.clip(math.ceil(0.25 * b), 4, 32)) for b in median_bbox]
    return {
        "patch_size": patch,
        "roi_margin": margin,
        # windows a whole patch apart: on CHAOST2 as accurate as half a patch (+0.02 Dice points over 20
        # cases) in half the time (benchmarks/results/fusion_Task20_CHAOST2.md)
        "stride": list(patch),
        "features": [8, 16, 32, 64],
        # the VFN learns a correction to mean fusion (see vfnet.networks.vfn); false = the paper's network
        "view_prior": True,
        # random crops only: channels keep their view and anatomy its sides; "paper" adds 90° rotations
        "augmentation": "none",
        # and no flips, for the same reason (the paper flipped every axis: [0, 1, 2])
        "mirror_axes": [],
        # in-plane block factor (z, y, x) the VFN fuses at (presets without a budget)
        "input_downsample": [1, 1, 1],
        # under a budget, the views' finest factor: on CHAOST2 a VFN at the views' 1/4 scored as the full-resolution
        # one on the same units (+0.08 Dice points, p 0.88) in 41 % of its time (vfn_variants_Task20_CHAOST2_budget45)
        "budget_downsample": "views",
        # a trained VFN replaces mean fusion only when it beats it on validation_cases or more, pooled and by
        # min_gain_se standard errors of the cases' gains (settings.VFN_MIN_GAIN_SE says why)
        "validation_cases": VFN_VALIDATION_CASES,
        "min_gain_se": VFN_MIN_GAIN_SE,
        # left out, at their defaults of 0 (false): min_gain (no fixed margin; 0.5 in plans before the
        # standard-error test), map_jitter (vfn_variants.py's jitter variants) and view_symmetric (its
        # symmetric variants)
    }


def plan_unet3d(median_shape: tuple) -> dict:
    """nnU-Net-shaped 3D U-Net baseline: 32 features doubling per stage, capped at 320; windows half a
    patch apart at prediction; mirrored along every axis in training (and with --tta)."""
    capped = [min(s, MAX_PATCH_3D) for s in median_shape]
    poolings = int(np.clip(math.floor(math.log2(max(min(capped), 8) / 4)), 1, 5))
    patch = [_round_up(s, 2**poolings) for s in capped]
    return {"patch_size": patch, "num_poolings": poolings, "features": _features(32, poolings + 1, 320),
            "stride": stride_for_step(patch), "mirror_axes": list(MIRROR_AXES_3D)}


def plan_normalization(info: DatasetInfo, fingerprint: dict) -> dict:
    """CT: clip to foreground percentiles then z-score with foreground statistics; else per-image z-score."""
    schemes = {}
    for channel, modality in sorted(info.channel_names.items()):
        stats = fingerprint["foreground_intensity"][str(channel)]
        if modality.strip().upper() == "CT":
            schemes[str(channel)] = {
                "scheme": "ct",
                "clip": [stats["percentile_00_5"], stats["percentile_99_5"]],
                "mean": stats["mean"],
                "std": max(stats["std"], 1e-6),
            }
        else:
            schemes[str(channel)] = {"scheme": "zscore"}
    return schemes


def make_units(fold_names: list[str], split_mode: str) -> dict:
    """The explicit list of training units of every network.

    Each unit names the folds it trains on and the folds it predicts.
    """
    units_2d, units_vfn = [], []
    everything = list(fold_names)
    if split_mode == "cca":
        for k in fold_names:
            rest = [f for f in fold_names if f != k]
            units_2d.append({"name": k, "kind": "fold", "train_folds": rest, "predict_folds": [k]})
            units_vfn.append({"name": k, "kind": "fold", "train_folds": rest, "predict_folds": [k]})
        for a, b in combinations(fold_names, 2):
            rest = [f for f in fold_names if f not in (a, b)]
            units_2d.append({"name": f"cca_{a}_{b}", "kind": "cca", "train_folds": rest, "predict_folds": [a, b]})
        units_vfn.append({"name": "all", "kind": "all", "train_folds": everything, "predict_folds": []})
        units_3d = [dict(u) for u in units_2d if u["kind"] == "fold"]
    else:
        units_2d.append({"name": "holdout", "kind": "holdout", "train_folds": ["A"], "predict_folds": ["B", "C"]})
        units_vfn.append({"name": "holdout", "kind": "holdout", "train_folds": ["B"], "predict_folds": ["C"]})
        units_3d = [{"name": "holdout", "kind": "holdout", "train_folds": ["A", "B"], "predict_folds": ["C"]}]
    units_2d.append({"name": "all", "kind": "all", "train_folds": everything, "predict_folds": []})
    units_3d.append({"name": "all", "kind": "all", "train_folds": everything, "predict_folds": []})
    return {"2d": units_2d, "vfn": units_vfn, "3d": units_3d}


def make_splits(cases: list[str], num_folds: int, split_mode: str, seed: int = 12345) -> dict:
    """Seeded, stable split of the case ids: K folds, and in holdout mode subsets A/B/C (3:2:1)."""
    order = sorted(cases)
    rng = np.random.default_rng(seed)
    shuffled = [order[i] for i in rng.permutation(len(order))]
    if split_mode == "cca":
        folds = {str(k): sorted(part.tolist()) for k, part in enumerate(np.array_split(shuffled, num_folds))}
    else:
        n = len(shuffled)
        a, b = round(n / 2), round(n * 5 / 6)
        folds = {"A": sorted(shuffled[:a]), "B": sorted(shuffled[a:b]), "C": sorted(shuffled[b:])}
    return {"mode": split_mode, "seed": seed, "folds": folds}


def preset_optimizer(preset: str, network: str) -> dict:
    """The optimizer keys of a preset's schedule: AdamW in the CPU preset (it learns in fewer steps)."""
    return dict(ADAMW) if preset == "quick" else default_optimizer(network)


def plan_presets(num_classes: int) -> dict:
    """Every preset's schedule of every network: its length (:data:`SCHEDULES`), its optimizer and the
    settings no preset changes (:func:`vfnet.experiment_planning.settings.network_training`)."""
    return {preset: {network: {**lengths, **preset_optimizer(preset, network), **network_training(network, num_classes)}
                     for network, lengths in networks.items()}
            for preset, networks in SCHEDULES.items()}


def plan_experiment(info: DatasetInfo, fingerprint: dict, dataset_name: str,
                    num_folds: int = DEFAULT_FOLDS, split_mode: str | None = None) -> dict:
    """Fill plans.json from a fingerprint."""
    if split_mode is None:
        split_mode = "cca" if fingerprint["num_cases"] < CCA_MAX_CASES else "holdout"
    if split_mode not in ("cca", "holdout"):
        raise PlanError(f"split mode '{split_mode}' unknown; expected cca or holdout")
    if split_mode == "cca" and num_folds < 3:
        raise PlanError(f"cross-cross-augmentation needs at least 3 folds, got {num_folds}")
    min_cases = num_folds if split_mode == "cca" else 3
    if fingerprint["num_cases"] < min_cases:
        raise PlanError(f"{fingerprint['num_cases']} case(s) cannot be split into {min_cases} folds/subsets")
    target = [float(s) for s in fingerprint["median_spacing"]]
    resampled = [[shape[a] * sp[a] / target[a] for a in range(3)]
                 for shape, sp in zip(fingerprint["shapes"], fingerprint["spacings"])]
    median_shape = [round(float(np.median([r[a] for r in resampled]))) for a in range(3)]
    fold_names = [str(k) for k in range(num_folds)] if split_mode == "cca" else ["A", "B", "C"]
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset_name": dataset_name,
        "axes": "z, y, x of the LPS-reoriented array",
        "channel_names": {str(k): v for k, v in sorted(info.channel_names.items())},
        "labels": dict(sorted(info.labels.items(), key=lambda kv: kv[1])),
        "num_classes": info.num_classes,
        "target_spacing": target,
        "resampling": dict(RESAMPLING),
        "median_shape": median_shape,
        "normalization": plan_normalization(info, fingerprint),
        "views": {view: plan_2d_view(tuple(median_shape), view, info.num_channels) for view in VIEWS},
        "vfn": plan_vfn(tuple(median_shape), tuple(fingerprint["median_foreground_bbox"])),
        "unet3d": plan_unet3d(tuple(median_shape)),
        "num_folds": num_folds,
        "split_mode": split_mode,
        "fold_names": fold_names,
        "units": make_units(fold_names, split_mode),
        "training": {"seed": SEED, "validation_fraction": VALIDATION_FRACTION},
        "fusion": {"fallback_method": FALLBACK_FUSION, "stack_seed": STACK_SEED, "stack_max_voxels": STACK_MAX_VOXELS},
        "presets": plan_presets(info.num_classes),
    }


# Stands in the hash where the plan's schema version used to: a new plan schema (version 2 added the
# training settings) changes nothing in the arrays, so it must not redo them. The hash then held
# schema version 1, so arrays preprocessed before stay current; raise this only when preprocessing changes.
PREPROCESSING_VERSION = 1


def preprocessing_hash(plan: dict) -> str:
    """Hash of the plan parts preprocessed arrays depend on (and of :data:`PREPROCESSING_VERSION`)."""
    relevant = {k: plan[k] for k in ("channel_names", "labels", "target_spacing", "normalization")}
    relevant["schema_version"] = PREPROCESSING_VERSION
    # resampling joined the plan later: joint resampling (what came before) keeps the hash arrays already have
    if plan.get("resampling", {}).get("scheme", "joint") != "joint":
        relevant["resampling"] = plan["resampling"]
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


def network_key(network: str) -> str:
    """``2d``, ``vfn`` or ``3d`` of a network name (a 2D view shares the 2D units and schedules)."""
    return "2d" if network.startswith("2d") else ("vfn" if network.startswith("vfn") else network)


class Plan:
    """plans.json, checked against the schema and typed.

    Every section is read by its class in :mod:`vfnet.experiment_planning.schema`; a plan of an
    older schema version is migrated first (:mod:`vfnet.experiment_planning.migration`).
    ``plan["key"]`` still gives the (migrated) JSON of a section.

    Args:
        data: the plans.json dict.
        folder: where it was read from.
        source: the name errors give it (default: its path, else ``plans.json``).

    Raises:
        PlanError: an unknown, missing or malformed key, or a schema version this vfnet cannot
            read, in one sentence naming the file and the key.

    Example:
        >>> plan = Plan.load(preprocessed_folder)
        >>> plan.vfn.patch_size, plan.view("axial").context_slices, plan.training.seed
        ([64, 64, 64], 3, 12345)
        >>> plan.unit("2d", "cca_0_1")["predict_folds"]
        ['0', '1']
    """

    def __init__(self, data: dict, folder: Path | None = None, source: str | None = None):
        self.folder = Path(folder) if folder is not None else None
        self.source = source or (str(self.folder / "plans.json") if self.folder is not None else "plans.json")
        self.data = migrate(data, self.source)
        schema = PlanSchema.from_dict(self.data, "", self.source)
        if sorted(schema.normalization) != sorted(schema.channel_names):
            raise PlanError(f"{self.source}: 'normalization' has channels {', '.join(sorted(schema.normalization))}"
                            f" where 'channel_names' has {', '.join(sorted(schema.channel_names))}")
        self.views: dict[str, ViewPlan] = schema.views
        self.vfn: VfnPlan = schema.vfn
        self.unet3d: UNet3dPlan = schema.unet3d
        self.training: TrainingPlan = schema.training
        self.fusion: FusionPlan = schema.fusion
        self.presets: dict[str, dict[str, Schedule]] = schema.presets
        self.schema = schema

    @classmethod
    def load(cls, folder: Path) -> Plan:
        """The plan of a preprocessed (or results) folder, checked whole."""
        path = Path(folder) / "plans.json"
        if not path.is_file():
            raise PlanError(f"{path} not found; run vfnet_plan_and_preprocess first")
        return cls(read_json(path), Path(folder))

    def __getitem__(self, key: str):
        return self.data[key]

    @property
    def num_classes(self) -> int:
        return self.schema.num_classes

    @property
    def num_channels(self) -> int:
        return len(self.schema.channel_names)

    def view(self, view: str) -> ViewPlan:
        """The 2D U-Net of ``view`` (axial, coronal or sagittal)."""
        if view not in self.views:
            raise PlanError(f"unknown view '{view}'; the views are: {', '.join(self.views)}")
        return self.views[view]

    def units(self, network: str) -> list[dict]:
        """Units of ``2d``, ``vfn`` or ``3d`` (a 2D view shares the 2D units)."""
        return self.data["units"][network_key(network)]

    def unit(self, network: str, name: str) -> dict:
        for unit in self.units(network):
            if unit["name"] == str(name):
                return unit
        names = ", ".join(u["name"] for u in self.units(network))
        raise PlanError(f"unknown {network} unit '{name}'; the plan's units are: {names}")

    def schedule(self, preset: str, network: str) -> Schedule:
        """The preset's fixed schedule; a budget preset gives quick's, whose iterations the budget replaces."""
        if preset not in self.presets and budget_minutes(preset) is not None:
            preset = "quick"
        if preset not in self.presets:
            raise PlanError(f"unknown preset '{preset}'; expected one of {', '.join(self.presets)}")
        return self.presets[preset][network_key(network)]
