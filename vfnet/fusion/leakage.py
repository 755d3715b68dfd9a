"""Prove that no model behind a fold's numbers trained on a case of that fold.

Reads the fusion-set manifests and every unit's recorded training cases (``unit.json``).
"""

from __future__ import annotations

from pathlib import Path

from vfnet import paths
from vfnet.atomic import read_json
from vfnet.experiment_planning.plans import Plan
from vfnet.paths import FUSION_DIR
from vfnet.preprocessing.data import PreprocessedDataset
from vfnet.views import VIEWS


def _trained_on(results: Path, preset: str, network: str, unit: str) -> set[str] | None:
    record = paths.UnitPaths.of(results, preset, network, unit).record
    if not record.is_file():
        return None
    data = read_json(record)
    # validation cases choose the best checkpoint, so they count as seen
    return set(data["train_cases"]) | set(data.get("val_cases", []))


def find_leaks(dataset: str | int | None, preset: str | None = None) -> tuple[list[str], int]:
    """Return (one line per leak naming the case and the unit, number of checks made).

    Checked per test fold k (a fold in CCA mode, subset C in holdout mode):
    the 2D units whose maps are scored on fold k, every 2D unit whose maps a fusion set of
    fold k names, and the VFN of fold k, must not have trained on a case of fold k.
    """
    preprocessed = paths.preprocessed_dataset(dataset)
    plan = Plan.load(preprocessed)
    data = PreprocessedDataset(preprocessed)
    results = paths.results_root() / preprocessed.name
    presets = [preset] if preset else sorted(p.name for p in (preprocessed / FUSION_DIR).glob("*") if p.is_dir())
    presets = presets or sorted(p.name for p in results.glob("*") if p.is_dir())
    leaks, checks = [], 0

    def check(network: str, unit: str, test_cases: set[str], fold: str, why: str, preset_name: str) -> None:
        nonlocal checks
        trained = _trained_on(results, preset_name, network, unit)
        if trained is None:
            return
        checks += 1
        for case in sorted(trained & test_cases):
            leaks.append(f"case {case} of test fold {fold} was a training case of {network} unit '{unit}' "
                         f"({preset_name}), which {why}")

    for preset_name in presets:
        for vfn_unit in plan.units("vfn"):
            if vfn_unit["kind"] == "all":
                continue
            for fold in vfn_unit["predict_folds"]:
                test_cases = set(data.fold_cases([fold]))
                for network in paths.VFN_METHOD_NETWORKS.values():
                    check(network, vfn_unit["name"], test_cases, fold, "fuses that fold", preset_name)
                for unit in plan.units("2d"):
                    if fold in unit["predict_folds"]:
                        for view in VIEWS:
                            check(paths.view_network(view), unit["name"], test_cases, fold, "predicts that fold",
                                  preset_name)
                manifest_path = preprocessed / FUSION_DIR / preset_name / vfn_unit["name"] / "manifest.json"
                if manifest_path.is_file():
                    manifest = read_json(manifest_path)
                    for case, entry in manifest["cases"].items():
                        if case in test_cases:
                            leaks.append(f"case {case} of test fold {fold} is a training sample of the fusion set "
                                         f"{manifest_path}")
                        for network, unit in entry["units"].items():
                            check(network, unit, test_cases, fold,
                                  f"made the fusion-set maps of case {case} for VFN unit {vfn_unit['name']}",
                                  preset_name)
    return sorted(set(leaks)), checks
