"""Parallel speed-ups of issue 15 on this machine: train_all and predict on 2 Dask workers vs one process.

Training: ``vfnet_train_all --preset quick`` on the Hippocampus (CCA plan) first with one process
and 2 torch threads, then, in a second results folder, with ``--workers 2`` (one thread each). The
second run starts from the first run's finished ``budget.json`` (every unit's iterations as it
trained, each with a measured time), so it trains the same units with the same schedules and
re-plans nothing. Both end with crossval; its best mean Dice is recorded for each.

Prediction: ``vfnet_predict`` of 60 Hippocampus images with the first run's models, one process
vs ``--workers 2``.

Writes results/scale.md and scale.json (``train_speedup``, ``predict_speedup``). ``--smoke`` runs the
same steps on a tiny synthetic dataset with a frozen budget of a few iterations per unit, into a
temporary folder, to prove the script works; its numbers are not results and are never written to benchmarks/results.

Usage: python benchmarks/scale.py [--data ../shared/data/Task04_Hippocampus] [--cases 60]
       python benchmarks/scale.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import RESULTS, describe_machine, machine_markdown

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TARGETS = {"train_speedup": 1.3, "predict_speedup": 1.5}


def _env(work: Path, results: str) -> dict:
    env = dict(os.environ)
    env.update({"vfnet_raw": str(work / "raw"), "vfnet_preprocessed": str(work / "pre"),
                "vfnet_results": str(work / results)})
    return env


def _busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat; None elsewhere)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


CORES_BUSY: dict[str, float] = {}  # log name -> cores the machine kept busy on average during that command


def _run(command: list[str], env: dict, log: Path) -> float:
    print("$ " + " ".join([Path(command[0]).name, *command[1:]]), flush=True)
    busy, start = _busy_cpu_seconds(), time.perf_counter()
    with open(log, "w") as handle:
        subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, check=True)
    seconds, busy_after = time.perf_counter() - start, _busy_cpu_seconds()
    if busy is not None and busy_after is not None:
        CORES_BUSY[log.stem] = round((busy_after - busy) / seconds, 2)
    return seconds


def _bound(name: str) -> float | None:
    """All cores over those one process kept busy: the speed-up of the same CPU work with no core idle (workers
    that do less CPU work, e.g. one torch thread each, can pass it)."""
    busy = CORES_BUSY.get(name)
    return round((os.cpu_count() or 1) / busy, 2) if busy else None


def _best_dice(results: Path, preset: str) -> float | None:
    path = next(results.glob(f"*/{preset}/crossval/crossval.json"), None)
    return json.loads(path.read_text())["best"]["mean_dice"] if path else None


def prepare(args: argparse.Namespace, work: Path, bin_dir: Path) -> tuple[str, Path]:
    """(dataset name, folder of raw images) after conversion, planning and preprocessing."""
    env = _env(work, "res1")
    if args.smoke:
        from vfnet.demo_data import make_demo_dataset

        raw = make_demo_dataset(work / "raw", num_train=9, num_test=0, shape=(16, 24, 20))
        _run([str(bin_dir / "vfnet_plan_and_preprocess"), "-d", raw.name, "--split", "holdout", "-np", "1"], env,
             work / "plan.log")
        return raw.name, raw / "imagesTr"
    data = args.data or SHARED / "Task04_Hippocampus"
    _run([str(bin_dir / "vfnet_convert_msd"), "-i", str(data)], env, work / "convert.log")
    name = next((work / "raw").iterdir()).name
    _run([str(bin_dir / "vfnet_plan_and_preprocess"), "-d", name, "--split", "cca"], env, work / "plan.log")
    return name, work / "raw" / name / "imagesTr"


SMOKE_ITERATIONS = 20


def freeze_smoke_budget(work: Path, name: str, preset: str) -> None:
    """--smoke only: a budget.json calibrated here, every unit cut to a few iterations and marked measured,
    so neither run calibrates nor re-plans (a budget small enough for a smoke run would be refused)."""
    import torch

    from vfnet.atomic import read_json, write_json
    from vfnet.experiment_planning.plans import Plan
    from vfnet.training.budget import budget_path, calibrate, plan_budget

    preprocessed = work / "pre" / name
    plan = Plan.load(preprocessed)
    body = plan_budget(plan, read_json(preprocessed / "splits.json"), 600.0, calibrate(plan, torch.device("cpu")))
    for unit in body["units"].values():
        unit.update({"iterations": SMOKE_ITERATIONS, "planned_s": 1.0, "actual_s": 1.0})
    body["budget_min"] = float(preset.removeprefix("budget"))
    write_json(budget_path(work / "res1" / name, preset), body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="Task04_Hippocampus in MSD layout")
    parser.add_argument("--cases", type=int, default=60, help="images to predict")
    parser.add_argument("--preset", default="quick", help="budgeted preset of both training runs")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default benchmarks/work/scale)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny synthetic dataset and budget, temporary folders, no results written")
    args = parser.parse_args()
    if args.smoke:
        args.preset, args.cases = "budget6", 6
    work = Path(tempfile.mkdtemp(prefix="vfnet_scale_smoke_")) if args.smoke else \
        (args.work or Path(__file__).resolve().parent / "work" / "scale").resolve()
    if work.exists() and not args.smoke:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    name, images = prepare(args, work, bin_dir)

    if args.smoke:
        freeze_smoke_budget(work, name, args.preset)
    train = [str(bin_dir / "vfnet_train_all"), "-d", name, "--preset", args.preset, "--device", "cpu", "-q"]
    one_s = _run([*train, "--num-threads", "2"], _env(work, "res1"), work / "train_one.log")
    budget = work / "res1" / name / args.preset / "budget.json"
    second = work / "res2" / name / args.preset
    second.mkdir(parents=True)
    shutil.copy(budget, second / "budget.json")  # same units, same iterations, nothing left to re-plan
    # fusion sets live beside the preprocessed arrays: the second run builds its own from its own 2D maps
    shutil.rmtree(work / "pre" / name / "fusion" / args.preset, ignore_errors=True)
    two_s = _run([*train, "--workers", "2"], _env(work, "res2"), work / "train_two.log")

    inputs = work / "predict_in"
    inputs.mkdir()
    for path in sorted(images.glob("*_0000.nii.gz"))[:args.cases]:
        shutil.copyfile(path, inputs / path.name)
    predict = [str(bin_dir / "vfnet_predict"), "-i", str(inputs), "-d", name, "--preset", args.preset,
               "--device", "cpu", "-q"]
    predict_one_s = _run([*predict, "-o", str(work / "pred_one")], _env(work, "res1"), work / "predict_one.log")
    predict_two_s = _run([*predict, "-o", str(work / "pred_two"), "--workers", "2"], _env(work, "res1"),
                         work / "predict_two.log")

    result = {
        "invocation": " ".join(["python", "benchmarks/scale.py", *sys.argv[1:]]),
        "dataset": name, "preset": args.preset, "cases_predicted": len(list(inputs.iterdir())),
        "train_one_worker_s": round(one_s, 1), "train_two_workers_s": round(two_s, 1),
        "train_speedup": round(one_s / two_s, 2),
        "crossval_best_dice_one": _best_dice(work / "res1", args.preset),
        "crossval_best_dice_two": _best_dice(work / "res2", args.preset),
        "predict_one_worker_s": round(predict_one_s, 1), "predict_two_workers_s": round(predict_two_s, 1),
        "predict_speedup": round(predict_one_s / predict_two_s, 2), "targets": TARGETS,
        # the machine's busy cores on average during each command (/proc/stat), and the speed-up bound it sets
        "cores_busy": dict(CORES_BUSY),
        "train_speedup_bound": _bound("train_one"), "predict_speedup_bound": _bound("predict_one"),
        "commands": {"train_one": " ".join([*train[1:], "--num-threads", "2"]),
                     "train_two": " ".join([*train[1:], "--workers", "2"]),
                     # the work folder is this machine's path: recorded as WORK
                     "predict_two": " ".join([*predict[1:], "--workers", "2"]).replace(str(work), "WORK")},
        "smoke": args.smoke,
    }
    body = "\n".join([
        f"`{result['invocation']}`", "",
        ("| step | one process (2 threads) | 2 Dask workers (1 thread each) | speed-up | target "
         "| cores busy (one process / 2 workers) | bound |"),
        "|---|---|---|---|---|---|---|",
        (f"| vfnet_train_all --preset {args.preset} (same units and iterations) | {result['train_one_worker_s']} s | "
         f"{result['train_two_workers_s']} s | {result['train_speedup']}× | ≥ {TARGETS['train_speedup']}× | "
         f"{CORES_BUSY.get('train_one')} / {CORES_BUSY.get('train_two')} | {result['train_speedup_bound']}× |"),
        (f"| vfnet_predict, {result['cases_predicted']} images | {result['predict_one_worker_s']} s | "
         f"{result['predict_two_workers_s']} s | {result['predict_speedup']}× | ≥ {TARGETS['predict_speedup']}× | "
         f"{CORES_BUSY.get('predict_one')} / {CORES_BUSY.get('predict_two')} | {result['predict_speedup_bound']}× |"),
        "", (f"Cores busy: the machine's busy CPU time during the command (/proc/stat) over its wall time, of "
             f"{os.cpu_count()}. Bound: {os.cpu_count()} over the one-process run's busy cores, the speed-up two "
             "workers would reach doing the same CPU work with no core idle."),
        "", (f"Crossval best mean Dice: {result['crossval_best_dice_one']} (one process), "
            f"{result['crossval_best_dice_two']} (2 workers).")])
    machine = describe_machine()
    out = work if args.smoke else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps({"machine": machine, **result}, indent=2) + "\n")
    (out / "scale.md").write_text(f"# Parallel speed-ups: {name}\n\n{body}\n\n## Machine\n{machine_markdown(machine)}\n")
    print((out / "scale.md").read_text())
    if args.smoke:
        print(f"smoke run: results stay in {work}, not in benchmarks/results")


if __name__ == "__main__":
    main()
