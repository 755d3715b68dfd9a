"""One runner for every training unit: the 2D U-Nets, the VFN and the 3D U-Net.

Each network brings a :class:`Recipe`: the plan units it trains, its folder name, its cases, and
how to build its trainer (network, loaders, loss, optimizer). :func:`run_unit` does what is the
same for all three, in one place: resolve the unit (:func:`vfnet.training.units.prepare_unit`),
leave a finished unit alone when resuming, write ``unit.json``, clear an earlier run unless
resuming, resume, stop at ``stop_at``, and hand the trained unit to its ``after_training``
callbacks (held-out prediction for the views and the 3D U-Net, the summary for the VFN), which
write ``summary.json`` before an ``--overwrite`` staging folder is swapped in.

Example:
    >>> run_unit(View2dRecipe("axial"), "Task04", "0", "quick", "auto", RunOptions(resume=True))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from vfnet.atomic import write_json
from vfnet.checkpoint import load_checkpoint
from vfnet.paths import UnitPaths
from vfnet.training.ddp import DistributedContext
from vfnet.training.trainer import Trainer
from vfnet.training.units import AfterTraining, TrainedUnit, UnitSetup, clear_previous_run, prepare_unit, unit_finished


@dataclass
class RunOptions:
    """How a unit runs, the same for every network.

    Args:
        num_threads: torch CPU threads; None uses torch's default.
        resume: continue from ``checkpoint_latest.pth`` (a finished unit is left as it is).
        quiet: no progress bars or console messages.
        overwrite: train a finished unit again (it stays until the new run is complete).
        schedule_overrides: replace keys of the preset's schedule (tests, benchmarks).
        stop_at: stop after this many iterations with a latest checkpoint and no summary (to check
            that a long schedule starts; continue later with ``resume``).
        distributed: train with DDP (``vfnet_train --ddp`` under torchrun); only rank 0 writes.
    """

    num_threads: int | None = None
    resume: bool = False
    quiet: bool = False
    overwrite: bool = False
    schedule_overrides: dict | None = None
    stop_at: int | None = None
    distributed: DistributedContext | None = None


@dataclass
class UnitCases:
    """A unit's cases: trained on, validated on (the best checkpoint), predicted once trained.

    ``data`` is where the recipe and the ``after_training`` callbacks read the cases from (the
    preprocessed dataset, or the VFN's fusion set folder); ``record`` adds fields to ``unit.json``.
    """

    train: list[str]
    val: list[str]
    predict: list[str]
    data: Any = None
    record: dict = field(default_factory=dict)


@dataclass
class Run:
    """A built trainer, and what releases its data loaders once it stops."""

    trainer: Trainer
    close: Callable[[], None] = lambda: None


class Recipe(Protocol):
    """What a network brings to :func:`run_unit`."""

    stage: str  # the plan's units it trains: "2d", "vfn" or "3d"
    network: str  # its results folder: 2d_<view>, vfn, vfn_noimage (+ _seed<N>) or 3d
    view: str | None  # the view of a 2D network

    def cases(self, setup: UnitSetup) -> UnitCases:
        """The unit's train / validation / predicted cases."""

    def build(self, setup: UnitSetup, cases: UnitCases, metadata: dict, options: RunOptions) -> Run:
        """Seed, build the network, loaders, loss and optimizer, and return the trainer."""


def run_unit(recipe: Recipe, dataset: str | int | None, unit: str, preset: str, device: str,
             options: RunOptions, after_training: Sequence[AfterTraining] = ()) -> Path:
    """Train ``unit`` of ``recipe``'s network to its final checkpoint, then call ``after_training``.

    Without callbacks a trained unit has no summary.json and so does not count as finished.

    Returns:
        The unit's results folder.
    """
    setup = prepare_unit(dataset, recipe.stage, recipe.network, unit, preset, device, options.schedule_overrides,
                         options.resume, options.overwrite)
    out = setup.out
    if options.resume and unit_finished(out):
        return out
    cases = recipe.cases(setup)
    metadata = {"network": recipe.network, "unit": str(unit), "preset": preset, "dataset": setup.preprocessed.name}
    write_json(UnitPaths(out).record, {
        **metadata, **cases.record, "train_folds": setup.spec["train_folds"],
        "predict_folds": setup.spec["predict_folds"], "train_cases": cases.train, "val_cases": cases.val,
        "predict_cases": cases.predict, "schedule": setup.schedule.to_dict()})
    this_run: dict = {}
    if not (options.resume and UnitPaths(out).final_checkpoint.is_file()):
        if not options.resume:
            clear_previous_run(out)
        run = recipe.build(setup, cases, metadata, options)
        trainer = run.trainer
        if options.resume:
            trainer.resume()
        began, start = time.perf_counter(), trainer.iteration
        try:
            trainer.fit(stop_at=options.stop_at)
        finally:
            run.close()
        seconds = time.perf_counter() - began
        trainer.log(f"{trainer.iteration - start} iterations in {seconds:.1f} s this run")
        if trainer.iteration < trainer.config.iterations or not trainer.is_main:
            return out  # stopped early on purpose (no summary yet), or a DDP rank that writes nothing
        this_run = {"seconds_this_run": round(seconds, 1), "data_wait_share": trainer.data_wait_share()}
    elif options.distributed is not None and not options.distributed.is_main:
        return out
    if after_training:
        trained = TrainedUnit(setup, cases.data, cases.predict, {**metadata, **trained_metadata(out), **this_run},
                              view=recipe.view, quiet=options.quiet)
        for callback in after_training:
            callback(trained)
    return setup.finish()


def trained_metadata(unit_dir: Path) -> dict:
    """What a unit's final checkpoint records: parameters, iterations, the kept (best) and the first
    validation, and the best one after training started (kept or not, see ``min_gain``)."""
    state = load_checkpoint(UnitPaths(unit_dir).final_checkpoint)
    history = list(state.get("history") or [])
    kept = [h for h in history if h.get("best")]
    # histories written before validations recorded "best" kept the highest pseudo-Dice
    best = kept[-1] if kept else max(history, key=lambda h: h["val_dice"]) if history else None
    trained = max((h for h in history if h["iteration"] > 0), key=lambda h: h["val_dice"], default=None)
    return {"parameters": (state.get("metadata") or {}).get("parameters"), "iterations": int(state["iteration"]),
            "best_val_pseudo_dice": float(state["best_dice"]), "best_iteration": best["iteration"] if best else None,
            "start_val_pseudo_dice": history[0]["val_dice"] if history else None,
            "best_trained_val_pseudo_dice": trained["val_dice"] if trained else None,
            "best_trained_iteration": trained["iteration"] if trained else None,
            "train_seconds": round(sum(h["seconds"] for h in history), 1)}
