"""Train the planned 3D U-Net baseline on a unit: ``vfnet_train 3d UNIT`` up to its final checkpoint.

The baseline of the paper's 2D-versus-3D comparison: nnU-Net-shaped (``plan.unet3d``), trained
on 3D patches with the loss, optimizer and mirroring its schedule and plan name, by the same
trainer as the views and the VFN (checkpoints, resume, log, progress.png, mixed precision on
CUDA). Validation and the best checkpoint use a split carved from the unit's own training
cases; the folds the unit predicts are only seen by the final checkpoint. Results go to
``$vfnet_results/TaskXX_Name/<preset>/3d/<unit>/``. The held-out prediction is the
``after_training`` callback that :mod:`vfnet.pipeline.units` passes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from vfnet.atomic import write_json
from vfnet.checkpoint import load_checkpoint
from vfnet.experiment_planning.plans import Plan
from vfnet.experiment_planning.schema import Schedule
from vfnet.networks.unet3d import UNet3D, build_unet3d, unet3d_config
from vfnet.networks.vfn import count_parameters
from vfnet.paths import FINAL_CHECKPOINT
from vfnet.preprocessing.data import PreprocessedDataset
from vfnet.training.config import TrainingConfig
from vfnet.training.data2d import close_loader
from vfnet.training.data3d import fixed_batches_3d, load_volumes, make_train_loader_3d
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

NETWORK = "3d"


def train_hint(dataset: str, unit: str, preset: str) -> str:
    """The command that trains 3D unit ``unit`` (for error messages)."""
    return f"vfnet_train 3d {unit} -d {dataset} --preset {preset}"


def fit_3d_unit(dataset: str | int | None, unit: str, preset: str = "default", device: str = "auto",
                num_threads: int | None = None, resume: bool = False, quiet: bool = False, overwrite: bool = False,
                schedule_overrides: dict | None = None, features: Sequence[int] | None = None,
                stop_at: int | None = None, after_training: AfterTraining | None = None,
                distributed: DistributedContext | None = None) -> Path:
    """Train the 3D U-Net on ``unit``, then hand it to ``after_training``.

    Args:
        dataset: id or name of a preprocessed dataset (None: the only one).
        unit: a 3D unit of the plan (a fold ``0``.. ``K-1``, ``holdout`` or ``all``).
        preset: training schedule (quick, default, paper).
        device: auto, cpu or cuda.
        num_threads: torch CPU threads; None uses torch's default.
        resume: continue from ``checkpoint_latest.pth`` (a finished unit is left as it is).
        quiet: no progress bars or console messages.
        schedule_overrides: replace keys of the preset's schedule (tests, benchmarks).
        features: replace the planned widths (tests, benchmarks).
        stop_at: stop after this many iterations with a latest checkpoint and no prediction
            (to check that a long schedule starts; continue later with ``resume``).
        after_training: called with the :class:`TrainedUnit` once the final checkpoint exists
            (held-out prediction, which writes summary.json); None leaves the unit unfinished.
        distributed: train with DDP (``vfnet_train --ddp`` under torchrun); only rank 0 hands the unit
            to ``after_training`` and writes.

    Returns:
        The unit's results folder.
    """
    setup = prepare_unit(dataset, NETWORK, NETWORK, unit, preset, device, schedule_overrides, resume, overwrite)
    preprocessed, plan, spec, schedule, torch_device, out = (
        setup.preprocessed, setup.plan, setup.spec, setup.schedule, setup.device, setup.out)
    if resume and unit_finished(out):
        return out

    data = PreprocessedDataset(preprocessed)
    train_cases, val_cases, predict_cases = held_out_split(data, spec, plan.training, key=f"3d-{unit}",
                                                           label=f"3d unit {unit}")
    metadata = {"network": NETWORK, "unit": str(unit), "preset": preset, "dataset": preprocessed.name}
    write_json(out / "unit.json", {**metadata, "train_folds": spec["train_folds"],
                                   "predict_folds": spec["predict_folds"], "train_cases": train_cases,
                                   "val_cases": val_cases, "predict_cases": predict_cases,
                                   "schedule": schedule.to_dict()})

    if not (resume and (out / FINAL_CHECKPOINT).is_file()):
        if not resume:
            clear_previous_run(out)
        trainer = _train(plan, data, train_cases, val_cases, schedule, out, torch_device, num_threads, resume,
                         quiet, features, metadata, stop_at, distributed)
        if trainer.iteration < trainer.config.iterations or not trainer.is_main:
            return out  # stopped early on purpose: no final checkpoint, nothing to predict yet

    if after_training is not None:
        state = load_checkpoint(out / FINAL_CHECKPOINT)
        config = state.get("metadata", {}).get("network_config")
        network = UNet3D(**config) if config else build_unet3d(plan, plan.num_channels, plan.num_classes)
        after_training(TrainedUnit(setup, data, predict_cases, quiet=quiet, metadata={
            **metadata, "parameters": count_parameters(network), "iterations": int(state["iteration"]),
            "best_val_pseudo_dice": float(state["best_dice"]),
            "train_seconds": round(sum(h["seconds"] for h in state["history"]), 1)}))
    return setup.finish()


def _train(plan: Plan, data: PreprocessedDataset, train_cases: list[str], val_cases: list[str], schedule: Schedule,
           out: Path, device: torch.device, num_threads: int | None, resume: bool, quiet: bool,
           features: Sequence[int] | None, metadata: dict, stop_at: int | None,
           distributed: DistributedContext | None = None) -> Trainer:
    patch, batch_size, seed = plan.unet3d.patch_size, schedule.batch_size, plan.training.seed
    seed_everything(seed)
    if features is None:
        network = build_unet3d(plan, plan.num_channels, plan.num_classes)
    else:
        network = UNet3D(plan.num_channels, plan.num_classes, features)
    val_batches = fixed_batches_3d(load_volumes(data, val_cases), patch, schedule.val_batch_size or batch_size,
                                   schedule.val_batches, seed=seed)
    # Workers are re-seeded from the resumed iteration so a continued run does not replay old batches.
    start = saved_iteration(out) if resume else 0
    loader = make_train_loader_3d(load_volumes(data, train_cases), patch, batch_size, schedule.num_workers,
                                  seed=seed + start, mirror_axes=plan.unet3d.mirror_axes)
    config = TrainingConfig.from_schedule(schedule, seed=seed)
    parameters = count_parameters(network)
    trainer = Trainer(network, make_loss(schedule.loss), loader, val_batches, config, out, device=device,
                      num_threads=num_threads, quiet=quiet, distributed=distributed,
                      metadata={**metadata, "network_config": unet3d_config(network), "parameters": parameters,
                                "train_cases": train_cases, "val_cases": val_cases})
    if not resume or saved_iteration(out) == 0:
        trainer.log(f"3D U-Net: {parameters:,} parameters, features {network.features}, patch {patch}, "
                    f"{len(train_cases)} training / {len(val_cases)} validation cases")
    if resume:
        trainer.resume()
    began = time.perf_counter()
    try:
        trainer.fit(stop_at=stop_at)
    finally:
        close_loader(loader)
    trainer.log(f"{trainer.iteration - start} iterations in {time.perf_counter() - began:.1f} s this run")
    return trainer
