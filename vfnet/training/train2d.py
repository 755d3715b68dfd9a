"""Train one view's U-Net on a unit: ``vfnet_train 2d VIEW UNIT`` up to its final checkpoint.

Validation and the best checkpoint use a split carved from the unit's own training
cases; the folds the unit predicts are never seen before the final checkpoint predicts
them. Results go to ``$vfnet_results/TaskXX_Name/<preset>/2d_<view>/<unit>/``. The held-out
prediction is the ``after_training`` callback that :mod:`vfnet.pipeline.units` passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vfnet import paths
from vfnet.errors import VfnetError
from vfnet.networks.unet2d import build_unet2d
from vfnet.networks.vfn import count_parameters
from vfnet.preprocessing.data import PreprocessedDataset
from vfnet.resolution import normalise_factor
from vfnet.training.config import TrainingConfig
from vfnet.training.data2d import close_loader, fixed_batches, load_view_volumes, make_train_loader
from vfnet.training.ddp import DistributedContext
from vfnet.training.losses import make_loss
from vfnet.training.runner import Run, RunOptions, UnitCases, run_unit
from vfnet.training.trainer import Trainer, saved_iteration, seed_everything
from vfnet.training.units import AfterTraining, UnitSetup, held_out_split
from vfnet.views import VIEWS


def _check_view(view: str) -> str:
    if view not in VIEWS:
        raise VfnetError(f"unknown view '{view}'; the views are: {', '.join(VIEWS)}")
    return view


def fit_2d_unit(dataset: str | int | None, view: str, unit: str, preset: str = "default", device: str = "auto",
                num_threads: int | None = None, resume: bool = False, quiet: bool = False, overwrite: bool = False,
                schedule_overrides: dict | None = None, features: Sequence[int] | None = None,
                after_training: AfterTraining | None = None, distributed: DistributedContext | None = None,
                stop_at: int | None = None) -> Path:
    """Train the 2D U-Net of ``view`` on ``unit``, then hand it to ``after_training``.

    Args:
        dataset: id or name of a preprocessed dataset (None: the only one).
        view: axial, coronal or sagittal.
        unit: a 2D unit of the plan (``0``, ``cca_0_1``, ``holdout``, ``all``...).
        preset: training schedule (quick, default, paper, budget<N>).
        device: auto, cpu or cuda.
        features: replace the planned widths (tests, benchmarks).
        after_training: called with the :class:`TrainedUnit` once the final checkpoint exists
            (held-out prediction, which writes summary.json); None leaves the unit unfinished.
        The others: :class:`vfnet.training.runner.RunOptions`.

    Returns:
        The unit's results folder.
    """
    options = RunOptions(num_threads, resume, quiet, overwrite, schedule_overrides, stop_at, distributed)
    return run_unit(View2dRecipe(_check_view(view), features), dataset, unit, preset, device, options,
                    [after_training] if after_training else [])


class View2dRecipe:
    """One view's 2D U-Net for :func:`vfnet.training.runner.run_unit`: slices of the unit's own cases."""

    stage = "2d"

    def __init__(self, view: str, features: Sequence[int] | None = None):
        self.view, self.features = view, features
        self.network = paths.view_network(view)

    def cases(self, setup: UnitSetup) -> UnitCases:
        data = PreprocessedDataset(setup.preprocessed)
        train, val, predict = held_out_split(data, setup.spec, setup.plan.training, key=str(setup.spec["name"]),
                                             label=f"unit {setup.spec['name']}")
        return UnitCases(train, val, predict, data, record={"view": self.view})

    def build(self, setup: UnitSetup, cases: UnitCases, metadata: dict, options: RunOptions) -> Run:
        plan, schedule, view, data = setup.plan, setup.schedule, self.view, cases.data
        spec, seed = plan.view(view), plan.training.seed
        # a budgeted schedule may train at a coarser resolution with its own patch and widths
        patch = schedule.patch_size or spec.patch_size
        context, batch_size = spec.context_slices, schedule.batch_size
        downsample = schedule.input_downsample
        seed_everything(seed)
        network = build_unet2d(plan, view, self.features if self.features is not None else schedule.features)
        volumes = load_view_volumes(data, cases.train, view, downsample=downsample)
        val_batches = fixed_batches(load_view_volumes(data, cases.val, view, downsample=downsample), patch, context,
                                    schedule.val_batch_size or batch_size, schedule.val_batches, seed=seed)
        # Workers are re-seeded from the resumed iteration so a continued run does not replay old batches.
        start = saved_iteration(setup.out) if options.resume else 0
        loader = make_train_loader(volumes, patch, context, batch_size, schedule.num_workers, seed=seed + start,
                                   mirror_axes=spec.mirror_axes)
        config = TrainingConfig.from_schedule(schedule, seed=seed)
        trainer = Trainer(network, make_loss(schedule.loss), loader, val_batches, config, setup.out,
                          device=setup.device, num_threads=options.num_threads, quiet=options.quiet,
                          distributed=options.distributed,
                          metadata={**metadata, "view": view, "network_config": network.config(),
                                    "parameters": count_parameters(network),
                                    "input_downsample": list(normalise_factor(downsample)),
                                    "train_cases": cases.train, "val_cases": cases.val})
        return Run(trainer, lambda: close_loader(loader))
