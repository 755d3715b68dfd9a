"""Reproduce the paper's comparison on the shared Hippocampus: each view, majority, mean, STAPLE, VFN, VFN without image
and a 3D U-Net, from one command.

4-fold cross-cross-augmentation (CCA) with the quick preset on CPU: the 30 2D units (4 fold +
6 CCA units per view), the 8 VFNs of the test folds (with and without image), the deployment
VFN ``all`` and the 4 fold units of the 3D U-Net baseline; then vfnet_crossval and one table in
the style of the paper's Table 1 (Dice per label and overall: mean ± std, min, quartiles, max;
parameters and seconds per case of each method; paired p-values of the VFN against majority
voting and against the 3D U-Net), written to ``benchmarks/results/reproduce_hippocampus.md``
(+ .json) with the machine's description. Resumable: rerun the same command to continue;
finished units are kept, interrupted ones continue from their latest checkpoint.

``--preset paper --check-start`` shows that the paper's GPU schedule starts on this machine:
the VFN of test fold 0 (30,000 iterations, batch 16) and the 3D U-Net of fold 0 each run
``--check-iterations`` iterations, and their iterations per second (and GPU memory, on a GPU)
go to ``benchmarks/results/reproduce_paper_check.md``. The VFN check reads the quick preset's
fold-0 fusion set (made first when missing), staged in a separate folder so the real paper
results are never mixed with it.

Usage:
    python benchmarks/reproduce.py [--data ../shared/data/Task04_Hippocampus] [--work DIR]
        # about 72 min on 2 cores: 3D U-Net units of 100 iterations (the quick preset has 250) so the run fits 75 min
    python benchmarks/reproduce.py --work benchmarks/work/fusion   # continue from benchmarks/fusion.py's units
    python benchmarks/reproduce.py --preset paper --check-start [--check-iterations 20]
    python benchmarks/reproduce.py --preset paper --device cuda    # the whole comparison, paper schedule (GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fusion import DEFAULT_DATA, _setup, use_work_folders  # plan and preprocess the shared data as fusion.py does
from machine import write_results

TASK = 4
ROWS = (("axial", "2D axial"), ("coronal", "2D coronal"), ("sagittal", "2D sagittal"),
        ("majority", "majority voting"), ("mean", "mean of the maps"), ("staple", "STAPLE"),
        ("vfn", "VFN"), ("vfn-noimage", "VFN without image"), ("3d", "3D U-Net"))
COMPARISONS = ("vfn vs majority", "vfn vs 3d")
QUICK_3D_ITERATIONS = 100  # 1.6 s per iteration on 2 cores: about 3 min per unit with its held-out prediction


class Timings:
    """Seconds of every finished step in ``<work>/<file>``, so a rerun skips what is done and keeps the clock."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}

    def run(self, key: str, func, *args, **kwargs) -> None:
        if key in self.data:
            return
        start = time.perf_counter()
        func(*args, **kwargs)
        self.record(key, time.perf_counter() - start)

    def record(self, key: str, seconds: float) -> None:
        self.data[key] = seconds
        self.path.write_text(json.dumps(self.data, indent=1))
        print(f"[{self.minutes():6.1f} min] {key}: {seconds:.0f} s", flush=True)

    def minutes(self) -> float:
        return sum(self.data.values()) / 60


def clone_relative(folder: Path) -> Path:
    """``folder`` relative to the clone (else its name alone): results never carry this machine's paths."""
    repo, folder = Path(__file__).resolve().parent.parent, Path(folder).resolve()
    return folder.relative_to(repo) if folder.is_relative_to(repo) else Path(folder.name)


def _timings_file(preset: str) -> str:
    # the quick preset shares benchmarks/fusion.py's file and keys, so --work benchmarks/work/fusion continues it
    return "timings.json" if preset == "quick" else f"timings_{preset}.json"


def _cca_units(folds: list[str], k: str) -> list[str]:
    """The CCA units that left out fold k (they make the fusion set of test fold k)."""
    return [f"cca_{a}_{b}" for a, b in (sorted((k, j), key=folds.index) for j in folds if j != k)]


def train_everything(preset: str, device: str, timings: Timings, iterations_3d: int | None) -> None:
    """Every unit of the comparison, fold by fold so the first VFN is scored early."""
    from vfnet import paths
    from vfnet.experiment_planning.plans import Plan
    from vfnet.pipeline.units import train_2d_unit, train_3d_unit, train_vfn_unit
    from vfnet.views import VIEWS

    folds = Plan.load(paths.preprocessed_dataset(TASK))["fold_names"]
    common = {"device": device, "resume": True, "quiet": True}
    for k in folds:
        for unit in [k] + _cca_units(folds, k):
            for view in VIEWS:
                timings.run(f"2d {view} {unit}", train_2d_unit, TASK, view, unit, preset, **common)
        for use_image in (True, False):
            timings.run(f"vfn {k}{'' if use_image else ' noimage'}", train_vfn_unit, TASK, k, preset,
                        use_image=use_image, **common)
    timings.run("vfn all", train_vfn_unit, TASK, "all", preset, **common)
    overrides = {"iterations": iterations_3d} if iterations_3d else None
    for k in folds:
        timings.run(f"3d {k}", train_3d_unit, TASK, k, preset, schedule_overrides=overrides, **common)


def view_seconds(plan, data, results, preset: str, device: str, num_cases: int) -> dict[str, float]:
    """Median seconds per case of each view's fold-0 network over the first fold-0 cases."""
    import torch

    from vfnet import paths
    from vfnet.inference.predict2d import load_unit_network, predict_volume_2d
    from vfnet.views import VIEWS

    cases = data.fold_cases([plan["fold_names"][0]])[:num_cases]
    out = {}
    for view in VIEWS:
        network = load_unit_network(paths.unit_dir(results, preset, f"2d_{view}", plan["fold_names"][0]), plan,
                                    view, device)
        times = []
        with torch.inference_mode():
            for case in cases:
                image, _ = data.load(case, mmap=False)
                start = time.perf_counter()
                predict_volume_2d(network, image, view, plan["views"][view]["context_slices"], device)
                times.append(time.perf_counter() - start)
        out[view] = statistics.median(times)
    return out


def parameter_counts(plan, results, preset: str) -> dict[str, int]:
    """Parameters of each network: one model per view, the two VFNs, the 3D U-Net (as trained)."""
    from vfnet import paths
    from vfnet.inference.predict2d import load_unit_network
    from vfnet.inference.predict3d import load_unit_network_3d
    from vfnet.networks.vfn import build_vfn, count_parameters
    from vfnet.views import VIEWS

    fold = plan["fold_names"][0]
    counts = {view: count_parameters(load_unit_network(paths.unit_dir(results, preset, f"2d_{view}", fold), plan,
                                                       view)) for view in VIEWS}
    counts["vfn"] = count_parameters(build_vfn(plan, plan.num_channels, plan.num_classes, use_image=True))
    counts["vfn-noimage"] = count_parameters(build_vfn(plan, plan.num_channels, plan.num_classes, use_image=False))
    counts["3d"] = count_parameters(load_unit_network_3d(paths.unit_dir(results, preset, "3d", fold), plan))
    return counts


def method_costs(summary: dict, seconds_views: dict[str, float], params: dict[str, int]) -> dict[str, dict]:
    """Parameters and seconds per case behind each method's prediction of one case (one model per network).

    A fusion method needs the three views first; the 3D U-Net's time is its recorded network time.
    """
    views = list(seconds_views)
    all_views_s, all_views_p = sum(seconds_views.values()), sum(params[v] for v in views)
    costs = {}
    for method, _ in ROWS:
        if method not in summary:
            continue
        if method in views:
            costs[method] = {"parameters": params[method], "seconds": seconds_views[method]}
        elif method == "3d":
            costs[method] = {"parameters": params["3d"], "seconds": summary["3d"]["seconds_per_case"]}
        else:
            extra = params.get(method, 0)
            costs[method] = {"parameters": all_views_p + extra,
                             "seconds": all_views_s + summary[method]["seconds_per_case"]}
    return costs


def table_markdown(table: dict, costs: dict[str, dict]) -> str:
    """Table 1 of the paper for every method, then the paired tests of the VFN."""
    from vfnet.measures.stats import format_pvalue

    labels = list(table["labels"])
    summary = table["summary"]
    lines = ["| method | " + " | ".join(f"{lab} Dice %" for lab in labels)
             + " | overall mean ± std | min | Q1 | median | Q3 | max | parameters | s / case |",
             "|---" * (len(labels) + 9) + "|"]
    for method, title in ROWS:
        if method not in summary:
            lines.append(f"| {title} | " + " | ".join("not run" for _ in range(len(labels) + 8)) + " |")
            continue
        row, overall = summary[method], summary[method]["overall"]
        cells = [f"{100 * row[lab]['mean']:.2f} ± {100 * row[lab]['std']:.2f}" for lab in labels]
        cells.append(f"{100 * overall['mean']:.2f} ± {100 * overall['std']:.2f}")
        cells += [f"{100 * overall[k]:.2f}" for k in ("min", "q1", "median", "q3", "max")]
        cells += [f"{costs[method]['parameters']:,}", f"{costs[method]['seconds']:.3f}"]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines += ["", "Paired tests over the held-out cases:", "",
              "| comparison | label | mean difference (Dice points) | t-test p | Wilcoxon p |", "|---|---|---|---|---|"]
    for comparison in COMPARISONS:
        if comparison not in table["tests"]:
            lines.append(f"| {comparison} | – | not available (method missing) | – | – |")
            continue
        for lab, test in table["tests"][comparison].items():
            lines.append(f"| {comparison} | {lab} | {100 * test['mean_difference']:+.2f} | "
                         f"{format_pvalue(test['t_test_p'])} | {format_pvalue(test['wilcoxon_p'])} |")
    return "\n".join(lines)


def claims_markdown(table: dict, costs: dict[str, dict], seconds_views: dict[str, float]) -> str:
    """The paper's three claims, measured here."""
    summary, tests = table["summary"], table["tests"]
    lines = []
    if "vfn" in summary and "majority" in summary:
        gain = 100 * (summary["vfn"]["overall"]["mean"] - summary["majority"]["overall"]["mean"])
        p = tests.get("vfn vs majority", {}).get("overall", {}).get("t_test_p", float("nan"))
        lines.append(f"- VFN − majority voting, overall Dice: {gain:+.2f} points (paired t-test p = {p:.3g}); "
                     "the paper reports a gain on every organ.")
    if "vfn" in costs and "3d" in costs:
        vfn_only = costs["vfn"]["parameters"] - sum(costs[v]["parameters"] for v in seconds_views)
        lines.append(f"- VFN parameters: {vfn_only:,} = {100 * vfn_only / costs['3d']['parameters']:.1f} % of the "
                     f"3D U-Net's {costs['3d']['parameters']:,} (the paper: about 10 %).")
    if "vfn" in summary:
        views_s = sum(seconds_views.values())
        lines.append(f"- VFN fusion time per case: {summary['vfn']['seconds_per_case']:.3f} s = "
                     f"{100 * summary['vfn']['seconds_per_case'] / views_s:.1f} % of the three views' {views_s:.3f} s "
                     "(the paper: about 10 % extra).")
    return "\n".join(lines)


def reproduce(args) -> Path:
    import torch

    from vfnet import paths
    from vfnet.evaluation.crossval import crossval
    from vfnet.experiment_planning.plans import Plan
    from vfnet.preprocessing.data import PreprocessedDataset

    timings = Timings(args.work / _timings_file(args.preset))
    use_work_folders(args.work)
    timings.run("plan_and_preprocess", _setup, args.work, args.data)
    train_everything(args.preset, args.device, timings, args.iterations_3d)
    start = time.perf_counter()
    table = crossval(TASK, args.preset, device=args.device, quiet=True)
    timings.data.pop("crossval", None)  # always rerun: it reads whatever units exist now
    timings.record("crossval", time.perf_counter() - start)
    preprocessed = paths.preprocessed_dataset(TASK)
    plan, data = Plan.load(preprocessed), PreprocessedDataset(preprocessed)
    results = paths.results_root() / preprocessed.name
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    seconds_views = view_seconds(plan, data, results, args.preset, device, args.timing_cases)
    params = parameter_counts(plan, results, args.preset)
    costs = method_costs(table["summary"], seconds_views, params)
    schedules = {net: plan.schedule(args.preset, net).to_dict() for net in ("2d", "vfn", "3d")}
    if args.iterations_3d:
        schedules["3d"]["iterations"] = args.iterations_3d
    per_kind = {kind: [v for k, v in timings.data.items() if k.startswith(kind + " ")] for kind in ("2d", "vfn", "3d")}
    medians = {kind: statistics.median(v) if v else float("nan") for kind, v in per_kind.items()}
    crossval_md = (results / args.preset / "crossval" / "crossval.md").read_text()
    body = f"""
4-fold cross-cross-augmentation on the {len(data.all_cases)} shared Hippocampus cases (MRI; anterior and posterior
hippocampus), preset `{args.preset}`, device `{device}`, {torch.get_num_threads()} torch threads. Every number below
comes from held-out cases: each test fold is scored by 2D units, a VFN and a 3D U-Net that never saw it.

| units | count | iterations × batch per unit | median wall time per unit (training + held-out prediction) |
|---|---:|---|---:|
| 2D views (4 fold + 6 CCA per view) | {len(per_kind['2d'])} | {schedules['2d']['iterations']} × \
{schedules['2d']['batch_size']} | {medians['2d']:.0f} s |
| VFN (test folds with and without image, and `all`) | {len(per_kind['vfn'])} | \
{schedules['vfn']['iterations']} × {schedules['vfn']['batch_size']} | {medians['vfn']:.0f} s |
| 3D U-Net (fold units) | {len(per_kind['3d'])} | {schedules['3d']['iterations']} × \
{schedules['3d']['batch_size']} | {medians['3d']:.0f} s |

Total wall time (plan, training, crossval): **{timings.minutes():.1f} min** (target on 2 cores: at most 75 min).

## Table 1: every method on the held-out cases

Dice in %. Parameters and seconds per case are those behind one case's prediction with one model per network
(deployment averages the K fold models, K times these): a fusion method runs the three views first (their
times, measured on {args.timing_cases} fold-0 cases, median, plus the fusion's own time from vfnet_crossval);
the 3D U-Net's time is its recorded sliding-window time per held-out case.

{table_markdown(table, costs)}

## The paper's claims, measured

{claims_markdown(table, costs, seconds_views)}

## vfnet_crossval output (with post-processing rows)

{crossval_md.split(chr(10), 2)[2]}
"""
    command = "python benchmarks/reproduce.py" + ("" if args.preset == "quick" else f" --preset {args.preset}")
    command += f" --work {clone_relative(args.work)}"
    if args.iterations_3d:
        command += f" --iterations-3d {args.iterations_3d}"
    body += f"\nCommand: `{command}`\n"
    data_out = {"preset": args.preset, "device": device, "schedules": schedules, "timings_s": timings.data,
                "view_seconds_per_case": seconds_views, "parameters": params, "costs": costs,
                "summary": table["summary"], "tests": table["tests"], "best": table["best"],
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    return write_results("reproduce_hippocampus",
                         f"Reproducing the paper's comparison on Task04 Hippocampus ({args.preset} preset)", body,
                         data_out)


def _stage_check_folder(work: Path, quick_set: Path, preset: str) -> Path:
    """A preprocessed folder of links whose ``preset`` fold-0 fusion set is the quick one, so checks stay apart."""
    from vfnet import paths
    from vfnet.paths import fusion_set_dir

    source = paths.preprocessed_dataset(TASK)
    root = work / f"{preset}_check"
    shutil.rmtree(root / "res", ignore_errors=True)
    staged = root / "pre" / source.name
    staged.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.name != "fusion" and not (staged / entry.name).exists():
            (staged / entry.name).symlink_to(entry.resolve())
    paper_set = fusion_set_dir(staged, preset, "0")
    paper_set.parent.mkdir(parents=True, exist_ok=True)
    if not paper_set.exists():
        paper_set.symlink_to(quick_set.resolve())
    os.environ["vfnet_preprocessed"] = str(root / "pre")
    os.environ["vfnet_results"] = str(root / "res")
    return staged


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def check_start(args) -> Path:
    """Start the preset's (paper's) VFN and 3D U-Net training for a few iterations; report iterations per second."""
    import torch

    from vfnet import paths
    from vfnet.checkpoint import load_checkpoint
    from vfnet.experiment_planning.plans import Plan
    from vfnet.fusion.fusion_set import build_fusion_set
    from vfnet.paths import fusion_set_dir
    from vfnet.pipeline.units import train_2d_unit, train_3d_unit, train_vfn_unit
    from vfnet.views import VIEWS

    timings = Timings(args.work / _timings_file("quick"))
    use_work_folders(args.work)
    timings.run("plan_and_preprocess", _setup, args.work, args.data)
    quick_set = fusion_set_dir(paths.preprocessed_dataset(TASK), "quick", "0")
    if not (quick_set / "manifest.json").is_file():
        print("The check feeds the paper VFN the quick preset's fold-0 fusion set; training its 2D units first.")
        folds = Plan.load(paths.preprocessed_dataset(TASK))["fold_names"]
        for unit in _cca_units(folds, "0"):
            for view in VIEWS:
                timings.run(f"2d {view} {unit}", train_2d_unit, TASK, view, unit, "quick", device=args.device,
                            resume=True, quiet=True)
        build_fusion_set(TASK, "0", "quick", quiet=True)
    plan = Plan.load(_stage_check_folder(args.work, quick_set, args.preset))
    n = args.check_iterations
    # validate once, after the n timed iterations (the 3D U-Net on a single batch; the VFN scores every
    # validation case whole): the history then holds their time
    checks = {}
    for network, func in (("vfn", train_vfn_unit), ("3d", train_3d_unit)):
        overrides = {"val_every": n, **({"val_batches": 1} if network == "3d" else {})}
        schedule = plan.schedule(args.preset, network).to_dict()
        print(f"{args.preset} {network} schedule: {schedule}; running {n} iterations on {args.device}", flush=True)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = func(TASK, "0", args.preset, device=args.device, resume=False, quiet=False,
                   schedule_overrides=overrides, stop_at=n)
        wall = time.perf_counter() - start
        state = load_checkpoint(out / "checkpoint_latest.pth")
        interval = state["history"][-1]
        checks[network] = {"schedule": schedule, "iterations_run": int(state["iteration"]),
                           "seconds": interval["seconds"], "iterations_per_s": n / interval["seconds"],
                           "patches_per_s": n * int(schedule["batch_size"]) / interval["seconds"],
                           "data_wait": interval["data_wait"], "wall_s_with_setup": wall,
                           "train_loss": interval["train_loss"],
                           "gpu_peak_mib": (torch.cuda.max_memory_allocated() / 2**20
                                            if torch.cuda.is_available() else None)}
        print(f"  {network}: {checks[network]['iterations_per_s']:.2f} it/s, "
              f"{checks[network]['patches_per_s']:.1f} patches/s", flush=True)
    rows = "\n".join(
        f"| {net} | {c['schedule']['iterations']:,} × {c['schedule']['batch_size']} | {c['iterations_run']} | "
        f"{c['iterations_per_s']:.3f} | {c['patches_per_s']:.1f} | {100 * c['data_wait']:.1f} % | "
        f"{c['schedule']['iterations'] / c['iterations_per_s'] / 3600:.1f} h | {_mib(c['gpu_peak_mib'])} |"
        for net, c in checks.items())
    body = f"""
The {args.preset} preset's schedules started on `{args.device}` for {n} iterations each (fold 0 of Task04
Hippocampus; the VFN reads the quick preset's fold-0 fusion set, staged under `{clone_relative(args.work) / f'{args.preset}_check'}`).
Iterations per second come from the trainer's own interval time (one validation batch included).

| network | schedule (iterations × batch) | iterations run | it/s | patches/s | data wait | projected full schedule \
| GPU peak MiB |
|---|---|---:|---:|---:|---:|---:|---:|
{rows}

Command: `python benchmarks/reproduce.py --preset {args.preset} --check-start --check-iterations {n} --work {clone_relative(args.work)}`
"""
    return write_results(f"reproduce_{args.preset}_check",
                         f"{args.preset} preset: does training start? (Task04 Hippocampus)", body,
                         {"checks": checks, "device": args.device})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the MSD Task04_Hippocampus folder")
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "work" / "reproduce",
                        help="where raw, preprocessed and results folders go (reuse it to continue)")
    parser.add_argument("--preset", choices=["quick", "default", "paper"], default="quick")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--iterations-3d", type=int, default=None,
                        help=f"iterations per 3D U-Net unit (default: {QUICK_3D_ITERATIONS} with the quick preset, "
                             "so the whole run fits 75 minutes on 2 cores; else the preset's)")
    parser.add_argument("--timing-cases", type=int, default=20, help="cases timed per view")
    parser.add_argument("--check-start", action="store_true",
                        help="only start the preset's VFN and 3D U-Net training for a few iterations")
    parser.add_argument("--check-iterations", type=int, default=20)
    args = parser.parse_args()
    if args.iterations_3d is None and args.preset == "quick":
        args.iterations_3d = QUICK_3D_ITERATIONS
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(args.threads)
    if args.check_start:
        path = check_start(args)
    else:
        if args.preset != "quick" and not torch.cuda.is_available():
            sys.exit(f"the {args.preset} preset is a GPU schedule (days on a CPU); use --check-start to see it start, "
                     "or the quick preset")
        path = reproduce(args)
    print(path.read_text())


if __name__ == "__main__":
    main()
