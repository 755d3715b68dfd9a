"""Training schedules planned from a wall-time budget on this device.

A budgeted preset (``quick`` = 60 minutes, or ``budget<N>`` = N minutes, as
``vfnet_train_all --budget N`` names it) does not fix iteration counts. Instead:

1. **Calibration** (seconds, :mod:`vfnet.training.calibration`): each view's 2D U-Net and the
   VFN take a few training steps on this device at the candidate resolutions (the planned one
   and, for large axes, in-plane downsampling by 2 and 4), and a forward pass over full slices
   times prediction.
2. **Allocation**: after the fixed costs (loading, held-out prediction, fusion sets,
   crossval) and every unit's minimum are set aside, the 2D units share :data:`SHARE_2D` of
   the time left and the VFN units the rest: every unit the same time (``equal``) or time in
   proportion to its training cases (``epochs``). Each view trains at the finest resolution
   that still gives its units :data:`TARGET_ITERATIONS_2D` steps.
3. **Refusal**: a budget that cannot give every unit :data:`MIN_ITERATIONS`, :data:`MINIMUM_MARGIN`
   times over at the calibrated speed, is refused in one
   sentence naming the smallest budget that works.
4. **Re-planning**: ``vfnet_train_all`` records each finished unit's wall time and re-plans
   the units not yet started with the measured speed, so the whole run lands on its budget.

Everything is kept in ``<results>/<Task>/<preset>/budget.json``; a unit's schedule is copied
into its ``unit.json`` when it starts, and ``--continue`` resumes that schedule unchanged.

Example:
    >>> budget = load_or_plan_budget(preprocessed, results, "quick", device)
    >>> budget.schedule("2d_axial", "0")["iterations"]
    812
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vfnet.atomic import read_json, write_json
from vfnet.errors import PlanError
from vfnet.experiment_planning.plans import Plan, budget_minutes, network_key
from vfnet.paths import view_network
from vfnet.resolution import downsampled_shape
from vfnet.training.calibration import BATCH, calibrate
from vfnet.views import VIEWS

logger = logging.getLogger(__name__)

BUDGET_VERSION = 1
SHARE_2D = 0.8  # of the time left for training steps; the VFN units share the rest
MIN_ITERATIONS = {"2d": 100, "vfn": 100}
TARGET_ITERATIONS_2D = 500  # a view trains at the finest resolution giving each of its units this many steps
# AdamW; on the CHAOST2 check of calibration.BASE_FEATURES_2D 3e-3 reached 0.722 where 1e-3 reached 0.497 and 1e-2 0.650 (with mirroring)
LEARNING_RATE = {"2d": 0.003, "vfn": 0.001}
VALIDATIONS_PER_UNIT = 6  # the VFN also validates at iteration 0: 7 validations in all
UNIT_OVERHEAD_S = 4.0  # starting a unit: imports, the trainer (1.6-1.8 s on 2 cores), data workers, final checkpoint
# Fixed costs measured on 2 CPU cores: a VFN unit of fold 0 (60 iterations, 7 validations; fusion set built in the
# unit) and a 2D CCA unit (10 held-out cases of CHAOST2, 36x256x256 voxels, 5 classes; 100 of Hippocampus, 36x50x35,
# 3 classes). Every validation also writes checkpoint_latest and redraws progress.png: 0.38-0.48 s (VFN), 0.6-0.7 s (2D).
VALIDATION_OVERHEAD_S = 0.5
# Seconds per float16 map value (voxel x channel) written compressed and read back. A fusion-set case took 3.74 s on
# CHAOST2 (13 channels: 3.31 s to read three views' maps and write the sample, 0.33 s to load it, tiling) and 0.072 s
# on Hippocampus (7 channels): FUSION_CASE_S + 1.2e-7 s per voxel and channel. A 2D unit's held-out map (compressed
# write, Dice, upsampling) took 1.4 s per CHAOST2 case and 0.023 s per Hippocampus case: 1.2e-7 s per voxel and class.
MAP_VALUE_S = 1.2e-7
FUSION_CASE_S = 0.02
# A VFN validation scores every patch tile of every validation case: 1.09x (CHAOST2, 16 tiles a case) to 1.56x
# (Hippocampus, one tile a case) the calibrated window forward. With these the 5 VFN units of the CHAOST2 --budget 60
# run at 9e43922 (723 iterations) are planned 589 s; they took 582 s, where the model before planned 250 s.
# (Their steps, with the batch, took 1.14x the calibrated step on CHAOST2, 1.29x on Hippocampus: left to re-planning.)
VALIDATION_WINDOW_FACTOR = 1.3
# a budget is refused unless it holds the minimum schedules this many times over (calibrated speed). CHAOST2's
# --budget 20 run overran by 34 % (26.8 min) with units 1.3-1.7x slower than planned, which was 1.5 here; most of
# that was the fixed costs the planner then left out (fusion sets, held-out maps, plots), and the cost model
# above plans that run's minimum schedules at 33.1 min, so a smaller margin covers what is left
MINIMUM_MARGIN = 1.2
CROSSVAL_VOXEL_S = 5e-6  # crossval seconds per voxel and case (every fusion method and the metrics)
ALLOCATIONS = ("equal", "epochs")
DEFAULT_ALLOCATION = "equal"


# ----------------------------------------------------------------------------- calibration
# ------------------------------------------------------------------------------ allocation
@dataclass
class UnitCost:
    """What one unit costs: ``fixed_s`` whatever its length, plus ``step_s`` per iteration."""

    network: str
    unit: str
    fixed_s: float
    step_s: float
    weight: float
    min_iterations: int


def _case_voxels(plan: Plan) -> float:
    return float(np.prod(plan["median_shape"]))


def _fold_sizes(plan: Plan, splits: dict) -> dict[str, int]:
    return {fold: len(cases) for fold, cases in splits["folds"].items()}


def vfn_downsample(plan: Plan, views: dict[str, dict]) -> list[int]:
    """The in-plane factor a budgeted VFN fuses at: the views' finest (per axis) when the plan's
    ``budget_downsample`` is ``views``, else the plan's ``input_downsample``. ``views``: each view's setting."""
    if plan.vfn.budget_downsample == "views":
        return [int(min(views[v]["input_downsample"][axis] for v in views)) for axis in range(3)]
    return [int(f) for f in plan.vfn.input_downsample]


def vfn_validation_windows(plan: Plan, factor: Sequence[int] | None = None) -> int:
    """Patch tiles a VFN validation scores per case (its region of interest is at most the case), the
    VFN fusing at ``factor`` (default: the plan's ``input_downsample``)."""
    shape = downsampled_shape(plan["median_shape"], plan.vfn.input_downsample if factor is None else factor)
    return int(np.prod([math.ceil(s / p) for s, p in zip(shape, plan.vfn.patch_size)]))


def vfn_fixed_seconds(plan: Plan, train: int, calibration: dict, factor: Sequence[int] | None = None) -> float:
    """Seconds of a VFN unit whose fusion set holds ``train`` cases, whatever its iterations.

    The fusion set is built (``vfnet_train_all`` builds it in the unit, or in its own step recorded
    with the unit) and loaded; every validation scores each validation case whole and writes a
    checkpoint and a plot. The measurements behind the constants are beside them.
    """
    from vfnet.training.units import validation_count

    channels = plan.num_channels + 3 * (plan.num_classes - 1)  # image + each view's foreground maps
    fusion_set = train * (FUSION_CASE_S + _case_voxels(plan) * channels * MAP_VALUE_S)
    windows = (validation_count(train, plan.training.validation_fraction, plan.vfn.validation_cases)
               * vfn_validation_windows(plan, factor))
    validation = (VALIDATIONS_PER_UNIT + 1) * (
        VALIDATION_OVERHEAD_S + windows * VALIDATION_WINDOW_FACTOR * calibration["vfn"]["window_s"])
    return UNIT_OVERHEAD_S + fusion_set + validation


def unit_costs(plan: Plan, splits: dict, calibration: dict, settings: dict[str, dict], allocation: str,
               networks: Sequence[str]) -> list[UnitCost]:
    """Cost model of every unit of ``networks`` (``2d_<view>``, ``vfn``) at the chosen view settings."""
    sizes = _fold_sizes(plan, splits)
    costs = []
    voxels = _case_voxels(plan)
    for network in networks:
        stage = network_key(network)
        for spec in plan.units(stage):
            train = sum(sizes[f] for f in spec["train_folds"])
            predicted = sum(sizes[f] for f in spec["predict_folds"])
            weight = float(train) if allocation == "epochs" else 1.0
            if stage == "2d":
                setting = settings[network[3:]]
                validation = VALIDATIONS_PER_UNIT * 5 * setting["step_s"] / 3  # forward ≈ a third of a step
                validation += VALIDATIONS_PER_UNIT * VALIDATION_OVERHEAD_S  # no validation at iteration 0
                load = (train + predicted) * voxels * 2e-8
                predict = predicted * setting["slices_per_case"] * setting["slice_s"]
                maps = predicted * voxels * plan.num_classes * MAP_VALUE_S  # held-out maps written, scored
                costs.append(UnitCost(network, spec["name"], UNIT_OVERHEAD_S + validation + load + predict + maps,
                                      setting["step_s"], weight, MIN_ITERATIONS["2d"]))
            else:
                costs.append(UnitCost(network, spec["name"],
                                      vfn_fixed_seconds(plan, train, calibration, vfn_downsample(plan, settings)),
                                      calibration["vfn"]["step_s"], weight, MIN_ITERATIONS["vfn"]))
    return costs


def crossval_seconds(plan: Plan, splits: dict, calibration: dict) -> float:
    """Estimated time of vfnet_crossval: every fusion method and the metrics on every held-out case."""
    cases = sum(len(c) for c in splits["folds"].values())
    if plan["split_mode"] == "holdout":
        cases = len(splits["folds"]["C"])
    windows = max(1.0, _case_voxels(plan) / float(np.prod(plan.vfn.patch_size)))
    return cases * (_case_voxels(plan) * CROSSVAL_VOXEL_S + 4 * windows * calibration["vfn"]["window_s"])


def allocate(costs: Sequence[UnitCost], seconds: float, speed: float = 1.0) -> dict[tuple[str, str], int]:
    """Iterations per (network, unit) so that the units' planned time fills ``seconds``.

    Every unit first gets its minimum; the time left is shared: :data:`SHARE_2D` to the 2D
    units, the rest to the VFN units (all of it when only one kind is left), and within a kind
    by each unit's weight (1 each with ``equal``; its training cases with ``epochs``).
    ``speed`` multiplies every cost (measured wall time over planned time of finished units).

    Raises:
        PlanError: ``seconds`` cannot give every unit its minimum iterations.
    """
    fixed = sum(c.fixed_s for c in costs) * speed
    minimum = sum(c.min_iterations * c.step_s for c in costs) * speed
    if fixed + minimum > seconds:
        raise PlanError(f"needs {fixed + minimum:.0f} s")
    extra = seconds - fixed - minimum
    kinds = {network_key(c.network) for c in costs}
    shares = {"2d": SHARE_2D, "vfn": 1 - SHARE_2D} if kinds == {"2d", "vfn"} else {k: 1.0 for k in kinds}
    iterations = {}
    for kind, share in shares.items():
        # the kind's time goes to its units by weight (equal: the same time for every unit of every view).
        # Not an equal part per view: when re-planning, views differ in how many of their units are left.
        units = [c for c in costs if network_key(c.network) == kind]
        total_weight = sum(c.weight for c in units)
        for cost in units:
            steps = int(extra * share * cost.weight / total_weight / (cost.step_s * speed))
            iterations[(cost.network, cost.unit)] = cost.min_iterations + steps
    return iterations


def minimum_schedule_seconds(costs: Sequence[UnitCost], reserved_s: float) -> float:
    """Calibrated seconds of every unit at its minimum, plus ``reserved_s``, times :data:`MINIMUM_MARGIN`."""
    return MINIMUM_MARGIN * (reserved_s + sum(c.fixed_s + c.min_iterations * c.step_s for c in costs))


def smallest_budget_minutes(costs: Sequence[UnitCost], reserved_s: float) -> int:
    """The smallest whole number of minutes that gives every unit its minimum, with the margin."""
    return math.ceil(minimum_schedule_seconds(costs, reserved_s) / 60)


# ----------------------------------------------------------------------------- the budget
class Budget:
    """``budget.json`` of one preset: calibration, view settings, planned and measured unit times."""

    def __init__(self, path: Path, data: dict):
        self.path, self.data = Path(path), data

    @property
    def minutes(self) -> float:
        return float(self.data["budget_min"])

    def schedule(self, network: str, unit: str) -> dict:
        """The schedule a unit trains with: iterations, batch, validation interval and, for 2D, the view setting."""
        key = f"{network}/{unit}"
        planned = self.data["units"].get(key)
        if planned is None:
            raise PlanError(f"{self.path}: no budgeted schedule for {network} unit {unit}")
        iterations = int(planned["iterations"])
        stage = network_key(network)
        schedule = {"iterations": iterations, "batch_size": BATCH[stage],
                    "lr": LEARNING_RATE[stage],
                    "val_every": max(10, math.ceil(iterations / VALIDATIONS_PER_UNIT)),
                    "budget_min": self.minutes}
        if stage == "2d":
            setting = self.data["views"][network[3:]]
            schedule.update({k: setting[k] for k in ("input_downsample", "patch_size", "features")})
        elif stage == "vfn" and "vfn_input_downsample" in self.data:  # none in budgets planned before the VFN followed the views
            schedule["input_downsample"] = list(self.data["vfn_input_downsample"])
        return schedule

    def record(self, network: str, unit: str, seconds: float) -> None:
        """Store a finished unit's measured wall time (a VFN unit's with its fusion set's, see :meth:`record_fusion_set`)."""
        entry = self.data["units"][f"{network}/{unit}"]
        entry["actual_s"] = round(float(seconds) + entry.get("fusion_set_s", 0.0), 1)

    def record_fusion_set(self, unit: str, seconds: float) -> None:
        """Store the build time of VFN unit ``unit``'s fusion set when it ran as a step of its own (Dask graph).

        The VFN unit's planned time includes its fusion set (``vfnet_train_all`` without workers builds
        it inside the unit), so :meth:`record` adds this time to the unit's own.
        """
        entry = self.data["units"].get(f"vfn/{unit}")
        if entry is not None:
            entry["fusion_set_s"] = round(float(seconds), 1)
            self.save()

    def speed(self, network: str | None = None) -> float:
        """Measured over planned time of finished units (of ``network`` when it has some), within [0.5, 3]."""
        units = self.data["units"].items()
        done = [u for k, u in units if "actual_s" in u and (network is None or k.startswith(network + "/"))]
        if not done:
            return 1.0 if network is None else self.speed()
        return float(np.clip(sum(u["actual_s"] for u in done) / sum(u["planned_s"] for u in done), 0.5, 3.0))

    @property
    def workers(self) -> int:
        """Processes training side by side; the budget's compute time is its wall time times this."""
        return int(self.data.get("workers", 1))

    def replan(self, plan: Plan, splits: dict, elapsed_s: float, frozen: set[str]) -> None:
        """Re-plan the units not yet started (not in ``frozen``) to fill what is left of the budget.

        ``elapsed_s`` is compute time (calibration plus the units' measured times, summed over workers).
        """
        pending = [k for k, u in self.data["units"].items() if "actual_s" not in u and k not in frozen]
        if not pending:
            return
        costs = [c for c in unit_costs(plan, splits, self.data["calibration"], self.data["views"],
                                       self.data["allocation"], self.data["networks"])
                 if f"{c.network}/{c.unit}" in pending]
        # each network's costs scaled by its own measured speed (the global one before it has finished units);
        # the pending units' time above their minimum in the first plan is scaled by one factor, so the shares
        # stay as planned. From the first plan, not the last re-plan: a slow start (CUDA warm-up) that cut the
        # units to their minimum must not keep them there once the later units run faster.
        speeds = {network: self.speed(network) for network in self.data["networks"]}
        left = self.minutes * 60 * self.workers - elapsed_s - self.data["crossval_s"] * self.speed()
        entries = {f"{c.network}/{c.unit}": self.data["units"][f"{c.network}/{c.unit}"] for c in costs}

        def first_plan(cost: UnitCost) -> int:
            entry = entries[f"{cost.network}/{cost.unit}"]
            return int(entry.get("planned_iterations", entry["iterations"]))

        floor = sum(speeds[c.network] * (c.fixed_s + c.min_iterations * c.step_s) for c in costs)
        above = sum(speeds[c.network] * (first_plan(c) - c.min_iterations) * c.step_s for c in costs)
        factor = max(0.0, (left - floor) / above) if above > 0 else 0.0
        for cost in costs:
            entry = entries[f"{cost.network}/{cost.unit}"]
            entry["iterations"] = cost.min_iterations + int((first_plan(cost) - cost.min_iterations) * factor)
            # in calibrated seconds, so that measured / planned stays the speed of the device
            entry["planned_s"] = round(cost.fixed_s + entry["iterations"] * cost.step_s, 1)
        self.data["replanned"] = self.data.get("replanned", 0) + 1
        self.data["speed"] = {network: round(v, 3) for network, v in speeds.items()}
        self.save()

    def save(self) -> None:
        write_json(self.path, self.data)

    def summary_lines(self) -> list[str]:
        """Human-readable plan: resolution and iterations per network."""
        lines = [(f"budget {self.minutes:g} min on {self.data['calibration']['device']} "
                 f"(calibration {self.data['calibration']['seconds']:.0f} s, allocation '{self.data['allocation']}', "
                 f"planned {self.data['planned_total_s'] / 60:.1f} min"
                 f"{f' of compute on {self.workers} workers' if self.workers > 1 else ''})")]
        for network in self.data["networks"]:
            units = {k.split("/", 1)[1]: v for k, v in self.data["units"].items() if k.startswith(network + "/")}
            its = sorted({v["iterations"] for v in units.values()})
            extra = ""
            if network.startswith("2d_"):
                view = self.data["views"][network[3:]]
                extra = f", downsample {view['input_downsample']}, patch {view['patch_size']}"
            elif "vfn_input_downsample" in self.data:
                extra = f", downsample {self.data['vfn_input_downsample']}"
            lines.append(f"  {network}: {len(units)} unit(s), {its[0]}-{its[-1]} iterations{extra}")
        return lines


def budget_path(results: Path, preset: str) -> Path:
    return Path(results) / preset / "budget.json"


def plan_budget(plan: Plan, splits: dict, minutes: float, calibration: dict, allocation: str = DEFAULT_ALLOCATION,
                networks: Sequence[str] | None = None, workers: int = 1) -> dict:
    """A new ``budget.json`` body: choose each view's resolution, then iterations per unit.

    With ``workers`` processes training side by side (``vfnet_train_all --workers N``), the units
    share ``minutes × workers`` of compute time, each measured at the calibration's thread count
    (the threads of one worker): the simple accounting of N parallel workers that each take their
    share of the wall time. Calibration and crossval are counted once.

    Raises:
        PlanError: the budget is too small; the message names the smallest that works.
    """
    if allocation not in ALLOCATIONS:
        raise PlanError(f"allocation '{allocation}' unknown; expected one of {', '.join(ALLOCATIONS)}")
    networks = list(networks or [view_network(v) for v in VIEWS] + ["vfn"])
    seconds = minutes * 60 * workers - calibration["seconds"]
    crossval_s = crossval_seconds(plan, splits, calibration)
    # start from the finest resolution; coarsen a view while its units would get too few steps
    choice = {view: 0 for view in VIEWS}
    while True:
        settings = {v: calibration["views"][v][choice[v]] for v in VIEWS}
        costs = unit_costs(plan, splits, calibration, settings, allocation, networks)
        try:
            iterations = allocate(costs, seconds - crossval_s)
        except PlanError:
            iterations = None
        if minimum_schedule_seconds(costs, crossval_s + calibration["seconds"]) > minutes * 60 * workers:
            iterations = None  # no margin for units slower than calibrated: try coarser views, else refuse
        coarser = [v for v in VIEWS if choice[v] + 1 < len(calibration["views"][v]) and (
            iterations is None or min(n for (net, _), n in iterations.items() if net == view_network(v))
            < TARGET_ITERATIONS_2D) and view_network(v) in networks]
        if not coarser:
            break
        for view in coarser:
            choice[view] += 1
    if iterations is None:
        smallest = math.ceil(smallest_budget_minutes(costs, crossval_s + calibration["seconds"]) / workers)
        raise PlanError(f"a budget of {minutes:g} min cannot give every unit {MIN_ITERATIONS['2d']} iterations "
                        f"({MINIMUM_MARGIN:g}x over the calibrated time) "
                        f"on this device; the smallest budget that works is {smallest} min")
    units = {}
    for cost in costs:
        n = iterations[(cost.network, cost.unit)]
        units[f"{cost.network}/{cost.unit}"] = {"iterations": n, "planned_iterations": n,
                                                "planned_s": round(cost.fixed_s + n * cost.step_s, 1)}
    return {"version": BUDGET_VERSION, "budget_min": minutes, "workers": workers, "allocation": allocation,
            "networks": networks,
            "calibration": calibration, "views": settings, "vfn_input_downsample": vfn_downsample(plan, settings),
            "crossval_s": round(crossval_s, 1),
            "planned_total_s": round(calibration["seconds"] + crossval_s + sum(u["planned_s"] for u in units.values()),
                                     1),
            "units": units}


def load_or_plan_budget(preprocessed: Path, results: Path, preset: str, device: torch.device,
                        allocation: str | None = None, quiet: bool = True, workers: int = 1) -> Budget:
    """The preset's budget: read from ``budget.json``, else calibrated on ``device`` and planned now.

    ``workers``: processes that will train side by side (see :func:`plan_budget`); a budget already
    planned keeps the number of workers it was planned for.

    Raises:
        PlanError: the preset is not a budget, or the budget is too small for this device.
    """
    minutes = budget_minutes(preset)
    if minutes is None:
        raise PlanError(f"preset '{preset}' has a fixed schedule, not a budget")
    path = budget_path(results, preset)
    if path.is_file():
        data = read_json(path)
        if data.get("version") == BUDGET_VERSION and (allocation is None or data["allocation"] == allocation):
            return Budget(path, data)
    plan = Plan.load(preprocessed)
    splits = read_json(Path(preprocessed) / "splits.json")
    if not quiet:
        logger.info("Calibrating %s (%g min) on %s...", preset, minutes, device)
    units_2d = len(plan.units("2d")) * len(VIEWS)
    calibration = calibrate(plan, device, minutes * 60 * workers * SHARE_2D / units_2d / TARGET_ITERATIONS_2D,
                            quiet=quiet)
    budget = Budget(path, plan_budget(plan, splits, minutes, calibration, allocation or DEFAULT_ALLOCATION,
                                      workers=workers))
    path.parent.mkdir(parents=True, exist_ok=True)
    budget.save()
    return budget
