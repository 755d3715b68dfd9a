"""vfnet_crossval: every held-out case of every fold, every fusion method, a Table-1-style summary.

Each test fold k is scored with the maps of the 2D fold units that left fold k out and the
VFN of fold k; in holdout mode subset C with the 2D unit ``holdout`` and VFN ``holdout``.
Where the 3D U-Net unit of the same name has predicted the test fold, its maps give a ``3d``
row (time per case: the unit's recorded network time) and the VFN is tested against it.
The best fusion method (by mean Dice) is recorded for ``vfnet_predict``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vfnet import paths
from vfnet.atomic import read_json, write_json
from vfnet.device import resolve_device
from vfnet.errors import ModelNotFoundError
from vfnet.experiment_planning.plans import Plan
from vfnet.fusion.fusion_set import load_view_maps
from vfnet.fusion.methods import VfnConfig, class_argmax, fuse
from vfnet.fusion.models import load_vfn
from vfnet.fusion.postprocess import keep_largest_component
from vfnet.fusion.stack import fit_unit_stack
from vfnet.measures.metrics import dice
from vfnet.measures.stats import paired_tests, summarize
from vfnet.preprocessing.data import PreprocessedDataset
from vfnet.views import VIEWS

FUSION_METHODS = ("majority", "mean", "staple", "stack", "vfn", "vfn-noimage")
# the methods the VFN is compared with, case by case (paired tests)
VFN_RIVALS = ("mean", "majority", "stack", "3d")
POSTPROCESSED = "+pp"


def test_folds(plan: Plan) -> list[tuple[str, str, str]]:
    """(test fold, 2D unit whose maps score it, VFN unit that fuses it)."""
    if plan["split_mode"] == "holdout":
        return [("C", "holdout", "holdout")]
    return [(fold, fold, fold) for fold in plan["fold_names"]]


def _case_dice(reference: np.ndarray, prediction: np.ndarray, foreground: dict[str, int]) -> dict[str, float]:
    scores = {name: dice(reference == index, prediction == index) for name, index in foreground.items()}
    scores["overall"] = float(np.mean(list(scores.values())))
    return scores


def _load_fold_vfns(results: Path, preset: str, vfn_unit: str, plan: Plan, device) -> dict:
    models = {}
    for method, network in paths.VFN_METHOD_NETWORKS.items():
        unit = paths.UnitPaths.of(results, preset, network, vfn_unit)
        if unit.final_checkpoint.is_file():
            models[method] = load_vfn(unit.folder, plan, method == "vfn", device)
    return models


def choose_postprocessing(cases: dict[str, dict], method: str, labels: list[str]) -> dict:
    """Per label, keep its largest component when that raises the label's mean Dice over the held-out cases.

    Cleaning one label leaves the others' voxels alone, so the ``+pp`` row's Dice of a label is
    that label cleaned alone and every combination can be scored from the two rows.

    Returns:
        ``postprocess`` (any label cleaned), ``postprocess_labels`` (those cleaned), ``mean_dice``
        (mean over cases of the per-label-chosen Dice, averaged over labels) and
        ``dice_per_label`` (label → mean Dice without and with the component kept).
    """
    per_label, chosen = {}, []
    for label in labels:
        without = float(np.mean([c["dice"][method][label] for c in cases.values()]))
        with_pp = float(np.mean([c["dice"][method + POSTPROCESSED][label] for c in cases.values()]))
        per_label[label] = {"without": without, "with": with_pp}
        if with_pp > without:
            chosen.append(label)
    overall = [np.mean([c["dice"][method + (POSTPROCESSED if lab in chosen else "")][lab] for lab in labels])
               for c in cases.values()]
    return {"postprocess": bool(chosen), "postprocess_labels": chosen, "mean_dice": float(np.mean(overall)),
            "dice_per_label": per_label}


def crossval(dataset: str | int | None, preset: str = "default", device: str = "auto", quiet: bool = False) -> dict:
    """Fuse every held-out case with every available method and write the tables.

    Returns:
        The contents of ``<results>/<preset>/crossval/crossval.json``.
    """
    preprocessed = paths.preprocessed_dataset(dataset)
    name = preprocessed.name
    plan = Plan.load(preprocessed)
    data = PreprocessedDataset(preprocessed)
    results = paths.results_root() / name
    torch_device = resolve_device(device)
    config = VfnConfig.from_plan(plan, device=torch_device)
    # class index -> label name, classes in ascending label value (as preprocessing maps them)
    ordered = sorted(plan["labels"].items(), key=lambda kv: kv[1])
    foreground = {label_name: index for index, (label_name, _) in enumerate(ordered) if index > 0}
    cases: dict[str, dict] = {}
    methods_seen: list[str] = []
    for fold, unit, vfn_unit in test_folds(plan):
        vfns = _load_fold_vfns(results, preset, vfn_unit, plan, torch_device)
        # the stack of this test fold, fitted on the same fusion set as its VFN (when there is one)
        stack = fit_unit_stack(preprocessed, results, preset, vfn_unit, plan.num_channels, plan.num_classes,
                               seed=plan.fusion.stack_seed, max_voxels=plan.fusion.stack_max_voxels)
        if stack is not None:
            vfns["stack"] = stack
        methods = list(VIEWS) + [m for m in FUSION_METHODS if m not in ("stack", "vfn", "vfn-noimage") or m in vfns]
        # the 3D U-Net baseline of the same fold (its unit shares the 2D unit's name), when it predicted the fold
        unit_3d = paths.UnitPaths.of(results, preset, paths.UNET3D_NETWORK, unit)
        if all(unit_3d.prediction(c).is_file() for c in data.fold_cases([fold])):
            methods.append("3d")
            summary_3d = unit_3d.summary
            seconds_3d = (read_json(summary_3d).get("seconds_per_case") if summary_3d.is_file() else None)
        for method in methods:
            if method not in methods_seen:
                methods_seen.append(method)
        for case in tqdm(data.fold_cases([fold]), desc=f"crossval fold {fold}", unit="case", disable=True if quiet else None):
            image, label = data.load(case, mmap=False)
            maps = load_view_maps(results, preset, {v: unit for v in VIEWS}, case, name)
            entry = {"fold": fold, "dice": {}, "seconds": {}}
            for method in methods:
                start = time.perf_counter()
                if method in VIEWS:
                    prediction = class_argmax(maps[method])
                elif method == "3d":
                    with np.load(unit_3d.prediction(case)) as archive:
                        prediction = class_argmax(archive["probabilities"])
                else:
                    prediction = fuse(method, maps, image, model=vfns.get(method), vfn_config=config)
                seconds = time.perf_counter() - start
                if method == "3d":  # the network's recorded time per case, not the time to read its maps
                    seconds = float("nan") if seconds_3d is None else float(seconds_3d)
                entry["dice"][method] = _case_dice(label, prediction, foreground)
                entry["seconds"][method] = seconds
                start = time.perf_counter()
                cleaned = keep_largest_component(prediction, plan.num_classes)
                entry["dice"][method + POSTPROCESSED] = _case_dice(label, cleaned, foreground)
                entry["seconds"][method + POSTPROCESSED] = seconds + time.perf_counter() - start
            cases[case] = entry
    if not cases:
        raise ModelNotFoundError(f"no held-out cases to evaluate for {name} ({preset})")
    all_methods = [m + suffix for m in methods_seen for suffix in ("", POSTPROCESSED)]
    # methods missing for some fold (e.g. a VFN trained for only some folds) are left out of the table
    complete = [m for m in all_methods if all(m in c["dice"] for c in cases.values())]
    labels = list(foreground) + ["overall"]
    summary = {m: {lab: summarize([c["dice"][m][lab] for c in cases.values()]) for lab in labels} for m in complete}
    for m in complete:
        summary[m]["seconds_per_case"] = float(np.mean([c["seconds"][m] for c in cases.values()]))
    tests = {}
    for suffix in ("", POSTPROCESSED):
        for rival in VFN_RIVALS:
            if "vfn" + suffix in complete and rival + suffix in complete:
                tests[f"vfn{suffix} vs {rival}{suffix}"] = {
                    lab: paired_tests([c["dice"]["vfn" + suffix][lab] for c in cases.values()],
                                      [c["dice"][rival + suffix][lab] for c in cases.values()]) for lab in labels}
    choices = {m: choose_postprocessing(cases, m, list(foreground)) for m in complete
               if m in FUSION_METHODS and m + POSTPROCESSED in complete}
    best = max(choices, key=lambda m: choices[m]["mean_dice"])
    record = {"method": best, **choices[best]}
    out = {"dataset": name, "preset": preset, "split_mode": plan["split_mode"], "methods": complete,
           "labels": {k: plan["labels"][k] for k in foreground}, "cases": cases, "summary": summary,
           "tests": tests, "best": record}
    folder = results / preset / "crossval"
    write_json(folder / "crossval.json", out)
    write_json(folder / "best_method.json", record)
    from vfnet.atomic import atomic_path

    with atomic_path(folder / "crossval.md") as tmp:
        tmp.write_text(crossval_markdown(out), encoding="utf-8")
    return out


def _fmt(stats: dict, scale: float = 100) -> str:
    return f"{stats['mean'] * scale:.2f} ± {stats['std'] * scale:.2f}"


def crossval_markdown(result: dict) -> str:
    """Table 1 of the paper, for every method: Dice % per label and overall, time per case, p-values."""
    labels = list(result["labels"])
    lines = [f"# Cross-validation of {result['dataset']} ({result['preset']} preset, {result['split_mode']})", "",
             f"{len(result['cases'])} held-out cases. Dice in %; '+pp' = largest connected component kept.", "",
             "| method | " + " | ".join(labels) + " | overall mean ± std | min | Q1 | median | Q3 | max | s / case |",
             "|---" * (len(labels) + 8) + "|"]
    for method in result["methods"]:
        row = result["summary"][method]
        overall = row["overall"]
        lines.append(f"| {method} | " + " | ".join(_fmt(row[lab]) for lab in labels) + f" | {_fmt(overall)} | "
                     + " | ".join(f"{overall[k] * 100:.2f}" for k in ("min", "q1", "median", "q3", "max"))
                     + f" | {row['seconds_per_case']:.3f} |")
    if result["tests"]:
        lines += ["", "Paired tests over cases (p-values):", "",
                  "| comparison | label | mean difference (Dice %) | t-test p | Wilcoxon p |", "|---|---|---|---|---|"]
        for comparison, per_label in result["tests"].items():
            for lab, test in per_label.items():
                lines.append(f"| {comparison} | {lab} | {test['mean_difference'] * 100:+.2f} | "
                             f"{test['t_test_p']:.3g} | {test['wilcoxon_p']:.3g} |")
    best = result["best"]
    cleaned = best.get("postprocess_labels", list(result["labels"]) if best["postprocess"] else [])
    suffix = f" with the largest component kept for {', '.join(cleaned)}" if cleaned else ""
    score = f"{best['mean_dice'] * 100:.2f} %"
    lines += ["", f"Best fusion method (recorded for vfnet_predict): **{best['method']}{suffix}** ({score})."]
    return "\n".join(lines) + "\n"
