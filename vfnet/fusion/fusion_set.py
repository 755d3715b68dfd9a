"""Fusion sets: the VFN's training data, built from held-out 2D maps (cross-cross-augmentation).

For VFN unit k (test fold k) every case outside fold k gets its three view maps from the
CCA unit that left out both k and that case's fold; for VFN unit ``all`` every case gets
the maps of the fold unit that predicted it; in holdout mode subset B gets the maps of the
2D unit trained on A. Each sample is cropped to the region of interest (foreground box plus
the planned margin, at least the patch size) and a manifest names the unit behind every map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from vfnet import paths
from vfnet.atomic import atomic_path, write_json
from vfnet.errors import ModelNotFoundError, PlanError
from vfnet.experiment_planning.plans import Plan
from vfnet.fusion.methods import vfn_input
from vfnet.fusion.roi import roi_from_mask
from vfnet.preprocessing.data import PreprocessedDataset
from vfnet.views import VIEWS


def map_sources(plan: Plan, data: PreprocessedDataset, vfn_unit: str) -> dict[str, str]:
    """Case → name of the 2D unit whose held-out maps feed VFN unit ``vfn_unit``, read from the plan's units.

    Holdout: the 2D unit that predicts the VFN's training subset. VFN ``all``: the fold unit that
    predicted the case. VFN of test fold k: the CCA unit that predicts both k and the case's fold.

    Raises:
        PlanError: the plan lists no 2D unit that predicts what the VFN needs.
    """
    unit = plan.unit("vfn", vfn_unit)
    by_folds = {(u["kind"], frozenset(u["predict_folds"])): u["name"] for u in plan.units("2d")}

    def source(kind: str, folds: set[str]) -> str:
        name = by_folds.get((kind, frozenset(folds)))
        if name is None:
            raise PlanError(f"plans.json lists no {kind} 2D unit that predicts folds {', '.join(sorted(folds))}, "
                            f"which VFN unit {vfn_unit} needs; rerun vfnet_plan_and_preprocess")
        return name

    if plan["split_mode"] == "holdout":
        cases = data.fold_cases(unit["train_folds"])
        return {case: source("holdout", {data.fold_of(case)} | set(unit["predict_folds"])) for case in cases}
    if unit["kind"] == "all":
        return {case: source("fold", {data.fold_of(case)}) for case in data.all_cases}
    test_fold = unit["predict_folds"][0]
    return {case: source("cca", {test_fold, data.fold_of(case)}) for case in data.fold_cases(unit["train_folds"])}


def load_view_maps(results: Path, preset: str, unit_by_view: dict[str, str], case: str,
                   dataset: str) -> dict[str, np.ndarray]:
    """The saved held-out probability maps of one case, per view (float32)."""
    maps = {}
    for view in VIEWS:
        unit = unit_by_view[view]
        path = paths.UnitPaths.of(results, preset, paths.view_network(view), unit).prediction(case)
        if not path.is_file():
            raise ModelNotFoundError(
                f"{path} is missing: the {view} unit '{unit}' has not predicted case {case}. "
                f"Train it with: vfnet_train 2d {view} {unit} -d {dataset} --preset {preset}")
        with np.load(path) as archive:
            maps[view] = archive["probabilities"].astype(np.float32)
    return maps


def build_fusion_set(dataset: str | int | None, vfn_unit: str, preset: str = "default",
                     quiet: bool = False) -> Path:
    """Write the fusion set of VFN unit ``vfn_unit`` (a fold, ``all`` or ``holdout``).

    Returns:
        The folder holding ``<case>.npz`` samples (``inputs``: image in [0, 1] + view maps,
        float16; ``label``: uint8) and ``manifest.json``.
    """
    preprocessed = paths.preprocessed_dataset(dataset)
    name = preprocessed.name
    plan = Plan.load(preprocessed)
    plan.schedule(preset, "vfn")
    data = PreprocessedDataset(preprocessed)
    results = paths.results_root() / name
    sources = map_sources(plan, data, str(vfn_unit))
    if not sources:
        raise PlanError(f"VFN unit {vfn_unit} of {name} has no training cases")
    out = paths.fusion_set_dir(preprocessed, preset, str(vfn_unit))
    vfn = plan.vfn
    manifest = {"dataset": name, "vfn_unit": str(vfn_unit), "preset": preset, "split_mode": plan["split_mode"],
                "num_image_channels": plan.num_channels, "num_classes": plan.num_classes,
                "view_order": list(VIEWS), "cases": {}}
    for case, unit in tqdm(sorted(sources.items()), desc=f"fusion set {vfn_unit}", unit="case", disable=True if quiet else None):
        image, label = data.load(case, mmap=False)
        maps = load_view_maps(results, preset, {v: unit for v in VIEWS}, case, name)
        roi = roi_from_mask(label > 0, vfn.roi_margin, vfn.patch_size, label.shape)
        inputs = vfn_input(image, maps, use_image=True, roi=roi)
        with atomic_path(out / f"{case}.npz", suffix=".npz") as tmp:
            np.savez_compressed(tmp, inputs=inputs.astype(np.float16),
                                label=label[roi].astype(np.uint8))
        manifest["cases"][case] = {
            "fold": data.fold_of(case),
            "units": {paths.view_network(view): unit for view in VIEWS},
            "roi": [[s.start, s.stop] for s in roi],
        }
    write_json(out / "manifest.json", manifest)
    return out
