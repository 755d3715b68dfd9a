"""2D view networks on the shared Hippocampus: speed, data wait, memory and fold-0 Dice per view.

Usage:
    vfnet_preprocessed=/tmp/h2d/pre python benchmarks/train_2d.py [-d 4] [--minutes 5] [--threads 2]

Needs the dataset preprocessed (vfnet_convert_msd + vfnet_plan_and_preprocess). Per view:
a short calibration run measures seconds per iteration with the preset's batch size and
workers (default: the quick preset's); then fold unit 0 trains for as many iterations as fit into ``--minutes`` (poly LR
over that many iterations) and predicts fold 0 with its final checkpoint. Reported: slices
per second (training steps, validation included), the share of step time spent waiting
for batches, peak resident memory (this process and its workers, ``resource.getrusage``),
and the view's own fold-0 Dice. Models go to a temporary results folder unless
``--results`` names one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import write_results

from vfnet import paths
from vfnet.experiment_planning.plans import Plan
from vfnet.experiment_planning.schema import Schedule
from vfnet.networks.unet2d import build_unet2d
from vfnet.pipeline.units import train_2d_unit
from vfnet.preprocessing.data import PreprocessedDataset
from vfnet.training.data2d import close_loader, fixed_batches, load_view_volumes, make_train_loader
from vfnet.training.losses import DiceCELoss
from vfnet.training.trainer import Trainer, TrainingConfig, load_checkpoint_weights
from vfnet.training.units import split_validation
from vfnet.views import VIEWS

CALIBRATION_ITERATIONS = 30
WARMUP_ITERATIONS = 10  # the first interval includes worker start-up and allocator warm-up, so it is left out


def peak_memory_mib() -> float:
    """Peak RSS of this process plus the largest finished child (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round((own + children) / 1024, 1)


def seconds_per_iteration(folder: Path, view: str, schedule: Schedule, threads: int, out: Path) -> float:
    """Seconds per training iteration (with the preset's loader and workers) over a short run."""
    plan, data = Plan.load(folder), PreprocessedDataset(folder)
    spec = plan["views"][view]
    train, val = split_validation(data.fold_cases(plan.unit("2d", "0")["train_folds"]), "0", plan.training)
    loader = make_train_loader(load_view_volumes(data, train, view), spec["patch_size"], spec["context_slices"],
                               schedule.batch_size, schedule.num_workers)
    val_batches = fixed_batches(load_view_volumes(data, val, view), spec["patch_size"], spec["context_slices"],
                                schedule.batch_size, 1)
    config = TrainingConfig.from_schedule(schedule, iterations=WARMUP_ITERATIONS + CALIBRATION_ITERATIONS,
                                          val_every=WARMUP_ITERATIONS)
    trainer = Trainer(build_unet2d(plan, view), DiceCELoss(), loader, val_batches, config, out, device="cpu",
                      num_threads=threads, quiet=True)
    try:
        trainer.fit()
    finally:
        close_loader(loader)
    return sum(h["seconds"] for h in trainer.history[1:]) / CALIBRATION_ITERATIONS


def benchmark_view(dataset: str, view: str, preset: str, minutes: float, threads: int, scratch: Path) -> dict:
    folder = paths.preprocessed_dataset(dataset)
    schedule = Plan.load(folder).schedule(preset, "2d")
    per_iteration = seconds_per_iteration(folder, view, schedule, threads, scratch / f"calibrate_{view}")
    iterations = max(2, int(minutes * 60 / per_iteration))
    overrides = {"iterations": iterations, "val_every": max(1, iterations // 5)}
    start = time.perf_counter()
    out = train_2d_unit(dataset, view, "0", preset=preset, device="cpu", num_threads=threads, quiet=True,
                        schedule_overrides=overrides)
    wall = time.perf_counter() - start
    history = load_checkpoint_weights(out / "checkpoint_final.pth")["history"]
    train_seconds = sum(h["seconds"] for h in history)
    summary = json.loads((out / "summary.json").read_text())
    return {
        "view": view, "iterations": iterations, "batch_size": schedule.batch_size,
        "num_workers": schedule.num_workers, "calibration_s_per_it": round(per_iteration, 3),
        "slices_per_s": round(iterations * schedule.batch_size / train_seconds, 1),
        "data_wait_share": round(sum(h["data_wait"] * h["seconds"] for h in history) / train_seconds, 4),
        "train_s": round(train_seconds, 1), "total_s": round(wall, 1), "peak_rss_mib": peak_memory_mib(),
        "fold0_dice": round(summary["mean_dice"], 4),
        "fold0_dice_per_class": {k: round(v, 4) for k, v in summary["mean_per_class"].items()},
        "fold0_cases": summary["num_cases"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", default="4", help="preprocessed dataset (default 4)")
    parser.add_argument("--preprocessed", default=None, help="vfnet_preprocessed folder (default: environment)")
    parser.add_argument("--results", default=None, help="vfnet_results folder for the models (default: temporary)")
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget per view (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--preset", default="quick",
                        help="schedule whose batch size, optimizer, lr and workers to use (default quick: AdamW, "
                             "which learns fastest in minutes-long runs)")
    parser.add_argument("--views", nargs="+", default=list(VIEWS), choices=VIEWS)
    args = parser.parse_args()
    if args.preprocessed:
        os.environ["vfnet_preprocessed"] = args.preprocessed
    scratch = Path(tempfile.mkdtemp(prefix="vfnet_bench_2d_"))
    os.environ["vfnet_results"] = args.results or str(scratch / "results")
    name = paths.preprocessed_dataset(args.dataset).name
    rows = []
    for view in args.views:
        rows.append(benchmark_view(args.dataset, view, args.preset, args.minutes, args.threads, scratch))
        print(json.dumps(rows[-1]), flush=True)
    table = [("| view | iterations × batch | workers | slices/s | data wait | peak RSS MiB | train s | total s "
             "(with fold-0 prediction) | fold-0 Dice (mean) | per class |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        per_class = ", ".join(f"{k} {v:.3f}" for k, v in r["fold0_dice_per_class"].items())
        table.append(f"| {r['view']} | {r['iterations']} × {r['batch_size']} | {r['num_workers']} | "
                     f"{r['slices_per_s']} | {100 * r['data_wait_share']:.1f}% | {r['peak_rss_mib']} | {r['train_s']} "
                     f"| {r['total_s']} | {r['fold0_dice']:.3f} | {per_class} |")
    body = (f"Fold unit 0 of each view on {name}, CPU, {args.threads} torch thread(s), preset "
            f"'{args.preset}' batch size, optimizer and workers, {args.minutes} training minutes per view (iterations sized "
            f"from a {CALIBRATION_ITERATIONS}-iteration calibration run, poly LR over them). Dice: the view alone "
            "on the fold-0 cases, argmax of its final checkpoint's softmax, mean over foreground classes. "
            "Data wait: share of training-step time spent in `next(loader)`.\n\n" + "\n".join(table) +
            f"\n\nCommand: `python benchmarks/train_2d.py --minutes {args.minutes} --threads {args.threads}`")
    path = write_results("train_2d", "2D view networks: speed and fold-0 Dice", body,
                         {"settings": vars(args), "torch_threads": torch.get_num_threads(), "views": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
