"""The plan schema (plans.json) and the planner that fills it from a fingerprint.

plans.json is the contract between stages; every later stage reads what it needs from it
through :class:`Plan`, never from hidden defaults.
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
from vfnet.paths import view_network
from vfnet.views import VIEWS, view_shape

SCHEMA_VERSION = 1
PRESETS = ("quick", "default", "paper")
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
RESAMPLING_SCHEMES = ("joint", "separate_coarse_axis")
ANISOTROPY_THRESHOLD = 3.0
RESAMPLING = {"scheme": "separate_coarse_axis", "anisotropy_threshold": ANISOTROPY_THRESHOLD}

# Training schedules per preset. Presets change only these, never preprocessing.
SCHEDULES = {
    "quick": {
        # Measured on the shared Hippocampus, 2 CPU cores: 76-139 s per unit with held-out prediction (median 96 s).
        "2d": {"iterations": 300, "batch_size": 8, "lr": 0.003, "optimizer": "adam", "val_every": 50,
               "num_workers": 1},
        # About a minute per VFN unit on 2 CPU cores for Hippocampus (about 0.3 s per iteration of 2 patches).
        "vfn": {"iterations": 200, "batch_size": 2, "lr": 0.001, "optimizer": "adam", "val_every": 50,
                "num_workers": 1},
        "3d": {"iterations": 250, "batch_size": 2, "lr": 0.001, "optimizer": "adam", "val_every": 50,
               "num_workers": 1},
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
    """VFN patch (64³ capped to the data), ROI margin scaled to the organ, and stride."""
    patch = [min(VFN_PATCH, _round_up(s, 8)) for s in median_shape]
    margin = [int(np.clip(math.ceil(0.25 * b), 4, 32)) for b in median_bbox]
    return {
        "patch_size": patch,
        "roi_margin": margin,
        "stride": [max(8, p // 2) for p in patch],
        "features": [8, 16, 32, 64],
        # the VFN learns a correction to mean fusion (see vfnet.networks.vfn); false = the paper's network
        "view_prior": True,
        # random crops only: channels keep their view and anatomy its sides; "paper" = rotations and flips
        "augmentation": "none",
        # in-plane block factor (z, y, x) the VFN fuses at; coarser is faster and, on CHAOST2, less accurate
        "input_downsample": [1, 1, 1],
    }


def plan_unet3d(median_shape: tuple) -> dict:
    """nnU-Net-shaped 3D U-Net baseline: 32 features doubling per stage, capped at 320."""
    capped = [min(s, MAX_PATCH_3D) for s in median_shape]
    poolings = int(np.clip(math.floor(math.log2(max(min(capped), 8) / 4)), 1, 5))
    patch = [_round_up(s, 2**poolings) for s in capped]
    return {"patch_size": patch, "num_poolings": poolings, "features": _features(32, poolings + 1, 320)}


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
    median_shape = [round(float(np.median([r[a] for r in resampled]))) for a in range(3)
    ]
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
        "presets": SCHEDULES,
    }


def preprocessing_hash(plan: dict) -> str:
    """Hash of the plan parts preprocessed arrays depend on."""
    keys = ("schema_version", "channel_names", "labels", "target_spacing", "resampling", "normalization")
    relevant = {k: plan[k] for k in keys if k in plan}  # plans from before the resampling key keep their hash
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


class Plan:
    """Read access to plans.json.

    Example:
        >>> plan = Plan.load(preprocessed_folder)
        >>> plan.unit("2d", "cca_0_1")["predict_folds"]
        ['0', '1']
    """

    def __init__(self, data: dict, folder: Path | None = None):
        if data.get("schema_version") != SCHEMA_VERSION:
            raise PlanError(f"plans.json schema {data.get('schema_version')} is not {SCHEMA_VERSION}; "
                            "rerun vfnet_plan_and_preprocess")
        self.data = data
        self.folder = folder

    @classmethod
    def load(cls, folder: Path) -> Plan:
        path = Path(folder) / "plans.json"
        if not path.is_file():
            raise PlanError(f"{path} not found; run vfnet_plan_and_preprocess first")
        return cls(read_json(path), Path(folder))

    def __getitem__(self, key: str):
        return self.data[key]

    @property
    def num_classes(self) -> int:
        return int(self.data["num_classes"])

    @property
    def num_channels(self) -> int:
        return len(self.data["channel_names"])

    def units(self, network: str) -> list[dict]:
        """Units of ``2d``, ``vfn`` or ``3d`` (a 2D view shares the 2D units)."""
        key = "2d" if network.startswith("2d") else ("vfn" if network.startswith("vfn") else network)
        return self.data["units"][key]

    def unit(self, network: str, name: str) -> dict:
        for unit in self.units(network):
            if unit["name"] == str(name):
                return unit
        names = ", ".join(u["name"] for u in self.units(network))
        raise PlanError(f"unknown {network} unit '{name}'; the plan's units are: {names}")

    def schedule(self, preset: str, network: str) -> dict:
        """The preset's fixed schedule; a budget preset gives quick's, whose iterations the budget replaces."""
        if preset not in self.data["presets"] and budget_minutes(preset) is not None:
            preset = "quick"
        if preset not in self.data["presets"]:
            raise PlanError(f"unknown preset '{preset}'; expected one of {', '.join(self.data['presets'])}")
        key = "2d" if network.startswith("2d") else ("vfn" if network.startswith("vfn") else network)
        return dict(self.data["presets"][preset][key])
