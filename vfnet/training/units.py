"""What every training unit starts with: its dataset, plan entry, schedule, device and folder,
its training / validation / held-out cases, and a clean folder for a fresh run; and what it
hands on when trained (:class:`TrainedUnit`) to the later stage that predicts its held-out folds."""

from __future__ import annotations

import shutil
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vfnet import paths
from vfnet.atomic import read_json
from vfnet.device import resolve_device
from vfnet.errors import PlanError, VfnetError
from vfnet.experiment_planning.migration import version_1_schedule
from vfnet.experiment_planning.plans import Plan, budget_minutes, network_key
from vfnet.experiment_planning.schema import Schedule, TrainingPlan, read_schedule
from vfnet.paths import UnitPaths
from vfnet.preprocessing.data import PreprocessedDataset
from vfnet.training.budget import load_or_plan_budget


@dataclass
class UnitSetup:
    """Resolved inputs of one unit: ``spec`` is its plans.json entry, ``schedule`` the one it trains
    with, ``out`` its results folder."""

    preprocessed: Path
    plan: Plan
    spec: dict
    schedule: Schedule
    device: torch.device
    out: Path
    final: Path | None = None  # with --overwrite of a finished unit, ``out`` is a staging folder swapped in at the end
    preset: str = ""

    def finish(self) -> Path:
        """Swap a staging folder onto the unit's folder once the new run is complete; the unit's folder."""
        if self.final is None or self.final == self.out:
            return self.out
        old = self.final.with_name(self.final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        self.final.rename(old)
        self.out.rename(self.final)
        shutil.rmtree(old, ignore_errors=True)
        return self.final


@dataclass
class TrainedUnit:
    """A unit whose final checkpoint is written: what held-out prediction needs.

    Training never imports inference; the stage above (:mod:`vfnet.pipeline.units`) passes an
    ``after_training`` callback that takes this, predicts ``predict_cases`` and writes summary.json
    (which makes the unit finished) before a staging folder is swapped in.

    Args:
        setup: the unit's resolved inputs; ``setup.out`` holds the checkpoints.
        data: the preprocessed dataset.
        predict_cases: the held-out cases the unit predicts.
        metadata: recorded at the top of the unit's summary.json.
        view: the view of a 2D unit, else None.
        quiet: no progress bars.
    """

    setup: UnitSetup
    data: PreprocessedDataset
    predict_cases: list[str]
    metadata: dict
    view: str | None = None
    quiet: bool = False

    @property
    def class_names(self) -> list[str]:
        """Class names ordered by label value (background first)."""
        return [name for name, _ in sorted(self.setup.plan["labels"].items(), key=lambda kv: kv[1])]


AfterTraining = Callable[[TrainedUnit], object]


def prepare_unit(dataset: str | int | None, stage: str, network: str, unit: str, preset: str, device: str,
                 schedule_overrides: dict | None = None, resume: bool = False, overwrite: bool = False) -> UnitSetup:
    """Resolve a unit of ``stage`` (``2d``, ``vfn``, ``3d``) and create its results folder.

    The schedule is the preset's; a budgeted preset (quick, budget<N>) takes the unit's
    iterations and, for 2D, its resolution and patch from the budget (calibrated on this
    device the first time; see :mod:`vfnet.training.budget`). A resumed unit keeps the
    schedule its ``unit.json`` recorded when it started (one recorded under a version-1 plan gets
    the settings version-1 trainers added). A schedule key the schema does not know (a misspelled
    override) is refused, naming it. Also copies plans, dataset.json and fingerprint beside the
    models so results are self-contained.

    A finished unit is never destroyed by a new run: without ``resume`` it is refused unless
    ``overwrite``, and then the new run trains in a staging folder that replaces the unit's only
    when it is complete (:meth:`UnitSetup.finish`).

    Raises:
        VfnetError: the unit is finished and neither ``resume`` nor ``overwrite`` was given.
        PlanError: the schedule has an unknown, missing or malformed key.
    """
    preprocessed = paths.preprocessed_dataset(dataset)
    plan = Plan.load(preprocessed)
    spec = plan.unit(stage, unit)
    torch_device = resolve_device(device)
    results = paths.results_root() / preprocessed.name
    paths.copy_dataset_files(preprocessed, results)
    out = UnitPaths.of(results, preset, network, str(unit)).folder
    final = out
    if unit_finished(out) and not resume:
        if not overwrite:
            raise VfnetError(f"{network} unit {unit} is already trained in {out}; use --continue to keep it or "
                             "--overwrite to train it again (the trained unit stays until the new one is complete)")
        out = out.with_name(out.name + ".overwrite")
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    overrides = dict(schedule_overrides or {})
    record = UnitPaths(out).record
    recorded = read_json(record).get("schedule") if record.is_file() else None
    if resume and recorded and UnitPaths(out).latest_checkpoint.is_file():
        if "lr_schedule" not in recorded:  # recorded under a version-1 plan
            recorded = version_1_schedule(recorded, network_key(stage), plan.num_classes)
        schedule, source = {**recorded, **overrides}, str(record)
    else:
        schedule, source = plan.schedule(preset, stage).to_dict(), f"{network} unit {unit}"
        if budget_minutes(preset) is not None and stage in ("2d", "vfn") and "iterations" not in overrides:
            budget = load_or_plan_budget(preprocessed, results, preset, torch_device)
            schedule.update(budget.schedule("vfn" if stage == "vfn" else network, str(unit)))
        schedule.update(overrides)
    return UnitSetup(preprocessed, plan, spec, read_schedule(schedule, network_key(stage), "schedule", source),
                     torch_device, out, final, preset)


def validation_count(num_cases: int, fraction: float, minimum: int = 0) -> int:
    """How many of a unit's ``num_cases`` training cases :func:`split_validation` keeps for validation:
    a ``fraction`` of them, at least one and at least ``minimum`` (but never more than half for that)."""
    if num_cases < 2:
        return num_cases
    return min(num_cases - 1, max(1, round(fraction * num_cases), min(minimum, num_cases // 2)))


def split_validation(cases: Sequence[str], key: str, training: TrainingPlan,
                     minimum: int = 0) -> tuple[list, list]:
    """(train, validation) cases: a seeded share (at least one case) of the unit's own training cases.

    The share and the seed are the plan's (``training.validation_fraction``, ``training.seed``);
    ``key`` (the unit) varies the draw between units; ``minimum``: see :func:`validation_count`.

    With a single training case it serves as its own validation case (nothing else is allowed).
    """
    cases = sorted(cases)
    if len(cases) < 2:
        return cases, list(cases)
    val = seeded_draw(cases, validation_count(len(cases), training.validation_fraction, minimum), training, key)
    return [c for c in cases if c not in val], val


def seeded_draw(cases: Sequence[str], count: int, training: TrainingPlan, key: str) -> list:
    """``count`` of ``cases``, sorted, drawn with the plan's seed (``training.seed``) varied by ``key``."""
    rng = np.random.default_rng(training.seed + zlib.crc32(key.encode()))
    return sorted(cases[i] for i in rng.choice(len(cases), count, replace=False))


def held_out_split(data: PreprocessedDataset, spec: dict, training: TrainingPlan, key: str,
                   label: str) -> tuple[list, list, list]:
    """(train, validation, predicted) cases of a unit whose plan entry is ``spec`` (see :func:`split_validation`).

    Raises:
        PlanError: a predicted case is also a training or validation case (``label`` names the unit).
    """
    train_cases, val_cases = split_validation(data.fold_cases(spec["train_folds"]), key, training)
    predict_cases = data.fold_cases(spec["predict_folds"])
    if set(predict_cases) & set(train_cases + val_cases):
        raise PlanError(f"{label}: training and predicted cases overlap; check splits.json and plans.json")
    return train_cases, val_cases, predict_cases


def unit_finished(unit_dir: Path) -> bool:
    """A unit is finished when its final checkpoint and its summary exist."""
    return UnitPaths(Path(unit_dir)).finished


def clear_previous_run(unit_dir: Path) -> None:
    """Remove the checkpoints, summary and held-out maps of an earlier run before a fresh (not resumed) one."""
    unit = UnitPaths(Path(unit_dir))
    for path in (unit.final_checkpoint, unit.summary, unit.latest_checkpoint, unit.best_checkpoint):
        path.unlink(missing_ok=True)
    shutil.rmtree(unit.predictions, ignore_errors=True)
