"""Train one view's U-Net on a unit: ``vfnet_train 2d VIEW UNIT`` up to its final checkpoint.

Validation and the best checkpoint use a split carved from the unit's own training
cases; the folds the unit predicts are never seen before the final checkpoint predicts
them. Results go to ``$vfnet_results/TaskXX_Name/<preset>/2d_<view>/<unit>/``. The held-out
prediction is the ``after_training`` callback that :mod:`vfnet.pipeline.units` passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from vfnet.atomic import write_json
from vfnet.errors import VfnetError
from vfnet.experiment_planning.plans import Plan
from vfnet.experiment_planning.schema import Schedule
from vfnet.networks.unet2d import build_unet2d
from vfnet.paths import FINAL_CHECKPOINT
from vfnet.preprocessing.data import PreprocessedDataset
from vfnet.resolution import normalise_factor
from vfnet.training.config import TrainingConfig
from vfnet.training.data2d import close_loader, fixed_batches, load_view_volumes, make_train_loader
from vfnet.training.ddp import DistributedContext
from vfnet.training.losses import make_loss
from vfnet.training.trainer import Trainer, saved_iteration, seed_everything
from vfnet.training.units import (
    AfterTraining,
    TrainedUnit,
    clear_previous_run,
    held_out_split,
    prepare_unit,
    unit_finished,
)
from vfnet.views import VIEWS


def _check_view(view: str) -> str:
    if view not in VIEWS:
        raise VfnetError(f"unknown view '{view}'; the views are: {', '.join(VIEWS)}")
    return view


def fit_2d_unit(dataset: str | int | None, view: str, unit: str, preset: str = "default", device: str = "auto",
                num_threads: int | None = None, resume: bool = False, quiet: bool = False, overwrite: bool = False,
                schedule_overrides: dict | None = None, features: Sequence[int] | None = None,
                after_training: AfterTraining | None = None, distributed: DistributedContext | None = None) -> Path:
    """Train the 2D U-Net of ``view`` on ``unit``, then hand it to ``after_training``.

    Args:
        dataset: id or name of a preprocessed dataset (None: the only one).
        view: axial, coronal or sagittal.
        unit: a 2D unit of the plan (``0``, ``cca_0_1``, ``holdout``, ``all``...).
        preset: training schedule (quick, default, paper).
        device: auto, cpu or cuda.
        num_threads: torch CPU threads; None uses torch's default.
        resume: continue from ``checkpoint_latest.pth`` (a finished unit is left as it is).
        quiet: no progress bars or console messages.
        schedule_overrides: replace keys of the preset's schedule (tests, benchmarks).
        features: replace the planned widths (tests, benchmarks).
        after_training: called with the :class:`TrainedUnit` once the final checkpoint exists
            (held-out prediction, which writes summary.json); None leaves the unit unfinished.
        distributed: train with DDP (``vfnet_train --ddp`` under torchrun); only rank 0 hands the unit
            to ``after_training`` and writes.

    Returns:
        The unit's results folder.
    """
    _check_view(view)
    network_name = f"2d_{view}"
    setup = prepare_unit(dataset, "2d", network_name, unit, preset, device, schedule_overrides, resume, overwrite)
    preprocessed, plan, spec, schedule, torch_device, out = (
        setup.preprocessed, setup.plan, setup.spec, setup.schedule, setup.device, setup.out)
    if resume and unit_finished(out):
        return out

    data = PreprocessedDataset(preprocessed)
    train_cases, val_cases, predict_cases = held_out_split(data, spec, plan.training, key=str(unit), label=f"unit {unit}")
    record = {"network": network_name, "unit": str(unit), "preset": preset, "view": view,
              "train_folds": spec["train_folds"], "predict_folds": spec["predict_folds"],
              "train_cases": train_cases, "val_cases": val_cases, "predict_cases": predict_cases,
              "schedule": schedule.to_dict()}
    write_json(out / "unit.json", record)

    if not (resume and (out / FINAL_CHECKPOINT).is_file()):
        if not resume:
            clear_previous_run(out)
        _train(plan, data, view, train_cases, val_cases, schedule, out, torch_device, num_threads, resume, quiet,
               features, {"network": network_name, "unit": str(unit), "preset": preset,
                          "dataset": preprocessed.name}, distributed)
    if distributed is not None and not distributed.is_main:
        return out

    if after_training is not None:
        after_training(TrainedUnit(setup, data, predict_cases, view=view, quiet=quiet,
                                   metadata={"network": network_name, "unit": str(unit), "preset": preset,
                                             "dataset": preprocessed.name}))
    return setup.finish()


def _train(plan: Plan, data: PreprocessedDataset, view: str, train_cases: list[str], val_cases: list[str],
           schedule: Schedule, out: Path, device: torch.device, num_threads: int | None, resume: bool, quiet: bool,
           features: Sequence[int] | None, metadata: dict, distributed: DistributedContext | None = None) -> None:
    spec, seed = plan.view(view), plan.training.seed
    # a budgeted schedule may train at a coarser resolution with its own patch and widths
    patch = schedule.patch_size or spec.patch_size
    context, batch_size = spec.context_slices, schedule.batch_size
    downsample = schedule.input_downsample
    seed_everything(seed)
    network = build_unet2d(plan, view, features if features is not None else schedule.features)
    volumes = load_view_volumes(data, train_cases, view, downsample=downsample)
    val_batches = fixed_batches(load_view_volumes(data, val_cases, view, downsample=downsample), patch, context,
                                schedule.val_batch_size or batch_size, schedule.val_batches, seed=seed)
    # Workers are re-seeded from the resumed iteration so a continued run does not replay old batches.
    start = saved_iteration(out) if resume else 0
    loader = make_train_loader(volumes, patch, context, batch_size, schedule.num_workers, seed=seed + start,
                               mirror_axes=spec.mirror_axes)
    config = TrainingConfig.from_schedule(schedule, seed=seed)
    trainer = Trainer(network, make_loss(schedule.loss), loader, val_batches, config, out, device=device,
                      num_threads=num_threads, quiet=quiet, distributed=distributed,
                      metadata={**metadata, "view": view, "network_config": network.config(),
                                "input_downsample": list(normalise_factor(downsample)),
                                "train_cases": train_cases, "val_cases": val_cases})
    if resume:
        trainer.resume()
    try:
        trainer.fit()
    finally:
        close_loader(loader)
