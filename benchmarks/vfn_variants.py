"""VFN variants against the planned VFN, on the units of a finished ``benchmarks/fusion.py`` run.

The run's 2D units, fusion sets and crossval stay as they are; for every test fold this trains
each variant's VFN beside the planned one (same fusion set, schedule and validation cases) and
fuses that fold's held-out cases with the fold units' maps, as crossval does. Variants:

- ``final``: the planned VFN's final checkpoint instead of the one that validated best;
- ``stack_prior``: the view prior is a stack fitted on the VFN's training cases, not the mean;
- ``stack_prior_final``: the same, final checkpoint;
- ``double``: the planned VFN with twice its iterations (the budget gave it one share);
- ``long8``: the planned VFN with eight times its iterations (and validations, at the planned interval):
  whether the budget's VFN, a few epochs of its fusion set, is simply undertrained;
- ``coarse144`` / ``coarse122``: the planned VFN's schedule with the VFN fusing at 1/4 (1/2) of the
  in-plane resolution, its upsampled correction added to the full-resolution prior (the paired
  comparison the plan's ``input_downsample`` needs);
- ``viewdrop``: the planned VFN with 30 % of its training patches having one view's maps replaced by the
  mean of the other two (so it cannot lean on one view's exact errors, which differ between the CCA
  maps it trains on and the fold units' maps it fuses);
- ``lowlr``: the planned VFN at a third of its learning rate (a smaller correction of the mean);
- ``decay``: the planned VFN with AdamW weight decay 3 (its head, which starts at zero, decays towards
  mean fusion);
- ``noimage``: the planned VFN without the image channels (only the views' maps; crossval's
  ``vfn-noimage``), fewer inputs to fit to 10-15 training cases;
- ``jitter`` / ``jitter_mild``: the planned VFN with each view's maps recalibrated at random in every
  training patch (``map_jitter`` 0.5 / 0.2 of :class:`vfnet.training.data_vfn.VfnPatchSampler`: a random
  temperature and per-class bias), so it sees maps more and less confident and segmenting more and
  less than its CCA maps, as the fold units' maps it fuses are;
- ``anygain``: the planned VFN keeping any trained checkpoint that validates above mean fusion
  (``min_gain`` 0, ``min_gain_se`` 0; the same validation cases);
- ``se`` / ``se2``: the planned VFN keeping a trained checkpoint when its validation cases' mean gain
  in pseudo-Dice over iteration 0 is at least 1 (2) standard errors of those per-case gains, with no
  fixed margin (``min_gain`` 0, ``min_gain_se`` 1 / 2): a margin that shrinks with the number of
  validation cases and how much they agree (``se2`` is what new plans write; earlier plans asked
  for a fixed 0.5 points, ``guard05`` below);
- ``symmetric`` / ``symmetric_se2``: the planned VFN (with ``symmetric_se2``, ``se2``'s selection
  whatever the plan says) with the views' maps sorted
  per class and voxel before its layers (``view_symmetric``): its correction cannot depend on which
  view said what, only on how far the views agree, so it cannot learn to trust the view that was good
  in its CCA maps (the order of the views' quality changes between the CCA and the fold units' maps
  on CHAOST2, and from run to run);
- ``share``: the selection before plans had ``validation_cases`` and ``min_gain``: validation on the
  plan's share of the fusion set (``validation_fraction``) and any gain kept;
- ``guard05``: the selection of plans written before ``min_gain_se`` was planned: a trained checkpoint
  kept only 0.5 points above mean fusion (``min_gain`` 0.5, ``min_gain_se`` 0), to pair with the planned
  standard-error test (``se2``'s values) on the same units.
- ``foldmaps`` (a diagnostic, not a method: not free of leakage): the planned VFN trained on the same
  cases, split and schedule, but with each case's maps from the fold unit that held the case out (the
  ``all`` fusion set's samples) instead of the CCA unit that held out the case and the test fold, so it
  trains on maps of the quality it fuses. Those fold units were trained on the test fold's cases, so this
  is what the VFN would gain without the map shift between its training and test maps, not a result
  cross-validation may claim; ``foldmaps_final``: the same VFN's final checkpoint (what its training
  learned, whatever its validation said; pair it with ``final``).
- ``cases10`` / ``cases32`` / ``cases64`` (a learning curve): the planned VFN trained on only 10 / 32 / 64 of its
  training cases (a seeded draw, ``training_cases`` of :func:`vfnet.training.train_vfn.fit_vfn_unit`), with the
  same validation cases, schedule and iterations; ``cases10_final`` etc.: their final checkpoints (what
  training on that many cases learned, whatever validation said; pair them with ``final``). On Hippocampus
  (about 128 training cases per test fold) it asks whether a VFN trained on as few cases as CHAOST2's
  (10) loses what the full set gains.

Writes ``results/vfn_variants_<Task>.md/.json`` (``_<allocation>`` added for a run with an allocation other
than ``equal``, ``_budget<N>`` for a budget other than 60 minutes, as fusion.py names its files): per variant the overall Dice over the CV cases,
its difference to mean fusion and to the stack (crossval's per-case values) with paired tests,
the iteration each fold's VFN validated best at, training seconds and the median seconds per
case of the fusion itself (every variant timed in this process, one after the other).

Usage: python benchmarks/vfn_variants.py --dataset Task20_CHAOST2 --budget 60 --from-work WORK
(WORK: the work folder of ``python benchmarks/fusion.py --dataset Task20_CHAOST2 --budget 60``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fusion import _overall_dice, use_work_folders
from machine import write_results

# name: (training arguments for train_vfn_unit, or None for the planned VFN; checkpoint)
VARIANTS = {
    "planned": (None, None),
    "final": (None, "final"),
    "stack_prior": ({"prior": "stack", "suffix": "_stackprior"}, None),
    "stack_prior_final": ({"prior": "stack", "suffix": "_stackprior"}, "final"),
    "double": ({"suffix": "_double", "iterations_factor": 2}, None),
    "long8": ({"suffix": "_long8", "iterations_factor": 8}, None),
    "coarse144": ({"suffix": "_coarse144", "schedule": {"input_downsample": [1, 4, 4]}}, None),
    "coarse122": ({"suffix": "_coarse122", "schedule": {"input_downsample": [1, 2, 2]}}, None),
    "viewdrop": ({"suffix": "_viewdrop", "view_dropout": 0.3}, None),
    "lowlr": ({"suffix": "_lowlr", "lr_factor": 1 / 3}, None),
    "decay": ({"suffix": "_decay", "schedule": {"weight_decay": 3.0}}, None),
    "noimage": ({"use_image": False}, None),
    "jitter": ({"suffix": "_jitter", "map_jitter": 0.5}, None),
    "jitter_mild": ({"suffix": "_jittermild", "map_jitter": 0.2}, None),
    "anygain": ({"suffix": "_anygain", "min_gain": 0.0, "min_gain_se": 0.0}, None),
    "se": ({"suffix": "_se", "min_gain": 0.0, "min_gain_se": 1.0}, None),
    "se2": ({"suffix": "_se2", "min_gain": 0.0, "min_gain_se": 2.0}, None),
    "symmetric": ({"suffix": "_symmetric", "view_symmetric": True}, None),
    "symmetric_se2": ({"suffix": "_symmetricse2", "view_symmetric": True, "min_gain": 0.0, "min_gain_se": 2.0}, None),
    "share": ({"suffix": "_share", "min_gain": 0.0, "min_gain_se": 0.0, "validation_cases": 0}, None),
    "guard05": ({"suffix": "_guard05", "min_gain": 0.5, "min_gain_se": 0.0}, None),
    "foldmaps": ({"suffix": "_foldmaps", "maps_from": "all"}, None),
    "foldmaps_final": ({"suffix": "_foldmaps", "maps_from": "all"}, "final"),
    **{f"cases{n}{end}": ({"suffix": f"_cases{n}", "training_cases": n}, checkpoint)
       for n in (10, 32, 64) for end, checkpoint in (("", None), ("_final", "final"))},
}


@contextmanager
def _fusion_set_maps_from(dataset: str, preset: str, unit: str, source_unit: str):
    """While inside, the fusion set of VFN unit ``unit`` holds its own cases' samples from ``source_unit``'s
    fusion set (the same cases, ROIs and labels, other units' maps); the original is put back after."""
    from vfnet import paths
    from vfnet.atomic import read_json, write_json

    preprocessed = paths.preprocessed_dataset(dataset)
    folder = paths.fusion_set_dir(preprocessed, preset, unit)
    source = paths.fusion_set_dir(preprocessed, preset, source_unit)
    kept = folder.with_name(f"{folder.name}_kept")
    if kept.is_dir():  # a run killed inside left the swapped set: the fold's own goes back first
        shutil.rmtree(folder, ignore_errors=True)
        kept.rename(folder)
    manifest, sources = read_json(folder / "manifest.json"), read_json(source / "manifest.json")["cases"]
    folder.rename(kept)
    try:
        folder.mkdir()
        for case in manifest["cases"]:
            if sources[case]["roi"] != manifest["cases"][case]["roi"]:
                raise RuntimeError(f"{case} has another ROI in fusion set {source_unit}")
            shutil.copyfile(source / f"{case}.npz", folder / f"{case}.npz")
            manifest["cases"][case] = sources[case]
        write_json(folder / "manifest.json", manifest)
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        kept.rename(folder)


def _train(dataset: str, preset: str, fold: str, arguments: dict, results: Path) -> tuple[str, float]:
    """Train one variant's VFN of ``fold``; its network folder name and the seconds it took."""
    from vfnet import paths
    from vfnet.atomic import read_json
    from vfnet.pipeline.units import train_vfn_unit

    arguments = dict(arguments)
    maps_from = arguments.pop("maps_from", None)
    factor = arguments.pop("iterations_factor", None)
    lr_factor = arguments.pop("lr_factor", None)
    overrides = dict(arguments.pop("schedule", None) or {})
    planned = read_json(paths.unit_dir(results, preset, "vfn", fold) / "unit.json")["schedule"]
    if factor:
        overrides["iterations"] = int(factor * planned["iterations"])
    if lr_factor:
        overrides["lr"] = lr_factor * planned["lr"]
    start = time.perf_counter()
    with _fusion_set_maps_from(dataset, preset, fold, maps_from) if maps_from else nullcontext():
        out = train_vfn_unit(dataset, fold, preset, device="cpu", quiet=True,
                             schedule_overrides=overrides or None, resume=True, **arguments)
    return out.parent.name, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--from-work", type=Path, required=True, help="the work folder of a finished fusion.py run")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    work = args.from_work.resolve()
    use_work_folders(work)
    preset = f"budget{args.budget:g}"

    from vfnet import paths
    from vfnet.atomic import read_json
    from vfnet.evaluation.crossval import test_folds
    from vfnet.experiment_planning.plans import Plan
    from vfnet.fusion.fusion_set import load_view_maps
    from vfnet.fusion.methods import VfnConfig, fuse
    from vfnet.fusion.models import load_vfn
    from vfnet.measures.stats import paired_tests
    from vfnet.preprocessing.data import PreprocessedDataset
    from vfnet.views import VIEWS

    preprocessed = paths.preprocessed_dataset(args.dataset)
    plan, data = Plan.load(preprocessed), PreprocessedDataset(preprocessed)
    results = paths.results_root() / preprocessed.name
    crossval = json.loads((results / preset / "crossval" / "crossval.json").read_text())
    config = VfnConfig.from_plan(plan, device="cpu")
    trained_with = (work / "trained_with_commit.txt").read_text().strip()
    # the run's allocation names the fusion.py command (and, as there, the results file) when not the default
    allocation = read_json(results / preset / "budget.json").get("allocation", "equal")
    run_options = f" --allocation {allocation}" if allocation != "equal" else ""

    folds = test_folds(plan)
    cases = [case for fold, _, _ in folds for case in data.fold_cases([fold])]
    baseline = {m: [100 * crossval["cases"][c]["dice"][m]["overall"] for c in cases] for m in ("mean", "stack")}
    out = {}
    for name in args.variants:
        arguments, checkpoint = VARIANTS[name]
        dice, best_iterations, trained_gain, train_s, fuse_s = [], {}, {}, {}, []
        use_image = (arguments or {}).get("use_image", True)
        method = "vfn" if use_image else "vfn-noimage"
        for fold, unit, vfn_unit in folds:
            network = "vfn"
            if arguments is not None:
                network, train_s[fold] = _train(args.dataset, preset, vfn_unit, arguments, results)
            folder = paths.unit_dir(results, preset, network, vfn_unit)
            summary = read_json(folder / "summary.json")
            best_iterations[fold] = summary.get("best_iteration")
            # how far the best checkpoint after iteration 0 validated above iteration 0 (kept or not), in points
            if summary.get("best_trained_val_pseudo_dice") is not None and summary.get("start_val_pseudo_dice") is not None:
                trained_gain[fold] = 100 * (summary["best_trained_val_pseudo_dice"] - summary["start_val_pseudo_dice"])
            model = load_vfn(folder, plan, use_image=use_image, checkpoint=checkpoint)
            for case in data.fold_cases([fold]):
                image, label = data.load(case, mmap=False)
                maps = load_view_maps(results, preset, {v: unit for v in VIEWS}, case, preprocessed.name)
                start = time.perf_counter()
                fused = fuse(method, maps, image, model=model, vfn_config=config)
                fuse_s.append(time.perf_counter() - start)
                dice.append(_overall_dice(plan.num_classes, label, fused))
        tests = {m: paired_tests(dice, values) for m, values in baseline.items()}
        out[name] = {"overall": float(np.mean(dice)), "cases": dict(zip(cases, dice)),
                     "best_iteration": best_iterations, "best_trained_validation_gain": trained_gain, "train_s": train_s,
                     "fuse_s_median": float(np.median(fuse_s)),
                     **{f"vs_{m}": {"difference": t["mean_difference"], "wilcoxon_p": t["wilcoxon_p"],
                                    "t_test_p": t["t_test_p"]} for m, t in tests.items()}}
        print(f"{name}: {out[name]['overall']:.2f} %, vs mean {tests['mean']['mean_difference']:+.2f} "
              f"(p {tests['mean']['wilcoxon_p']:.3g})", flush=True)

    invocation = (f"python benchmarks/vfn_variants.py --dataset {args.dataset} --budget {args.budget:g} "
                  f"--from-work WORK" + ("" if args.variants == list(VARIANTS) else " --variants "
                                         + " ".join(args.variants)))
    rows = "\n".join(
        f"| {name} | {r['overall']:.2f} | {r['vs_mean']['difference']:+.2f} | {r['vs_mean']['wilcoxon_p']:.3g} | "
        f"{r['vs_stack']['difference']:+.2f} | {r['vs_stack']['wilcoxon_p']:.3g} | "
        f"{', '.join(str(i) for i in r['best_iteration'].values())} | "
        f"{', '.join(f'{g:+.2f}' for g in r['best_trained_validation_gain'].values())} | "
        f"{(sum(r['train_s'].values()) / 60) if r['train_s'] else 0:.1f} | {r['fuse_s_median']:.2f} |"
        for name, r in out.items())
    body = f"""Command: `{invocation}`, where WORK is the work folder of
`python benchmarks/fusion.py --dataset {args.dataset} --budget {args.budget:g}{run_options}` (its 2D units, fusion sets and
crossval, trained with commit {trained_with}); this command trained only the variants' VFNs, beside the planned ones.

{len(cases)} held-out cases, each fused by its test fold's VFN from the fold units' maps (as crossval does).
Mean fusion {np.mean(baseline['mean']):.2f} %, stack {np.mean(baseline['stack']):.2f} % (crossval's values).

| variant | overall Dice % | − mean | Wilcoxon p | − stack | Wilcoxon p | best iteration per fold | best trained − iteration 0, validation points per fold | training min | fusion s/case (median) |
|---|---|---|---|---|---|---|---|---|---|
{rows}
"""
    name = f"vfn_variants_{args.dataset}" + (f"_{allocation}" if run_options else "") + \
        (f"_budget{args.budget:g}" if args.budget != 60 else "")
    write_results(name, f"VFN variants on {args.dataset}, budget {args.budget:g} min, CPU",
                  body, {"command": invocation, "trained_with_commit": trained_with,
                         "baseline": {m: float(np.mean(v)) for m, v in baseline.items()}, "variants": out})


if __name__ == "__main__":
    main()
