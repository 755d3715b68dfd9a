"""Train the planned 3D U-Net baseline on a unit: ``vfnet_train 3d UNIT`` up to its final checkpoint.

The baseline of the paper's 2D-versus-3D comparison: nnU-Net-shaped (``plan["unet3d"]``),
trained on 3D patches with DiceCE loss by the same trainer as the views and the VFN
(checkpoints, resume, log, progress.png, mixed precision on CUDA). Validation and the best
checkpoint use a split carved from the unit's own training cases; the folds the unit
predicts are only seen by the final checkpoint. Results go to
``$vfnet_results/TaskXX_Name/<preset>/3d/<unit>/``. The held-out prediction is the
``after_training`` callback that :mod:`vfnet.pipeline.units` passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vfnet.networks.unet3d import UNet3D, build_unet3d, unet3d_config
from vfnet.networks.vfn import count_parameters
from vfnet.paths import UNET3D_NETWORK
from vfnet.preprocessing.data import PreprocessedDataset
from vfnet.training.config import TrainingConfig
from vfnet.training.data2d import close_loader
from vfnet.training.data3d import fixed_batches_3d, load_volumes, make_train_loader_3d
from vfnet.training.ddp import DistributedContext
from vfnet.training.losses import make_loss
from vfnet.training.runner import Run, RunOptions, UnitCases, run_unit
from vfnet.training.trainer import Trainer, saved_iteration, seed_everything
from vfnet.training.units import AfterTraining, UnitSetup, held_out_split

NETWORK = UNET3D_NETWORK


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
        features: replace the planned widths (tests, benchmarks).
        after_training: called with the :class:`TrainedUnit` once the final checkpoint exists
            (held-out prediction, which writes summary.json); None leaves the unit unfinished.
        The others: :class:`vfnet.training.runner.RunOptions`.

    Returns:
        The unit's results folder.
    """
    options = RunOptions(num_threads, resume, quiet, overwrite, schedule_overrides, stop_at, distributed)
    return run_unit(UNet3dRecipe(features), dataset, unit, preset, device, options,
                    [after_training] if after_training else [])


class UNet3dRecipe:
    """The 3D U-Net baseline for :func:`vfnet.training.runner.run_unit`: 3D patches of the unit's own cases."""

    stage = network = NETWORK
    view = None

    def __init__(self, features: Sequence[int] | None = None):
        self.features = features

    def cases(self, setup: UnitSetup) -> UnitCases:
        data = PreprocessedDataset(setup.preprocessed)
        name = setup.spec["name"]
        train, val, predict = held_out_split(data, setup.spec, setup.plan.training, key=f"3d-{name}",
                                             label=f"3d unit {name}")
        return UnitCases(train, val, predict, data)

    def build(self, setup: UnitSetup, cases: UnitCases, metadata: dict, options: RunOptions) -> Run:
        plan, schedule, data = setup.plan, setup.schedule, cases.data
        patch, batch_size, seed = plan.unet3d.patch_size, schedule.batch_size, plan.training.seed
        seed_everything(seed)
        if self.features is None:
            network = build_unet3d(plan, plan.num_channels, plan.num_classes)
        else:
            network = UNet3D(plan.num_channels, plan.num_classes, self.features)
        val_batches = fixed_batches_3d(load_volumes(data, cases.val), patch, schedule.val_batch_size or batch_size,
                                       schedule.val_batches, seed=seed)
        # Workers are re-seeded from the resumed iteration so a continued run does not replay old batches.
        start = saved_iteration(setup.out) if options.resume else 0
        loader = make_train_loader_3d(load_volumes(data, cases.train), patch, batch_size, schedule.num_workers,
                                      seed=seed + start, mirror_axes=plan.unet3d.mirror_axes)
        config = TrainingConfig.from_schedule(schedule, seed=seed)
        parameters = count_parameters(network)
        trainer = Trainer(network, make_loss(schedule.loss), loader, val_batches, config, setup.out,
                          device=setup.device, num_threads=options.num_threads, quiet=options.quiet,
                          distributed=options.distributed,
                          metadata={**metadata, "network_config": unet3d_config(network), "parameters": parameters,
                                    "train_cases": cases.train, "val_cases": cases.val})
        if start == 0:
            trainer.log(f"3D U-Net: {parameters:,} parameters, features {network.features}, patch {patch}, "
                        f"{len(cases.train)} training / {len(cases.val)} validation cases")
        return Run(trainer, lambda: close_loader(loader))
