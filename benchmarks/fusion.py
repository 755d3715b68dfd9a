"""Full 4-fold cross-cross-augmentation on the shared Hippocampus with the quick preset, on CPU.

Trains the 30 2D units (4 fold + 6 CCA units per view) and 8 VFNs (with and without image,
one per test fold), fold by fold so the first VFN is scored early, then runs vfnet_crossval
and measures parameters and inference times. Resumable: rerun to continue.

Usage: python benchmarks/fusion.py [--data ../shared/data/Task04_Hippocampus] [--work benchmarks/work/fusion]
Targets: at most 60 minutes on 2 cores; VFN parameters at most 10% of the planned 3D U-Net's;
VFN inference at most 15% of the three views' time per case; VFN at least 1 Dice point above
majority with p < 0.01.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import write_results

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "Task04_Hippocampus"
PRESET = "quick"


def use_work_folders(work: Path) -> None:
    """Point vfnet's three folders into ``work`` (also on a rerun that skips the set-up)."""
    for var, sub in (("vfnet_raw", "raw"), ("vfnet_preprocessed", "pre"), ("vfnet_results", "res")):
        os.environ[var] = str(work / sub)


def _setup(work: Path, data: Path) -> None:
    use_work_folders(work)
    from dataset_conversion.msd import convert_msd
    from vfnet import paths
    from vfnet.planning import plan_and_preprocess

    if not (paths.raw_root() / "Task04_Hippocampus" / "dataset.json").is_file():
        convert_msd(data, quiet=True)
    plan_and_preprocess(4, num_processes=2, split_mode="cca", quiet=True)


def _inference_times(plan, data, results, cases: list[str]) -> dict:
    """Seconds per case: the three views (one fold model each) and the VFN fusion after them."""
    import numpy as np
    import torch

    from vfnet import paths
    from vfnet.fusion.methods import VfnConfig, fuse
    from vfnet.inference.models import load_vfn
    from vfnet.inference.predict2d import load_unit_network, predict_volume_2d
    from vfnet.views import VIEWS

    networks = {v: load_unit_network(paths.unit_dir(results, PRESET, f"2d_{v}", "0"), plan, v) for v in VIEWS}
    vfn = load_vfn(paths.unit_dir(results, PRESET, "vfn", "0"), plan)
    config = VfnConfig.from_plan(plan, device="cpu")
    views_s, vfn_s, majority_s = [], [], []
    with torch.inference_mode():
        for case in cases:
            image, _ = data.load(case, mmap=False)
            start = time.perf_counter()
            maps = {v: predict_volume_2d(networks[v], image, v, plan["views"][v]["context_slices"], "cpu", 64)
                    for v in VIEWS}
            views_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            fuse("majority", maps)
            majority_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            fuse("vfn", maps, image, model=vfn, vfn_config=config)
            vfn_s.append(time.perf_counter() - start)
    return {"views_s": float(np.median(views_s)), "majority_s": float(np.median(majority_s)),
            "vfn_s": float(np.median(vfn_s)), "cases": len(cases)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "work" / "fusion")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    timings_path = args.work / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}

    def timed(key: str, func, *a, **k):
        if key in timings:
            return
        start = time.perf_counter()
        func(*a, **k)
        timings[key] = time.perf_counter() - start
        timings_path.write_text(json.dumps(timings, indent=1))
        print(f"[{sum(timings.values()) / 60:6.1f} min] {key}: {timings[key]:.0f} s", flush=True)

    import torch

    torch.set_num_threads(2)
    use_work_folders(args.work)
    timed("plan_and_preprocess", _setup, args.work, args.data)
    from vfnet import paths
    from vfnet.data import PreprocessedDataset
    from vfnet.fusion.crossval import crossval
    from vfnet.networks.unet3d import build_unet3d
    from vfnet.networks.vfn import build_vfn, count_parameters
    from vfnet.plans import Plan
    from vfnet.training.train2d import train_2d_unit
    from vfnet.training.train_vfn import train_vfn_unit
    from vfnet.views import VIEWS

    preprocessed = paths.preprocessed_dataset(4)
    plan, data = Plan.load(preprocessed), PreprocessedDataset(preprocessed)
    results = paths.results_root() / preprocessed.name
    folds = plan["fold_names"]
    for k in folds:
        needed = [k] + [f"cca_{a}_{b}" for a, b in (sorted((k, j), key=folds.index) for j in folds if j != k)]
        for unit in needed:
            for view in VIEWS:
                timed(f"2d {view} {unit}", train_2d_unit, 4, view, unit, PRESET, device="cpu", resume=True,
                      quiet=True)
        for use_image in (True, False):
            timed(f"vfn {k}{'' if use_image else ' noimage'}", train_vfn_unit, 4, k, PRESET, use_image=use_image,
                  device="cpu", resume=True, quiet=True)
    start = time.perf_counter()
    table = crossval(4, PRESET, device="cpu", quiet=True)
    timings["crossval"] = time.perf_counter() - start
    timings_path.write_text(json.dumps(timings, indent=1))
    vfn_params = count_parameters(build_vfn(plan, plan.num_channels, plan.num_classes))
    unet_params = count_parameters(build_unet3d(plan, plan.num_channels, plan.num_classes))
    speed = _inference_times(plan, data, results, data.fold_cases(["0"])[:20])
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # the work folder's timings may also hold reproduce.py's steps (3D units, VFN 'all'): count only this run's
    vfn_keys = {f"vfn {k}{suffix}" for k in folds for suffix in ("", " noimage")}
    units_2d = [v for k, v in timings.items() if k.startswith("2d ")]
    units_vfn = [v for k, v in timings.items() if k in vfn_keys]
    total_min = (timings["plan_and_preprocess"] + sum(units_2d) + sum(units_vfn) + timings["crossval"]) / 60
    summary = table["summary"]
    vfn, majority = summary["vfn"]["overall"], summary["majority"]["overall"]
    test = table["tests"]["vfn vs majority"]["overall"]
    crossval_md = (results / PRESET / "crossval" / "crossval.md").read_text()
    body = f"""
4-fold cross-cross-augmentation on the {len(data.all_cases)} shared Hippocampus cases (MRI, 3 classes), preset
`{PRESET}`, CPU only. {len(units_2d)} 2D units (median {statistics.median(units_2d):.0f} s each, with held-out
prediction) and {len(units_vfn)} VFN units (median {statistics.median(units_vfn):.0f} s each, building its fusion set when missing).

| measure | value | target |
|---|---|---|
| total wall time (plan, 2D, VFN, crossval) | {total_min:.1f} min | at most 60 min |
| VFN parameters | {vfn_params:,} | |
| planned 3D U-Net parameters | {unet_params:,} | |
| VFN / 3D U-Net parameters | {100 * vfn_params / unet_params:.1f} % | at most 10 % |
| three views, seconds per case (one model each, {speed['cases']} cases, median) | {speed['views_s']:.3f} s | |
| VFN fusion, seconds per case (after the views) | {speed['vfn_s']:.3f} s | |
| VFN time / views time | {100 * speed['vfn_s'] / speed['views_s']:.1f} % | at most 15 % |
| majority voting, seconds per case | {speed['majority_s']:.4f} s | |
| VFN − majority, mean Dice (overall) | {100 * (vfn['mean'] - majority['mean']):+.2f} points | at least +1 |
| paired t-test / Wilcoxon p (overall) | {test['t_test_p']:.3g} / {test['wilcoxon_p']:.3g} | below 0.01 |
| peak memory of this process | {peak_mib:.0f} MiB | |

## Table 1 (cross-validation)

{crossval_md.split(chr(10), 2)[2]}
"""
    path = write_results("fusion", "Fusion on Task04 Hippocampus: 4-fold CCA, quick preset, CPU", body,
                         {"timings_s": timings, "vfn_parameters": vfn_params, "unet3d_parameters": unet_params,
                          "inference": speed, "summary": summary, "tests": table["tests"], "best": table["best"]})
    print(path.read_text())


if __name__ == "__main__":
    main()
