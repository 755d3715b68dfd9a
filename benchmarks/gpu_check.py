"""The CUDA path measured: a 2D unit per view and the VFN with mixed precision on a synthetic dataset.

Run by ``benchmarks/gpu_check.sh`` (which installs what a bare GPU machine lacks and runs the
CUDA-marked tests first). Writes ``gpu.md`` and ``gpu.json`` into ``--out``: per unit the
iterations per second and the peak GPU memory (``torch.cuda.max_memory_allocated``), and the
paper schedule's VFN time projected from a timed loop of VFN training steps (30,000 iterations ×
batch 16 at 64³, mixed precision) and from the whole VFN unit (its data loading included).

``--allow-cpu`` runs a few iterations at toy sizes on the CPU to prove the script works end to
end; it never writes into benchmarks/results.

Example:
    python benchmarks/gpu_check.py --out /tmp/gpu      # on a GPU machine
    python benchmarks/gpu_check.py --allow-cpu --out /tmp/gpu_dry
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import RESULTS, describe_machine, machine_markdown

PAPER_VFN_ITERATIONS, PAPER_VFN_BATCH, PAPER_VFN_PATCH = 30000, 16, 64
TARGET_MINUTES = 10.0  # issue 15: the paper's VFN schedule projected at ≤ 10 minutes on an H100

# (GPU, CPU dry run)
SIZES = {
    "shape": ((96, 128, 128), (32, 48, 40)),
    "cases": (12, 9),
    "iterations_2d": (300, 4),
    "batch_2d": (32, 4),
    "iterations_vfn": (600, 3),
    "batch_vfn": (PAPER_VFN_BATCH, 2),
    "step_patch": (PAPER_VFN_PATCH, 24),
    "timed_steps": (60, 2),
    "loader_workers": (4, 0),
}


def _size(name: str, cuda: bool):
    return SIZES[name][0 if cuda else 1]


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def _unit_rate(unit: Path) -> tuple[int, float, float, dict]:
    """(iterations, seconds of training and validation, share of step time spent waiting for batches,
    metadata) from the unit's final checkpoint."""
    state = torch.load(unit / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    history = state["history"]
    steps = [h for h in history if h["iteration"] > 0]  # the validation at iteration 0 took no steps
    wait = sum(h["data_wait"] for h in steps) / len(steps) if steps else 0.0
    return (int(state["iteration"]), float(sum(h["seconds"] for h in history)), round(100 * wait, 1),
            state["metadata"])


def _time_steps(step, steps: int, device: torch.device, before_timing=lambda: None) -> tuple[float, float]:
    """(warm-up seconds, seconds of ``steps`` calls of ``step``) after 3 warm-up calls (cudnn autotuning
    and compilation happen there), synchronizing with the GPU around the timed calls."""
    begin = time.perf_counter()
    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    warm_s = time.perf_counter() - begin
    before_timing()
    begin = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return warm_s, time.perf_counter() - begin


def vfn_step_benchmark(plan, device: torch.device, batch: int, patch: int, steps: int) -> dict:
    """Time VFN training steps (mixed precision on CUDA) on batches already on the device."""
    from vfnet.networks.vfn import build_vfn
    from vfnet.training.losses import DiceCELoss, SoftDiceLoss
    from vfnet.training.trainer import Trainer, TrainingConfig

    model = build_vfn(plan, plan.num_channels, plan.num_classes)
    generator = torch.Generator(device="cpu").manual_seed(0)
    data = torch.rand((batch, model.in_channels, patch, patch, patch), generator=generator).to(device)
    target = torch.randint(0, plan.num_classes, (batch, 1, patch, patch, patch), generator=generator).to(device)
    loss = SoftDiceLoss() if plan.num_classes == 2 else DiceCELoss()
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(model, loss, iter(()), None, TrainingConfig(iterations=steps, lr=0.01, grad_clip=None),
                          Path(folder), device=device, quiet=True)
        batch_dict = {"data": data, "target": target}
        _, seconds = _time_steps(lambda: trainer.train_step(batch_dict), steps, device,
                                 before_timing=lambda: _peak_reset(device))
    per_s = steps / seconds
    return {"batch": batch, "patch": [patch] * 3, "steps": steps, "memory_format": str(trainer.memory_format), "seconds": round(seconds, 3),
            "iterations_per_s": round(per_s, 2), "peak_memory_mib": _peak_mib(device),
            "in_channels": model.in_channels, "amp": device.type == "cuda"}


def _time_variant(plan, device: torch.device, batch: int, patch: int, steps: int, dtype: torch.dtype,
                  layout: torch.memory_format, compiled: bool) -> dict:
    from vfnet.networks.vfn import build_vfn
    from vfnet.training.losses import DiceCELoss, SoftDiceLoss

    generator = torch.Generator(device="cpu").manual_seed(0)
    model = build_vfn(plan, plan.num_channels, plan.num_classes).to(device).to(memory_format=layout)
    step_model = torch.compile(model) if compiled else model
    data = torch.rand((batch, model.in_channels, patch, patch, patch), generator=generator).to(device)
    data = data.contiguous(memory_format=layout)
    target = torch.randint(0, plan.num_classes, (batch, 1, patch, patch, patch), generator=generator).to(device)
    loss_fn = SoftDiceLoss() if plan.num_classes == 2 else DiceCELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    cuda = device.type == "cuda"
    scaler = torch.amp.GradScaler(enabled=cuda and dtype == torch.float16)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=cuda):
            loss = loss_fn(step_model(data), target)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        float(loss.detach())

    warm_s, seconds = _time_steps(step, steps, device)
    per_s = steps / seconds
    return {"iterations_per_s": round(per_s, 2), "warm_up_s": round(warm_s, 1),
            "paper_schedule_min": round(PAPER_VFN_ITERATIONS / per_s / 60, 1)}


def vfn_step_variants(plan, device: torch.device, batch: int, patch: int, steps: int, compile_too: bool) -> dict:
    """Iterations per second of plain VFN training steps (SGD, no trainer) in each memory layout and
    autocast dtype, and compiled: which settings make the paper schedule fastest on this GPU."""
    variants = [("float16, contiguous", torch.float16, torch.contiguous_format, False),
                ("float16, channels_last_3d", torch.float16, torch.channels_last_3d, False),
                ("bfloat16, channels_last_3d", torch.bfloat16, torch.channels_last_3d, False)]
    if compile_too:
        variants.append(("float16, channels_last_3d, torch.compile", torch.float16, torch.channels_last_3d, True))
    rates = {}
    for name, dtype, layout, compiled in variants:
        try:
            rates[name] = _time_variant(plan, device, batch, patch, steps, dtype, layout, compiled)
        except Exception as error:  # noqa: BLE001 - one variant failing must not cost the others
            rates[name] = {"error": repr(error)[:300]}
        print(name, rates[name], flush=True)
    return rates


def run(out: Path, allow_cpu: bool, save=lambda result: None) -> dict:
    """Run every stage; ``save(result)`` is called after each one, so a check cut short keeps what it measured."""
    from vfnet import paths
    from vfnet.demo_data import make_demo_dataset
    from vfnet.experiment_planning.plans import Plan
    from vfnet.pipeline.units import train_2d_unit, train_vfn_unit
    from vfnet.preprocessing.plan_and_preprocess import plan_and_preprocess
    from vfnet.views import VIEWS

    cuda = torch.cuda.is_available()
    if not cuda and not allow_cpu:
        raise SystemExit("no CUDA device: gpu_check measures the GPU path (use --allow-cpu for a dry run)")
    device = torch.device("cuda" if cuda else "cpu")
    work = Path(tempfile.mkdtemp(prefix="vfnet_gpu_check_"))
    import os

    for var in paths.ENV_VARS:
        (work / var).mkdir()
        os.environ[var] = str(work / var)
    started = time.perf_counter()
    make_demo_dataset(work / "vfnet_raw", num_train=_size("cases", cuda), num_test=0, shape=_size("shape", cuda))
    plan_and_preprocess(None, num_processes=4 if cuda else 1, split_mode="holdout", quiet=True)
    preprocessed = paths.preprocessed_dataset(None)
    plan = Plan.load(preprocessed)
    prepare_s = time.perf_counter() - started
    result: dict = {"device": torch.cuda.get_device_name(0) if cuda else "cpu (dry run: not a GPU number)",
                    "torch": torch.__version__, "prepare_s": round(prepare_s, 1), "units": {}}
    save(result)
    iterations_2d = _size("iterations_2d", cuda)
    workers = _size("loader_workers", cuda)
    for view in VIEWS:
        _peak_reset(device)
        begin = time.perf_counter()
        overrides = {"iterations": iterations_2d, "val_every": iterations_2d, "batch_size": _size("batch_2d", cuda)}
        try:
            unit = train_2d_unit(None, view, "holdout", "default", device=device.type, quiet=True,
                                 schedule_overrides={**overrides, "num_workers": workers})
        except Exception as error:  # a machine without shared memory for loader processes: load in-process
            if workers == 0:
                raise
            print(f"2d {view} with {workers} loader workers failed ({error!r}); retrying with loading in-process")
            result["loader_fallback"] = repr(error)
            workers = 0
            begin = time.perf_counter()
            unit = train_2d_unit(None, view, "holdout", "default", device=device.type, quiet=True,
                                 schedule_overrides={**overrides, "num_workers": 0}, overwrite=True)
        wall = time.perf_counter() - begin
        iterations, seconds, wait, _ = _unit_rate(unit)
        result["units"][f"2d_{view}"] = {
            "iterations": iterations, "batch": _size("batch_2d", cuda),
            "patch": plan["views"][view]["patch_size"], "train_and_validation_s": round(seconds, 2),
            "iterations_per_s": round(iterations / seconds, 2), "unit_wall_s": round(wall, 1),
            "peak_memory_mib": _peak_mib(device), "data_wait_percent": wait, "loader_workers": workers}
        save(result)
    iterations_vfn = _size("iterations_vfn", cuda)
    _peak_reset(device)
    begin = time.perf_counter()
    unit = train_vfn_unit(None, "holdout", "default", device=device.type, quiet=True,
                          schedule_overrides={"iterations": iterations_vfn, "val_every": iterations_vfn,
                                              "batch_size": _size("batch_vfn", cuda)})
    wall = time.perf_counter() - begin
    iterations, seconds, wait, metadata = _unit_rate(unit)
    result["units"]["vfn"] = {"iterations": iterations, "batch": _size("batch_vfn", cuda),
                              "patch": plan["vfn"]["patch_size"], "train_and_validation_s": round(seconds, 2),
                              "iterations_per_s": round(iterations / seconds, 2), "unit_wall_s": round(wall, 1),
                              "peak_memory_mib": _peak_mib(device), "data_wait_percent": wait,
                              "patches_cropped_on_device": bool(metadata.get("samples_on_device"))}
    save(result)
    steps = vfn_step_benchmark(plan, device, _size("batch_vfn", cuda), _size("step_patch", cuda),
                               _size("timed_steps", cuda))
    result["vfn_steps"] = steps
    save(result)
    result["vfn_step_variants"] = vfn_step_variants(plan, device, _size("batch_vfn", cuda), _size("step_patch", cuda),
                                                    _size("timed_steps", cuda), compile_too=cuda)
    unit_rate = result["units"]["vfn"]["iterations_per_s"]
    result["projection"] = {
        "schedule": f"{PAPER_VFN_ITERATIONS} iterations x batch {PAPER_VFN_BATCH} at {PAPER_VFN_PATCH}^3",
        "from_steps_min": round(PAPER_VFN_ITERATIONS / steps["iterations_per_s"] / 60, 1),
        "from_unit_min": round(PAPER_VFN_ITERATIONS / unit_rate / 60, 1),
        "unit_matches_schedule": cuda and list(plan["vfn"]["patch_size"]) == [PAPER_VFN_PATCH] * 3,
        "target_min": TARGET_MINUTES}
    result["total_s"] = round(time.perf_counter() - started, 1)
    result["complete"] = True
    return result


def markdown(result: dict) -> str:
    lines = [(f"Device: **{result['device']}**, torch {result['torch']}. Synthetic dataset (holdout plan), "
             f"prepared in {result['prepare_s']} s. Mixed precision on CUDA."), "",
             ("| unit | iterations | batch | patch | iterations / s | waiting for batches (% of step time) | "
             "peak GPU memory (MiB) |"),
             "|---|---|---|---|---|---|---|"]
    for name, unit in result["units"].items():
        lines.append(f"| {name} | {unit['iterations']} | {unit['batch']} | {unit['patch']} | "
                     f"{unit['iterations_per_s']} | {unit.get('data_wait_percent', '')} | {unit['peak_memory_mib']} |")
    lines += ["", "Iterations per second include one validation at the end of each unit."]
    if "vfn" in result["units"]:
        lines += ["", ("VFN training patches cropped on the GPU (fusion set moved there once): "
                       f"{'yes' if result['units']['vfn'].get('patches_cropped_on_device') else 'no'}.")]
    if not result.get("complete"):
        return "\n".join([*lines, "", "**The check did not finish: the stages above are all it measured.**"])
    steps, projection = result["vfn_steps"], result["projection"]
    lines += ["",
              (f"VFN training steps alone (batches already on the device): {steps['iterations_per_s']} it/s at "
              f"batch {steps['batch']}, patch {steps['patch']}, peak {steps['peak_memory_mib']} MiB."), "",
              (f"Paper schedule ({projection['schedule']}) projected: **{projection['from_steps_min']} min** from "
              f"the timed steps, {projection['from_unit_min']} min from the whole VFN unit (data loading "
              f"included{'' if projection['unit_matches_schedule'] else '; its patch is not the paper’s'}); "
              f"target ≤ {projection['target_min']:g} min. The paper needed about 6 hours on a Titan X Pascal."),
              "", "VFN training steps alone, plain loop, by layout, autocast dtype and compilation:", "",
              "| variant | iterations / s | paper schedule (min) |", "|---|---|---|"]
    for name, rate in result.get("vfn_step_variants", {}).items():
        lines.append(f"| {name} | {rate.get('iterations_per_s', rate.get('error'))} | "
                     f"{rate.get('paper_schedule_min', '')} |")
    lines += ["", f"The trainer's layout for 3D networks on CUDA: {result['vfn_steps'].get('memory_format')}.",
              "", f"Whole check: {result['total_s']} s."]
    return "\n".join(lines)


def write(out: Path, result: dict, invocation: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    data = {"machine": machine, "invocation": invocation, **result}
    (out / "gpu.json").write_text(json.dumps(data, indent=2) + "\n")
    text = (f"# GPU check\n\n`{invocation}`\n\n{markdown(result)}\n\n## Machine\n{machine_markdown(machine)}\n")
    (out / "gpu.md").write_text(text)
    return out / "gpu.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for gpu.md and gpu.json")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="dry run on the CPU at toy sizes (never into benchmarks/results)")
    args = parser.parse_args()
    cpu = not torch.cuda.is_available()
    if cpu and args.out.resolve() == RESULTS.resolve():
        raise SystemExit("a CPU dry run never writes benchmarks/results: give --out a temporary folder")
    invocation = " ".join(["python", "benchmarks/gpu_check.py", *sys.argv[1:]])
    result = run(args.out, args.allow_cpu, save=lambda partial: write(args.out, partial, invocation))
    print(write(args.out, result, invocation).read_text())


if __name__ == "__main__":
    main()
