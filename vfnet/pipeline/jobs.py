"""Every training unit of a plan as a job: listed for a cluster, or run one after the other.

Stages register a function that lists their jobs in :data:`STAGES`; ``vfnet_train_all``
runs them in the order of :data:`STAGE_ORDER`. Adding a stage (VFN, 3D U-Net) means
writing its ``_jobs_<stage>`` function and adding one entry to :data:`STAGES`.

Example:
    >>> for job in list_jobs(plan, results_folder, "quick", stage="2d"):
    ...     print(job.command("Task04_Hippocampus", "quick"))
    vfnet_train 2d axial 0 -d Task04_Hippocampus --preset quick
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vfnet import paths
from vfnet.atomic import read_json
from vfnet.errors import VfnetError
from vfnet.experiment_planning.plans import Plan
from vfnet.training.units import unit_finished
from vfnet.views import VIEWS

STAGE_ORDER = ("2d", "vfn", "3d")


@dataclass
class TrainingJob:
    """One ``vfnet_train`` call: the network kind, its positional arguments and where it writes.

    Args:
        stage: ``2d``, ``vfn`` or ``3d``.
        arguments: positional arguments after ``vfnet_train`` (e.g. ``["2d", "axial", "0"]``).
        unit_dir: results folder of the unit.
        run: ``run(dataset, preset, resume, **options)`` trains the unit.
    """

    stage: str
    arguments: list[str]
    unit_dir: Path
    run: Callable = field(repr=False)

    @property
    def network(self) -> str:
        """``2d_<view>``, ``vfn``, ``vfn_noimage`` or ``3d``: the folder above the unit's."""
        return self.unit_dir.parent.name

    @property
    def unit(self) -> str:
        return self.unit_dir.name

    @property
    def finished(self) -> bool:
        return unit_finished(self.unit_dir)

    @property
    def started(self) -> bool:
        return paths.UnitPaths(self.unit_dir).latest_checkpoint.is_file()

    def command(self, dataset: str, preset: str) -> str:
        """Complete shell command (``--continue`` when a latest checkpoint exists)."""
        flags = " --continue" if self.started and not self.finished else ""
        return f"vfnet_train {' '.join(self.arguments)} -d {dataset} --preset {preset}{flags}"


def _jobs_2d(plan: Plan, results: Path, preset: str, views: Sequence[str]) -> list[TrainingJob]:
    from vfnet.pipeline.units import train_2d_unit

    jobs = []
    for view in views:
        for unit in plan.units("2d"):
            name = unit["name"]

            def run(dataset, preset_, resume, _view=view, _unit=name, **options):
                return train_2d_unit(dataset, _view, _unit, preset_, resume=resume, **options)

            folder = paths.UnitPaths.of(results, preset, paths.view_network(view), name).folder
            jobs.append(TrainingJob("2d", ["2d", view, name], folder, run))
    return jobs


def _jobs_vfn(plan: Plan, results: Path, preset: str, views: Sequence[str]) -> list[TrainingJob]:
    from vfnet.pipeline.units import train_vfn_unit

    jobs = []
    for use_image, network, flag in ((True, paths.VFN_NETWORK, []), (False, paths.VFN_NOIMAGE_NETWORK, ["--no-image"])):
        for unit in plan.units("vfn"):
            name = unit["name"]
            if not use_image and unit["kind"] == "all":
                continue  # the ablation is measured by cross-validation; deployment uses the full VFN

            def run(dataset, preset_, resume, _unit=name, _image=use_image, **options):
                return train_vfn_unit(dataset, _unit, preset_, use_image=_image, resume=resume, **options)

            jobs.append(TrainingJob("vfn", ["vfn", name, *flag], paths.UnitPaths.of(results, preset, network, name).folder,
                                    run))
    return jobs


def _jobs_3d(plan: Plan, results: Path, preset: str, views: Sequence[str]) -> list[TrainingJob]:
    from vfnet.pipeline.units import train_3d_unit

    jobs = []
    for unit in plan.units("3d"):
        name = unit["name"]

        def run(dataset, preset_, resume, _unit=name, **options):
            return train_3d_unit(dataset, _unit, preset_, resume=resume, **options)

        jobs.append(TrainingJob("3d", ["3d", name], paths.UnitPaths.of(results, preset, paths.UNET3D_NETWORK, name).folder,
                                run))
    return jobs


STAGES: dict[str, Callable[[Plan, Path, str, Sequence[str]], list[TrainingJob]]] = {
    "2d": _jobs_2d, "vfn": _jobs_vfn, "3d": _jobs_3d}


def _check_views(views: Sequence[str] | None) -> list[str]:
    views = list(views or VIEWS)
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise VfnetError(f"unknown view(s) {', '.join(unknown)}; the views are: {', '.join(VIEWS)}")
    return views


def list_jobs(plan: Plan, results: Path, preset: str, stage: str = "all",
              views: Sequence[str] | None = None) -> list[TrainingJob]:
    """Jobs of ``stage`` (or of every available stage for ``all``) in the order they must run."""
    if stage == "all":
        stages = [s for s in STAGE_ORDER if s in STAGES]
    elif stage in STAGES:
        stages = [stage]
    else:
        known = ", ".join(list(STAGES) + ["all"])
        raise VfnetError(f"stage '{stage}' is not available; the stages are: {known}")
    views = _check_views(views)
    return [job for s in stages for job in STAGES[s](plan, results, preset, views)]


def dataset_jobs(dataset: str | int | None, preset: str, stage: str = "all",
                 views: Sequence[str] | None = None) -> tuple[str, list[TrainingJob]]:
    """(dataset folder name, its jobs) for a preprocessed dataset."""
    preprocessed = paths.preprocessed_dataset(dataset)
    plan = Plan.load(preprocessed)
    return preprocessed.name, list_jobs(plan, paths.results_root() / preprocessed.name, preset, stage, views)


def job_commands(dataset: str | int | None, preset: str = "default", stage: str = "all",
                 views: Sequence[str] | None = None, include_finished: bool = False) -> list[str]:
    """One shell command per unfinished unit (all units with ``include_finished``)."""
    from vfnet.experiment_planning.plans import budget_minutes

    name, jobs = dataset_jobs(dataset, preset, stage, views)
    if budget_minutes(preset) is not None:
        jobs = budgeted_jobs(jobs, stage)
    return [job.command(name, preset) for job in jobs if include_finished or not job.finished]


def budgeted_jobs(jobs: list[TrainingJob], stage: str) -> list[TrainingJob]:
    """The jobs a budget covers: the 2D views and the VFN with image (the no-image ablation and the
    3D baseline are left out, unless ``--stage 3d`` asks for the baseline with its fixed schedule)."""
    if stage == "3d":
        return jobs
    return [job for job in jobs if job.stage in ("2d", "vfn") and job.network != paths.VFN_NOIMAGE_NETWORK]


def train_all(dataset: str | int | None, preset: str = "default", stage: str = "all",
              views: Sequence[str] | None = None, log: Callable[[str], None] = print, allocation: str | None = None,
              run_crossval: bool = True, **options) -> list[Path]:
    """Run every unfinished unit in order, continuing those with a latest checkpoint, then crossval.

    A budgeted preset (quick, budget<N>) first calibrates this device and plans every unit's
    schedule to fit the budget (refusing a budget that is too small), then re-plans the units not
    yet started after each unit with the measured speed (:mod:`vfnet.training.budget`).

    Args:
        allocation: how a budget shares time between units (``equal`` or ``epochs``).
        run_crossval: with ``stage='all'``, run vfnet_crossval once every unit is trained.
        options: passed to each stage's training function (``device``, ``num_threads``, ``quiet``).

    Returns:
        The unit folders trained in this call.
    """
    from vfnet.device import resolve_device
    from vfnet.experiment_planning.plans import budget_minutes
    from vfnet.training.budget import load_or_plan_budget

    name, jobs = dataset_jobs(dataset, preset, stage, views)
    preprocessed = paths.preprocessed_dataset(name)
    results = paths.results_root() / name
    budget = None
    if budget_minutes(preset) is not None:
        jobs = budgeted_jobs(jobs, stage)
        if stage != "3d":
            if options.get("num_threads"):
                import torch

                torch.set_num_threads(int(options["num_threads"]))
            budget = load_or_plan_budget(preprocessed, results, preset, resolve_device(options.get("device", "auto")),
                                         allocation, quiet=options.get("quiet", False))
            for line in budget.summary_lines():
                log(line)
    pending = [job for job in jobs if not job.finished]
    log(f"{name}: {len(jobs) - len(pending)} of {len(jobs)} unit(s) already finished, {len(pending)} to train")
    done = []
    for number, job in enumerate(pending, 1):
        log(f"[{number}/{len(pending)}] {job.command(name, preset)}")
        start = time.perf_counter()
        done.append(job.run(name, preset, job.started, **options))
        if budget is not None:
            budget.record(job.network, job.unit, time.perf_counter() - start)
            started = {f"{j.network}/{j.unit}" for j in jobs if j.started or j.finished}
            recorded = sum(u.get("actual_s", 0.0) for u in budget.data["units"].values())
            budget.replan(Plan.load(preprocessed), read_json(preprocessed / "splits.json"),
                          budget.data["calibration"]["seconds"] + recorded, started)
    if run_crossval and stage == "all" and set(_check_views(views)) == set(VIEWS) and all(j.finished for j in jobs):
        from vfnet.evaluation.crossval import crossval

        log(f"vfnet_crossval -d {name} --preset {preset}")
        start = time.perf_counter()
        result = crossval(name, preset, device=options.get("device", "auto"), quiet=options.get("quiet", False))
        best = result["best"]
        log(f"crossval: {time.perf_counter() - start:.0f} s; best fusion {best['method']}"
            f"{' + post-processing' if best['postprocess'] else ''}: mean Dice {100 * best['mean_dice']:.2f} %")
        if budget is not None:
            budget.data["crossval_actual_s"] = round(time.perf_counter() - start, 1)
            budget.save()
    return done
