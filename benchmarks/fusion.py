"""The whole 4-fold CCA fusion comparison on a shared MSD task, from a fresh work folder, with a budget.

One command runs ``vfnet_train_all -d <Task> --budget N`` (the budgeted schedules: every 2D unit,
fusion sets, VFNs, the stack weights and crossval) and writes two results:
``results/fusion_<Task>.md/.json`` (per method: Dice per label and overall with per-case values;
paired Wilcoxon and t-test p of vfn vs mean, majority and stack; VFN parameters and time against
the views; the CCA units' maps against the fold units' maps on the same cases) and
``results/budget_<Task>.md/.json`` (what benchmarks/budget.py writes for the same run).

Usage: python benchmarks/fusion.py --dataset Task20_CHAOST2 [--budget 60] [--work DIR]
Targets (2 CPU cores): VFN − mean ≥ +1 Dice point with Wilcoxon p < 0.01 on one dataset and never
below −0.2; VFN parameters ≤ 10 % of the planned 3D U-Net's; VFN time ≤ 15 % of the three views'.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from budget import budget_arguments, finished_run, results_name, run_budgeted, write_budget_results
from machine import write_results

TIMED_CASES = 10
# Shared with reproduce.py and compare_nnunet.py: the shared Hippocampus in a work folder, planned as CCA.
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "Task04_Hippocampus"
PRESET = "quick"


def use_work_folders(work: Path) -> None:
    """Point vfnet's three folders into ``work`` (also on a rerun that skips the set-up)."""
    for var, sub in (("vfnet_raw", "raw"), ("vfnet_preprocessed", "pre"), ("vfnet_results", "res")):
        os.environ[var] = str(work / sub)


def _dataset(dataset: str):
    """(plan, preprocessed data, results folder) of a dataset in the current work folders."""
    from vfnet import paths
    from vfnet.experiment_planning.plans import Plan
    from vfnet.preprocessing.data import PreprocessedDataset

    preprocessed = paths.preprocessed_dataset(dataset)
    return Plan.load(preprocessed), PreprocessedDataset(preprocessed), paths.results_root() / preprocessed.name


def _fold_unit_cases(dataset: str, preset: str):
    """Every cross-validation case with its test fold's VFN unit, image, label and fold units' maps (as crossval
    fuses them): yields (vfn_unit, case, image, label on the maps' grid, maps)."""
    from vfnet.evaluation.crossval import test_folds
    from vfnet.fusion.fusion_set import load_view_maps
    from vfnet.views import VIEWS

    plan, data, results = _dataset(dataset)
    for fold, unit, vfn_unit in test_folds(plan):
        for case in data.fold_cases([fold]):
            image, label = data.load(case, mmap=False)
            maps = load_view_maps(results, preset, {v: unit for v in VIEWS}, case, results.name)
            yield vfn_unit, case, image, np.asarray(label).reshape(maps[VIEWS[0]].shape[1:]), maps


def _setup(work: Path, data: Path) -> None:
    use_work_folders(work)
    from dataset_conversion.msd import convert_msd
    from vfnet import paths
    from vfnet.preprocessing.plan_and_preprocess import plan_and_preprocess

    if not (paths.raw_root() / "Task04_Hippocampus" / "dataset.json").is_file():
        convert_msd(data, quiet=True)
    plan_and_preprocess(4, num_processes=2, split_mode="cca", quiet=True)


def _inference_times(dataset: str, preset: str, cases: list[str]) -> dict:
    """Median over cases of the seconds per case of the three views (fold 0's networks) and of the VFN
    fusion after them: its network run at the planned stride and at the compared one
    (:func:`_compared_stride`), and as deployed, where a VFN that kept iteration 0 skips its network
    (``VfnConfig.shortcut``), once for its labels (as crossval fuses) and once through its fused
    probabilities and their argmax (as ``vfnet_predict`` fuses each fold), and both again for fold 0's VFN
    with its head zeroed, as a VFN that kept iteration 0 deploys. Each is timed :data:`REPEATS` times per
    case and counts its fastest run, as ``timeit`` advises: on two shared cores one run of a fraction of a
    second moves by a quarter. The six fusions of a case run in an order that rotates from case to case."""
    import copy
    import dataclasses

    import torch

    from vfnet import paths
    from vfnet.fusion.methods import VfnConfig, class_argmax, fuse, fused_probabilities
    from vfnet.fusion.models import load_vfn
    from vfnet.inference.predict2d import load_unit_network
    from vfnet.views import VIEWS

    plan, data, results = _dataset(dataset)
    fold = plan["fold_names"][0]
    networks = {v: load_unit_network(paths.unit_dir(results, preset, f"2d_{v}", fold), plan, v) for v in VIEWS}
    vfn = load_vfn(paths.unit_dir(results, preset, "vfn", fold), plan)
    deployed = VfnConfig.from_plan(plan, device="cpu")
    config = dataclasses.replace(deployed, shortcut=False)
    other = dataclasses.replace(config, stride=_compared_stride(config)[0])
    # fold 0's VFN as if it had kept iteration 0 (its head zeroed: its prior), timed in every run, whichever
    # checkpoint fold 0 kept, since any fold's VFN may deploy that way
    prior = copy.deepcopy(vfn).zero_head()

    def labels(model, maps, image, vfn_config):
        return fuse("vfn", maps, image, model=model, vfn_config=vfn_config)

    def through_probabilities(model, maps, image, vfn_config):  # what vfnet_predict does with each fold's VFN
        return class_argmax(fused_probabilities("vfn", maps, image, model=model, vfn_config=vfn_config))

    times = {name: [] for name in ("views", "vfn", "other", "deployed", "deployed_probs", "prior", "prior_probs")}
    timed = [("vfn", labels, vfn, config), ("other", labels, vfn, other), ("deployed", labels, vfn, deployed),
             ("deployed_probs", through_probabilities, vfn, deployed), ("prior", labels, prior, deployed),
             ("prior_probs", through_probabilities, prior, deployed)]
    with torch.inference_mode():
        for index, case in enumerate(cases):
            image, _ = data.load(case, mmap=False)
            maps, seconds = _fastest(_predict_views, networks, image, plan)
            times["views"].append(seconds)
            # each case starts with another of the fusions, so none is always timed right after the views
            shift = index % len(timed)
            for name, run, model, vfn_config in timed[shift:] + timed[:shift]:
                times[name].append(_fastest(run, model, maps, image, vfn_config)[1])
    median = {name: float(np.median(seconds)) for name, seconds in times.items()}
    return {"views_s": median["views"], "vfn_s": median["vfn"], "vfn_other_stride_s": median["other"],
            "vfn_deployed_s": median["deployed"], "vfn_deployed_probabilities_s": median["deployed_probs"],
            "vfn_iteration0_s": median["prior"], "vfn_iteration0_probabilities_s": median["prior_probs"],
            "network_skipped": bool(vfn.adds_nothing()), "cases": len(cases), "repeats": REPEATS}


REPEATS = 3


def _fastest(run, *args, **kwargs):
    """``run(*args, **kwargs)``'s result and the seconds of its fastest of :data:`REPEATS` calls."""
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = run(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return result, best


def _predict_views(networks: dict, image: np.ndarray, plan) -> dict:
    """The three views' probability maps of ``image``, as prediction makes them."""
    from vfnet.inference.predict2d import predict_volume_2d

    return {v: predict_volume_2d(network, image, v, plan["views"][v]["context_slices"], "cpu")
            for v, network in networks.items()}


SEEDS = 3


def _overall_dice(num_classes: int, label: np.ndarray, prediction: np.ndarray) -> float:
    """Mean Dice over the foreground classes, in %."""
    from vfnet.measures.metrics import dice

    return 100 * float(np.mean([dice(label == c, prediction == c) for c in range(1, num_classes)]))


def _compared_stride(config) -> tuple[list[int], str]:
    """The stride the planned one is compared with, and its name: half a patch when windows are planned a
    whole patch apart (new plans since commit bd6137d), else a whole patch (no overlap)."""
    patch = [int(p) for p in config.patch_size]
    if [int(s) for s in config.stride] == patch:
        return [max(8, p // 2) for p in patch], "half patch"
    return patch, "whole patch"


def _stride_comparison(dataset: str, preset: str, crossval: dict) -> dict:
    """The VFN with its windows at the compared stride (:func:`_compared_stride`) against the planned stride,
    on every cross-validation case (each test fold's VFN on its fold units' maps, as crossval fuses them):
    overall Dice of both, paired tests, and seconds per case of each, the network run even where the VFN
    kept iteration 0 (the planned stride's Dice is crossval's)."""
    import dataclasses

    from vfnet import paths
    from vfnet.fusion.methods import VfnConfig, fuse
    from vfnet.fusion.models import load_vfn
    from vfnet.measures.stats import paired_tests

    plan, _, results = _dataset(dataset)
    planned = VfnConfig.from_plan(plan, device="cpu", shortcut=False)
    other_stride, other_name = _compared_stride(planned)
    other = dataclasses.replace(planned, stride=other_stride)
    dice_of = {"planned": [], "other": []}
    seconds = {"planned": [], "other": []}
    models = {}
    for vfn_unit, case, image, label, maps in _fold_unit_cases(dataset, preset):
        if vfn_unit not in models:
            models[vfn_unit] = load_vfn(paths.unit_dir(results, preset, "vfn", vfn_unit), plan)
        predictions = {}
        for name, config in (("other", other), ("planned", planned)):
            start = time.perf_counter()
            predictions[name] = fuse("vfn", maps, image, model=models[vfn_unit], vfn_config=config)
            seconds[name].append(time.perf_counter() - start)
        dice_of["other"].append(_overall_dice(plan.num_classes, label, predictions["other"]))
        dice_of["planned"].append(100 * crossval["cases"][case]["dice"]["vfn"]["overall"])
    test = paired_tests(dice_of["other"], dice_of["planned"])
    return {"planned_stride": list(planned.stride), "other_stride": other_stride, "other_name": other_name,
            "cases": len(dice_of["planned"]),
            **{f"{name}_dice": float(np.mean(d)) for name, d in dice_of.items()},
            **{f"{name}_s": float(np.mean(t)) for name, t in seconds.items()},
            "difference": test["mean_difference"], "wilcoxon_p": test["wilcoxon_p"],
            "t_test_p": test["t_test_p"]}


def _seed_spread(dataset: str, preset: str) -> dict:
    """VFN − mean (overall Dice points) on fold 0's cases for the run's VFN and two more seeds of it.

    The extra VFNs train after train_all (outside its budget), on the same fusion set with the
    same schedule, into ``vfn_seed<seed>`` beside the unit.
    """
    from vfnet import paths
    from vfnet.fusion.fusion_set import load_view_maps
    from vfnet.fusion.methods import VfnConfig, fuse
    from vfnet.fusion.models import load_vfn
    from vfnet.pipeline.units import train_vfn_unit
    from vfnet.views import VIEWS

    plan, data, results = _dataset(dataset)
    fold = plan["fold_names"][0]
    planned = plan.training.seed
    seeds = [planned + i for i in range(SEEDS)]
    start = time.perf_counter()
    for seed in seeds[1:]:
        train_vfn_unit(dataset, fold, preset, device="cpu", quiet=True, seed=seed)
    train_s = time.perf_counter() - start
    folders = {s: paths.unit_dir(results, preset, "vfn" if s == planned else f"vfn_seed{s}", fold) for s in seeds}
    models = {seed: load_vfn(folder, plan) for seed, folder in folders.items()}
    config = VfnConfig.from_plan(plan, device="cpu")

    differences = {seed: [] for seed in seeds}
    for case in data.fold_cases([fold]):
        image, label = data.load(case, mmap=False)
        maps = load_view_maps(results, preset, {v: fold for v in VIEWS}, case, results.name)
        mean = _overall_dice(plan.num_classes, label, fuse("mean", maps))
        for seed, model in models.items():
            fused = fuse("vfn", maps, image, model=model, vfn_config=config)
            differences[seed].append(_overall_dice(plan.num_classes, label, fused) - mean)
    per_seed = {str(seed): float(np.mean(d)) for seed, d in differences.items()}
    values = list(per_seed.values())
    return {"fold": fold, "cases": len(differences[planned]), "vfn_minus_mean": per_seed,
            "min": min(values), "max": max(values), "std": float(np.std(values, ddof=1)),
            "extra_training_s": round(train_s, 1)}


def _vfn_selection(dataset: str, preset: str, crossval: dict) -> dict:
    """Per test fold: how its VFN chose its checkpoint (validation cases, pseudo-Dice at iteration 0 and
    the best after it, the iteration kept, the plan's min_gain and min_gain_se) and VFN − mean on the fold's cases."""
    from vfnet import paths
    from vfnet.atomic import read_json
    from vfnet.evaluation.crossval import test_folds

    plan, data, results = _dataset(dataset)
    out = {}
    for fold, _, vfn_unit in test_folds(plan):
        folder = paths.unit_dir(results, preset, "vfn", vfn_unit)
        summary, record = read_json(folder / "summary.json"), read_json(folder / "unit.json")
        differences = [100 * (crossval["cases"][c]["dice"]["vfn"]["overall"] - crossval["cases"][c]["dice"]["mean"]["overall"])
                       for c in data.fold_cases([fold])]
        out[fold] = {"val_cases": len(record["val_cases"]), "train_cases": len(record["train_cases"]),
                     "min_gain": record.get("min_gain", 0.0), "min_gain_se": record.get("min_gain_se", 0.0),
                     "start_val_pseudo_dice": summary["start_val_pseudo_dice"],
                     "best_trained_val_pseudo_dice": summary.get("best_trained_val_pseudo_dice"),
                     "best_trained_iteration": summary.get("best_trained_iteration"),
                     "kept_iteration": summary["best_iteration"], "vfn_minus_mean": float(np.mean(differences)),
                     "cases": len(differences)}
    return out


SELECTION_CANDIDATES = ("axial", "coronal", "sagittal", "mean")


def selection_ceiling(methods: dict, labels: list[str]) -> dict:
    """What choosing, with the truth known, the best of :data:`SELECTION_CANDIDATES` would score.

    ``methods``: method → ``{"cases": {case: {label: Dice %, "overall": Dice %}}}``. ``per_label``: each case
    and organ takes its best candidate; ``per_case``: each case takes the candidate with the best mean over
    organs. They bound what a fusion that picks a view (or mean) per case and organ can gain over mean, not
    a voxel-wise fusion like the VFN, which can also fix an error every view makes.
    """
    cases = list(methods["mean"]["cases"])
    mean = float(np.mean([methods["mean"]["cases"][c]["overall"] for c in cases]))
    per_label = float(np.mean([np.mean([max(methods[m]["cases"][c][lab] for m in SELECTION_CANDIDATES)
                                        for lab in labels]) for c in cases]))
    per_case = float(np.mean([max(methods[m]["cases"][c]["overall"] for m in SELECTION_CANDIDATES) for c in cases]))
    return {"candidates": list(SELECTION_CANDIDATES), "per_label": per_label, "per_case": per_case,
            "per_label_minus_mean": per_label - mean, "per_case_minus_mean": per_case - mean}


def any_view_right(label: np.ndarray, view_labels: list[np.ndarray], fallback: np.ndarray) -> np.ndarray:
    """Labels of a fusion that knows the truth: ``label`` wherever one of ``view_labels`` votes it, ``fallback``
    (mean fusion's labels) elsewhere, where every view is wrong."""
    right = np.zeros(label.shape, dtype=bool)
    for votes in view_labels:
        right |= votes == label
    return np.where(right, label, fallback).astype(np.uint8)


TABLE_BINS = 10  # per view: a voxel's cell is its three views' probabilities of one organ, each in tenths


def probability_cells(probabilities: list[np.ndarray], bins: int = TABLE_BINS) -> np.ndarray:
    """Each voxel's cell (0 … bins³ − 1): the views' probabilities of one class, each cut into ``bins`` equal
    steps, the first view's step the most significant digit."""
    cell = np.zeros(probabilities[0].shape, dtype=np.int64)
    for p in probabilities:
        cell = cell * bins + np.clip((np.asarray(p, dtype=np.float32) * bins).astype(np.int64), 0, bins - 1)
    return cell


def table_counts(label: np.ndarray, view_maps: list[np.ndarray], num_classes: int,
                 bins: int = TABLE_BINS) -> np.ndarray:
    """(foreground class, [voxels, voxels of that class], cell) counts of one case: what
    :func:`table_dice` fits and scores."""
    counts = np.zeros((num_classes - 1, 2, bins ** len(view_maps)), dtype=np.int64)
    for c in range(1, num_classes):
        cells = probability_cells([m[c] for m in view_maps], bins).ravel()
        counts[c - 1, 0] = np.bincount(cells, minlength=counts.shape[2])
        counts[c - 1, 1] = np.bincount(cells[label.ravel() == c], minlength=counts.shape[2])
    return counts


def table_dice(case_counts: list[np.ndarray], fit_counts: list[np.ndarray] | None = None) -> list[float]:
    """Per case, the mean Dice (%) over organs of the best table fitted on ``fit_counts`` (default: these very cases).

    For each organ the table labels it in a set of cells (:func:`probability_cells`), the set that gives the
    best Dice over all voxels of all fitted cases together: the cells richest in that organ, down to the share
    that maximises Dice (a set of cells that is not the top of that order cannot do better); a cell the fitted
    cases never reach is labelled nowhere. Each organ is decided on its own, so two organs may claim a voxel.
    Fitted on the cases it scores, it is a ceiling of a fusion that decides an organ at a voxel from the three
    views' probabilities of it there, not a method. Mean, majority and stack decide from the probabilities at
    the voxel too (every organ's, not cut into steps), so for them it is close to a ceiling, not a strict one.
    Fitted on other cases (:func:`cross_fitted_table_dice`) it is such a fusion, learned.
    """
    total = np.sum(case_counts if fit_counts is None else fit_counts, axis=0)
    dice = np.zeros((len(case_counts), total.shape[0]))
    for c, (voxels, positives) in enumerate(total):
        order = np.argsort(-(positives / np.maximum(voxels, 1)), kind="stable")
        hits, taken = np.cumsum(positives[order]), np.cumsum(voxels[order])
        pooled = 2 * hits / np.maximum(taken + positives.sum(), 1)
        chosen = np.zeros(voxels.shape, dtype=bool)
        if positives.any():  # an organ no case has is labelled nowhere
            chosen[order[: int(np.argmax(pooled)) + 1]] = True
        for k, counts in enumerate(case_counts):
            truth, labelled = counts[c, 1].sum(), counts[c, 0][chosen].sum()
            hit = counts[c, 1][chosen].sum()
            dice[k, c] = 1.0 if truth + labelled == 0 else 2 * hit / (truth + labelled)
    return [100 * float(d) for d in dice.mean(axis=1)]


def cross_fitted_table_dice(case_counts: list[np.ndarray], groups: list) -> list[float]:
    """:func:`table_dice` of each case with the table fitted on the cases of the other ``groups`` (test folds):
    how much of the in-sample table's gain a table learned from other cases keeps; NaN with one group only."""
    if len(set(groups)) < 2:
        return [float("nan")] * len(case_counts)
    out = [0.0] * len(case_counts)
    for group in dict.fromkeys(groups):
        inside = [k for k, g in enumerate(groups) if g == group]
        fit = [counts for counts, g in zip(case_counts, groups) if g != group]
        for k, dice in zip(inside, table_dice([case_counts[k] for k in inside], fit)):
            out[k] = dice
    return out


def _voxel_ceiling(dataset: str, preset: str, crossval: dict) -> dict:
    """Overall Dice (%) on every cross-validation case (the fold units' maps, as crossval fuses them), and the
    gain over mean fusion, of :func:`any_view_right` (the room of a fusion that chooses per voxel among the
    views' votes, as the VFN mostly does) and of :func:`table_dice` (about the best a fusion does that decides a
    voxel from its views' probabilities alone, without its neighbours or the image)."""
    from vfnet.fusion.methods import class_argmax, mean_fusion
    from vfnet.measures.stats import paired_tests
    from vfnet.views import VIEWS

    plan = _dataset(dataset)[0]
    oracle, mean, counts, folds = [], [], [], []
    for vfn_unit, case, _, label, maps in _fold_unit_cases(dataset, preset):
        folds.append(vfn_unit)
        fused = any_view_right(label, [class_argmax(maps[v]) for v in VIEWS], mean_fusion(maps))
        oracle.append(_overall_dice(plan.num_classes, label, fused))
        mean.append(100 * crossval["cases"][case]["dice"]["mean"]["overall"])
        counts.append(table_counts(label, [maps[v] for v in VIEWS], plan.num_classes))
    table, crossed = table_dice(counts), cross_fitted_table_dice(counts, folds)
    return {"per_voxel": float(np.mean(oracle)), "per_voxel_minus_mean": float(np.mean(oracle) - np.mean(mean)),
            "probability_table": float(np.mean(table)),
            "probability_table_minus_mean": float(np.mean(table) - np.mean(mean)), "table_bins": TABLE_BINS,
            "probability_table_cross_fitted": float(np.mean(crossed)),
            "probability_table_cross_fitted_minus_mean": float(np.mean(crossed) - np.mean(mean)),
            "probability_table_cross_fitted_wilcoxon_p": paired_tests(crossed, mean)["wilcoxon_p"],
            "cases": len(oracle)}


def _cca_gap(dataset: str, preset: str) -> dict:
    """Per view: Dice and predicted/true volume of the fold unit's maps and of the CCA units' maps, same cases."""
    from vfnet import paths
    from vfnet.views import VIEWS

    plan, data, results = _dataset(dataset)
    cca_units = [u for u in plan.units("2d") if u["kind"] == "cca"]
    out = {}
    for view in VIEWS:
        rows = {"fold": {"dice": [], "volume_ratio": []}, "cca": {"dice": [], "volume_ratio": []}}
        for fold in plan["fold_names"]:
            sources = [("fold", fold)] + [("cca", u["name"]) for u in cca_units if fold in u["predict_folds"]]
            for case in data.fold_cases([fold]):
                _, label = data.load(case)
                label = np.asarray(label)
                for kind, unit in sources:
                    unit_dir = paths.unit_dir(results, preset, f"2d_{view}", unit)
                    summary = json.loads((unit_dir / "summary.json").read_text())
                    rows[kind]["dice"].append(summary["cases"][case]["mean"])
                    with np.load(unit_dir / "predictions" / f"{case}.npz") as archive:
                        predicted = np.argmax(archive["probabilities"], axis=0)
                    rows[kind]["volume_ratio"].append(float((predicted > 0).sum() / max(1, (label > 0).sum())))
        out[view] = {kind: {"dice": 100 * float(np.mean(r["dice"])), "volume_ratio": float(np.mean(r["volume_ratio"])),
                            "maps": len(r["dice"])} for kind, r in rows.items()}
    return out


def main() -> None:
    args = budget_arguments(__doc__).parse_args()
    name = results_name("fusion", args)
    if args.from_work:
        # a finished run: its units are kept; crossval is run again with this code (stack, paired tests)
        run = finished_run(args)
        from vfnet.evaluation.crossval import crossval

        start = time.perf_counter()
        crossval(args.dataset, run["preset"], device="cpu", quiet=True)
        run["resumed"] += (f"The cross-validation below was run again by this command with its own code "
                           f"({time.perf_counter() - start:.0f} s), on the units that run trained. ")
        budget_path = Path(__file__).resolve().parent / "results" / f"{results_name('budget', args)}.md"
    else:
        run = run_budgeted(args, name)
        budget_path = write_budget_results(args, run, results_name("budget", args))
    from vfnet.experiment_planning.plans import Plan
    from vfnet.networks.unet3d import build_unet3d
    from vfnet.networks.vfn import build_vfn, count_parameters
    from vfnet.preprocessing.data import PreprocessedDataset

    crossval = json.loads((run["results"] / run["preset"] / "crossval" / "crossval.json").read_text())
    crossval_md = (run["results"] / run["preset"] / "crossval" / "crossval.md").read_text()
    plan = Plan.load(run["results"])
    vfn_params = count_parameters(build_vfn(plan, plan.num_channels, plan.num_classes))
    unet_params = count_parameters(build_unet3d(plan, plan.num_channels, plan.num_classes))
    preprocessed = run["work"] / "pre" / run["results"].name
    cases = PreprocessedDataset(preprocessed).fold_cases([plan["fold_names"][0]])[:TIMED_CASES]
    speed = _inference_times(args.dataset, run["preset"], cases)
    gap = _cca_gap(args.dataset, run["preset"])
    stride = _stride_comparison(args.dataset, run["preset"], crossval)
    seeds = _seed_spread(args.dataset, run["preset"])
    selection = _vfn_selection(args.dataset, run["preset"], crossval)
    labels = list(crossval["labels"])
    methods = {m: {"overall": 100 * s["overall"]["mean"],
                   "per_label": {lab: 100 * s[lab]["mean"] for lab in labels},
                   "seconds_per_case": s["seconds_per_case"],
                   "cases": {case: {k: 100 * v for k, v in entry["dice"][m].items()}
                             for case, entry in crossval["cases"].items()}}
               for m, s in crossval["summary"].items()}
    ceiling = {**selection_ceiling(methods, labels), **_voxel_ceiling(args.dataset, run["preset"], crossval)}
    tests = {}
    for rival in ("mean", "majority", "stack"):
        test = crossval["tests"].get(f"vfn vs {rival}", {}).get("overall")
        if test:
            tests[f"vfn_vs_{rival}"] = {"difference": 100 * test["mean_difference"], "wilcoxon_p": test["wilcoxon_p"],
                                        "t_test_p": test["t_test_p"]}
    test_rows = "\n".join(f"| {k.replace('_', ' ')} | {t['difference']:+.2f} | {t['t_test_p']:.3g} | "
                          f"{t['wilcoxon_p']:.3g} |" for k, t in tests.items())
    gap_rows = "\n".join(f"| {view} | {g['fold']['dice']:.2f} | {g['cca']['dice']:.2f} | "
                         f"{g['fold']['dice'] - g['cca']['dice']:+.2f} | {g['fold']['volume_ratio']:.3f} | "
                         f"{g['cca']['volume_ratio']:.3f} |" for view, g in gap.items())
    selection_rows = "\n".join(
        f"| {fold} | {v['train_cases']} / {v['val_cases']} | {100 * v['start_val_pseudo_dice']:.2f} | "
        f"{100 * v['best_trained_val_pseudo_dice']:.2f} (iteration {v['best_trained_iteration']}) | "
        f"{v['min_gain']:g} / {v['min_gain_se']:g} | {v['kept_iteration']} | {v['vfn_minus_mean']:+.2f} ({v['cases']} cases) |"
        for fold, v in selection.items())
    deployed_note = ("fold 0's VFN kept iteration 0, so it fuses as its prior without running its network"
                     if speed["network_skipped"] else "fold 0's VFN kept a trained checkpoint: the network runs")
    seed_rows = "\n".join(f"| {seed} | {d:+.2f} |" for seed, d in seeds["vfn_minus_mean"].items())
    body = f"""
Command: `{run['invocation']}` (the same run's budget results: `{budget_path.name}`).
{run['resumed']}
4-fold cross-cross-augmentation, {len(crossval['cases'])} held-out cases, budget {args.budget:g} min:
`vfnet_train_all` took {run['wall_s'] / 60:.1f} min.

| measure | value | target |
|---|---|---|
| VFN − mean, overall Dice | {tests.get('vfn_vs_mean', {}).get('difference', float('nan')):+.2f} points \
(Wilcoxon p {tests.get('vfn_vs_mean', {}).get('wilcoxon_p', float('nan')):.3g}) | ≥ +1 with p < 0.01 on one dataset; never < −0.2 |
| VFN parameters / planned 3D U-Net | {vfn_params:,} / {unet_params:,} = {100 * vfn_params / unet_params:.1f} % | ≤ 10 % |
| three views, s per case (fold-0 networks, {speed['cases']} cases, median of each case's fastest of {speed['repeats']} runs) | {speed['views_s']:.3f} s | |
| VFN fusion after them, s per case (its network run) | {speed['vfn_s']:.3f} s | |
| VFN time / views time | {100 * speed['vfn_s'] / speed['views_s']:.1f} % | ≤ 15 % |
| as deployed ({deployed_note}) | {speed['vfn_deployed_s']:.3f} s, {100 * speed['vfn_deployed_s'] / speed['views_s']:.1f} % | |
| the same through the fused probabilities, as `vfnet_predict` fuses each fold before averaging them | \
{speed['vfn_deployed_probabilities_s']:.3f} s, {100 * speed['vfn_deployed_probabilities_s'] / speed['views_s']:.1f} % | |
| a VFN that kept iteration 0 (fold 0's, its head zeroed: it fuses as its prior), labels as crossval fuses | \
{speed['vfn_iteration0_s']:.3f} s, {100 * speed['vfn_iteration0_s'] / speed['views_s']:.1f} % | |
| the same through the fused probabilities, as `vfnet_predict` fuses each fold | \
{speed['vfn_iteration0_probabilities_s']:.3f} s, {100 * speed['vfn_iteration0_probabilities_s'] / speed['views_s']:.1f} % | |
| the same, windows a {stride['other_name']} apart (stride {stride['other_stride']}, not {stride['planned_stride']}) | \
{speed['vfn_other_stride_s']:.3f} s, {100 * speed['vfn_other_stride_s'] / speed['views_s']:.1f} % | |

## Choosing with the truth known (ceilings, not methods)

| each case and organ takes its best of {', '.join(ceiling['candidates'])} | each case takes its best of them \
| each voxel takes the true label where one of the three views votes it (mean fusion's elsewhere) \
| each organ labelled in the cells of the views' probabilities of it ({ceiling['table_bins']} steps per view) \
that give it the best Dice, fitted on these cases |
|---|---|---|---|
| {ceiling['per_label']:.2f} % ({ceiling['per_label_minus_mean']:+.2f} over mean) | \
{ceiling['per_case']:.2f} % ({ceiling['per_case_minus_mean']:+.2f} over mean) | \
{ceiling['per_voxel']:.2f} % ({ceiling['per_voxel_minus_mean']:+.2f} over mean) | \
{ceiling['probability_table']:.2f} % ({ceiling['probability_table_minus_mean']:+.2f} over mean) |

The same table fitted, for each test fold, on the other folds' cases (a fusion learned from other cases, not a ceiling): {ceiling['probability_table_cross_fitted']:.2f} % ({ceiling['probability_table_cross_fitted_minus_mean']:+.2f} over mean, Wilcoxon p {ceiling['probability_table_cross_fitted_wilcoxon_p']:.3g}).

## VFN windows a {stride['other_name']} apart against the planned stride, every cross-validation case

| stride | overall Dice % | s per case (mean) |
|---|---|---|
| {stride['planned_stride']} (planned) | {stride['planned_dice']:.2f} | {stride['planned_s']:.3f} |
| {stride['other_stride']} ({stride['other_name']}) | {stride['other_dice']:.2f} | {stride['other_s']:.3f} |

{stride['other_name'].capitalize()} − planned: {stride['difference']:+.2f} points over {stride['cases']} cases \
(t-test p \
{stride['t_test_p']:.3g}, Wilcoxon p {stride['wilcoxon_p']:.3g}).

## Paired tests over cases (overall Dice)

| comparison | difference (points) | t-test p | Wilcoxon p |
|---|---|---|---|
{test_rows}

## How each test fold's VFN chose its checkpoint (validation pseudo-Dice %)

| test fold | training / validation cases | iteration 0 (mean fusion) | best after it | min gain (points / standard errors) | kept iteration | VFN − mean on the fold's cases |
|---|---|---|---|---|---|---|
{selection_rows}

## VFN − mean over {SEEDS} seeds, fold {seeds['fold']} ({seeds['cases']} cases)

| seed | VFN − mean, overall Dice points |
|---|---|
{seed_rows}

Spread: {seeds['min']:+.2f} to {seeds['max']:+.2f} (standard deviation {seeds['std']:.2f}); the two extra VFNs \
trained after train_all, outside its budget ({seeds['extra_training_s']:.0f} s).

## CCA units' maps against the fold units' maps, same cases (mean Dice %, predicted / true foreground volume)

| view | fold units | CCA units | gap | volume ratio, fold | volume ratio, CCA |
|---|---|---|---|---|---|
{gap_rows}

## Cross-validation table

{crossval_md.split(chr(10), 2)[2]}
"""
    path = write_results(name, f"Fusion on {args.dataset}: 4-fold CCA, budget {args.budget:g} min, CPU", body, {
        "command": run["invocation"], "resumed": run["resumed"] or None, "budget_min": args.budget, "wall_min": run["wall_s"] / 60,
        "methods": methods, "tests": tests, "vfn_parameters": vfn_params, "unet3d_parameters": unet_params,
        "inference": speed, "vfn_stride": stride, "cca_gap": gap, "selection_ceiling": ceiling, "seeds": seeds, "vfn_selection": selection, "best": crossval["best"]})
    print(path.read_text())


if __name__ == "__main__":
    main()
