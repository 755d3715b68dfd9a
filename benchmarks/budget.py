"""A whole budgeted run from a fresh work folder: ``vfnet_train_all --budget N`` on a shared MSD task.

Converts and plans the dataset (4-fold CCA), then times one call of the installed command
``vfnet_train_all -d <Task> --budget N`` (calibration, every 2D unit, fusion sets, VFNs and
crossval) and writes ``results/budget_<Task>.md`` and ``.json``: the calibration, planned and
actual minutes per stage, and the cross-validation table (Dice per label and overall).

Usage: python benchmarks/budget.py --dataset Task04_Hippocampus --budget 60 [--allocation equal]
       [--work benchmarks/work/budget_Task04_Hippocampus]
Targets (2 CPU cores, alone): wall time of train_all within ±10 % of the budget; Hippocampus best
fusion ≥ 86.5 % Dice; Task20_CHAOST2 mean over organs ≥ 80 %.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import current_commit, write_results

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _stage_minutes(budget: dict) -> dict:
    """Planned and measured minutes per network (2d_<view>, vfn), calibration and crossval."""
    stages: dict[str, dict] = {"calibration": {"planned_min": budget["calibration"]["seconds"] / 60,
                                               "actual_min": budget["calibration"]["seconds"] / 60}}
    for key, unit in budget["units"].items():
        network = key.split("/", 1)[0]
        entry = stages.setdefault(network, {"planned_min": 0.0, "actual_min": 0.0, "units": 0, "iterations": []})
        entry["planned_min"] += unit["planned_s"] / 60
        entry["actual_min"] += unit.get("actual_s", 0.0) / 60
        entry["units"] += 1
        entry["iterations"].append(unit["iterations"])
    stages["crossval"] = {"planned_min": budget["crossval_s"] / 60,
                          "actual_min": budget.get("crossval_actual_s", 0.0) / 60}
    return stages


def budget_arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="a task folder name under ../shared/data")
    parser.add_argument("--budget", type=float, default=60.0, help="wall minutes for vfnet_train_all")
    parser.add_argument("--allocation", default=None, help="equal (default) or epochs")
    parser.add_argument("--data", type=Path, default=None, help="the MSD task folder (default: ../shared/data/<dataset>)")
    parser.add_argument("--work", type=Path, default=None, help="a fresh work folder (removed first)")
    parser.add_argument("--vfn-downsample", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                        help="set the VFN's input_downsample (and budget_downsample 'plan') in plans.json after "
                             "planning, as a user would edit it (default: the views' factor)")
    parser.add_argument("--from-work", type=Path, default=None,
                        help="do not train: write the results of a finished run whose work folder this is (its "
                             "train_all.log, budget.json and units); the results file says so")
    return parser


def finished_run(args: argparse.Namespace) -> dict:
    """What :func:`run_budgeted` returns, for a run that trained in ``args.from_work`` before.

    The wall time of vfnet_train_all is read from its log file: created when the command
    started (birth time) and last written when it ended.
    """
    work = args.from_work.resolve()
    log = work / "train_all.log"
    started = subprocess.run(["stat", "-c", "%W", str(log)], capture_output=True, text=True, check=True).stdout
    prepare = work / "convert.log"
    wall_s = log.stat().st_mtime - float(started)
    prepare_s = float(started) - float(subprocess.run(["stat", "-c", "%W", str(prepare)], capture_output=True,
                                                       text=True, check=True).stdout)
    for var, sub in (("vfnet_raw", "raw"), ("vfnet_preprocessed", "pre"), ("vfnet_results", "res")):
        os.environ[var] = str(work / sub)
    results = next((work / "res").iterdir())
    preset = f"budget{args.budget:g}"
    trained = (work / "trained_with_commit.txt").read_text().strip() if (work / "trained_with_commit.txt").is_file() \
        else "unknown"
    return {"work": work, "results": results, "preset": preset, "prepare_s": prepare_s, "wall_s": wall_s,
            "command": [str(Path(sys.executable).parent / "vfnet_train_all"), "-d", args.dataset, "--budget",
                        f"{args.budget:g}"] + (["--allocation", args.allocation] if args.allocation else []),
            "invocation": " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", "--dataset", args.dataset,
                                    "--budget", f"{args.budget:g}", *_options(args), "--from-work", "WORK"]),
            "resumed": f"Written afterwards with `--from-work` from the work folder of a run that trained with commit "
                       f"{trained}; the wall time comes from the timestamps of that run's train_all.log. "}


def run_budgeted(args: argparse.Namespace, name: str) -> dict:
    """Convert, plan and time ``vfnet_train_all --budget`` in a fresh work folder; what the later steps need."""
    data = args.data or SHARED / args.dataset
    work = (args.work or Path(__file__).resolve().parent / "work" / name).resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    env = dict(os.environ)
    for var, sub in (("vfnet_raw", "raw"), ("vfnet_preprocessed", "pre"), ("vfnet_results", "res")):
        env[var] = os.environ[var] = str(work / sub)
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "vfnet_train_all"), "-d", args.dataset, "--budget", f"{args.budget:g}"]
    if args.allocation:
        command += ["--allocation", args.allocation]

    def run(cmd: list[str], log: Path) -> float:
        print("$ " + " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd)), flush=True)
        start = time.perf_counter()
        with open(log, "w") as handle:
            subprocess.run(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, check=True)
        return time.perf_counter() - start

    prepare_s = run([str(bin_dir / "vfnet_convert_msd"), "-i", str(data)], work / "convert.log")
    prepare_s += run([str(bin_dir / "vfnet_plan_and_preprocess"), "-d", args.dataset, "--split", "cca"],
                     work / "plan.log")
    if args.vfn_downsample:
        plans = next((work / "pre").iterdir()) / "plans.json"
        body = json.loads(plans.read_text())
        body["vfn"]["input_downsample"] = list(args.vfn_downsample)
        body["vfn"]["budget_downsample"] = "plan"  # else the budget sets the views' factor instead
        plans.write_text(json.dumps(body, indent=2) + "\n")
    (work / "trained_with_commit.txt").write_text(current_commit() + "\n")
    wall_s = run(command, work / "train_all.log")
    results = next((work / "res").iterdir())
    preset = f"budget{args.budget:g}"
    return {"work": work, "results": results, "preset": preset, "prepare_s": prepare_s, "wall_s": wall_s,
            "command": command, "resumed": "",
            "invocation": " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", "--dataset", args.dataset,
                                    "--budget", f"{args.budget:g}", *_options(args)])}


def _options(args: argparse.Namespace) -> list[str]:
    """The optional arguments of a run, as its invocation records them."""
    return ((["--allocation", args.allocation] if args.allocation else [])
            + (["--vfn-downsample", *map(str, args.vfn_downsample)] if args.vfn_downsample else []))


def write_budget_results(args: argparse.Namespace, run: dict, name: str) -> Path:
    """``results/<name>.md`` and ``.json`` of a budgeted run."""
    from vfnet.training.budget import BATCH

    results, preset, prepare_s, wall_s, command = (run["results"], run["preset"], run["prepare_s"], run["wall_s"],
                                                   run["command"])
    budget = json.loads((results / preset / "budget.json").read_text())
    crossval = json.loads((results / preset / "crossval" / "crossval.json").read_text())
    crossval_md = (results / preset / "crossval" / "crossval.md").read_text()
    best = crossval["best"]
    best_key = best["method"] + ("+pp" if best["postprocess"] else "")
    best_key = best_key if best_key in crossval["summary"] else next(
        m for m in crossval["summary"] if m.split("+")[0] == best["method"] and ("+" in m) == best["postprocess"])
    per_label = {label: 100 * stats["mean"] for label, stats in crossval["summary"][best_key].items()
                 if isinstance(stats, dict) and label != "overall"}
    stages = _stage_minutes(budget)
    rows = "\n".join(
        f"| {stage} | {s.get('units', '')} | "
        f"{(str(min(s['iterations'])) + '-' + str(max(s['iterations']))) if s.get('iterations') else ''} | "
        f"{s['planned_min']:.1f} | {s['actual_min']:.1f} |" for stage, s in stages.items())
    views = "\n".join(f"| {view} | {v['input_downsample']} | {v['patch_size']} | {v['features']} | "
                      f"{v['step_s']:.3f} | {1000 * v['slice_s']:.1f} |" for view, v in budget["views"].items())
    per_method = "\n".join(f"| {m} | {100 * s['overall']['mean']:.2f} |" for m, s in crossval["summary"].items())
    body = f"""
Command: `{run['invocation']}`
{run['resumed']}

Fresh work folder; conversion and planning ({prepare_s:.0f} s) are outside the budget. The timed call:
`{' '.join([Path(command[0]).name] + command[1:])}`

| measure | value | target |
|---|---|---|
| budget | {args.budget:g} min | |
| wall time of vfnet_train_all | {wall_s / 60:.1f} min | {0.9 * args.budget:.0f}-{1.1 * args.budget:.0f} min |
| best fusion method (crossval) | {best_key} | |
| its mean Dice over labels | {100 * best['mean_dice']:.2f} % | |
| re-plans after measured units | {budget.get('replanned', 0)} (measured / planned time per network: \
{', '.join(f'{k} {v:.2f}' for k, v in budget.get('speed', {}).items())}) | |

## Calibration ({budget['calibration']['seconds']:.0f} s on {budget['calibration']['device']}, \
{budget['calibration']['threads']} threads) and the chosen view settings

| view | downsample (z, y, x) | patch | widths | s per step (batch {BATCH['2d']}) | ms per slice |
|---|---|---|---|---|---|
{views}

VFN: {budget['calibration']['vfn']['step_s']:.3f} s per step (batch {BATCH['vfn']}), allocation `{budget['allocation']}`.

## Minutes per stage

| stage | units | iterations | planned min (calibrated speed) | actual min |
|---|---|---|---|---|
{rows}

## Cross-validation (mean Dice %, overall)

| method | Dice |
|---|---|
{per_method}

{crossval_md.split(chr(10), 2)[2]}
"""
    path = write_results(name, f"Budgeted run: {args.dataset}, {args.budget:g} minutes", body, {
        "command": run["invocation"], "resumed": run["resumed"] or None,
        "budget_min": args.budget, "wall_min": wall_s / 60, "prepare_s": prepare_s,
        "best_method": best_key, "best_dice": 100 * best["mean_dice"], "per_label": per_label,
        "methods": {m: {"overall": 100 * s["overall"]["mean"],
                        "per_label": {k: 100 * v["mean"] for k, v in s.items() if isinstance(v, dict)}}
                    for m, s in crossval["summary"].items()},
        "stages": stages, "calibration": budget["calibration"], "views": budget["views"],
        "allocation": budget["allocation"]})
    return path


def results_name(kind: str, args: argparse.Namespace) -> str:
    """``<kind>_<Task>``, with ``_<allocation>`` for an allocation other than the default and ``_budget<N>``
    for a budget other than the issue's 60 minutes, so runs that differ in either are kept side by side."""
    suffix = f"_{args.allocation}" if args.allocation not in (None, "equal") else ""
    if args.budget != 60:
        suffix += f"_budget{args.budget:g}"
    if args.vfn_downsample:
        suffix += "_vfn" + "".join(map(str, args.vfn_downsample))
    return f"{kind}_{args.dataset}{suffix}"


def main() -> None:
    args = budget_arguments(__doc__).parse_args()
    name = results_name("budget", args)
    run = finished_run(args) if args.from_work else run_budgeted(args, name)
    print(write_budget_results(args, run, name).read_text())


if __name__ == "__main__":
    main()
